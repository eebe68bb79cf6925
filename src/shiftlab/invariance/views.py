"""Shifted views of an image, as the evaluation protocols cut them: crop windows, rolls, Fourier and zero-filled shifts.

Every view is described by a small hashable key and cut from the *base* image
``B`` (``(C, H, W)`` in ``[0, 1]``, after resizing, before cropping and
normalising). The model's usual input is the centre window ``x0`` of size
``crop`` (all of ``B`` when there is no crop), placed as torchvision's
``CenterCrop`` places it: top-left corner ``(round((H - crop) / 2), round((W - crop) / 2))``.

Keys (the content moves *down* by ``dy`` and *right* by ``dx``, as in :func:`shiftlab.shift`):

``("identity",)``
    ``x0`` itself.
``("window", top, left)``
    the ``crop x crop`` window of ``B`` whose top-left corner is ``(top, left)``;
    all of it must lie inside ``B`` (real image content only, Zhang 2019).
``("zero", top, left)``
    the same window, reading zeros (black) outside ``B``: a translation of the
    whole picture with black fill, then the centre crop (ImageNet-P's frames).
``("zero8", top, left)``
    the ``"zero"`` window rounded to 8-bit levels (:func:`round_to_8bit`), as a frame decoded from an 8-bit
    image or video file would be (ImageNet-P's published frames: the picture was resized to 8-bit pixels). Never
    the same view as ``x0``, which is not rounded.
``("roll", dy, dx)``
    ``x0`` rolled circularly (APS's protocol).
``("fourier", dy, dx)``
    ``x0`` shifted by a band-limited, possibly fractional amount through the FFT
    (:func:`shiftlab.shifts.fourier_shift`; circular; values may ring slightly outside ``[0, 1]``).

:func:`view_key` reduces every key that describes ``x0`` to ``("identity",)``, so
that protocols that all need the unshifted image share one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shiftlab.errors import check
from shiftlab.shifts import fourier_shift

__all__ = ["IDENTITY", "Geometry", "ViewKey", "build_view", "round_to_8bit", "view_key"]

ViewKey = tuple
IDENTITY: ViewKey = ("identity",)


@dataclass(frozen=True)
class Geometry:
    """Where the model input sits in a base image of ``height x width``: its ``size`` and top-left corner.

    Example:
        >>> Geometry.of(256, 341, crop=224)
        Geometry(height=256, width=341, size=(224, 224), top=16, left=58)
    """

    height: int
    width: int
    size: tuple[int, int]
    top: int
    left: int

    @classmethod
    def of(cls, height: int, width: int, crop: int | None) -> Geometry:
        if crop is None:
            return cls(height, width, (height, width), 0, 0)
        check(crop <= height and crop <= width, "crop", f"{crop}x{crop} does not fit in an image of {height}x{width}")
        return cls(height, width, (crop, crop), int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0)))

    def fits(self, top: int, left: int) -> bool:
        """Whether the window at ``(top, left)`` lies inside the base image."""
        return 0 <= top and 0 <= left and top + self.size[0] <= self.height and left + self.size[1] <= self.width


def view_key(key: ViewKey, geometry: Geometry) -> ViewKey:
    """``key`` with every description of the unshifted input reduced to :data:`IDENTITY`.

    Example:
        >>> geometry = Geometry.of(10, 10, crop=8)
        >>> [view_key(key, geometry) for key in (("roll", 0, 0), ("window", 1, 1), ("window", 0, 2))]
        [('identity',), ('identity',), ('window', 0, 2)]
    """
    kind = key[0]
    if kind in ("roll", "fourier") and key[1] == 0 and key[2] == 0:
        return IDENTITY
    if kind in ("window", "zero") and (key[1], key[2]) == (geometry.top, geometry.left):
        return IDENTITY
    return key


def _zero_window(base: torch.Tensor, top: int, left: int, size: tuple[int, int]) -> torch.Tensor:
    height, width = base.shape[-2:]
    out = base.new_zeros((*base.shape[:-2], *size))
    rows = slice(max(top, 0), min(top + size[0], height))
    cols = slice(max(left, 0), min(left + size[1], width))
    if rows.start < rows.stop and cols.start < cols.stop:
        out[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = base[..., rows, cols]
    return out


def round_to_8bit(values: torch.Tensor) -> torch.Tensor:
    """Values in ``[0, 1]`` rounded to the nearest of the 256 levels ``k / 255``, halves up (as PIL rounds when it
    resizes an 8-bit image); computed in float64, where ``255 v`` is exact for float32 ``v``, so no tie is decided
    by rounding.

    Example:
        >>> round_to_8bit(torch.tensor([0.0, 0.3, 1.5 / 255, 2.4999 / 255, 1.0])) * 255
        tensor([  0.,  77.,   2.,   2., 255.])
    """
    return ((values.double() * 255 + 0.5).floor() / 255).to(values.dtype)


def build_view(base: torch.Tensor, key: ViewKey, geometry: Geometry) -> torch.Tensor:
    """Cut the view ``key`` from ``base`` ``(C, H, W)`` (see the module docstring).

    Example:
        >>> base = torch.arange(16.0).reshape(1, 4, 4)
        >>> geometry = Geometry.of(4, 4, crop=2)
        >>> build_view(base, ("window", 0, 0), geometry)
        tensor([[[0., 1.],
                 [4., 5.]]])
        >>> build_view(base, ("zero", 1, 3), geometry)
        tensor([[[ 7.,  0.],
                 [11.,  0.]]])
    """
    height, width = geometry.size
    top, left = geometry.top, geometry.left
    kind = key[0]
    if kind == "identity":
        return base[..., top : top + height, left : left + width]
    if kind == "window":
        check(
            geometry.fits(key[1], key[2]),
            "view",
            f"window at {key[1:]} leaves the {geometry.height}x{geometry.width} image",
        )
        return base[..., key[1] : key[1] + height, key[2] : key[2] + width]
    if kind == "zero":
        return _zero_window(base, key[1], key[2], geometry.size)
    if kind == "zero8":  # rounding commutes with the move: black is a level, every pixel keeps its value
        return round_to_8bit(_zero_window(base, key[1], key[2], geometry.size))
    centre = base[..., top : top + height, left : left + width]
    if kind == "roll":
        return torch.roll(centre, shifts=(int(key[1]), int(key[2])), dims=(-2, -1))
    if kind == "fourier":
        return fourier_shift(centre, float(key[1]), float(key[2]))
    raise ValueError(f"unknown view kind {kind!r}")  # shiftlab's own keys only: a bug, not user input
