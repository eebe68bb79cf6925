"""The reference article's operations, vectorised: ``convolve``, ``max_pool``, ``pool_pyramid``.

All three act on the last two axes of ``(..., H, W)`` input, every leading axis
(batch, channel) independently. Numpy in gives numpy out, torch in gives torch
out on the same device and floating dtype (integers and booleans become
float32). Gradients flow through the torch path.

On the CPU, convolution multiply-adds shifted views of the input (a rank-1
kernel such as Sobel or Gaussian as a row pass, then a column pass) and max
pooling is a running maximum of strided views: on one channel several times
faster than ``F.conv2d`` and ``F.max_pool2d`` (``benchmarks/bench_ops.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab._tensors import as_float_tensor, like_input, require_spatial
from shiftlab.errors import check, check_choice, check_int, fail
from shiftlab.kernels import KernelSpec, get_kernel

__all__ = ["Convolve", "MaxPool", "convolve", "max_pool", "max_pyramid_depth", "pool_pyramid"]

Padding = Literal["valid", "same", "circular"]
_PADDINGS = ("valid", "same", "circular")

# Elements of input per block of the shift-and-add convolution: each block costs a few torch calls, so
# blocks should be large, yet small enough for a block and its intermediate to stay in cache. 2**20
# (4 MiB of float32) was the best or close to it on 512x512, 2048x2048 and batched maps (benchmarks/RESULTS.md).
_BLOCK_ELEMENTS = 1 << 20
# Above this many taps a direct convolution beats shift-and-add.
_MAX_SHIFT_ADD_TAPS = 81
_Taps = list[tuple[int, int, float]]


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
    if not needs_grad and maps.device.type == "cpu" and weight.numel() <= _MAX_SHIFT_ADD_TAPS:
        result = _shift_and_add(maps, weight, relu)
    else:  # autograd, GPUs, large kernels
        result = F.conv2d(maps.unsqueeze(1), weight[None, None]).squeeze(1)
        if relu:
            result = torch.relu(result)
    return like_input(result.reshape(*tensor.shape[:-2], *result.shape[-2:]), from_numpy)


def _shift_and_add(maps: torch.Tensor, weight: torch.Tensor, relu: bool) -> torch.Tensor:
    """Valid cross-correlation of ``(B, H, W)`` maps with a small kernel, as sums of shifted views.

    Each block (see :func:`_blocks`) goes through every pass of the kernel's
    :func:`_plan` while its input and the row pass's intermediate are still in
    cache. The intermediate is allocated once per call, for the largest block.
    """
    (batch, height, width), (kernel_height, kernel_width) = maps.shape, weight.shape
    passes = _plan(tuple(map(tuple, weight.tolist())), weight.dtype)
    out = maps.new_empty((batch, height - kernel_height + 1, width - kernel_width + 1))
    if not passes:  # a kernel of zeros adds nothing to finite input
        return out.zero_()
    blocks = _blocks(maps, out)
    scratch = maps.new_empty((*blocks[0][0].shape[:2], out.shape[-1])) if len(passes) == 2 else None
    for source, block in blocks:
        if scratch is not None:  # the row pass
            intermediate = scratch[: source.shape[0], : source.shape[1]]
            _weighted_sum(source, passes[0], intermediate)
            source = intermediate
        _weighted_sum(source, passes[-1], block)
        if relu:
            block.relu_()
    return out


def _blocks(maps: torch.Tensor, out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input, output)`` blocks of about ``_BLOCK_ELEMENTS`` input elements: whole maps where they fit, else rows."""
    if maps.numel() <= _BLOCK_ELEMENTS:
        return [(maps, out)]  # one block: no views to take
    batch, height, width = maps.shape
    count = max(1, _BLOCK_ELEMENTS // (height * width))  # maps per block
    rows = max(1, _BLOCK_ELEMENTS // (count * width))  # output rows per block
    margin = height - out.shape[1]  # the input rows a block reads beyond its output rows
    starts = [(n, top) for n in range(0, batch, count) for top in range(0, out.shape[1], rows)]
    return [(maps[n : n + count, top : top + rows + margin], out[n : n + count, top : top + rows]) for n, top in starts]


def _weighted_sum(source: torch.Tensor, taps: _Taps, out: torch.Tensor) -> None:
    """``out = sum(weight * source[:, a:, b:])`` over the taps ``(a, b, weight)``, writing ``out`` once per tap.

    The first tap is written, not added to zeros; a first tap of weight 1 takes
    the second along, ``out = view + weight * other``. Every element goes through
    the same operations in the same order: circular convolution stays exactly
    equivariant to circular shifts.
    """
    rows, cols = out.shape[-2:]
    (first, weight), *rest = [(source[:, a : a + rows, b : b + cols], weight) for a, b, weight in taps]
    if weight == 1.0 and rest:
        (second, weight), *rest = rest
        torch.add(first, second, alpha=weight, out=out)
    else:
        torch.mul(first, weight, out=out)
    for view, weight in rest:
        out.add_(view, alpha=weight)


@functools.lru_cache(maxsize=256)  # a convolution layer asks for the same kernel on every call
def _plan(values: tuple[tuple[float, ...], ...], dtype: torch.dtype) -> tuple[_Taps, ...]:
    """The passes that apply a kernel given as rows of floats, each a list of non-zero taps ``(a, b, weight)``.

    A rank-1 kernel ``outer(column, row)`` takes a row pass, then a column pass
    (Sobel: 1 + 2 torch calls instead of 6), any other kernel one pass of all
    its taps, a kernel of zeros none. A tap of weight 1 comes first in its pass.

    No SVD: the factors are the column and the row through a pivot entry,
    ``column = K[:, j] / K[i, j]`` and ``row = K[i, :]``. The pivot is an entry
    equal to 1 where there is one (Sobel: the factors are then copies of kernel
    entries, and each pass saves a call), else the largest entry. The factors,
    rounded to ``dtype``, must reproduce every entry to within ``8 * eps *
    max|K|``: Sobel, box, binomial and Gaussian kernels pass (a float32 Gaussian
    is rank 1 only to its own rounding), a Laplacian does not, nor does a rank-1
    kernel plus a larger perturbation. Only float32 and float64 kernels are
    factored, and only where that leaves fewer taps (not a 2x2, a row or a column).
    """
    kernel = np.array(values)
    taps = [(a, b, weight) for a, row in enumerate(values) for b, weight in enumerate(row) if weight]
    passes = [taps] if taps else []
    working = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    ones = np.argwhere(kernel == 1.0)[:1]
    pivots = [*ones, np.unravel_index(np.abs(kernel).argmax(), kernel.shape)] if working and taps else []
    for i, j in pivots:
        column = (kernel[:, j] / kernel[i, j]).astype(working).astype(np.float64)
        if np.all(np.abs(np.outer(column, kernel[i]) - kernel) <= 8 * torch.finfo(dtype).eps * np.abs(kernel).max()):
            column_taps = [(a, 0, weight) for a, weight in enumerate(column.tolist()) if weight]
            row_taps = [(0, b, weight) for b, weight in enumerate(kernel[i].tolist()) if weight]
            if len(column_taps) * len(row_taps) > len(column_taps) + len(row_taps):
                passes = [row_taps, column_taps]
            break
    return tuple(sorted(taps, key=lambda tap: tap[2] != 1.0) for taps in passes)


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
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    stride = kernel_size if stride is None else check_int(stride, "stride", minimum=1)
    if kernel_size > height or kernel_size > width:
        fail("image", f"map of size {height}x{width} is smaller than the {kernel_size}x{kernel_size} pooling window")
    return like_input(_pool(tensor, kernel_size, stride), from_numpy)


def _pool(tensor: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Max pooling of a validated tensor: along the rows, then the columns, a running maximum of strided views."""
    for dim in (-2, -1):
        span = (tensor.shape[dim] - kernel_size) // stride * stride + 1  # from the first window's start to the last's
        windows = [tensor.narrow(dim, offset, span) for offset in range(kernel_size)]
        views = [window[..., ::stride, :] if dim == -2 else window[..., ::stride] for window in windows]
        tensor = functools.reduce(torch.maximum, views) if kernel_size > 1 else views[0].clone()
    return tensor


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
        ShiftlabError: more poolings than the map allows (the message says how many do), or a bad size.

    Example:
        >>> import numpy as np
        >>> [level.shape for level in pool_pyramid(np.zeros((10, 10)), 3)]
        [(10, 10), (5, 5), (2, 2), (1, 1)]
    """
    iterations = check_int(iterations, "iterations", minimum=0)
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    tensor, from_numpy = as_float_tensor(image, "image")
    height, width = require_spatial(tensor, "image")
    possible = max_pyramid_depth(height, width, kernel_size) if kernel_size > 1 else iterations
    if iterations > possible:
        problem = f"{iterations} poolings with a {kernel_size}x{kernel_size} window do not fit a {height}x{width} map"
        fail("iterations", f"{problem}: at most {possible} do")
    levels = [tensor]
    for _ in range(iterations):  # sizes were checked above: skip max_pool's checks on every level
        levels.append(_pool(levels[-1], kernel_size, kernel_size))
    result = [like_input(level, from_numpy) for level in levels]
    if from_numpy:
        # Level 0 is the caller's own data (a copy would cost a third of the pyramid on 512x512), read-only.
        result[0].flags.writeable = False
    return result


def max_pyramid_depth(height: int, width: int, kernel_size: int = 2) -> int:
    """How many times a ``height x width`` map can be max-pooled with a ``kernel_size`` window.

    Example:
        >>> max_pyramid_depth(10, 10)
        3
    """
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
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
        self.kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else check_int(stride, "stride", minimum=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
