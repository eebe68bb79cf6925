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

from shiftlab._tensors import as_float_tensor, require_spatial
from shiftlab.errors import ShiftlabError, check, describe, fail
from shiftlab.metrics import ErrorSums
from shiftlab.shifts import SHIFT_MODES, crop_margin, shift

__all__ = [
    "EquivarianceResult",
    "ShiftError",
    "ShiftStats",
    "border_core",
    "equivariance_error",
    "feature_stride",
    "shifted_inputs",
]

Shift = tuple[float, float]

NOTE_NOT_MULTIPLE = "shift is not a multiple of the stride: error after the best whole-pixel alignment"
NOTE_WHOLE_MAP = "every pixel sees the border: whole map compared"
NOTE_GLOBAL = "not a spatial map: compared as a whole (invariance)"


def feature_stride(input_size: Sequence[int], output_size: Sequence[int]) -> tuple[int, int]:
    """Cumulative stride of a map, from the input and output sizes: ``max(1, round(H / h))`` per axis.

    Example:
        >>> feature_stride((224, 224), (56, 56))
        (4, 4)
        >>> feature_stride((225, 99), (113, 99))
        (2, 1)
    """
    return tuple(max(1, round(size_in / size_out)) for size_in, size_out in zip(input_size[-2:], output_size[-2:]))  # type: ignore[return-value]


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


def _candidates(value: float) -> list[int]:
    low, high = math.floor(value), math.ceil(value)
    return [low] if low == high else [low, high]


def _region(offset: int, length: int) -> tuple[slice, slice]:
    """Slices (in the shifted map, in the reference) of the overlap after moving the reference by ``offset``."""
    return slice(max(0, offset), length + min(0, offset)), slice(max(0, -offset), length - max(0, offset))


def _circular_blocks(offset: int, length: int) -> list[tuple[slice, slice]]:
    """Pairs of slices covering a circular move by ``offset`` without copying: out[a] = ref[b]."""
    offset %= length
    if offset == 0:
        return [(slice(0, length), slice(0, length))]
    return [(slice(offset, length), slice(0, length - offset)), (slice(0, offset), slice(length - offset, length))]


def _view_sums(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None) -> ErrorSums:
    """Sums over two same-shape views; ``weight`` is an optional 0/1 ``(h, w)`` mask."""
    if a.numel() == 0:
        return ErrorSums()
    if a.dtype not in (torch.float32, torch.float64):
        a, b = a.float(), b.float()
    difference = a - b
    compared = a.numel()
    if weight is not None:
        difference.mul_(weight)
        a, b = a * weight, b * weight
        compared = int(weight.sum()) * (a.numel() // weight.numel())
    low, high = torch.aminmax(difference)
    return ErrorSums(
        squared_difference=float(torch.linalg.vector_norm(difference)) ** 2,
        squared_reference=float(torch.linalg.vector_norm(b)) ** 2,
        squared_output=float(torch.linalg.vector_norm(a)) ** 2,
        dot=math.nan,  # filled in by the caller from the other sums
        max_abs=max(-float(low), float(high)),
        compared=compared,
        total=0,
    )


def _with_dot(sums: ErrorSums) -> ErrorSums:
    # <a, b> = (|a|^2 + |b|^2 - |a - b|^2) / 2: cancellation only blurs the cosine, never the L2 error.
    sums.dot = 0.5 * (sums.squared_output + sums.squared_reference - sums.squared_difference)
    return sums


def aligned_sums(
    shifted: torch.Tensor,
    reference: torch.Tensor,
    offset: tuple[int, int],
    circular: bool,
    core: torch.Tensor | None = None,
) -> ErrorSums:
    """Compare ``shifted`` with ``reference`` moved by a whole-pixel ``offset`` (down, right).

    ``circular`` moves the reference around the torus (every pixel compared);
    otherwise only the overlap is compared. ``core`` (optional ``(h, w)`` bool)
    marks pixels far enough from the border: a pixel counts when it is in the
    core of ``shifted`` and its source is in the core of ``reference``.
    """
    height, width = shifted.shape[-2:]
    oy, ox = offset
    if circular:
        blocks = [(ys, xs) for ys in _circular_blocks(oy, height) for xs in _circular_blocks(ox, width)]
    else:
        blocks = [(_region(oy, height), _region(ox, width))]
    total = ErrorSums(total=shifted.numel())
    for (out_y, ref_y), (out_x, ref_x) in blocks:
        weight = None
        if core is not None:
            both = core[out_y, out_x] & core[ref_y, ref_x]
            weight = both.to(shifted.dtype if shifted.dtype in (torch.float32, torch.float64) else torch.float32)
        part = _view_sums(shifted[..., out_y, out_x], reference[..., ref_y, ref_x], weight)
        total = total + ErrorSums(part.squared_difference, part.squared_reference, part.squared_output, 0.0, part.max_abs, part.compared, 0)
    return _with_dot(total)


@dataclass
class ShiftStats:
    """Streaming statistics of one map under one shift: sums per whole-pixel alignment, added batch by batch."""

    dy: float
    dx: float
    circular: bool
    stride: tuple[int, int] | None = None
    sums: dict[tuple[int, int], ErrorSums] = field(default_factory=dict)
    whole_map: bool = False

    def add(self, reference: torch.Tensor, shifted: torch.Tensor, *, spatial: bool, core: torch.Tensor | None = None, input_size: Sequence[int] = ()) -> None:
        """Accumulate one batch: ``reference = f(x)``, ``shifted = f(T_t x)``, same shape."""
        if not spatial:
            self.stride = None
            whole = _view_sums(shifted, reference, None)
            whole.total = whole.compared
            self._accumulate((0, 0), _with_dot(whole))
            return
        if self.stride is None:
            self.stride = feature_stride(input_size, shifted.shape)
        if core is not None and not bool(core.any()):
            core, self.whole_map = None, True
        fy, fx = self.dy / self.stride[0], self.dx / self.stride[1]
        for offset in ((oy, ox) for oy in _candidates(fy) for ox in _candidates(fx)):
            self._accumulate(offset, aligned_sums(shifted, reference, offset, self.circular, core))

    def _accumulate(self, offset: tuple[int, int], sums: ErrorSums) -> None:
        self.sums[offset] = self.sums[offset] + sums if offset in self.sums else sums

    def result(self) -> ShiftError:
        """The row for this shift: the best alignment and its metrics."""
        check(bool(self.sums), "statistics", "no batch was added")
        if self.stride is None:
            error = self.sums[(0, 0)].result()
            return ShiftError(self.dy, self.dx, None, 0.0, 0.0, False, 0, 0, error.rel_l2, error.max_abs, error.cosine, error.valid_fraction, NOTE_GLOBAL)
        fy, fx = self.dy / self.stride[0], self.dx / self.stride[1]
        multiple = fy == int(fy) and fx == int(fx)
        results = {offset: sums.result() for offset, sums in self.sums.items()}
        offset = min(results, key=lambda key: (math.inf if math.isnan(results[key].rel_l2) else results[key].rel_l2, abs(key[0] - fy) + abs(key[1] - fx)))
        error = results[offset]
        notes = ([] if multiple else [NOTE_NOT_MULTIPLE]) + ([NOTE_WHOLE_MAP] if self.whole_map else [])
        return ShiftError(self.dy, self.dx, self.stride, fy, fx, multiple, offset[0], offset[1], error.rel_l2, error.max_abs, error.cosine, error.valid_fraction, "; ".join(notes))


# --------------------------------------------------------------------------- inputs


def _check_shifts(shifts: Iterable[Any], mode: str) -> list[Shift]:
    pairs = []
    for item in shifts:
        try:
            dy, dx = item
        except (TypeError, ValueError):
            fail("shifts", f"expected (dy, dx) pairs, got {item!r}")
        for value, name in ((dy, "dy"), (dx, "dx")):
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), "shifts", f"{name} must be a finite number, got {value!r}")
            check(mode == "fourier" or float(value) == int(value), "shifts", f"({dy}, {dx}) is not a whole number of pixels; sub-pixel shifts need mode='fourier'")
        pairs.append((dy, dx) if mode == "fourier" else (int(dy), int(dx)))
    check(len(pairs) > 0, "shifts", "is empty: give at least one (dy, dx) pair")
    return pairs


def shifted_inputs(x: torch.Tensor, shifts: Sequence[Shift], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference input and the stack of shifted inputs, shape ``(len(shifts), *reference.shape)``.

    For ``crop`` the reference is the centre window, smaller than ``x`` by the
    largest shift on each side; every shifted input is a window of ``x`` too.
    """
    check(mode in SHIFT_MODES, "mode", f"must be one of {', '.join(SHIFT_MODES)}, got {mode!r}")
    height, width = x.shape[-2:]
    if mode == "crop":
        margin = crop_margin(shifts)
        check(height > 2 * margin[0] and width > 2 * margin[1], "shifts", f"crop windows for shifts up to {margin} need an input larger than {2 * margin[0]}x{2 * margin[1]}, got {height}x{width}")
        reference = shift(x, 0, 0, mode="crop", margin=margin)
        moved = [shift(x, dy, dx, mode="crop", margin=margin) for dy, dx in shifts]
    else:
        if mode == "zero":
            largest = crop_margin(shifts)
            check(largest[0] < height and largest[1] < width, "shifts", f"shifts up to {largest} move a {height}x{width} input out of the frame")
        reference = x
        moved = [shift(x, dy, dx, mode=mode) for dy, dx in shifts]
    return reference, torch.stack(moved)


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
            An output of another rank is compared as a whole (invariance).
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
    spatial = reference.ndim == reference_input.ndim and reference.ndim >= 2
    if stride is not None:
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        check(len(stride) == 2 and all(isinstance(s, int) and s >= 1 for s in stride), "stride", f"must be a positive int or a pair of them, got {stride!r}")
    core = None
    if spatial and mode in ("zero", "crop"):
        band = crop_margin(pairs)
        outputs: list[torch.Tensor] = []
        border_core(reference_input, band, lambda tainted: outputs.append(_call(fn, tainted[0])))
        core = torch.isfinite(outputs[0]).reshape(-1, *reference.shape[-2:]).all(dim=0)
    errors = []
    for (dy, dx), moved_input in zip(pairs, moved):
        output = _call(fn, moved_input)
        check(output.shape == reference.shape, "fn", f"gave shape {tuple(output.shape)} for a shifted input but {tuple(reference.shape)} for the reference")
        stats = ShiftStats(dy, dx, circular=mode in ("circular", "fourier"), stride=stride if spatial else None)
        stats.add(reference, output, spatial=spatial, core=core, input_size=reference_input.shape)
        errors.append(stats.result())
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return EquivarianceResult(errors, mode, tuple(reference_input.shape), tuple(reference.shape), scale, core)


def _call(fn: Callable[[Any], Any], tensor: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        try:
            output = fn(tensor)
        except ShiftlabError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            fail("fn", f"failed on an input of shape {tuple(tensor.shape)}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}")
    if not isinstance(output, torch.Tensor):
        output, _ = as_float_tensor(output, "output of fn")
    check(output.is_floating_point(), "fn", f"must return floating-point values, got {describe(output)}")
    return output
