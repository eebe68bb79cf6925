"""The reference article's operations, vectorised: ``convolve``, ``max_pool``, ``pool_pyramid``.

All three act on the last two axes of ``(..., H, W)`` input; every leading axis
(batch, channel) is treated independently. Numpy in gives numpy out, torch in
gives torch out on the same device, with the same floating dtype (integers and
booleans become float32). Gradients flow through the torch path.

How they are fast on the CPU, in short: a small kernel is applied by
multiply-adding shifted views of the input in row blocks that stay in cache
(about 6x faster than ``torch.nn.functional.conv2d`` on one channel, which is
not tuned for it), and max pooling is a running maximum of strided views, row
pass then column pass (about 30x faster than ``max_pool2d`` on one channel).
``benchmarks/bench_ops.py`` measures both.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab._tensors import as_float_tensor, like_input, require_spatial
from shiftlab.errors import check, fail
from shiftlab.kernels import KernelSpec, get_kernel

__all__ = ["Convolve", "MaxPool", "convolve", "max_pool", "max_pyramid_depth", "pool_output_size", "pool_pyramid"]

Padding = Literal["valid", "same", "circular"]
_PADDINGS = ("valid", "same", "circular")

# Elements per row block of the shift-and-add path. Each block costs one torch
# call (and a thread-pool round trip) per tap, which dominates for small blocks:
# on a 2-core EPYC, 2**20 (4 MiB of float32 output, plus the input rows it
# reads, within L3) beat 2**14..2**18 on 512x512 and 2048x2048 maps and on
# batches; see benchmarks/RESULTS.md.
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
    check(padding in _PADDINGS, "padding", f"must be one of {', '.join(_PADDINGS)}, got {padding!r}")
    check(
        kernel_height <= height and kernel_width <= width,
        "image",
        f"map of size {height}x{width} is smaller than the {kernel_height}x{kernel_width} kernel",
    )
    maps = tensor.reshape(-1, height, width)
    if padding != "valid":
        # (left, right, top, bottom): the centre sits at (kh // 2, kw // 2), as in scipy.ndimage.
        pads = (kernel_width // 2, (kernel_width - 1) // 2, kernel_height // 2, (kernel_height - 1) // 2)
        mode = "constant" if padding == "same" else "circular"
        maps = F.pad(maps.unsqueeze(1), pads, mode=mode).squeeze(1)
    result = _correlate_valid(maps, weight, relu)
    return like_input(result.reshape(*tensor.shape[:-2], *result.shape[-2:]), from_numpy)


def _correlate_valid(maps: torch.Tensor, weight: torch.Tensor, relu: bool) -> torch.Tensor:
    """Valid cross-correlation of ``(B, H, W)`` maps with a ``(kh, kw)`` kernel."""
    needs_grad = torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad)
    if maps.device.type == "cpu" and not needs_grad and weight.numel() <= _MAX_SHIFT_ADD_TAPS:
        return _shift_and_add(maps, weight, relu)
    out = F.conv2d(maps.unsqueeze(1), weight[None, None]).squeeze(1)
    return torch.relu(out) if relu else out


def _shift_and_add(maps: torch.Tensor, weight: torch.Tensor, relu: bool) -> torch.Tensor:
    batch, height, width = maps.shape
    kernel_height, kernel_width = weight.shape
    out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
    out = maps.new_zeros((batch, out_height, out_width))
    # Zero taps add nothing to finite input, and half of an edge kernel is zeros.
    taps = [(a, b, w) for (a, b), w in _taps(weight) if w != 0.0]
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(1, batch * width))
    for top in range(0, out_height, rows_per_block):
        rows = min(rows_per_block, out_height - top)
        block = out[:, top : top + rows]
        for a, b, w in taps:
            block.add_(maps[:, top + a : top + a + rows, b : b + out_width], alpha=w)
        if relu:
            block.clamp_(min=0)
    return out


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
        ``iterations + 1`` maps: level 0 is the input (as an array or tensor of
        the output type), level ``i`` has been pooled ``i`` times.

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
    levels = [tensor.clone()]  # level 0 is a copy: never an alias of the caller's array
    for _ in range(iterations):  # sizes were checked above: skip max_pool's checks on every level
        levels.append(_pool(levels[-1], kernel_size, kernel_size))
    return [like_input(level, from_numpy) for level in levels]


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

    def __init__(self, kernel: KernelSpec, *, padding: Padding = "valid", relu: bool = True) -> None:
        super().__init__()
        check(padding in _PADDINGS, "padding", f"must be one of {', '.join(_PADDINGS)}, got {padding!r}")
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
