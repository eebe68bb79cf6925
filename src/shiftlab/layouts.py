"""Where the spatial axes of a layer's output are: its layout, found from the model, never guessed from one shape.

A watched output is one of:

``NCHW``
    a channels-first map ``(N, C, H, W)`` (convolutions, pooling, batch norm, most CNN blocks);
``NHWC``
    a channels-last map ``(N, H, W, C)`` (the LayerNorm and Linear layers of ConvNeXt and Swin);
``tokens``
    a token sequence ``(N, P + gh * gw, C)``: ``P`` prefix tokens (class, distillation, register tokens)
    followed by ``gh x gw`` spatial tokens in row-major order (ViT). The spatial tokens are measured as a
    map; the prefix tokens as a separate, global row (invariance is expected of them);
``global``
    no spatial axis: a vector ``(N, C)`` (however long), an output whose shape does not follow the input's
    size, or a 1x1 map; compared as a whole (invariance), which reads no axis;
``unknown``
    none of the above could be established: the row says so and carries no metric.

The rules, in order (:func:`plan_layouts`):

1. **An override** for the layer, by name or glob pattern (``layouts={"features.*": "NHWC"}``; on the
   command line ``--layout PATTERN=LAYOUT``). The first matching pattern wins.
2. **What the module type declares**: a 4-D output of a convolution, pooling, batch or instance norm
   layer is ``NCHW`` (PyTorch's API says so).
3. **Two input sizes.** The model runs once more on one image ``64`` pixels taller and wider. The axes whose
   length follows the input's size are the spatial ones: axes 2 and 3 of a 4-D output make it ``NCHW``,
   axes 1 and 2 ``NHWC``; axis 1 of a 3-D output makes it ``tokens``, with the patch size ``s``, prefix
   ``P`` and rounding (``floor`` or ``ceil`` of ``H / s``) that fit both sizes, preferring patch sizes that
   divide both; an output whose shape does not change is ``global``. Anything else (another axis changes,
   the batch axis is not first) is ``unknown``.
4. **One input size**, when the model refuses another (torchvision's ViT and MaxViT): a 3-D output
   ``(N, L, C)`` is ``tokens`` when ``L = P + h * w`` for the last ``NCHW`` map ``(h, w)`` of the forward pass
   before it (the patch embedding) with ``0 <= P <= 16`` (the patch-grid rule); a 4-D output is ``NCHW``
   when its axes 2 and 3, and not 1 and 2, have the size of that map (``NHWC`` the other way round); a
   2-D output is ``global``.
5. Otherwise ``unknown``.

Strides, per axis, in input pixels: an override (``strides={"pattern": (sy, sx)}``, ``--stride
PATTERN=SY,SX``) first; with two input sizes, ``64 / (h' - h)`` (exact for every stride that divides 64, and
within a pixel for the others); with one size, or for an axis whose length does not follow the input
(adaptive pooling to a fixed size), the ratio of the sizes (:func:`shiftlab.equivariance.feature_stride`).
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

from shiftlab.equivariance import feature_stride
from shiftlab.errors import ShiftlabError, check, check_pair, fail, first_line
from shiftlab.ops import Convolve, MaxPool
from shiftlab.outputs import output_parts

__all__ = [
    "GROWTH",
    "LAYOUT_KINDS",
    "MAX_PREFIX",
    "Layout",
    "LayoutPlan",
    "parse_layout",
    "plan_layouts",
    "resolve_overrides",
]

LAYOUT_KINDS: tuple[str, ...] = ("NCHW", "NHWC", "tokens", "global", "unknown")
#: Pixels added to the input's height and width for the second size.
GROWTH = 64
#: The most prefix tokens (class, distillation, register) the patch-grid rule accepts.
MAX_PREFIX = 16

#: Module types whose 4-D output is ``(N, C, H, W)`` by PyTorch's own API.
DECLARE_NCHW: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.LPPool2d, nn.FractionalMaxPool2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.ZeroPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d, nn.PixelShuffle, nn.PixelUnshuffle,
    Convolve, MaxPool,
)  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """The layout of one watched output, its stride, and how both were found.

    ``prefix`` and ``rounding`` describe tokens: ``P`` leading tokens, then a grid of ``rounding(H / s)`` by
    ``rounding(W / s)`` tokens for an input of ``H x W`` and a patch size ``s``.
    """

    kind: str
    stride: tuple[int, int] | None = None
    prefix: int = 0
    rounding: str = "floor"
    source: str = ""

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
            return f"tokens ({self.prefix} prefix)" if self.prefix else "tokens"
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
            if output.ndim != 3:
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
        one_size: dict[str, tuple[tuple[int, int] | None, bool]],
        overrides: tuple[Sequence[tuple[str, str]], Sequence[tuple[str, tuple[int, int]]]],
        method: str,
    ) -> None:
        self.size = size
        self.other_size = other_size
        self.other = other  # label -> its shape at the other size (two-size plans)
        self.one_size = one_size  # label -> (the last NCHW map before it, seen at all) (one-size plans)
        self.overrides = overrides
        self.method = method
        self.layouts: dict[str, Layout] = {}

    def layout(self, label: str, module: nn.Module, shape: tuple[int, ...]) -> Layout:
        """The layout of the output ``label`` of ``module``, whose shape for one image is ``shape`` (batch axis 1)."""
        found = self.layouts.get(label)
        if found is None:
            found = self._resolve(label, module, shape)
            self.layouts[label] = found
        return found

    def _resolve(self, label: str, module: nn.Module, shape: tuple[int, ...]) -> Layout:
        layouts, strides = self.overrides
        override = _first_match(label, layouts)
        declares = isinstance(module, DECLARE_NCHW) and len(shape) == 4
        then = self.other.get(label) if self.other_size else None
        last_map, seen = self.one_size.get(label, (None, False))
        if override is not None:
            layout = _from_override(override, shape, then, self.size, self.other_size, last_map)
        elif declares:
            layout = Layout("NCHW", source="module type")
        elif self.other_size is not None:
            layout = _from_two_sizes(shape, then, self.size, self.other_size)
        elif seen:
            layout = _from_one_size(shape, self.size, last_map)
        else:
            layout = Layout("unknown", source="not seen while the layouts were planned")
        if layout.spatial and layout.stride is None:
            stride, ambiguous = _stride(shape, then, layout, self.size, self.other_size)
            source = f"{layout.source}; {ambiguous}" if ambiguous else layout.source
            layout = replace(layout, stride=stride, source=source)
        given = _first_match(label, strides)
        if given is not None and layout.kind != "unknown":
            layout = replace(layout, stride=given, source=f"{layout.source.split('; stride')[0]}; stride given")
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
        one_size: dict[str, tuple[tuple[int, int] | None, bool]] = {}
        last_map: tuple[int, int] | None = None
        for entry in seen:
            if entry.label is not None and entry.label not in one_size:
                one_size[entry.label] = (last_map, True)
            if entry.declares_nchw and entry.shape is not None:
                last_map = (entry.shape[2], entry.shape[3])
        method = f"one input size, {height}x{width} (the model refused {other_size[0]}x{other_size[1]}: {refused})"
        return LayoutPlan((height, width), None, {}, one_size, (layouts, strides), method)
    other = {}
    for entry in seen:
        if entry.label is not None and entry.label not in other:
            other[entry.label] = entry.shape
    method = f"two input sizes, {height}x{width} and {other_size[0]}x{other_size[1]}"
    return LayoutPlan((height, width), other_size, other, {}, (layouts, strides), method)


def _map_size(shape: tuple[int, ...], layout: Layout) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout.kind == "NCHW" else (shape[1], shape[2])


def _from_override(
    kind: str,
    shape: tuple[int, ...],
    then: tuple[int, ...] | None,
    size: tuple[int, int],
    other_size: tuple[int, int] | None,
    last_map: tuple[int, int] | None,
) -> Layout:
    if kind in ("NCHW", "NHWC"):
        if len(shape) != 4:
            return Layout("unknown", source=f"given as {kind}, but the output has shape {shape}")
        return Layout(kind, source="given")
    if kind == "tokens":
        if len(shape) != 3:
            return Layout("unknown", source=f"given as tokens, but the output has shape {shape}")
        grown = then is not None and other_size is not None and len(then) == 3 and then[1] != shape[1]
        found = _token_grid(shape[1], then[1], size, other_size) if grown and then and other_size else None
        found = found or _patch_grid(shape[1], last_map, size)
        if found is None:
            return Layout("unknown", source=f"given as tokens, but {shape[1]} tokens fit no prefix plus a patch grid")
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
    if len(shape) == 3 and changed == [1]:
        found = _token_grid(shape[1], then[1], size, other_size)
        if found is not None:
            return found
        return Layout("unknown", source=f"{shape[1]} and {then[1]} tokens fit no patch grid with a prefix")
    return Layout("unknown", source=f"axes {changed} of shape {shape} follow the input size")


def _from_one_size(shape: tuple[int, ...], size: tuple[int, int], last_map: tuple[int, int] | None) -> Layout:
    if len(shape) == 2:
        return Layout("global", source="a vector")
    if len(shape) == 3 and last_map is not None:
        found = _patch_grid(shape[1], last_map, size)
        if found is not None:
            return found
    if len(shape) == 4 and last_map is not None:
        first, last = (shape[2], shape[3]) == last_map, (shape[1], shape[2]) == last_map
        if first and not last:
            return Layout("NCHW", source="one input size: axes 2, 3 match the last NCHW map")
        if last and not first:
            return Layout("NHWC", source="one input size: axes 1, 2 match the last NCHW map")
    return Layout("unknown", source=f"one input size, and shape {shape} matches no rule")


def _patch_grid(tokens: int, last_map: tuple[int, int] | None, size: tuple[int, int]) -> Layout | None:
    """Tokens as a prefix plus the grid of the last NCHW map (the patch embedding), or None."""
    if last_map is None:
        return None
    rows, columns = last_map
    prefix = tokens - rows * columns
    if not 0 <= prefix <= MAX_PREFIX or rows * columns <= 1:
        return None
    stride = (max(1, round(size[0] / rows)), max(1, round(size[1] / columns)))
    for rounding in ("floor", "ceil"):
        layout = Layout("tokens", stride, prefix, rounding, "one input size: prefix plus the patch grid")
        if layout.grid(size) == (rows, columns):
            return layout
    return None


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
) -> tuple[tuple[int, int], str]:
    """Per axis, the stride that explains the map's length at both input sizes; and a note when that is unsure.

    A stride ``s`` fits when the length changes by ``difference / s`` and is ``size / s`` at each size, each to a
    pixel (padding and valid borders move a length by up to one). Of the strides that fit, one under which the
    change is exactly ``difference / s`` is taken; otherwise the closest, with a note naming the others (a model that
    pads or crops its maps to multiples of a stride that does not divide the difference). An axis whose length does
    not follow the input (adaptive pooling) gets the ratio of the sizes.
    """
    axes = (2, 3) if layout.kind == "NCHW" else (1, 2)
    lengths = (shape[axes[0]], shape[axes[1]])
    ratio = feature_stride(size, lengths)
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
