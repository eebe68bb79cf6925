"""Images in: :func:`load_image` for files, arrays, PIL images and tensors; :func:`sample_image` for the bundled ones.

The convention, everywhere in shiftlab:

* values are float32 in ``[0, 1]``: 8-bit data is divided by 255, 16-bit data
  by 65535, 1-bit data gives 0 and 1; float data must already lie in ``[0, 1]``
  (Pillow decodes 16-bit *colour* PNGs to 8 bits per channel: 16-bit precision
  survives for grayscale files and for arrays);
* a grayscale image is ``(H, W)``; a colour image is channels-first
  ``(3, H, W)`` (RGB), the layout CNNs and :func:`shiftlab.convolve` expect;
* grayscale is the ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, computed
  in floating point (not Pillow's rounded 8-bit ``"L"`` conversion);
* transparency is composited onto black, the value a zero-padded network
  sees outside the image; only the first frame of an animation is read;
  the EXIF orientation tag of a photo is applied.

Bad input never gives a traceback from deep inside Pillow: it raises
:class:`shiftlab.ShiftlabError` naming the input and the problem.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shiftlab.errors import ShiftlabError, check, describe, fail, first_line

__all__ = [
    "MAX_PIXELS",
    "SAMPLES",
    "Sample",
    "load_image",
    "sample_image",
    "scene_pair",
    "single_pixel_image",
]

#: Largest image :func:`load_image` decodes (64 megapixels, 8192 x 8192): more is
#: treated as a decompression bomb. Pass ``max_pixels=`` to allow more.
MAX_PIXELS = 8192 * 8192

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_image(source: Any, *, grayscale: bool = True, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load an image as float32 in ``[0, 1]``: ``(H, W)`` gray or ``(3, H, W)`` RGB.

    Args:
        source: a file path (PNG, JPEG, TIFF, BMP, GIF, WebP; 1-, 8- and 16-bit;
            gray, RGB, RGBA, palette), the name of a bundled sample (see
            :data:`SAMPLES`; a file of that name wins), a numpy array, a PIL
            image or a torch tensor. Arrays are ``(H, W)``, ``(H, W, C)`` or,
            for tensors, ``(C, H, W)``, with ``C`` in 1, 3, 4.
        grayscale: return ``(H, W)`` luma (default) or ``(3, H, W)`` RGB.
        max_pixels: refuse larger images (decompression bombs).

    Returns:
        A new float32 numpy array (never a view of the input).

    Raises:
        ShiftlabError: missing path, directory, not an image, truncated or corrupt
            file, empty image, too many pixels, wrong rank or channel count,
            NaN/Inf, or values outside ``[0, 1]``.

    Example:
        >>> load_image(np.array([[0, 255]], dtype=np.uint8))
        array([[0., 1.]], dtype=float32)
        >>> load_image("pixel_a").shape
        (10, 10)
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if str(source) in SAMPLES and not path.exists():
            return sample_image(str(source), grayscale=grayscale)
        channels_last = _read_file(path, max_pixels)
        subject = f"image '{source}'"
    elif isinstance(source, Image.Image):
        subject = "image (PIL)"
        channels_last = _from_pil(source, subject, max_pixels)
    elif _is_tensor(source):
        import torch

        subject = f"image ({describe(source)})"
        values = source.detach().cpu()
        if values.is_floating_point() and values.dtype != torch.float64:
            values = values.float()  # numpy has no bfloat16
        channels_last = _channels_last(values.numpy(), subject, channels_first_hint=True)
    elif isinstance(source, np.ndarray):
        subject = f"image ({describe(source)})"
        channels_last = _channels_last(source, subject, channels_first_hint=False)
    else:
        fail(
            "image",
            f"expected a path, sample name, numpy array, PIL image or torch tensor, got {type(source).__name__}",
        )
    return _finish(channels_last, subject, grayscale, max_pixels)


def _is_tensor(source: Any) -> bool:
    """Whether ``source`` is a torch tensor, without importing torch: a tensor exists only once torch is imported
    (``shiftlab samples`` and the image commands' parsing then start without it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source, torch.Tensor)


def _read_file(path: Path, max_pixels: int) -> np.ndarray:
    subject = f"image '{path}'"
    try:
        status = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            fail(subject, f"is a symbolic link to '{os.readlink(path)}', which does not exist")
        fail(subject, f"no such file (and not a bundled sample: {', '.join(SAMPLES)})")
    except OSError as error:  # a link loop, a name too long, a folder that cannot be entered, ...
        if error.errno == errno.ELOOP:
            fail(subject, "is a symbolic link loop (it never reaches a file)")
        fail(subject, f"cannot be read ({error.strerror or error})")
    check(not stat.S_ISDIR(status.st_mode), subject, "is a directory, not an image file")
    check(status.st_size > 0, subject, "is an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # max_pixels is checked in _from_pil; Pillow's own warning (89 MP) would override it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _from_pil(image, subject, max_pixels)
    except ShiftlabError:
        raise
    except UnidentifiedImageError:
        fail(subject, "is not an image Pillow can read (unknown or corrupt format)")
    except Image.DecompressionBombError as error:
        fail(subject, f"has too many pixels to decode safely, a decompression bomb? ({first_line(error)})")
    except PermissionError:
        fail(subject, "cannot be read: permission denied")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
        fail(subject, f"is truncated or corrupt ({first_line(error)})")


def _from_pil(image: Image.Image, subject: str, max_pixels: int) -> np.ndarray:
    """Decode a PIL image to a channels-last float array in [0, 1]."""
    width, height = image.size
    check(width > 0 and height > 0, subject, f"is empty ({width}x{height} pixels)")
    _check_pixel_count(width * height, subject, max_pixels)
    image.load()  # decode now, so truncation is reported here
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float32)[..., None]
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if mode == "F":
            values = array.astype(np.float32)
        elif mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
            fail(subject, "holds 32-bit integers outside 0..65535; only 8- and 16-bit integer images are supported")
        else:
            values = array.astype(np.float32) / 65535.0
        return values[..., None]
    if mode == "L":
        return np.asarray(image, dtype=np.float32)[..., None] / 255.0
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0


def _check_pixel_count(pixels: int, subject: str, max_pixels: int) -> None:
    check(
        pixels <= max_pixels,
        subject,
        f"has {pixels:,} pixels, more than the limit of {max_pixels:,} (a decompression bomb?); pass max_pixels= to "
        "allow it",
    )


def _channels_last(array: np.ndarray, subject: str, channels_first_hint: bool) -> np.ndarray:
    """Bring a 2-D or 3-D array to (H, W, C) and to float in [0, 1]."""
    check(array.size > 0, subject, "is empty (0 pixels)")
    check(array.ndim in (2, 3), subject, "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")
    if array.ndim == 2:
        array = array[..., None]
    else:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first_hint or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            fail(subject, "has no channel axis of length 1, 3 or 4 (expected (H, W, C) or (C, H, W))")
    kind, native = array.dtype.kind, array.dtype.newbyteorder("=")  # big-endian uint16 is still uint16
    if kind == "b":
        return array.astype(np.float32)
    if native == np.uint8:
        return array.astype(np.float32) / 255.0
    if native == np.uint16:
        return array.astype(np.float32) / 65535.0
    check(kind in "iuf", subject, "expected real numbers")
    return array.astype(np.float32)  # NaN, Inf and range are checked once, in _finish


def _finish(channels_last: np.ndarray, subject: str, grayscale: bool, max_pixels: int) -> np.ndarray:
    height, width, channels = channels_last.shape
    check(height > 0 and width > 0, subject, "is empty (0 pixels)")
    _check_pixel_count(height * width, subject, max_pixels)
    check(bool(np.isfinite(channels_last).all()), subject, "holds NaN or Inf values")
    low, high = float(channels_last.min()), float(channels_last.max())
    check(
        low >= 0.0 and high <= 1.0,
        subject,
        f"has values in [{low:g}, {high:g}], outside [0, 1]; scale it first (for 0..255 data, divide by 255)",
    )
    if channels in (2, 4):  # gray+alpha or RGBA: composite onto black
        colour, alpha = channels_last[..., :-1], channels_last[..., -1:]
        channels_last = colour * alpha
        channels -= 1
    if channels == 1:
        gray = channels_last[..., 0]
        out = gray if grayscale else np.repeat(gray[None], 3, axis=0)
    else:
        out = channels_last @ _LUMA if grayscale else np.moveaxis(channels_last, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """A bundled image: its name, what it is, and how to make it (channels-last, ``(H, W, 1)`` or ``(H, W, 3)``)."""

    name: str
    description: str
    make: Callable[[], np.ndarray]


def single_pixel_image(row: int, col: int, size: int = 10) -> np.ndarray:
    """A ``size x size`` float32 image of zeros with a single 1 at ``[row, col]`` (negative indices count from the end).

    The reference article's two test images are ``single_pixel_image(2, 2)``
    and ``single_pixel_image(-3, -3)``.

    Example:
        >>> np.argwhere(single_pixel_image(-3, -3)).tolist()
        [[7, 7]]
    """
    image = np.zeros((size, size), dtype=np.float32)
    image[row, col] = 1.0
    return image


@cache
def _bundled_rgb(filename: str) -> np.ndarray:
    with (resources.files("shiftlab") / "assets" / filename).open("rb") as handle:
        with Image.open(handle) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


#: Where the object of the translated scene pair sits: the photo is resized to
#: OBJECT_SIZE and pasted on a flat canvas at (SCENE_TOP, left) and (SCENE_TOP, left + SCENE_SHIFT).
SCENE_CANVAS = (256, 640)
SCENE_OBJECT = (192, 288)
SCENE_TOP, SCENE_LEFT, SCENE_SHIFT = 32, 48, 256
_SCENE_BACKGROUND = 0.5


def scene_pair() -> tuple[np.ndarray, np.ndarray]:
    """The translated pair: the cat photo on a flat gray canvas, on the left and on the right.

    The second image is *exactly* the first translated by ``SCENE_SHIFT`` = 256
    pixels to the right (the canvas is flat, so nothing else changes). That
    makes the pair a true translation, unlike a mirror image.

    Returns:
        Two ``(H, W, 3)`` float32 RGB arrays of shape ``SCENE_CANVAS``.
    """
    photo = Image.fromarray(np.round(_bundled_rgb("chelsea.png") * 255).astype(np.uint8))
    height, width = SCENE_OBJECT
    small = np.asarray(photo.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    pair = []
    for left in (SCENE_LEFT, SCENE_LEFT + SCENE_SHIFT):
        canvas = np.full((*SCENE_CANVAS, 3), _SCENE_BACKGROUND, dtype=np.float32)
        canvas[SCENE_TOP : SCENE_TOP + height, left : left + width] = small
        pair.append(canvas)
    return pair[0], pair[1]


#: The bundled images, by name. Photos: scikit-image's sample data (chelsea and
#: coffee CC0, astronaut public domain), shipped inside shiftlab so that nothing
#: is downloaded.
SAMPLES: dict[str, Sample] = {
    sample.name: sample
    for sample in (
        Sample(
            "pixel_a",
            "10x10 zeros with a single 1 at [2, 2] (the article's first test image)",
            lambda: single_pixel_image(2, 2)[..., None],
        ),
        Sample(
            "pixel_b",
            "10x10 zeros with a single 1 at [-3, -3], i.e. [7, 7] (the article's second)",
            lambda: single_pixel_image(-3, -3)[..., None],
        ),
        Sample("chelsea", "photo of a cat, 300x451 (scikit-image, CC0)", lambda: _bundled_rgb("chelsea.png")),
        Sample(
            "chelsea_mirror",
            "the cat photo mirrored left-right: a reflection, not a translation",
            lambda: _bundled_rgb("chelsea.png")[:, ::-1],
        ),
        Sample(
            "chelsea_left", "the cat, resized to 192x288, on the left of a flat 256x640 canvas", lambda: scene_pair()[0]
        ),
        Sample(
            "chelsea_right",
            "chelsea_left translated 256 pixels to the right: the object on the other side",
            lambda: scene_pair()[1],
        ),
        Sample("coffee", "photo of a cup of coffee, 400x600 (scikit-image, CC0)", lambda: _bundled_rgb("coffee.png")),
        Sample(
            "astronaut",
            "photo of astronaut Eileen Collins, 512x512 (NASA, public domain)",
            lambda: _bundled_rgb("astronaut.png"),
        ),
    )
}


def sample_image(name: str, *, grayscale: bool = True) -> np.ndarray:
    """A bundled sample image, with :func:`load_image`'s conventions.

    Args:
        name: one of :data:`SAMPLES` (``shiftlab samples`` lists them).
        grayscale: ``(H, W)`` luma (default) or ``(3, H, W)`` RGB.

    Example:
        >>> sample_image("chelsea").shape
        (300, 451)
        >>> sample_image("chelsea", grayscale=False).shape
        (3, 300, 451)
    """
    if name not in SAMPLES:
        fail("sample", f"unknown name {name!r}; known: {', '.join(SAMPLES)}")
    return _finish(np.array(SAMPLES[name].make(), dtype=np.float32), f"sample {name!r}", grayscale, MAX_PIXELS)
