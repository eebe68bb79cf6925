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
from shiftlab.errors import check, check_pair, fail, first_line
from shiftlab.ops import Convolve, MaxPool

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


def record_outputs(model: nn.Module, watched: Sequence[tuple[str, nn.Module]], batch: torch.Tensor) -> list[_Seen]:
    """Every module's output shape in one forward pass, in call order, labelled as the probe labels watched ones."""
    names = {id(module): name for name, module in watched}
    seen: list[_Seen] = []
    calls: dict[str, int] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        label = None
        name = names.get(id(module))
        if module is model:
            name = ""
        if name is not None:
            count = calls.get(name, 0) + 1
            calls[name] = count
            base = name or "output"
            label = base if count == 1 else f"{base}:{count}"
        tensor = isinstance(output, torch.Tensor) and output.is_floating_point()
        declares = isinstance(module, DECLARE_NCHW) and tensor and output.ndim == 4
        seen.append(_Seen(label, declares, tuple(output.shape) if tensor else None))

    handles = [module.register_forward_hook(hook) for _, module in model.named_modules()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@dataclass
class LayoutPlan:
    """The layout of every watched output, and how the plan was made (for the result's protocol)."""

    layouts: dict[str, Layout]
    method: str

    def get(self, label: str) -> Layout:
        return self.layouts.get(label) or Layout("unknown", source="not seen while the layouts were planned")


def plan_layouts(
    model: nn.Module,
    watched: Sequence[tuple[str, nn.Module]],
    example: torch.Tensor,
    *,
    layouts: Sequence[tuple[str, str]] = (),
    strides: Sequence[tuple[str, tuple[int, int]]] = (),
    run: Callable[[torch.Tensor], list[_Seen]] | None = None,
) -> LayoutPlan:
    """The layout and stride of every watched output (see the module docstring for the rules).

    Args:
        model: the network (in eval mode).
        watched: the ``(name, module)`` pairs the probe watches.
        example: one input ``(1, C, H, W)``, as the probe will run it.
        layouts, strides: overrides from :func:`resolve_overrides`.
        run: records a forward pass (default :func:`record_outputs`); the probe passes one that reports a model's
            failure on the first size as bad input.
    """
    record = run or (lambda batch: record_outputs(model, watched, batch))
    size = (example.shape[-2], example.shape[-1])
    first = record(example)
    grown = F.pad(example, (0, GROWTH, 0, GROWTH), mode="replicate")
    try:
        second: list[_Seen] | None = record(grown)
        method = f"two input sizes, {size[0]}x{size[1]} and {size[0] + GROWTH}x{size[1] + GROWTH}"
    except Exception as error:  # the model refuses another size (a fixed position embedding...): one size only
        second = None
        method = (
            f"one input size, {size[0]}x{size[1]} (the model refused {size[0] + GROWTH}x{size[1] + GROWTH}: "
            f"{type(error).__name__}: {first_line(error)})"
        )
    shapes_then = {entry.label: entry.shape for entry in second or [] if entry.label}
    plan: dict[str, Layout] = {}
    last_map: tuple[int, int] | None = None  # the last NCHW map of the pass, for the one-size rules
    for entry in first:
        if entry.declares_nchw and entry.shape is not None:
            last_map = (entry.shape[2], entry.shape[3])
        if entry.label is None or entry.label in plan:
            continue
        if entry.shape is None:
            plan[entry.label] = Layout("unknown", source="not a floating-point tensor")
            continue
        override = _first_match(entry.label, layouts)
        if override is not None:
            layout = _from_override(override, entry.shape, shapes_then.get(entry.label), size, last_map)
        elif entry.declares_nchw:
            layout = Layout("NCHW", source="module type")
        elif second is not None:
            layout = _from_two_sizes(entry.shape, shapes_then.get(entry.label), size)
        else:
            layout = _from_one_size(entry.shape, size, last_map)
        if layout.spatial and layout.stride is None:
            layout = replace(layout, stride=_stride(entry.shape, shapes_then.get(entry.label), layout, size))
        given = _first_match(entry.label, strides)
        if given is not None and layout.kind != "unknown":
            layout = replace(layout, stride=given, source=f"{layout.source}; stride given")
        if layout.spatial and layout.kind != "tokens" and _map_size(entry.shape, layout) == (1, 1):
            layout = Layout("global", source=f"{layout.source}; a 1x1 map")
        plan[entry.label] = layout
    return LayoutPlan(plan, method)


def _map_size(shape: tuple[int, ...], layout: Layout) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout.kind == "NCHW" else (shape[1], shape[2])


def _from_override(
    kind: str,
    shape: tuple[int, ...],
    then: tuple[int, ...] | None,
    size: tuple[int, int],
    last_map: tuple[int, int] | None,
) -> Layout:
    if kind in ("NCHW", "NHWC"):
        if len(shape) != 4:
            return Layout("unknown", source=f"given as {kind}, but the output has shape {shape}")
        return Layout(kind, source="given")
    if kind == "tokens":
        if len(shape) != 3:
            return Layout("unknown", source=f"given as tokens, but the output has shape {shape}")
        grown = then is not None and len(then) == 3 and then[1] != shape[1]
        found = _token_grid(shape[1], then[1], size) if grown and then is not None else None
        found = found or _patch_grid(shape[1], last_map, size)
        if found is None:
            return Layout("unknown", source=f"given as tokens, but {shape[1]} tokens fit no prefix plus a patch grid")
        return replace(found, source=f"given; {found.source}")
    return Layout("global", source="given")


def _changed(first: tuple[int, ...], second: tuple[int, ...]) -> list[int]:
    return [axis for axis in range(len(first)) if first[axis] != second[axis]]


def _from_two_sizes(shape: tuple[int, ...], then: tuple[int, ...] | None, size: tuple[int, int]) -> Layout:
    if then is None or len(then) != len(shape):
        return Layout("unknown", source="the output changes rank or disappears with the input size")
    if shape[0] != 1 or then[0] != 1:
        return Layout("unknown", source=f"the batch axis is not first (shape {shape} for one image)")
    changed = _changed(shape, then)
    source = "follows the input size"
    if not changed:
        return Layout("global", source="its shape does not follow the input size")
    if len(shape) == 2:  # compared as a whole, no axis is read: a vector, however long
        return Layout("global", source="a vector whose length follows the input size (a flattened map?)")
    if len(shape) == 4 and changed == [2, 3]:
        return Layout("NCHW", source=f"axes 2, 3 {source}")
    if len(shape) == 4 and changed == [1, 2]:
        return Layout("NHWC", source=f"axes 1, 2 {source}")
    if len(shape) == 3 and changed == [1]:
        found = _token_grid(shape[1], then[1], size)
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


def _token_grid(tokens: int, tokens_then: int, size: tuple[int, int]) -> Layout | None:
    """The patch size, rounding and prefix that fit the token counts at both sizes; divisors of both preferred."""
    grown = (size[0] + GROWTH, size[1] + GROWTH)
    fits = []
    for patch in range(1, max(size) + 1):
        for rounding in ("floor", "ceil"):
            candidate = Layout("tokens", (patch, patch), 0, rounding, "")
            rows, columns = candidate.grid(size)
            prefix = tokens - rows * columns
            rows_then, columns_then = candidate.grid(grown)
            if 0 <= prefix <= MAX_PREFIX and tokens_then - rows_then * columns_then == prefix and rows * columns > 1:
                exact = all(length % patch == 0 for length in (*size, *grown))
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
    shape: tuple[int, ...], then: tuple[int, ...] | None, layout: Layout, size: tuple[int, int]
) -> tuple[int, int]:
    """Per axis: from the change of length between the two input sizes, else from the ratio of the sizes."""
    axes = (2, 3) if layout.kind == "NCHW" else (1, 2)
    lengths = (shape[axes[0]], shape[axes[1]])
    ratio = feature_stride(size, lengths)
    strides = []
    for axis, length, fallback in zip(axes, lengths, ratio):
        growth = then[axis] - length if then is not None and len(then) == len(shape) else 0
        stride = max(1, round(GROWTH / growth)) if growth > 0 else 0
        # a length that grows by GROWTH / s, to the pixel (padding and valid borders shift it by at most one)
        strides.append(stride if stride and abs(GROWTH / stride - growth) <= 1 else fallback)
    return strides[0], strides[1]
