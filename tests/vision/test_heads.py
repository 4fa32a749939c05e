"""The two heads: linear (from pretrained rows or random) and fastai's mlp head over average
and max pooling side by side, with the activation cache holding what the head needs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from nbtrain import Learner
from nbtrain.core.features import FeatureCache, Features
from nbtrain.vision import ImageData, make_shapes_dataset
from nbtrain.vision.learner import ImageClassifier
from nbtrain.vision.models import BodySpec, ConcatPool2d, concat_pool, create_body


def toy_spec() -> BodySpec:
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    return BodySpec(body, 4, (0.5,) * 3, (0.5,) * 3, (("1",), ("",)), "toy", None)


def test_the_mlp_head_is_fastais():
    torch.manual_seed(0)
    model = ImageClassifier(toy_spec(), 3, head="mlp")
    assert [type(m) for m in model.head] == [
        nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear
    ]  # fmt: skip
    bn, drop, hidden, _, bn2, drop2, last = model.head
    assert bn.num_features == 4  # a module body cannot pool twice: its own width
    assert (hidden.in_features, hidden.out_features, hidden.bias) == (4, 512, None)
    assert bn2.num_features == 512 and (last.in_features, last.out_features) == (512, 3)
    assert (drop.p, drop2.p) == (0.25, 0.5) and model.dropout == 0.5
    assert (model.head_kind, model.head_init) == ("mlp", "random")
    assert ImageClassifier(toy_spec(), 3, head="mlp", dropout=0.2).head[1].p == 0.1


@pytest.mark.parametrize(
    ("head", "head_init", "message"),
    [
        ("conv", "auto", "head must be one of 'auto', 'linear', 'mlp', got 'conv'"),
        ("mlp", "pretrained", "head_init='pretrained' needs head='linear'"),
        ("mlp", {"a": 0}, "needs head='linear'"),
    ],
)
def test_a_head_that_cannot_be_built_is_one_line(head, head_init, message):
    with pytest.raises(ValueError, match=message) as info:
        ImageClassifier(toy_spec(), 2, head=head, head_init=head_init, classes=["a", "b"])
    assert "\n" not in str(info.value)


def test_concat_pool_doubles_a_timm_bodys_width_with_average_then_max():
    spec = create_body("tf_efficientnet_lite0", pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        avg = spec.body.eval()(x)
        maps = spec.body.forward_features(x)
        wide = concat_pool(spec)
        both = wide.body(x)
    assert (spec.n_features, wide.n_features) == (1280, 2560)
    assert torch.allclose(avg, maps.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(both[:, :1280], avg) and torch.allclose(both[:, 1280:], maps.amax((2, 3)))


def test_concat_pool_replaces_a_torchvision_average_pool():
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    spec = BodySpec(model.eval(), 512, (0.5,) * 3, (0.5,) * 3, (("layer1",), ("layer4",)), "r18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        avg = model(x)
        wide = concat_pool(spec)
        both = model(x)
    assert isinstance(model.avgpool, ConcatPool2d) and wide.n_features == 1024
    assert torch.allclose(both[:, :512], avg)
    assert concat_pool(toy_spec()) is None  # nothing to change: None, body untouched


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_per_class=11, n_valid_per_class=4, size=48, seed=0
    )


@pytest.mark.filterwarnings("ignore:precompute is on")
def test_each_head_gets_its_own_cache_entry_and_trains_on_it(shapes, tmp_path):
    data = ImageData.from_folder(shapes, size=32, bs=8, num_workers=0)
    cache = FeatureCache(tmp_path / "cache")
    widths = {}
    for head in ("linear", "mlp"):
        learn = Learner.pretrained(data, head=head, precompute=True, device="cpu", path=tmp_path)
        learn.feature_cache, learn.checkpoint_dir = cache, False
        before = {k: v.clone() for k, v in learn.model.body.state_dict().items()}
        state = learn.fit_stages([learn_stage()])[0]
        assert state.status == "done"
        widths[head] = cache.last.train_x.shape[1]
        after = learn.model.body.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the body stays frozen
    assert widths == {"linear": 1280, "mlp": 2560} and cache.misses == 2


def learn_stage():
    from nbtrain.core import Stage

    return Stage(1e-2, cycles=2, seed=0)


def test_a_last_cached_batch_of_one_is_dropped_as_the_image_loader_drops_it():
    # 33 rows in batches of 8: a last batch of one would stop a BatchNorm in the head
    rows = Features(torch.randn(33, 4), torch.zeros(33, dtype=torch.long), None, None, "k")
    train, _ = rows.loaders(8)
    assert len(train) == 4 and sum(len(y) for _, y in train) == 32
    rows = Features(torch.randn(34, 4), torch.zeros(34, dtype=torch.long), None, None, "k")
    assert len(rows.loaders(8)[0]) == 5
