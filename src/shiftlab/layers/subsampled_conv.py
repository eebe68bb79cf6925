"""Strided convolutions split in two: the convolution at stride 1, then a blur pool or APS does the subsampling.

``Conv2d(stride=s)`` computes only every ``s``-th output of ``Conv2d(stride=1)``; :class:`BlurConv2d` computes all of
them and blur-pools (Zhang 2019), :class:`APSConv2d` keeps the polyphase component with the largest norm (Chaman &
Dokmanic 2021). Both are ``nn.Conv2d`` subclasses with the same parameters under the same names and no other
persistent state, so a state_dict saved before or after a conversion loads into either, and code that looks for
``nn.Conv2d`` still finds them.

Where the subsampling goes: right after the convolution, inside the layer. The reference ResNets put it one step
later, after the normalisation and ReLU that follow (Zhang: ``Conv -> BN -> ReLU -> BlurPool``; Chaman chooses the
phase on the ReLU's output). Batch normalisation in eval mode is a per-channel affine map and commutes with a
normalised blur and with subsampling; the ReLU does not, so the blur here acts before the ReLU. For APS the
placement does not affect exactness (any shift-equivariant choice works); it can change which phase is chosen.
For a 1x1 convolution without padding, blurring first is the same computation at a quarter of the cost, so
:class:`BlurConv2d` does that (as Zhang's ResNet shortcut does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftlab.errors import check, check_pair
from shiftlab.layers._maps import PaddingMode, pad2d
from shiftlab.layers.aps import APSPool2d
from shiftlab.layers.blurpool import BlurPool2d

__all__ = ["APSConv2d", "BlurConv2d"]


def _check_pre_padding(pre_padding: Any) -> tuple[int, int, int, int] | None:
    if pre_padding is None:
        return None
    values = tuple(pre_padding) if isinstance(pre_padding, (tuple, list)) else ()
    check(
        len(values) == 4 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values),
        "pre_padding",
        f"expected (left, right, top, bottom) non-negative integers, got {pre_padding!r}",
    )
    return values if any(values) else None


class _StrideOneConv2d(nn.Conv2d):
    """A Conv2d that runs at stride 1, after an optional asymmetric circular padding, and hands on to a subsampler."""

    pre_padding: tuple[int, int, int, int] | None

    def _setup(self, stride: Any, pre_padding: Any) -> tuple[int, int]:
        self.pre_padding = _check_pre_padding(pre_padding)
        return check_pair(stride, "stride", minimum=1)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_padding is not None:
            x = pad2d(x, self.pre_padding, "circular")
        return super().forward(x)

    def _adopt(self, conv: nn.Conv2d) -> None:
        """Take ``conv``'s parameters (the same Parameter objects) and train/eval flag."""
        self.weight = conv.weight
        self.bias = conv.bias
        self.train(conv.training)

    @staticmethod
    def _arguments(conv: nn.Conv2d, padding: Any, padding_mode: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args = (conv.in_channels, conv.out_channels, conv.kernel_size)
        kwargs = {
            "stride": conv.stride,
            "padding": conv.padding if padding is None else padding,
            "dilation": conv.dilation,
            "groups": conv.groups,
            "bias": conv.bias is not None,
            "padding_mode": padding_mode or conv.padding_mode,
            "device": "meta",  # no memory for weights that are replaced at once
            "dtype": conv.weight.dtype,
        }
        return args, kwargs

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.pre_padding is None else f"{text}, pre_padding={self.pre_padding} (circular)"


class BlurConv2d(_StrideOneConv2d):
    """A strided convolution made anti-aliased: convolution at stride 1, then :class:`BlurPool2d` at ``stride``.

    Takes ``nn.Conv2d``'s arguments; ``stride`` is the subsampling factor of the blur pool (the convolution itself
    runs at stride 1, and ``self.stride`` says so). ``pre_padding`` is an extra circular padding
    ``(left, right, top, bottom)`` applied before the convolution (used by :func:`make_shift_invariant` where a
    layer's own symmetric padding cannot express the circular padding it needs).

    Shape:
        - input: :math:`(N, C_{in}, H, W)`
        - output: :math:`(N, C_{out}, \\lceil L_h / s_y \\rceil, \\lceil L_w / s_x \\rceil)`, ``L`` the stride-1 size

    Example:
        >>> layer = BlurConv2d(3, 8, 3, stride=2, padding=1, blur_kernel_size=4)
        >>> layer(torch.zeros(1, 3, 16, 15)).shape
        torch.Size([1, 8, 8, 8])
        >>> sorted(layer.state_dict())
        ['bias', 'weight']
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Any = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        blur_kernel_size: int | tuple[int, int] = 4,
        blur_padding: str = "reflect",
        pre_padding: tuple[int, int, int, int] | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, 1, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        subsample = self._setup(stride, pre_padding)
        self.blur = BlurPool2d(blur_kernel_size, subsample, blur_padding)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        blur_kernel_size: int | tuple[int, int] = 4,
        blur_padding: str = "reflect",
        padding: Any = None,
        padding_mode: str | None = None,
        pre_padding: tuple[int, int, int, int] | None = None,
    ) -> BlurConv2d:
        """The anti-aliased form of a strided ``conv``, sharing its Parameter objects (``conv`` is not changed).

        ``padding`` and ``padding_mode`` replace the convolution's own when given.
        """
        args, kwargs = cls._arguments(conv, padding, padding_mode)
        layer = cls(
            *args, **kwargs, blur_kernel_size=blur_kernel_size, blur_padding=blur_padding, pre_padding=pre_padding
        )
        layer._adopt(conv)
        layer.blur.to(conv.weight.device)
        return layer

    def _blur_first(self) -> bool:
        # conv1x1(blur(x)) == blur(conv1x1(x)) for a normalised blur, except that zero padding would blur the bias.
        return (
            self.kernel_size == (1, 1)
            and self.padding in ((0, 0), "valid")
            and self.pre_padding is None
            and (self.bias is None or self.blur.padding != "zeros")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._blur_first():
            return super().forward(self.blur(x))
        return self.blur(self._convolve(x))


class APSConv2d(_StrideOneConv2d):
    """A strided convolution with adaptive polyphase sampling: convolution at stride 1, then :class:`APSPool2d`.

    Takes ``nn.Conv2d``'s arguments; ``stride`` is the subsampling factor of the APS layer (the convolution runs at
    stride 1). The APS layer is ``self.aps``: its ``last_phase`` and ``link`` (see :class:`PhaseLink`) are there.

    Shape:
        - input: :math:`(N, C_{in}, H, W)`
        - output: :math:`(N, C_{out}, \\lceil L_h / s_y \\rceil, \\lceil L_w / s_x \\rceil)`, ``L`` the stride-1 size

    Example:
        >>> layer = APSConv2d(3, 8, 3, stride=2, padding=1, padding_mode="circular")
        >>> layer(torch.zeros(2, 3, 16, 16)).shape, layer.aps.last_phase.shape
        (torch.Size([2, 8, 8, 8]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Any = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        norm: str = "l2",
        aps_kernel_size: int | tuple[int, int] = 1,
        aps_padding: str = "circular",
        pre_padding: tuple[int, int, int, int] | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, 1, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        subsample = self._setup(stride, pre_padding)
        self.aps = APSPool2d(subsample, norm, kernel_size=aps_kernel_size, padding=aps_padding)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        norm: str = "l2",
        aps_kernel_size: int | tuple[int, int] = 1,
        aps_padding: str = "circular",
        padding: Any = None,
        padding_mode: str | None = None,
        pre_padding: tuple[int, int, int, int] | None = None,
    ) -> APSConv2d:
        """The APS form of a strided ``conv``, sharing its Parameter objects (``conv`` is not changed)."""
        args, kwargs = cls._arguments(conv, padding, padding_mode)
        layer = cls(
            *args,
            **kwargs,
            norm=norm,
            aps_kernel_size=aps_kernel_size,
            aps_padding=aps_padding,
            pre_padding=pre_padding,
        )
        layer._adopt(conv)
        layer.aps.to(conv.weight.device)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._convolve(x)
        if out.ndim == 3:  # an unbatched (C, H, W) input, which Conv2d accepts
            return self.aps(out[None])[0]
        return self.aps(out)
