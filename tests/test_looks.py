"""Looking at the data and at the mistakes: show_batch, %show_batch, %interpret."""

from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from nbtrain import Learner
from nbtrain.magics import last_view
from nbtrain.views import frontend
from nbtrain.views.looks import BatchView, FigureReport, InterpretationView
from nbtrain.vision import ImageData, make_shapes_dataset
from nbtrain.vision.interpret import Interpretation
from nbtrain.vision.look import batch_images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_per_class=6, n_valid_per_class=3, size=48, seed=0
    )
    return ImageData.from_folder(root, size=32, bs=4, num_workers=0)


@pytest.fixture(scope="module")
def learn(data, tmp_path_factory):
    learner = Learner.pretrained(data, device="cpu", path=tmp_path_factory.mktemp("learn"))
    learner.checkpoint_dir = False
    learner.fit_cycles(1e-2, seed=0)
    return learner


@pytest.fixture(autouse=True)
def _front_end_back():
    yield
    frontend.set_mode(None)


def test_a_batch_is_what_the_model_sees_and_leaves_the_random_state_alone(data):
    rng = torch.get_rng_state()
    images, labels, seed = batch_images(data, 6, augmented=True, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert images.shape == (6, 32, 32, 3) and 0 <= float(images.min()) <= float(images.max()) <= 1
    again, _, _ = batch_images(data, 6, augmented=True, seed=3)
    assert torch.equal(images, again) and seed == 3
    other, _, _ = batch_images(data, 6, augmented=True, seed=4)
    assert not torch.equal(images, other)
    # without augmentation: the eval transform of those files, de-normalised
    plain, plain_labels, _ = batch_images(data, 6, augmented=False, seed=3)
    picks = torch.randperm(len(data.train_items), generator=torch.Generator().manual_seed(3))
    first = data.train_items[int(picks[0])]
    expected = data.prepare(first[0]) * 0.5 + 0.5  # mean = std = 0.5 for lite0
    assert torch.allclose(plain[0], expected.clamp(0, 1).permute(1, 2, 0), atol=1e-6)
    assert plain_labels[0] == data.classes[first[1]]
    fig = data.show_batch(6, seed=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == labels


def test_the_batch_view_draws_again_with_a_click(data):
    view = BatchView(data, n=4, seed=1)
    first, png = view.seed, view.image.value
    view.button.click()
    assert view.seed != first and view.image.value != png
    assert view.redraw(1) == 1 and view.image.value == png  # the same seed, the same images
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"].startswith("batch (seed 1):") and "image/png" in bundle


@pytest.mark.parametrize("mode", ["text", "widgets"])
def test_show_batch_and_interpret_magics(ip, learn, mode):
    frontend.set_mode(mode)
    ip.user_ns["learn"] = learn
    with capture_output() as out:
        ip.run_line_magic("show_batch", "learn --n 4 --augmented --seed 2")
        ip.run_line_magic("interpret", "learn --k 4")
    batch, interp = last_view("show_batch", ip), last_view("interpret", ip)
    if mode == "text":
        assert isinstance(batch, FigureReport) and isinstance(interp, FigureReport)
        assert any("image/png" in o.data for o in out.outputs)
        assert "confusion matrix (rows: actual, columns: predicted)" in interp.text
    else:
        assert isinstance(batch, BatchView) and batch.seed == 2
        assert isinstance(interp, InterpretationView)


def test_a_click_on_a_confusion_matrix_cell_shows_its_images(learn):
    interp = Interpretation.from_learner(learn)
    view = InterpretationView(interp, k=3)
    m = interp.confusion_matrix()
    for (i, j), button in view.cells.items():
        assert button.description == str(int(m[i, j]))
    i, j = max(view.cells, key=lambda cell: int(m[cell]))  # the fullest cell
    view.cells[(i, j)].click()
    assert view.selected == (i, j)
    found = view.select(i, j)
    assert len(found) == int(m[i, j]) and all(
        int(interp.targets[n]) == i and int(interp.preds[n]) == j for n in found
    )
    assert view.caption.value.startswith(f"actual {interp.classes[i]}, predicted")
    assert view.shown.value and view.shown.layout.display is None


def test_show_batch_needs_image_data_in_one_line(ip, learn, tmp_path):
    from torch.utils.data import DataLoader

    from nbtrain.core import DataLoaders
    from tests.core.conftest import make_mlp, xor_data

    frontend.set_mode("text")
    loaders = DataLoaders(DataLoader(xor_data(32), batch_size=8), None)
    ip.user_ns["plain"] = Learner(make_mlp(), loaders, device="cpu", path=tmp_path)
    ip.user_ns["learn"] = learn
    with pytest.raises(UsageError, match="show_batch needs image data") as info:
        ip.run_line_magic("show_batch", "plain")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="interpret needs validation data"):
        ip.run_line_magic("interpret", "plain")
    with pytest.raises(UsageError, match="--n must be >= 1"):
        ip.run_line_magic("show_batch", "learn --n 0")
