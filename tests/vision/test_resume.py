"""After a kernel restart: Learner.resume(path) builds a pretrained learner again from
its checkpoint and goes on to the weights of a run never interrupted."""

from __future__ import annotations

import shutil

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from nbtrain import Learner
from nbtrain.core import Stage
from nbtrain.core.resume import CheckpointError
from nbtrain.vision import ImageData, make_shapes_dataset

PLAN = [
    Stage(1e-2, cycles=1, seed=0),
    Stage((1e-4, 1e-3, 1e-2), cycles=2, freeze_to=0),
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_per_class=8, n_valid_per_class=4, size=40, seed=0
    )


def build(shapes, tmp_path) -> Learner:
    data = ImageData.from_folder(shapes, size=32, bs=8, num_workers=0)
    return Learner.pretrained(data, device="cpu", path=tmp_path, head_init="random")


class InterruptAt:
    def __init__(self, stage: int, it: int) -> None:
        self.stage, self.it = stage, it

    def on_batch_end(self, state) -> None:
        if (state.stage, state.it) == (self.stage, self.it):
            raise KeyboardInterrupt("a kernel interrupt")


def weights(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def test_learner_resume_rebuilds_a_pretrained_learner_and_ends_as_if_never_stopped(
    shapes, tmp_path
):
    reference = build(shapes, tmp_path / "reference")
    reference.fit_stages(PLAN)

    run = build(shapes, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[InterruptAt(1, 5)])
    path = run.last_checkpoint
    del run  # the kernel restarts: nothing of it is left but its files

    learn = Learner.resume(path)
    assert learn.model.arch == "tf_efficientnet_lite0"
    assert learn.model.head_kind == reference.model.head_kind == "mlp"  # shapes: no ImageNet rows
    assert learn.data.classes == reference.data.classes
    assert [s.status for s in learn.fits] == ["done", "done"]  # stage 1 restored, stage 2 ran
    expected = weights(reference)
    got = weights(learn)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_what_the_checkpoint_cannot_rebuild_is_one_line(shapes, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(shapes, moved)
    data = ImageData.from_folder(moved, size=32, bs=8, num_workers=0)
    gone = Learner.pretrained(data, device="cpu", path=tmp_path / "gone")
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    own = Learner.pretrained(data, body, device="cpu", path=tmp_path / "own")
    for learn in (gone, own):
        with pytest.raises(KeyboardInterrupt):
            learn.fit_stages([Stage(1e-2, cycles=2)], listeners=[InterruptAt(0, 2)])
    shutil.rmtree(moved)  # the photos moved away before the kernel restarted
    cases = [
        (gone.last_checkpoint, r"cannot read its data again \(.*moved.*\); create the data"),
        (own.last_checkpoint, r"whose body is a module of class torch.nn.*Sequential from your"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as info:
            Learner.resume(path)
        assert "\n" not in str(info.value) and "then call learn.resume(" in str(info.value)


def test_the_magic_rebuilds_an_unbound_learner_from_the_checkpoint(shapes, tmp_path):
    run = build(shapes, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[InterruptAt(1, 3)])
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nbtrain")
    ip.user_ns.pop("restored", None)
    with capture_output():
        ip.run_line_magic("fit_cycles", f"restored --resume {run.last_checkpoint}")
    restored = ip.user_ns.pop("restored")
    assert [s.status for s in restored.fits] == ["done", "done"]
    finished = restored.last_checkpoint  # the run ended: nothing to resume, nothing bound
    with pytest.raises(UsageError, match="that run finished; there is nothing to resume"):
        ip.run_line_magic("fit_cycles", f"again --resume {finished}")
    assert "again" not in ip.user_ns
    # the finished run's learner, with its final weights, is one call away
    final = Learner.from_checkpoint(finished)
    got, expected = weights(final), weights(restored)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(UsageError, match=r"no checkpoint at nowhere\.ckpt"):
        ip.run_line_magic("fit_cycles", "unbound --resume nowhere.ckpt")
