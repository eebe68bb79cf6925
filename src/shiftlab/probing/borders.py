"""How a model's layers treat the border of their maps, and the shift mode that measures what it does: ``auto``.

A circular shift wraps the image around. A layer that treats its map as periodic (circular padding, or windows
that tile the map without crossing its border) commutes with it exactly; a layer that treats the border as an
edge (zero padding, a "valid" window that cuts the border) sees the wrap-around seam, and under circular shifts
that seam, not the layer, dominates the error. ``crop`` shifts (a window moved over a larger image, Zhang 2019) show
every layer real image content instead, and the probe leaves out the pixels whose receptive field reaches the
border. So ``mode="auto"`` (:func:`choose_mode`) takes:

* ``circular`` when no 2-D layer of the model treats the border as an edge (:func:`edge_layers` is empty): every
  padding is circular, or there is none;
* ``crop`` otherwise.

A 2-D layer treats the border as an edge (:func:`edge_layers`) when it

* pads with anything but circular padding: a ``Conv2d`` with padding and ``padding_mode`` zeros, reflect or
  replicate; ``MaxPool2d`` (which pads with -inf) or ``AvgPool2d`` with padding; ``ZeroPad2d``, ``ConstantPad2d``,
  ``ReflectionPad2d``, ``ReplicationPad2d``; shiftlab's ``BlurPool2d`` (and what contains one) and ``Convolve``
  other than circular;
* cuts the border: its window (``dilation * (k - 1) + 1`` pixels) is wider than its stride and its padding, in all
  per axis (its own plus a padding module right before it in an ``nn.Sequential``), is less than window minus
  stride, so its output is smaller than ``H / stride`` (a "valid" convolution, Zhang's stride-1 max pool in
  ``MaxBlurPool2d``, an ``LPPool2d`` or ``Unfold`` with overlapping windows). timm's ``Conv2dSame`` and
  ``MaxPool2dSame`` (``pad_type='same'``) have no padding of their own and pad with zeros inside their forward:
  this rule finds them too;
* is a ``ConvTranspose2d`` whose window is not its stride (its overlapping outputs are cut at the border), or an
  ``nn.Upsample`` that interpolates (bilinear, bicubic: the border pixel is repeated).

A layer whose window is no wider than its stride (a ViT's or Swin's patch embedding, ``kernel = stride``; a 1x1
convolution) has no border to treat: it tiles the map, and a model made only of such layers, per-token layers and
attention gets ``circular`` (a fixed position embedding then breaks equivariance in either mode, and the probe
measures exactly that). Adaptive pooling never pads and is not counted; nor are 1-D and 3-D layers (in 2-D
networks they work on channels, as in channel attention).

What cannot be seen: padding or cropping written inside a ``forward`` method (``F.pad``, ``F.conv2d(padding=1)``,
``F.interpolate``, Swin's padding of maps to a multiple of the window and its shifted-window mask), and layers of
other libraries that pad with their own code. A model that does so but has no visible edge layer gets
``circular``; say ``mode="crop"`` for it. The choice and its reason travel with every result
(``protocol["mode"]``, ``protocol["mode_reason"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from shiftlab.errors import check_choice
from shiftlab.layers.blurpool import BlurPool2d, MaxBlurPool2d
from shiftlab.layers.circular import external_padding
from shiftlab.layers.discovery import Geometry, geometry
from shiftlab.layers.subsampled_conv import APSConv2d, BlurConv2d
from shiftlab.ops import Convolve
from shiftlab.shifts import SHIFT_MODES, ShiftMode

__all__ = ["AUTO", "PROBE_MODES", "EdgeLayer", "ModeChoice", "choose_mode", "edge_layers"]

#: The mode that chooses between ``circular`` and ``crop`` from the model (see the module docstring).
AUTO = "auto"
#: Every mode the probe, the explorer and the assertions take: ``auto`` and the shift modes.
PROBE_MODES: tuple[str, ...] = (AUTO, *SHIFT_MODES)
#: Layer names quoted per kind of edge in a reason; the rest are counted.
QUOTED = 3

_PAD_MODULES: dict[type[nn.Module], str] = {
    nn.ZeroPad2d: "pad with zeros",
    nn.ConstantPad2d: "pad with a constant",
    nn.ReflectionPad2d: "pad by reflection",
    nn.ReplicationPad2d: "pad by replication",
}
_PADDING_MODES = {
    "zeros": "pad with zeros",
    "same": "pad with zeros",
    "reflect": "pad by reflection",
    "replicate": "pad by replication",
}
CUT = "cut the border without padding"
CUT_OR_OWN = "pad in their own forward or cut the border"
INTERPOLATE = "interpolate, repeating the border pixel"
TRANSPOSED = "are transposed convolutions cut at the border"


@dataclass(frozen=True)
class EdgeLayer:
    """A layer that treats the border of its map as an edge: its name (``""`` for the model itself), type, and how
    (``"pad with zeros"``...)."""

    name: str
    type: str
    how: str


#: The mode a measurement uses and why: a :class:`~shiftlab.shifts.ShiftMode` (``mode``, ``reason``).
ModeChoice = ShiftMode


def _cuts(shape: Geometry, extra: tuple[int, int] = (0, 0)) -> bool:
    """Whether a window of this geometry, with ``extra`` padding pixels in all per axis, makes its output smaller than
    ``H / stride`` for ``H`` a multiple of the stride (padding below ``extent - stride`` per axis, in all)."""
    own = shape.total_padding()
    return any(own[axis] + extra[axis] < shape.extent[axis] - shape.stride[axis] for axis in (0, 1))


def _how(module: nn.Module, extra: tuple[int, int]) -> str | None:
    """How one layer treats the border (``None``: it wraps around, tiles the map, or has no window); ``extra``: the
    padding, in all per axis, of a padding module right before it."""
    if isinstance(module, tuple(_PAD_MODULES)):
        padding = tuple(module.padding)  # type: ignore[arg-type]
        return _PAD_MODULES[type(module)] if any(padding) else None
    if isinstance(module, BlurPool2d):
        return None if module.padding == "circular" else _PADDING_MODES[module.padding]
    if isinstance(module, MaxBlurPool2d):  # its blur is a child of its own; its max pool has no padding
        return CUT if module.max_pool_size != (1, 1) else None
    if isinstance(module, Convolve):
        if module.padding == "circular":
            return None
        return _PADDING_MODES["same"] if module.padding == "same" else (CUT if module.kernel.numel() > 1 else None)
    if isinstance(module, nn.ConvTranspose2d):
        window = tuple(d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size))
        tiles = window == tuple(module.stride) and not any(module.padding) and not any(module.output_padding)
        return None if tiles else TRANSPOSED
    if isinstance(module, nn.Upsample):
        return INTERPOLATE if module.mode not in ("nearest", "nearest-exact") else None
    if isinstance(module, (nn.LPPool2d, nn.Unfold)):
        return _window_how(module, extra)
    shape = geometry(module)
    if shape is None:
        return None
    padded = any(shape.total_padding())
    if isinstance(module, nn.Conv2d):
        pre = getattr(module, "pre_padding", None) if isinstance(module, (BlurConv2d, APSConv2d)) else None
        if pre is not None:  # shiftlab's stride-1 convolutions pad circularly before their own padding
            extra = (extra[0] + pre[2] + pre[3], extra[1] + pre[0] + pre[1])
        if padded and module.padding_mode != "circular":
            return _PADDING_MODES[module.padding_mode]
    elif padded:  # pooling pads with -inf (max) or zeros (average, or leaves the padding out of the average)
        if isinstance(module, nn.AvgPool2d) and not module.count_include_pad:
            return "pad and leave the padding out of the average"
        return "pad with -inf" if isinstance(module, nn.MaxPool2d) else "pad with zeros"
    if not _cuts(shape, extra):
        return None
    own_forward = isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward
    own_forward |= isinstance(module, nn.MaxPool2d) and type(module).forward is not nn.MaxPool2d.forward
    own_forward |= isinstance(module, nn.AvgPool2d) and type(module).forward is not nn.AvgPool2d.forward
    return CUT_OR_OWN if own_forward and not isinstance(module, (BlurConv2d, APSConv2d)) else CUT


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window_how(module: nn.Module, extra: tuple[int, int]) -> str | None:
    """LPPool2d and Unfold: windows, a stride, and (Unfold) zero padding."""
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = _pair(getattr(module, "padding", 0))
    if any(padding):
        return "pad with zeros"
    extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    return CUT if _cuts(Geometry(extent, stride, (0, 0), kernel), extra) else None


def edge_layers(model: nn.Module) -> list[EdgeLayer]:
    """The 2-D layers of ``model`` that treat the border of their map as an edge, in module order (see the module
    docstring for the rule).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"))
        >>> edge_layers(net)
        [EdgeLayer(name='0', type='Conv2d', how='pad with zeros')]
        >>> edge_layers(nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.Flatten(2)))  # a patch embedding
        []
    """
    external = _padding_before(model)  # (a non-circular padding module is an edge layer of its own)
    found = []
    for name, module in model.named_modules():
        left, right, top, bottom = external.get(id(module), (0, 0, 0, 0))
        how = _how(module, (top + bottom, left + right))
        if how is not None:
            found.append(EdgeLayer(name, type(module).__name__, how))
    return found


def _padding_before(model: nn.Module) -> dict[int, tuple[int, int, int, int]]:
    """For each layer right after a padding module in an ``nn.Sequential`` (or first in an ``nn.Sequential`` right
    after one, as a conversion nests them): that padding, ``(left, right, top, bottom)``."""
    found = {layer_id: pads for layer_id, (_, pads) in external_padding(model).items()}
    for module in model.modules():
        if isinstance(module, nn.Sequential) and id(module) in found:
            first: nn.Module = module
            while isinstance(first, nn.Sequential) and len(first) > 0:
                first = first[0]
            found.setdefault(id(first), found[id(module)])
    return found


def choose_mode(model: object, mode: str | ShiftMode = AUTO) -> ShiftMode:
    """The shift mode to measure ``model`` with: ``mode`` itself when it is a shift mode, else the ``auto`` choice.

    This is where a mode given as a string is validated, once: a :class:`~shiftlab.shifts.ShiftMode` passes
    through.

    ``auto``: ``circular`` when no layer of the model treats the border as an edge (:func:`edge_layers`), ``crop``
    otherwise; a callable that is not an ``nn.Module`` shows no layers, and gets ``circular``. The reason names the
    layers that decided it.

    Raises:
        ShiftlabError: an unknown mode.

    Example:
        >>> choose_mode(nn.Conv2d(3, 8, 3, padding=1)).mode
        'crop'
        >>> choose_mode(nn.Conv2d(3, 8, 3, padding=1)).reason
        'auto: 1 layer pads with zeros (the model)'
        >>> choose_mode(nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"))
        ShiftMode(mode='circular', reason='auto: every padding is circular (1 layer: the model)')
        >>> choose_mode(nn.Conv2d(3, 8, 3, padding=1), "zero")
        ShiftMode(mode='zero', reason='given')
    """
    if isinstance(mode, ShiftMode):
        return mode
    check_choice(mode, "mode", PROBE_MODES)
    if mode != AUTO:
        return ShiftMode(mode, "given")
    if not isinstance(model, nn.Module):
        return ShiftMode("circular", "auto: a function, not an nn.Module: its padding cannot be seen")
    edges = edge_layers(model)
    if not edges:
        circular = [name for name, module in model.named_modules() if _pads_circularly(module)]
        if circular:
            layers = f"{_count(circular, 'layer')}: {_names(circular)}"
            return ShiftMode("circular", f"auto: every padding is circular ({layers})")
        return ShiftMode(
            "circular",
            "auto: no layer pads or cuts the border (padding written inside a forward, such as F.pad, cannot be "
            "seen: give mode crop if the model pads there)",
        )
    groups: dict[str, list[str]] = {}
    for edge in edges:
        groups.setdefault(edge.how, []).append(edge.name)
    parts = [f"{_count(names, 'layer')} {_verb(how, len(names))} ({_names(names)})" for how, names in groups.items()]
    return ShiftMode("crop", "auto: " + "; ".join(parts))


def _pads_circularly(module: nn.Module) -> bool:
    if isinstance(module, nn.CircularPad2d):
        return True
    if isinstance(module, (BlurPool2d, Convolve)):
        return module.padding == "circular"
    if isinstance(module, (BlurConv2d, APSConv2d)) and module.pre_padding is not None:
        return True
    shape = geometry(module)
    padded = shape is not None and any(shape.total_padding())
    return isinstance(module, nn.Conv2d) and padded and module.padding_mode == "circular"


def _count(names: list[str], noun: str) -> str:
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}"


def _verb(how: str, count: int) -> str:
    """``how`` for one layer or several: "pad with zeros" -> "pads with zeros", "are ..." -> "is ..."."""
    if count != 1:
        return how
    if how.startswith("are "):
        return "is a " + how.removeprefix("are ").replace("convolutions", "convolution", 1)
    first, _, rest = how.partition(" ")
    return f"{first}s {rest}"


def _names(names: list[str]) -> str:
    """The first names (``the model`` for the model itself), and how many more."""
    quoted = ", ".join(name or "the model" for name in names[:QUOTED])
    return quoted + (f" and {len(names) - QUOTED} more" if len(names) > QUOTED else "")
