"""A new head that starts from the pretrained classifier's rows for the data's classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbtrain.vision.classes import (
    HeadInitWarning,
    PretrainedClasses,
    match_class,
    resolve_head_init,
    warn_head_init,
)
from nbtrain.vision.learner import ImageClassifier
from nbtrain.vision.models import BodySpec, create_body

NAMES = (
    ("ant", "emmet", "pismire", "n02219486"),
    ("bee",),
    ("crane",),
    ("crane",),
    ("golden retriever",),
    ("box",),
    ("butterfly",),
    ("lady",),
    ("wolf",),
    ("goose",),
    ("tomato",),
    ("tabby", "n02123045"),
)
PRETRAINED = PretrainedClasses(
    torch.arange(len(NAMES) * 4, dtype=torch.float32).reshape(len(NAMES), 4),
    torch.arange(len(NAMES), dtype=torch.float32) / 10,
    NAMES,
)


@pytest.mark.parametrize(
    ("name", "hits"),
    [
        ("ants", [0]),  # plural folder name
        ("Emmet", [0]),  # a synonym, any case
        ("bees", [1]),
        ("golden_retriever", [4]),  # _ and - are spaces
        ("Golden-Retriever", [4]),
        ("boxes", [5]),
        ("butterflies", [6]),
        ("ladies", [7]),
        ("wolves", [8]),
        ("geese", [9]),
        ("tomatoes", [10]),
        ("golden retrievers", [4]),  # plural on the last word
        ("n02219486", [0]),  # a WordNet id, as Imagenette names its folders
        ("n02123045", [11]),
        ("crane", [2, 3]),  # two pretrained classes share the name
        ("cat", []),
        ("antelope", []),  # a prefix is not a name
    ],
)
def test_match_class_by_name_plural_and_synonym(name, hits):
    assert match_class(name, NAMES) == hits


def test_auto_uses_the_rows_only_when_every_class_matches_once():
    assert resolve_head_init("auto", ["ants", "bees"], PRETRAINED) == [0, 1]
    assert resolve_head_init("auto", ["bees", "ants"], PRETRAINED) == [1, 0]  # label order
    assert resolve_head_init("auto", ["ants", "cats"], PRETRAINED) is None
    assert resolve_head_init("auto", ["ants", "crane"], PRETRAINED) is None
    assert resolve_head_init("auto", ["ant", "ants"], PRETRAINED) is None  # one row, two classes
    assert resolve_head_init("auto", ["ants", "bees"], None) is None  # no classifier
    assert resolve_head_init("random", ["ants", "bees"], PRETRAINED) is None
    assert resolve_head_init(None, ["ants", "bees"], PRETRAINED) is None


@pytest.mark.parametrize(
    ("head_init", "classes", "message"),
    [
        ("pretrained", ["ants", "cats"], "no pretrained class is named 'cats'"),
        ("pretrained", ["crane", "bees"], r"'crane' matches several \(2 'crane', 3 'crane'\)"),
        ("pretrained", ["ant", "ants"], "'ant' and 'ants' both match 0 'ant, emmet, pismire'"),
        ({"ants": 0}, ["ants", "bees"], r"no entry for 'bees' \(classes"),
        ({"ants": 0, "bees": 1, "wasps": 2}, ["ants", "bees"], "the data has no class 'wasps'"),
        ({"ants": 0, "bees": 99}, ["ants", "bees"], r"head_init\['bees'\] = 99 is not in 0..11"),
        ({"ants": 0, "bees": 1.0}, ["ants", "bees"], "must be a pretrained class index or name"),
        ({"ants": "crane", "bees": 1}, ["ants", "bees"], "matches several"),
        ("imagenet", ["ants", "bees"], "head_init must be 'auto', 'pretrained', 'random' or a"),
    ],
)
def test_bad_head_init_is_one_clear_line(head_init, classes, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_head_init(head_init, classes, PRETRAINED)
    assert "\n" not in str(info.value)


def test_pretrained_needs_a_body_with_a_classifier():
    with pytest.raises(ValueError, match="needs the body's pretrained classifier: one linear"):
        resolve_head_init("pretrained", ["ants"], None)
    with pytest.raises(ValueError, match="a dict needs the body's pretrained classifier"):
        resolve_head_init({"ants": 0}, ["ants"], None)


def test_a_long_mismatch_list_is_cut_short():
    classes = [f"thing{i}" for i in range(40)]
    with pytest.raises(ValueError) as info:
        resolve_head_init("pretrained", classes, PRETRAINED)
    message = str(info.value)
    assert message.startswith(
        "head_init='pretrained': no pretrained class is named 'thing0', 'thing1', 'thing2', "
        "'thing3', 'thing4' and 35 more; pass a dict"
    )


def test_the_warning_names_every_row():
    with pytest.warns(HeadInitWarning, match=r"rows ants = 0 'ant', bees = 1 'bee' \(head_init"):
        warn_head_init("pretrained classes: ants = 0 'ant', bees = 1 'bee'")


def test_dict_takes_indices_and_names():
    assert resolve_head_init({"a": "bees", "b": 0}, ["a", "b"], PRETRAINED) == [1, 0]


def _spec(classifier: PretrainedClasses | None) -> BodySpec:
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Linear(4, 4))
    return BodySpec(body, 4, (0.5,) * 3, (0.5,) * 3, (("1",), ("2",)), "toy", classifier)


def test_classifier_head_copies_the_rows_in_label_order():
    model = ImageClassifier(_spec(PRETRAINED), 2, classes=["bees", "ants"])
    linear = model.head[-1]
    assert torch.equal(linear.weight, PRETRAINED.weight[[1, 0]])
    assert torch.equal(linear.bias, PRETRAINED.bias[[1, 0]])
    assert model.head_init == "pretrained classes: bees = 1 'bee', ants = 0 'ant, emmet, pismire'"
    assert model.spec.classifier is None  # the pretrained rows are not carried along


def test_classifier_head_is_random_when_the_classes_do_not_match():
    spec = _spec(PRETRAINED)
    torch.manual_seed(0)
    model = ImageClassifier(spec, 2, head="linear", classes=["cats", "dogs"])
    torch.manual_seed(0)
    fresh = nn.Linear(4, 2)
    assert model.head_init == "random" and model.head_kind == "linear"
    assert torch.equal(model.head[-1].weight, fresh.weight)
    # head="auto": no rows to start from, so fastai's mlp head (measured stronger from random)
    assert ImageClassifier(spec, 2, classes=["cats", "dogs"]).head_kind == "mlp"


def test_offline_lite0_carries_imagenet_classes():
    spec = create_body("tf_efficientnet_lite0")
    assert spec.classifier.weight.shape == (1000, spec.n_features)
    assert spec.classifier.names[310] == ("ant", "emmet", "pismire", "n02219486")
    assert spec.classifier.names[309] == ("bee", "n02206856")
    assert spec.classifier.label(310) == "ant, emmet, pismire"
    assert create_body("tf_efficientnet_lite0", pretrained=False).classifier is None
