"""Move the input and watch the maps: a few layers' outputs under every shift, with the probe's own numbers.

:func:`explorer_data` gives what an interactive explorer shows, as data:

* the **numbers** are :func:`shiftlab.probe`'s: it runs the probe on all the images and keeps its
  :class:`~shiftlab.probing.layerwise.ProbeResult` (``.result``); each shown layer carries the probe's rows for it, one
  per shift, unchanged (``rel_l2`` is over *all* images, with the alignment the probe chose for all of them);
* the **frames** are one image's: the chosen layers' outputs for the original input and for every shifted input,
  kept by a callback on the probe's own passes (:func:`shiftlab.probing.layerwise.probe_with` on a
  :class:`~shiftlab.probing.engine.ShiftedForward`: the same hooks, labels and layout plan, ``layer1.0.relu:2`` the
  second call, ``LAYER[prefix]`` a token map's prefix tokens; no pass runs twice), split into ``(C, h, w)`` maps by
  :meth:`shiftlab.probing.layouts.Layout.split`, a few channels kept;
* the **per-image error** of the shown image, computed the probe's way (a
  :class:`~shiftlab.probing.equivariance.ShiftComparison` of that image alone: the same sums, the same border core, the
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.errors import InternalError, check, check_int, describe, fail
from shiftlab.probing.borders import AUTO, choose_mode
from shiftlab.probing.engine import Seen, ShiftedForward
from shiftlab.probing.equivariance import ShiftComparison
from shiftlab.probing.layerwise import (
    OUTPUT,
    PREFIX,
    LayerSpec,
    ProbeOptions,
    ProbeResult,
    probe_engine,
    probe_with,
)
from shiftlab.shifts import Shift, ShiftMode, check_shifts, crop_margin

__all__ = [
    "MAX_FRAME_VALUES",
    "ExplorerData",
    "ExplorerLayer",
    "Screen",
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
            >>> reference = np.arange(6, dtype=np.float32).reshape(1, 2, 3)  # one 2x3 channel, moved by (1, 1)
            >>> row = {key: 0 for key in ROW_KEYS} | {"aligned_dy": 1, "aligned_dx": 1}
            >>> layer = ExplorerLayer("toy", "Toy", "NCHW", "map", (1, 1), (1, 2, 3), [0], 1, reference,
            ...                       reference[None], None, [row], [], circular=False)
            >>> layer.moved_reference(0)[0].tolist()
            [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
            >>> layer.compared(0).tolist()  # where the shifted output and the moved original meet
            [[False, False, False], [False, True, True]]
        """
        if self.part == "whole":
            return self.reference.copy()
        return move_map(self.reference, self.alignment(index), circular=self.circular)

    def compared(self, index: int) -> np.ndarray:
        """``(h, w)`` bool: the pixels the probe compares for shift ``index``, those where the shifted output and the
        moved original meet, each in the border core when there is one (see :meth:`moved_reference` for an example).
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


@dataclass
class ExplorerData:
    """What an explorer shows: the probe's result, one image's input and frames of a few layers, under every shift.

    Attributes:
        result: the probe's :class:`~shiftlab.probing.layerwise.ProbeResult` over all the images (its rows are the
        numbers shown). shifts: the ``(dy, dx)`` input shifts, in order.
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
        >>> from shiftlab.probing.layerwise import probe
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
    """One shown layer while its frames are captured on the probe's passes."""

    label: str
    module_name: str
    part: str  # "map" or "prefix" (of the module's output); "whole" is decided from the layout
    rows: list[dict[str, Any]]  # the preview's row until the probe has run, then the probe's rows
    channels: list[int] | None = None
    channel_count: int = 0
    frames: torch.Tensor | None = None  # (1 + S, k, h, w): the original output, then one per shift
    core: torch.Tensor | None = None
    whole_map: bool = False
    comparison: ShiftComparison | None = None  # the shown image's own sums, at every alignment the probe weighs
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


class _Recorder:
    """A callback on the probe's own passes: for the shown image and the shown layers, keep the kept channels' frames
    and the image's own comparison sums (the probe's comparison, for one image).

    The shown image sits at ``slot`` of the passes of its image group; the zero shifts (``identity`` of the group's
    first pass) compare the reference with itself, as the probe does.
    """

    def __init__(
        self,
        captures: dict[str, _Capture],
        image: int,
        channels: int | Sequence[int],
        mode: ShiftMode,
        shifts: list[Shift],
        measure: bool,
    ) -> None:
        self.captures = captures
        self.image = image
        self.channels = channels
        self.mode = mode
        self.shifts = shifts
        self.measure = measure

    def __call__(self, seen: Seen) -> None:
        step = seen.step
        if not step.first <= self.image < step.first + step.images or not seen.fits:
            return  # another image's pass, or an output the probe cannot compare (refused when shown)
        slot = self.image - step.first
        for capture in (self.captures.get(seen.label), self.captures.get(seen.label + PREFIX)):
            if capture is None:
                continue
            tensor = seen.prefix if capture.part == "prefix" else seen.spatial
            if tensor is None:
                continue  # no frame: the capture is reported missing, as the probe measured this output
            if capture.part == "prefix" or not seen.layout.spatial:
                capture.part = "whole"
            elif seen.core is not None:
                capture.core, capture.whole_map = seen.core
            # (1 + k, 1, ...): the shown image's variants, one image each, the probe's grouping
            mine = tensor.detach().reshape(step.variants, step.images, *tensor.shape[1:])[:, slot : slot + 1]
            self._record(capture, mine, step.indices, step.identity, seen.layout.stride)

    def _record(
        self,
        capture: _Capture,
        grouped: torch.Tensor,
        indices: tuple[int, ...],
        identity: tuple[int, ...],
        stride: tuple[int, int] | None,
    ) -> None:
        maps = grouped[:, 0]
        if capture.part == "whole":
            flat = maps.reshape(maps.shape[0], -1)
            kept = min(flat.shape[1], MAX_WHOLE_VALUES)
            capture.values_kept = kept if kept < flat.shape[1] else None
            frames = flat[:, None, None, :kept]  # one frame: a row of L values
            capture.channels, capture.channel_count = [0], 1
        else:
            if capture.channels is None:
                capture.channels = _choose_channels(maps[0], self.channels, capture.label)
                capture.channel_count = maps.shape[1]
            frames = maps[:, capture.channels]
        if capture.frames is None:  # every frame of the layer in one tensor, the original first
            shape = (1 + len(self.shifts), *frames.shape[1:])
            capture.frames = torch.empty(shape, dtype=torch.float32)
        capture.frames[0] = frames[0]
        for index in identity:  # the zero shift's output is the original's, as the probe takes it
            capture.frames[1 + index] = frames[0]
        for slot, index in enumerate(indices):
            capture.frames[1 + index] = frames[1 + slot]
        if not self.measure:
            return
        if capture.comparison is None:
            whole = capture.part == "whole"
            capture.comparison = ShiftComparison(
                self.shifts, stride=None if whole else stride, circular=self.mode.wraps, device=grouped.device
            )
        core = None if capture.part == "whole" else capture.core
        if indices:
            capture.comparison.update(grouped, indices, core=core, whole_map=capture.whole_map)
        if identity:  # f(x) against itself, as the probe measures the zero shifts
            same = grouped[0][None].expand(1 + len(identity), *grouped.shape[1:])
            capture.comparison.update(same, identity, core=core, whole_map=capture.whole_map)


@dataclass(frozen=True)
class Screen:
    """How the shown image is put on the screen.

    Attributes:
        normalization: the ``(mean, std)`` the images were normalised with; undone for the screen only.
        names: the images' names, for captions.
    """

    normalization: tuple[Sequence[float], Sequence[float]] | None = None
    names: Sequence[str] | None = None


def explorer_data(
    model: nn.Module,
    images: Any,
    shifts: Any,
    *,
    mode: str | ShiftMode = AUTO,
    layers: LayerSpec = None,
    show: Sequence[str] | None = None,
    channels: int | Sequence[int] = 4,
    image: int = 0,
    options: ProbeOptions | None = None,
    screen: Screen | None = None,
) -> ExplorerData:
    """Probe ``model`` on ``images`` and keep, for one image, the frames of a few layers under every shift.

    The frames are kept by a callback on the probe's own passes: the shown image's outputs are those the probe
    measured, and no pass runs twice.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images.
        images: a ``(N, C, H, W)`` or ``(C, H, W)`` tensor, or a list of them (the first is read once before the
            probe, for a preview of its rows; so not a stream).
        shifts: ``(dy, dx)`` pairs in input pixels (see :func:`shiftlab.probe`).
        mode: how the input is shifted: ``auto`` (default; as :func:`shiftlab.probe` chooses), ``circular``,
            ``zero``, ``crop`` or ``fourier``.
        layers: which layers the probe watches, as for :func:`shiftlab.probe`.
        show: the probe's rows to draw (names as the rows give them: ``"conv1"``, ``"layer1.0.relu:2"``,
            ``"output"``). Default: the outputs of the layers that ``layers`` names (a string or a list of names),
            else four representative ones (:func:`representative_layers`).
        channels: how many channels to keep per map (the strongest in the original output), or which ones.
        image: which image to draw (its index among ``images``).
        options: the probe's other options (layouts, strides, batch size, output, progress; see
            :class:`~shiftlab.probing.layerwise.ProbeOptions`).
        screen: the normalisation to undo for the screen and the images' names (:class:`Screen`).

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
        >>> pooled.image_errors[2]["rel_l2"] < 1e-6  # (0, 2) is a multiple of the stride: exact, to float rounding
        True
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    options = options or ProbeOptions()
    screen = screen or Screen()
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
    choice = choose_mode(model, mode)
    pairs = check_shifts(shifts, choice)
    check_int(options.batch_size, "batch_size", minimum=2)
    # One engine for the preview and the probe: the layout plan the preview makes is the one the probe uses.
    engine = probe_engine(model, layers, options)
    modules = {name for name, _ in model.named_modules() if name}
    # The shown layers and the frames' size, known before the probe runs: from a preview of its rows.
    preview = _preview(engine, inputs[0], pairs, choice, leave_out_folded=layers is None)
    captures = _captures(preview, _shown(preview, layers, show, modules), 1, modules)
    _check_frame_budget(captures, channels, len(pairs))
    result, shown = _capture(engine, inputs, image, pairs, choice, captures, channels, options, layers is None)
    display = _display_image(inputs[image], screen.normalization)
    display_shifted = None
    if choice.subpixel:  # the other modes are whole-pixel moves of the display, done where it is drawn
        display_shifted = np.stack(
            [choice.shifted(torch.from_numpy(display), dy, dx, None).clamp(0, 1).numpy() for dy, dx in pairs]
        )
    margin = crop_margin(pairs) if choice.mode == "crop" else None
    return ExplorerData(
        result,
        pairs,
        choice.mode,
        image,
        len(inputs),
        tuple(inputs[image].shape),
        display,
        display_shifted,
        margin,
        shown,
        list(screen.names or []),
    )


def _preview(
    engine: ShiftedForward, first: torch.Tensor, pairs: list[Shift], mode: ShiftMode, leave_out_folded: bool
) -> ProbeResult:
    """The rows of the probe's result, less its shifts: the first image as the probe will run it (its reference
    input), compared with itself.

    The same layers, labels, layouts, shapes and strides as the probe's, for one forward pass of one image (and its
    border pass in ``zero`` and ``crop`` modes); the layout plan it makes is kept by ``engine``, which the probe
    then runs. Bad shifts, layers and layouts are refused here, before any work.
    """
    reference, _ = mode.reference(first[None], pairs)
    options = ProbeOptions(batch_size=2)  # (the layouts, strides and output key are the engine's)
    return probe_with(engine, reference, [(0, 0)], mode, options=options, leave_out_folded=leave_out_folded)


def _captures(result: ProbeResult, chosen: list[str], shift_count: int, modules: set[str]) -> dict[str, _Capture]:
    """A capture per shown row label, with its probe rows (``shift_count`` of them)."""
    captures = {}
    for label in chosen:
        rows = result.layer_rows(label)
        if rows[0]["layout"] == "unknown":
            fail("show", f"layer {label!r} has a layout shiftlab could not establish: {rows[0]['note']}")
        if len(rows) != shift_count:
            raise InternalError(f"the explorer's layer {label!r} has {len(rows)} probe rows for {shift_count} shifts")
        prefix = label.endswith(PREFIX)
        base = label.removesuffix(PREFIX)
        module_name = "" if _is_output_row(base, modules) else base.split(":")[0]
        captures[label] = _Capture(label, module_name, "prefix" if prefix else "map", rows)
    return captures


def _frame_budget_message(total: int) -> str:
    return (
        f"{total:,} frame values are too many (at most {MAX_FRAME_VALUES:,}): show fewer layers or channels, fewer "
        "shifts, or smaller images"
    )


def _check_frame_budget(captures: dict[str, _Capture], channels: int | Sequence[int], shift_count: int) -> None:
    """Refuse, before the probe runs, a request whose frames would exceed :data:`MAX_FRAME_VALUES`.

    The preview's rows give each shown layer's map shape, so the frames' size is known up front: the original
    output and one per shift, of the kept channels of a map, or of at most :data:`MAX_WHOLE_VALUES` values of any
    other output. (The check after the capture, on the frames themselves, stays as the exact one.)
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


def _named(layers: LayerSpec) -> list[str] | None:
    """The names (or patterns) that ``layers`` lists; None for the default, ``"all"``, types or a predicate."""
    if isinstance(layers, str):
        return None if layers.strip() == "all" else [part.strip() for part in layers.split(",")]
    if isinstance(layers, (list, tuple)) and all(isinstance(item, str) for item in layers):
        return [str(item).strip() for item in layers]
    return None


def _is_output_row(label: str, modules: set[str]) -> bool:
    """A row of the model's own output: ``output``, or ``output.KEY`` for another tensor of a structured output."""
    name = label.split(":")[0]
    return name == OUTPUT or (name.startswith(OUTPUT + ".") and name not in modules)


def _shown(result: ProbeResult, layers: LayerSpec, show: Sequence[str] | None, modules: set[str]) -> list[str]:
    if show is None:
        names = _named(layers)
        if names is not None:  # the named layers' outputs (the model's output if named, else it is not shown)
            return [
                label
                for label in result.layers
                if result.layer_rows(label)[0]["layout"] != "unknown"
                and (not _is_output_row(label, modules) or label.split(":")[0] in names)
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
    engine: ShiftedForward,
    inputs: list[torch.Tensor],
    image: int,
    pairs: list[Shift],
    mode: ShiftMode,
    captures: dict[str, _Capture],
    channels: int | Sequence[int],
    options: ProbeOptions,
    leave_out_folded: bool,
) -> tuple[ProbeResult, list[ExplorerLayer]]:
    """The probe over all ``inputs``, its passes keeping the shown image's frames and sums (:class:`_Recorder`)."""
    # With one image the probe's numbers are this image's: its passes were these very passes.
    measure = len(inputs) > 1
    recorder = _Recorder(captures, image, channels, mode, pairs, measure)
    result = probe_with(engine, inputs, pairs, mode, options=options, leave_out_folded=leave_out_folded, also=recorder)
    shown_layers = []
    for capture in captures.values():
        capture.rows = result.layer_rows(capture.label)
        if len(capture.rows) != len(pairs):
            raise InternalError(
                f"the explorer's layer {capture.label!r} has {len(capture.rows)} probe rows for {len(pairs)} shifts"
            )
        if capture.frames is None:
            raise InternalError(f"the explorer saw no output of layer {capture.label!r}, which the probe measured")
        if not measure:
            capture.errors = {index: {key: row[key] for key in IMAGE_KEYS} for index, row in enumerate(capture.rows)}
        else:
            assert capture.comparison is not None
            for index, row in enumerate(capture.rows):
                aligned = (0, 0) if capture.part == "whole" else (int(row["aligned_dy"]), int(row["aligned_dx"]))
                error = capture.comparison.error_at(index, aligned)
                capture.errors[index] = {key: getattr(error, key) for key in IMAGE_KEYS}
        shown_layers.append(_finish(capture, len(pairs), mode.wraps))
    total = sum(layer.reference.size + layer.shifted.size for layer in shown_layers)
    check(total <= MAX_FRAME_VALUES, "explorer", _frame_budget_message(total))
    return result, shown_layers


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
