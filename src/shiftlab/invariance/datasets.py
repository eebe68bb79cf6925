"""Datasets for evaluation: where the images are, their class indices, and a loader that survives bad files.

A data source is one of

* a **folder** of images, flat (no labels) or with one sub-folder per class
  (labels from the sub-folder names, sorted as torchvision's ``ImageFolder``
  sorts them, or in the order of an explicit ``classes`` list);
* a **list file** (``.txt``, ``.csv``, ``.tsv`` or any other text file): one image
  path per line, optionally followed by a label, an integer class index or a
  class name (separated by a tab, a comma in ``.csv`` files, or else the last
  run of spaces); relative paths are read from the list file's folder; blank
  lines and lines starting with ``#`` are ignored;
* images already in memory: a float tensor ``(N, C, H, W)`` in ``[0, 1]``, or a
  pair ``(images, labels)``;
* the name of a bundled data set (:data:`BUNDLED_DATA`, when one ships).

Class indices follow one rule everywhere: the position of the class name in
the class list. The class list is the sorted sub-folder names, or the sorted
distinct names of a list file, unless ``classes`` gives it explicitly.

Images are decoded in the loader's worker processes. An image that cannot be
read (truncated, not an image, too small for the protocol) never aborts a run:
:class:`EvaluationDataset` returns a :class:`LoadedImage` without pixels and
with the reason, which the evaluation counts and reports by name.

Worker processes are started with the ``spawn`` method: a *forked* child that
runs torch operations can hang on torch's GNU OpenMP thread pool. Each one
imports torch and shiftlab before it decodes anything (a second or more), and
on a CPU it competes with the model for the cores: :func:`choose_workers`
(``--workers auto``) starts them only where they pay.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shiftlab._format import name_bytes, printable
from shiftlab.data import Resize
from shiftlab.errors import ShiftlabError, check, describe, fail, first_line
from shiftlab.images import load_image

__all__ = [
    "BUNDLED_DATA",
    "IMAGE_EXTENSIONS",
    "EvaluationDataset",
    "ImageSet",
    "LoadedImage",
    "MIN_IMAGES_FOR_WORKERS",
    "TOO_SMALL",
    "UNREADABLE",
    "choose_workers",
    "load_batches",
    "make_loader",
    "open_images",
    "parse_classes",
]

#: File name endings read as images in folders (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _bundled_digits() -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    from shiftlab.digits import load_digits  # type: ignore[import-not-found,unused-ignore]

    images, labels = load_digits("test")
    return torch.as_tensor(images), torch.as_tensor(labels), tuple(str(digit) for digit in range(10))


#: Bundled data sets: name -> (loader returning images, labels and class names, description).
BUNDLED_DATA: dict[str, tuple[Callable[[], tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]], str]] = {
    "digits": (_bundled_digits, "handwritten digits 0-9 shipped with shiftlab (the test split, 28x28 gray)"),
}


@dataclass(frozen=True)
class ImageSet:
    """The images of an evaluation: what they are called, their labels and the class names.

    ``items`` are file paths, or indices into ``tensors`` for images in memory.
    ``labels`` are class indices (``None``: no labels). ``classes`` names the
    classes in index order (``None`` when unknown, e.g. integer labels without names).
    """

    items: tuple[Any, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    description: str
    tensors: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        """How the outputs call image ``index``: its path, or ``#index`` for images in memory.

        Shown on one line, whatever the file name holds (:func:`shiftlab._format.printable`:
        line breaks, control characters and bytes that are not UTF-8 as backslash escapes);
        :meth:`name_bytes` keeps a name that is not UTF-8 losslessly.
        """
        return printable(self._raw_name(index))

    def name_bytes(self, index: int) -> str | None:
        """The file name's bytes in hexadecimal when they are not valid UTF-8 (else ``None``)."""
        return name_bytes(self._raw_name(index))

    def _raw_name(self, index: int) -> str:
        return str(self.items[index]) if self.tensors is None else f"#{index}"

    def fingerprint(self) -> str:
        """A hash of the names, labels and classes (not the pixels): a resumed run must see the same list."""
        digest = hashlib.sha256()
        for index in range(len(self.items)):
            digest.update(self._raw_name(index).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(repr(self.labels).encode() + repr(self.classes).encode())
        if self.tensors is not None:
            digest.update(repr(tuple(self.tensors.shape)).encode())
            digest.update(hashlib.sha256(self.tensors.contiguous().numpy().tobytes()).digest())
        return digest.hexdigest()[:16]


def parse_classes(spec: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Class names from ``"a,b,c"``, a sequence, or a file with one name per line (``None`` stays ``None``).

    Example:
        >>> parse_classes("nonface, face")
        ('nonface', 'face')
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        path = Path(spec)
        if "," not in spec and _is_file(path):
            names = [line.strip() for line in _read_text(path, f"classes file '{spec}'").splitlines()]
            names = [name for name in names if name and not name.startswith("#")]
        else:
            names = [name.strip() for name in spec.split(",")]
    else:
        names = [str(name).strip() for name in spec]
    check(names and all(names), "classes", f"expected class names separated by commas, got {spec!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    check(not duplicates, "classes", f"names a class twice: {', '.join(duplicates)}")
    return tuple(names)


def open_images(source: Any, *, classes: str | Sequence[str] | None = None) -> ImageSet:
    """Find the images of a data source (see the module docstring) and their labels.

    Args:
        source: a folder, a list file, a bundled data set's name, a tensor ``(N, C, H, W)``
            or a pair ``(images, labels)``.
        classes: the class names in index order (``"a,b"``, a sequence, or a file with one
            name per line); default: sorted sub-folder names or label names.

    Raises:
        ShiftlabError: a missing path, a folder without images, a list file that names missing
            files or has unreadable labels, class folders that are not in ``classes``.

    Example:
        >>> images = open_images(torch.zeros(3, 1, 8, 8))
        >>> len(images), images.labels
        (3, None)
    """
    names = parse_classes(classes)
    if isinstance(source, torch.Tensor) or (isinstance(source, (tuple, list)) and len(source) == 2):
        return _from_tensors(source, names)
    check(isinstance(source, (str, Path)), "data", f"expected a folder, a list file or tensors, got {describe(source)}")
    text = str(source)
    path = Path(text)
    if text in BUNDLED_DATA and not path.exists():
        factory, description = BUNDLED_DATA[text]
        try:
            images, labels, bundled_classes = factory()
        except ImportError:
            fail("data", f"the bundled data set {text!r} is not available in this installation")
        image_set = _from_tensors((images, labels), names or bundled_classes)
        return ImageSet(image_set.items, image_set.labels, image_set.classes, description, image_set.tensors)
    subject = f"data '{text}'"
    try:
        status = path.stat()
    except FileNotFoundError:
        fail(subject, f"no such folder or file (and not a bundled data set: {', '.join(BUNDLED_DATA)})")
    except OSError as error:  # a name too long, a folder that cannot be entered, a link loop: an input, never written
        fail(subject, f"cannot be read ({error.strerror or error})")
    if stat.S_ISDIR(status.st_mode):
        return _from_folder(path, names)
    return _from_list(path, names)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long to be a file, for one
        return False


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    """A file with an image's name, or a link with one that leads nowhere (skipped and reported when loaded)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
        return False
    return _is_file(path) or (_is_link(path) and not path.exists())  # exists() follows the link


def _from_folder(root: Path, classes: tuple[str, ...] | None) -> ImageSet:
    subject = f"data '{root}'"
    try:
        entries = sorted(root.iterdir(), key=lambda entry: entry.name)
    except OSError as error:
        fail(subject, f"cannot be listed ({error.strerror or error})")
    flat = [entry for entry in entries if _is_image(entry)]
    folders = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    # every sub-folder is a class, even an empty one (as torchvision's find_classes): indices never shift
    class_files = {folder.name: sorted(_walk_images(folder)) for folder in folders}
    filled = [name for name, files in class_files.items() if files]
    if flat and filled:
        fail(
            subject,
            f"holds both images ({flat[0].name}, ...) and class folders ({filled[0]}/, ...):"
            " put every image in a class folder, or none",
        )
    if flat:
        check(classes is None, "classes", f"were given, but '{root}' is a flat folder without class folders")
        return ImageSet(
            tuple(str(path) for path in flat), None, None, f"folder '{printable(root)}' ({len(flat)} images)"
        )
    check(filled, subject, f"holds no images ({', '.join(IMAGE_EXTENSIONS)}), neither flat nor in class folders")
    if classes is None:
        classes = tuple(sorted(class_files))
    unknown = [name for name in class_files if name not in classes]
    check(
        not unknown,
        subject,
        f"has class folder(s) {', '.join(unknown[:4])} that are not among the classes given ({', '.join(classes)})",
    )
    items: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        for path in class_files.get(name, []):
            items.append(str(path))
            labels.append(index)
    description = f"folder '{printable(root)}' ({len(items)} images in {len(filled)} of {len(classes)} class folders)"
    return ImageSet(tuple(items), tuple(labels), classes, description)


def _walk_images(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if _is_image(path) and not _hidden(path, folder)]


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _read_text(path: Path, subject: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        fail(subject, f"cannot be read ({error.strerror or error})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        fail(subject, "is not a UTF-8 text file (expected one image path per line)")


def _split_line(line: str, csv_file: bool) -> list[str]:
    if csv_file:
        return [field.strip() for field in next(csv.reader(io.StringIO(line)))]
    if "\t" in line:
        return [field.strip() for field in line.split("\t")]
    parts = line.rsplit(None, 1)
    return parts if len(parts) == 2 else [line.strip()]


def _from_list(path: Path, classes: tuple[str, ...] | None) -> ImageSet:
    subject = f"label file '{path}'"
    csv_file = path.suffix.lower() == ".csv"
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(_read_text(path, subject).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows.append((number, _split_line(line, csv_file)))
    check(rows, subject, "lists no images")
    widths = {len(fields) for _, fields in rows}
    if len(widths) > 1 or max(widths) > 2:
        number, fields = next((n, f) for n, f in rows if len(f) != len(rows[0][1]) or len(f) > 2)
        fail(subject, f"line {number} has {len(fields)} field(s); every line must be 'path' or 'path label' alike")
    paths = [Path(fields[0]) if Path(fields[0]).is_absolute() else path.parent / fields[0] for _, fields in rows]
    missing = [str(item) for item in paths if not _is_file(item) and not _is_link(item)]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        fail(subject, f"names {len(missing)} missing file(s): {shown}")
    items = tuple(str(item) for item in paths)
    if widths == {1}:
        check(classes is None, "classes", f"were given, but {subject} has no labels")
        return ImageSet(items, None, None, f"list '{printable(path)}' ({len(items)} images)")
    texts = [fields[1] for _, fields in rows]
    numeric = all(_is_index(text) for text in texts)
    if numeric and classes is None:
        labels = tuple(int(text) for text in texts)
        return ImageSet(items, labels, None, f"list '{printable(path)}' ({len(items)} images, integer labels)")
    if classes is None:
        classes = tuple(sorted(set(texts)))
    lookup = {name: index for index, name in enumerate(classes)}
    labels_list = []
    for (number, _), text in zip(rows, texts):
        if text in lookup:
            labels_list.append(lookup[text])
        elif numeric:
            labels_list.append(int(text))
        else:
            fail(subject, f"line {number}: label {text!r} is not one of the classes ({', '.join(classes[:6])}...)")
    description = f"list '{printable(path)}' ({len(items)} images, {len(classes)} classes)"
    return ImageSet(items, tuple(labels_list), classes, description)


def _is_index(text: str) -> bool:
    """A class index: ASCII digits only (``str.isdigit`` also accepts '²' and other digits ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _from_tensors(source: Any, classes: tuple[str, ...] | None) -> ImageSet:
    images, labels = (source, None) if isinstance(source, torch.Tensor) else source
    images = torch.as_tensor(images)
    check(images.ndim == 4, "data", f"images in memory must be (N, C, H, W), got {describe(images)}")
    check(images.shape[0] > 0, "data", "holds no images (N = 0)")
    check(images.shape[1] in (1, 3), "data", f"images must have 1 or 3 channels, got {describe(images)}")
    check(images.is_floating_point(), "data", f"images must be floats in [0, 1], got {describe(images)}")
    images = images.detach().to("cpu", torch.float32).contiguous()
    check(bool(torch.isfinite(images).all()), "data", "images hold NaN or infinite values")
    check(
        float(images.min()) >= 0.0 and float(images.max()) <= 1.0,
        "data",
        f"images must lie in [0, 1], got values from {float(images.min()):g} to {float(images.max()):g}",
    )
    label_tuple = None
    if labels is not None:
        values = torch.as_tensor(labels)
        check(
            values.ndim == 1 and values.shape[0] == images.shape[0] and not values.is_floating_point(),
            "labels",
            f"expected {images.shape[0]} integer class indices, got {describe(values)}",
        )
        label_tuple = tuple(int(value) for value in values.tolist())
        check(min(label_tuple) >= 0, "labels", f"class indices must be >= 0, got {min(label_tuple)}")
        if classes is not None:
            check(
                max(label_tuple) < len(classes),
                "labels",
                f"class index {max(label_tuple)} has no name among the {len(classes)} classes",
            )
    shape = "x".join(str(size) for size in images.shape[1:])
    return ImageSet(
        tuple(range(images.shape[0])), label_tuple, classes, f"{images.shape[0]} images in memory ({shape})", images
    )


#: Why an image was skipped, in short (what the command line counts): it could not be read, or it is too small.
UNREADABLE = "unreadable"
TOO_SMALL = "too small"


@dataclass(frozen=True)
class LoadedImage:
    """One item from :class:`EvaluationDataset`: pixels ``(C, H, W)`` in ``[0, 1]``, or ``None`` and the reason.

    ``reason`` is one line that names the image; ``kind`` says in short why (:data:`UNREADABLE`,
    :data:`TOO_SMALL`), for counting skipped images by reason.
    """

    index: int
    image: torch.Tensor | None
    label: int
    reason: str | None
    kind: str | None = None


class EvaluationDataset(torch.utils.data.Dataset):
    """Loads image ``i`` of an :class:`ImageSet` with ``channels`` channels, resized by ``resize``.

    ``resize`` is a :class:`~shiftlab.data.Resize` (a model's own interpolation, or both sides with ``squash``), or
    an integer: the shorter side, bilinear and antialiased.

    Images are *not* normalised or cropped here: shifted views are cut from this
    base image first (a crop window needs the pixels around it), and each model
    normalises its own copy. An image that cannot be read (missing, not an image,
    truncated, a link that leads nowhere), or is smaller than ``min_size``, comes
    back without pixels and with the reason (one line).

    Shape:
        - output image: :math:`(C, H, W)`, ``C = channels``; the shorter side is ``resize`` when given
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        channels: int,
        resize: int | Resize | None = None,
        min_size: tuple[int, int] = (1, 1),
    ) -> None:
        self.images = images
        self.channels = channels
        self.resize = Resize.make(resize) if isinstance(resize, int) else resize
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> LoadedImage:
        label = self.images.labels[index] if self.images.labels is not None else -1
        try:
            image = self._decode(index)
        except ShiftlabError as error:
            return LoadedImage(index, None, label, str(error), UNREADABLE)
        except Exception as error:  # a decoder may raise anything on a hostile file; never abort a long run
            return LoadedImage(
                index, None, label, f"image '{self.images.name(index)}': {first_line(error)}", UNREADABLE
            )
        problem = self._size_problem(index, image)
        if problem is not None:
            return LoadedImage(index, None, label, problem, TOO_SMALL)
        return LoadedImage(index, image, label, None)

    def load(self, index: int) -> torch.Tensor:
        """The base image ``(C, H, W)``; raises :class:`ShiftlabError` when it cannot be used."""
        image = self._decode(index)
        problem = self._size_problem(index, image)
        if problem is not None:
            raise ShiftlabError(problem)
        return image

    def _decode(self, index: int) -> torch.Tensor:
        tensors = self.images.tensors
        if tensors is not None:
            image = tensors[index]
            if image.shape[0] != self.channels:
                image = image.expand(3, -1, -1) if self.channels == 3 else _luma(image)
            image = image.clone()
        else:
            array = load_image(self.images.items[index], grayscale=self.channels == 1)
            image = torch.from_numpy(array)
            image = image[None].expand(self.channels, -1, -1) if image.ndim == 2 else image
        if self.resize is not None:
            image = self.resize(image)
        return image.contiguous()

    def _size_problem(self, index: int, image: torch.Tensor) -> str | None:
        height, width = image.shape[-2:]
        need_height, need_width = self.min_size
        if height >= need_height and width >= need_width:
            return None
        return (
            f"image '{self.images.name(index)}': is {height}x{width},"
            f" smaller than the {need_height}x{need_width} the protocol needs"
        )


def _luma(image: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)[:, None, None]
    return (image * weights).sum(0, keepdim=True)


def _collate(items: list[LoadedImage]) -> list[LoadedImage]:
    return items  # images may differ in size: the evaluation groups them itself


def load_batches(
    dataset: EvaluationDataset, batches: Sequence[Sequence[int]], *, workers: int = 0
) -> Iterator[list[LoadedImage]]:
    """The batches of :func:`make_loader`, as an iterator (its worker processes start now).

    torch warns, when there are more workers than it suggests for this machine, both when the loader is made
    and when its iterator starts: the warning is shown once.
    """
    loader = make_loader(dataset, batches, workers=workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        return iter(loader)


def make_loader(
    dataset: EvaluationDataset, batches: Sequence[Sequence[int]], *, workers: int = 0
) -> torch.utils.data.DataLoader:
    """A streaming loader that yields the given batches of indices, in order, as lists of :class:`LoadedImage`.

    With ``workers > 0`` images are decoded in that many ``spawn``-ed processes
    (never forked: see the module docstring), a few batches ahead.
    """
    options: dict[str, Any] = {}
    if workers > 0:
        options = {"multiprocessing_context": "spawn", "prefetch_factor": 4, "persistent_workers": False}
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(batch) for batch in batches],
        num_workers=workers,
        collate_fn=_collate,
        **options,
    )


#: Fewer images than this per process are decoded in the process itself: starting a worker costs more.
MIN_IMAGES_FOR_WORKERS = 256


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (a container's share)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_workers(images: ImageSet, count: int, device: torch.device, *, cores: int | None = None) -> tuple[int, str]:
    """How many loader processes should decode ``count`` images for a model on ``device`` (``--workers auto``).

    The number never changes a result (see :mod:`shiftlab.evaluate`), only the time. Decoding and
    resizing a photo costs milliseconds; starting a ``spawn``-ed worker costs a second or more (it
    imports torch), and on a CPU a worker takes cycles from the model. So:

    * images already in memory, 2 CPU cores or fewer, or fewer than :data:`MIN_IMAGES_FOR_WORKERS`
      images: none, the images are decoded in this process;
    * a model on the CPU: one worker per core that torch's intra-op threads leave free
      (``cores - torch.get_num_threads()``), at most 4; none if there is no free core;
    * a model on an accelerator (decoding is then what the model waits for): ``cores - 1``, at most 8.

    Args:
        images: the data set (images in memory need no decoding).
        count: how many images this process decodes (its shard).
        device: where the model runs.
        cores: the CPU cores this process may use (default: its CPU affinity).

    Returns:
        ``(workers, reason)``, the reason in words, for the protocol.

    Example:
        >>> folder = ImageSet(("a.png",) * 1000, None, None, "a folder")
        >>> choose_workers(folder, 1000, torch.device("cpu"), cores=2)
        (0, '2 CPU cores: decoding processes would take them from the model')
    """
    cores = _usable_cores() if cores is None else cores
    if images.tensors is not None:
        return 0, "the images are in memory: nothing to decode"
    if cores <= 2:
        return 0, f"{cores} CPU core{'s' if cores > 1 else ''}: decoding processes would take them from the model"
    if count < MIN_IMAGES_FOR_WORKERS:
        return 0, f"{count} images: fewer than {MIN_IMAGES_FOR_WORKERS} do not repay starting decoding processes"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        spare = cores - threads
        if spare < 1:
            return 0, f"the model's {threads} threads use all {cores} CPU cores"
        workers = min(4, spare)
        return workers, f"{workers} of the {spare} CPU core(s) that the model's {threads} threads leave free"
    workers = min(8, cores - 1)
    return workers, f"the model runs on {device.type}: {workers} processes decode on {cores} CPU cores"
