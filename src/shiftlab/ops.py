"""The reference article's operations, vectorised: ``convolve``, ``max_pool``, ``pool_pyramid``.

All three act on the last two axes of ``(..., H, W)`` input; every leading axis
(batch, channel) is treated independently. Numpy in gives numpy out, torch in
gives torch out on the same device, with the same floating dtype (integers and
booleans become float32). Gradients flow through the torch path.

How they are fast on the CPU, in short: a small kernel is applied by
multiply-adding shifted views of the input (a rank-1 kernel such as Sobel,
box, binomial or Gaussian as a row pass then a column pass), over blocks of
rows that stay in cache. Max pooling is a running maximum of strided views,
row pass then column pass. On one channel both are several times faster than
``torch.nn.functional.conv2d`` and ``max_pool2d``, which are not tuned for it.
``benchmarks/bench_ops.py`` measures them against those, scipy.ndimage, OpenCV
and the article's loops; ``benchmarks/RESULTS.md`` ("Operators") has the figures.
"""

from __future__ import annotations

import functools
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

# Elements of input per block of the shift-and-add convolution: each block costs a few torch calls, so
# blocks should be large, yet small enough for a block and its intermediate to stay in cache. 2**20
# (4 MiB of float32) was the best or close to it on 512x512, 2048x2048 and batched maps (benchmarks/RESULTS.md).
_BLOCK_ELEMENTS = 1 << 20
# Above this many taps a direct convolution beats shift-and-add.
_MAX_SHIFT_ADD_TAPS = 81
_Taps = list[tuple[int, float]]


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
    if padding != "valid":
        # (left, right, top, bottom): the centre sits at (kh // 2, kw // 2), as in scipy.ndimage.
        pads = (kernel_width // 2, (kernel_width - 1) // 2, kernel_height // 2, (kernel_height - 1) // 2)
        maps = F.pad(maps.unsqueeze(1), pads, mode="constant" if padding == "same" else "circular").squeeze(1)
    needs_grad = torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad)
    if maps.device.type == "cpu" and not needs_grad and weight.numel() <= _MAX_SHIFT_ADD_TAPS:
        result = _shift_and_add(maps, weight, relu)
    else:  # autograd, GPUs, large kernels
        result = F.conv2d(maps.unsqueeze(1), weight[None, None]).squeeze(1)
        if relu:
            result = torch.relu(result)
    return like_input(result.reshape(*tensor.shape[:-2], *result.shape[-2:]), from_numpy)


def _shift_and_add(maps: torch.Tensor, weight: torch.Tensor, relu: bool) -> torch.Tensor:
    """Valid cross-correlation of ``(B, H, W)`` maps with a small kernel, as sums of shifted views.

    A rank-1 kernel ``outer(column, row)`` takes a row pass into an
    intermediate, then a column pass: the Sobel kernel costs 1 + 2 passes this
    way (see :func:`_weighted_sum`) instead of 6. The work goes by blocks of
    about ``_BLOCK_ELEMENTS`` input elements (whole maps where they fit, else
    rows of one map), so that a block's input and intermediate are still in
    cache when the next pass reads them; the intermediate's memory is
    allocated once per call and reused by every block.
    """
    batch, height, width = maps.shape
    kernel_height, kernel_width = weight.shape
    out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
    out = maps.new_empty((batch, out_height, out_width))
    values = tuple(map(tuple, weight.tolist()))
    factors = _separable_factors(values, weight.dtype)
    taps = [(a, b, value) for a, row in enumerate(values) for b, value in enumerate(row) if value != 0.0]
    if not taps:  # zero taps add nothing to finite input
        return out.zero_()
    maps_per_block = max(1, _BLOCK_ELEMENTS // (height * width))
    rows_per_block = max(1, _BLOCK_ELEMENTS // (maps_per_block * width))
    if factors is not None:
        block_rows = min(rows_per_block, out_height) + kernel_height - 1
        scratch = maps.new_empty(min(maps_per_block, batch) * block_rows * out_width)
    for start in range(0, batch, maps_per_block):
        for top in range(0, out_height, rows_per_block):
            block = out[start : start + maps_per_block, top : top + rows_per_block]
            count, rows = block.shape[:2]
            inputs = maps[start : start + count, top : top + rows + kernel_height - 1]
            if factors is None:
                terms = [(inputs[:, a : a + rows, b : b + out_width], value) for a, b, value in taps]
            else:
                column, row = factors
                intermediate = scratch[: inputs.shape[0] * inputs.shape[1] * out_width].view(*inputs.shape[:2], -1)
                _weighted_sum([(inputs[..., b : b + out_width], value) for b, value in row], intermediate)
                terms = [(intermediate[:, a : a + rows], value) for a, value in column]
            _weighted_sum(terms, block)
            if relu:
                block.clamp_(min=0)
    return out


def _weighted_sum(terms: list[tuple[torch.Tensor, float]], out: torch.Tensor) -> None:
    """``out = sum(w * term)``, writing ``out`` once per term, and one pass fewer where a weight is 1.

    The first term is written, not added to a zero-filled ``out``. A term of
    weight exactly 1 opens the sum and takes a second term along in the same
    call, ``out = term + w * other``. Every element goes through the same
    operations in the same order, so no result depends on an element's
    position (circular convolution stays exactly equivariant to circular
    shifts).
    """
    terms = sorted(terms, key=lambda term: term[1] != 1.0)  # a weight-1 term first, the order otherwise kept
    (first, weight), rest = terms[0], terms[1:]
    if weight == 1.0 and rest:
        (second, weight), rest = rest[0], rest[1:]
        torch.add(first, second, alpha=weight, out=out)
    else:
        torch.mul(first, weight, out=out)
    for term, weight in rest:
        out.add_(term, alpha=weight)


@functools.lru_cache(maxsize=256)  # a convolution layer asks for the same kernel on every call
def _separable_factors(values: tuple[tuple[float, ...], ...], dtype: torch.dtype) -> tuple[_Taps, _Taps] | None:
    """The non-zero taps ``(column taps, row taps)`` of a rank-1 kernel given as rows of floats, or None.

    No SVD: the factors are the column and the row through a pivot entry,
    ``column = K[:, j] / K[i, j]`` and ``row = K[i, :]``. The pivot is an entry
    equal to 1 where there is one (Sobel: then the factors are copies of kernel
    entries and each pass saves a call, see :func:`_weighted_sum`), else the
    largest entry. The factors, rounded to ``dtype``, must reproduce every
    entry to within ``8 * eps * max|K|`` of ``dtype``: Sobel, box, binomial and
    Gaussian kernels pass (a float32 Gaussian is rank 1 only to its own
    rounding), a Laplacian does not, nor does a rank-1 kernel plus a larger
    perturbation. Kernels with fewer than two non-zero taps along an axis, or
    no fewer taps factored than in all (a 2x2), are not worth factoring.
    """
    magnitudes = [abs(value) for row in values for value in row]
    if dtype not in (torch.float32, torch.float64) or max(magnitudes) == 0.0:
        return None
    working = np.float32 if dtype == torch.float32 else np.float64
    pivots = [(i, j) for i, row in enumerate(values) for j, value in enumerate(row) if value == 1.0][:1]
    pivots.append(divmod(magnitudes.index(max(magnitudes)), len(values[0])))
    tolerance = 8 * float(np.finfo(working).eps) * max(magnitudes)
    for i, j in pivots:
        column = np.array([row[j] / values[i][j] for row in values], dtype=working).tolist()
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
