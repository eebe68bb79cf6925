"""Translations of ``(..., H, W)`` maps, and which output pixels each mode makes valid.

Convention: ``shift(x, dy, dx)`` moves the content *down* by ``dy`` and *right*
by ``dx``: ``out[..., y, x] = in[..., y - dy, x - dx]``.

Modes:

``circular``
    ``torch.roll``/``np.roll``: content that leaves one side enters the other.
    Every pixel is valid. A circularly padded convolution commutes with it exactly.
``zero``
    Content moves, the uncovered band is filled with zeros and marked invalid;
    what leaves the frame is lost.
``crop``
    A window of a larger image at an offset, as in Zhang (2019)'s evaluation:
    the output is the input minus a ``margin`` on every side, read at offset
    ``(margin_y - dy, margin_x - dx)``. ``shift(x, 0, 0, mode="crop", margin=m)``
    is the reference window. Every output pixel is real image content, so all
    are valid; the output is smaller than the input by ``2 * margin``.
``fourier``
    Band-limited sub-pixel shift through the FFT: multiplies the spectrum by
    ``exp(-2 pi i (ky dy / H + kx dx / W))``. Accepts fractional ``dy``, ``dx``;
    circular (wraps around) and equal to ``circular`` for integer shifts up to
    float error. Every pixel is valid. On an even size the Nyquist frequency
    cannot move by a fraction of a pixel and stay real: its real part is kept,
    so two half-pixel shifts equal a one-pixel shift only for content without
    a Nyquist component (odd sizes are not affected).

Every mode is available through :func:`shift` (the shifted map) and
:func:`shift_with_mask` (the map and a boolean ``(H', W')`` mask of valid
output pixels), so that borders never count as errors by accident.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shiftlab._tensors import as_float_tensor, like_input, require_spatial
from shiftlab.errors import check, check_choice, check_real, fail

__all__ = [
    "SHIFT_MODES",
    "Shift",
    "ShiftMode",
    "check_shifts",
    "check_shifts_fit",
    "crop_margin",
    "parse_pairs",
    "parse_shifts",
    "shift",
    "shift_grid",
    "shift_range",
    "shift_with_mask",
]

#: The four shift modes (see the module docstring); the one tuple of them (the dataset metrics' grids take these too).
SHIFT_MODES: tuple[str, ...] = ("circular", "zero", "crop", "fourier")
Shift = tuple[float, float]


@dataclass(frozen=True)
class ShiftMode:
    """A shift mode, validated once where it enters: how inputs are shifted and how outputs are moved back.

    Public functions take the mode as a string and turn it into a ``ShiftMode`` once (:meth:`of`; ``auto``
    through :func:`shiftlab.probing.borders.choose_mode`); from there on the value travels, and every question about the
    mode is asked of it rather than of the string.

    Attributes:
        mode: ``"circular"``, ``"zero"``, ``"crop"`` or ``"fourier"``.
        reason: ``"given"``, or ``"auto: ..."`` with what decided it (see :mod:`shiftlab.probing.borders`).

    Example:
        >>> crop = ShiftMode.of("crop")
        >>> crop.wraps, crop.needs_core, crop.move
        (False, True, 'zero')
        >>> ShiftMode.of(crop) is crop  # a ShiftMode passes through, not validated again
        True
        >>> x = torch.arange(5.0)[None]  # one row of five pixels
        >>> reference, margin = crop.reference(x, [(0, 1), (0, -1)])  # the centre window, 1 pixel in on each side
        >>> reference.tolist(), margin
        ([[1.0, 2.0, 3.0]], (0, 1))
        >>> crop.shifted(x, 0, 1, margin).tolist()  # the content moves right: the window reads 1 pixel further left
        [[0.0, 1.0, 2.0]]
        >>> ShiftMode.of("wrap")
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: mode: must be one of circular, zero, crop, fourier, got 'wrap'
    """

    mode: str
    reason: str = "given"

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", SHIFT_MODES)

    @classmethod
    def of(cls, mode: ShiftMode | str) -> ShiftMode:
        """``mode`` as a ``ShiftMode``: a string is validated, a ``ShiftMode`` passes through."""
        return mode if isinstance(mode, ShiftMode) else cls(mode)

    @property
    def wraps(self) -> bool:
        """Content that leaves one side enters the other (``circular``, ``fourier``): every pixel is compared."""
        return self.mode in ("circular", "fourier")

    @property
    def needs_core(self) -> bool:
        """Pixels whose receptive field reaches the border are left out (``zero``, ``crop``): a border pass finds
        the core of every map."""
        return not self.wraps

    @property
    def subpixel(self) -> bool:
        """Shifts may be fractions of a pixel (``fourier``)."""
        return self.mode == "fourier"

    @property
    def move(self) -> str:
        """How an output is moved back to be compared: ``"circular"`` around the torus, else ``"zero"`` (a zero
        fill, left out of the comparison)."""
        return "circular" if self.wraps else "zero"

    @property
    def chosen_by_auto(self) -> bool:
        """Whether ``auto`` chose this mode (its reason says why)."""
        return self.reason.startswith("auto")

    def reference(self, x: torch.Tensor, shifts: Sequence[Shift]) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The unshifted input that every shift is compared with, and the crop margin (``crop`` only: the reference
        is then the centre window, smaller than ``x`` by the largest shift on each side).

        Raises:
            ShiftlabError: shifts that mean nothing for ``x``'s size (:func:`check_shifts_fit`).
        """
        check_shifts_fit(shifts, self, x.shape[-2], x.shape[-1])
        if self.mode == "crop":
            largest = crop_margin(shifts)
            return shift(x, 0, 0, mode=self, margin=largest), largest
        return x, None

    def shifted(self, x: torch.Tensor, dy: float, dx: float, margin: tuple[int, int] | None) -> torch.Tensor:
        """``x`` shifted by ``(dy, dx)``, shaped like the :meth:`reference` (``margin`` from it)."""
        return shift(x, dy, dx, mode=self, margin=margin if self.mode == "crop" else None)


def check_shifts(shifts: Iterable[Any], mode: ShiftMode | str) -> list[Shift]:
    """Validate a list of ``(dy, dx)`` shifts for ``mode``: Python or numpy numbers, whole outside ``fourier``.

    Returns them as ``(int, int)`` pairs (``(float, float)`` in ``fourier`` mode).

    Example:
        >>> import numpy as np
        >>> check_shifts([(np.int64(1), 2.0)], "circular")
        [(1, 2)]
        >>> check_shifts([(0, 0.5)], "circular")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: shifts: (0, 0.5) is not a whole number of pixels; sub-pixel shifts need ...
    """
    subpixel = ShiftMode.of(mode).subpixel
    pairs: list[Shift] = []
    for item in shifts:
        try:
            dy, dx = item
        except (TypeError, ValueError):
            fail("shifts", f"expected (dy, dx) pairs, got {item!r}")
        dy, dx = check_real(dy, "shift dy"), check_real(dx, "shift dx")
        if subpixel:
            pairs.append((dy, dx))
            continue
        check(
            dy == int(dy) and dx == int(dx),
            "shifts",
            f"({dy:g}, {dx:g}) is not a whole number of pixels; sub-pixel shifts need mode='fourier'",
        )
        pairs.append((int(dy), int(dx)))
    check(len(pairs) > 0, "shifts", "is empty: give at least one (dy, dx) pair")
    return pairs


def shift(
    x: Any, dy: float, dx: float, *, mode: ShiftMode | str = "circular", margin: int | tuple[int, int] | None = None
) -> Any:
    """Translate the last two axes by ``(dy, dx)`` pixels (down, right).

    Args:
        x: ``(..., H, W)`` numpy array or torch tensor.
        dy: rows to move down (negative: up). Integer except in ``"fourier"`` mode.
        dx: columns to move right (negative: left).
        mode: ``"circular"``, ``"zero"``, ``"crop"`` or ``"fourier"`` (see the module docstring).
        margin: ``"crop"`` only: pixels dropped on each side, an int or ``(my, mx)``;
            default ``(|dy|, |dx|)``. Use the same margin for every shift you compare.

    Returns:
        The shifted map, of the input's type (float), device and dtype.

    Shape:
        - x: :math:`(*, H, W)`
        - output: :math:`(*, H, W)`; for ``"crop"`` :math:`(*, H - 2 m_y, W - 2 m_x)`

    Example:
        >>> import numpy as np
        >>> shift(np.array([[1.0, 2.0, 3.0]]), 0, 1)
        array([[3., 1., 2.]])
        >>> shift(np.array([[1.0, 2.0, 3.0]]), 0, 1, mode="zero")
        array([[0., 1., 2.]])
        >>> shift(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), 0, 1, mode="crop", margin=(0, 1))
        array([[1., 2., 3.]])
    """
    return shift_with_mask(x, dy, dx, mode=mode, margin=margin)[0]


def shift_with_mask(
    x: Any,
    dy: float,
    dx: float,
    *,
    mode: ShiftMode | str = "circular",
    margin: int | tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """Like :func:`shift`, and also return the ``(H', W')`` boolean mask of valid output pixels.

    The mask is a numpy array for numpy input, a tensor on the input's device otherwise.

    Example:
        >>> import numpy as np
        >>> image, valid = shift_with_mask(np.ones((2, 3)), 0, -1, mode="zero")
        >>> valid
        array([[ True,  True, False],
               [ True,  True, False]])
    """
    mode = ShiftMode.of(mode).mode
    tensor, from_numpy = as_float_tensor(x, "x")
    height, width = require_spatial(tensor, "x")
    if mode == "fourier":
        dy, dx = check_real(dy, "dy"), check_real(dx, "dx")
        out = fourier_shift(tensor, dy, dx)
        valid = torch.ones((height, width), dtype=torch.bool, device=tensor.device)
    else:
        dy, dx = _integer(dy, "dy", mode), _integer(dx, "dx", mode)
        if mode == "circular":
            out = torch.roll(tensor, shifts=(dy, dx), dims=(-2, -1))
            valid = torch.ones((height, width), dtype=torch.bool, device=tensor.device)
        elif mode == "zero":
            out, valid = _zero_shift(tensor, dy, dx)
        else:
            out = _crop_shift(tensor, dy, dx, _margin(margin, dy, dx))
            valid = torch.ones(out.shape[-2:], dtype=torch.bool, device=tensor.device)
    return like_input(out, from_numpy), like_input(valid, from_numpy)


def _integer(value: Any, name: str, mode: str) -> int:
    number = check_real(value, name)
    check(
        number == int(number),
        name,
        f"must be a whole number of pixels in {mode!r} mode, got {value!r}; use mode='fourier' for sub-pixel shifts",
    )
    return int(number)


def _zero_shift(tensor: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = tensor.shape[-2:]
    out = torch.zeros_like(tensor)
    valid = torch.zeros((height, width), dtype=torch.bool, device=tensor.device)
    if abs(dy) < height and abs(dx) < width:
        target = (..., _span(dy, height), _span(dx, width))
        source = (..., _span(-dy, height), _span(-dx, width))
        out[target] = tensor[source]
        valid[target[1:]] = True
    return out, valid


def _span(offset: int, length: int) -> slice:
    """Where content lands along an axis of ``length`` when moved by ``offset``."""
    return slice(max(0, offset), length + min(0, offset))


def crop_margin(shifts: Iterable[tuple[float, float]]) -> tuple[int, int]:
    """The smallest ``crop`` margin that fits every shift of a list: ``(max |dy|, max |dx|)``.

    Example:
        >>> crop_margin([(0, 0), (1, -3), (-2, 2)])
        (2, 3)
    """
    pairs = list(shifts)
    return (max((abs(int(dy)) for dy, _ in pairs), default=0), max((abs(int(dx)) for _, dx in pairs), default=0))


def check_shifts_fit(shifts: Sequence[tuple[float, float]], mode: ShiftMode | str, height: int, width: int) -> None:
    """Refuse shifts that mean nothing for a ``height x width`` input in ``mode``, naming the first such shift.

    * ``circular`` and ``fourier`` shifts repeat with the input's size: a shift by the size or more is a smaller
      one again (``|dy| < height`` and ``|dx| < width``; each is measured once, and a probe would run it twice);
    * ``zero``: a shift by the size or more moves all of the input out of the frame (the same bound);
    * ``crop``: every window is the input less the largest shift on each side, so it must be larger than twice
      that (:func:`crop_margin`).

    Example:
        >>> check_shifts_fit([(0, 3), (-1, 40)], "circular", 32, 32)
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: shifts: (-1, 40) is not smaller than the 32x32 image: circular shifts repeat \
with its size, so it is (-1, 8) again
    """
    mode = ShiftMode.of(mode).mode
    if mode == "crop":
        largest = crop_margin(shifts)
        check(
            height > 2 * largest[0] and width > 2 * largest[1],
            "shifts",
            f"crop windows for shifts up to {largest} need an input of at least"
            f" {2 * largest[0] + 1}x{2 * largest[1] + 1} pixels, got {height}x{width}",
        )
        return
    for dy, dx in shifts:
        if abs(dy) < height and abs(dx) < width:
            continue
        if mode == "zero":
            fail(
                "shifts",
                f"({dy:g}, {dx:g}) moves all of the {height}x{width} image out of the frame (zero shifts must be "
                f"smaller than the image: |dy| < {height}, |dx| < {width})",
            )
        same = (_smallest_equivalent(dy, height), _smallest_equivalent(dx, width))
        fail(
            "shifts",
            f"({dy:g}, {dx:g}) is not smaller than the {height}x{width} image: {mode} shifts repeat with its size, "
            f"so it is ({same[0]:g}, {same[1]:g}) again",
        )


def _smallest_equivalent(offset: float, size: int) -> float:
    """The offset in ``[-size / 2, size / 2)`` that a shift of period ``size`` makes ``offset`` equal to."""
    return (offset + size / 2) % size - size / 2 if abs(offset) >= size else offset


def _margin(margin: int | tuple[int, int] | None, dy: int, dx: int) -> tuple[int, int]:
    if margin is None:
        return abs(dy), abs(dx)
    pair = (margin, margin) if isinstance(margin, (int, np.integer)) else tuple(margin)
    check(
        len(pair) == 2 and all(isinstance(m, (int, np.integer)) and m >= 0 for m in pair),
        "margin",
        f"must be a non-negative int or a pair of them, got {margin!r}",
    )
    check(
        abs(dy) <= pair[0] and abs(dx) <= pair[1],
        "margin",
        f"{tuple(pair)} is smaller than the shift ({dy}, {dx}); a crop window cannot move beyond its margin",
    )
    return int(pair[0]), int(pair[1])


def _crop_shift(tensor: torch.Tensor, dy: int, dx: int, margin: tuple[int, int]) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    margin_y, margin_x = margin
    out_height, out_width = height - 2 * margin_y, width - 2 * margin_x
    check(out_height > 0 and out_width > 0, "margin", f"{margin} leaves nothing of a {height}x{width} map")
    top, left = margin_y - dy, margin_x - dx
    return tensor[..., top : top + out_height, left : left + out_width].clone()


def fourier_shift(tensor: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """Band-limited circular shift by any real ``(dy, dx)`` through the 2-D FFT (float tensors)."""
    height, width = tensor.shape[-2:]
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    freq_y = torch.fft.fftfreq(height, device=tensor.device, dtype=work.dtype)
    freq_x = torch.fft.rfftfreq(width, device=tensor.device, dtype=work.dtype)
    phase = torch.exp(-2j * math.pi * (freq_y[:, None] * dy + freq_x[None, :] * dx))
    shifted = torch.fft.irfft2(torch.fft.rfft2(work) * phase, s=(height, width))
    return shifted.to(tensor.dtype)


# --------------------------------------------------------------------------- lists of shifts


def shift_range(spec: str | Sequence[int] | range) -> list[int]:
    """Offsets from a ``start:stop[:step]`` string (stop excluded, like Python), a single number, or a sequence.

    Example:
        >>> shift_range("0:4")
        [0, 1, 2, 3]
        >>> shift_range("-3:3:2")
        [-3, -1, 1]
        >>> shift_range("5")
        [5]
    """
    if not isinstance(spec, str):
        values = list(spec)
        check(all(isinstance(v, (int, np.integer)) for v in values), "shifts", f"expected whole numbers, got {spec!r}")
        return [int(v) for v in values]
    text = spec.strip()
    try:
        parts = [int(part) for part in text.split(":")]
    except ValueError:
        fail("shifts", f"cannot read {spec!r}: expected start:stop[:step] or a whole number, e.g. 0:8 or -2:3")
    if len(parts) == 1:
        return parts
    check(len(parts) in (2, 3), "shifts", f"cannot read {spec!r}: expected start:stop[:step]")
    step = parts[2] if len(parts) == 3 else 1
    check(step != 0, "shifts", f"step of {spec!r} must not be 0")
    values = list(range(parts[0], parts[1], step))
    check(len(values) > 0, "shifts", f"{spec!r} is empty (stop is excluded, as in Python: 0:8 gives 0..7)")
    return values


def shift_grid(ys: str | Sequence[int], xs: str | Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Every ``(dy, dx)`` of a grid: all pairs of ``ys`` x ``xs`` (``xs`` defaults to ``ys``).

    Example:
        >>> shift_grid("0:2")
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    rows = shift_range(ys)
    cols = rows if xs is None else shift_range(xs)
    return [(dy, dx) for dy in rows for dx in cols]


def parse_shifts(spec: str) -> list[tuple[int, int]]:
    """Read the command line's ``--shifts``.

    Accepted forms:

    * ``0:8`` — horizontal shifts ``(0, 0) ... (0, 7)`` (the classic one-axis sweep);
    * ``diag:0:8`` — diagonal shifts ``(0, 0) ... (7, 7)`` (Azulay & Weiss's protocol);
    * ``grid:-2:3`` or ``grid:-2:3,0:4`` — every pair of a grid (rows, then columns);
    * ``1,2;0,-3`` — explicit ``dy,dx`` pairs separated by ``;``.

    Example:
        >>> parse_shifts("0:3")
        [(0, 0), (0, 1), (0, 2)]
        >>> parse_shifts("diag:0:2")
        [(0, 0), (1, 1)]
        >>> parse_shifts("1,2; 0,-3")
        [(1, 2), (0, -3)]
    """
    text = spec.strip()
    if text.startswith("grid:"):
        body = text[len("grid:") :]
        ys, _, xs = body.partition(",")
        return shift_grid(ys, xs or None)
    if text.startswith("diag:"):
        return [(value, value) for value in shift_range(text[len("diag:") :])]
    if "," in text:
        return parse_pairs(text, "shifts", example="1,2;0,-3", whole=spec)
    return [(0, value) for value in shift_range(text)]


def parse_pairs(
    text: str, name: str, *, fractional: bool = False, example: str, whole: str | None = None
) -> list[tuple[Any, Any]]:
    """Explicit ``dy,dx`` pairs separated by ``;``: integers, or decimal numbers when ``fractional``.

    Args:
        text: the pairs, such as ``"1,2; 0,-3"``.
        name: the input, as the error message names it.
        fractional: read decimal numbers (floats) rather than integers.
        example: a valid value, shown in the error message.
        whole: the whole option value ``text`` came from, named in the error message when given.

    Raises:
        ShiftlabError: an item that is not two numbers of the expected kind.

    Example:
        >>> parse_pairs("1,2; 0,-3", "shifts", example="1,2"), parse_pairs("0,.5", "s", fractional=True, example="")
        ([(1, 2), (0, -3)], [(0.0, 0.5)])
    """
    pattern = r"[+-]?(\d+(\.\d*)?|\.\d+)" if fractional else r"[+-]?\d+"
    convert = float if fractional else int
    where = f" in {whole!r}" if whole is not None else ""
    pairs = []
    for item in text.split(";"):
        numbers = [number.strip() for number in item.split(",")]
        if len(numbers) != 2 or not all(re.fullmatch(pattern, number) for number in numbers):
            fail(name, f"cannot read {item.strip()!r}{where}: expected dy,dx pairs separated by ';', e.g. '{example}'")
        pairs.append((convert(numbers[0]), convert(numbers[1])))
    return pairs
