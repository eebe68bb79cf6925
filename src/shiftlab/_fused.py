"""Fused CPU kernels for the probe's comparisons (numba): one pass over the maps instead of four.

Comparing a shifted map ``a`` with the moved reference ``b`` needs, per
alignment, ``sum (a - b)^2``, ``max |a - b|`` and the squared norms. With torch
operations that is a subtraction written to memory and three reductions that
read it back, for every (shift, alignment) pair. These kernels read ``a`` and
``b`` once and keep everything else in registers or in a row-sized buffer that
stays in the L1 cache. They are compiled on first use (``cache=True`` keeps
the machine code between runs) and release the GIL, so that a few Python
threads share the work.

The largest absolute difference is found on the bit patterns: for IEEE floats
with the sign bit cleared, integer order is magnitude order, and an integer
maximum is vectorised by LLVM where a floating-point one (with its NaN rules)
is not. NaN never reaches these kernels (the probe never compares NaN maps:
the border pass only reads which outputs stay finite).

Accuracy: sums of squares are accumulated in float32 along one row (or one
block of :data:`BLOCK` values) and in float64 across rows and blocks, which
keeps their relative error near 1e-7 on maps of millions of values.
"""

from __future__ import annotations

import numba
import numpy as np

#: About how many values a block of :func:`circular_kernel` holds (whole planes): its moved copies stay in the L2 cache.
BLOCK = 8192
_MAGNITUDE = np.uint32(0x7FFFFFFF)


@numba.njit(nogil=True, fastmath=True, cache=True)
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
    buffer = np.empty(maps.shape[3], np.float32)
    bits = buffer.view(np.uint32)
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
                    buffer[x] = d
                    row_difference += d * d
                    row_reference += b[x] * b[x]
                    row_output += a[x] * a[x]
                difference += row_difference
                reference += row_reference
                output += row_output
                for x in range(width):
                    peak = max(peak, bits[x] & _MAGNITUDE)
            squares[q, p, 0] = difference
            squares[q, p, 1] = reference
            squares[q, p, 2] = output
            peaks[q, p] = peak


@numba.njit(nogil=True, fastmath=True, cache=True)
def circular_kernel(maps, flat, offsets, first, targets, block_planes, outputs, squares, peaks, start, stop):  # pragma: no cover - compiled
    """Compare maps with circularly moved copies of the reference ``maps[0]``, a block of planes at a time.

    ``maps`` is ``(M, P, H, W)`` float32, C-contiguous, and ``flat`` the same
    memory as ``(M, P * H * W)``. ``offsets[o] = (oy, ox)``, in ``[0, H)`` and
    ``[0, W)``, are the moves. The pairs of map ``m`` are ``first[m]`` to
    ``first[m + 1]``; pair ``q`` compares ``maps[m]`` with the reference rolled
    by ``offsets[targets[q]]``. Block ``k`` holds planes ``k * block_planes``
    onwards: its moved copies are built once, in a buffer that stays in the
    cache, and every map is then compared with them as one flat run of values.
    Blocks ``start`` to ``stop`` are done here, adding ``sum a^2`` to
    ``outputs[m]`` and ``sum (a - b)^2`` to ``squares[q]``, and raising
    ``peaks[q]``, the bit pattern of ``max |a - b|``.
    """
    count, planes, height, width = maps.shape
    plane = height * width
    moved = np.empty((offsets.shape[0], block_planes * plane), np.float32)
    buffer = np.empty(block_planes * plane, np.float32)
    bits = buffer.view(np.uint32)
    for block in range(start, stop):
        p0 = block * block_planes
        p1 = min(planes, p0 + block_planes)
        size = (p1 - p0) * plane
        for o in range(offsets.shape[0]):
            oy, ox = offsets[o, 0], offsets[o, 1]
            for p in range(p0, p1):
                for y in range(height):
                    source_y = y - oy if y >= oy else y - oy + height
                    source = maps[0, p, source_y]
                    begin = (p - p0) * plane + y * width
                    head = moved[o, begin : begin + ox]
                    tail = moved[o, begin + ox : begin + width]
                    for x in range(width - ox):
                        tail[x] = source[x]
                    for x in range(ox):
                        head[x] = source[width - ox + x]
        begin = p0 * plane
        for m in range(count):
            a = flat[m, begin : begin + size]
            total = np.float32(0.0)
            for x in range(size):
                total += a[x] * a[x]
            outputs[m] += total
            for q in range(first[m], first[m + 1]):
                b = moved[targets[q], :size]
                total = np.float32(0.0)
                for x in range(size):
                    d = a[x] - b[x]
                    buffer[x] = d
                    total += d * d
                peak = peaks[q]
                for x in range(size):
                    peak = max(peak, bits[x] & _MAGNITUDE)
                squares[q] += total
                peaks[q] = peak
