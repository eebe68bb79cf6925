"""Where the spatial axes of a layer's output are: its layout, found from the model, never guessed from one shape.

A watched output is one of:

``NCHW``
    a channels-first map ``(N, C, H, W)`` (convolutions, pooling, batch norm, most CNN blocks);
``NHWC``
    a channels-last map ``(N, H, W, C)`` (the LayerNorm and Linear layers of ConvNeXt and Swin);
``tokens``
    a token sequence ``(N, P + gh * gw, C)``: ``P`` prefix tokens (class, distillation, register tokens)
    followed by ``gh x gw`` spatial tokens in row-major order (ViT). The spatial tokens are measured as a
    map; the prefix tokens as a separate, global row (invariance is expected of them). Also found on axis 2 of a
    4-D output ``(N, heads, P + gh * gw, d)`` ("head tokens": CoaT's convolutional relative position encoding),
    whose ``heads * d`` values per token are its channels;
``global``
    no spatial axis: a vector ``(N, C)`` (however long), an output whose shape does not follow the input's
    size, one token ``(N, 1, C)`` (CaiT's class token alone), or a 1x1 map; compared as a whole (invariance),
    which reads no axis;
``unknown``
    none of the above could be established: the row says so and carries no metric.

The rules, in order (:func:`plan_layouts`):

1. **Several outputs per image.** An output whose first axis is not 1 for one image folds patches or windows into
   the batch axis (MobileViT's transformer ``(4 N, tokens, C)``, Swin's and MaxViT's window attention): no layout
   reads that axis, so it is ``unknown``, whatever an override says. The probe's default layers leave such modules
   out (and say so).
2. **An override** for the layer, by name or glob pattern (``layouts={"features.*": "NHWC"}``; on the
   command line ``--layout PATTERN=LAYOUT``). The first matching pattern wins. A ``tokens`` override finds its
   prefix and grid as rules 4 and 5 do, or from the stride when one is given (``strides=``).
3. **What the module type declares**: a 4-D output of a convolution, pooling, batch or instance norm
   layer is ``NCHW`` (PyTorch's API says so).
4. **Two input sizes.** The model runs once more on one image ``64`` pixels taller and wider. The axes whose
   length follows the input's size are the spatial ones: axes 2 and 3 of a 4-D output make it ``NCHW``,
   axes 1 and 2 ``NHWC``; axis 1 of a 3-D output (axis 2 alone of a 4-D one: head tokens) makes it ``tokens``,
   with the patch size ``s``, prefix ``P`` and rounding (``floor`` or ``ceil`` of ``H / s``) that fit both sizes,
   preferring patch sizes that divide both; an output whose shape does not change is ``global``. Anything else
   (another axis changes) is ``unknown``.
5. **One input size**, when the model refuses another (timm's and torchvision's ViT, Swin, CaiT, LeViT, CoaT,
   MaxViT), from one forward pass that records every module. A *grid of the input* is ``rounding(H / s) x
   rounding(W / s)`` (down, or up) for a stride ``s`` of the chain ``b * 2**k`` (``k >= 0``), where ``b`` is the
   stride of the first ``NCHW`` map of the pass (the stem or patch embedding, whose size divides the input's):
   stages downsample by two. Then:

   - a 2-D output, or one token ``(N, 1, C)``, is ``global``;
   - a 3-D output ``(N, L, C)`` is ``tokens`` when ``L = P + h * w`` for the last ``NCHW`` map ``(h, w)``
     before it (the patch-grid rule), with ``0 <= P <= 16``; else when ``L = P + gh * gw`` for a grid of the input
     (LeViT's 49 = 7 x 7 and 16 = 4 x 4 tokens, at strides 32 and 64): the largest such grid, the fewest prefix
     tokens, and the row's source names any other split that fits;
   - a 4-D output is ``NCHW`` when its axes 2 and 3, and not 1 and 2, are the last ``NCHW`` map or a grid of the
     input (``NHWC`` the other way round: Swin's stages at strides 4, 8, 16, 32); when neither, and axis 2 is a
     prefix plus the last ``NCHW`` map (and axis 3 another length), it is head tokens.
6. Otherwise ``unknown``.

Strides, per axis, in input pixels: an override (``strides={"pattern": (sy, sx)}``, ``--stride
PATTERN=SY,SX``) first; with two input sizes, ``64 / (h' - h)`` (exact for every stride that divides 64, and
within a pixel for the others); with one size, the stride of the chain whose grid the map is, else (or for an axis
whose length does not follow the input: adaptive pooling to a fixed size) the ratio of the sizes
(:func:`shiftlab.probing.equivariance.feature_stride`).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import ShiftlabError, check, check_pair, fail, first_line
from shiftlab.ops import Convolve, MaxPool
from shiftlab.outputs import output_parts

__all__ = [
    "FOLDED",
    "GROWTH",
    "LAYOUT_KINDS",
    "MAX_PREFIX",
    "Layout",
    "LayoutPlan",
    "feature_stride",
    "parse_layout",
    "plan_layouts",
    "resolve_overrides",
]

LAYOUT_KINDS: tuple[str, ...] = ("NCHW", "NHWC", "tokens", "global", "unknown")
#: Pixels added to the input's height and width for the second size.
GROWTH = 64
#: The most prefix tokens (class, distillation, register) the patch-grid rule accepts.
MAX_PREFIX = 16
#: Why an output whose first axis holds several outputs per image (MobileViT's transformer) has no layout.
FOLDED = "patches or windows folded into the batch axis"

#: Module types whose 4-D output is ``(N, C, H, W)`` by PyTorch's own API.
DECLARE_NCHW: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.LPPool2d, nn.FractionalMaxPool2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.ZeroPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d, nn.PixelShuffle, nn.PixelUnshuffle,
    Convolve, MaxPool,
)  # fmt: skip


def feature_stride(input_size: Sequence[int], output_size: Sequence[int]) -> tuple[int, int]:
    """Cumulative stride of a map, from the input and output sizes, per axis.

    Padding and dropped border pixels make ``H / h`` inexact (a 114-pixel input
    gives 8 pixels after a stride of 16; a valid 3x3 convolution turns 6 pixels
    into 4), so: more than half the pixels left means stride 1; otherwise a
    power of two ``p`` with ``|H / p - h| < 1`` is preferred, else ``round(H / h)``.
    Pass the stride explicitly where this guess cannot know better.

    Example:
        >>> feature_stride((224, 224), (56, 56))
        (4, 4)
        >>> feature_stride((114, 99), (8, 99))
        (16, 1)
        >>> feature_stride((90, 6), (30, 4))
        (3, 1)
    """
    return tuple(_axis_stride(size_in, size_out) for size_in, size_out in zip(input_size[-2:], output_size[-2:]))  # type: ignore[return-value]


def _axis_stride(size_in: int, size_out: int) -> int:
    if size_out > size_in / 2 + 0.5:
        return 1
    power = 2
    while power <= size_in:
        if abs(size_in / power - size_out) < 1:
            return power
        power *= 2
    return max(1, round(size_in / size_out))


@dataclass(frozen=True)
class Layout:
    """The layout of one watched output, its stride, and how both were found.

    ``prefix`` and ``rounding`` describe tokens: ``P`` leading tokens, then a grid of ``rounding(H / s)`` by
    ``rounding(W / s)`` tokens for an input of ``H x W`` and a patch size ``s``. ``doubt`` names the other readings
    that fit the shapes as well (empty when there are none). ``heads``: the tokens are axis 2 of
    a 4-D output ``(N, heads, P + gh * gw, d)`` (CoaT's convolutional relative position encoding), whose heads and
    head channels are read together as ``heads * d`` channels.
    """

    kind: str
    stride: tuple[int, int] | None = None
    prefix: int = 0
    rounding: str = "floor"
    source: str = ""
    heads: bool = False
    doubt: str = ""

    @property
    def spatial(self) -> bool:
        return self.kind in ("NCHW", "NHWC", "tokens")

    def grid(self, input_size: Sequence[int]) -> tuple[int, int]:
        """The token grid ``(gh, gw)`` for an input of ``input_size`` (tokens only)."""
        assert self.stride is not None
        step = math.floor if self.rounding == "floor" else math.ceil
        return step(input_size[0] / self.stride[0]), step(input_size[1] / self.stride[1])

    def describe(self) -> str:
        """The layout in a few words, for tables."""
        if self.kind == "tokens":
            name = "head tokens" if self.heads else "tokens"
            return f"{name} ({self.prefix} prefix)" if self.prefix else name
        return self.kind

    def split(self, output: torch.Tensor, input_size: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(map, prefix)`` of an output: the spatial part as ``(N, C, h, w)`` (or the whole output, for
        ``global``), and the prefix tokens ``(N, P, C)`` (tokens only). ``(None, None)`` when the output does
        not have the shape this layout expects (it is then unknown for this input)."""
        if self.kind == "NCHW":
            return (output, None) if output.ndim == 4 else (None, None)
        if self.kind == "NHWC":
            return (output.permute(0, 3, 1, 2), None) if output.ndim == 4 else (None, None)
        if self.kind == "tokens":
            if self.heads and output.ndim == 4:
                output = output.transpose(1, 2).flatten(2)  # (N, tokens, heads * d)
            elif self.heads or output.ndim != 3:
                return None, None
            rows, columns = self.grid(input_size)
            if output.shape[1] != self.prefix + rows * columns or rows * columns == 0:
                return None, None
            spatial = output[:, self.prefix :].unflatten(1, (rows, columns)).permute(0, 3, 1, 2)
            return spatial, (output[:, : self.prefix] if self.prefix else None)
        if self.kind == "global":
            return output, None
        return None, None


def parse_layout(text: str) -> str:
    """A layout name, case-insensitive (``nchw``, ``NHWC``, ``tokens``, ``global``).

    Example:
        >>> parse_layout("nhwc")
        'NHWC'
    """
    names = {kind.lower(): kind for kind in LAYOUT_KINDS if kind != "unknown"}
    found = names.get(str(text).strip().lower())
    if found is None:
        fail("layout", f"must be one of {', '.join(names.values())}, got {text!r}")
    return found


def _pairs(overrides: Any, name: str) -> list[tuple[str, Any]]:
    """``{pattern: value}`` or ``["pattern=value", ...]`` as a list of (pattern, value)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(pattern), value) for pattern, value in overrides.items()]
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = []
    for item in overrides:
        pattern, equals, value = str(item).partition("=")
        check(equals and pattern.strip() and value.strip(), name, f"expected PATTERN=VALUE, got {item!r}")
        pairs.append((pattern.strip(), value.strip()))
    return pairs


def resolve_overrides(
    layouts: Any = None, strides: Any = None
) -> tuple[list[tuple[str, str]], list[tuple[str, tuple[int, int]]]]:
    """Validated overrides: ``[(pattern, layout)]`` and ``[(pattern, (sy, sx))]``.

    Each is a mapping ``{pattern: value}`` or a list of ``"PATTERN=VALUE"`` strings (as the command line gives
    them); strides are ``(sy, sx)`` pairs, an integer, or text ``"SY,SX"``.

    Example:
        >>> resolve_overrides({"features.*": "nhwc"}, ["head=4,2"])
        ([('features.*', 'NHWC')], [('head', (4, 2))])
    """
    layout_pairs = [(pattern, parse_layout(value)) for pattern, value in _pairs(layouts, "layouts")]
    stride_pairs = []
    for pattern, value in _pairs(strides, "strides"):
        if isinstance(value, str):  # "4", "4,2" or "4x2", as the command line gives it
            parts = [part.strip() for part in re.split(r"[,x]", value)]
            value = [int(part) if part.isdigit() else part for part in parts]
            value = value[0] if len(value) == 1 else value
        stride_pairs.append((pattern, check_pair(value, f"stride of {pattern!r}", minimum=1)))
    return layout_pairs, stride_pairs


def _first_match(label: str, pairs: Sequence[tuple[str, Any]]) -> Any:
    name = label.split(":")[0]  # a module called twice: its second call is "name:2"
    for pattern, value in pairs:
        if pattern in (label, name) or fnmatch.fnmatchcase(label, pattern) or fnmatch.fnmatchcase(name, pattern):
            return value
    return None


@dataclass(frozen=True)
class _Before:
    """What one forward pass at one input size showed before an output: the last ``NCHW`` map ``(h, w)``, and the
    stride of the first one (of more than one pixel, whose size divides the input's): the one-size rules read them."""

    last_map: tuple[int, int] | None
    base: tuple[int, int] | None


@dataclass
class _Seen:
    """One module output in a forward pass."""

    label: str | None  # the watched label ("name", "name:2", "output"), None for a module that is not watched
    declares_nchw: bool
    shape: tuple[int, ...] | None  # None: not a floating-point tensor


def record_outputs(
    model: nn.Module, watched: Sequence[tuple[str, nn.Module]], batch: torch.Tensor, output_key: str | None = None
) -> list[_Seen]:
    """Every module's output shape in one forward pass, in call order, labelled as the probe labels watched ones.

    The model's own output is its main tensor ``output`` and every other tensor ``output.KEY``
    (:func:`shiftlab.outputs.output_parts`, with ``output_key`` overriding the rule).
    """
    names = {id(module): name for name, module in watched}
    seen: list[_Seen] = []
    calls: dict[str, int] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        count = 0
        name = "" if module is model else names.get(id(module))
        if name is not None:
            count = calls.get(name, 0) + 1
            calls[name] = count
        parts = output_parts(output, output_key) if module is model else [("", output)]
        for part, value in parts:
            label = None
            if name is not None:
                base = (name or "output") + (f".{part}" if part else "")
                label = base if count == 1 else f"{base}:{count}"
            tensor = isinstance(value, torch.Tensor) and value.is_floating_point()
            declares = isinstance(module, DECLARE_NCHW) and tensor and value.ndim == 4
            seen.append(_Seen(label, declares, tuple(value.shape) if tensor else None))

    handles = [module.register_forward_hook(hook) for _, module in model.named_modules()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


class LayoutPlan:
    """The layout of every watched output, resolved when the probe first sees it, and how the plan was made.

    Made by :func:`plan_layouts` from one forward pass of one image at another size (or, for a model that takes one
    size only, one pass at the probed size, recording every module). :meth:`layout` then resolves a watched
    output from its shape at the probed size, the first time the probe sees it, and remembers it.
    """

    def __init__(
        self,
        size: tuple[int, int],
        other_size: tuple[int, int] | None,
        other: dict[str, tuple[int, ...] | None],
        one_size: dict[str, _Before],
        overrides: tuple[Sequence[tuple[str, str]], Sequence[tuple[str, tuple[int, int]]]],
        method: str,
        folded: dict[str, int] | None = None,
    ) -> None:
        self.size = size
        self.other_size = other_size
        self.other = other  # label -> its shape at the other size (two-size plans)
        self.one_size = one_size  # label -> what the pass showed before it (one-size plans)
        self.overrides = overrides
        self.method = method
        #: Watched modules whose output folds patches or windows into the batch axis: name -> outputs per image.
        self.folded = folded or {}
        self.layouts: dict[str, Layout] = {}

    def layout(self, label: str, module: nn.Module, shape: tuple[int, ...]) -> Layout:
        """The layout of the output ``label`` of ``module``, whose shape for one image is ``shape`` (its first axis
        is 1 unless the module folds patches or windows into the batch axis)."""
        found = self.layouts.get(label)
        if found is None:
            found = self._resolve(label, module, shape)
            self.layouts[label] = found
        return found

    def _resolve(self, label: str, module: nn.Module, shape: tuple[int, ...]) -> Layout:
        layouts, strides = self.overrides
        override = _first_match(label, layouts)
        given = _first_match(label, strides)
        declares = isinstance(module, DECLARE_NCHW) and len(shape) == 4 and shape[0] == 1
        then = self.other.get(label) if self.other_size else None
        before = self.one_size.get(label)
        if shape[0] != 1:  # no layout reads the batch axis, whatever an override says
            layout = Layout("unknown", source=f"{FOLDED} (shape {shape} for one image)")
        elif override is not None:
            layout = _from_override(override, shape, then, self.size, self.other_size, before, given)
        elif declares:
            layout = Layout("NCHW", source="module type")
        elif self.other_size is not None:
            layout = _from_two_sizes(shape, then, self.size, self.other_size)
        elif before is not None:
            layout = _from_one_size(shape, self.size, before)
        else:
            layout = Layout("unknown", source="not seen while the layouts were planned")
        if layout.spatial and layout.stride is None:
            base = before.base if before is not None else None
            stride, ambiguous = _stride(shape, then, layout, self.size, self.other_size, base)
            source = f"{layout.source}; {ambiguous}" if ambiguous else layout.source
            doubt = "; ".join(text for text in (layout.doubt, ambiguous) if text)
            layout = replace(layout, stride=stride, source=source, doubt=doubt)
        if given is not None and layout.kind != "unknown":
            layout = replace(
                layout, stride=given, source=f"{layout.source.split('; stride')[0]}; stride given", doubt=""
            )
        if layout.kind in ("NCHW", "NHWC") and _map_size(shape, layout) == (1, 1):
            layout = Layout("global", source=f"{layout.source}; a 1x1 map")
        return layout


def plan_layouts(
    model: nn.Module,
    watched: Sequence[tuple[str, nn.Module]],
    example: torch.Tensor,
    *,
    layouts: Sequence[tuple[str, str]] = (),
    strides: Sequence[tuple[str, tuple[int, int]]] = (),
    run: Callable[[torch.Tensor], list[_Seen]] | None = None,
    output_key: str | None = None,
) -> LayoutPlan:
    """Plan the layouts of the watched outputs of ``model`` for inputs like ``example`` (see the module docstring).

    One forward pass of one image ``GROWTH`` pixels smaller on each side (larger, for inputs under ``2 * GROWTH``
    pixels); when the model refuses that size, one pass at the example's own size instead, recording every module.

    Args:
        model: the network (in eval mode).
        watched: the ``(name, module)`` pairs the probe watches.
        example: one input ``(1, C, H, W)``, as the probe will run it.
        layouts, strides: overrides from :func:`resolve_overrides`.
        run: records the forward pass at the example's own size, when needed (default :func:`record_outputs`); the
            probe passes one that reports a model's failure there as bad input.
        output_key: the name of the model output's main tensor, overriding :mod:`shiftlab.outputs`' rule.
    """
    record = run or (lambda batch: record_outputs(model, watched, batch, output_key))
    height, width = example.shape[-2], example.shape[-1]
    step = -GROWTH if min(height, width) > 2 * GROWTH else GROWTH
    other_size = (height + step, width + step)
    if step > 0:
        other_input = F.pad(example, (0, step, 0, step), mode="replicate")
    else:
        other_input = F.interpolate(example, size=other_size, mode="bilinear", align_corners=False)
    try:
        seen = record_outputs(model, watched, other_input, output_key)  # the model's own error is quoted below
    except ShiftlabError:  # an output key that names no tensor of the output: not a matter of the input's size
        raise
    except Exception as error:  # the model refuses another size (a fixed position embedding...): one size only
        refused = f"{type(error).__name__}: {first_line(error)}"
        seen = record(example)
        one_size: dict[str, _Before] = {}
        last_map: tuple[int, int] | None = None
        base: tuple[int, int] | None = None
        for entry in seen:
            if entry.label is not None and entry.label not in one_size:
                one_size[entry.label] = _Before(last_map, base)
            if entry.declares_nchw and entry.shape is not None and entry.shape[0] == 1:
                last_map = (entry.shape[2], entry.shape[3])
                if base is None and last_map[0] * last_map[1] > 1 and height % last_map[0] == width % last_map[1] == 0:
                    base = (height // last_map[0], width // last_map[1])
        method = f"one input size, {height}x{width} (the model refused {other_size[0]}x{other_size[1]}: {refused})"
        return LayoutPlan((height, width), None, {}, one_size, (layouts, strides), method, _folded(seen))
    other = {}
    for entry in seen:
        if entry.label is not None and entry.label not in other:
            other[entry.label] = entry.shape
    method = f"two input sizes, {height}x{width} and {other_size[0]}x{other_size[1]}"
    return LayoutPlan((height, width), other_size, other, {}, (layouts, strides), method, _folded(seen))


def _folded(seen: Sequence[_Seen]) -> dict[str, int]:
    """The watched modules whose output for one image has a first axis other than 1, and that axis's length."""
    folded: dict[str, int] = {}
    for entry in seen:
        if entry.label is not None and entry.shape is not None and entry.shape and entry.shape[0] != 1:
            folded.setdefault(entry.label.split(":")[0], entry.shape[0])
    return folded


def _map_size(shape: tuple[int, ...], layout: Layout) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout.kind == "NCHW" else (shape[1], shape[2])


def _from_override(
    kind: str,
    shape: tuple[int, ...],
    then: tuple[int, ...] | None,
    size: tuple[int, int],
    other_size: tuple[int, int] | None,
    before: _Before | None,
    stride: tuple[int, int] | None,
) -> Layout:
    if kind in ("NCHW", "NHWC"):
        if len(shape) != 4:
            return Layout("unknown", source=f"given as {kind}, but the output has shape {shape}")
        return Layout(kind, source="given")
    if kind == "tokens":
        if len(shape) != 3:
            return Layout("unknown", source=f"given as tokens, but the output has shape {shape}")
        tokens, found = shape[1], None
        if stride is not None:  # the grid at the given stride: only the prefix and the rounding are left
            found = _grid_at(tokens, stride, size, "the grid at the given stride")
        if found is None and then is not None and other_size is not None and len(then) == 3 and then[1] != tokens:
            found = _token_grid(tokens, then[1], size, other_size)
        if found is None and before is not None:
            found = _patch_grid(tokens, before, size) or _chain_tokens(tokens, before, size)
        if found is None:
            return Layout("unknown", source=f"given as tokens, but {tokens} tokens fit no prefix plus a patch grid")
        return replace(found, source=f"given; {found.source}")
    return Layout("global", source="given")


def _changed(first: tuple[int, ...], second: tuple[int, ...]) -> list[int]:
    return [axis for axis in range(len(first)) if first[axis] != second[axis]]


def _from_two_sizes(
    shape: tuple[int, ...], then: tuple[int, ...] | None, size: tuple[int, int], other_size: tuple[int, int]
) -> Layout:
    if then is None or len(then) != len(shape):
        return Layout("unknown", source="the output changes rank or disappears with the input size")
    if then[0] != 1:
        return Layout("unknown", source=f"the batch axis is not first (shape {then} for one image)")
    changed = _changed(shape, then)
    source = "follow the input size"
    if not changed:
        return Layout("global", source="its shape does not follow the input size")
    if len(shape) == 2:  # compared as a whole, no axis is read: a vector, however long
        return Layout("global", source="a vector whose length follows the input size (a flattened map?)")
    if len(shape) == 4 and changed == [2, 3]:
        return Layout("NCHW", source=f"axes 2, 3 {source}")
    if len(shape) == 4 and changed == [1, 2]:
        return Layout("NHWC", source=f"axes 1, 2 {source}")
    if (len(shape) == 3 and changed == [1]) or (len(shape) == 4 and changed == [2]):
        found = _token_grid(shape[-2], then[-2], size, other_size)
        if found is not None:
            return replace(found, heads=len(shape) == 4)
        return Layout("unknown", source=f"{shape[-2]} and {then[-2]} tokens fit no patch grid with a prefix")
    return Layout("unknown", source=f"axes {changed} of shape {shape} follow the input size")


def _from_one_size(shape: tuple[int, ...], size: tuple[int, int], before: _Before) -> Layout:
    """The one-size rules (see the module docstring), for an output of ``shape`` (batch axis 1)."""
    if len(shape) == 2:
        return Layout("global", source="a vector")
    if len(shape) == 3 and shape[1] == 1:
        return Layout("global", source="one token (a class token alone), compared whole as prefix tokens are")
    if len(shape) == 3:
        found = _patch_grid(shape[1], before, size) or _chain_tokens(shape[1], before, size)
        if found is not None:
            return found
    if len(shape) == 4:
        first = _is_grid((shape[2], shape[3]), size, before)
        last = _is_grid((shape[1], shape[2]), size, before)
        if first and not last:
            return Layout("NCHW", source="one input size: axes 2, 3 are a grid of the input")
        if last and not first:
            return Layout("NHWC", source="one input size: axes 1, 2 are a grid of the input")
        if not first and not last and shape[3] != shape[2]:  # (N, heads, tokens, d); not (N, heads, L, L)
            found = _patch_grid(shape[2], before, size)
            if found is not None:
                return replace(found, heads=True, source=f"{found.source}, on axis 2 (attention heads on axis 1)")
        if first and last:
            both = f"both axes 1, 2 and axes 2, 3 of {shape} are a grid of the input"
            return Layout("unknown", source=f"one input size, and {both}")
    return Layout("unknown", source=f"one input size, and shape {shape} matches no rule")


def _chain(base: tuple[int, int] | None, size: tuple[int, int]) -> list[tuple[int, int]]:
    """The strides ``base * 2**k`` (``k >= 0``: stages downsample by two) up to the input's size, smallest first."""
    strides: list[tuple[int, int]] = []
    while base is not None and max(base) <= max(size):
        strides.append(base)
        base = (2 * base[0], 2 * base[1])
    return strides


def _chain_fits(lengths: tuple[int, int], size: tuple[int, int], base: tuple[int, int] | None) -> list[Layout]:
    """The strides of the chain (:func:`_chain`) and roundings under which the input gives a map of ``lengths``."""
    fits: list[Layout] = []
    for stride in _chain(base, size):
        for rounding in ("floor", "ceil"):
            layout = Layout("NCHW", stride, 0, rounding)
            if layout.grid(size) == lengths and not any(fit.stride == stride for fit in fits):
                fits.append(layout)
    return fits


def _is_grid(lengths: tuple[int, int], size: tuple[int, int], before: _Before) -> bool:
    """Whether ``lengths`` are the last NCHW map's, or a grid of the input at a stride of the chain."""
    return lengths[0] * lengths[1] > 1 and (lengths == before.last_map or bool(_chain_fits(lengths, size, before.base)))


def _grid_at(tokens: int, stride: tuple[int, int], size: tuple[int, int], source: str) -> Layout | None:
    """Tokens as a prefix plus the grid of the input at ``stride`` (rounded down, else up), or None."""
    for rounding in ("floor", "ceil"):
        layout = Layout("tokens", stride, 0, rounding, source)
        rows, columns = layout.grid(size)
        if rows * columns > 1 and 0 <= tokens - rows * columns <= MAX_PREFIX:
            return replace(layout, prefix=tokens - rows * columns)
    return None


def _patch_grid(tokens: int, before: _Before, size: tuple[int, int]) -> Layout | None:
    """Tokens as a prefix plus the grid of the last NCHW map (the patch embedding), or None."""
    if before.last_map is None:
        return None
    rows, columns = before.last_map
    prefix = tokens - rows * columns
    if not 0 <= prefix <= MAX_PREFIX or rows * columns <= 1:
        return None
    source = "one input size: prefix plus the patch grid"
    fits = _chain_fits((rows, columns), size, before.base)
    if fits:
        return Layout("tokens", fits[0].stride, prefix, fits[0].rounding, source)
    stride = (max(1, round(size[0] / rows)), max(1, round(size[1] / columns)))
    for rounding in ("floor", "ceil"):
        layout = Layout("tokens", stride, prefix, rounding, source)
        if layout.grid(size) == (rows, columns):
            return layout
    return None


def _chain_tokens(tokens: int, before: _Before, size: tuple[int, int]) -> Layout | None:
    """Tokens as a prefix plus a grid of the input at a stride of the chain: the largest such grid (the fewest prefix
    tokens), with a note naming the others; or None."""
    fits: list[Layout] = []
    for stride in _chain(before.base, size):
        for rounding in ("floor", "ceil"):
            layout = Layout("tokens", stride, 0, rounding)
            rows, columns = layout.grid(size)
            prefix = tokens - rows * columns
            new_grid = all(fit.grid(size) != (rows, columns) for fit in fits)
            if rows * columns > 1 and 0 <= prefix <= MAX_PREFIX and new_grid:
                fits.append(replace(layout, prefix=prefix))
    if not fits:
        return None
    fits.sort(key=lambda fit: fit.prefix)
    best = fits[0]
    rows, columns = best.grid(size)
    stride = best.stride or (1, 1)
    source = f"one input size: {best.prefix} prefix plus a {rows}x{columns} grid at stride {stride[0]}"
    doubt = ""
    if len(fits) > 1:
        others = ", ".join(f"{fit.prefix} plus {'x'.join(map(str, fit.grid(size)))}" for fit in fits[1:])
        doubt = f"{tokens} tokens read as the largest grid; {others} would fit too: give the stride if it is another"
        source += f" ({doubt})"
    return replace(best, source=source, doubt=doubt)


def _token_grid(tokens: int, tokens_then: int, size: tuple[int, int], other_size: tuple[int, int]) -> Layout | None:
    """The patch size, rounding and prefix that fit the token counts at both sizes; divisors of both preferred."""
    fits = []
    for patch in range(1, max(size) + 1):
        for rounding in ("floor", "ceil"):
            candidate = Layout("tokens", (patch, patch), 0, rounding, "")
            rows, columns = candidate.grid(size)
            prefix = tokens - rows * columns
            rows_then, columns_then = candidate.grid(other_size)
            if 0 <= prefix <= MAX_PREFIX and tokens_then - rows_then * columns_then == prefix and rows * columns > 1:
                exact = all(length % patch == 0 for length in (*size, *other_size))
                fits.append((not exact, rounding != "floor", patch, prefix, rounding))
    if not fits:
        return None
    fits.sort()
    best = fits[0]
    if len(fits) > 1 and fits[1][:2] == best[:2] and fits[1][2:4] != best[2:4]:
        return None  # two patch grids fit equally well: not determined
    _, _, patch, prefix, rounding = best
    return Layout("tokens", (patch, patch), prefix, rounding, "the token count follows the input size")


def _stride(
    shape: tuple[int, ...],
    then: tuple[int, ...] | None,
    layout: Layout,
    size: tuple[int, int],
    other_size: tuple[int, int] | None,
    base: tuple[int, int] | None = None,
) -> tuple[tuple[int, int], str]:
    """Per axis, the stride that explains the map's length at both input sizes; and a note when that is unsure.

    A stride ``s`` fits when the length changes by ``difference / s`` and is ``size / s`` at each size, each to a
    pixel (padding and valid borders move a length by up to one). Of the strides that fit, one under which the
    change is exactly ``difference / s`` is taken; otherwise the closest, with a note naming the others (a model that
    pads or crops its maps to multiples of a stride that does not divide the difference). An axis whose length does
    not follow the input (adaptive pooling) gets the ratio of the sizes. At one input size, a map that is a grid of the
    input at a stride of the chain (``base * 2**k``, ``k >= 0``) gets that stride; others the ratio.
    """
    axes = (2, 3) if layout.kind == "NCHW" else (1, 2)
    lengths = (shape[axes[0]], shape[axes[1]])
    ratio = feature_stride(size, lengths)
    chained = _chain_fits(lengths, size, base) if other_size is None else []
    if chained:
        return chained[0].stride or ratio, ""
    strides, notes = [], []
    for index, (axis, length, fallback) in enumerate(zip(axes, lengths, ratio)):
        if then is None or other_size is None or then[axis] == length:
            strides.append(fallback)
            continue
        change, difference = abs(then[axis] - length), abs(other_size[index] - size[index])
        outer = (size[index], length), (other_size[index], then[axis])
        fitting = [stride for stride in range(1, difference + 1) if abs(difference / stride - change) <= 1]
        strong = [stride for stride in fitting if all(abs(total / stride - part) <= 1 for total, part in outer)]
        pool = strong or fitting
        exact = [stride for stride in pool if difference % stride == 0 and difference // stride == change]
        chosen = exact[0] if exact else min(pool, key=lambda stride: _misfit(stride, change, difference, outer))
        strides.append(chosen)
        if not exact and len(pool) > 1:
            others = ", ".join(str(stride) for stride in pool if stride != chosen)
            notes.append(f"stride {chosen} on axis {'yx'[index]} is the best fit, but {others} would fit too")
    note = "; ".join(notes) + ("; give strides= if it is another" if notes else "")
    return (strides[0], strides[1]), note


def _misfit(stride: int, change: int, difference: int, outer: tuple[tuple[int, int], ...]) -> float:
    """How far a stride is from explaining a map's lengths: pixels off, in the change and at each size."""
    return abs(difference / stride - change) + sum(abs(total / stride - part) for total, part in outer)
