"""Probe a whole model: the equivariance error of every layer of interest, under every shift, in one batched pass.

:func:`probe` registers forward hooks on the layers it watches (found by name
or type, torchcam style), runs each image together with all its shifted
copies in one batch, and inside each hook compares the shifted copies' maps
with the moved map of the original (see :mod:`shiftlab.equivariance` for the
definition). Only running sums are kept, never the activations. The hooks are
removed and every module's train/eval flag restored on the way out, also when
the model raises; parameters and buffers are never changed (the model runs in
eval mode under ``torch.no_grad``).

A module called several times in one forward pass (torchvision's ResNet
blocks reuse one ``ReLU``) gets one row per call: ``layer1.0.relu`` then
``layer1.0.relu:2``. Channels-last maps ``(N, H, W, C)`` (the LayerNorm and
Linear layers inside ConvNeXt blocks) are recognised by their size and
compared, and listed, as ``(C, H, W)``. The model's final output is the row
``output``; for ``(N, classes)`` logits it also carries ``top1_agreement``,
the share of images whose top-1 class is unchanged by the shift.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from shiftlab._compare import Scratch
from shiftlab._io import atomic_write_text
from shiftlab.equivariance import (
    MapSums,
    ShiftStats,
    _check_shifts,
    border_core,
    measure_map,
    reference_input,
    shifted_input,
)
from shiftlab.errors import ShiftlabError, check, describe, fail, first_line
from shiftlab.ops import Convolve, MaxPool
from shiftlab.shifts import SHIFT_MODES, crop_margin

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
#: Layers whose 4-D output is always ``(N, C, H, W)``: they tell the size of the maps around them.
_CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.LPPool2d, nn.FractionalMaxPool2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, Convolve, MaxPool,
)  # fmt: skip

LayerSpec = Union[None, str, Sequence[str | type], Callable[[str, nn.Module], bool]]


def _is_block(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return any(word in name for word in _BLOCK_WORDS) and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )


def _is_default(module: nn.Module) -> bool:
    return isinstance(module, _DEFAULT_TYPES) or _is_block(module)


def select_layers(model: nn.Module, layers: LayerSpec = None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that :func:`probe` watches.

    Args:
        model: the network.
        layers: ``None`` for the default (every conv, pooling, normalisation,
            activation, linear layer and residual block); names or glob patterns
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
        return [(name, module) for name, module in named if _is_default(module)]
    if callable(layers) and not isinstance(layers, type):
        return [(name, module) for name, module in named if layers(name, module)]
    items = [part.strip() for part in layers.split(",") if part.strip()] if isinstance(layers, str) else list(layers)
    chosen: dict[str, nn.Module] = {}
    for item in items:
        if isinstance(item, type):
            matches = [(name, module) for name, module in named if isinstance(module, item)]
            label = f"type {item.__name__}"
        else:
            matches = [(name, module) for name, module in named if name == item or fnmatch.fnmatchcase(name, str(item))]
            label = repr(item)
        if not matches:
            examples = ", ".join(name for name, _ in named[:8])
            fail("layers", f"{label} matches no module of the model (names look like: {examples}, ...)")
        chosen.update(matches)
    return [(name, module) for name, module in named if name in chosen]


@dataclass
class _LayerState:
    """What one watched layer has seen so far."""

    label: str
    kind: str
    depth: int
    shape: tuple[int, ...]
    spatial: bool
    stats: list[ShiftStats]
    stride: tuple[int, int] | None = None  # the map's cumulative stride, once found
    agreement: list[list[int]] = field(default_factory=list)  # per shift: [agreeing, total]
    # Sums not yet read back from the device, per tuple of shift indices measured together:
    # (the map's sums, the count of images whose top-1 class agreed per shift, or None, and the images seen).
    pending: dict[tuple[int, ...], tuple[MapSums, torch.Tensor | None, int]] = field(default_factory=dict)

    def settle(self) -> None:
        """Read the pending sums back (once per probe) into the per-shift statistics."""
        for indices, (measured, agreeing, images) in self.pending.items():
            measured.add_to([self.stats[index] for index in indices])
            counts = agreeing.tolist() if agreeing is not None else [0] * len(indices)
            for index, count in zip(indices, counts):
                self.agreement[index][0] += count
                self.agreement[index][1] += images if agreeing is not None else 0
        self.pending.clear()


class _Watcher:
    """Forward hooks on the watched layers; removed on exit, even after an exception (torchcam style)."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        on_output: Callable[[str, nn.Module, torch.Tensor], None],
    ) -> None:
        self.model = model
        self.layers = layers
        self.on_output = on_output
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.calls: dict[str, int] = {}
        self.spatial: tuple[int, ...] = ()

    def __enter__(self) -> _Watcher:
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._hook(name)))
        self.handles.append(self.model.register_forward_hook(self._hook("")))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count = self.calls.get(name, 0) + 1
            self.calls[name] = count
            label = (name or "output") if count == 1 else f"{name or 'output'}:{count}"
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                self.on_output(label, module, self._channels_first(module, output))

        return hook

    def _channels_first(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        """``output``, permuted to ``(N, C, H, W)`` when it is a channels-last map.

        A 4-D output is taken for ``(N, H, W, C)`` (ConvNeXt's LayerNorm and
        Linear layers, Swin) when its axes 1 and 2, and not 2 and 3, have the
        size of the last ``(N, C, H, W)`` map seen in this pass.
        """
        if output.ndim != 4:
            return output
        if isinstance(module, _CHANNELS_FIRST):
            self.spatial = tuple(output.shape[-2:])
        elif tuple(output.shape[1:3]) == self.spatial and tuple(output.shape[2:]) != self.spatial:
            return output.permute(0, 3, 1, 2)
        return output

    def forward(self, batch: torch.Tensor) -> Any:
        self.calls = {}
        self.spatial = tuple(batch.shape[-2:])
        return self.model(batch)

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _as_batches(inputs: Any) -> list[torch.Tensor]:
    """Images as a list of ``(G, C, H, W)`` tensors, one per distinct size."""
    if isinstance(inputs, torch.Tensor):
        check(inputs.ndim in (3, 4), "inputs", f"expected (N, C, H, W) or (C, H, W), got {describe(inputs)}")
        tensors = [inputs] if inputs.ndim == 4 else [inputs[None]]
    else:
        items = list(inputs) if isinstance(inputs, Iterable) else [inputs]
        check(len(items) > 0, "inputs", "is empty")
        tensors = []
        for index, item in enumerate(items):
            tensor = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
            check(
                tensor.ndim in (3, 4), f"inputs[{index}]", f"expected (C, H, W) or (N, C, H, W), got {describe(item)}"
            )
            tensors.append(tensor if tensor.ndim == 4 else tensor[None])
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for tensor in tensors:
        check(tensor.numel() > 0, "inputs", f"is empty: {describe(tensor)}")
        check(tensor.is_floating_point(), "inputs", f"expected floating-point images, got {describe(tensor)}")
        groups.setdefault(tuple(tensor.shape[1:]), []).append(tensor)
    return [torch.cat(group) for group in groups.values()]


def probe(
    model: nn.Module,
    inputs: Any,
    *,
    shifts: Iterable[tuple[float, float]],
    mode: str = "circular",
    layers: LayerSpec = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Measure the translation equivariance of every watched layer of ``model``.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images.
        inputs: ``(N, C, H, W)`` or ``(C, H, W)`` tensor, or a list of them
            (images of different sizes are run in separate groups). Moved to
            the model's device and dtype.
        shifts: ``(dy, dx)`` pairs in input pixels; see :func:`shiftlab.shift_range`,
            :func:`shiftlab.shift_grid`, :func:`shiftlab.parse_shifts`.
        mode: how the input is shifted: ``circular`` (default), ``zero``,
            ``crop`` or ``fourier`` (see :mod:`shiftlab.shifts`).
        layers: which layers to watch (see :func:`select_layers`).
        batch_size: the most inputs in one forward pass; an image and its
            shifted copies always share a pass (the shifts are split when
            ``1 + len(shifts)`` exceeds it).
        progress: called as ``progress(done, total)`` after each forward pass.

    Returns:
        A :class:`ProbeResult`: one row per watched layer and shift.

    Raises:
        ShiftlabError: bad arguments, or a model that rejects the input (the
            message quotes the model's own first line).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.MaxPool2d(2))
        >>> x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> result = probe(net, x, shifts=[(0, 1), (0, 2)])
        >>> [(row["layer"], row["dx"], row["multiple"], round(row["rel_l2"], 4)) for row in result.rows if row["layer"] != "output"][-2:]
        [('2', 1, False, 0.217), ('2', 2, True, 0.0)]
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    check(mode in SHIFT_MODES, "mode", f"must be one of {', '.join(SHIFT_MODES)}, got {mode!r}")
    check(isinstance(batch_size, int) and batch_size >= 2, "batch_size", f"must be an integer >= 2, got {batch_size!r}")
    pairs = _check_shifts(shifts, mode)
    watched = select_layers(model, layers)
    device, dtype = _model_device_dtype(model)
    groups = [group.to(device=device or group.device, dtype=dtype or group.dtype) for group in _as_batches(inputs)]
    # The zero shift is the identity: its row compares f(x) with itself, and costs no forward pass.
    identity = [index for index, (dy, dx) in enumerate(pairs) if dy == 0 and dx == 0]
    active = [index for index in range(len(pairs)) if index not in identity]
    chunk = max(1, min(len(active), batch_size - 1))
    shift_chunks = [active[start : start + chunk] for start in range(0, len(active), chunk)] or [[]]
    states: dict[str, _LayerState] = {}
    context: dict[str, Any] = {"scratch": Scratch()}

    def on_output(label: str, module: nn.Module, output: torch.Tensor) -> None:
        if context["phase"] == "core":
            _record_core(states, context, label, output)
        else:
            _accumulate(states, context, label, module, output, pairs, mode)

    modes = {name: module.training for name, module in model.named_modules()}
    total_passes = sum(
        len(shift_chunks) * math.ceil(group.shape[0] / max(1, batch_size // (1 + chunk))) for group in groups
    )
    done = 0
    try:
        model.eval()
        with _Watcher(model, watched, on_output) as watcher, torch.no_grad():
            for group in groups:
                reference, margin = reference_input(group, pairs, mode)
                context["input_size"] = tuple(reference.shape[-2:])
                context["cores"] = {}
                if mode in ("zero", "crop"):
                    context["phase"] = "core"
                    border_core(reference[0], crop_margin(pairs), lambda batch: _run(watcher, batch, model))
                context["phase"] = "measure"
                images_per_pass = max(1, batch_size // (1 + chunk))
                for start in range(0, group.shape[0], images_per_pass):
                    stop = min(start + images_per_pass, group.shape[0])
                    for position, indices in enumerate(shift_chunks):
                        # Built pass by pass: the shifted copies of all shifts never coexist.
                        batch = reference.new_empty((1 + len(indices), stop - start, *reference.shape[1:]))
                        batch[0] = reference[start:stop]
                        for slot, index in enumerate(indices, start=1):
                            batch[slot] = shifted_input(group[start:stop], *pairs[index], mode, margin)
                        context["variants"], context["images"], context["shift_indices"] = (
                            1 + len(indices),
                            stop - start,
                            indices,
                        )
                        context["identity"] = identity if position == 0 else []
                        context["previous"] = None
                        _run(watcher, batch.flatten(0, 1), model)
                        done += 1
                        if progress is not None:
                            progress(done, total_passes)
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
    return ProbeResult.from_states(
        states.values(),
        protocol={
            "mode": mode,
            "shifts": [list(pair) for pair in pairs],
            "images": sum(group.shape[0] for group in groups),
            "input_shapes": [list(group.shape[1:]) for group in groups],
            "dtype": str(dtype or groups[0].dtype).replace("torch.", ""),
            "device": str(device or groups[0].device),
            "layers_watched": len(watched),
            "batch_size": batch_size,
        },
    )


def _run(watcher: _Watcher, batch: torch.Tensor, model: nn.Module) -> None:
    try:
        watcher.forward(batch)
    except ShiftlabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as error:
        name = type(model).__name__
        fail(f"model {name}", f"rejected an input of shape {tuple(batch.shape)}: {first_line(error)}")


def _record_core(states: dict[str, _LayerState], context: dict[str, Any], label: str, output: torch.Tensor) -> None:
    if output.ndim == 4:
        context["cores"][label] = torch.isfinite(output[0]).all(dim=0)


def _accumulate(
    states: dict[str, _LayerState],
    context: dict[str, Any],
    label: str,
    module: nn.Module,
    output: torch.Tensor,
    pairs: list[tuple[float, float]],
    mode: str,
) -> None:
    variants, images = context["variants"], context["images"]
    if output.shape[0] != variants * images:
        return  # not batch-first (e.g. a sequence layer): nothing to compare
    state = states.get(label)
    if state is None:
        spatial = output.ndim == 4 and output.shape[-2] * output.shape[-1] > 1  # a 1x1 map is global
        state = _LayerState(
            label=label,
            kind=type(module).__name__,
            depth=len(states) + 1,
            shape=tuple(output.shape[1:]),
            spatial=spatial,
            stats=[ShiftStats(dy, dx) for dy, dx in pairs],
            agreement=[[0, 0] for _ in pairs],
        )
        states[label] = state
    # The same tensor, unchanged, seen by a second hook (a residual block returns its last ReLU's output,
    # a classifier its head's): measure it once. Only a weak reference is kept, so that the output is
    # freed when the model drops it (a strong one would keep a whole activation alive until the next
    # watched layer); a freed tensor's reference is dead, so memory reused cannot be mistaken for it.
    previous = context.get("previous")
    if previous is not None and previous[0]() is output and previous[1] == output._version:
        measurements = previous[2]
    else:
        measurements = _measure(context, state, label, output, pairs, mode)
        context["previous"] = (weakref.ref(output), output._version, measurements)
    state.stride = state.stride or next((measured.stride for _, measured, _ in measurements), None)
    for indices, measured, agreeing in measurements:
        key = tuple(indices)
        if key in state.pending:
            previous_sums, previous_agreeing, seen = state.pending[key]
            measured = previous_sums + measured
            agreeing = previous_agreeing + agreeing if agreeing is not None else None
            images = seen + context["images"]
        else:
            images = context["images"]
        state.pending[key] = (measured, agreeing, images)


def _measure(
    context: dict[str, Any],
    state: _LayerState,
    label: str,
    output: torch.Tensor,
    pairs: list[tuple[float, float]],
    mode: str,
) -> list[tuple[list[int], MapSums, torch.Tensor | None]]:
    """This batch's sums for one layer output: ``(shift indices, sums, top-1 agreements)`` per part."""
    grouped = output.reshape(context["variants"], context["images"], *output.shape[1:])
    reference = grouped[0]
    # (shift indices, the reference then their outputs): this pass's shifted copies, and the identity shifts,
    # whose output is the reference.
    parts = [(context["shift_indices"], grouped)]
    if context["identity"]:
        parts.append((context["identity"], reference[None].expand(1 + len(context["identity"]), *reference.shape)))
    measurements = []
    for indices, maps in parts:
        if not indices:
            continue
        shifted = maps[1:]
        measured = measure_map(
            maps,
            [pairs[index] for index in indices],
            spatial=state.spatial,
            circular=mode in ("circular", "fourier"),
            stride=state.stride,
            input_size=context["input_size"],
            core=context["cores"].get(label),
            scratch=context["scratch"],
        )
        agreeing = None
        if output.ndim == 2:  # logits: does the top-1 class survive the shift?
            agreeing = (shifted.argmax(dim=-1) == reference.argmax(dim=-1)).sum(dim=1)
        measurements.append((indices, measured, agreeing))
    return measurements


COLUMNS = (
    "layer", "type", "depth", "shape", "stride", "dy", "dx", "feature_dy", "feature_dx", "multiple",
    "aligned_dy", "aligned_dx", "rel_l2", "max_abs", "cosine", "valid_fraction", "top1_agreement", "note",
)  # fmt: skip


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
    def from_states(cls, states: Iterable[_LayerState], protocol: dict[str, Any]) -> ProbeResult:
        rows = []
        for state in sorted(states, key=lambda item: item.depth):
            state.settle()
            for stats, (agree, total) in zip(state.stats, state.agreement):
                if not stats.sums:
                    continue
                error = stats.result()
                rows.append(
                    {
                        "layer": state.label,
                        "type": state.kind,
                        "depth": state.depth,
                        "shape": list(state.shape),
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
                        "top1_agreement": agree / total if total else None,
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
            f"{layer!r} was not probed; probed layers: {', '.join(self.layers[:12])}{' ...' if len(self.layers) > 12 else ''}",
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
                    "shape": rows[0]["shape"],
                    "stride": rows[0]["stride"],
                    "mean_rel_l2": sum(errors) / len(errors) if errors else math.nan,
                    "max_rel_l2": max(errors) if errors else math.nan,
                    "exact_shifts": sum(1 for row in moved if row["rel_l2"] <= 1e-5),
                    "shifts": len(moved),
                }
            )
        return table

    def first_inexact_layer(self, tolerance: float = 1e-5) -> str | None:
        """The first layer (in forward order) with a relative error above ``tolerance`` for some shift."""
        for row in self.summary():
            if row["max_rel_l2"] > tolerance:
                return row["layer"]
        return None

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV text; written to ``path`` (atomically) when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {key: "x".join(map(str, value)) if isinstance(value, list) else value for key, value in row.items()}
            )
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """Protocol, per-layer summary and rows as JSON (NaN as null); written to ``path`` when given."""
        from shiftlab.report import to_jsonable

        text = (
            json.dumps(
                to_jsonable({"protocol": self.protocol, "summary": self.summary(), "rows": self.rows}),
                indent=2,
                allow_nan=False,
            )
            + "\n"
        )
        if path is not None:
            atomic_write_text(path, text)
        return text

    def plot_depth(self, metric: str = "rel_l2", **kwargs: Any):
        """Error versus depth (see :func:`shiftlab.figures.show_error_vs_depth`)."""
        from shiftlab.figures import show_error_vs_depth

        return show_error_vs_depth(self.rows, metric=metric, **kwargs)

    def plot_heatmap(self, layers: str | Sequence[str], metric: str = "rel_l2", **kwargs: Any):
        """Error over the (dy, dx) grid for chosen layers (see :func:`shiftlab.figures.show_shift_heatmaps`)."""
        from shiftlab.figures import show_shift_heatmaps

        names = [layers] if isinstance(layers, str) else list(layers)
        return show_shift_heatmaps({name: self.layer_rows(name) for name in names}, metric=metric, **kwargs)
