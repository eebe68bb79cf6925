"""Probe a whole model: the equivariance error of every layer of interest, under every shift, in batched passes.

:func:`probe` registers forward hooks on the layers it watches (found by name
or type, torchcam style), runs each image together with its shifted copies in
one batch, and inside each hook compares the shifted copies' maps with the
moved map of the original (see :mod:`shiftlab.probing.equivariance` for the
definition). Only running sums are kept, in one
:class:`~shiftlab.probing.equivariance.ShiftComparison` per layer, never the
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

The passes themselves (batching, hooks, train/eval flags, layout plans, border cores) are
:class:`shiftlab.probing.engine.ShiftedForward`'s; the probe is a callback on it. Each call of :func:`probe` plans the
layouts anew (one single-image pass at another size); to probe the same model again at the same size without that
pass, keep its engine: ``engine = probe_engine(model, layers)``, then ``probe_with(engine, inputs, shifts)``.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab._format import ROUNDING_LEVEL, format_error, format_stride
from shiftlab._io import atomic_write_text, csv_text, json_text
from shiftlab._pandas import data_frame
from shiftlab.errors import check, check_int, fail
from shiftlab.ops import Convolve, MaxPool
from shiftlab.probing._compare import Scratch
from shiftlab.probing.borders import AUTO, choose_mode
from shiftlab.probing.engine import OUTPUT, Pass, RunInfo, Seen, ShiftedForward
from shiftlab.probing.equivariance import Measured, ShiftComparison
from shiftlab.probing.layouts import FOLDED, Layout, resolve_overrides
from shiftlab.shifts import Shift, ShiftMode, check_shifts

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "OUTPUT",
    "PREFIX",
    "ProbeOptions",
    "ProbeResult",
    "probe",
    "probe_engine",
    "probe_with",
    "select_layers",
]

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
            or a predicate ``f(name, module) -> bool``. The name ``"output"`` (unless a module
            has it) is the model's final output, which is always watched (as are the tensors
            ``"output.KEY"`` of a structured output): ``"output"`` alone watches nothing else.

    Raises:
        ShiftlabError: a name or pattern that matches no module.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
        >>> [name for name, _ in select_layers(net)]
        ['0', '1']
        >>> [name for name, _ in select_layers(net, "1")]
        ['1']
        >>> [name for name, _ in select_layers(net, "1, output")]  # the output's row is there anyway
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
        if not matches and isinstance(item, str) and item.split(".")[0] == OUTPUT:
            continue  # the model's final output ("output", or a tensor of it, "output.KEY"): always watched
        if not matches:
            examples = ", ".join(name for name, _ in named[:8])
            fail("layers", f"{label} matches no module of the model (names look like: {examples}, ...)")
        chosen.update(matches)
    return [(name, module) for name, module in named if name in chosen]


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


class _Measurement:
    """The probe's callback on a :class:`~shiftlab.probing.engine.ShiftedForward` run: one
    :class:`~shiftlab.probing.equivariance.ShiftComparison` per watched output (and per token map's prefix tokens), fed
    from every pass, and the rows of outputs whose layout is unknown.

    Args:
        shifts: the run's shifts.
        mode: the run's shift mode.
    """

    def __init__(self, shifts: Sequence[Shift], mode: ShiftMode) -> None:
        self.shifts = list(shifts)
        self.mode = mode
        self.layers: dict[str, _Layer] = {}
        self.scratch = Scratch()
        # The last output measured, by weak reference, with its pass, layout and measurements (see __call__).
        self.last: tuple[weakref.ref, int, Pass, Layout, list[list[Measured]]] | None = None

    def __call__(self, seen: Seen) -> None:
        label, module, output, layout, step = seen.label, seen.module, seen.output, seen.layout, seen.step
        if not seen.fits:
            reason = layout.source if layout.kind == "unknown" else f"shape {tuple(output.shape)} does not fit it"
            shape = (seen.folded, *output.shape[1:]) if seen.folded != 1 else tuple(output.shape[1:])
            self._unknown(label, module, shape, replace(layout, kind="unknown", source=reason))
            return
        assert seen.spatial is not None
        part = "map" if layout.spatial else "whole"
        targets = [(self._layer(label, module, layout, part, seen.spatial), seen.spatial, seen.core)]
        if seen.prefix is not None:
            targets.append((self._layer(label + PREFIX, module, layout, "prefix", seen.prefix), seen.prefix, None))
        last = self.last
        if last is not None and last[0]() is output and last[1] == output._version and last[2] is step:
            measured = last[4] if last[3] == layout else None
        else:
            measured = None
        if measured is None:  # (the same tensor, unchanged, seen by a second hook, is measured once)
            measured = [self._measure(layer, tensor, step, core) for layer, tensor, core in targets]
            # Only a weak reference: the output is freed when the model drops it (a strong one would keep a
            # whole activation alive until the next watched layer); a dead reference cannot match reused memory.
            self.last = (weakref.ref(output), output._version, step, layout, measured)
        for (layer, _, _), batches in zip(targets, measured):
            assert layer.comparison is not None
            for batch in batches:
                layer.comparison.add(batch)

    def _layer(self, label: str, module: nn.Module, layout: Layout, part: str, tensor: torch.Tensor) -> _Layer:
        layer = self.layers.get(label)
        if layer is None:
            comparison = ShiftComparison(
                self.shifts,
                stride=layout.stride if part == "map" else None,
                circular=self.mode.wraps,
                logits=tensor.ndim == 2,
                device=tensor.device,
            )
            depth = len(self.layers) + 1
            layer = _Layer(label, type(module).__name__, depth, tuple(tensor.shape[1:]), layout, part, comparison)
            self.layers[label] = layer
        return layer

    def _unknown(self, label: str, module: nn.Module, shape: tuple[int, ...], layout: Layout) -> None:
        """A row that says the layout is unknown; ``shape``: the output's per input (with the folded axis, if any)."""
        if label not in self.layers:
            depth = len(self.layers) + 1
            self.layers[label] = _Layer(label, type(module).__name__, depth, shape, layout, "map", None)

    def _measure(
        self, layer: _Layer, tensor: torch.Tensor, step: Pass, found: tuple[torch.Tensor, bool] | None
    ) -> list[Measured]:
        """Compare one part of an output (its map, its prefix tokens, or the whole of it) for this pass."""
        comparison = layer.comparison
        assert comparison is not None
        core, whole_map = found if found is not None and layer.part == "map" else (None, False)
        return comparison.measure_pass(tensor, step, core=core, whole_map=whole_map, scratch=self.scratch)

    def result(self, info: RunInfo, batch_size: int) -> ProbeResult:
        """The :class:`ProbeResult` of the run that fed this measurement, with its protocol."""
        assert info.plan is not None
        protocol = {
            "mode": self.mode.mode,
            "mode_reason": self.mode.reason,
            "shifts": [list(pair) for pair in self.shifts],
            "images": info.images,
            "input_shapes": [list(shape) for shape in info.shapes],
            "dtype": str(info.dtype).replace("torch.", ""),
            "device": str(info.device),
            "layers_watched": info.watched,
            "layers_left_out": {
                name: f"folds patches or windows into the batch axis ({count} outputs per image)"
                for name, count in info.left_out.items()
            },
            "layouts": info.plan.method,
            "layout_doubts": {
                layer.label: layer.layout.doubt
                for layer in self.layers.values()
                if layer.layout.doubt and layer.part != "prefix"
            },
            "batch_size": batch_size,
            "output": info.output_found,
        }
        return ProbeResult.from_layers(self.layers.values(), protocol)


@dataclass(frozen=True)
class ProbeOptions:
    """How a probe runs, beyond the model, the inputs, the shifts and the mode: the arguments of :func:`probe` of the
    same names, bundled for the functions that run a probe for you (:func:`shiftlab.probing.explore.explorer_data`)."""

    layouts: Any = None
    strides: Any = None
    batch_size: int = 64
    output: str | None = None
    progress: Callable[[int, int | None], None] | None = None


def probe_engine(model: nn.Module, layers: LayerSpec = None, options: ProbeOptions | None = None) -> ShiftedForward:
    """The :class:`~shiftlab.probing.engine.ShiftedForward` that :func:`probe` runs for ``model``, its ``layers`` and
    ``options``: keep it to probe the same model again at the same input size without planning layouts again
    (:func:`probe_with`)."""
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    options = options or ProbeOptions()
    layout_overrides, stride_overrides = resolve_overrides(options.layouts, options.strides)
    return ShiftedForward(
        model,
        select_layers(model, layers),
        layouts=layout_overrides,
        strides=stride_overrides,
        output_key=options.output,
    )


def probe_with(
    engine: ShiftedForward,
    inputs: Any,
    shifts: Iterable[tuple[float, float]],
    mode: str | ShiftMode = AUTO,
    *,
    options: ProbeOptions | None = None,
    leave_out_folded: bool = True,
    also: Callable[[Seen], None] | None = None,
) -> ProbeResult:
    """:func:`probe` on an engine you keep (:func:`probe_engine`), optionally with another callback, ``also``, on
    the same passes (the explorer keeps its frames so, without a pass of its own).

    ``leave_out_folded``: the default layer choice's rule, leaving out outputs folded into the batch axis (see
    :func:`probe`); give False for layers named explicitly.
    """
    options = options or ProbeOptions()
    choice = choose_mode(engine.model, mode)
    batch_size = check_int(options.batch_size, "batch_size", minimum=2)
    pairs = check_shifts(shifts, choice)
    measurement = _Measurement(pairs, choice)
    callbacks: list[Callable[[Seen], None]] = [measurement] if also is None else [measurement, also]
    info = engine.run(
        inputs,
        pairs,
        choice,
        callbacks,
        batch_size=batch_size,
        progress=options.progress,
        leave_out_folded=leave_out_folded,
    )
    return measurement.result(info, batch_size)


def probe(
    model: nn.Module,
    inputs: Any,
    *,
    shifts: Iterable[tuple[float, float]],
    mode: str | ShiftMode = AUTO,
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
        mode: how the input is shifted: ``auto`` (default: ``circular`` when every padding in the model is
            circular or there is none, ``crop`` otherwise; see :mod:`shiftlab.probing.borders`), ``circular``, ``zero``,
            ``crop`` or ``fourier`` (see :mod:`shiftlab.shifts`). The protocol says which mode was used
            (``protocol["mode"]``) and why (``protocol["mode_reason"]``).
        layers: which layers to watch (see :func:`select_layers`). Under the default, a module whose output folds
            patches or windows into the batch axis (MobileViT's transformer: ``(N * 4, tokens, C)``), which no layout
            reads, is left out, and ``protocol["layers_left_out"]`` names it; named explicitly, it gets rows that say
            its layout is unknown.
        layouts: overrides of the layout of outputs, by layer name or glob pattern:
            ``{"features.*": "NHWC", "encoder.*": "tokens"}`` (or ``["PATTERN=LAYOUT", ...]``).
            Layouts are otherwise found as :mod:`shiftlab.probing.layouts` describes.
        strides: overrides of the cumulative stride, ``{"pattern": (sy, sx)}`` (or ``["PATTERN=SY,SX"]``).
        batch_size: the most inputs in one forward pass; an image and its
            shifted copies always share a pass (the shifts are split when
            ``1 + len(shifts)`` exceeds it).
        progress: called as ``progress(0, total)`` before the first forward pass, then as
            ``progress(done, total)`` after each (``total`` is None when the inputs are a stream
            of unknown length).
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
    choice = choose_mode(model, mode)  # the mode and the shifts refused before any layer is looked at
    check_int(batch_size, "batch_size", minimum=2)
    pairs = check_shifts(shifts, choice)
    options = ProbeOptions(layouts, strides, batch_size, output, progress)
    engine = probe_engine(model, layers, options)
    return probe_with(engine, inputs, pairs, choice, options=options, leave_out_folded=layers is None)


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
        """One row per layer: stride and the mean and max relative error over the shifts (the zero shift excluded).

        A layer whose layout is unknown has no number: its errors are NaN, and its stride and count of exact shifts
        ``None``.
        """
        table = []
        for layer in self.layers:
            rows = self.layer_rows(layer)
            moved = [row for row in rows if (row["dy"], row["dx"]) != (0, 0)] or rows
            errors = [row["rel_l2"] for row in moved if not math.isnan(row["rel_l2"])]
            known = rows[0]["layout"] != "unknown"
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
                    "exact_shifts": sum(1 for row in moved if row["rel_l2"] <= ROUNDING_LEVEL) if known else None,
                    "shifts": len(moved),
                }
            )
        return table

    #: The headers of :meth:`summary_table`.
    SUMMARY_HEADERS: tuple[str, ...] = (
        "depth", "layer", "type", "layout", "output shape", "stride", "mean rel L2", "max rel L2", "exact shifts"
    )  # fmt: skip

    def summary_table(self) -> list[list[str]]:
        """:meth:`summary` as text cells under :attr:`SUMMARY_HEADERS`, as the report, notebooks and the command line
        show it (``n/a`` for the stride and exact shifts of a layer whose layout is unknown)."""
        return [
            [
                str(row["depth"]),
                row["layer"],
                row["type"],
                row["layout"],
                "x".join(map(str, row["shape"])),
                format_stride(row["stride"], known=row["exact_shifts"] is not None),
                format_error(row["mean_rel_l2"]),
                format_error(row["max_rel_l2"]),
                "n/a" if row["exact_shifts"] is None else f"{row['exact_shifts']} / {row['shifts']}",
            ]
            for row in self.summary()
        ]

    def unknown_layouts(self) -> list[dict[str, Any]]:
        """The layers whose layout could not be determined (they carry no metric), once each, with why and the
        override that would measure them (``None`` for an output folded into the batch axis, which none can)."""
        found = []
        for layer in self.layers:
            row = self.layer_rows(layer)[0]
            if row["layout"] == "unknown":
                name = layer.split(":")[0]
                why = row["note"].removeprefix(f"{NOTE_UNKNOWN}: ")
                override: str | None = f"layouts={{{name!r}: 'NCHW'}} (or NHWC, tokens, global); --layout '{name}=NCHW'"
                if why.startswith(FOLDED):  # no override can help: no layout reads the batch axis
                    override = None
                found.append(
                    {"layer": layer, "type": row["type"], "shape": row["shape"], "why": why, "override": override}
                )
        return found

    def first_inexact_layer(self, tolerance: float = ROUNDING_LEVEL) -> str | None:
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
        """The summary as an HTML table with the depth plot, for Jupyter (see :mod:`shiftlab.report.notebook`)."""
        from shiftlab.report.notebook import probe_html

        return probe_html(self)

    def plot_depth(self, metric: str = "rel_l2", **kwargs: Any):
        """Error versus depth (see :func:`shiftlab.report.figures.show_error_vs_depth`)."""
        from shiftlab.report.figures import show_error_vs_depth

        return show_error_vs_depth(self.rows, metric=metric, **kwargs)

    def plot_heatmap(self, layers: str | Sequence[str], metric: str = "rel_l2", **kwargs: Any):
        """Error over the (dy, dx) grid for chosen layers (see :func:`shiftlab.report.figures.show_shift_heatmaps`)."""
        from shiftlab.report.figures import show_shift_heatmaps

        names = [layers] if isinstance(layers, str) else list(layers)
        return show_shift_heatmaps({name: self.layer_rows(name) for name in names}, metric=metric, **kwargs)
