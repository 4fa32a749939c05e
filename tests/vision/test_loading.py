"""The loaders' hot path: PIL transforms equal to torchvision's v2, idle-priority workers."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from nbtrain.vision import ImageData
from nbtrain.vision.data import _idle_priority
from nbtrain.vision.transforms import (
    TRAIN_MIN_SCALE,
    EvalTransform,
    TrainTransform,
    _random_crop_box,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    pixels = np.asarray(smooth.resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = pixels + rng.integers(-20, 21, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def v2_eval(size: int) -> v2.Compose:
    """The reference: what ImageData's eval transform was before it called PIL directly."""
    return v2.Compose(
        [
            v2.Resize(round(size / 0.875), antialias=True),
            v2.CenterCrop(size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(MEAN), list(STD)),
        ]
    )


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (500, 375, 224),
        (375, 500, 224),
        (256, 256, 224),
        (1201, 899, 224),
        (61, 40, 32),
        (500, 375, 288),
    ],
)
def test_the_eval_transform_is_bit_for_bit_torchvisions(width, height, size):
    img = photo(width, height)
    ours, reference = EvalTransform(size, MEAN, STD)(img), v2_eval(size)(img)
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, reference.as_subclass(torch.Tensor))


def test_the_train_transform_is_seeded_by_torch():
    img, transform = photo(500, 375), TrainTransform(224, MEAN, STD)
    torch.manual_seed(0)
    a = transform(img)
    torch.manual_seed(0)
    b = transform(img)
    c = transform(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(a, c)
    assert -3 < float(a.mean()) < 3 and 0.2 < float(a.std()) < 3


def test_random_crops_stay_inside_and_keep_35_to_100_percent_of_the_area():
    torch.manual_seed(0)
    for _ in range(200):
        left, top, w, h = _random_crop_box(500, 375)
        assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
        assert TRAIN_MIN_SCALE - 0.01 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
    assert _random_crop_box(1000, 50) == (466, 0, 67, 50)  # no try fits: central, 4:3


class _Policy(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else -1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_worker_started_by_idle_priority_runs_at_sched_idle():
    loader = DataLoader(_Policy(), batch_size=2, num_workers=1, worker_init_fn=_idle_priority)
    assert next(iter(loader)).tolist() == [os.SCHED_IDLE] * 2
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the main process is untouched


def test_idle_workers_on_the_cpu_and_a_switch_to_turn_them_off(image_folder):
    data = ImageData.from_folder(image_folder, size=16, bs=4, num_workers=1)
    assert data.idle_workers == (not torch.cuda.is_available())
    data.idle_workers = True
    assert data.train.worker_init_fn is _idle_priority
    assert data.valid.worker_init_fn is _idle_priority
    assert data.with_size(24).idle_workers
    first = data.train
    data.idle_workers = False
    assert data.train is not first and data.train.worker_init_fn is None
    assert not data.with_size(24).idle_workers
    in_process = ImageData.from_folder(image_folder, size=16, num_workers=0)
    assert in_process.train.worker_init_fn is None  # no worker to lower


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here"
)
def test_workers_start_from_a_fork_server_unless_told_otherwise(image_folder):
    data = ImageData.from_folder(image_folder, size=16, bs=4, num_workers=2)
    assert data.start_method == "forkserver"
    assert data.train.multiprocessing_context.get_start_method() == "forkserver"
    assert sum(len(y) for _, y in data.train) == 15  # the workers really run
    assert data.with_size(24).start_method == "forkserver"
    data.start_method = "fork"
    assert data.valid.multiprocessing_context.get_start_method() == "fork"
    assert sum(len(y) for _, y in data.valid) == 6
    data.start_method = None  # the platform's default
    assert data.train.multiprocessing_context is None
    with pytest.raises(ValueError, match="start_method must be None or one of"):
        data.start_method = "teleport"
