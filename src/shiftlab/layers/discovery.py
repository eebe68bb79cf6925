"""Finding the layers of a model that subsample, and their geometry (window, stride, padding).

A downsampling layer is a strided ``nn.Conv2d``, ``nn.MaxPool2d`` or ``nn.AvgPool2d`` (or shiftlab's own
:class:`shiftlab.ops.MaxPool`), wherever it sits: torchvision's ResNet (stem, max pool, the blocks' strided
convolutions and their ``downsample`` shortcuts), VGG, MobileNet, EfficientNet, ConvNeXt, or a user's module.
Global and adaptive pooling is not downsampling in this sense and is left alone. Subsampling written inside a
``forward`` method (``F.max_pool2d``, ``x[..., ::2, ::2]``) cannot be seen from the modules and is not found.

Layers that subsample in a way no recipe covers (a strided ``ConvTranspose2d``, ``FractionalMaxPool2d``, a strided
``LPPool2d``, 1-D and 3-D layers, ``PixelUnshuffle``, a ``MaxPool2d`` returning indices, a subclass with its own
``forward``) are refused with a message that names them, rather than skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from shiftlab.errors import fail
from shiftlab.ops import MaxPool

__all__ = ["SUPPORTED_TEXT", "Geometry", "find_downsampling_layers", "geometry", "is_shiftlab_layer"]

SUPPORTED_TEXT = "make_shift_invariant converts strided Conv2d, MaxPool2d and AvgPool2d layers"

_STRIDED_UNSUPPORTED: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Conv1d, nn.Conv3d,
    nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d, nn.Unfold,
)  # fmt: skip
_CONVERTIBLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _strided(module: nn.Module) -> bool:
    stride = getattr(module, "stride", 1)
    if stride is None:  # LPPool's default: the window
        stride = getattr(module, "kernel_size", 1)
    return any(step > 1 for step in ((stride,) if isinstance(stride, int) else stride))


def is_shiftlab_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of the layers a conversion puts in (the model was converted already)."""
    from shiftlab.layers.aps import APSPool2d
    from shiftlab.layers.blurpool import BlurPool2d, MaxBlurPool2d
    from shiftlab.layers.subsampled_conv import APSConv2d, BlurConv2d

    return isinstance(module, (BlurPool2d, MaxBlurPool2d, APSPool2d, BlurConv2d, APSConv2d))


def _own_forward(module: nn.Module) -> bool:
    """A subclass of a convertible type that overrides ``forward`` (a conversion would bypass it)."""
    base = next(kind for kind in _CONVERTIBLE if isinstance(module, kind))
    return type(module).forward is not base.forward


def _refusal(module: nn.Module) -> str | None:
    """Why a subsampling ``module`` cannot be converted, or ``None``."""
    kind = type(module).__name__
    if isinstance(module, (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)):
        return f"{kind} subsamples at random fractional positions, which no recipe covers; {SUPPORTED_TEXT}"
    if isinstance(module, nn.PixelUnshuffle):
        return f"{kind} subsamples by moving pixels into channels, which no recipe covers; {SUPPORTED_TEXT}"
    if isinstance(module, _STRIDED_UNSUPPORTED) and _strided(module):
        return f"a strided {kind} (stride {module.stride}) is not supported; {SUPPORTED_TEXT}"
    if isinstance(module, _CONVERTIBLE) and _strided(module):
        if _own_forward(module):
            return (
                f"{kind} has its own forward, which a conversion would bypass; {SUPPORTED_TEXT} of exactly those types"
            )
        if isinstance(module, nn.MaxPool2d) and module.return_indices:
            return f"a MaxPool2d with return_indices=True (for MaxUnpool2d) is not supported; {SUPPORTED_TEXT}"
    return None


def _is_downsampling(module: nn.Module) -> bool:
    return (isinstance(module, _CONVERTIBLE) or isinstance(module, MaxPool)) and _strided(module)


def find_downsampling_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every layer of ``model`` that subsamples and can be converted, as ``(name, module)`` in model order.

    Layers a conversion already put in (blur pools, APS) are skipped.

    Raises:
        ShiftlabError: a layer subsamples in a way no recipe covers (the message names it).

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
        >>> [name for name, _ in find_downsampling_layers(net)]
        ['0', '1']
    """
    found = []
    for name, module in model.named_modules():
        if is_shiftlab_layer(module):
            continue
        problem = _refusal(module)
        if problem is not None:
            fail(f"layer '{name or type(module).__name__}' ({type(module).__name__})", problem)
        if _is_downsampling(module):
            found.append((name, module))
    return found


@dataclass(frozen=True)
class Geometry:
    """A spatial layer's window extent (``dilation * (k - 1) + 1``), stride and symmetric padding, per axis.

    ``padding`` is ``None`` for ``padding="same"`` (torch then pads ``extent - 1`` in all, the extra pixel after).
    """

    extent: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | None
    kernel: tuple[int, int]

    def total_padding(self) -> tuple[int, int]:
        if self.padding is None:
            return self.extent[0] - 1, self.extent[1] - 1
        return 2 * self.padding[0], 2 * self.padding[1]


def geometry(module: nn.Module) -> Geometry | None:
    """The geometry of a convolution or pooling layer (``None`` for other layers)."""
    if isinstance(module, nn.Conv2d):
        kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
        padding: tuple[int, int] | None
        if isinstance(module.padding, str):
            padding = (0, 0) if module.padding == "valid" else None
        else:
            padding = _pair(module.padding)
        extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        return Geometry(extent, _pair(module.stride), padding, kernel)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)
        dilation = _pair(module.dilation) if isinstance(module, nn.MaxPool2d) else (1, 1)
        extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        return Geometry(extent, _pair(module.stride), _pair(module.padding), kernel)
    if isinstance(module, MaxPool):
        return Geometry(_pair(module.kernel_size), _pair(module.stride), (0, 0), _pair(module.kernel_size))
    return None
