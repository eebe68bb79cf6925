"""The hot path of :func:`shiftlab.probe`: compare a stack of shifted maps with the moved reference, as sums.

For every shift ``t`` and every whole-pixel alignment ``o`` worth trying
(the floor and ceiling of ``t / stride`` on each axis), the sums of
:class:`~shiftlab.metrics.ErrorSums` are computed over the compared pixels.
Cost is what matters here, because this runs inside every hook:

* the sums stay on the maps' device as tensors (:class:`PairSums`), added
  batch after batch; nothing is read back to Python until the end, so a
  hook never waits for the device;
* on the CPU, contiguous float32 maps go through the fused kernels of
  :mod:`shiftlab._fused` (numba): each map is read once for all its
  alignments, on torch's own threads;
* elsewhere (CUDA, half precision, other layouts, no numba, or
  ``SHIFTLAB_FUSED=0``) torch operations do it. The reference is never
  rolled or copied per shift there: a circular move is a view into a
  reference padded once with its own wrapped border, a zero-fill move is a
  view of the overlap. The differences of many (shift, alignment) pairs are
  written side by side into one reusable scratch buffer and reduced
  together, and squared norms are reduced per ``(H, W)`` plane in float32
  and summed in float64, which keeps the relative error near 1e-7 where one
  float32 reduction over millions of values drifts to 1e-4.

Both ways give the same sums to float rounding; the tests run every
comparison through each of them.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shiftlab.errors import first_line
from shiftlab.metrics import ErrorSums

__all__ = ["PairSums", "Scratch", "alignment_candidates", "compare_shifts", "compare_whole", "pair_sums", "whole_sums"]

Offset = tuple[int, int]
Pair = tuple[int, Offset]  # (shift index, alignment)

#: Largest scratch buffer, in elements (2**20 float32 = 4 MiB): bigger groups of maps are compared a few at a time.
SCRATCH_ELEMENTS = 1 << 20


class Scratch:
    """A growing buffer reused for the differences of every comparison of a run."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        count = math.prod(shape)
        buffer = self._buffer
        if buffer is None or buffer.numel() < count or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(
                max(count, buffer.numel() if buffer is not None and buffer.dtype == like.dtype else 0),
                dtype=like.dtype,
                device=like.device,
            )
            self._buffer = buffer
        return buffer[:count].view(*shape)


@dataclass
class PairSums:
    """The sums of one or more batches for a fixed list of (shift index, alignment) pairs, kept as tensors.

    ``squares[p]`` holds the squared difference, squared reference and squared
    output of pair ``p`` (float64), ``largest[p]`` its largest absolute
    difference; ``compared`` and ``total`` count pixels. Add two with ``+``
    (same pairs: the next batch); read them with :meth:`per_shift`.
    """

    pairs: list[Pair]
    squares: torch.Tensor
    largest: torch.Tensor
    compared: list[int]
    total: list[int]

    def __add__(self, other: PairSums) -> PairSums:
        if other.pairs != self.pairs:  # the same pairs in another order (another code path): align them first
            if sorted(other.pairs) != sorted(self.pairs):
                raise ValueError("PairSums of different pairs cannot be added")
            other = other.take([other.pairs.index(pair) for pair in self.pairs])
        return PairSums(
            self.pairs,
            self.squares + other.squares.to(self.squares.device),
            torch.maximum(self.largest, other.largest.to(self.largest.device)),
            [a + b for a, b in zip(self.compared, other.compared)],
            [a + b for a, b in zip(self.total, other.total)],
        )

    def take(self, positions: list[int]) -> PairSums:
        """The pairs at ``positions``, in that order."""
        index = torch.tensor(positions, dtype=torch.long, device=self.squares.device)
        return PairSums(
            [self.pairs[position] for position in positions],
            self.squares[index],
            self.largest[index],
            [self.compared[position] for position in positions],
            [self.total[position] for position in positions],
        )

    def per_shift(self, count: int) -> list[dict[Offset, ErrorSums]]:
        """``{alignment: ErrorSums}`` for each of ``count`` shifts (read back from the device once)."""
        results: list[dict[Offset, ErrorSums]] = [{} for _ in range(count)]
        squares, largest = self.squares.tolist(), self.largest.tolist()
        for (index, offset), (difference, reference, output), peak, compared, total in zip(
            self.pairs, squares, largest, self.compared, self.total
        ):
            results[index][offset] = _finish(difference, reference, output, peak, compared, total)
        return results


def _finish(
    squared_difference: float,
    squared_reference: float,
    squared_output: float,
    largest: float,
    compared: int,
    total: int,
) -> ErrorSums:
    # <a, b> = (|a|^2 + |b|^2 - |a - b|^2) / 2: cancellation blurs only the cosine, never the L2 error.
    dot = 0.5 * (squared_output + squared_reference - squared_difference)
    return ErrorSums(squared_difference, squared_reference, squared_output, dot, largest, compared, total)


def alignment_candidates(dy: float, dx: float, stride: tuple[int, int]) -> list[Offset]:
    """Whole-pixel moves of the map worth trying for an input shift: floor and ceiling of ``shift / stride`` per axis.

    Example:
        >>> alignment_candidates(0, 3, (2, 2))
        [(0, 1), (0, 2)]
        >>> alignment_candidates(4, 4, (2, 2))
        [(2, 2)]
    """

    def axis(value: float) -> list[int]:
        low, high = math.floor(value), math.ceil(value)
        return [low] if low == high else [low, high]

    return [(oy, ox) for oy in axis(dy / stride[0]) for ox in axis(dx / stride[1])]


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _plane_squares(tensor: torch.Tensor, leading: int) -> torch.Tensor:
    """Sum of squares over everything but the first ``leading`` axes, accurately: per-plane float32 norms, summed in float64."""
    if tensor.numel() == 0:
        return torch.zeros(tensor.shape[:leading], dtype=torch.float64, device=tensor.device)
    norms = torch.linalg.vector_norm(tensor, dim=(-2, -1)).double().square()
    return norms.sum(dim=tuple(range(leading, norms.ndim))) if norms.ndim > leading else norms


def _largest(differences: torch.Tensor) -> torch.Tensor:
    """Largest absolute value of each of the ``k`` maps of ``differences``, as float64 ``(k,)``."""
    flat = differences.reshape(differences.shape[0], -1)
    if flat.shape[1] == 0:
        return torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
    # amax and amin along dim 1 are each ~20x faster than aminmax(dim=1) on the CPU (torch 2.x).
    return torch.maximum(flat.amax(dim=1), flat.amin(dim=1).neg_()).double()


def _reduce(offset: int, length: int) -> int:
    """A circular move expressed in ``(-length / 2, length / 2]``."""
    offset %= length
    return offset - length if offset > length // 2 else offset


def _wrap_pad(reference: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """``reference`` with ``before`` wrapped rows/columns in front and ``after`` behind, along ``dim``."""
    if before == 0 and after == 0:
        return reference
    length = reference.shape[dim]
    parts = []
    if before:
        parts.append(reference.narrow(dim, length - before, before))
    parts.append(reference)
    if after:
        parts.append(reference.narrow(dim, 0, after))
    return torch.cat(parts, dim=dim)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """``indices`` as runs of consecutive values ``[start, stop)``: each is a view of the stack, never a gather."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _core_box(core: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` when the True pixels of ``core`` form a rectangle, else None."""
    rows = torch.nonzero(core.any(dim=1)).flatten()
    cols = torch.nonzero(core.any(dim=0)).flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if int(core[top:bottom, left:right].sum()) == (bottom - top) * (right - left):
        return top, bottom, left, right
    return None


class _Differences:
    """Writes differences of equally shaped maps into the scratch buffer side by side, and reduces them a buffer at a time."""

    def __init__(self, map_shape: Sequence[int], count: int, like: torch.Tensor, scratch: Scratch) -> None:
        per_map = max(1, math.prod(map_shape))
        self.capacity = max(1, min(count, SCRATCH_ELEMENTS // per_map))
        self.buffer = scratch.take((self.capacity, *map_shape), like)
        self.filled = 0
        self.squares: list[torch.Tensor] = []
        self.largest: list[torch.Tensor] = []

    def subtract(self, maps: torch.Tensor, moved: torch.Tensor) -> None:
        """Queue ``maps[i] - moved`` for every ``i``."""
        start = 0
        while start < maps.shape[0]:
            count = min(maps.shape[0] - start, self.capacity - self.filled)
            torch.sub(maps[start : start + count], moved, out=self.buffer[self.filled : self.filled + count])
            self.filled += count
            start += count
            if self.filled == self.capacity:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            differences = self.buffer[: self.filled]
            self.squares.append(_plane_squares(differences, 1))
            self.largest.append(_largest(differences))
            self.filled = 0

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared norms and largest absolute values of every queued difference, in order."""
        self.flush()
        if len(self.squares) == 1:
            return self.squares[0], self.largest[0]
        return torch.cat(self.squares), torch.cat(self.largest)


def _groups(shifts: Sequence[tuple[float, float]], stride: tuple[int, int]) -> dict[Offset, list[int]]:
    """The shift indices that try each alignment, alignments in order of first use."""
    groups: dict[Offset, list[int]] = {}
    for index, (dy, dx) in enumerate(shifts):
        for offset in alignment_candidates(dy, dx, stride):
            groups.setdefault(offset, []).append(index)
    return groups


def pair_sums(
    maps: torch.Tensor,
    shifts: Sequence[tuple[float, float]],
    *,
    stride: tuple[int, int],
    circular: bool,
    core: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> PairSums:
    """Sums for every shift and every alignment candidate, as tensors on the maps' device.

    Args:
        maps: ``f(x)`` then ``f(T_t x)`` for every shift, shape ``(1 + n, *B, h, w)``.
        shifts: the ``n`` input shifts ``(dy, dx)``.
        stride: the map's cumulative stride.
        circular: move the reference around the torus (else: zero fill, overlap only).
        core: optional non-empty ``(h, w)`` bool mask of pixels far enough from the border
            (only without ``circular``): a pixel counts when it and its source are in the core.
        scratch: a reusable buffer.

    Returns:
        :class:`PairSums` for the pairs (shift index, alignment), grouped by alignment.
        Contiguous float32 maps on the CPU go through the fused kernels of
        :mod:`shiftlab._fused` when numba is installed, anything else through torch.
    """
    maps = _as_float(maps.detach())
    fused = _fused_kernels(maps)
    if circular and fused is not None:
        return _fused_circular_sums(fused, maps, shifts, stride)
    scratch = scratch or Scratch()
    groups = _groups(shifts, stride)
    if circular:
        return _circular_sums(maps[0], maps[1:], groups, scratch)
    height, width = maps.shape[-2:]
    box = (0, height, 0, width)
    if core is not None:
        found = _core_box(core)
        if found is None:  # a core of another shape: weigh every pixel (torch only)
            return _overlap_sums(maps[0], maps[1:], groups, box, core, scratch)
        box = found
    if fused is not None:
        return _fused_overlap_sums(fused, maps, groups, box)
    return _overlap_sums(maps[0], maps[1:], groups, box, None, scratch)


def _circular_sums(
    reference: torch.Tensor, shifted: torch.Tensor, groups: dict[Offset, list[int]], scratch: Scratch
) -> PairSums:
    height, width = reference.shape[-2:]
    moves = {offset: (_reduce(offset[0], height), _reduce(offset[1], width)) for offset in groups}
    top = max(0, *(oy for oy, _ in moves.values()))
    bottom = max(0, *(-oy for oy, _ in moves.values()))
    left = max(0, *(ox for _, ox in moves.values()))
    right = max(0, *(-ox for _, ox in moves.values()))
    padded = _wrap_pad(_wrap_pad(reference, top, bottom, -2), left, right, -1)
    pairs = [(index, offset) for offset, indices in groups.items() for index in indices]
    differences = _Differences(reference.shape, len(pairs), reference, scratch)
    for offset, indices in groups.items():
        oy, ox = moves[offset]
        moved = padded[..., top - oy : top - oy + height, left - ox : left - ox + width]
        for start, stop in _runs(indices):
            differences.subtract(shifted[start:stop], moved)
    squared_difference, largest = differences.result()
    squared_output = _plane_squares(shifted, 1)[torch.tensor([index for index, _ in pairs], device=shifted.device)]
    squared_reference = _plane_squares(reference, 0).expand(len(pairs))
    size = reference.numel()
    squares = torch.stack([squared_difference, squared_reference, squared_output], dim=1)
    return PairSums(pairs, squares, largest, [size] * len(pairs), [size] * len(pairs))


def _overlap(offset: Offset, box: tuple[int, int, int, int]) -> tuple[slice, slice, slice, slice] | None:
    """For a zero-fill move inside ``box``: the compared rows and columns of the shifted map, then of the reference; None when nothing overlaps."""
    y0, y1, x0, x1 = box
    oy, ox = offset
    ys = slice(max(y0, y0 + oy), min(y1, y1 + oy))
    xs = slice(max(x0, x0 + ox), min(x1, x1 + ox))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return None
    return ys, xs, slice(ys.start - oy, ys.stop - oy), slice(xs.start - ox, xs.stop - ox)


def _overlap_sums(
    reference: torch.Tensor,
    shifted: torch.Tensor,
    groups: dict[Offset, list[int]],
    box: tuple[int, int, int, int],
    core: torch.Tensor | None,
    scratch: Scratch,
) -> PairSums:
    """Zero-fill moves: each alignment compares its own overlap (and core), so each is reduced on its own."""
    size = reference.numel()
    planes = size // (reference.shape[-2] * reference.shape[-1]) if size else 0
    weights = None if core is None else core.to(reference.dtype)
    pairs: list[Pair] = []
    parts: list[torch.Tensor] = []
    largest: list[torch.Tensor] = []
    compared: list[int] = []
    for offset, indices in groups.items():
        pairs += [(index, offset) for index in indices]
        overlap = _overlap(offset, box)
        if overlap is None:  # moved out of the frame: nothing to compare
            parts.append(torch.zeros(len(indices), 3, dtype=torch.float64, device=reference.device))
            largest.append(torch.zeros(len(indices), dtype=torch.float64, device=reference.device))
            compared += [0] * len(indices)
            continue
        ys, xs, source_ys, source_xs = overlap
        moved = reference[..., source_ys, source_xs]
        outputs = [shifted[start:stop, ..., ys, xs] for start, stop in _runs(indices)]
        if weights is not None:
            mask = weights[ys, xs] * weights[source_ys, source_xs]
            outputs, moved = [output * mask for output in outputs], moved * mask
            compared += [int(mask.sum()) * planes] * len(indices)
        else:
            compared += [planes * (ys.stop - ys.start) * (xs.stop - xs.start)] * len(indices)
        differences = _Differences(moved.shape, len(indices), moved, scratch)
        for output in outputs:
            differences.subtract(output, moved)
        squared_difference, peak = differences.result()
        squared_output = (
            torch.cat([_plane_squares(output, 1) for output in outputs])
            if len(outputs) > 1
            else _plane_squares(outputs[0], 1)
        )
        squared_reference = _plane_squares(moved, 0).expand(len(indices))
        parts.append(torch.stack([squared_difference, squared_reference, squared_output], dim=1))
        largest.append(peak)
    return PairSums(pairs, torch.cat(parts), torch.cat(largest), compared, [size] * len(pairs))


# --------------------------------------------------------------------------- fused kernels (CPU, numba)

#: Set SHIFTLAB_FUSED=0 to compare with torch operations only (the fused kernels are used where they apply otherwise).
_FUSED_SETTING = "SHIFTLAB_FUSED"
#: Fewest values a thread gets: below this, starting a thread costs more than it saves.
_VALUES_PER_THREAD = 1 << 18

_fused_module: Any = None


def _fused_kernels(maps: torch.Tensor) -> Any:
    """The :mod:`shiftlab._fused` module when it applies to ``maps`` (contiguous float32 on the CPU, numba installed), else None."""
    global _fused_module
    if maps.device.type != "cpu" or maps.dtype != torch.float32 or not maps.is_contiguous() or maps.numel() == 0:
        return None
    if os.environ.get(_FUSED_SETTING, "1") == "0":
        return None
    if _fused_module is None:
        try:
            from shiftlab import _fused
        except Exception as error:  # numba missing, or unable to compile or cache here: torch operations do the work
            warnings.warn(
                f"shiftlab: comparing with torch operations, the fused CPU kernels are unavailable ({type(error).__name__}: {first_line(error)})",
                RuntimeWarning,
                stacklevel=2,
            )
            _fused_module = False
        else:
            _fused_module = _fused
    return _fused_module or None


def _threads(values: int) -> int:
    """How many of torch's threads share a comparison touching ``values`` values: one unless there is enough work for more."""
    return max(1, min(torch.get_num_threads(), values // _VALUES_PER_THREAD))


def _pairs_by_map(groups: dict[Offset, list[int]]) -> list[Pair]:
    """The (shift index, alignment) pairs sorted by shift, the order in which the fused kernels walk them."""
    per_shift: dict[int, list[Offset]] = {}
    for offset, indices in groups.items():
        for index in indices:
            per_shift.setdefault(index, []).append(offset)
    return [(index, offset) for index in sorted(per_shift) for offset in per_shift[index]]


def _first_pairs(pairs: list[Pair], count: int) -> np.ndarray:
    """``first[m]``: where the pairs of map ``m`` (shift ``m - 1``; map 0 is the reference) start in ``pairs``; ``first[count]`` ends them."""
    first = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount([index + 1 for index, _ in pairs], minlength=count), out=first[1:])
    return first


@functools.lru_cache(maxsize=256)
def _circular_plan(
    shifts: tuple[tuple[float, float], ...], stride: tuple[int, int], shape: tuple[int, ...]
) -> tuple[list[Pair], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`shiftlab._fused.circular_kernel` needs besides the maps, for one layer's shifts, stride and
    ``(maps, height, width)`` (the same for every batch, so made once): the pairs, the moves, where each map's pairs
    start, each pair's move, and each pair's map."""
    count, height, width = shape
    groups = _groups(shifts, stride)
    pairs = _pairs_by_map(groups)
    offsets = list(groups)
    moves = np.array([(oy % height, ox % width) for oy, ox in offsets], dtype=np.int64).reshape(len(offsets), 2)
    targets = np.array([offsets.index(offset) for _, offset in pairs], dtype=np.int64)
    maps_of_pairs = np.array([index + 1 for index, _ in pairs], dtype=np.int64)
    return pairs, moves, _first_pairs(pairs, count), targets, maps_of_pairs


def _fused_circular_sums(
    fused: Any, maps: torch.Tensor, shifts: Sequence[tuple[float, float]], stride: tuple[int, int]
) -> PairSums:
    count = maps.shape[0]
    height, width = maps.shape[-2:]
    size = maps[0].numel()
    planes = size // (height * width)
    pairs, moves, first, targets, maps_of_pairs = _circular_plan(tuple(shifts), stride, (count, height, width))
    block_planes = max(1, min(planes, fused.BLOCK // (height * width)))
    threads = _threads((count + len(pairs)) * size)
    map_squares, differences, peaks = fused.circular_sums(
        maps.view(count, planes, height, width).numpy(), moves, first, targets, block_planes, threads
    )
    squares = np.empty((len(pairs), 3))
    squares[:, 0] = differences
    squares[:, 1] = map_squares[0]  # every moved copy holds the reference's values
    squares[:, 2] = map_squares[maps_of_pairs]
    largest = peaks.view(np.float32).astype(np.float64)
    return PairSums(
        pairs, torch.from_numpy(squares), torch.from_numpy(largest), [size] * len(pairs), [size] * len(pairs)
    )


def _fused_boxes(
    fused: Any, maps: torch.Tensor, source: torch.Tensor, pairs: list[Pair], boxes: list[tuple[int, ...]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of :func:`shiftlab._fused.box_kernel` for the ``pairs`` (sorted by shift) and their ``boxes``, summed over the planes:
    ``(len(pairs), 3)`` squares and ``(len(pairs),)`` largest values."""
    count, planes = maps.shape[:2]
    table = np.array(boxes, dtype=np.int64).reshape(len(boxes), 6)
    values = sum((box[1] - box[0]) * (box[3] - box[2]) for box in boxes) * planes
    squares, peaks = fused.box_sums(maps.numpy(), source.numpy(), _first_pairs(pairs, count), table, _threads(values))
    return torch.from_numpy(squares), torch.from_numpy(peaks.view(np.float32).astype(np.float64))


def _fused_overlap_sums(
    fused: Any, maps: torch.Tensor, groups: dict[Offset, list[int]], box: tuple[int, int, int, int]
) -> PairSums:
    count = maps.shape[0]
    height, width = maps.shape[-2:]
    size = maps[0].numel()
    planes = size // (height * width)
    pairs = _pairs_by_map(groups)
    boxes: list[tuple[int, ...]] = []
    compared: list[int] = []
    for _, offset in pairs:
        overlap = _overlap(offset, box)
        if overlap is None:  # moved out of the frame: an empty box compares nothing
            boxes.append((0, 0, 0, 0, 0, 0))
            compared.append(0)
        else:
            ys, xs, _, _ = overlap
            boxes.append((ys.start, ys.stop, xs.start, xs.stop, -offset[0], -offset[1]))
            compared.append(planes * (ys.stop - ys.start) * (xs.stop - xs.start))
    maps = maps.view(count, planes, height, width)
    squares, largest = _fused_boxes(fused, maps, maps[0], pairs, boxes)
    return PairSums(pairs, squares, largest, compared, [size] * len(pairs))


def compare_shifts(
    reference: torch.Tensor,
    shifted: torch.Tensor,
    shifts: Sequence[tuple[float, float]],
    *,
    stride: tuple[int, int],
    circular: bool,
    core: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> list[dict[Offset, ErrorSums]]:
    """:func:`pair_sums` of ``reference`` (``(*B, h, w)``) and ``shifted`` (``(n, *B, h, w)``), read back: one dict ``{(oy, ox): ErrorSums}`` per shift."""
    maps = torch.cat([reference[None], shifted.to(reference.dtype)])
    return pair_sums(maps, shifts, stride=stride, circular=circular, core=core, scratch=scratch).per_shift(len(shifts))


def whole_sums(reference: torch.Tensor, shifted: torch.Tensor) -> PairSums:
    """Sums comparing each ``shifted[i]`` with ``reference`` as a whole (invariance), for any shape, as tensors.

    Used for logits, pooled vectors and other small outputs: float64 throughout.
    """
    count = shifted.shape[0]
    reference = reference.reshape(1, -1).double()
    shifted = shifted.reshape(count, -1).double()
    difference = shifted - reference
    size = reference.numel()
    squares = torch.stack(
        [difference.square().sum(dim=1), reference.square().sum().expand(count), shifted.square().sum(dim=1)], dim=1
    )
    largest = difference.abs().amax(dim=1) if size else torch.zeros(count, dtype=torch.float64, device=shifted.device)
    return PairSums([(index, (0, 0)) for index in range(count)], squares, largest, [size] * count, [size] * count)


def compare_whole(reference: torch.Tensor, shifted: torch.Tensor) -> list[ErrorSums]:
    """:func:`whole_sums`, read back: one :class:`~shiftlab.metrics.ErrorSums` per shifted map."""
    return [found[(0, 0)] for found in whole_sums(reference, shifted).per_shift(shifted.shape[0])]
