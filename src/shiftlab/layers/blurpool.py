"""Anti-aliased downsampling: blur with a binomial filter, then subsample (BlurPool; Zhang 2019).

Zhang, "Making Convolutional Networks Shift-Invariant Again" (ICML 2019): a strided layer keeps only every
``s``-th pixel and so aliases whatever the map holds above the new Nyquist frequency; a low-pass filter before the
subsampling removes most of it. This makes a network *more consistent* under shifts, **not exactly invariant**: the
filter is not an ideal low-pass, and nonlinearities after it create new high frequencies. For exact invariance to
circular shifts see :mod:`shiftlab.layers.aps`.

Conventions, and how they compare with the implementations people meet (checked in their sources):

* **Zhang's reference** (adobe/antialiased-cnns, ``antialiased_cnns/blurpool.py``, ``BlurPool(channels,
  pad_type='reflect', filt_size=4, stride=2)``): the 2-D filter is the outer product of row ``k`` of Pascal's
  triangle with itself, divided by its sum, for ``k`` from 1 to 7; the map is padded by ``(k - 1) // 2`` pixels
  before (top, left) and ``ceil((k - 1) / 2)`` after (bottom, right), in reflect (default), replicate or zero mode;
  then a depthwise convolution at the stride. ``k = 1`` is plain subsampling ``x[..., ::s, ::s]``. shiftlab follows
  all of this, and adds ``padding="circular"`` (needed for exact circular equivariance elsewhere in a network),
  strides per axis, and any ``(..., H, W)`` input; the output is ``ceil(H / s) x ceil(W / s)``. Zhang's filter is a
  *persistent* buffer, one copy per channel (``filt``, ``(C, 1, k, k)``, in the state_dict); here it is not stored
  in the state_dict, unless the layer is built with ``channels=C``, which keeps Zhang's buffer so that his
  checkpoints load (the ``zhang2019`` recipe of :func:`shiftlab.layers.make_shift_invariant` does).
* **kornia** 0.9 (``kornia.filters.BlurPool2D(kernel_size, stride=2)``, ``blur_pool2d``): the same binomial filter
  and Zhang's padding amounts, ``(k - 1) // 2`` before and ``k // 2`` after, in zero mode only. Its output equals
  ``blur_pool2d(x, k, s, padding="zeros")``, shape included, for every ``k``, stride and map size
  (``tests/test_layers_blurpool.py`` checks this against the installed kornia). ``MaxBlurPool2D(kernel_size,
  stride=2, max_pool_size=2)`` is a stride-1 max pool of ``max_pool_size`` without padding followed by that blur
  pool: ``max_blur_pool2d(x, k, s, m, padding="zeros")``.
* **timm** (``timm.layers.BlurPool2d(channels=None, filt_size=3, stride=2, pad_mode='reflect')``): the same filter,
  reflect padding by default, but symmetric padding of ``((s - 1) + (k - 1)) // 2`` on every side, and ``k > 1``.
  That equals Zhang's for odd ``k`` at stride 2 (``k = 3``: one pixel per side). For even ``k`` it differs: with
  ``k = 4, s = 2`` timm pads two pixels on each side, so its windows start one pixel earlier and a map of even size
  gives one more row and column.

Padding modes are torch's names (``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"``, as
``nn.Conv2d(padding_mode=...)``); the former ``"zero"`` still works, with a ``DeprecationWarning``.

Maps smaller than the padding (a 2x2 map under ``k = 4``), which ``torch.nn.functional.pad`` refuses in reflect
mode, are padded by repeated reflection (numpy's convention) or by wrapping around as often as needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import check_int, check_pair, describe, fail
from shiftlab.kernels import binomial_kernel
from shiftlab.layers._maps import check_maps, check_padding, pad2d

__all__ = ["MAX_BLUR_KERNEL_SIZE", "BlurPool2d", "MaxBlurPool2d", "binomial_filter", "blur_pool2d", "max_blur_pool2d"]

#: The largest binomial filter (Zhang's reference offers sizes 1 to 7).
MAX_BLUR_KERNEL_SIZE = 7


def _check_kernel_size(kernel_size: Any) -> tuple[int, int]:
    sizes = check_pair(kernel_size, "kernel_size", minimum=1)
    if max(sizes) > MAX_BLUR_KERNEL_SIZE:
        fail("kernel_size", f"binomial filters go from 1 to {MAX_BLUR_KERNEL_SIZE}, got {kernel_size!r}")
    return sizes


def binomial_filter(
    kernel_size: int | tuple[int, int] = 4,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The normalised 2-D binomial filter of a blur pool, ``(ky, kx)``.

    A square size is :func:`shiftlab.kernels.binomial_kernel`; for ``(ky, kx)`` it is the outer product of the
    two normalised 1-D binomial rows (the 1-D row of size 1 is ``[1]``: no blur along that axis).

    Example:
        >>> binomial_filter(3) * 16
        tensor([[1., 2., 1.],
                [2., 4., 2.],
                [1., 2., 1.]])
        >>> binomial_filter((1, 3)) * 4
        tensor([[1., 2., 1.]])
    """
    rows, columns = _check_kernel_size(kernel_size)
    if rows == columns:
        return binomial_kernel(rows, device=device, dtype=dtype)
    # The marginals of the square filters are the normalised 1-D rows (exact: powers of two divide integers).
    row = binomial_kernel(rows, dtype=torch.float64).sum(dim=1)
    column = binomial_kernel(columns, dtype=torch.float64).sum(dim=1)
    return torch.outer(row, column).to(device=device, dtype=dtype or torch.float32)


def _blur_pads(kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """Zhang's padding, as ``F.pad`` orders it: ``(k - 1) // 2`` before (left, top), ``ceil((k - 1) / 2)`` after."""
    rows, columns = kernel
    return (columns - 1) // 2, columns // 2, (rows - 1) // 2, rows // 2


def blur_with_filter(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: str) -> torch.Tensor:
    """The computation shared by the blur layers: pad ``x`` Zhang's way, convolve depthwise, subsample.

    ``weight`` is one ``(ky, kx)`` filter for every map, or ``(C, 1, ky, kx)``, one per channel of an
    ``(N, C, H, W)`` input (Zhang's stored layout). A 1x1 filter is plain subsampling, as in Zhang's code.
    """
    height, width = x.shape[-2:]
    maps = x if x.ndim == 4 else x.reshape(-1, 1, height, width)
    channels = maps.shape[1]
    rows, columns = weight.shape[-2:]
    if (rows, columns) == (1, 1):  # no blur: subsampling (Zhang's size-1 filter)
        out = maps[..., :: stride[0], :: stride[1]]
    else:
        padded = pad2d(maps, _blur_pads((rows, columns)), padding)
        kernel = weight if weight.ndim == 4 else weight.expand(channels, 1, rows, columns)
        out = F.conv2d(padded, kernel, stride=stride, groups=channels)
    return out if x.ndim == 4 else out.reshape(*x.shape[:-2], *out.shape[-2:])


def blur_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int] = 4,
    stride: int | tuple[int, int] = 2,
    padding: str = "reflect",
) -> torch.Tensor:
    """Blur every map with a binomial filter, then keep every ``stride``-th pixel (Zhang 2019's BlurPool).

    See the module docstring for the padding convention and how it compares with Zhang's reference, kornia and
    timm. Anti-aliasing makes a network more consistent under shifts; it does not make it exactly invariant.

    Args:
        x: floating-point tensor ``(..., H, W)``; every map is filtered independently.
        kernel_size: binomial filter size, 1 to 7 (or a ``(ky, kx)`` pair); 1 is plain subsampling.
        stride: subsampling factor (or a ``(sy, sx)`` pair).
        padding: ``"reflect"`` (Zhang's default), ``"replicate"``, ``"zeros"`` or ``"circular"`` (torch's names;
            ``"zero"``, the former name, is deprecated).

    Returns:
        The blurred and subsampled maps, same device and dtype.

    Raises:
        ShiftlabError: ``x`` not a non-empty floating tensor with two spatial axes, a kernel size outside 1-7,
            a stride below 1, an unknown padding.

    Shape:
        - x: :math:`(*, H, W)`
        - output: :math:`(*, \\lceil H / s_y \\rceil, \\lceil W / s_x \\rceil)`

    Example:
        >>> x = torch.zeros(1, 1, 6, 6)
        >>> x[..., 3, 3] = 64.0  # a pixel that plain stride-2 subsampling would drop
        >>> blur_pool2d(x, kernel_size=3, stride=2)
        tensor([[[[0., 0., 0.],
                  [0., 4., 4.],
                  [0., 4., 4.]]]])
    """
    maps = check_maps(x, "x")
    kernel = _check_kernel_size(kernel_size)
    strides = check_pair(stride, "stride", minimum=1)
    mode = check_padding(padding)
    return blur_with_filter(maps, binomial_filter(kernel, device=maps.device, dtype=maps.dtype), strides, mode)


def max_blur_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int] = 4,
    stride: int | tuple[int, int] = 2,
    max_pool_size: int | tuple[int, int] = 2,
    padding: str = "reflect",
) -> torch.Tensor:
    """Max pooling at stride 1, then :func:`blur_pool2d` at the stride: Zhang's replacement for ``MaxPool2d``.

    ``MaxPool(k, stride=s)`` becomes ``MaxPool(k, stride=1)`` followed by ``BlurPool(stride=s)``: the maximum is
    taken densely and only the blurred result is subsampled. The max pool has no padding (as in Zhang's ResNet and in
    kornia's ``MaxBlurPool2D``), so it shrinks the map by ``max_pool_size - 1`` first.

    Args:
        x: floating-point tensor ``(..., H, W)`` with ``H, W >= max_pool_size``.
        kernel_size: binomial filter size, 1 to 7.
        stride: subsampling factor of the blur pool.
        max_pool_size: window of the stride-1 max pool.
        padding: padding mode of the blur (see :func:`blur_pool2d`).

    Shape:
        - x: :math:`(*, H, W)`
        - output: :math:`(*, \\lceil (H - m_y + 1) / s_y \\rceil, \\lceil (W - m_x + 1) / s_x \\rceil)`

    Example:
        >>> max_blur_pool2d(torch.eye(5)[None, None], kernel_size=3, stride=2, padding="zeros")
        tensor([[[[0.5625, 0.3125],
                  [0.3125, 0.8750]]]])
    """
    window = check_pair(max_pool_size, "max_pool_size", minimum=1)
    padding = check_padding(padding)  # here, so that a warning for the former "zero" points at the caller
    return blur_pool2d(_dense_max_pool(check_maps(x, "x"), window), kernel_size, stride, padding)


def _dense_max_pool(maps: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The stride-1 max pool of :func:`max_blur_pool2d`, without padding, on ``(..., H, W)``."""
    height, width = maps.shape[-2:]
    if height < window[0] or width < window[1]:
        fail("x", f"map of size {height}x{width} is smaller than the {window[0]}x{window[1]} max pool")
    batch = maps if maps.ndim == 4 else maps.reshape(-1, 1, height, width)
    pooled = F.max_pool2d(batch, window, stride=1)
    return pooled if maps.ndim == 4 else pooled.reshape(*maps.shape[:-2], *pooled.shape[-2:])


def per_channel_filter(
    kernel_size: tuple[int, int],
    channels: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Zhang's stored filter: the binomial filter repeated for every channel, ``(C, 1, ky, kx)``."""
    count = check_int(channels, "channels", minimum=1)
    return binomial_filter(kernel_size, device=device, dtype=dtype).expand(count, 1, *kernel_size).clone()


def check_channels(maps: torch.Tensor, channels: int, layer: str) -> torch.Tensor:
    """``maps`` as ``(N, C, H, W)`` with the ``channels`` a layer's per-channel filter was built for."""
    if maps.ndim != 4 or maps.shape[1] != channels:
        problem = f"expected shape (N, {channels}, H, W): this {layer} keeps one filter per channel"
        fail("x", f"{problem}, got {describe(maps)}")
    return maps


class BlurPool2d(nn.Module):
    """Module form of :func:`blur_pool2d`; channels are taken from the input.

    The filter is a non-persistent buffer (it follows ``.to()`` but is not in the state_dict, so converting a
    model to BlurPool leaves its state_dict keys unchanged) and is cast to the input's dtype. As in timm's layers,
    ``device`` and ``dtype`` say where the buffers are created, and :meth:`reset_parameters` refills them (after
    a model built on the ``meta`` device is materialised with ``to_empty``).

    With ``channels=C`` the layer is Zhang's ``BlurPool(C, filt_size=k, stride=s)`` down to its state_dict: the
    filter is kept per channel in a persistent buffer ``filt`` of shape ``(C, 1, ky, kx)``, so that his checkpoints
    load (a checkpoint of another filter size is refused by its shape), and that buffer, as loaded, is what the
    layer applies; inputs must then be ``(N, C, H, W)``.

    Shape:
        - input: :math:`(*, H, W)`; :math:`(N, C, H, W)` with ``channels=C``
        - output: :math:`(*, \\lceil H / s_y \\rceil, \\lceil W / s_x \\rceil)`

    Example:
        >>> BlurPool2d(kernel_size=4, stride=2)(torch.zeros(2, 8, 9, 16)).shape
        torch.Size([2, 8, 5, 8])
        >>> {key: tuple(value.shape) for key, value in BlurPool2d(3, channels=8).state_dict().items()}
        {'filt': (8, 1, 3, 3)}
    """

    filter: torch.Tensor
    filt: torch.Tensor

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 4,
        stride: int | tuple[int, int] = 2,
        padding: str = "reflect",
        *,
        channels: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = _check_kernel_size(kernel_size)
        self.stride = check_pair(stride, "stride", minimum=1)
        self.padding = check_padding(padding)
        self.register_buffer("filter", binomial_filter(self.kernel_size, device=device, dtype=dtype), persistent=False)
        self.channels: int | None = None
        if channels is not None:
            self.register_buffer("filt", per_channel_filter(self.kernel_size, channels, device=device, dtype=dtype))
            self.channels = self.filt.shape[0]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Refill the filter buffers with the binomial filter, where and as they are (timm's convention)."""
        buffers = [self.filter] + ([self.filt] if self.channels is not None else [])
        for buffer in buffers:
            buffer.copy_(binomial_filter(self.kernel_size, device=buffer.device, dtype=buffer.dtype).expand_as(buffer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = check_maps(x, "x")
        if self.channels is None:
            weight = self.filter
        else:
            maps, weight = check_channels(maps, self.channels, "BlurPool2d"), self.filt
        return blur_with_filter(maps, weight.to(device=maps.device, dtype=maps.dtype), self.stride, self.padding)

    def extra_repr(self) -> str:
        text = f"kernel_size={_compact(self.kernel_size)}, stride={_compact(self.stride)}, padding={self.padding!r}"
        return text if self.channels is None else f"{text}, channels={self.channels}"


class MaxBlurPool2d(nn.Module):
    """Module form of :func:`max_blur_pool2d`: stride-1 max pooling, then a :class:`BlurPool2d` at the stride.

    The blur applies its registered filter buffer (``blur.filter``), built once, where ``device``/``dtype`` say.

    Shape:
        - input: :math:`(*, H, W)`
        - output: as :func:`max_blur_pool2d`

    Example:
        >>> MaxBlurPool2d(kernel_size=4, stride=2)(torch.zeros(2, 8, 16, 16)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 4,
        stride: int | tuple[int, int] = 2,
        max_pool_size: int | tuple[int, int] = 2,
        padding: str = "reflect",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.max_pool_size = check_pair(max_pool_size, "max_pool_size", minimum=1)
        padding = check_padding(padding)  # here, so that a warning for the former "zero" points at the caller
        self.blur = BlurPool2d(kernel_size, stride, padding, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(_dense_max_pool(check_maps(x, "x"), self.max_pool_size))

    def extra_repr(self) -> str:
        return f"max_pool_size={_compact(self.max_pool_size)}"


def _compact(pair: tuple[int, int]) -> int | tuple[int, int]:
    return pair[0] if pair[0] == pair[1] else pair
