"""ImageData on tiny generated folders: layout, labels, bad files, loaders, signatures, errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbtrain.vision import BadImagesWarning, ImageData, make_shapes_dataset
from tests.vision.conftest import write_folder, write_image


def build(path: Path, **kwargs) -> ImageData:
    kwargs.setdefault("num_workers", 0)
    return ImageData.from_folder(path, **kwargs)


# ------------------------------------------------------------------ layout
def test_classes_are_sorted_and_labels_are_their_indices(folder_factory):
    data = build(folder_factory(classes=("owls", "cats", "dogs")))
    assert data.classes == ["cats", "dogs", "owls"]
    assert data.c == 3
    assert len(data.train_items) == 15 and len(data.valid_items) == 6
    for path, label in data.train_items + data.valid_items:
        assert data.classes[label] == path.parent.name
    assert data.train_files == sorted(data.train_files)
    assert data.train_labels == [0] * 5 + [1] * 5 + [2] * 5


@pytest.mark.parametrize("name", ["valid", "val"])
def test_valid_or_val_is_found(folder_factory, name):
    data = build(folder_factory(valid=name))
    assert {p.parts[-3] for p in data.valid_files} == {name}


def test_explicit_split_folder_names(folder_factory):
    data = build(folder_factory(train="trn", valid="holdout"), train="trn", valid="holdout")
    assert len(data.valid_items) == 6


def test_missing_or_ambiguous_validation_folder(folder_factory):
    root = folder_factory(valid="test")
    with pytest.raises(FileNotFoundError, match="expected 'valid' or 'val'"):
        build(root)
    root = folder_factory(valid="val")
    write_folder(root, valid="valid")
    with pytest.raises(ValueError, match="both 'valid' and 'val'"):
        build(root)


def test_valid_classes_must_be_train_classes(image_folder):
    write_image(image_folder / "valid" / "wolves" / "w.jpg", seed=1)
    with pytest.raises(ValueError, match=r"but not in .*\['wolves'\]"):
        build(image_folder)


def test_a_valid_set_may_lack_a_class(image_folder):
    for file in (image_folder / "valid" / "owls").iterdir():
        file.unlink()
    (image_folder / "valid" / "owls").rmdir()
    data = build(image_folder)
    assert data.classes == ["cats", "dogs", "owls"] and set(data.valid_labels) == {0, 1}


def test_hidden_files_and_folders_are_ignored(image_folder):
    (image_folder / "train" / "cats" / ".DS_Store").write_bytes(b"\0\1")
    write_image(image_folder / "train" / ".ipynb_checkpoints" / "x.jpg", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = build(image_folder)
    assert data.classes == ["cats", "dogs", "owls"] and len(data.train_items) == 15


def test_grey_and_palette_images_become_rgb(image_folder):
    folder = image_folder / "train" / "cats"
    Image.new("L", (20, 10), 128).save(folder / "grey.png")
    palette = Image.new("P", (20, 10), 0)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    data = build(image_folder, size=16, augment=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _ = data.train_ds[data.train_files.index(folder / "grey.png")]
        y, _ = data.train_ds[data.train_files.index(folder / "palette.png")]
    assert x.shape == y.shape == (3, 16, 16)


# --------------------------------------------------------------- csv
def test_csv_split_is_seeded_and_repeatable(csv_folder):
    first = ImageData.from_csv(csv_folder, valid_pct=0.2, seed=3, num_workers=0)
    np.random.seed(123)
    torch.manual_seed(123)
    again = ImageData.from_csv(csv_folder, valid_pct=0.2, seed=3, num_workers=0)
    other = ImageData.from_csv(csv_folder, valid_pct=0.2, seed=4, num_workers=0)
    assert first.valid_items == again.valid_items and first.train_items == again.train_items
    assert first.valid_files != other.valid_files
    assert len(first.valid_items) == 4 and len(first.train_items) == 16
    assert first.classes == ["a", "b"]
    assert set(first.train_files) | set(first.valid_files) == set((csv_folder / "images").iterdir())
    for path, label in first.train_items:
        assert label == int(path.stem[3:]) % 2


def test_csv_naming_missing_files(csv_folder):
    with (csv_folder / "labels.csv").open("a") as handle:
        handle.write("".join(f"gone{i}.png,a\n" for i in range(7)))
    with pytest.raises(FileNotFoundError, match=r"7 of 27 files .*gone0.png.*\(2 more\)"):
        ImageData.from_csv(csv_folder)


def test_csv_errors(csv_folder):
    with pytest.raises(ValueError, match="valid_pct"):
        ImageData.from_csv(csv_folder, valid_pct=1.0)
    with pytest.raises(FileNotFoundError, match="label file not found"):
        ImageData.from_csv(csv_folder, csv="nope.csv")
    (csv_folder / "dup.csv").write_text("f,l\nimg00.png,a\nimg00.png,b\n")
    with pytest.raises(ValueError, match=r"more than once.*img00\.png"):
        ImageData.from_csv(csv_folder, csv="dup.csv")
    (csv_folder / "short.csv").write_text("f,l\nimg00.png\n")
    with pytest.raises(ValueError, match="line 2: expected 'file,label'"):
        ImageData.from_csv(csv_folder, csv="short.csv")


def test_csv_bad_files_are_skipped_with_one_warning(csv_folder):
    (csv_folder / "images" / "empty.png").write_bytes(b"")
    write_image(csv_folder / "images" / "anim.gif", seed=9)
    with (csv_folder / "labels.csv").open("a") as handle:
        handle.write("empty.png,a\nanim.gif,b\n")
    with pytest.warns(BadImagesWarning) as record:
        data = ImageData.from_csv(csv_folder, num_workers=0)
    assert len(record) == 1
    assert "skipped 2" in str(record[0].message)
    assert sorted(p.name for p in data.bad_files) == ["anim.gif", "empty.png"]
    assert len(data.train_items) + len(data.valid_items) == 20


# ----------------------------------------------------------------- bad files
def test_bad_files_are_skipped_and_reported_once(image_folder):
    cats = image_folder / "train" / "cats"
    good = (cats / "cats_0.jpg").read_bytes()
    (cats / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("not an image at all\n")
    write_image(image_folder / "valid" / "dogs" / "placeholder.gif", seed=5)
    with pytest.warns(BadImagesWarning) as record:
        data = build(image_folder)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("skipped 4 bad image file(s)")
    for name in ("truncated.jpg (unreadable", "empty.jpg (empty file)", "notes.jpg (not an image)"):
        assert name in message
    assert "placeholder.gif (unsupported type .gif)" in message
    assert [p.name for p in data.bad_files] == [
        "empty.jpg", "notes.jpg", "truncated.jpg", "placeholder.gif"
    ]  # fmt: skip
    assert len(data.train_items) == 15 and len(data.valid_items) == 6
    assert not set(data.bad_files) & set(data.train_files + data.valid_files)
    next(iter(data.train))  # nothing bad reaches the loader


def test_checking_hymenoptera_decodes_each_photo_once_at_draft_scale(hymenoptera, monkeypatch):
    # What keeps the check quick: one decode per photo, at 1/8 scale (JPEG draft mode); the
    # GIF is refused by its name. The seconds are in bench/responsiveness.py.
    opened, open_image = [], Image.open

    def spy(path, *args, **kwargs):
        img = open_image(path, *args, **kwargs)
        opened.append((Path(path), img))
        return img

    monkeypatch.setattr(Image, "open", spy)
    with pytest.warns(BadImagesWarning, match=r"skipped 1 .*imageNotFound.gif"):
        data = build(hymenoptera)
    monkeypatch.undo()
    assert data.classes == ["ants", "bees"]
    assert (len(data.train_items), len(data.valid_items)) == (244, 153)
    files = data.train_files + data.valid_files
    assert sorted(path for path, _ in opened) == sorted(files)  # each once, not the GIF
    decoded = sum(img.width * img.height for _, img in opened)
    full = 0
    for path in files:
        with Image.open(path) as img:  # the header alone
            full += img.width * img.height
    assert decoded * 32 <= full, f"decoded {decoded} of {full} pixels: not at draft scale"


# ------------------------------------------------------------------- loaders
def test_loaders_yield_batches_of_the_right_shape(image_folder):
    data = build(image_folder, size=32, bs=4)
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.int64
    assert type(x) is torch.Tensor
    assert [len(y) for _, y in data.valid] == [4, 2]
    assert torch.cat([y for _, y in data.fix]).tolist() == data.train_labels
    assert x.min() >= -1.0 and x.max() <= 1.0  # mean = std = 0.5


def test_train_loader_shuffles_and_valid_keeps_order(image_folder):
    data = build(image_folder, size=16, bs=15)
    assert torch.cat([y for _, y in data.train]).tolist() != data.train_labels
    assert torch.cat([y for _, y in data.valid]).tolist() == data.valid_labels


def test_a_last_training_batch_of_one_is_dropped(image_folder):
    data = build(image_folder, size=16, bs=7)  # 15 = 7 + 7 + 1
    assert [len(y) for _, y in data.train] == [7, 7]
    assert [len(y) for _, y in data.fix] == [7, 7, 1]


def test_eval_transform_is_deterministic_and_augment_off_uses_it(image_folder):
    data = build(image_folder, size=24, augment=False)
    assert torch.equal(data.train_ds[0][0], data.fix_ds[0][0])
    augmented = build(image_folder, size=24)
    torch.manual_seed(0)
    assert not torch.equal(augmented.train_ds[0][0], augmented.fix_ds[0][0])
    assert torch.equal(augmented.fix_ds[0][0], data.fix_ds[0][0])


def test_set_size_and_bs_rebuild_the_loaders(image_folder):
    data = build(image_folder, size=32, bs=4)
    first = data.train
    assert data.train is first  # cached
    assert data.set_size(48) is data
    assert next(iter(data.train))[0].shape == (4, 3, 48, 48)
    data.bs = 2
    assert next(iter(data.valid))[0].shape == (2, 3, 48, 48)
    data.size = 20
    assert next(iter(data.fix))[0].shape == (2, 3, 20, 20)
    data.augment = False
    assert torch.equal(data.train_ds[0][0], data.fix_ds[0][0])
    assert data.train is not first


def test_with_size_leaves_the_original_alone(image_folder):
    data = build(image_folder, size=32, bs=4)
    small = data.with_size(16)
    assert (data.size, small.size) == (32, 16)
    assert small.train_items == data.train_items and small.classes == data.classes
    assert next(iter(small.valid))[0].shape[-1] == 16
    assert next(iter(data.valid))[0].shape[-1] == 32


def test_workers_load_every_training_image(image_folder):
    data = build(image_folder, size=16, bs=4, num_workers=2)
    assert data.num_workers == 2
    labels = sorted(torch.cat([y for _, y in data.train]).tolist())
    assert labels == sorted(data.train_labels)
    assert data.train.persistent_workers
    assert len(torch.cat([x for x, _ in data.valid])) == 6


def test_default_workers_depend_on_cuda(image_folder, monkeypatch):
    data = ImageData.from_folder(image_folder)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert data.num_workers == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert data.num_workers == 8


# ---------------------------------------------------------------- signatures
def test_eval_signature_follows_size_and_normalization(image_folder):
    data = build(image_folder, size=32)
    key = data.eval_signature()
    assert build(image_folder, size=32, augment=False, bs=3).eval_signature() == key
    assert data.with_size(40).eval_signature() != key
    assert build(image_folder, size=32, mean=(0.4, 0.5, 0.5)).eval_signature() != key
    data.set_size(33)
    assert data.eval_signature() != key


def test_set_normalization_rebuilds_and_rekeys(image_folder):
    data = build(image_folder, size=16, augment=False)
    before, key, loader = data.fix_ds[0][0], data.eval_signature(), data.valid
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert data.set_normalization(*imagenet) is data
    assert (data.mean, data.std) == imagenet
    assert data.eval_signature() != key and data.valid is not loader
    after = data.fix_ds[0][0]
    pixels = before * 0.5 + 0.5  # undo mean = std = 0.5
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in imagenet)
    expected = (pixels - mean) / std
    assert torch.allclose(after, expected, atol=1e-5)
    with pytest.raises(ValueError, match="std must be positive"):
        data.set_normalization((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="mean must be 3 numbers"):
        data.set_normalization((0, 0), (1, 1, 1))


def test_file_signature_follows_the_files(image_folder):
    data = build(image_folder)
    train, valid = data.file_signature("train"), data.file_signature("valid")
    assert train != valid
    assert build(image_folder).file_signature("train") == train
    stat = data.valid_files[0].stat()
    os.utime(data.valid_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert data.file_signature("train") == train
    assert data.file_signature("valid") != valid
    with pytest.raises(ValueError, match="'test'"):
        data.file_signature("test")


def test_file_signature_is_relative_to_the_root(folder_factory, tmp_path):
    data = build(folder_factory())
    moved = tmp_path / "moved"
    data.path.rename(moved)
    assert build(moved).file_signature("train") != ""  # builds after a move
    assert build(moved).file_signature("train") == build(moved).file_signature("train")


# -------------------------------------------------------------------- errors
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data folder not found: .*nowhere"):
        build(tmp_path / "nowhere")


def test_no_class_folders(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "valid").mkdir()
    with pytest.raises(ValueError, match=r"no class folders in .*train"):
        build(tmp_path / "d")


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "train" / "zebras").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder: .*train/zebras"):
        build(image_folder)


def test_a_class_of_only_bad_files(image_folder):
    (image_folder / "train" / "zebras").mkdir()
    (image_folder / "train" / "zebras" / "z.jpg").write_text("no")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error comes alone, without the warning
        with pytest.raises(ValueError, match=r"class folder .*zebras' has no usable images"):
            build(image_folder)


def test_no_usable_image_at_all(tmp_path):
    for split in ("train", "valid"):
        (tmp_path / "d" / split / "cats").mkdir(parents=True)
        (tmp_path / "d" / split / "cats" / "a.txt").write_text("text")
    with pytest.raises(ValueError, match=r"no usable images in .*\(2 files skipped"):
        build(tmp_path / "d")


@pytest.mark.parametrize(
    ("option", "value"),
    [("size", 0), ("bs", -1), ("bs", 2.5), ("num_workers", -1), ("std", (0.5, 0, 0.5))],
)
def test_bad_settings_raise_with_the_value(image_folder, option, value):
    with pytest.raises(ValueError, match=option):
        build(image_folder, **{option: value})


# ----------------------------------------------------------------- synthetic
def test_shapes_dataset_is_deterministic_and_loads(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", n_per_class=3, n_valid_per_class=2, size=32, seed=1)
    b = make_shapes_dataset(tmp_path / "b", n_per_class=3, n_valid_per_class=2, size=32, seed=1)
    c = make_shapes_dataset(tmp_path / "c", n_per_class=3, n_valid_per_class=2, size=32, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 15
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    data = build(a, size=32)
    assert data.classes == ["circle", "square", "triangle"]
    assert (len(data.train_items), len(data.valid_items)) == (9, 6)


def test_shapes_dataset_reuses_or_refuses_folders(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", n_per_class=2, n_valid_per_class=1, size=16)
    mtime = (root / "train" / "circle" / "circle_0000.png").stat().st_mtime_ns
    make_shapes_dataset(root, n_per_class=2, n_valid_per_class=1, size=16)
    assert (root / "train" / "circle" / "circle_0000.png").stat().st_mtime_ns == mtime
    make_shapes_dataset(root, n_per_class=1, n_valid_per_class=1, size=16)  # replaces its own
    assert len(list((root / "train" / "circle").iterdir())) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        make_shapes_dataset(tmp_path / "mine")
    with pytest.raises(ValueError, match="hexagon"):
        make_shapes_dataset(tmp_path / "x", classes=("circle", "hexagon"))


# ------------------------------------------------------------ from_path: any layout
def test_a_folder_of_class_folders_is_split_per_class_the_same_every_time(tmp_path):
    root = tmp_path / "photos"
    for c, name in enumerate(("cats", "dogs")):
        for i in range(10):
            write_image(root / name / f"{name}_{i}.jpg", seed=100 * c + i)
    data = ImageData.from_path(root, size=32, bs=4, num_workers=0, seed=3)
    again = ImageData.from_folder(root, size=32, bs=4, num_workers=0, seed=3)
    assert data.classes == ["cats", "dogs"]
    assert [label for _, label in data.valid_items].count(0) == 2  # 20% of each class
    assert [label for _, label in data.valid_items].count(1) == 2
    assert data.valid_items == again.valid_items and data.train_items == again.train_items
    other = ImageData.from_folder(root, size=32, bs=4, num_workers=0, seed=4)
    assert other.valid_items != data.valid_items
    assert not set(data.valid_files) & set(data.train_files)
    assert data.source == {"from": "folder", "path": str(root.resolve()), "seed": 3,
                           "valid_pct": 0.2}  # fmt: skip
    with pytest.raises(ValueError, match="valid_pct must be between 0 and 1"):
        ImageData.from_folder(root, valid_pct=1.5)


def test_from_path_reads_a_csv_and_a_train_valid_folder(csv_folder, image_folder):
    by_csv = ImageData.from_path(csv_folder / "labels.csv", size=32, bs=4, num_workers=0)
    direct = ImageData.from_csv(csv_folder, size=32, bs=4, num_workers=0)
    assert by_csv.train_items == direct.train_items and by_csv.classes == direct.classes
    by_folder = ImageData.from_path(image_folder, size=32, bs=4, num_workers=0)
    assert by_folder.train_items == ImageData.from_folder(image_folder, num_workers=0).train_items
    with pytest.raises(FileNotFoundError, match="label file not found"):
        ImageData.from_path(csv_folder / "missing.csv")
