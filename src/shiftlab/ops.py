"""The reference article's operations, vectorised: ``convolve``, ``max_pool``, ``pool_pyramid``.

All three act on the last two axes of ``(..., H, W)`` input; every leading axis
(batch, channel) is treated independently. Numpy in gives numpy out, torch in
gives torch out on the same device, with the same floating dtype (integers and
booleans become float32). Gradients flow through the torch path.

How they are fast on the CPU, in short: a small kernel is applied by
multiply-adding shifted views of the input, one row block at a time so that the
block stays in cache (padding, too, is built block by block); a rank-1 kernel
(Sobel, box, binomial, Gaussian) as a row pass then a column pass. Max pooling
is a running maximum of strided views, row pass then column pass. On one
channel both are several times faster than ``torch.nn.functional.conv2d`` and
``max_pool2d``, which are not tuned for it. ``benchmarks/bench_ops.py``
measures them against those, scipy.ndimage, OpenCV and the article's loops;
``benchmarks/RESULTS.md`` ("Operators") has the figures.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab._tensors import as_float_tensor, like_input, require_spatial
from shiftlab.errors import check, check_choice, fail
from shiftlab.kernels import KernelSpec, get_kernel

__all__ = ["Convolve", "MaxPool", "convolve", "max_pool", "max_pyramid_depth", "pool_output_size", "pool_pyramid"]

Padding = Literal["valid", "same", "circular"]
_PADDINGS = ("valid", "same", "circular")

# Elements per row block of the shift-and-add paths. Each block costs one torch
# call (and a thread-pool round trip) per pass, which dominates for small blocks:
# on a 2-core EPYC, 2**20 (4 MiB of float32 output, plus the input rows it
# reads, within L3) beat 2**14..2**18 on 512x512 and 2048x2048 maps and on
# batches, for the general and the separable path; see benchmarks/RESULTS.md.
_BLOCK_ELEMENTS = 1 << 20
# Above this many taps a direct convolution (or an FFT) beats shift-and-add.
_MAX_SHIFT_ADD_TAPS = 81


def convolve(image: Any, kernel: KernelSpec, *, padding: Padding = "valid", relu: bool = True) -> Any:
    r"""Cross-correlate every ``(H, W)`` map with ``kernel``, as a CNN layer does, then ReLU.

    This is the reference article's ``convolve`` (there followed by ReLU):
    ``out[i, j] = sum_{a, b} kernel[a, b] * image[i + a, j + b]``, with no
    kernel flip, on the padded image.

    Args:
        image: ``(..., H, W)`` numpy array or torch tensor.
        kernel: a kernel spec (see :func:`shiftlab.get_kernel`): a name such as
            ``"sobel_y"``, a literal, a ``.npy`` path, an array or a tensor.
        padding: ``"valid"`` (no padding: output ``(H - kh + 1, W - kw + 1)``),
            ``"same"`` (zeros; output ``(H, W)``; the kernel's centre is
            ``(kh // 2, kw // 2)``, scipy.ndimage's convention, which matters for
            even sizes) or ``"circular"`` (wrap around, same centre: exactly
            equivariant to circular shifts).
        relu: apply ``max(0, .)`` to the result, as the article does.

    Returns:
        The filtered maps, same type, device and dtype as ``image``.

    Raises:
        ShiftlabError: bad kernel, unknown padding, or a map smaller than the kernel.

    Shape:
        - image: :math:`(*, H, W)`
        - output: :math:`(*, H - k_h + 1, W - k_w + 1)` for ``"valid"``, else :math:`(*, H, W)`

    Example:
        >>> import numpy as np
        >>> step = np.array([[0, 0, 1, 1]] * 3, dtype=np.float32)
        >>> convolve(step, "sobel_y")
        array([[4., 4.]], dtype=float32)
        >>> convolve(step, "sobel_y", padding="same", relu=False)
        array([[ 0.,  3.,  3., -3.],
               [ 0.,  4.,  4., -4.],
               [ 0.,  3.,  3., -3.]], dtype=float32)
    """
    tensor, from_numpy = as_float_tensor(image, "image")
    height, width = require_spatial(tensor, "image")
    weight = get_kernel(kernel, device=tensor.device, dtype=tensor.dtype)
    kernel_height, kernel_width = weight.shape
    if padding not in _PADDINGS:  # (not check(): its message would be formatted on every call)
        fail("padding", f"must be one of {', '.join(_PADDINGS)}, got {padding!r}")
    if kernel_height > height or kernel_width > width:
        fail("image", f"map of size {height}x{width} is smaller than the {kernel_height}x{kernel_width} kernel")
    maps = tensor.reshape(-1, height, width)
    # (left, right, top, bottom): the centre sits at (kh // 2, kw // 2), as in scipy.ndimage.
    pads = (kernel_width // 2, (kernel_width - 1) // 2, kernel_height // 2, (kernel_height - 1) // 2)
    if _uses_shift_and_add(maps, weight):
        source = _PaddedRows(maps, None if padding == "valid" else pads, circular=padding == "circular")
        result = _correlate_cpu(source, weight, relu, numpy_out=from_numpy)
    else:
        if padding != "valid":
            mode = "constant" if padding == "same" else "circular"
            maps = F.pad(maps.unsqueeze(1), pads, mode=mode).squeeze(1)
        result = F.conv2d(maps.unsqueeze(1), weight[None, None]).squeeze(1)
        if relu:
            result = torch.relu(result)
    return like_input(result.reshape(*tensor.shape[:-2], *result.shape[-2:]), from_numpy)


def _uses_shift_and_add(maps: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CPU shift-and-add paths apply: CPU, no gradient needed, a small kernel.

    Elsewhere ``F.conv2d`` runs (autograd, GPUs, kernels of more than
    ``_MAX_SHIFT_ADD_TAPS`` taps).
    """
    needs_grad = torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad)
    return maps.device.type == "cpu" and not needs_grad and weight.numel() <= _MAX_SHIFT_ADD_TAPS


def _correlate_cpu(source: _PaddedRows, weight: torch.Tensor, relu: bool, numpy_out: bool) -> torch.Tensor:
    """Valid cross-correlation of the padded maps with a ``(kh, kw)`` kernel, by shift-and-add.

    ``numpy_out``: the result goes back to the caller as a numpy array, so it may
    live in numpy-allocated memory (see :func:`_empty`).
    """
    batch, height, width = source.shape
    kernel_height, kernel_width = weight.shape
    out_shape = (batch, height - kernel_height + 1, width - kernel_width + 1)
    factors = _separable_factors(weight)
    if factors is not None:
        return _separable_shift_and_add(source, out_shape, *factors, relu, numpy_out)
    # Zero taps add nothing to finite input, and half of an edge kernel is zeros.
    taps = [(a, b, w) for (a, b), w in _taps(weight) if w != 0.0]
    if not taps:
        return source.maps.new_zeros(out_shape)
    return _shift_and_add(source, out_shape, taps, relu, numpy_out)


def _shift_and_add(
    source: _PaddedRows,
    out_shape: tuple[int, int, int],
    taps: list[tuple[int, int, float]],
    relu: bool,
    numpy_out: bool,
) -> torch.Tensor:
    """``out = sum(w * shifted view)`` over the non-zero taps ``(a, b, w)``, one row block at a time."""
    batch, out_height, out_width = out_shape
    out = _empty(out_shape, source.maps, numpy_out)
    first_row, last_row = min(a for a, _, _ in taps), max(a for a, _, _ in taps)
    extra = last_row - first_row  # input rows a block reads beyond its output rows
    chunk, rows_per_block = _blocks(batch, source.shape[2], out_height, extra)
    source.reserve(chunk, min(rows_per_block, out_height) + extra)
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        # (Slicing a tensor costs about 1 us: on small maps it adds up, so only what is needed.)
        out_group = out if chunk == batch else out[start:stop]
        for top in range(0, out_height, rows_per_block):
            rows = min(rows_per_block, out_height - top)
            inputs = source.rows(start, stop, top + first_row, top + last_row + rows)
            block = out_group if rows == out_height else out_group[:, top : top + rows]
            _apply_taps(
                block, [(inputs[:, a - first_row : a - first_row + rows, b : b + out_width], w) for a, b, w in taps]
            )
            if relu:
                block.clamp_(min=0)
    return out


def _separable_shift_and_add(
    source: _PaddedRows,
    out_shape: tuple[int, int, int],
    column_taps: list[tuple[int, float]],
    row_taps: list[tuple[int, float]],
    relu: bool,
    numpy_out: bool,
) -> torch.Tensor:
    """Valid cross-correlation with ``outer(column, row)``: a row pass, then a column pass.

    Both passes run on one row block at a time, so the intermediate (the block's
    rows plus the rows the column taps reach beyond them, for every map of the
    block) is still in cache when the column pass reads it. The Sobel kernel
    takes 1 + 2 passes this way (see :func:`_apply_taps`) instead of 6.
    """
    batch, out_height, out_width = out_shape
    out = _empty(out_shape, source.maps, numpy_out)
    first_row, last_row = column_taps[0][0], column_taps[-1][0]
    extra = last_row - first_row  # intermediate rows a block needs beyond its output rows
    chunk, rows_per_block = _blocks(batch, source.shape[2], out_height, extra)
    block_rows = min(rows_per_block, out_height) + extra
    source.reserve(chunk, block_rows)
    scratch = _scratch("intermediate", chunk * block_rows * out_width, source.maps.dtype)
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        out_group = out if chunk == batch else out[start:stop]
        for top in range(0, out_height, rows_per_block):
            rows = min(rows_per_block, out_height - top)
            shape = (stop - start, rows + extra, out_width)
            intermediate = scratch[: shape[0] * shape[1] * shape[2]].view(shape)
            inputs = source.rows(start, stop, top + first_row, top + last_row + rows)
            _apply_taps(intermediate, [(inputs[..., b : b + out_width], w) for b, w in row_taps])
            block = out_group if rows == out_height else out_group[:, top : top + rows]
            _apply_taps(block, [(intermediate[:, a - first_row : a - first_row + rows], w) for a, w in column_taps])
            if relu:
                block.clamp_(min=0)
    return out


def _blocks(batch: int, width: int, out_height: int, extra: int) -> tuple[int, int]:
    """``(maps per block, output rows per block)`` for blocks of about ``_BLOCK_ELEMENTS`` input elements.

    All maps at once, unless that leaves so few rows per block that the ``extra``
    rows every block reads (or, padded, copies; or, separable, recomputes) beyond
    its output rows would cost more than a quarter of its work: then fewer maps
    per block, each with more rows.
    """
    rows = max(1, _BLOCK_ELEMENTS // max(1, batch * width))
    wanted = min(out_height, 4 * extra)
    if rows >= wanted:
        return batch, rows
    chunk = max(1, _BLOCK_ELEMENTS // max(1, width * wanted))
    return chunk, max(1, _BLOCK_ELEMENTS // max(1, chunk * width))


class _PaddedRows:
    """Row ranges of the padded ``(B, H, W)`` maps, built block by block.

    Without padding these are views of the maps. With padding each block's rows
    are copied into a reused slab (see :func:`_scratch`) instead of padding the
    whole input up front as ``F.pad`` does: that saves a pass over memory and a
    second full-size allocation per call, which glibc often hands back to the
    kernel and must then page-fault in again. Circular Sobel on a 2048x2048
    numpy map, median of 60 calls: 2.0 ms with ``F.pad`` (mean 2.9 ms), 5.5 ms
    (4,600 page faults a call) with ``F.pad`` beside a numpy-allocated output
    (see :func:`_empty`), 1.1 ms block by block (valid padding: 0.9 ms).
    """

    def __init__(self, maps: torch.Tensor, pads: tuple[int, int, int, int] | None, circular: bool) -> None:
        self.maps, self.pads, self.circular = maps, pads, circular
        left, right, top, bottom = pads or (0, 0, 0, 0)
        batch, height, width = maps.shape
        self.shape = (batch, height + top + bottom, width + left + right)
        self.slab: torch.Tensor | None = None

    def reserve(self, maps: int, rows: int) -> None:
        """Make room for blocks of up to ``maps`` maps and ``rows`` padded rows."""
        if self.pads is not None:
            self.slab = _scratch("padded", maps * rows * self.shape[2], self.maps.dtype)

    def rows(self, first: int, last: int, start: int, stop: int) -> torch.Tensor:
        """Padded rows ``start:stop`` of maps ``first:last``, as a ``(last - first, stop - start, W')`` tensor."""
        group = self.maps if last - first == self.maps.shape[0] else self.maps[first:last]
        if self.pads is None:
            return group if stop - start == group.shape[1] else group[:, start:stop]
        assert self.slab is not None, "reserve() first"
        left, right, top, _ = self.pads
        height, width = group.shape[1:]
        slab = self.slab[: (last - first) * (stop - start) * self.shape[2]].view(
            last - first, stop - start, self.shape[2]
        )
        row = start
        while row < stop:  # one run of consecutive input rows (or of zero rows) at a time
            index = row - top
            if self.circular:
                index %= height
            if 0 <= index < height:
                count = min(stop - row, height - index)
                slab[:, row - start : row - start + count, left : left + width] = group[:, index : index + count]
            else:  # zero padding above or below the maps
                count = min(stop - row, -index) if index < 0 else stop - row
                slab[:, row - start : row - start + count].zero_()
            row += count
        if self.circular:  # (every pad is at most the map's size, so these never overlap)
            if left:
                slab[..., :left] = slab[..., width : width + left]
            if right:
                slab[..., left + width :] = slab[..., left : left + right]
        else:
            if left:
                slab[..., :left].zero_()
            if right:
                slab[..., left + width :].zero_()
        return slab


def _empty(shape: tuple[int, ...], like: torch.Tensor, numpy_out: bool) -> torch.Tensor:
    """An uninitialised CPU tensor for an output that every pass then overwrites.

    When the result goes back to the caller as numpy anyway, numpy allocates it:
    numpy asks the kernel for transparent huge pages on arrays of 4 MiB and more,
    so a 16 MiB output (2048x2048 float32) that glibc has to map afresh is
    faulted in 2 MiB at a time instead of 4 KiB (4,096 faults, about 3 ms). In
    four runs of benchmarks/bench_ops.py on 2048x2048 (other libraries'
    allocations in between), 13 of 28 Sobel timings took about 4 ms instead of
    1 ms with torch-allocated outputs; with numpy-allocated ones, none. (In a
    tight loop of convolve calls alone faults are rarer either way, and a huge
    page that must first be compacted can stall a call for ~20 ms instead.)
    Torch callers get an ordinary torch tensor: a numpy-backed one cannot be
    resized (``resize_``, ``out=`` of another shape), which they may rely on.
    """
    if numpy_out and like.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[like.dtype]))
    return like.new_empty(shape)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_SCRATCH = threading.local()


def _scratch(purpose: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat CPU buffer of ``numel`` elements, reused from call to call (per thread, purpose and dtype).

    Only buffers of up to ``2 * _BLOCK_ELEMENTS`` elements are kept (8 MiB in
    float32, each); larger ones are allocated per call. Allocating even the
    small ones afresh cost more than the convolution: on a 512x512 map a fresh
    1 MiB intermediate beside the 1 MiB output made glibc hand the freed memory
    back to the kernel after every call (2 MiB at the top of the heap crosses
    its trim threshold), and touching it again took 512 page faults: 0.65 ms a
    call instead of 0.1 ms.
    """
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = cache.get((purpose, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype)
        if numel <= 2 * _BLOCK_ELEMENTS:
            cache[(purpose, dtype)] = buffer
    return buffer[:numel]


def _apply_taps(out: torch.Tensor, sources: list[tuple[torch.Tensor, float]]) -> None:
    """``out = sum(w * source)``, writing ``out`` once per source (one pass fewer where a weight is 1).

    The first term is written, not added to a zero-filled ``out``: that saves a
    pass. Where a weight is exactly 1 its source opens the sum and takes a second
    term along in the same call, ``out = source + w * other``. The order of the
    terms is fixed per call, and every element goes through the same operations
    in it, so no result depends on an element's position (circular convolution
    stays exactly equivariant to circular shifts).
    """
    ones = [index for index, (_, weight) in enumerate(sources) if weight == 1.0]
    if ones and len(sources) > 1:
        first = sources[ones[0]][0]
        rest = sources[: ones[0]] + sources[ones[0] + 1 :]
        (second, weight), rest = rest[0], rest[1:]
        torch.add(first, second, alpha=weight, out=out)
    else:
        (first, weight), rest = sources[0], sources[1:]
        torch.mul(first, weight, out=out)
    for source, weight in rest:
        out.add_(source, alpha=weight)


def _separable_factors(weight: torch.Tensor) -> tuple[list[tuple[int, float]], list[tuple[int, float]]] | None:
    """The non-zero taps ``(column taps, row taps)`` of a rank-1 kernel, or None.

    No SVD: the factors are the column and the row through a pivot entry,
    ``column = K[:, j] / K[i, j]`` and ``row = K[i, :]``. The pivot is an entry
    equal to 1 where there is one (Sobel, Prewitt: then both factors are exact
    copies of kernel entries and each pass saves a call, see :func:`_apply_taps`),
    else the largest entry. A kernel is used as ``outer(column, row)`` only when
    that product, computed from the factors as rounded to the kernel's dtype,
    reproduces every entry to within ``8 * eps * max|K|`` of the dtype: Sobel,
    box, binomial and Gaussian kernels pass, a Laplacian does not, and neither
    does a rank-1 kernel plus a perturbation above that level. The bound scales
    with the dtype because a float32 kernel, such as a float32 Gaussian, is only
    rank 1 up to its own rounding (about 3e-8 of its largest entry), and float32
    arithmetic cannot tell a smaller perturbation from rounding anyway; in
    float64 it is about 2e-15.

    Only kernels with at least two non-zero taps along both axes, and more taps
    in all than in their two factors, are returned: for the others (one row, one
    column, 2x2) the direct shift-and-add makes no more passes.
    """
    if weight.dtype not in _NUMPY_DTYPES:
        return None
    values = weight.detach().cpu().tolist()  # float32 and float64 values are exact as Python floats
    key = (weight.dtype, tuple(map(tuple, values)))
    if key not in _FACTORS:
        if len(_FACTORS) >= 256:
            _FACTORS.clear()
        _FACTORS[key] = _factor(values, _NUMPY_DTYPES[weight.dtype])
    return _FACTORS[key]


# Kernel (dtype, values) -> _separable_factors' answer: a convolution layer asks for the same kernel every call.
_FACTORS: dict[tuple[Any, ...], Any] = {}


def _factor(values: list[list[float]], working: type) -> tuple[list[tuple[int, float]], list[tuple[int, float]]] | None:
    """:func:`_separable_factors` of a kernel given as rows of floats, in the ``working`` numpy dtype."""
    height, width = len(values), len(values[0])
    magnitudes = [abs(value) for row in values for value in row]
    scale = max(magnitudes)
    if scale == 0.0:
        return None
    pivots = [(i, j) for i, row in enumerate(values) for j, value in enumerate(row) if value == 1.0][:1]
    pivots.append(divmod(magnitudes.index(scale), width))
    tolerance = 8 * float(np.finfo(working).eps) * scale
    for i, j in pivots:
        # The factors as they will be applied, rounded to the working dtype (exact for a pivot of 1).
        column = np.array([values[a][j] / values[i][j] for a in range(height)], dtype=working).tolist()
        row = np.array(values[i], dtype=working).tolist()
        if all(abs(c * r - k) <= tolerance for c, kernel_row in zip(column, values) for r, k in zip(row, kernel_row)):
            break
    else:
        return None
    column_taps = [(a, value) for a, value in enumerate(column) if value != 0.0]
    row_taps = [(b, value) for b, value in enumerate(row) if value != 0.0]
    passes, taps = len(column_taps) + len(row_taps), len(column_taps) * len(row_taps)
    if len(column_taps) < 2 or len(row_taps) < 2 or taps <= passes:
        return None
    return column_taps, row_taps


def _taps(weight: torch.Tensor) -> list[tuple[tuple[int, int], float]]:
    values = weight.detach().cpu().double().tolist()
    return [((a, b), value) for a, row in enumerate(values) for b, value in enumerate(row)]


def pool_output_size(size: int, kernel_size: int, stride: int) -> int:
    """Length of a max-pooled axis: ``(size - kernel_size) // stride + 1`` (no padding, trailing pixels dropped).

    Example:
        >>> pool_output_size(9, 2, 2)
        4
    """
    return (size - kernel_size) // stride + 1


def max_pool(image: Any, kernel_size: int = 2, stride: int | None = None) -> Any:
    """Max over ``kernel_size x kernel_size`` windows every ``stride`` pixels, on the last two axes.

    As in the reference article (and ``torch.nn.MaxPool2d`` without padding),
    windows that would run past the edge are dropped: a 9x9 map pooled 2x2
    gives 4x4 and its last row and column are never read.

    Args:
        image: ``(..., H, W)`` numpy array or torch tensor.
        kernel_size: window side ``k >= 1``.
        stride: step between windows, default ``kernel_size`` (non-overlapping).

    Returns:
        Pooled maps of the input's type, device and dtype.

    Raises:
        ShiftlabError: a map smaller than the window, or a bad size or stride.

    Shape:
        - image: :math:`(*, H, W)`
        - output: :math:`(*, \\lfloor (H - k) / s \\rfloor + 1, \\lfloor (W - k) / s \\rfloor + 1)`

    Example:
        >>> import numpy as np
        >>> max_pool(np.arange(16.0).reshape(4, 4))
        array([[ 5.,  7.],
               [13., 15.]])
    """
    tensor, from_numpy = as_float_tensor(image, "image")
    height, width = require_spatial(tensor, "image")
    kernel_size = _check_window(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else _check_window(stride, "stride")
    check(
        kernel_size <= height and kernel_size <= width,
        "image",
        f"map of size {height}x{width} is smaller than the {kernel_size}x{kernel_size} pooling window",
    )
    return like_input(_pool(tensor, kernel_size, stride), from_numpy)


def _pool(tensor: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Max pooling of a validated tensor: a row pass, then a column pass."""
    return _running_max(_running_max(tensor, kernel_size, stride, dim=-2), kernel_size, stride, dim=-1)


def _running_max(tensor: torch.Tensor, kernel_size: int, stride: int, dim: int) -> torch.Tensor:
    """Max over windows along one axis, as a running maximum of ``kernel_size`` strided views."""
    count = pool_output_size(tensor.shape[dim], kernel_size, stride)
    span = (count - 1) * stride + 1

    def view(offset: int) -> torch.Tensor:
        window = tensor.narrow(dim, offset, span)
        return window[..., ::stride] if dim == -1 else window[..., ::stride, :]

    if kernel_size == 1:
        return view(0).clone()
    result = torch.maximum(view(0), view(1))
    for offset in range(2, kernel_size):
        result = torch.maximum(result, view(offset))
    return result


def _check_window(value: Any, name: str) -> int:
    check(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
        name,
        f"must be a positive integer, got {value!r}",
    )
    return int(value)


def pool_pyramid(image: Any, iterations: int, kernel_size: int = 2) -> list[Any]:
    """Max-pool ``iterations`` times and return every level, the input first.

    The article's ``visualize_pooling`` draws these levels; here they are data.

    Args:
        image: ``(..., H, W)`` numpy array or torch tensor.
        iterations: number of poolings, ``>= 0``.
        kernel_size: window and stride of each pooling.

    Returns:
        ``iterations + 1`` maps: level 0 is the input itself (for numpy input a
        read-only view of it, converted to float when it was not), level ``i``
        has been pooled ``i`` times.

    Raises:
        ShiftlabError: when a level would be smaller than the window; the
            message says how many poolings the input allows.

    Example:
        >>> import numpy as np
        >>> [level.shape for level in pool_pyramid(np.zeros((10, 10)), 3)]
        [(10, 10), (5, 5), (2, 2), (1, 1)]
    """
    check(
        isinstance(iterations, (int, np.integer)) and not isinstance(iterations, bool) and iterations >= 0,
        "iterations",
        f"must be a non-negative integer, got {iterations!r}",
    )
    iterations, kernel_size = int(iterations), _check_window(kernel_size, "kernel_size")
    tensor, from_numpy = as_float_tensor(image, "image")
    height, width = require_spatial(tensor, "image")
    possible = max_pyramid_depth(height, width, kernel_size) if kernel_size > 1 else iterations
    if iterations > possible:
        fail(
            "iterations",
            f"{iterations} poolings with a {kernel_size}x{kernel_size} window do not fit a "
            f"{height}x{width} map: at most {possible} do",
        )
    levels = [tensor]
    for _ in range(iterations):  # sizes were checked above: skip max_pool's checks on every level
        levels.append(_pool(levels[-1], kernel_size, kernel_size))
    result = [like_input(level, from_numpy) for level in levels]
    if from_numpy:
        # Level 0 is the caller's own data (no copy: it would cost a third of the pyramid on
        # a 512x512 image); read-only, so that writing to it cannot change their array.
        result[0].flags.writeable = False
    return result


def max_pyramid_depth(height: int, width: int, kernel_size: int = 2) -> int:
    """How many times a ``height x width`` map can be max-pooled with a ``kernel_size`` window.

    Example:
        >>> max_pyramid_depth(10, 10)
        3
    """
    _check_window(kernel_size, "kernel_size")
    check(kernel_size > 1, "kernel_size", "a 1x1 pooling never shrinks a map: its depth is unbounded")
    depth = 0
    while height >= kernel_size and width >= kernel_size:
        height, width = height // kernel_size, width // kernel_size
        depth += 1
    return depth


class Convolve(nn.Module):
    """Module form of :func:`convolve`, with its kernel as a non-persistent buffer.

    Applies the kernel to every channel independently (a depthwise layer with
    one shared filter).

    Shape:
        - input: :math:`(*, H, W)`
        - output: as :func:`convolve`

    Example:
        >>> layer = Convolve("sobel_y", padding="circular")
        >>> layer(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    kernel: torch.Tensor

    def __init__(self, kernel: KernelSpec, *, padding: Padding = "valid", relu: bool = True) -> None:
        super().__init__()
        check_choice(padding, "padding", _PADDINGS)
        self.padding = padding
        self.relu = relu
        self.register_buffer("kernel", get_kernel(kernel, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.kernel, padding=self.padding, relu=self.relu)

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.kernel.shape)}, padding={self.padding!r}, relu={self.relu}"


class MaxPool(nn.Module):
    """Module form of :func:`max_pool`.

    Shape:
        - input: :math:`(*, H, W)`
        - output: as :func:`max_pool`

    Example:
        >>> MaxPool(2)(torch.zeros(1, 1, 9, 9)).shape
        torch.Size([1, 1, 4, 4])
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = _check_window(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _check_window(stride, "stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
