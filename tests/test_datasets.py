"""Data sources for evaluation: folders, list files, tensors; class indices; unreadable images; the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.errors import ShiftlabError
from shiftlab.invariance.datasets import EvaluationDataset, make_loader, open_images, parse_classes


def write_image(path: Path, size: tuple[int, int] = (12, 16), gray: bool = False, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if gray else (*size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in ("face", "nonface"):
        for index in range(2):
            write_image(root / name / f"{index}.png")
    write_image(root / "face" / "deeper" / "2.jpg")
    (root / "face" / "notes.txt").write_text("not an image, not listed")
    return root


def test_class_folders_sorted_as_imagefolder(class_folder):
    images = open_images(class_folder)
    assert images.classes == ("face", "nonface")
    assert [Path(item).relative_to(class_folder).as_posix() for item in images.items] == [
        "face/0.png",
        "face/1.png",
        "face/deeper/2.jpg",
        "nonface/0.png",
        "nonface/1.png",
    ]
    assert images.labels == (0, 0, 0, 1, 1)


def test_an_empty_class_folder_keeps_its_index(class_folder):
    (class_folder / "a_empty").mkdir()
    images = open_images(class_folder)
    assert images.classes == ("a_empty", "face", "nonface")
    assert images.labels == (1, 1, 1, 2, 2)


def test_explicit_class_order(class_folder):
    images = open_images(class_folder, classes="nonface,face")
    assert images.classes == ("nonface", "face")
    assert images.labels == (0, 0, 1, 1, 1)
    with pytest.raises(ShiftlabError, match=r"has class folder\(s\) nonface that are not among the classes given"):
        open_images(class_folder, classes=["face", "other"])


def test_flat_folder_has_no_labels(tmp_path):
    for name in ("b.png", "a.png"):
        write_image(tmp_path / name)
    images = open_images(tmp_path)
    assert [Path(item).name for item in images.items] == ["a.png", "b.png"]
    assert images.labels is None and images.classes is None


def test_missing_empty_and_mixed_folders(tmp_path):
    with pytest.raises(ShiftlabError, match=r"^data '.*nowhere': no such folder or file"):
        open_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShiftlabError, match=r"^data '.*empty': holds no images \(.png, .jpg"):
        open_images(tmp_path / "empty")
    write_image(tmp_path / "mixed" / "a.png")
    write_image(tmp_path / "mixed" / "cls" / "b.png")
    with pytest.raises(ShiftlabError, match=r"holds both images \(a.png, ...\) and class folders \(cls/, ...\)"):
        open_images(tmp_path / "mixed")


def test_list_file_with_names_and_integer_labels(tmp_path):
    for name in ("x.png", "y.png", "sub dir/z.png"):
        write_image(tmp_path / name)
    listing = tmp_path / "val.txt"
    listing.write_text("# path label\nx.png\tcat\n\ny.png\tdog\nsub dir/z.png\tcat\n")
    images = open_images(listing)
    assert images.classes == ("cat", "dog") and images.labels == (0, 1, 0)
    assert images.items[2] == str(tmp_path / "sub dir" / "z.png")
    assert open_images(listing, classes="dog,cat").labels == (1, 0, 1)
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("x.png,3\ny.png,0\n")
    assert open_images(numbers).labels == (3, 0)
    spaces = tmp_path / "spaces.txt"
    spaces.write_text("x.png 7\ny.png 2\n")
    assert open_images(spaces).labels == (7, 2)
    paths_only = tmp_path / "paths.txt"
    paths_only.write_text("x.png\ny.png\n")
    assert open_images(paths_only).labels is None


def test_list_file_naming_missing_files(tmp_path):
    write_image(tmp_path / "x.png")
    listing = tmp_path / "val.txt"
    listing.write_text("x.png\tcat\ngone.png\tdog\nalso gone.png\tdog\n")
    with pytest.raises(ShiftlabError) as error:
        open_images(listing)
    assert str(error.value) == (
        f"label file '{listing}': names 2 missing file(s): {tmp_path / 'gone.png'}, {tmp_path / 'also gone.png'}"
    )


def test_list_file_with_inconsistent_lines(tmp_path):
    write_image(tmp_path / "x.png")
    listing = tmp_path / "bad.csv"
    listing.write_text("x.png,1\nx.png\n")
    with pytest.raises(
        ShiftlabError, match=r"line 2 has 1 field\(s\); every line must be 'path' or 'path label' alike"
    ):
        open_images(listing)


def test_parse_classes(tmp_path):
    assert parse_classes(" a , b ") == ("a", "b")
    names = tmp_path / "synsets.txt"
    names.write_text("n01\nn02\n\n")
    assert parse_classes(str(names)) == ("n01", "n02")
    with pytest.raises(ShiftlabError, match=r"^classes: names a class twice: a$"):
        parse_classes("a,b,a")


def test_tensor_source_checks():
    images = open_images((torch.rand(3, 1, 8, 8), torch.tensor([0, 2, 1])), classes="a,b,c")
    assert images.labels == (0, 2, 1) and images.name(1) == "#1"
    with pytest.raises(ShiftlabError, match=r"^data: images must lie in \[0, 1\]"):
        open_images(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(ShiftlabError, match=r"^labels: class index 5 has no name among the 3 classes$"):
        open_images((torch.rand(1, 1, 4, 4), torch.tensor([5])), classes="a,b,c")


def test_dataset_loads_resizes_converts_and_reports_unreadable_files(tmp_path):
    write_image(tmp_path / "a.png", size=(20, 30), gray=True, value=255)
    (tmp_path / "b.png").write_text("this is not an image")
    write_image(tmp_path / "c.png", size=(4, 4))
    dataset = EvaluationDataset(open_images(tmp_path), channels=3, resize=10)
    first = dataset[0]
    assert first.reason is None and tuple(first.image.shape) == (3, 10, 15) and float(first.image.min()) == 1.0
    second = dataset[1]
    assert second.image is None
    assert second.reason == f"image '{tmp_path / 'b.png'}': is not an image Pillow can read (unknown or corrupt format)"
    assert second.kind == "unreadable"
    small = EvaluationDataset(open_images(tmp_path), channels=1, min_size=(8, 8))[2]
    assert small.reason == f"image '{tmp_path / 'c.png'}': is 4x4, smaller than the 8x8 the protocol needs"
    assert small.kind == "too small"


def test_links_that_lead_nowhere_are_listed_and_reported_as_unreadable(tmp_path):
    """A dangling link and a link loop with image names: in the list (counted), unreadable when loaded."""
    write_image(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "c.png")
    (tmp_path / "d").symlink_to(tmp_path / "d")  # no image name: not an image
    images = open_images(tmp_path)
    assert images.items == tuple(str(tmp_path / name) for name in ("a.png", "b.png", "c.png"))
    dataset = EvaluationDataset(images, channels=1)
    assert [(item.kind, item.reason) for item in (dataset[1], dataset[2])] == [
        (
            "unreadable",
            f"image '{tmp_path / 'b.png'}': is a symbolic link to '{tmp_path / 'gone.png'}', which does not exist",
        ),
        ("unreadable", f"image '{tmp_path / 'c.png'}': is a symbolic link loop (it never reaches a file)"),
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\nb.png\n")
    assert len(open_images(listing)) == 2  # a listed link is there, unreadable: skipped when loaded, not missing


def test_labels_are_ascii_digits_or_names(tmp_path):
    """'²' passes str.isdigit but is no integer: a class name, never an internal error."""
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    listing = tmp_path / "val.txt"
    listing.write_text("a.png ²\nb.png 3\n", encoding="utf-8")
    images = open_images(listing)
    assert images.classes == ("3", "²") and images.labels == (1, 0)


def test_names_are_shown_on_one_line_and_kept_losslessly(tmp_path):
    import os

    root = tmp_path / os.fsdecode(b"\xfd")
    write_image(root / "a\nb.png")
    write_image(root / os.fsdecode(b"\xff.png"))
    images = open_images(root)
    assert images.description == f"folder '{tmp_path}/\\xfd' (2 images)"
    assert [images.name(index) for index in range(2)] == [f"{tmp_path}/\\xfd/a\\nb.png", f"{tmp_path}/\\xfd/\\xff.png"]
    assert bytes.fromhex(images.name_bytes(0)) == os.fsencode(root / "a\nb.png")  # the folder's byte is not UTF-8
    assert bytes.fromhex(images.name_bytes(1)) == os.fsencode(root / os.fsdecode(b"\xff.png"))


def test_dataset_converts_tensor_channels():
    images = open_images(torch.rand(2, 3, 5, 5))
    gray = EvaluationDataset(images, channels=1)[0].image
    expected = (images.tensors[0] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    assert torch.allclose(gray, expected)
    assert EvaluationDataset(open_images(torch.rand(2, 1, 5, 5)), channels=3)[1].image.shape == (3, 5, 5)


@pytest.mark.slow
def test_loader_with_spawned_workers_yields_the_same_batches(tmp_path):
    for index in range(7):
        write_image(tmp_path / f"{index}.png", value=20 * index)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    dataset = EvaluationDataset(open_images(tmp_path), channels=3, resize=8)
    batches = [[0, 1, 2], [3], [4, 5, 6, 7]]
    alone = list(make_loader(dataset, batches, workers=0))
    spawned = list(make_loader(dataset, batches, workers=2))
    assert [[item.index for item in batch] for batch in spawned] == batches
    for first, second in zip(alone, spawned):
        for a, b in zip(first, second):
            assert a.reason == b.reason
            assert (a.image is None and b.image is None) or torch.equal(a.image, b.image)


def test_choose_workers_rules(monkeypatch):
    from shiftlab.invariance.datasets import MIN_IMAGES_FOR_WORKERS, ImageSet, choose_workers

    folder = ImageSet(tuple(f"{index}.png" for index in range(1000)), None, None, "a folder")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_workers(open_images(torch.rand(2, 3, 4, 4)), 2, gpu, cores=16) == (
        0,
        "the images are in memory: nothing to decode",
    )
    assert choose_workers(folder, 1000, gpu, cores=2) == (
        0,
        "2 CPU cores: decoding processes would take them from the model",
    )
    assert choose_workers(folder, 1000, cpu, cores=1)[0] == 0
    assert choose_workers(folder, MIN_IMAGES_FOR_WORKERS - 1, gpu, cores=16) == (
        0,
        "255 images: fewer than 256 do not repay starting decoding processes",
    )
    assert choose_workers(folder, 1000, gpu, cores=16) == (
        8,
        "the model runs on cuda: 8 processes decode on 16 CPU cores",
    )
    assert choose_workers(folder, 1000, gpu, cores=4)[0] == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert choose_workers(folder, 1000, cpu, cores=8) == (0, "the model's 8 threads use all 8 CPU cores")
    assert choose_workers(folder, 1000, cpu, cores=10) == (
        2,
        "2 of the 2 CPU core(s) that the model's 8 threads leave free",
    )
    assert choose_workers(folder, 1000, cpu, cores=32)[0] == 4
