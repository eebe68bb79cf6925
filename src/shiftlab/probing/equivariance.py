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
absolute error and cosine similarity (see :mod:`shiftlab.distances`). Over
several images they come from sums over all of them, so the best alignment is
chosen once per shift, for all images together; :class:`ShiftComparison`
keeps those sums, batch after batch, and can be merged and all-reduced, so a
result does not depend on how the images were batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from shiftlab._tensors import as_float_tensor, require_spatial
from shiftlab.accumulate import Accumulator
from shiftlab.distances import MapError, map_error
from shiftlab.errors import ShiftlabError, check, check_pair, describe, first_line
from shiftlab.probing._compare import Pair, PairSums, Scratch, comparison_pairs, pair_sums, whole_sums
from shiftlab.probing.engine import OUTPUT, Pass, Seen, ShiftedForward
from shiftlab.probing.layouts import LayoutPlan, feature_stride
from shiftlab.shifts import Shift, ShiftMode, check_shifts

__all__ = [
    "EquivarianceResult",
    "FunctionModule",
    "Measured",
    "ShapeChanged",
    "ShiftComparison",
    "ShiftError",
    "call_fn",
    "equivariance_error",
    "feature_stride",
]

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


class Measured(NamedTuple):
    """One batch compared but not yet added: a tensor seen by two hooks (a block and its last ReLU) is compared once."""

    positions: torch.Tensor  # where the batch's (shift, alignment) pairs sit in the state
    span: slice | None  # the same positions as a range, when they are consecutive
    sums: PairSums
    shift_positions: torch.Tensor  # the shifts measured
    agreeing: torch.Tensor | None  # per shift, the images whose top-1 class is unchanged (logits only)
    images: int
    whole_map: bool


class ShiftComparison(Accumulator):
    """One map compared under a list of shifts, batch after batch: sums per (shift, whole-pixel alignment).

    ``update(maps, indices)`` adds one batch, where ``maps[0]`` is ``f(x)`` and ``maps[1 + j]`` is
    ``f(T_t x)`` for the shift ``t = shifts[indices[j]]``; :meth:`compute` gives one :class:`ShiftError`
    per shift, after the best alignment over everything added. The state is tensors on the maps'
    device (nothing is read back before :meth:`compute`), merged and all-reduced as any
    :class:`~shiftlab.accumulate.Accumulator`.

    Args:
        shifts: the ``(dy, dx)`` input shifts.
        stride: the map's cumulative stride, or None for an output compared as a whole
            (a vector, logits: invariance).
        circular: move the reference circularly (``circular`` and ``fourier`` shifts), else with a zero fill.
        logits: also count, per shift, the images whose top-1 class (argmax of the last axis) is unchanged.
        device: where the state lives (the maps' device).

    Example:
        >>> x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> comparison = ShiftComparison([(0, 2), (0, 3)], stride=(1, 1))
        >>> comparison.update(torch.stack([x, x.roll(2, -1), x.roll(3, -1)]))
        >>> [(error.aligned_dx, error.rel_l2) for error in comparison.compute()]
        [(2, 0.0), (3, 0.0)]
    """

    def __init__(
        self,
        shifts: Sequence[Shift],
        *,
        stride: tuple[int, int] | None,
        circular: bool = True,
        logits: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.shifts = [(dy, dx) for dy, dx in shifts]
        self.stride = stride
        self.circular = circular
        self.pairs: list[Pair] = (
            comparison_pairs(self.shifts, stride) if stride else [(index, (0, 0)) for index in range(len(self.shifts))]
        )
        self._plans: dict[tuple[int, ...], tuple[list[Pair], torch.Tensor, slice | None, torch.Tensor]] = {}
        count, shift_count = len(self.pairs), len(self.shifts)
        self.add_state("squares", torch.zeros(count, 3, dtype=torch.float64, device=device))
        self.add_state("largest", torch.zeros(count, dtype=torch.float64, device=device), reduce="max")
        self.add_state("compared", torch.zeros(count, dtype=torch.int64, device=device))
        self.add_state("total", torch.zeros(count, dtype=torch.int64, device=device))
        self.add_state("whole_map", torch.zeros((), dtype=torch.int64, device=device), reduce="max")
        if logits:
            self.add_state("agreeing", torch.zeros(shift_count, dtype=torch.int64, device=device))
            self.add_state("images", torch.zeros(shift_count, dtype=torch.int64, device=device))

    def _plan(self, indices: tuple[int, ...]) -> tuple[list[Pair], torch.Tensor, slice | None, torch.Tensor]:
        """For a pass measuring ``indices``: its pairs (shift indices local to the pass), their positions
        in the state (also as a range when they are consecutive), and the shifts' positions."""
        plan = self._plans.get(indices)
        if plan is None:
            local = {index: slot for slot, index in enumerate(indices)}
            chosen = [(position, pair) for position, pair in enumerate(self.pairs) if pair[0] in local]
            if len(local) != len(indices) or any(index not in range(len(self.shifts)) for index in indices):
                raise ValueError(f"shift indices {indices} do not name distinct shifts of {len(self.shifts)}")
            device = self.squares.device
            pairs = [(local[index], offset) for _, (index, offset) in chosen]
            numbers = [position for position, _ in chosen]
            span = slice(numbers[0], numbers[-1] + 1) if numbers == list(range(numbers[0], numbers[-1] + 1)) else None
            positions = torch.tensor(numbers, dtype=torch.long, device=device)
            plan = (pairs, positions, span, torch.tensor(indices, dtype=torch.long, device=device))
            self._plans[indices] = plan
        return plan

    def measure(
        self,
        maps: torch.Tensor,
        indices: Sequence[int] | None = None,
        *,
        core: torch.Tensor | None = None,
        whole_map: bool = False,
        scratch: Scratch | None = None,
    ) -> Measured:
        """Compare one batch, without adding it yet (see :meth:`update` for the arguments)."""
        chosen = tuple(range(len(self.shifts))) if indices is None else tuple(int(index) for index in indices)
        pairs, positions, span, shift_positions = self._plan(chosen)
        if self.stride is None:
            sums = whole_sums(maps[0], maps[1:])
        else:
            sums = pair_sums(maps, pairs, circular=self.circular, core=None if whole_map else core, scratch=scratch)
        agreeing, images = None, 0
        if self.has_state("agreeing"):
            top1 = maps.detach().argmax(dim=-1)
            same = (top1[1:] == top1[0]).reshape(len(chosen), -1)
            agreeing, images = same.sum(dim=1), same.shape[1]
        return Measured(positions, span, sums, shift_positions, agreeing, images, whole_map)

    def add(self, measured: Measured) -> None:
        """Add a batch compared by :meth:`measure` (of this comparison, or of one with the same shifts and stride)."""
        positions, sums = measured.positions, measured.sums
        where = measured.span if measured.span is not None else positions
        device = self.squares.device
        # in place on a range of the state (the usual case: a pass measures consecutive pairs), else by index;
        # torch.maximum keeps NaN as torch gives it
        self.squares[where] += sums.squares.to(device)
        self.largest[where] = torch.maximum(self.largest[where], sums.largest.to(device))
        self.compared[where] += sums.compared.to(device)
        self.total[where] += sums.total
        if measured.whole_map:
            self.whole_map.fill_(1)
        if measured.agreeing is not None and self.has_state("agreeing"):
            self.agreeing.index_add_(0, measured.shift_positions, measured.agreeing.to(self.agreeing.device))
            self.images.index_add_(
                0, measured.shift_positions, torch.full_like(measured.shift_positions, measured.images)
            )

    def update(
        self,
        maps: torch.Tensor,
        indices: Sequence[int] | None = None,
        *,
        core: torch.Tensor | None = None,
        whole_map: bool = False,
        scratch: Scratch | None = None,
    ) -> None:
        """Add one batch.

        Args:
            maps: ``(1 + k, *B, h, w)`` (spatial) or ``(1 + k, *B)``: ``f(x)``, then ``f(T_t x)`` for k shifts.
            indices: which shifts ``maps[1:]`` are (default: all of them, in order).
            core: ``(h, w)`` bool mask of the pixels whose receptive field stays clear of the border
                (zero fill only); None compares every pixel.
            whole_map: no pixel escapes the border, so the whole map is compared (the row says so).
            scratch: a reused buffer.
        """
        self.add(self.measure(maps, indices, core=core, whole_map=whole_map, scratch=scratch))

    def measure_pass(
        self,
        outputs: torch.Tensor,
        step: Pass,
        *,
        core: torch.Tensor | None = None,
        whole_map: bool = False,
        scratch: Scratch | None = None,
    ) -> list[Measured]:
        """Compare the outputs of one :class:`~shiftlab.probing.engine.Pass` of the engine, without adding them.

        ``outputs`` is ``(variants * images, ...)``: the references, then the copies for each shift of
        ``step.indices``. The pass's zero shifts (``step.identity``) compare the reference with itself.
        """
        grouped = outputs.reshape(step.variants, step.images, *outputs.shape[1:])
        measured = []
        if step.indices:
            measured.append(self.measure(grouped, step.indices, core=core, whole_map=whole_map, scratch=scratch))
        if step.identity:  # f(x) against itself: the reference stands in for the shifted copies
            reference = grouped[0][None].expand(1 + len(step.identity), *grouped.shape[1:])
            measured.append(self.measure(reference, step.identity, core=core, whole_map=whole_map, scratch=scratch))
        return measured

    def compute(self) -> list[ShiftError | None]:
        """One :class:`ShiftError` per shift (None for a shift never measured), read back from the device once."""
        squares, largest = self.squares.tolist(), self.largest.tolist()
        compared, total = self.compared.tolist(), self.total.tolist()
        whole_map = bool(self.whole_map)
        candidates: dict[int, list[tuple[tuple[int, int], Any]]] = {}
        for position, (index, offset) in enumerate(self.pairs):
            if total[position]:
                difference, reference, output = squares[position]
                error = map_error(difference, reference, output, largest[position], compared[position], total[position])
                candidates.setdefault(index, []).append((offset, error))
        return [
            self._row(index, candidates[index], whole_map) if index in candidates else None
            for index in range(len(self.shifts))
        ]

    def error_at(self, index: int, aligned: tuple[int, int]) -> MapError:
        """The metrics of shift ``index`` at the whole-pixel alignment ``aligned`` (``(0, 0)`` for an output compared
        as a whole), over everything added: a :func:`shiftlab.distances.map_error` result.

        Raises:
            ValueError: ``aligned`` is not one of the shift's candidate alignments.
        """
        position = self.pairs.index((index, (int(aligned[0]), int(aligned[1]))))
        difference, reference, output = self.squares[position].tolist()
        largest, compared, total = (
            float(self.largest[position]),
            int(self.compared[position]),
            int(self.total[position]),
        )
        return map_error(difference, reference, output, largest, compared, total)

    def _row(self, index: int, candidates: list[tuple[tuple[int, int], Any]], whole_map: bool) -> ShiftError:
        dy, dx = self.shifts[index]
        if self.stride is None:
            _, error = candidates[0]
            return ShiftError(dy, dx, None, 0.0, 0.0, False, 0, 0, *_metrics(error), NOTE_GLOBAL)
        fy, fx = dy / self.stride[0], dx / self.stride[1]
        multiple = fy == int(fy) and fx == int(fx)
        # The best alignment; on a tie, the one nearest t / s, then the smallest (floor first): a fixed order, so that
        # the choice never depends on which other shifts were measured or how the images were batched.
        offset, error = min(
            candidates,
            key=lambda item: (_rank(item[1].rel_l2), abs(item[0][0] - fy) + abs(item[0][1] - fx), item[0]),
        )
        note = _NOTES[multiple, whole_map]
        return ShiftError(dy, dx, self.stride, fy, fx, multiple, offset[0], offset[1], *_metrics(error), note)

    def top1_agreement(self) -> list[float | None]:
        """Per shift, the share of images whose top-1 class is unchanged (None without logits or images)."""
        if not self.has_state("agreeing"):
            return [None] * len(self.shifts)
        return [agree / seen if seen else None for agree, seen in zip(self.agreeing.tolist(), self.images.tolist())]


def _metrics(error: Any) -> tuple[float, float, float, float]:
    return error.rel_l2, error.max_abs, error.cosine, error.valid_fraction


def _rank(rel_l2: float) -> float:
    return math.inf if math.isnan(rel_l2) else rel_l2


@dataclass
class EquivarianceResult:
    """Per-shift errors of one map, with the protocol they were measured under."""

    errors: list[ShiftError]
    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    reference_scale: float = math.nan  # max |f(x)|, the scale that tolerances are relative to
    core: torch.Tensor | None = field(default=None, repr=False)  # pixels far enough from the border (zero/crop)
    output_dtype: torch.dtype | None = None  # the dtype of f(x)

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
    mode: ShiftMode | str = "circular",
    stride: int | tuple[int, int] | None = None,
) -> EquivarianceResult:
    """How far ``fn`` is from commuting with each shift: ``fn(T_t x)`` against ``T_{t/s} fn(x)``.

    The inputs go through the engine of the probe (:class:`~shiftlab.probing.engine.ShiftedForward`): one pass
    holds ``x`` and its shifted copies, and the border core of the ``zero`` and ``crop`` modes comes from its border
    pass. ``fn`` is called once per input, on a tensor shaped as ``x`` (a crop window for ``crop``); the zero shift
    costs no call (it compares ``fn(x)`` with itself). An ``nn.Module`` runs as in :func:`~shiftlab.probe`: in eval
    mode (every flag restored afterwards), under ``torch.no_grad``, with ``x`` moved to its device and dtype.

    Args:
        fn: maps a ``(..., H, W)`` tensor to a ``(..., h, w)`` tensor (an
            ``nn.Module``, a shiftlab operator, any function of torch tensors).
            An output of another rank, or a 1x1 map, is compared as a whole (invariance).
        x: the input, ``(..., H, W)`` array or tensor; ``fn`` gets it as a tensor.
        shifts: ``(dy, dx)`` pairs in input pixels (down, right).
        mode: ``"circular"`` (default), ``"zero"``, ``"crop"`` or ``"fourier"`` (see :mod:`shiftlab.shifts`), or a
            :class:`~shiftlab.shifts.ShiftMode`.
        stride: the map's cumulative stride; found from the sizes when omitted.

    Returns:
        An :class:`EquivarianceResult` with one :class:`ShiftError` per shift.

    Raises:
        ShiftlabError: bad shifts or mode, input too small for the shifts, ``fn`` failing on the input, changing the
            output's shape with the shift, or giving NaN or infinity.

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
    height, width = require_spatial(tensor, "x")
    mode = ShiftMode.of(mode)  # validated here, once
    pairs = check_shifts(shifts, mode)
    given = None if stride is None else check_pair(stride, "stride", minimum=1)
    function = FunctionModule(fn, tuple(tensor.shape[:-2]))
    engine = _FunctionForward(function, [], strides=[(OUTPUT, given)] if given else [], subject="fn")
    measurement = _OutputMeasurement(pairs, mode)
    engine.run(tensor.reshape(1, -1, height, width), pairs, mode, measurement)
    comparison = measurement.comparison
    assert comparison is not None and function.input_shape is not None and function.output_shape is not None
    errors = [error for error in comparison.compute() if error is not None]
    core = measurement.core
    return EquivarianceResult(
        errors,
        mode.mode,
        function.input_shape,
        function.output_shape,
        measurement.scale,
        None if core is None else core[0],
        function.output_dtype,
    )


class ShapeChanged(ShiftlabError):
    """``fn`` gave an output of another shape for a shifted input than for the reference."""

    def __init__(self, reference_shape: tuple[int, ...], shape: tuple[int, ...]) -> None:
        super().__init__(f"fn: gave shape {shape} for a shifted input but {reference_shape} for the reference")
        self.reference_shape = reference_shape
        self.shape = shape


class FunctionModule(nn.Module):
    """Any function of ``(..., H, W)`` tensors as a module of ``(N, P, H, W)`` batches, for the engine.

    Each of the ``N`` inputs is handed to ``fn`` shaped as the caller's own input (``leading`` axes, then the map),
    one call per input; the outputs come back as ``(N, -1, h, w)`` when they are maps of the input's rank (the last
    two axes spatial), else as ``(N, -1, 1, 1)``, compared as a whole. The first output's shape is the reference
    that every other must match.
    """

    def __init__(self, fn: Callable[[Any], Any], leading: tuple[int, ...]) -> None:
        super().__init__()
        self.fn = fn
        self.leading = leading
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.output_dtype: torch.dtype | None = None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = []
        for item in batch:
            shaped = item.reshape(*self.leading, *item.shape[-2:])
            output = call_fn(self.fn, shaped)
            shape = tuple(output.shape)
            if self.output_shape is None:
                check(output.numel() > 0, "fn", f"returned an empty output, {describe(output)}: nothing to compare")
                self.input_shape, self.output_shape, self.output_dtype = tuple(shaped.shape), shape, output.dtype
            elif shape != self.output_shape:
                raise ShapeChanged(self.output_shape, shape)
            outputs.append(output)
        reference = self.output_shape
        assert reference is not None
        spatial = len(reference) == len(self.leading) + 2 and reference[-2] * reference[-1] > 1  # a map of x's rank
        return torch.stack(outputs).reshape(len(outputs), -1, *(reference[-2:] if spatial else (1, 1)))


class _FunctionForward(ShiftedForward):
    """The engine for a :class:`FunctionModule`, whose output layout is known: the last two axes are the map."""

    def plan(self, example: torch.Tensor, hint: str = "") -> LayoutPlan:
        layouts = ((OUTPUT, "NCHW"),)  # a 1x1 map is compared as a whole (LayoutPlan's own rule)
        size = (example.shape[-2], example.shape[-1])
        return LayoutPlan(size, None, {}, {}, (layouts, self.strides), "the last two axes of the function's output")


class _OutputMeasurement:
    """The engine's callback for :func:`equivariance_error`: one comparison of the output, its scale and core."""

    def __init__(self, shifts: Sequence[Shift], mode: ShiftMode) -> None:
        self.shifts = shifts
        self.mode = mode
        self.comparison: ShiftComparison | None = None
        self.scale = 0.0  # max |f(x)|
        self.core: tuple[torch.Tensor, bool] | None = None

    def __call__(self, seen: Seen) -> None:
        assert seen.spatial is not None
        if self.comparison is None:
            stride = seen.layout.stride if seen.layout.spatial else None
            self.comparison = ShiftComparison(
                self.shifts, stride=stride, circular=self.mode.wraps, device=seen.output.device
            )
        self.scale = max(self.scale, float(seen.spatial[: seen.step.images].abs().max()))
        core, whole_map = seen.core if seen.core is not None and seen.layout.spatial else (None, False)
        self.core = seen.core if seen.layout.spatial else None
        for measured in self.comparison.measure_pass(seen.spatial, seen.step, core=core, whole_map=whole_map):
            self.comparison.add(measured)


def call_fn(fn: Callable[[Any], Any], tensor: torch.Tensor) -> torch.Tensor:
    """``fn(tensor)`` without gradients, as a floating-point tensor; ``fn``'s own failures become ShiftlabError."""
    with torch.no_grad():
        try:
            output = fn(tensor)
        except ShiftlabError:
            raise
        except Exception as error:  # whatever fn raises on this input is its answer to the input
            raise ShiftlabError(f"fn: failed on an input of shape {tuple(tensor.shape)}: {_reason(error)}") from error
    if not isinstance(output, torch.Tensor):
        output, _ = as_float_tensor(output, "output of fn")
    check(output.is_floating_point(), "fn", f"must return floating-point values, got {describe(output)}")
    return output


def _reason(error: Exception) -> str:
    """The first line of an error; with its type where the text alone would not say what went wrong."""
    plain = isinstance(error, (RuntimeError, ValueError, TypeError, IndexError))
    return first_line(error) if plain else f"{type(error).__name__}: {first_line(error)}"
