"""The equivariance error of one map under shifts: compare ``f(T_t x)`` with ``T_{t/s} f(x)``.

For a shift ``t = (dy, dx)`` of the input and a map with cumulative stride
``s = (sy, sx)`` (found from the sizes: ``round(H / h)``, or given), the map
should move by ``t / s`` of its own pixels.

* When ``t / s`` is whole, ``f(T_t x)`` is compared with ``f(x)`` moved by
  exactly that much: 0 for an equivariant map.
* When it is not (an odd shift after a stride-2 layer), no whole-pixel move
  can match, and the row says so (``multiple=False``). The error reported is
  the one after the *best* whole-pixel alignment (the floor or ceiling of
  ``t / s`` on each axis, whichever fits best), so aliasing shows up as a
  number and not as a misalignment.

Maps are moved the way the input was: circularly for ``circular`` and
``fourier`` shifts, with a zero fill (excluded from the comparison) for
``zero`` and ``crop``. In those two modes, the pixels near the frame are also
excluded: every output pixel whose receptive field reaches within ``max |t|``
of the border. They are found by one extra forward pass of a single image
whose border band is NaN (NaN spreads exactly along the receptive field),
so padding effects never count as equivariance errors. When no pixel of a
map escapes the border (a global pooling, the logits), the whole map is
compared and ``note`` says so.

Metrics, on the compared pixels: relative L2 error ``||a - b|| / ||b||``, max
absolute error and cosine similarity (see :mod:`shiftlab.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from shiftlab._compare import PairSums, Scratch, pair_sums, whole_sums
from shiftlab._tensors import as_float_tensor, require_spatial
from shiftlab.errors import ShiftlabError, check, describe, fail, first_line
from shiftlab.metrics import ErrorSums
from shiftlab.shifts import SHIFT_MODES, crop_margin, shift

__all__ = [
    "EquivarianceResult",
    "ShiftError",
    "MapSums",
    "ShiftStats",
    "measure_map",
    "border_core",
    "equivariance_error",
    "feature_stride",
    "reference_input",
    "shifted_input",
    "shifted_inputs",
]

Shift = tuple[float, float]

NOTE_NOT_MULTIPLE = "shift is not a multiple of the stride: error after the best whole-pixel alignment"
NOTE_WHOLE_MAP = "every pixel sees the border: whole map compared"
NOTE_GLOBAL = "not a spatial map: compared as a whole (invariance)"
# The note of a row, by (multiple, whole map).
_NOTES = {
    (True, False): "",
    (False, False): NOTE_NOT_MULTIPLE,
    (True, True): NOTE_WHOLE_MAP,
    (False, True): f"{NOTE_NOT_MULTIPLE}; {NOTE_WHOLE_MAP}",
}


def feature_stride(input_size: Sequence[int], output_size: Sequence[int]) -> tuple[int, int]:
    """Cumulative stride of a map, from the input and output sizes, per axis.

    Padding and dropped border pixels make ``H / h`` inexact (a 114-pixel input
    gives 8 pixels after a stride of 16; a valid 3x3 convolution turns 6 pixels
    into 4), so: more than half the pixels left means stride 1; otherwise a
    power of two ``p`` with ``|H / p - h| < 1`` is preferred, else ``round(H / h)``.
    Pass the stride explicitly where this guess cannot know better.

    Example:
        >>> feature_stride((224, 224), (56, 56))
        (4, 4)
        >>> feature_stride((114, 99), (8, 99))
        (16, 1)
        >>> feature_stride((90, 6), (30, 4))
        (3, 1)
    """
    return tuple(_axis_stride(size_in, size_out) for size_in, size_out in zip(input_size[-2:], output_size[-2:]))  # type: ignore[return-value]


def _axis_stride(size_in: int, size_out: int) -> int:
    if size_out > size_in / 2 + 0.5:
        return 1
    power = 2
    while power <= size_in:
        if abs(size_in / power - size_out) < 1:
            return power
        power *= 2
    return max(1, round(size_in / size_out))


@dataclass(frozen=True)
class ShiftError:
    """The error of one map under one shift (and, in a probe, one layer)."""

    dy: float
    dx: float
    stride: tuple[int, int] | None
    feature_dy: float
    feature_dx: float
    multiple: bool
    aligned_dy: int
    aligned_dx: int
    rel_l2: float
    max_abs: float
    cosine: float
    valid_fraction: float
    note: str = ""


@dataclass
class ShiftStats:
    """Streaming statistics of one map under one shift: sums per whole-pixel alignment, added batch by batch."""

    dy: float
    dx: float
    stride: tuple[int, int] | None = None
    sums: dict[tuple[int, int], ErrorSums] = field(default_factory=dict)
    whole_map: bool = False

    def add(self, sums: dict[tuple[int, int], ErrorSums]) -> None:
        """Add one batch's sums (from :func:`shiftlab._compare.compare_shifts`, or ``{(0, 0): ...}`` for a whole-map comparison)."""
        for offset, part in sums.items():
            self.sums[offset] = self.sums[offset] + part if offset in self.sums else part

    def result(self) -> ShiftError:
        """The row for this shift: the best alignment and its metrics."""
        if not self.sums:
            fail("statistics", "no batch was added")
        if self.stride is None:
            sums = self.sums[(0, 0)]
            max_abs = sums.max_abs if sums.compared else math.nan
            return ShiftError(
                self.dy,
                self.dx,
                None,
                0.0,
                0.0,
                False,
                0,
                0,
                sums.rel_l2,
                max_abs,
                sums.cosine,
                sums.valid_fraction,
                NOTE_GLOBAL,
            )
        fy, fx = self.dy / self.stride[0], self.dx / self.stride[1]
        multiple = fy == int(fy) and fx == int(fx)
        offset = next(iter(self.sums))
        if len(self.sums) > 1:  # the best alignment; on a tie, the one nearest t / s
            offset = min(self.sums, key=lambda key: (_rank(self.sums[key].rel_l2), abs(key[0] - fy) + abs(key[1] - fx)))
        sums = self.sums[offset]
        max_abs = sums.max_abs if sums.compared else math.nan
        note = _NOTES[multiple, self.whole_map]
        return ShiftError(
            self.dy,
            self.dx,
            self.stride,
            fy,
            fx,
            multiple,
            offset[0],
            offset[1],
            sums.rel_l2,
            max_abs,
            sums.cosine,
            sums.valid_fraction,
            note,
        )


def _rank(rel_l2: float) -> float:
    return math.inf if math.isnan(rel_l2) else rel_l2


@dataclass
class MapSums:
    """The comparison of one map, batch after batch: its stride, whether the whole map was compared, and the sums per (shift, alignment).

    The sums stay tensors on the map's device until :meth:`add_to` reads them back.
    """

    stride: tuple[int, int] | None
    whole_map: bool
    sums: PairSums

    def __add__(self, other: MapSums) -> MapSums:
        return MapSums(self.stride or other.stride, self.whole_map or other.whole_map, self.sums + other.sums)

    def add_to(self, stats: Sequence[ShiftStats]) -> None:
        """Add these sums to the statistics of the shifts they were measured for (``stats[i]`` for shift index ``i``)."""
        for entry, sums in zip(stats, self.sums.per_shift(len(stats))):
            if sums:
                entry.stride = entry.stride or self.stride
                entry.whole_map = entry.whole_map or self.whole_map
                entry.add(sums)


def measure_map(
    maps: torch.Tensor,
    shifts: Sequence[Shift],
    *,
    spatial: bool,
    circular: bool,
    stride: tuple[int, int] | None,
    input_size: Sequence[int],
    core: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> MapSums:
    """Compare ``maps[1 + i]`` (``f(T_{t_i} x)``) with ``maps[0]`` (``f(x)``) for every shift.

    ``stride`` is the map's stride when already known (found from ``input_size``
    otherwise). A ``core`` with no pixel left means the whole map is compared.
    """
    if not spatial:
        return MapSums(None, False, whole_sums(maps[0], maps[1:]))
    stride = stride or feature_stride(input_size, maps.shape[1:])
    whole_map = core is not None and not bool(core.any())
    sums = pair_sums(maps, shifts, stride=stride, circular=circular, core=None if whole_map else core, scratch=scratch)
    return MapSums(stride, whole_map, sums)


# --------------------------------------------------------------------------- inputs


def _check_shifts(shifts: Iterable[Any], mode: str) -> list[Shift]:
    pairs = []
    for item in shifts:
        try:
            dy, dx = item
        except (TypeError, ValueError):
            fail("shifts", f"expected (dy, dx) pairs, got {item!r}")
        for value, name in ((dy, "dy"), (dx, "dx")):
            check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                "shifts",
                f"{name} must be a finite number, got {value!r}",
            )
            check(
                mode == "fourier" or float(value) == int(value),
                "shifts",
                f"({dy}, {dx}) is not a whole number of pixels; sub-pixel shifts need mode='fourier'",
            )
        pairs.append((dy, dx) if mode == "fourier" else (int(dy), int(dx)))
    check(len(pairs) > 0, "shifts", "is empty: give at least one (dy, dx) pair")
    return pairs


def reference_input(x: torch.Tensor, shifts: Sequence[Shift], mode: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The unshifted input that every shift is compared with, and the crop margin (``crop`` mode only).

    For ``crop`` the reference is the centre window, smaller than ``x`` by the
    largest shift on each side, and every shifted input is a window of ``x`` too.
    """
    check(mode in SHIFT_MODES, "mode", f"must be one of {', '.join(SHIFT_MODES)}, got {mode!r}")
    height, width = x.shape[-2:]
    largest = crop_margin(shifts)
    if mode == "crop":
        check(
            height > 2 * largest[0] and width > 2 * largest[1],
            "shifts",
            f"crop windows for shifts up to {largest} need an input larger than {2 * largest[0]}x{2 * largest[1]}, got {height}x{width}",
        )
        return shift(x, 0, 0, mode="crop", margin=largest), largest
    if mode == "zero":
        check(
            largest[0] < height and largest[1] < width,
            "shifts",
            f"shifts up to {largest} move a {height}x{width} input out of the frame",
        )
    return x, None


def shifted_input(x: torch.Tensor, dy: float, dx: float, mode: str, margin: tuple[int, int] | None) -> torch.Tensor:
    """``x`` shifted by ``(dy, dx)``, shaped like the :func:`reference_input` (``margin`` from it)."""
    return shift(x, dy, dx, mode=mode, margin=margin) if mode == "crop" else shift(x, dy, dx, mode=mode)


def shifted_inputs(x: torch.Tensor, shifts: Sequence[Shift], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference input and the stack of shifted inputs, shape ``(len(shifts), *reference.shape)``."""
    reference, margin = reference_input(x, shifts, mode)
    return reference, torch.stack([shifted_input(x, dy, dx, mode, margin) for dy, dx in shifts])


def border_core(reference_input: torch.Tensor, band: tuple[int, int], run: Callable[[torch.Tensor], Any]) -> None:
    """Run one input whose outer ``band`` is NaN through ``run``; the caller reads which outputs stayed finite.

    ``reference_input`` is one ``(C, H, W)`` (or ``(H, W)``) input; ``run``
    receives it with a batch axis added.
    """
    tainted = reference_input.clone()
    band_y, band_x = band
    if band_y:
        tainted[..., :band_y, :] = math.nan
        tainted[..., -band_y:, :] = math.nan
    if band_x:
        tainted[..., :, :band_x] = math.nan
        tainted[..., :, -band_x:] = math.nan
    run(tainted[None])


@dataclass
class EquivarianceResult:
    """Per-shift errors of one map, with the protocol they were measured under."""

    errors: list[ShiftError]
    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    reference_scale: float = math.nan  # max |f(x)|, the scale that tolerances are relative to
    core: torch.Tensor | None = field(default=None, repr=False)  # pixels far enough from the border (zero/crop)

    @property
    def stride(self) -> tuple[int, int] | None:
        return self.errors[0].stride

    @property
    def max_rel_l2(self) -> float:
        """The largest relative L2 error over the shifts."""
        return max(error.rel_l2 for error in self.errors)

    def worst(self) -> ShiftError:
        """The shift with the largest relative error."""
        return max(self.errors, key=lambda error: error.rel_l2)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per shift, with the protocol repeated in every row (a tidy table)."""
        return [{"mode": self.mode, **asdict(error)} for error in self.errors]


def equivariance_error(
    fn: Callable[[Any], Any],
    x: Any,
    shifts: Iterable[tuple[float, float]],
    *,
    mode: str = "circular",
    stride: int | tuple[int, int] | None = None,
) -> EquivarianceResult:
    """How far ``fn`` is from commuting with each shift: ``fn(T_t x)`` against ``T_{t/s} fn(x)``.

    Args:
        fn: maps a ``(..., H, W)`` tensor to a ``(..., h, w)`` tensor (an
            ``nn.Module``, a shiftlab operator, any function of torch tensors).
            An output of another rank, or a 1x1 map, is compared as a whole (invariance).
        x: the input, ``(..., H, W)`` array or tensor; ``fn`` gets it as a tensor.
        shifts: ``(dy, dx)`` pairs in input pixels (down, right).
        mode: ``"circular"`` (default), ``"zero"``, ``"crop"`` or ``"fourier"`` (see :mod:`shiftlab.shifts`).
        stride: the map's cumulative stride; found from the sizes when omitted.

    Returns:
        An :class:`EquivarianceResult` with one :class:`ShiftError` per shift.

    Raises:
        ShiftlabError: bad shifts or mode, input too small for the shifts, or ``fn`` failing on the input.

    Example:
        >>> import torch
        >>> from shiftlab import convolve, max_pool
        >>> x = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> conv = equivariance_error(lambda t: convolve(t, "sobel_y", padding="circular"), x, [(0, 1), (2, 3)])
        >>> [round(error.rel_l2, 6) for error in conv.errors]
        [0.0, 0.0]
        >>> pool = equivariance_error(max_pool, x, [(0, 1), (0, 2)])
        >>> [(error.multiple, error.rel_l2 > 0.01) for error in pool.errors]
        [(False, True), (True, False)]
    """
    tensor, _ = as_float_tensor(x, "x")
    require_spatial(tensor, "x")
    pairs = _check_shifts(shifts, mode)
    reference_input, moved = shifted_inputs(tensor, pairs, mode)
    reference = _call(fn, reference_input)
    spatial = (
        reference.ndim == reference_input.ndim and reference.ndim >= 2 and reference.shape[-2] * reference.shape[-1] > 1
    )
    if stride is not None:
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        check(
            len(stride) == 2 and all(isinstance(s, int) and s >= 1 for s in stride),
            "stride",
            f"must be a positive int or a pair of them, got {stride!r}",
        )
    core = None
    if spatial and mode in ("zero", "crop"):
        band = crop_margin(pairs)
        outputs: list[torch.Tensor] = []
        border_core(reference_input, band, lambda tainted: outputs.append(_call(fn, tainted[0])))
        core = torch.isfinite(outputs[0]).reshape(-1, *reference.shape[-2:]).all(dim=0)
    outputs = []
    for moved_input in moved:
        output = _call(fn, moved_input)
        check(
            output.shape == reference.shape,
            "fn",
            f"gave shape {tuple(output.shape)} for a shifted input but {tuple(reference.shape)} for the reference",
        )
        outputs.append(output)
    stats = [ShiftStats(dy, dx) for dy, dx in pairs]
    measured = measure_map(
        torch.stack([reference, *outputs]),
        pairs,
        spatial=spatial,
        circular=mode in ("circular", "fourier"),
        stride=stride if spatial else None,
        input_size=reference_input.shape,
        core=core,
    )
    measured.add_to(stats)
    errors = [entry.result() for entry in stats]
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return EquivarianceResult(errors, mode, tuple(reference_input.shape), tuple(reference.shape), scale, core)


def _call(fn: Callable[[Any], Any], tensor: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        try:
            output = fn(tensor)
        except ShiftlabError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            fail("fn", f"failed on an input of shape {tuple(tensor.shape)}: {first_line(error)}")
    if not isinstance(output, torch.Tensor):
        output, _ = as_float_tensor(output, "output of fn")
    check(output.is_floating_point(), "fn", f"must return floating-point values, got {describe(output)}")
    return output
