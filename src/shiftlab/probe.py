"""Probe a whole model: the equivariance error of every layer of interest, under every shift, in batched passes.

:func:`probe` registers forward hooks on the layers it watches (found by name
or type, torchcam style), runs each image together with its shifted copies in
one batch, and inside each hook compares the shifted copies' maps with the
moved map of the original (see :mod:`shiftlab.equivariance` for the
definition). Only running sums are kept, in one
:class:`~shiftlab.equivariance.ShiftComparison` per layer, never the
activations; inputs are read as a stream (a tensor, a list, a generator, a
``DataLoader``), so memory does not grow with the number of images.

The hooks are removed and every module's train/eval flag restored on the way
out, also when the model raises; parameters and buffers are never changed (the
model runs in eval mode under ``torch.no_grad``). An exception raised by the
model is bad input (:class:`~shiftlab.errors.ShiftlabError`); one raised by
shiftlab's own code inside a hook is an
:class:`~shiftlab.errors.InternalError`, never blamed on the model.

A module called several times in one forward pass (torchvision's ResNet
blocks reuse one ``ReLU``) gets one row per call: ``layer1.0.relu`` then
``layer1.0.relu:2``. Channels-last maps ``(N, H, W, C)`` (the LayerNorm and
Linear layers inside ConvNeXt blocks) are recognised by their size and
compared, and listed, as ``(C, H, W)``. The model's final output is the row
``output``; for ``(N, classes)`` logits it also carries ``top1_agreement``,
the share of images whose top-1 class is unchanged by the shift.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from shiftlab._compare import Scratch
from shiftlab._format import format_number, format_stride
from shiftlab._io import atomic_write_text, csv_text, json_text
from shiftlab._pandas import data_frame
from shiftlab.equivariance import Measured, ShiftComparison, border_core, reference_input, shifted_input
from shiftlab.errors import InternalError, ShiftlabError, check, check_choice, check_int, describe, fail, first_line
from shiftlab.layouts import Layout, LayoutPlan, plan_layouts, record_outputs, resolve_overrides
from shiftlab.ops import Convolve, MaxPool
from shiftlab.outputs import describe_output, output_parts
from shiftlab.shifts import SHIFT_MODES, Shift, check_shifts, crop_margin

__all__ = ["DEFAULT_LAYER_TYPES", "ProbeResult", "probe", "select_layers"]

#: Leaf layers watched by default: convolutions, pooling, normalisation, activations, linear heads.
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.FractionalMaxPool2d,
    nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.SyncBatchNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Linear,
)  # fmt: skip
_DEFAULT_TYPES = DEFAULT_LAYER_TYPES + (Convolve, MaxPool)  # shiftlab's own operator modules too
_BLOCK_WORDS = ("block", "bottleneck", "residual")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
LayerSpec = None | str | Sequence[str | type] | Callable[[str, nn.Module], bool]


def _is_block(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return any(word in name for word in _BLOCK_WORDS) and not isinstance(module, _CONTAINERS)


def _is_default(module: nn.Module) -> bool:
    return isinstance(module, _DEFAULT_TYPES) or _is_block(module)


def _units(model: nn.Module) -> set[str]:
    """The names of the repeated building blocks: modules with children, not plain containers, whose parent holds
    another module of their class (ResNet's BasicBlocks, ViT's EncoderBlocks, Swin's, ConvNeXt's and MaxViT's
    blocks)."""
    units = set()
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        counts: dict[type, int] = {}
        for _, child in children:
            counts[type(child)] = counts.get(type(child), 0) + 1
        for name, child in children:
            has_children = any(True for _ in child.children())  # (an empty Sequential child is falsy)
            if counts[type(child)] > 1 and not isinstance(child, _CONTAINERS) and has_children:
                units.add(f"{parent_name}.{name}" if parent_name else name)
    return units


def _inside(name: str, units: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:cut]) in units for cut in range(1, len(parts)))


def select_layers(model: nn.Module, layers: LayerSpec = None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that :func:`probe` watches.

    Args:
        model: the network.
        layers: ``None`` for the default: the repeated building blocks (a ResNet's
            residual blocks, a transformer's encoder blocks: modules with children whose
            parent holds another of their class), and every convolution, pooling,
            normalisation, activation and linear layer outside them; ``"all"`` for every
            such layer, inside blocks too, and every residual block; names or glob patterns
            (``"layer1.*"``, a comma-separated string is split); module types;
            or a predicate ``f(name, module) -> bool``.

    Raises:
        ShiftlabError: a name or pattern that matches no module.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
        >>> [name for name, _ in select_layers(net)]
        ['0', '1']
        >>> [name for name, _ in select_layers(net, "1")]
        ['1']
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    if layers is None:
        units = _units(model)
        return [
            (name, module)
            for name, module in named
            if not _inside(name, units) and (name in units or _is_default(module))
        ]
    if isinstance(layers, str) and layers.strip() == "all":
        return [(name, module) for name, module in named if _is_default(module)]
    if callable(layers) and not isinstance(layers, type):
        return [(name, module) for name, module in named if layers(name, module)]
    items: list[str | type]
    if isinstance(layers, str):
        items = [part.strip() for part in layers.split(",") if part.strip()]
    else:
        items = [layers] if isinstance(layers, type) else list(layers)
    chosen: dict[str, nn.Module] = {}
    for item in items:
        matches: list[tuple[str, nn.Module]]
        if isinstance(item, type):
            matches = [pair for pair in named if isinstance(pair[1], item)]
            label = f"type {item.__name__}"
        else:
            matches = [(name, module) for name, module in named if name == item or fnmatch.fnmatchcase(name, str(item))]
            label = repr(item)
        if not matches:
            examples = ", ".join(name for name, _ in named[:8])
            fail("layers", f"{label} matches no module of the model (names look like: {examples}, ...)")
        chosen.update(matches)
    return [(name, module) for name, module in named if name in chosen]


class _Watcher:
    """Forward hooks on the watched layers; removed on exit, even after an exception (torchcam style).

    A hook that fails records which layer and why in :attr:`failure`, so that the caller can tell
    shiftlab's own errors apart from the model's.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        on_output: Callable[[str, nn.Module, torch.Tensor], None],
        output_key: str | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.on_output = on_output
        self.output_key = output_key
        self.output_found: str | None = None  # how the model's output was read (see describe_output)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.calls: dict[str, int] = {}
        self.failure: tuple[str, BaseException] | None = None

    def __enter__(self) -> _Watcher:
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._hook(name)))
        self.handles.append(self.model.register_forward_hook(self._hook("")))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count = self.calls.get(name, 0) + 1
            self.calls[name] = count
            # The model's own output: its main tensor as "output", every other tensor as "output.KEY".
            parts = [("", output)]
            if module is self.model:
                parts = output_parts(output, self.output_key)
                self.output_found = describe_output(output, self.output_key)
            for part, tensor in parts:
                base = (name or "output") + (f".{part}" if part else "")
                label = base if count == 1 else f"{base}:{count}"
                if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                    continue
                try:
                    self.on_output(label, module, tensor)
                except ShiftlabError:
                    raise
                except Exception as error:
                    self.failure = (label, error)
                    raise

        return hook

    def run(self, batch: torch.Tensor) -> Any:
        """The model on ``batch``, with the hooks measuring.

        Raises:
            ShiftlabError: the model rejected the input (its own error, quoted).
            InternalError: one of shiftlab's hooks failed (a bug in shiftlab).
        """
        self.calls, self.failure = {}, None
        try:
            return self.model(batch)
        except ShiftlabError:
            raise
        except Exception as error:
            if self.failure is not None:
                label, cause = self.failure
                raise InternalError(
                    f"the probe's hook on layer {label!r} failed: {type(cause).__name__}: {first_line(cause)}"
                ) from cause
            _rejected(self.model, batch, error)

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


#: The row of a token map's prefix tokens (class, distillation, register) is its layer's name with this suffix.
PREFIX = "[prefix]"


@dataclass
class _Layer:
    """One watched output (or its prefix tokens): what it is, where it sits, and its accumulated comparison."""

    label: str
    kind: str
    depth: int
    shape: tuple[int, ...]  # per image, as compared: (C, h, w) for a map, whatever it is for a whole output
    layout: Layout
    part: str  # "map", "whole" (a global output) or "prefix" (prefix tokens)
    comparison: ShiftComparison | None  # None: the layout is unknown, nothing is measured


@dataclass
class _Pass:
    """One forward pass: ``images`` originals followed by their copies for the shifts ``indices``.

    The zero shifts in ``identity`` compare ``f(x)`` with itself: they ride along with the first
    pass of every image group and cost no forward pass of their own.
    """

    images: int
    indices: tuple[int, ...]
    identity: tuple[int, ...]

    @property
    def variants(self) -> int:
        return 1 + len(self.indices)


class _Measurement:
    """The state of one probe run: per-layer comparisons, layouts, border cores, and the pass being measured."""

    def __init__(self, shifts: list[Shift], mode: str, plan: LayoutPlan) -> None:
        self.shifts = shifts
        self.mode = mode
        self.plan = plan
        self.circular = mode in ("circular", "fourier")
        self.layers: dict[str, _Layer] = {}
        self.scratch = Scratch()
        self.cores: dict[str, tuple[torch.Tensor, bool]] = {}  # label -> (core, whole map), for the current size
        self.recording_cores = False
        self.current: _Pass | None = None
        self.input_size: tuple[int, int] = (0, 0)
        # The last output measured, by weak reference, with its layout and its measurements (see on_output).
        self.last: tuple[weakref.ref, int, Layout, list[list[Measured]]] | None = None

    def on_output(self, label: str, module: nn.Module, output: torch.Tensor) -> None:
        layout = self.plan.layout(label, module, (1, *output.shape[1:]))
        spatial, prefix = layout.split(output, self.input_size)
        if self.recording_cores:
            if layout.spatial and spatial is not None:
                core = torch.isfinite(spatial[0]).all(dim=0)
                self.cores[label] = (core, not bool(core.any()))
            return
        current = self.current
        assert current is not None
        if spatial is None or output.shape[0] != current.variants * current.images:
            reason = layout.source if layout.kind == "unknown" else f"shape {tuple(output.shape)} does not fit it"
            self._unknown(label, module, output, replace(layout, kind="unknown", source=reason))
            return
        targets = [(self._layer(label, module, layout, "map" if layout.spatial else "whole", spatial), spatial)]
        if prefix is not None:
            targets.append((self._layer(label + PREFIX, module, layout, "prefix", prefix), prefix))
        last = self.last
        if last is not None and last[0]() is output and last[1] == output._version and last[2] == layout:
            measured = last[3]  # the same tensor, unchanged, seen by a second hook: measured once
        else:
            measured = [self._measure(layer, tensor, current) for layer, tensor in targets]
            # Only a weak reference: the output is freed when the model drops it (a strong one would keep a
            # whole activation alive until the next watched layer); a dead reference cannot match reused memory.
            self.last = (weakref.ref(output), output._version, layout, measured)
        for (layer, _), batches in zip(targets, measured):
            assert layer.comparison is not None
            for batch in batches:
                layer.comparison.add(batch)

    def _layer(self, label: str, module: nn.Module, layout: Layout, part: str, tensor: torch.Tensor) -> _Layer:
        layer = self.layers.get(label)
        if layer is None:
            comparison = ShiftComparison(
                self.shifts,
                stride=layout.stride if part == "map" else None,
                circular=self.circular,
                logits=tensor.ndim == 2,
                device=tensor.device,
            )
            depth = len(self.layers) + 1
            layer = _Layer(label, type(module).__name__, depth, tuple(tensor.shape[1:]), layout, part, comparison)
            self.layers[label] = layer
        return layer

    def _unknown(self, label: str, module: nn.Module, output: torch.Tensor, layout: Layout) -> None:
        if label not in self.layers:
            depth = len(self.layers) + 1
            self.layers[label] = _Layer(
                label, type(module).__name__, depth, tuple(output.shape[1:]), layout, "map", None
            )

    def _measure(self, layer: _Layer, tensor: torch.Tensor, current: _Pass) -> list[Measured]:
        """Compare one part of an output (its map, its prefix tokens, or the whole of it) for this pass."""
        comparison = layer.comparison
        assert comparison is not None
        grouped = tensor.reshape(current.variants, current.images, *tensor.shape[1:])
        core, whole_map = self.cores.get(layer.label, (None, False)) if layer.part == "map" else (None, False)
        measured = []
        if current.indices:
            measured.append(
                comparison.measure(grouped, current.indices, core=core, whole_map=whole_map, scratch=self.scratch)
            )
        if current.identity:  # f(x) against itself: the reference stands in for the shifted copies
            reference = grouped[0][None].expand(1 + len(current.identity), *grouped.shape[1:])
            measured.append(
                comparison.measure(reference, current.identity, core=core, whole_map=whole_map, scratch=self.scratch)
            )
        return measured


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _as_image_batch(item: Any, where: str) -> torch.Tensor:
    """One item of the input stream as an ``(N, C, H, W)`` floating tensor."""
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]  # (images, labels) from a DataLoader: the images
    tensor = item if isinstance(item, torch.Tensor) else None
    if tensor is None:
        try:
            tensor = torch.as_tensor(item)
        except (TypeError, ValueError, RuntimeError):
            fail(where, f"expected an image tensor (C, H, W) or a batch (N, C, H, W), got {describe(item)}")
    check(tensor.ndim in (3, 4), where, f"expected (C, H, W) or (N, C, H, W), got {describe(item)}")
    check(tensor.numel() > 0, where, f"is empty: {describe(tensor)}")
    check(tensor.is_floating_point(), where, f"expected floating-point images, got {describe(tensor)}")
    return tensor if tensor.ndim == 4 else tensor[None]


def _image_stream(inputs: Any) -> Iterator[torch.Tensor]:
    """The inputs as a stream of ``(N, C, H, W)`` batches, read one at a time (never all at once)."""
    if isinstance(inputs, torch.Tensor):
        yield _as_image_batch(inputs, "inputs")
        return
    check(
        isinstance(inputs, Iterable),
        "inputs",
        f"expected a tensor, a list of them or an iterable of batches, got {describe(inputs)}",
    )
    empty = True
    for position, item in enumerate(inputs):
        empty = False
        yield _as_image_batch(item, f"inputs[{position}]")
    check(not empty, "inputs", "is empty")


def _groups(stream: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive images of one shape, ``size`` at a time: passes never mix shapes, and single images share them."""
    pending: list[torch.Tensor] = []
    count = 0
    for batch in stream:
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            yield torch.cat(pending) if len(pending) > 1 else pending[0]
            pending, count = [], 0
        start = 0
        while start < batch.shape[0]:
            take = min(size - count, batch.shape[0] - start)
            pending.append(batch[start : start + take])
            count += take
            start += take
            if count == size:
                yield torch.cat(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if pending:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


def _handed_over(head: list[torch.Tensor], rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``head``'s item, then ``rest``, holding no reference to the item once it is handed over
    (``itertools.chain`` would keep it until the end)."""
    yield head.pop()
    yield from rest


def _count_passes(inputs: Any, images_per_pass: int, chunks: int) -> int | None:
    """How many forward passes a tensor or a list of tensors needs (None for other streams: unknown in advance)."""
    if isinstance(inputs, torch.Tensor):
        images = inputs.shape[0] if inputs.ndim == 4 else 1
        return math.ceil(images / images_per_pass) * chunks
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(item, torch.Tensor) for item in inputs):
        return None
    shapes = [tuple(item.shape[-3:]) for item in inputs for _ in range(item.shape[0] if item.ndim == 4 else 1)]
    total, run = 0, 0
    for position, shape in enumerate(shapes):
        run += 1
        if position + 1 == len(shapes) or shapes[position + 1] != shape:
            total += math.ceil(run / images_per_pass) * chunks
            run = 0
    return total


def probe(
    model: nn.Module,
    inputs: Any,
    *,
    shifts: Iterable[tuple[float, float]],
    mode: str = "circular",
    layers: LayerSpec = None,
    layouts: Any = None,
    strides: Any = None,
    batch_size: int = 64,
    progress: Callable[[int, int | None], None] | None = None,
    output: str | None = None,
) -> ProbeResult:
    """Measure the translation equivariance of every watched layer of ``model``.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images.
        inputs: a ``(N, C, H, W)`` or ``(C, H, W)`` tensor; a list of them (sizes may differ);
            or any iterable of batches, read one at a time: a generator, a ``DataLoader``
            (yielding tensors or ``(images, labels)`` pairs). Moved to the model's device and dtype.
        shifts: ``(dy, dx)`` pairs in input pixels; see :func:`shiftlab.shift_range`,
            :func:`shiftlab.shift_grid`, :func:`shiftlab.parse_shifts`.
        mode: how the input is shifted: ``circular`` (default), ``zero``,
            ``crop`` or ``fourier`` (see :mod:`shiftlab.shifts`).
        layers: which layers to watch (see :func:`select_layers`).
        layouts: overrides of the layout of outputs, by layer name or glob pattern:
            ``{"features.*": "NHWC", "encoder.*": "tokens"}`` (or ``["PATTERN=LAYOUT", ...]``).
            Layouts are otherwise found as :mod:`shiftlab.layouts` describes.
        strides: overrides of the cumulative stride, ``{"pattern": (sy, sx)}`` (or ``["PATTERN=SY,SX"]``).
        batch_size: the most inputs in one forward pass; an image and its
            shifted copies always share a pass (the shifts are split when
            ``1 + len(shifts)`` exceeds it).
        progress: called as ``progress(done, total)`` after each forward pass
            (``total`` is None when the inputs are a stream of unknown length).
        output: the name of the main tensor of a structured model output (a dict, a tuple, a Hugging Face
            ``ModelOutput``), overriding :mod:`shiftlab.outputs`' rule (``logits``, ``out``, the first tensor).
            The main tensor is the row ``output``; every other tensor of the output is a row ``output.NAME``.

    Returns:
        A :class:`ProbeResult`: one row per watched layer and shift (and per token map's prefix
        tokens). It does not depend on how the inputs were batched (up to the order of float64
        additions). A layer whose layout cannot be determined gets rows that say so, without metrics.

    Raises:
        ShiftlabError: bad arguments, or a model that rejects the input (the
            message quotes the model's own first line).
        InternalError: a failure of shiftlab's own code (a bug to report).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.MaxPool2d(2))
        >>> x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> result = probe(net, x, shifts=[(0, 1), (0, 2)])
        >>> rows = [row for row in result.rows if row["layer"] == "2"]
        >>> [(row["dx"], row["multiple"], round(row["rel_l2"], 4)) for row in rows]
        [(1, False, 0.217), (2, True, 0.0)]
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    check_choice(mode, "mode", SHIFT_MODES)
    batch_size = check_int(batch_size, "batch_size", minimum=2)
    pairs = check_shifts(shifts, mode)
    watched = select_layers(model, layers)
    layout_overrides, stride_overrides = resolve_overrides(layouts, strides)
    device, dtype = _model_device_dtype(model)
    # The zero shift is the identity: its row compares f(x) with itself, and costs no forward pass.
    identity = tuple(index for index, (dy, dx) in enumerate(pairs) if dy == 0 and dx == 0)
    active = [index for index in range(len(pairs)) if index not in identity]
    chunk = max(1, min(len(active), batch_size - 1))
    chunks = [tuple(active[start : start + chunk]) for start in range(0, len(active), chunk)] or [()]
    images_per_pass = max(1, batch_size // (1 + chunk))
    total = _count_passes(inputs, images_per_pass, len(chunks))
    band = crop_margin(pairs)
    cores_by_size: dict[tuple[int, ...], dict[str, tuple[torch.Tensor, bool]]] = {}
    images, done = 0, 0
    shapes: list[tuple[int, ...]] = []
    ran_as: tuple[torch.dtype, torch.device] | None = None  # the inputs' dtype and device, for the protocol
    modes = {name: module.training for name, module in model.named_modules()}
    try:
        model.eval()
        groups: Iterator[torch.Tensor] = (
            group.to(device=device or group.device, dtype=dtype or group.dtype)
            for group in _groups(_image_stream(inputs), images_per_pass)
        )
        first = next(groups)
        # The layouts, from the first image (as it will be run: the reference input), before the hooks go on.
        example = reference_input(first[:1], pairs, mode)[0]
        plan = _layout_plan(model, watched, example, layout_overrides, stride_overrides, output)
        measurement = _Measurement(pairs, mode, plan)
        groups = _handed_over([first], groups)
        del first, example  # the stream's first batch is freed once measured, as every other one
        with _Watcher(model, watched, measurement.on_output, output) as watcher, torch.no_grad():
            for group in groups:
                ran_as = ran_as or (group.dtype, group.device)
                reference, margin = reference_input(group, pairs, mode)
                measurement.input_size = (reference.shape[-2], reference.shape[-1])
                if tuple(group.shape[1:]) not in shapes:
                    shapes.append(tuple(group.shape[1:]))
                if mode in ("zero", "crop"):
                    size = tuple(group.shape[1:])
                    if size not in cores_by_size:  # one border pass per input size
                        measurement.cores, measurement.recording_cores = {}, True
                        border_core(reference[0], band, watcher.run)
                        measurement.recording_cores = False
                        cores_by_size[size] = measurement.cores
                    measurement.cores = cores_by_size[size]
                for position, indices in enumerate(chunks):
                    # Built pass by pass: the shifted copies of all shifts never coexist.
                    batch = reference.new_empty((1 + len(indices), *reference.shape))
                    batch[0] = reference
                    for slot, index in enumerate(indices, start=1):
                        batch[slot] = shifted_input(group, *pairs[index], mode, margin)
                    measurement.current = _Pass(group.shape[0], indices, identity if position == 0 else ())
                    measurement.last = None
                    watcher.run(batch.flatten(0, 1))
                    done += 1
                    if progress is not None:
                        progress(done, total)
                images += group.shape[0]
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
    protocol = {
        "mode": mode,
        "shifts": [list(pair) for pair in pairs],
        "images": images,
        "input_shapes": [list(shape) for shape in shapes],
        "dtype": str(ran_as[0] if ran_as else dtype).replace("torch.", ""),
        "device": str(ran_as[1] if ran_as else device),
        "layers_watched": len(watched),
        "layouts": plan.method,
        "batch_size": batch_size,
        "output": watcher.output_found,
    }
    return ProbeResult.from_layers(measurement.layers.values(), protocol)


def _unknown_row(layer: _Layer, dy: float, dx: float) -> dict[str, Any]:
    nan = math.nan
    return {
        "layer": layer.label,
        "type": layer.kind,
        "depth": layer.depth,
        "layout": "unknown",
        "shape": list(layer.shape),
        "stride": None,
        "dy": dy,
        "dx": dx,
        "feature_dy": nan,
        "feature_dx": nan,
        "multiple": False,
        "aligned_dy": 0,
        "aligned_dx": 0,
        "rel_l2": nan,
        "max_abs": nan,
        "cosine": nan,
        "valid_fraction": 0.0,
        "top1_agreement": None,
        "note": f"{NOTE_UNKNOWN}: {layer.layout.source}",
    }


#: Layout plans, by model (weakly: a model that is freed takes its plans with it), then by all a plan depends on.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], LayoutPlan]] = weakref.WeakKeyDictionary()
#: The most plans remembered per model (input sizes, layer choices, overrides).
_PLANS_PER_MODEL = 8


def _layout_plan(
    model: nn.Module,
    watched: Sequence[tuple[str, nn.Module]],
    example: torch.Tensor,
    layouts: Sequence[tuple[str, str]],
    strides: Sequence[tuple[str, tuple[int, int]]],
    output_key: str | None = None,
) -> LayoutPlan:
    """The layout plan for ``example``'s size, made once per model, module structure, size, layers and overrides.

    Planning costs one single-image forward pass; a later probe of the same model at the same size does not pay it
    again. The structure is every module's name, identity and type, so a replaced module is a new plan.
    """
    structure = tuple((name, id(module), type(module)) for name, module in model.named_modules())
    watched_names = tuple(name for name, _ in watched)
    key = (tuple(example.shape[1:]), watched_names, structure, tuple(layouts), tuple(strides), output_key)
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is None:
        with torch.no_grad():
            plan = plan_layouts(
                model,
                watched,
                example,
                layouts=layouts,
                strides=strides,
                run=lambda batch: _recorded(model, watched, batch, output_key),
                output_key=output_key,
            )
        if len(plans) >= _PLANS_PER_MODEL:
            plans.pop(next(iter(plans)))
        plans[key] = plan
    return plan


def _rejected(model: nn.Module, batch: torch.Tensor, error: BaseException) -> NoReturn:
    fail(
        f"model {type(model).__name__}",
        f"rejected an input of shape {tuple(batch.shape)}: {type(error).__name__}: {first_line(error)}",
    )


def _recorded(
    model: nn.Module, watched: Sequence[tuple[str, nn.Module]], batch: torch.Tensor, output_key: str | None = None
) -> list[Any]:
    """:func:`shiftlab.layouts.record_outputs`, a model's failure reported as bad input."""
    try:
        return record_outputs(model, watched, batch, output_key)
    except ShiftlabError:
        raise
    except Exception as error:
        _rejected(model, batch, error)


COLUMNS = (
    "layer", "type", "depth", "layout", "shape", "stride", "dy", "dx", "feature_dy", "feature_dx", "multiple",
    "aligned_dy", "aligned_dx", "rel_l2", "max_abs", "cosine", "valid_fraction", "top1_agreement", "note",
)  # fmt: skip
NOTE_UNKNOWN = "layout unknown"


@dataclass
class ProbeResult:
    """Per-layer, per-shift equivariance errors of a model, with the protocol that produced them.

    ``rows`` is a tidy table: one dict per (layer, shift) with the keys in
    :data:`COLUMNS`; ``protocol`` says how it was measured (mode, shifts,
    images, sizes, dtype, device).
    """

    rows: list[dict[str, Any]]
    protocol: dict[str, Any]

    @classmethod
    def from_layers(cls, layers: Iterable[_Layer], protocol: dict[str, Any]) -> ProbeResult:
        rows = []
        shifts = protocol["shifts"]
        for layer in sorted(layers, key=lambda item: item.depth):
            layout = "prefix tokens" if layer.part == "prefix" else layer.layout.describe()
            if layer.comparison is None:  # layout unknown: rows that say so, and no number
                for dy, dx in shifts:
                    rows.append(_unknown_row(layer, dy, dx))
                continue
            errors = layer.comparison.compute()
            for error, agreement in zip(errors, layer.comparison.top1_agreement()):
                if error is None:
                    continue
                rows.append(
                    {
                        "layer": layer.label,
                        "type": layer.kind,
                        "depth": layer.depth,
                        "layout": layout,
                        "shape": list(layer.shape),
                        "stride": list(error.stride) if error.stride else None,
                        "dy": error.dy,
                        "dx": error.dx,
                        "feature_dy": error.feature_dy,
                        "feature_dx": error.feature_dx,
                        "multiple": error.multiple,
                        "aligned_dy": error.aligned_dy,
                        "aligned_dx": error.aligned_dx,
                        "rel_l2": error.rel_l2,
                        "max_abs": error.max_abs,
                        "cosine": error.cosine,
                        "valid_fraction": error.valid_fraction,
                        "top1_agreement": agreement,
                        "note": error.note,
                    }
                )  # in the order of COLUMNS
        return cls(rows, protocol)

    @property
    def layers(self) -> list[str]:
        """Watched layers in the order the forward pass reached them."""
        return list(dict.fromkeys(row["layer"] for row in self.rows))

    def layer_rows(self, layer: str) -> list[dict[str, Any]]:
        """The rows of one layer (one per shift)."""
        rows = [row for row in self.rows if row["layer"] == layer]
        check(
            bool(rows),
            "layer",
            f"{layer!r} was not probed; probed layers: "
            f"{', '.join(self.layers[:12])}{' ...' if len(self.layers) > 12 else ''}",
        )
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: stride and the mean and max relative error over the shifts (the zero shift excluded)."""
        table = []
        for layer in self.layers:
            rows = self.layer_rows(layer)
            moved = [row for row in rows if (row["dy"], row["dx"]) != (0, 0)] or rows
            errors = [row["rel_l2"] for row in moved if not math.isnan(row["rel_l2"])]
            table.append(
                {
                    "layer": layer,
                    "type": rows[0]["type"],
                    "depth": rows[0]["depth"],
                    "layout": rows[0]["layout"],
                    "shape": rows[0]["shape"],
                    "stride": rows[0]["stride"],
                    "mean_rel_l2": sum(errors) / len(errors) if errors else math.nan,
                    "max_rel_l2": max(errors) if errors else math.nan,
                    "exact_shifts": sum(1 for row in moved if row["rel_l2"] <= 1e-5),
                    "shifts": len(moved),
                }
            )
        return table

    #: The headers of :meth:`summary_table`.
    SUMMARY_HEADERS: tuple[str, ...] = (
        "depth", "layer", "type", "layout", "output shape", "stride", "mean rel L2", "max rel L2", "exact shifts"
    )  # fmt: skip

    def summary_table(self) -> list[list[str]]:
        """:meth:`summary` as text cells under :attr:`SUMMARY_HEADERS`, as the report and notebooks show it."""
        return [
            [
                str(row["depth"]),
                row["layer"],
                row["type"],
                row["layout"],
                "x".join(map(str, row["shape"])),
                format_stride(row["stride"]),
                format_number(row["mean_rel_l2"]),
                format_number(row["max_rel_l2"]),
                f"{row['exact_shifts']} / {row['shifts']}",
            ]
            for row in self.summary()
        ]

    def unknown_layouts(self) -> list[dict[str, Any]]:
        """The layers whose layout could not be determined (they carry no metric), once each, with why and the
        override that would measure them."""
        found = []
        for layer in self.layers:
            row = self.layer_rows(layer)[0]
            if row["layout"] == "unknown":
                name = layer.split(":")[0]
                found.append(
                    {
                        "layer": layer,
                        "type": row["type"],
                        "shape": row["shape"],
                        "why": row["note"].removeprefix(f"{NOTE_UNKNOWN}: "),
                        "override": f"layouts={{{name!r}: 'NCHW'}} (or NHWC, tokens, global); --layout '{name}=NCHW'",
                    }
                )
        return found

    def first_inexact_layer(self, tolerance: float = 1e-5) -> str | None:
        """The first layer (in forward order) with a relative error above ``tolerance`` for some shift."""
        for row in self.summary():
            if row["max_rel_l2"] > tolerance:
                return row["layer"]
        return None

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV text; written to ``path`` (atomically) when given."""
        text = csv_text(self.rows, COLUMNS)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """Protocol, per-layer summary and rows as JSON (NaN as null); written to ``path`` when given."""
        text = json_text({"protocol": self.protocol, "summary": self.summary(), "rows": self.rows})
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (one row per layer and shift, the columns of :data:`COLUMNS`).

        Raises:
            ShiftlabError: pandas is not installed (``pip install pandas``).
        """
        return data_frame(self.rows, COLUMNS, "ProbeResult.to_pandas()")

    def _repr_html_(self) -> str:
        """The summary as an HTML table with the depth plot, for Jupyter (see :mod:`shiftlab.notebook`)."""
        from shiftlab.notebook import probe_html

        return probe_html(self)

    def plot_depth(self, metric: str = "rel_l2", **kwargs: Any):
        """Error versus depth (see :func:`shiftlab.figures.show_error_vs_depth`)."""
        from shiftlab.figures import show_error_vs_depth

        return show_error_vs_depth(self.rows, metric=metric, **kwargs)

    def plot_heatmap(self, layers: str | Sequence[str], metric: str = "rel_l2", **kwargs: Any):
        """Error over the (dy, dx) grid for chosen layers (see :func:`shiftlab.figures.show_shift_heatmaps`)."""
        from shiftlab.figures import show_shift_heatmaps

        names = [layers] if isinstance(layers, str) else list(layers)
        return show_shift_heatmaps({name: self.layer_rows(name) for name in names}, metric=metric, **kwargs)
