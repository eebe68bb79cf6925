"""The hot path of :func:`shiftlab.probe`: compare shifted maps with the moved reference, as sums.

For every shift ``t`` and every whole-pixel alignment ``o`` worth trying (the
floor and ceiling of ``t / stride`` on each axis), :func:`pair_sums` returns
the squared difference, the squared norms of the moved reference and of the
shifted map, the largest absolute difference and the number of pixels
compared. :class:`shiftlab.probing.equivariance.ShiftComparison` adds them up.

This runs inside every forward hook, so it does little work and only with
torch's own operations, on the CPU and on GPUs alike:

* the sums stay on the maps' device as tensors; nothing is read back to
  Python until the probe ends, so a hook never waits for the device;
* the reference is never rolled or copied per shift: a circular move is a
  view into a reference padded once with its own wrapped border, a zero-fill
  move is a view of the overlap;
* the differences of many (shift, alignment) pairs are written side by side
  into one reused scratch buffer, small enough to stay in the CPU's cache, and
  each block is read twice more: once for its squared norms, once for its
  extremes (three passes over the difference and one over each map, whatever
  the number of alignments).

Precision. Squared norms are reduced per ``(H, W)`` plane in the maps' own
precision (float32; half precision is computed in float32) and summed in
float64: relative errors stay near 1e-7 where a single float32 reduction over
millions of values drifts to 1e-4. Every alignment candidate is scored exactly,
from its own difference. Scoring candidates by dot products instead
(``|a - b|^2 = |a|^2 + |b|^2 - 2 <a, b>``) would read each map once less, but in
float32 it cancels catastrophically for nearly equal maps: an exactly
equivariant layer would report errors near 3e-4 instead of 0; and a float32
matrix product was measured slower than the subtraction it would replace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["PairSums", "Scratch", "alignment_candidates", "comparison_pairs", "pair_sums", "whole_sums"]

Offset = tuple[int, int]
Pair = tuple[int, Offset]  # (shift index, alignment)

#: Largest scratch block, in values (2**20 float32 = 4 MiB): differences are reduced while still in the cache.
SCRATCH_ELEMENTS = 1 << 20


class PairSums(NamedTuple):
    """The sums of one comparison, one entry per (shift index, alignment) pair, as tensors on the maps' device.

    ``squares[p]``: squared difference, squared (moved) reference and squared output over
    the compared pixels, float64; ``largest[p]``: largest absolute difference, float64;
    ``compared[p]``: pixels compared (int64); ``total``: pixels per map.
    """

    squares: torch.Tensor
    largest: torch.Tensor
    compared: torch.Tensor
    total: int


class Scratch:
    """A buffer reused for the differences of every comparison of a run."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        count = math.prod(shape)
        buffer = self._buffer
        if buffer is None or buffer.numel() < count or buffer.dtype != like.dtype or buffer.device != like.device:
            keep = buffer.numel() if buffer is not None and buffer.dtype == like.dtype else 0
            buffer = torch.empty(max(count, keep), dtype=like.dtype, device=like.device)
            self._buffer = buffer
        return buffer[:count].view(*shape)


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


def comparison_pairs(shifts: Sequence[tuple[float, float]], stride: tuple[int, int]) -> list[Pair]:
    """Every (shift index, alignment) pair, grouped by alignment (in order of first use), shifts in order within.

    Example:
        >>> comparison_pairs([(0, 1), (0, 2)], (2, 2))
        [(0, (0, 0)), (0, (0, 1)), (1, (0, 1))]
    """
    groups: dict[Offset, list[int]] = {}
    for index, (dy, dx) in enumerate(shifts):
        for offset in alignment_candidates(dy, dx, stride):
            groups.setdefault(offset, []).append(index)
    return [(index, offset) for offset, indices in groups.items() for index in indices]


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _plane_squares(tensor: torch.Tensor, leading: int) -> torch.Tensor:
    """Sum of squares over all but the first ``leading`` axes.

    Per-plane norms in the maps' precision, summed in float64.
    """
    if tensor.numel() == 0:
        return torch.zeros(tensor.shape[:leading], dtype=torch.float64, device=tensor.device)
    norms = torch.linalg.vector_norm(tensor, dim=(-2, -1)).double().square()
    # (torch.sum with dtype=float64 on the float32 norms was measured 2x slower than this conversion first)
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


def _by_alignment(pairs: Sequence[Pair]) -> dict[Offset, list[int]]:
    groups: dict[Offset, list[int]] = {}
    for index, offset in pairs:
        groups.setdefault(offset, []).append(index)
    return groups


def _core_box(core: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` when the True pixels of ``core`` form a rectangle, else None."""
    rows = torch.nonzero(core.any(dim=1)).flatten()
    cols = torch.nonzero(core.any(dim=0)).flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if int(core[top:bottom, left:right].sum()) == (bottom - top) * (right - left):
        return top, bottom, left, right
    return None


class _Differences:
    """Writes differences of equally shaped maps side by side into the scratch buffer; reduces a block at a time."""

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


def pair_sums(
    maps: torch.Tensor,
    pairs: Sequence[Pair],
    *,
    circular: bool,
    core: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> PairSums:
    """Sums comparing ``maps[1 + i]`` with ``maps[0]`` moved by ``o``, for every pair ``(i, o)``.

    Args:
        maps: ``f(x)`` then ``f(T_t x)`` for each shift, shape ``(1 + n, *B, h, w)``.
        pairs: ``(i, (oy, ox))``: shift index (into ``maps[1:]``) and whole-pixel move of the reference,
            grouped by move (as :func:`comparison_pairs` gives them).
        circular: move the reference around the torus (else: zero fill, overlap only).
        core: optional ``(h, w)`` bool mask of the pixels far enough from the border
            (zero fill only): a pixel counts when it and its source are in the core.
        scratch: a reused buffer.

    Returns:
        :class:`PairSums`, in the order of ``pairs``.
    """
    maps = _as_float(maps.detach())
    scratch = scratch or Scratch()
    reference, shifted = maps[0], maps[1:]
    groups = _by_alignment(pairs)
    if circular:
        return _circular_sums(maps, groups, scratch)
    height, width = maps.shape[-2:]
    box = (0, height, 0, width)
    if core is not None:
        found = _core_box(core)
        if found is None:  # a core of another shape: weigh every pixel
            return _overlap_sums(reference, shifted, groups, box, core, scratch)
        box = found
    return _overlap_sums(reference, shifted, groups, box, None, scratch)


def _circular_sums(maps: torch.Tensor, groups: dict[Offset, list[int]], scratch: Scratch) -> PairSums:
    reference, shifted = maps[0], maps[1:]
    height, width = reference.shape[-2:]
    moves = {offset: (_reduce(offset[0], height), _reduce(offset[1], width)) for offset in groups}
    top = max(0, *(oy for oy, _ in moves.values()))
    bottom = max(0, *(-oy for oy, _ in moves.values()))
    left = max(0, *(ox for _, ox in moves.values()))
    right = max(0, *(-ox for _, ox in moves.values()))
    # a split into wrapped rectangles instead was measured slower: shorter, strided inner loops cost more than the copy
    padded = _wrap_pad(_wrap_pad(reference, top, bottom, -2), left, right, -1)
    indices = [index for members in groups.values() for index in members]
    differences = _Differences(reference.shape, len(indices), reference, scratch)
    for offset, members in groups.items():
        oy, ox = moves[offset]
        moved = padded[..., top - oy : top - oy + height, left - ox : left - ox + width]
        for start, stop in _runs(members):
            differences.subtract(shifted[start:stop], moved)
    squared_difference, largest = differences.result()
    norms = _plane_squares(maps, 1)  # the reference's and every shifted map's, in one call
    squared_output = norms[1:] if indices == list(range(len(shifted))) else norms[1:][indices]
    size = reference.numel()
    squares = torch.stack([squared_difference, norms[0].expand(len(indices)), squared_output], dim=1)
    compared = torch.full((len(indices),), size, dtype=torch.int64, device=shifted.device)
    return PairSums(squares, largest, compared, size)


def _overlap(offset: Offset, box: tuple[int, int, int, int]) -> tuple[slice, slice, slice, slice] | None:
    """For a zero-fill move inside ``box``: the compared rows and columns of the shifted map, then of the reference;
    None when nothing overlaps."""
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
    device = reference.device
    parts: list[torch.Tensor] = []
    largest: list[torch.Tensor] = []
    compared: list[int] = []
    for offset, members in groups.items():
        overlap = _overlap(offset, box)
        if overlap is None:  # moved out of the frame: nothing to compare
            parts.append(torch.zeros(len(members), 3, dtype=torch.float64, device=device))
            largest.append(torch.zeros(len(members), dtype=torch.float64, device=device))
            compared += [0] * len(members)
            continue
        ys, xs, source_ys, source_xs = overlap
        moved = reference[..., source_ys, source_xs]
        outputs = [shifted[start:stop, ..., ys, xs] for start, stop in _runs(members)]
        if weights is not None:
            mask = weights[ys, xs] * weights[source_ys, source_xs]
            outputs, moved = [output * mask for output in outputs], moved * mask
            compared += [int(mask.sum()) * planes] * len(members)
        else:
            compared += [planes * (ys.stop - ys.start) * (xs.stop - xs.start)] * len(members)
        differences = _Differences(moved.shape, len(members), moved, scratch)
        for output in outputs:
            differences.subtract(output, moved)
        squared_difference, peak = differences.result()
        squared_output = torch.cat([_plane_squares(output, 1) for output in outputs])
        squared_reference = _plane_squares(moved, 0).expand(len(members))
        parts.append(torch.stack([squared_difference, squared_reference, squared_output], dim=1))
        largest.append(peak)
    counts = torch.tensor(compared, dtype=torch.int64, device=device)
    return PairSums(torch.cat(parts), torch.cat(largest), counts, size)


def whole_sums(reference: torch.Tensor, shifted: torch.Tensor) -> PairSums:
    """Sums comparing each ``shifted[i]`` with ``reference`` as a whole (invariance), for any shape.

    Used for logits, pooled vectors and other small outputs: float64 throughout.
    """
    count = shifted.shape[0]
    reference = reference.detach().reshape(1, -1).double()
    shifted = shifted.detach().reshape(count, -1).double()
    difference = shifted - reference
    size = reference.numel()
    squares = torch.stack(
        [difference.square().sum(dim=1), reference.square().sum().expand(count), shifted.square().sum(dim=1)], dim=1
    )
    largest = difference.abs().amax(dim=1) if size else torch.zeros(count, dtype=torch.float64, device=shifted.device)
    compared = torch.full((count,), size, dtype=torch.int64, device=shifted.device)
    return PairSums(squares, largest, compared, size)
