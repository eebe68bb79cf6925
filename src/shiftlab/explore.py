"""Move the input and watch the maps: a few layers' outputs under every shift, with the probe's own numbers.

:func:`explorer_data` gives what an interactive explorer shows, as data:

* the **numbers** are :func:`shiftlab.probe`'s: it runs the probe on all the images and keeps its
  :class:`~shiftlab.probe.ProbeResult` (``.result``); each shown layer carries the probe's rows for it, one per
  shift, unchanged (``rel_l2`` is over *all* images, with the alignment the probe chose for all of them);
* the **frames** are one image's: the chosen layers' outputs for the original input and for every shifted input,
  captured with forward hooks (the probe's own hooks, labels and layout plan: ``layer1.0.relu:2`` is the second call,
  ``LAYER[prefix]`` a token map's prefix tokens), split into ``(C, h, w)`` maps by
  :meth:`shiftlab.layouts.Layout.split`, a few channels kept;
* the **per-image error** of the shown image, computed the probe's way (the same sums, the same border core, the
  same moves) at the alignment the probe chose for all images: the error of the maps on screen. With one image it
  is the probe's number.

What the explorer draws for a shift ``t`` and a layer of cumulative stride ``s``:
the input moved by ``t`` (as the probe moved it), ``f(T_t x)``, the original output moved by the probe's alignment
``o`` (``t / s`` when that is whole, else the floor or ceiling the probe found best) and their difference on the
pixels the probe compares (:meth:`ExplorerLayer.compared`): in ``zero`` and ``crop`` modes, only pixels whose
receptive field stays clear of the border, at both ends of the move. An output compared as a whole (a vector, the
logits, prefix tokens) is not moved: invariance is what is expected of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab._compare import PairSums, pair_sums, whole_sums
from shiftlab.equivariance import border_core, reference_input, shifted_input
from shiftlab.errors import InternalError, check, check_int, describe, fail
from shiftlab.layouts import resolve_overrides
from shiftlab.metrics import map_error
from shiftlab.probe import (
    PREFIX,
    LayerSpec,
    ProbeResult,
    _layout_plan,
    _model_device_dtype,
    _Watcher,
    probe,
    select_layers,
)
from shiftlab.shifts import check_shifts, crop_margin

__all__ = [
    "MAX_FRAME_VALUES",
    "ExplorerData",
    "ExplorerLayer",
    "explorer_data",
    "move_map",
    "representative_layers",
]

#: The most frame values (layers x channels x (shifts + 1) x pixels) one explorer keeps: 400 MB of float32.
MAX_FRAME_VALUES = 100_000_000
#: The longest output compared as a whole (a vector, logits, prefix tokens) whose values are kept as a frame.
MAX_WHOLE_VALUES = 16_384
#: The errors of the shown image, per shift (the probe's metrics for that image alone).
IMAGE_KEYS = ("rel_l2", "max_abs", "cosine", "valid_fraction")
#: The columns of a probe row that an explorer shows (the rest describe the layer, once).
ROW_KEYS = (
    "dy", "dx", "feature_dy", "feature_dx", "multiple", "aligned_dy", "aligned_dx",
    "rel_l2", "max_abs", "cosine", "valid_fraction", "top1_agreement", "note",
)  # fmt: skip


@dataclass
class ExplorerLayer:
    """One shown layer: its frames for the shown image, which pixels count, the probe's rows and the image's errors.

    Attributes:
        label: the probe's row name (``conv1``, ``layer1.0.relu:2``, ``encoder.layers.0[prefix]``, ``output``).
        kind: the module's type name.
        layout: as the probe's rows say it (``NCHW``, ``NHWC``, ``tokens``, ``global``, ``prefix tokens``).
        part: ``"map"`` (a spatial map, moved by the alignment) or ``"whole"`` (compared as a whole, not moved).
        stride: the cumulative stride ``(sy, sx)``, None for a whole output.
        shape: the compared shape for one image, as in the probe's rows.
        channels: the channels kept, strongest first (their L2 norm in the original output); ``[0]`` for a whole
            output, whose values are one frame.
        channel_count: how many channels the map has (1 for a whole output).
        reference: ``(k, h, w)`` float32: the original output, for the kept channels (a whole output: ``(1, 1, L)``).
        shifted: ``(S, k, h, w)`` float32: the output for each shifted input, in the order of the shifts.
        core: ``(h, w)`` bool: the pixels whose receptive field stays clear of the border (``zero``, ``crop``),
            None when every pixel counts (``circular``, ``fourier``, a whole output, or a map whose every pixel
            sees the border: the probe then compares the whole map).
        rows: the probe's rows for this layer, one per shift (keys :data:`ROW_KEYS`), unchanged.
        image_errors: per shift, ``{"rel_l2", "max_abs", "cosine", "valid_fraction"}`` of the shown image, over all
            channels, at the probe's alignment; with one image, the probe's own numbers (its passes were the very
            passes whose frames are kept).
        values_kept: for a whole output longer than :data:`MAX_WHOLE_VALUES`, how many values the frames keep.
    """

    label: str
    kind: str
    layout: str
    part: str
    stride: tuple[int, int] | None
    shape: tuple[int, ...]
    channels: list[int]
    channel_count: int
    reference: np.ndarray = field(repr=False)
    shifted: np.ndarray = field(repr=False)
    core: np.ndarray | None = field(repr=False)
    rows: list[dict[str, Any]] = field(repr=False)
    image_errors: list[dict[str, float]] = field(repr=False)
    circular: bool = True
    values_kept: int | None = None

    def alignment(self, index: int) -> tuple[int, int]:
        """The whole-pixel move ``(oy, ox)`` of the original output for shift ``index``: the probe's choice."""
        row = self.rows[index]
        return int(row["aligned_dy"]), int(row["aligned_dx"])

    def moved_reference(self, index: int) -> np.ndarray:
        """The original output moved as the probe moves it for shift ``index``: ``(k, h, w)``; a zero-fill move
        leaves zeros where nothing moved in (those pixels are not compared, see :meth:`compared`).

        Example:
            >>> layer = _toy_layer(circular=False)
            >>> layer.moved_reference(0)[0].tolist()
            [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
        """
        if self.part == "whole":
            return self.reference.copy()
        return move_map(self.reference, self.alignment(index), circular=self.circular)

    def compared(self, index: int) -> np.ndarray:
        """``(h, w)`` bool: the pixels the probe compares for shift ``index``, those where the shifted output and the
        moved original meet, each in the border core when there is one.

        Example:
            >>> _toy_layer(circular=False).compared(0).tolist()
            [[False, False, False], [False, True, True]]
        """
        height, width = self.reference.shape[-2:]
        if self.part == "whole" or self.circular:
            return np.ones((height, width), dtype=bool)
        oy, ox = self.alignment(index)
        core = self.core if self.core is not None else np.ones((height, width), dtype=bool)
        return core & move_map(core, (oy, ox), circular=False)

    def difference(self, index: int) -> np.ndarray:
        """``f(T_t x) - T_o f(x)`` for the kept channels, NaN where the probe compares nothing: ``(k, h, w)``."""
        difference = self.shifted[index] - self.moved_reference(index)
        return np.where(self.compared(index), difference, np.nan)


def move_map(array: np.ndarray, offset: tuple[int, int], *, circular: bool) -> np.ndarray:
    """``array`` moved by ``offset = (oy, ox)`` whole pixels on its last two axes, down and right, the way the probe
    moves maps: around the torus (``circular`` and ``fourier`` shifts), else with a zero fill.

    Example:
        >>> move_map(np.array([[1, 2, 3]]), (0, 1), circular=True).tolist()
        [[3, 1, 2]]
        >>> move_map(np.array([[1, 2, 3]]), (0, 1), circular=False).tolist()
        [[0, 1, 2]]
    """
    if circular:
        return np.roll(array, offset, axis=(-2, -1))
    moved = np.zeros_like(array)
    height, width = array.shape[-2:]
    oy, ox = offset
    moved[..., _span(oy, height), _span(ox, width)] = array[..., _span(-oy, height), _span(-ox, width)]
    return moved


def _span(offset: int, length: int) -> slice:
    """Where content lands along an axis of ``length`` when moved by ``offset`` (zero fill)."""
    return slice(min(length, max(0, offset)), max(0, length + min(0, offset)))


def _toy_layer(circular: bool) -> ExplorerLayer:
    """A 2x3 single-channel layer moved by (1, 1), for the doctests."""
    reference = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    row = {key: 0 for key in ROW_KEYS} | {"aligned_dy": 1, "aligned_dx": 1}
    return ExplorerLayer(
        "toy", "Toy", "NCHW", "map", (1, 1), (1, 2, 3), [0], 1, reference, reference[None], None, [row], [], circular
    )


@dataclass
class ExplorerData:
    """What an explorer shows: the probe's result, one image's input and frames of a few layers, under every shift.

    Attributes:
        result: the probe's :class:`~shiftlab.probe.ProbeResult` over all the images (its rows are the numbers shown).
        shifts: the ``(dy, dx)`` input shifts, in order.
        mode: the shift mode.
        image: the index of the shown image among the inputs.
        image_count: how many images the probe measured.
        image_shape: the shown input's ``(C, H, W)``, as the model gets it (before any crop window).
        display: ``(C, H, W)`` float32 in ``[0, 1]``: the shown image for the screen (un-normalised when
            ``normalization`` was given).
        display_shifted: ``(S, C, h, w)``, the shifted inputs for the screen, ``fourier`` mode only (the other modes
            are whole-pixel moves of ``display``, done where it is drawn).
        margin: the crop window's margin ``(my, mx)`` (``crop`` mode): the reference input is ``display`` less
            ``margin`` on every side, and shift ``t`` reads the window at ``margin - t``.
        layers: the shown layers, in forward order.
        names: the inputs' names, when known (``["chelsea", "coffee"]``), for captions.
    """

    result: ProbeResult
    shifts: list[tuple[float, float]]
    mode: str
    image: int
    image_count: int
    image_shape: tuple[int, ...]
    display: np.ndarray = field(repr=False)
    display_shifted: np.ndarray | None = field(repr=False)
    margin: tuple[int, int] | None
    layers: list[ExplorerLayer]
    names: list[str] = field(default_factory=list)

    def layer(self, label: str) -> ExplorerLayer:
        """The shown layer named ``label``."""
        for layer in self.layers:
            if layer.label == label:
                return layer
        fail("layer", f"{label!r} is not shown; shown layers: {', '.join(layer.label for layer in self.layers)}")

    def shifted_display(self, index: int) -> np.ndarray:
        """The shown input moved by shift ``index``, as the model got it (the crop window, in ``crop`` mode)."""
        if self.display_shifted is not None:
            return self.display_shifted[index]
        dy, dx = (int(value) for value in self.shifts[index])
        image = torch.from_numpy(self.display)
        return shifted_input(image, dy, dx, self.mode, self.margin).numpy()

    def frame_values(self) -> int:
        """How many frame values the explorer keeps (layers x channels x (shifts + 1) x pixels)."""
        return sum(layer.reference.size + layer.shifted.size for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no frames): protocol, and per shown layer the probe's rows and the shown image's errors."""
        return {
            "protocol": self.result.protocol,
            "mode": self.mode,
            "shifts": [list(pair) for pair in self.shifts],
            "image": self.image,
            "image_name": self.names[self.image] if self.image < len(self.names) else None,
            "images": self.image_count,
            "layers": [
                {
                    "layer": layer.label,
                    "type": layer.kind,
                    "layout": layer.layout,
                    "part": layer.part,
                    "stride": list(layer.stride) if layer.stride else None,
                    "shape": list(layer.shape),
                    "channels": layer.channels,
                    "channel_count": layer.channel_count,
                    "rows": layer.rows,
                    "image_errors": layer.image_errors,
                }
                for layer in self.layers
            ],
        }


def representative_layers(result: ProbeResult, count: int = 4) -> list[str]:
    """A few layers worth a look: the first, the first with a stride, one in the middle, and the output.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1))
        >>> representative_layers(probe(net, torch.rand(1, 1, 8, 8), shifts=[(0, 1)]))
        ['0', '1', '2', 'output']
    """
    summary = [row for row in result.summary() if row["layout"] not in ("unknown", "prefix tokens")]
    names = [row["layer"] for row in summary]
    if not names:
        return []
    chosen = [names[0]]
    strided = [row["layer"] for row in summary if row["stride"] and max(row["stride"]) > 1]
    if strided:
        chosen.append(strided[0])
    maps = [row["layer"] for row in summary if row["stride"]] or names
    chosen.append(maps[len(maps) // 2])
    chosen.append(names[-1])
    return list(dict.fromkeys(chosen))[:count]


# --------------------------------------------------------------------------- inputs


def _images(images: Any) -> list[torch.Tensor]:
    """The inputs as a list of ``(C, H, W)`` tensors: the explorer reads them twice (probe, then frames)."""
    if isinstance(images, torch.Tensor):
        check(images.ndim in (3, 4), "images", f"expected (C, H, W) or (N, C, H, W), got {describe(images)}")
        return list(images) if images.ndim == 4 else [images]
    check(
        isinstance(images, (list, tuple)) and len(images) > 0,
        "images",
        f"expected a tensor or a non-empty list of image tensors (the explorer reads them twice), got "
        f"{describe(images)}",
    )
    found: list[torch.Tensor] = []
    for position, item in enumerate(images):
        check(
            isinstance(item, torch.Tensor) and item.ndim in (3, 4),
            f"images[{position}]",
            f"expected a (C, H, W) or (N, C, H, W) tensor, got {describe(item)}",
        )
        found.extend(list(item) if item.ndim == 4 else [item])
    return found


def _display_image(image: torch.Tensor, normalization: tuple[Sequence[float], Sequence[float]] | None) -> np.ndarray:
    """The image for the screen, ``(C, H, W)`` in ``[0, 1]``: un-normalised when the statistics are given, as it is
    when it already lies in ``[0, 1]``, else scaled from its minimum and maximum (all channels together)."""
    values = image.detach().to("cpu", torch.float32)
    if normalization is not None:
        mean, std = (torch.tensor([float(v) for v in part]).reshape(-1, 1, 1) for part in normalization)
        check(
            mean.shape[0] in (1, values.shape[0]) and std.shape[0] in (1, values.shape[0]),
            "normalization",
            f"expected one mean and one std per channel ({values.shape[0]}), got {mean.shape[0]} and {std.shape[0]}",
        )
        values = values * std + mean
    finite = values[torch.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    if normalization is None and (low < 0.0 or high > 1.0):
        values = (values - low) / (high - low) if high > low else values - low
    return torch.nan_to_num(values, nan=0.0).clamp(0.0, 1.0).numpy()


# --------------------------------------------------------------------------- capture


@dataclass
class _Capture:
    """One shown layer while its frames are captured."""

    label: str
    module_name: str
    part: str  # "map" or "prefix" (of the module's output); "whole" is decided from the layout
    rows: list[dict[str, Any]]
    channels: list[int] | None = None
    channel_count: int = 0
    frames: torch.Tensor | None = None  # (1 + S, k, h, w): the original output, then one per shift
    core: torch.Tensor | None = None
    whole_map: bool = False
    errors: dict[int, dict[str, float]] = field(default_factory=dict)
    values_kept: int | None = None


def _choose_channels(reference: torch.Tensor, channels: int | Sequence[int], label: str) -> list[int]:
    """The kept channels: the ``k`` with the largest L2 norm (ties: lower index first), or those given."""
    count = reference.shape[0]
    if not isinstance(channels, Sequence):
        norms = torch.linalg.vector_norm(torch.nan_to_num(reference.double()), dim=(-2, -1)).tolist()
        order = sorted(range(count), key=lambda channel: (-norms[channel], channel))
        return order[: check_int(channels, "channels", minimum=1)]
    chosen = [check_int(channel, "channels", minimum=0) for channel in channels]
    for channel in chosen:
        check(channel < count, "channels", f"layer {label!r} has {count} channels, so channel {channel} does not exist")
    return chosen


def _metrics(sums: Any, position: int) -> dict[str, float]:
    difference, reference, output = sums.squares[position].tolist()
    error = map_error(
        difference,
        reference,
        output,
        float(sums.largest[position]),
        int(sums.compared[position]),
        sums.total,
    )
    return {
        "rel_l2": error.rel_l2,
        "max_abs": error.max_abs,
        "cosine": error.cosine,
        "valid_fraction": error.valid_fraction,
    }


class _Recorder:
    """The hooks' callback: for the shown layers, keep the kept channels' frames and add up the image's errors.

    Each pass is the reference input then the shifted inputs ``indices``, as the probe runs them; the zero shifts
    (``identity``) compare the reference with itself, as the probe does, with the first pass.
    """

    def __init__(
        self,
        captures: dict[str, _Capture],
        plan: Any,
        channels: int | Sequence[int],
        circular: bool,
        identity: Sequence[int],
        measure: bool,
        shift_count: int,
    ) -> None:
        self.captures = captures
        self.measure = measure
        self.plan = plan
        self.channels = channels
        self.circular = circular
        self.identity = tuple(identity)
        self.shift_count = shift_count
        self.input_size: tuple[int, int] = (0, 0)
        self.recording_cores = False
        self.indices: tuple[int, ...] = ()  # the shifts of the current pass (after the reference)

    def __call__(self, label: str, module: nn.Module, output: torch.Tensor) -> None:
        targets = [capture for capture in (self.captures.get(label), self.captures.get(label + PREFIX)) if capture]
        if not targets:
            return
        layout = self.plan.layout(label, module, (1, *output.shape[1:]))
        spatial, prefix = layout.split(output, self.input_size)
        for capture in targets:
            tensor = prefix if capture.part == "prefix" else spatial
            if tensor is None:
                continue  # no frame: the capture is reported missing, as the probe measured this output
            if self.recording_cores:
                if capture.part == "map" and layout.spatial:
                    core = torch.isfinite(tensor[0]).all(dim=0)
                    capture.core, capture.whole_map = core, not bool(core.any())
                continue
            if capture.part == "prefix" or not layout.spatial:
                capture.part = "whole"
            self._record(capture, tensor.detach())

    def _record(self, capture: _Capture, tensor: torch.Tensor) -> None:
        # (1 + k, 1, ...): one image per variant, the probe's grouping, so that the sums are the probe's
        grouped = tensor.reshape(tensor.shape[0], 1, *tensor.shape[1:])
        first = capture.frames is None
        measured: list[tuple[tuple[int, ...], tuple[list[int], PairSums]]] = []
        if capture.part == "whole":
            flat = tensor.reshape(tensor.shape[0], -1)
            kept = min(flat.shape[1], MAX_WHOLE_VALUES)
            capture.values_kept = kept if kept < flat.shape[1] else None
            frames = flat[:, None, None, :kept]  # one frame: a row of L values
            capture.channels, capture.channel_count = [0], 1
            if self.measure and self.indices:
                measured.append((self.indices, (list(range(len(self.indices))), whole_sums(grouped[0], grouped[1:]))))
            if self.measure and first and self.identity:
                same = grouped[0][None].expand(len(self.identity), *grouped.shape[1:])
                measured.append((self.identity, (list(range(len(self.identity))), whole_sums(grouped[0], same))))
        else:
            if capture.channels is None:
                capture.channels = _choose_channels(tensor[0], self.channels, capture.label)
                capture.channel_count = tensor.shape[1]
            frames = tensor[:, capture.channels]
            core = None if (self.circular or capture.whole_map) else capture.core
            if self.measure and self.indices:
                measured.append((self.indices, self._pair_sums(capture, grouped, self.indices, core)))
            if self.measure and first and self.identity:
                same = grouped[0][None].expand(1 + len(self.identity), *grouped.shape[1:])
                measured.append((self.identity, self._pair_sums(capture, same, self.identity, core)))
        if first:  # every frame of the layer in one tensor, the original first
            capture.frames = torch.empty((1 + self.shift_count, *frames.shape[1:]), dtype=torch.float32)
            capture.frames[0] = frames[0]
            for index in self.identity:  # the zero shift's output is the original's, as the probe takes it
                capture.frames[1 + index] = frames[0]
        assert capture.frames is not None
        for slot, index in enumerate(self.indices):
            capture.frames[1 + index] = frames[1 + slot]
        for indices, (slots, sums) in measured:
            for position, slot in enumerate(slots):
                capture.errors[indices[slot]] = _metrics(sums, position)

    def _pair_sums(
        self, capture: _Capture, maps: torch.Tensor, indices: tuple[int, ...], core: torch.Tensor | None
    ) -> tuple[list[int], PairSums]:
        """The probe's sums for the shifts ``indices`` (``maps[1 + j]`` is shift ``indices[j]``), each at the
        alignment the probe chose over all images; with the slot ``j`` of each of the sums, in their order."""
        by_alignment: dict[tuple[int, int], list[int]] = {}
        for slot, index in enumerate(indices):
            row = capture.rows[index]
            by_alignment.setdefault((int(row["aligned_dy"]), int(row["aligned_dx"])), []).append(slot)
        # pair_sums takes (and returns) its pairs grouped by alignment
        pairs = [(slot, offset) for offset, slots in by_alignment.items() for slot in slots]
        return [slot for slot, _ in pairs], pair_sums(maps, pairs, circular=self.circular, core=core)


def explorer_data(
    model: nn.Module,
    images: Any,
    shifts: Any,
    *,
    mode: str = "circular",
    layers: LayerSpec = None,
    show: Sequence[str] | None = None,
    channels: int | Sequence[int] = 4,
    image: int = 0,
    layouts: Any = None,
    strides: Any = None,
    batch_size: int = 64,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    output: str | None = None,
) -> ExplorerData:
    """Probe ``model`` on ``images`` and capture, for one image, the frames of a few layers under every shift.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images.
        images: a ``(N, C, H, W)`` or ``(C, H, W)`` tensor, or a list of them (read twice: by the probe, then for
            the frames; so not a stream).
        shifts: ``(dy, dx)`` pairs in input pixels (see :func:`shiftlab.probe`).
        mode: how the input is shifted: ``circular``, ``zero``, ``crop`` or ``fourier``.
        layers: which layers the probe watches, as for :func:`shiftlab.probe`.
        show: the probe's rows to draw (names as the rows give them: ``"conv1"``, ``"layer1.0.relu:2"``,
            ``"output"``). Default: the outputs of the layers that ``layers`` names (a string or a list of names),
            else four representative ones (:func:`representative_layers`).
        channels: how many channels to keep per map (the strongest in the original output), or which ones.
        image: which image to draw (its index among ``images``).
        layouts, strides, batch_size: as for :func:`shiftlab.probe`.
        normalization: the ``(mean, std)`` the images were normalised with; undone for the screen only.
        names: the images' names, for captions.
        progress: the probe's progress callback (see :func:`shiftlab.probe`).
        output: the main tensor of a structured model output, as for :func:`shiftlab.probe`.

    Returns:
        An :class:`ExplorerData`; ``.result`` is the probe's result over all images.

    Raises:
        ShiftlabError: bad arguments (as :func:`shiftlab.probe`), a shown layer that was not probed, or more frame
            values than :data:`MAX_FRAME_VALUES`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.MaxPool2d(2))
        >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> data = explorer_data(net, x, [(0, 0), (0, 1), (0, 2)], show=["0", "1"], channels=1)
        >>> pooled = data.layer("1")
        >>> [row["multiple"] for row in pooled.rows], pooled.shifted.shape
        ([True, False, True], (3, 1, 4, 4))
        >>> pooled.image_errors[2]["rel_l2"]
        0.0
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    inputs = _images(images)
    image = check_int(image, "image", minimum=0, maximum=len(inputs) - 1)
    check(
        not isinstance(channels, str | bytes),
        "channels",
        f"expected a count or a list of channel indices, got the string {channels!r}",
    )
    if isinstance(channels, Sequence):  # checked now, not after the probe has run
        check(len(channels) > 0, "channels", "is empty: give a count or at least one channel")
        channels = [check_int(channel, "channels", minimum=0) for channel in channels]
    else:
        channels = check_int(channels, "channels", minimum=1)
    pairs = check_shifts(shifts, mode)
    result = probe(
        model,
        inputs,
        shifts=pairs,
        mode=mode,
        layers=layers,
        layouts=layouts,
        strides=strides,
        batch_size=batch_size,
        progress=progress,
        output=output,
    )
    modules = {name for name, _ in model.named_modules() if name}
    chosen = _shown(result, layers, show, modules)
    captures = {}
    for label in chosen:
        rows = result.layer_rows(label)
        if rows[0]["layout"] == "unknown":
            fail("show", f"layer {label!r} has a layout shiftlab could not establish: {rows[0]['note']}")
        check(len(rows) == len(pairs), "show", f"layer {label!r} has {len(rows)} rows for {len(pairs)} shifts")
        prefix = label.endswith(PREFIX)
        base = label.removesuffix(PREFIX)
        module_name = "" if _is_output_row(base, modules) else base.split(":")[0]
        captures[label] = _Capture(label, module_name, "prefix" if prefix else "map", rows)
    _check_frame_budget(captures, channels, len(pairs))
    data = _capture(model, inputs, image, pairs, mode, captures, layers, layouts, strides, batch_size, channels, output)
    display = _display_image(inputs[image], normalization)
    display_shifted = None
    if mode == "fourier":
        display_shifted = np.stack(
            [shifted_input(torch.from_numpy(display), dy, dx, mode, None).clamp(0, 1).numpy() for dy, dx in pairs]
        )
    margin = crop_margin(pairs) if mode == "crop" else None
    explorer = ExplorerData(
        result,
        pairs,
        mode,
        image,
        len(inputs),
        tuple(inputs[image].shape),
        display,
        display_shifted,
        margin,
        data,
        list(names or []),
    )
    return explorer


def _frame_budget_message(total: int) -> str:
    return (
        f"{total:,} frame values are too many (at most {MAX_FRAME_VALUES:,}): show fewer layers or channels, fewer "
        "shifts, or smaller images"
    )


def _check_frame_budget(captures: dict[str, _Capture], channels: int | Sequence[int], shift_count: int) -> None:
    """Refuse, before any frame is kept, a request whose frames would exceed :data:`MAX_FRAME_VALUES`.

    The probe's rows give each layer's map shape, so the frames' size is known before the capture runs: the
    original output and one per shift, of the kept channels of a map, or of at most :data:`MAX_WHOLE_VALUES` values
    of any other output. (The check after the capture, on the frames themselves, stays as the exact one.)
    """
    total = 0
    for capture in captures.values():
        shape = [int(size) for size in capture.rows[0]["shape"]]
        if capture.part == "map" and len(shape) == 3 and capture.rows[0]["layout"] != "global":
            kept = len(channels) if isinstance(channels, Sequence) else min(int(channels), shape[0])
            values = kept * shape[1] * shape[2]
        else:
            values = min(math.prod(shape), MAX_WHOLE_VALUES)
        total += values * (1 + shift_count)
    check(total <= MAX_FRAME_VALUES, "explorer", _frame_budget_message(total))


def _is_output_row(label: str, modules: set[str]) -> bool:
    """A row of the model's own output: ``output``, or ``output.KEY`` for another tensor of a structured output."""
    name = label.split(":")[0]
    return name == "output" or (name.startswith("output.") and name not in modules)


def _shown(result: ProbeResult, layers: LayerSpec, show: Sequence[str] | None, modules: set[str]) -> list[str]:
    if show is None:
        named = isinstance(layers, str) and layers.strip() != "all"
        named = named or (isinstance(layers, (list, tuple)) and all(isinstance(item, str) for item in layers))
        if named:  # the named layers' outputs (the model's output is a row of its own: show=[..., "output"])
            return [
                label
                for label in result.layers
                if result.layer_rows(label)[0]["layout"] != "unknown" and not _is_output_row(label, modules)
            ]
        return representative_layers(result)
    chosen = [show] if isinstance(show, str) else list(show)
    check(len(chosen) > 0, "show", "is empty: name at least one probed layer")
    for label in chosen:
        check(
            label in result.layers,
            "show",
            f"{label!r} was not probed; probed: {', '.join(result.layers[:12])}"
            + (" ..." if len(result.layers) > 12 else ""),
        )
    return list(dict.fromkeys(chosen))


def _capture(
    model: nn.Module,
    inputs: list[torch.Tensor],
    image: int,
    pairs: list[tuple[float, float]],
    mode: str,
    captures: dict[str, _Capture],
    layers: LayerSpec,
    layouts: Any,
    strides: Any,
    batch_size: int,
    channels: int | Sequence[int],
    output: str | None,
) -> list[ExplorerLayer]:
    """Run the shown image and its shifted copies as the probe does, the hooks keeping frames and sums."""
    watched = select_layers(model, layers)
    by_name = dict(watched)
    hooked = {capture.module_name for capture in captures.values() if capture.module_name}
    missing = sorted(name for name in hooked if name not in by_name)
    if missing:
        raise InternalError(f"the explorer's layers {missing} are probe rows of no watched module")
    device, dtype = _model_device_dtype(model)
    first = inputs[0][None].to(device=device or inputs[0].device, dtype=dtype or inputs[0].dtype)
    shown = inputs[image][None].to(device=device or inputs[image].device, dtype=dtype or inputs[image].dtype)
    layout_overrides, stride_overrides = resolve_overrides(layouts, strides)
    circular = mode in ("circular", "fourier")
    modes = {name: module.training for name, module in model.named_modules()}
    try:
        model.eval()
        # The probe's own plan (remembered per model): planned from the first image, as the probe planned it.
        example = reference_input(first, pairs, mode)[0]
        plan = _layout_plan(model, watched, example, layout_overrides, stride_overrides, output)
        identity = [index for index, (dy, dx) in enumerate(pairs) if dy == 0 and dx == 0]
        # With one image the probe's numbers are this image's: its passes were these very passes.
        recorder = _Recorder(
            captures, plan, channels, circular, identity, measure=len(inputs) > 1, shift_count=len(pairs)
        )
        active = [index for index in range(len(pairs)) if index not in identity]
        chunk = max(1, min(len(active), batch_size - 1))
        chunks = [tuple(active[start : start + chunk]) for start in range(0, len(active), chunk)] or [()]
        modules = [(name, module) for name, module in watched if name in hooked]
        with _Watcher(model, modules, recorder, output) as watcher, torch.no_grad():
            reference, margin = reference_input(shown, pairs, mode)
            recorder.input_size = (reference.shape[-2], reference.shape[-1])
            if mode in ("zero", "crop"):
                recorder.recording_cores = True
                border_core(reference[0], crop_margin(pairs), watcher.run)
                recorder.recording_cores = False
            for indices in chunks:
                batch = reference.new_empty((1 + len(indices), *reference.shape[1:]))
                batch[0] = reference[0]
                for slot, index in enumerate(indices, start=1):
                    batch[slot] = shifted_input(shown, *pairs[index], mode, margin)[0]
                recorder.indices = indices
                watcher.run(batch)
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
    shown_layers = []
    for capture in captures.values():
        if capture.frames is None:
            raise InternalError(f"the explorer saw no output of layer {capture.label!r}, which the probe measured")
        if len(inputs) == 1:
            capture.errors = {index: {key: row[key] for key in IMAGE_KEYS} for index, row in enumerate(capture.rows)}
        shown_layers.append(_finish(capture, len(pairs), circular))
    total = sum(layer.reference.size + layer.shifted.size for layer in shown_layers)
    check(total <= MAX_FRAME_VALUES, "explorer", _frame_budget_message(total))
    return shown_layers


def _finish(capture: _Capture, shift_count: int, circular: bool) -> ExplorerLayer:
    row = capture.rows[0]
    assert capture.frames is not None and capture.channels is not None
    whole = capture.part == "whole"
    stride = None if whole or row["stride"] is None else (int(row["stride"][0]), int(row["stride"][1]))
    if not whole:
        expected = tuple(row["shape"][-2:])
        found = tuple(capture.frames.shape[-2:])
        if found != expected:
            raise InternalError(f"the explorer's map of {capture.label!r} is {found}, the probe's {expected}")
    core = None
    if not whole and not circular and capture.core is not None and not capture.whole_map:
        core = capture.core.to("cpu").numpy()
    rows = [{key: item[key] for key in ROW_KEYS} for item in capture.rows]
    return ExplorerLayer(
        label=capture.label,
        kind=row["type"],
        layout=row["layout"],
        part="whole" if whole else "map",
        stride=stride,
        shape=tuple(row["shape"]),
        channels=list(capture.channels),
        channel_count=capture.channel_count,
        reference=capture.frames[0].numpy(),
        shifted=capture.frames[1:].numpy(),
        core=core,
        rows=rows,
        image_errors=[capture.errors[index] for index in range(shift_count)],
        circular=circular,
        values_kept=capture.values_kept,
    )
