"""Fused CPU kernels for the probe's comparisons (numba): one pass over the maps instead of four.

Comparing a shifted map ``a`` with the moved reference ``b`` needs, per
alignment, ``sum (a - b)^2``, ``max |a - b|`` and the squared norms. With torch
operations that is a subtraction written to memory and three reductions that
read it back, for every (shift, alignment) pair. These kernels read each map
once and keep everything else in registers, or in moved copies of the
reference that stay in the cache. They are compiled on first use
(``cache=True`` keeps the machine code between runs).

Threads: :func:`circular_sums` and :func:`box_sums` run the kernels on torch's
own OpenMP team, through the runtime's ``GOMP_parallel`` entry point, each
thread claiming chunks of work from an atomic counter. A second thread pool
would fight torch's OpenMP workers, which spin for a while after every
parallel region of the forward pass; on torch's team those workers do the
work instead, and are awake for the next layer. Where that runtime cannot be
found (another platform, another OpenMP), the kernels run on the calling
thread.

The largest absolute difference is found on the bit patterns: for IEEE floats
with the sign bit cleared, integer order is magnitude order (NaN above
infinity, as ``torch.amax`` has it), and an integer maximum is vectorised by
LLVM where a floating-point one is not. :func:`_bits` reinterprets a float32
in a register (an LLVM bitcast), so the difference, its square and its
magnitude come out of one loop. The floating-point flags allow reassociation
(vectorised sums) but not the assumption that values are finite: NaN and
infinity come out as torch would give them.

Accuracy: sums of squares are accumulated in float32 over at most
:data:`RUN` values (one row, or one run of a block) and in float64 beyond,
which keeps their relative error near 1e-7 on maps of millions of values.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

#: About how many values a block of :func:`circular_kernel` holds (whole planes): its moved copies stay in the L2 cache.
BLOCK = 8192
#: Most values summed in float32 before the sum moves to float64.
RUN = 4096
_MAGNITUDE = np.uint32(0x7FFFFFFF)
#: Reassociation (vectorised sums) and contraction (fused multiply-add), without assuming finite values.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@intrinsic
def _bits(typingctx, value):  # pragma: no cover - compiled
    """The IEEE bit pattern of a float32, as a uint32 (no memory round trip)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _address(typingctx, value):  # pragma: no cover - compiled
    """An int64 address as a pointer (the arguments of a team task travel as a table of int64)."""
    if value != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))

    return types.voidptr(types.int64), codegen


@intrinsic
def _claim(typingctx, table, index):  # pragma: no cover - compiled
    """Atomically add 1 to the int64 at ``table[index]`` and return its previous value: how team threads share work."""
    if table != types.voidptr:
        return None

    def codegen(context, builder, signature, args):
        entries = builder.bitcast(args[0], ir.PointerType(ir.IntType(64)))
        pointer = builder.gep(entries, [args[1]])
        return builder.atomic_rmw("add", pointer, context.get_constant(types.int64, 1), "monotonic")

    return types.int64(types.voidptr, types.intp), codegen


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def box_kernel(maps, source, first, boxes, squares, peaks, start, stop):  # pragma: no cover - compiled
    """Compare boxes of ``maps`` with boxes of ``source``, plane by plane.

    ``maps`` is ``(M, P, H, W)`` and ``source`` ``(P, Hs, Ws)``, both float32
    and C-contiguous. The pairs of map ``m`` are ``first[m]`` to
    ``first[m + 1]``; row ``q`` of ``boxes`` is ``(y0, y1, x0, x1, dy, dx)``:
    pair ``q`` compares ``maps[m, p, y, x]`` with ``source[p, y + dy, x + dx]``
    for ``y0 <= y < y1`` and ``x0 <= x < x1``. Task ``t`` is map ``t % M`` in
    plane ``t // M`` (a plane of the source, then, serves every map from the
    cache, and a plane of a map every one of its pairs); tasks ``start`` to
    ``stop`` are done here, writing ``squares[q, p] = (sum (a - b)^2, sum b^2,
    sum a^2)`` and ``peaks[q, p]``, the bit pattern of ``max |a - b|``.
    """
    count = maps.shape[0]
    for task in range(start, stop):
        p = task // count
        m = task - p * count
        for q in range(first[m], first[m + 1]):
            y0, y1, x0, x1, dy, dx = boxes[q, 0], boxes[q, 1], boxes[q, 2], boxes[q, 3], boxes[q, 4], boxes[q, 5]
            width = x1 - x0
            difference = 0.0
            reference = 0.0
            output = 0.0
            peak = np.uint32(0)
            for y in range(y0, y1):
                a = maps[m, p, y, x0:x1]
                b = source[p, y + dy, x0 + dx : x1 + dx]
                row_difference = np.float32(0.0)
                row_reference = np.float32(0.0)
                row_output = np.float32(0.0)
                for x in range(width):
                    d = a[x] - b[x]
                    row_difference += d * d
                    row_reference += b[x] * b[x]
                    row_output += a[x] * a[x]
                    peak = max(peak, _bits(d) & _MAGNITUDE)
                difference += row_difference
                reference += row_reference
                output += row_output
            squares[q, p, 0] = difference
            squares[q, p, 1] = reference
            squares[q, p, 2] = output
            peaks[q, p] = peak


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def circular_kernel(
    maps, flat, offsets, first, targets, block_planes, outputs, squares, peaks, start, stop
):  # pragma: no cover - compiled
    """Compare maps with circularly moved copies of the reference ``maps[0]``, a block of planes at a time.

    ``maps`` is ``(M, P, H, W)`` float32, C-contiguous, and ``flat`` the same
    memory as ``(M, P * H * W)``. ``offsets[o] = (oy, ox)``, in ``[0, H)`` and
    ``[0, W)``, are the moves. The pairs of map ``m`` are ``first[m]`` to
    ``first[m + 1]``; pair ``q`` compares ``maps[m]`` with the reference rolled
    by ``offsets[targets[q]]``. Block ``k`` holds planes ``k * block_planes``
    onwards: its moved copies are built once, in a buffer that stays in the
    cache (the move ``(0, 0)`` needs none), and every map is then compared
    with them as one flat run of values, read once from memory.
    Blocks ``start`` to ``stop`` are done here, adding ``sum a^2`` to
    ``outputs[m]`` and ``sum (a - b)^2`` to ``squares[q]``, and raising
    ``peaks[q]``, the bit pattern of ``max |a - b|``.
    """
    count, planes, height, width = maps.shape
    plane = height * width
    moved = np.empty((offsets.shape[0], block_planes * plane), np.float32)
    for block in range(start, stop):
        p0 = block * block_planes
        p1 = min(planes, p0 + block_planes)
        size = (p1 - p0) * plane
        begin = p0 * plane
        reference = flat[0, begin : begin + size]
        for o in range(offsets.shape[0]):
            oy, ox = offsets[o, 0], offsets[o, 1]
            if oy == 0 and ox == 0:
                continue
            for row in range((p1 - p0) * height):
                y = row % height
                source = (row - y + (y - oy if y >= oy else y - oy + height)) * width
                # Row views: short loops on 1-D views vectorise, index arithmetic on the block does not.
                head = moved[o, row * width : row * width + ox]
                tail = moved[o, row * width + ox : (row + 1) * width]
                source_head = reference[source : source + width - ox]
                source_tail = reference[source + width - ox : source + width]
                for x in range(width - ox):
                    tail[x] = source_head[x]
                for x in range(ox):
                    head[x] = source_tail[x]
        for m in range(count):
            if first[m] == first[m + 1]:
                outputs[m] += _squares(flat[m, begin : begin + size])
            for q in range(first[m], first[m + 1]):
                o = targets[q]
                b = reference if offsets[o, 0] == 0 and offsets[o, 1] == 0 else moved[o, :size]
                for run in range(0, size, RUN):
                    a = flat[m, begin + run : begin + min(size, run + RUN)]
                    c = b[run : run + a.size]
                    total = np.float32(0.0)
                    peak = np.uint32(0)
                    if q == first[m]:  # the first pair also sums a^2: the map is read from memory once
                        own = np.float32(0.0)
                        for x in range(a.size):
                            d = a[x] - c[x]
                            total += d * d
                            own += a[x] * a[x]
                            peak = max(peak, _bits(d) & _MAGNITUDE)
                        outputs[m] += own
                    else:
                        for x in range(a.size):
                            d = a[x] - c[x]
                            total += d * d
                            peak = max(peak, _bits(d) & _MAGNITUDE)
                    squares[q] += total
                    peaks[q] = max(peaks[q], peak)


@numba.njit(nogil=True, fastmath=_FAST, cache=True)
def _squares(values):  # pragma: no cover - compiled
    """``sum values^2``, in float32 runs of :data:`RUN` values added in float64."""
    total = 0.0
    for run in range(0, values.size, RUN):
        part = np.float32(0.0)
        for x in range(run, min(values.size, run + RUN)):
            part += values[x] * values[x]
        total += part
    return total


# --------------------------------------------------------------------------- on torch's OpenMP team

# A team task gets one pointer: a table of int64 holding two counters (the next chunk of tasks to claim,
# the next output slot), the chunk count and size, then the kernel's sizes and its arrays' addresses.
# Each thread claims a slot (its own row of the outputs, where a kernel accumulates) and then chunks
# until none is left, so all the work is done whatever number of threads the runtime starts.
_CHUNK, _SLOT, _CHUNKS, _PER_CHUNK = 0, 1, 2, 3
# Entries each task reads: a table of another length would send it reading beyond its end.
_CIRCULAR_TABLE, _BOX_TABLE = 20, 18


@numba.cfunc(types.void(types.voidptr), cache=True)
def _circular_task(data):  # pragma: no cover - compiled
    table = carray(data, _CIRCULAR_TABLE, np.int64)
    count, planes, height, width = table[4], table[5], table[6], table[7]
    moves, pairs, block_planes, blocks, slots = table[8], table[9], table[10], table[11], table[12]
    maps = carray(_address(table[13]), (count, planes, height, width), np.float32)
    flat = carray(_address(table[13]), (count, planes * height * width), np.float32)
    offsets = carray(_address(table[14]), (moves, 2), np.int64)
    first = carray(_address(table[15]), count + 1, np.int64)
    targets = carray(_address(table[16]), pairs, np.int64)
    outputs = carray(_address(table[17]), (slots, count), np.float64)
    squares = carray(_address(table[18]), (slots, pairs), np.float64)
    peaks = carray(_address(table[19]), (slots, pairs), np.uint32)
    slot = _claim(data, _SLOT)
    while True:
        chunk = _claim(data, _CHUNK)
        if chunk >= table[_CHUNKS]:
            break
        start = chunk * table[_PER_CHUNK]
        stop = min(blocks, start + table[_PER_CHUNK])
        circular_kernel(
            maps, flat, offsets, first, targets, block_planes, outputs[slot], squares[slot], peaks[slot], start, stop
        )


@numba.cfunc(types.void(types.voidptr), cache=True)
def _box_task(data):  # pragma: no cover - compiled
    table = carray(data, _BOX_TABLE, np.int64)
    count, planes, height, width = table[4], table[5], table[6], table[7]
    source_height, source_width, pairs, tasks = table[8], table[9], table[10], table[11]
    maps = carray(_address(table[12]), (count, planes, height, width), np.float32)
    source = carray(_address(table[13]), (planes, source_height, source_width), np.float32)
    first = carray(_address(table[14]), count + 1, np.int64)
    boxes = carray(_address(table[15]), (pairs, 6), np.int64)
    squares = carray(_address(table[16]), (pairs, planes, 3), np.float64)
    peaks = carray(_address(table[17]), (pairs, planes), np.uint32)
    while True:
        chunk = _claim(data, _CHUNK)
        if chunk >= table[_CHUNKS]:
            break
        start = chunk * table[_PER_CHUNK]
        box_kernel(maps, source, first, boxes, squares, peaks, start, min(tasks, start + table[_PER_CHUNK]))


def _team_entry() -> Any:
    """``GOMP_parallel`` of the OpenMP runtime that torch's CPU kernels use, or None where it cannot be found."""
    import torch

    try:
        # dlsym on torch's own library finds the symbol the way torch's kernels do: in torch's runtime.
        entry = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")).GOMP_parallel
    except (OSError, AttributeError):
        return None
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    entry.restype = None
    return entry


_TEAM = _team_entry()


def _on_team(task: Any, length: int, threads: int, tasks: int, entries: list[Any]) -> None:
    """Run a team task on ``threads`` threads over ``tasks`` tasks; ``entries`` fill its table of ``length`` from index 4 (arrays as addresses)."""
    per_chunk = max(1, tasks // (4 * threads))  # a few chunks per thread, so that a thread that starts late still helps
    table = np.array(
        [0, 0, -(-tasks // per_chunk), per_chunk]
        + [entry.ctypes.data if isinstance(entry, np.ndarray) else entry for entry in entries],
        dtype=np.int64,
    )
    if len(table) != length or not all(entry.flags.c_contiguous for entry in entries if isinstance(entry, np.ndarray)):
        raise ValueError(f"team task table: expected {length} entries and C-contiguous arrays, got {len(table)}")
    _TEAM(task.address, table.ctypes.data, threads, 0)


def circular_sums(
    maps: np.ndarray, offsets: np.ndarray, first: np.ndarray, targets: np.ndarray, block_planes: int, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`circular_kernel` over all blocks: ``sum a^2`` per map, ``sum (a - b)^2`` and the bits of ``max |a - b|`` per pair."""
    count, planes, height, width = maps.shape
    blocks = -(-planes // block_planes)
    threads = min(threads, blocks) if _TEAM is not None else 1
    outputs = np.zeros((threads, count))
    squares = np.zeros((threads, len(targets)))
    peaks = np.zeros((threads, len(targets)), dtype=np.uint32)
    if threads == 1:
        circular_kernel(
            maps,
            maps.reshape(count, -1),
            offsets,
            first,
            targets,
            block_planes,
            outputs[0],
            squares[0],
            peaks[0],
            0,
            blocks,
        )
    else:
        sizes = [count, planes, height, width, len(offsets), len(targets), block_planes, blocks, threads]
        _on_team(
            _circular_task,
            _CIRCULAR_TABLE,
            threads,
            blocks,
            sizes + [maps, offsets, first, targets, outputs, squares, peaks],
        )
    return outputs.sum(axis=0), squares.sum(axis=0), peaks.max(axis=0)


def box_sums(
    maps: np.ndarray, source: np.ndarray, first: np.ndarray, boxes: np.ndarray, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`box_kernel` over all tasks: per pair, the three sums of squares and the bits of ``max |a - b|``, over all planes."""
    count, planes, height, width = maps.shape
    pairs = len(boxes)
    squares = np.zeros((pairs, planes, 3))
    peaks = np.zeros((pairs, planes), dtype=np.uint32)
    threads = min(threads, count * planes) if _TEAM is not None else 1
    if threads == 1:
        box_kernel(maps, source, first, boxes, squares, peaks, 0, count * planes)
    else:
        sizes = [count, planes, height, width, source.shape[1], source.shape[2], pairs, count * planes]
        _on_team(_box_task, _BOX_TABLE, threads, count * planes, sizes + [maps, source, first, boxes, squares, peaks])
    return squares.sum(axis=1), peaks.max(axis=1, initial=0)
