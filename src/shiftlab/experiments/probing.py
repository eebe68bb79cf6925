"""Probing a model on images: prepare the inputs, run :func:`shiftlab.probe`, and turn the result into a report section.

Used by ``shiftlab probe`` (with ``--explore``, the section also gets an explorer: :func:`run_probe`'s
``explore``) and by the demo (which probes bundled networks on the bundled photos, and lets the reader move the
input through them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn
from torchvision.transforms.v2 import functional as TF

from shiftlab._format import name_bytes, printable
from shiftlab.data import Preprocess
from shiftlab.errors import check
from shiftlab.models import ModelInfo, describe_preprocessing, load_model, resolve_device, resolve_dtype
from shiftlab.probing.borders import ModeChoice, choose_mode
from shiftlab.probing.explore import ExplorerData, Screen, explorer_data, representative_layers
from shiftlab.probing.layerwise import ProbeOptions, ProbeResult, probe
from shiftlab.report.sections import ROUNDING_LEVEL, Finding, Section, Table, format_error, format_stride
from shiftlab.shifts import check_shifts, crop_margin

__all__ = [
    "DEMO_IMAGES",
    "DEMO_SIZE",
    "demo_probe_sections",
    "probe_findings",
    "probe_section",
    "representative_layers",
    "ExploreOptions",
    "ModelOptions",
    "run_probe",
]

EXACT = ROUNDING_LEVEL  # relative L2 error at or below which a layer counts as exactly equivariant (float32 rounding)


def _prepared(
    spec: str,
    images: Sequence[Any],
    *,
    shifts: Sequence[tuple[float, float]],
    mode: str,
    options: ModelOptions,
) -> tuple[nn.Module, ModelInfo, list[Any], Preprocess, dict[str, Any], ModeChoice]:
    """The model (on its device, in its precision), its info, the prepared inputs, the preprocessing applied, its
    record, and the shift mode.

    The preprocessing is the model's own (:meth:`shiftlab.models.ModelInfo.preprocessing`: a pretrained model's
    transforms, ImageNet statistics for a torchvision architecture, nothing for the others); ``size`` (the shorter
    side, then the centre square), ``interpolation`` and ``normalize`` other than ``"auto"`` replace its parts. In
    ``crop`` mode a model's own centre crop is the size of the crop windows (:func:`_crop_room`).
    """
    check(len(images) > 0, "images", "give at least one image")
    target, precision = resolve_device(options.device), resolve_dtype(options.dtype)
    model, info = load_model(spec, weights=options.weights, seed=options.seed)
    model = model.to(device=target, dtype=precision)
    choice = choose_mode(model, mode)
    size = options.size
    prepare, record = info.preprocessing(
        resize=size, crop=size, interpolation=options.interpolation, normalize=options.normalize
    )
    room = None
    if choice.mode == "crop" and size is None and prepare.crop is not None:
        prepare, record, room = _crop_room(prepare, record, shifts)
    inputs = [prepare(source) for source in images]
    if room is not None:
        inputs = [TF.center_crop(image, list(room)) for image in inputs]
    return model, info, inputs, prepare, record, choice


def _crop_room(
    prepare: Preprocess, record: dict[str, Any], shifts: Sequence[tuple[float, float]]
) -> tuple[Preprocess, dict[str, Any], tuple[int, int]]:
    """A model's own centre crop as the crop windows' size: the image is cut larger by twice the largest shift per
    axis, so that every window is the input the model expects (Zhang 2019: 224-pixel windows inside the 256-pixel
    resized image). A resize too small to hold that is enlarged to it.

    Returns the preprocessing (its square crop holds both axes' room), its record, and the room ``(h, w)`` that the
    prepared images are then cut to.
    """
    margin_y, margin_x = crop_margin(check_shifts(shifts, "crop"))
    window = prepare.crop
    assert window is not None
    room = (window + 2 * margin_y, window + 2 * margin_x)
    square = max(room)
    resize = square if prepare.resize is not None and prepare.resize < square else prepare.resize
    widened = replace(prepare.with_choices(resize=resize, crop=square)[0], squash=prepare.squash)
    record = dict(record, crop_room=list(room))
    if resize != prepare.resize and widened.resizing is not None:
        record["resize"] = f"{widened.resizing.describe()} (enlarged to hold the crop windows)"
    record["crop"] = (
        f"{room[0]}x{room[1]} centre, room for crop windows of {window}x{window} (the model's input) moved by up "
        f"to {margin_y} rows and {margin_x} columns"
    )
    return widened, record, room


def _protocol(
    spec: str, info: ModelInfo, images: Sequence[Any], prepare: Preprocess, record: dict[str, Any]
) -> dict[str, Any]:
    steps = [prepare.resizing.describe()] if prepare.resizing else []
    room = record.get("crop_room")
    if room:  # (crop mode: room around the model's input size for the crop windows)
        steps.append(f"centre crop {room[0]}x{room[1]}, room for crop windows")
    elif prepare.crop:
        steps.append(f"centre crop {prepare.crop}x{prepare.crop}")
    used = [str(source) for source in images]
    raw = [name_bytes(name) for name in used]
    return {
        "model": spec,
        "model_source": info.source,
        "weights": info.weights,
        "images_used": [printable(name) for name in used],
        **({"images_used_bytes": raw} if any(raw) else {}),  # names that are not UTF-8, losslessly (hex)
        "resize": ", ".join(steps) or "none",
        "normalize": prepare.normalize,
        "mean": list(prepare.mean) if prepare.mean else None,
        "std": list(prepare.std) if prepare.std else None,
        "preprocessing": describe_preprocessing(record),
    }


@dataclass(frozen=True)
class ModelOptions:
    """How :func:`run_probe` loads a model spec, prepares its images and runs it (the command line's options).

    Attributes:
        weights, seed: as :func:`shiftlab.load_model` takes them.
        device, dtype: where and in which precision the model runs.
        size: the shorter side of every image, then the centre ``size x size`` square (default: the model's own
            preprocessing, else the images as they are).
        normalize, interpolation: ``"auto"`` and ``None``: the model's own.
        batch_size: most inputs per forward pass.
        output: the main tensor of a structured output (see :func:`shiftlab.probe`).
    """

    weights: str | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    size: int | None = None
    normalize: str = "auto"
    interpolation: str | None = None
    batch_size: int = 64
    output: str | None = None


@dataclass(frozen=True)
class ExploreOptions:
    """What :func:`run_probe`'s explorer shows: ``show``, the probed layers (default: the layers asked for, else
    representative ones), and ``channels`` per layer, the strongest first."""

    show: Sequence[str] | None = None
    channels: int = 4


def run_probe(
    spec: str,
    images: Sequence[Any],
    *,
    shifts: Sequence[tuple[float, float]],
    mode: str = "auto",
    layers: Any = None,
    layouts: Any = None,
    strides: Any = None,
    options: ModelOptions | None = None,
    explore: ExploreOptions | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[ProbeResult, ModelInfo, ExplorerData | None]:
    """Load a model from its spec, prepare the images for it, and probe it; with ``explore``, also an explorer's
    frames of the first image (:func:`shiftlab.probing.explore.explorer_data`).

    The images are prepared as the model expects them (its own preprocessing: see
    :meth:`shiftlab.models.ModelInfo.preprocessing`); ``options.size``, ``options.interpolation`` and a
    ``options.normalize`` other than ``"auto"`` override it. The protocol records the preprocessing and where it came
    from. ``mode="auto"`` shifts circularly when every padding in the model is circular or there is none, and takes
    crop windows otherwise (see :mod:`shiftlab.probing.borders`).

    Returns:
        The probe's result, the model's info, and the explorer's data (``None`` without ``explore``; its
        ``.result`` is the probe's result).
    """
    options = options or ModelOptions()
    model, info, inputs, prepare, record, choice = _prepared(spec, images, shifts=shifts, mode=mode, options=options)
    watched: dict[str, Any] = {"layers": layers, "layouts": layouts, "strides": strides}
    run: dict[str, Any] = {"batch_size": options.batch_size, "progress": progress, "output": options.output}
    data = None
    if explore is None:
        result = probe(model, inputs, shifts=shifts, mode=choice, **watched, **run)
    else:
        data = explorer_data(
            model,
            inputs,
            shifts,
            mode=choice,
            layers=layers,
            show=explore.show,
            channels=explore.channels,
            options=ProbeOptions(layouts, strides, options.batch_size, options.output, progress),
            screen=Screen(
                normalization=(prepare.mean, prepare.std) if prepare.mean and prepare.std else None,
                names=[str(source) for source in images],
            ),
        )
        result = data.result
    result.protocol.update(_protocol(spec, info, images, prepare, record))
    return result, info, data


def probe_findings(result: ProbeResult) -> list[Finding]:
    """What a probe says, in sentences with their numbers."""
    summary = result.summary()
    spatial = [row for row in summary if row["stride"]]
    circular = result.protocol.get("mode") in ("circular", "fourier")
    findings = []
    unknown = result.unknown_layouts()
    if unknown:
        names = ", ".join(f"{item['layer']} {tuple(item['shape'])}" for item in unknown[:6])
        more = f" and {len(unknown) - 6} more" if len(unknown) > 6 else ""
        findings.append(
            Finding(
                f"{len(unknown)} watched output(s) have a layout shiftlab could not establish: no number is given for "
                "them",
                f"{names}{more}; give their layout with layouts={{'PATTERN': 'NCHW'}} (or NHWC, tokens, global), on "
                "the command line --layout PATTERN=LAYOUT",
                None,
            )
        )
    left_out = result.protocol.get("layers_left_out", {})
    if left_out:
        findings.append(
            Finding(
                f"{len(left_out)} layer(s) left out of the default layers: their outputs fold patches into the batch "
                "axis, which no layout reads",
                ", ".join(list(left_out)[:6])
                + (f" and {len(left_out) - 6} more" if len(left_out) > 6 else "")
                + "; the layers around them (which unfold and fold the patches) are measured",
                None,
            )
        )
    for layer, doubt in result.protocol.get("layout_doubts", {}).items():
        findings.append(Finding(f"The layout of '{layer}' fits more than one reading", doubt, None))
    inexact = result.first_inexact_layer(EXACT)
    if inexact is None:
        findings.append(
            Finding(
                "Every probed layer is equivariant to every shift, to float precision",
                f"largest relative L2 error {format_error(max(row['max_rel_l2'] for row in summary))}",
                True,
            )
        )
    else:
        row = next(item for item in summary if item["layer"] == inexact)
        exact_before = [item["layer"] for item in summary[: summary.index(row)]]
        hint = _CIRCULAR_HINT if circular and row["stride"] and max(row["stride"]) == 1 else ""
        findings.append(
            Finding(
                f"Equivariance is first lost at layer '{inexact}' ({row['type']}, stride "
                f"{format_stride(row['stride'])})",
                f"{len(exact_before)} layer(s) before it are exact; its relative L2 error: mean "
                f"{format_error(row['mean_rel_l2'])}, max {format_error(row['max_rel_l2'])}{hint}",
            )
        )
    before = _layers_before_first_stride(summary)
    if before and inexact is not None:
        exact = all(row["max_rel_l2"] <= EXACT for row in before)
        findings.append(
            Finding(
                "Every layer before the first downsampling is exactly equivariant (stride 1: any shift is a multiple)",
                f"{len(before)} layer(s), largest relative L2 error "
                f"{format_error(max(row['max_rel_l2'] for row in before))}",
                exact,
            )
        )
    multiple = [
        r
        for r in result.rows
        if r["stride"] and max(r["stride"]) > 1 and r["multiple"] and (r["dy"], r["dx"]) != (0, 0)
    ]
    other = [r for r in result.rows if r["stride"] and not r["multiple"]]
    if multiple and other:
        exact_multiple = sum(1 for r in multiple if r["rel_l2"] <= EXACT)
        exact_other = sum(1 for r in other if r["rel_l2"] <= EXACT)
        findings.append(
            Finding(
                "After downsampling, shifts that are a multiple of the layer's cumulative stride stay exact, and the "
                "others do not (aliasing)",
                f"exact: {exact_multiple} of {len(multiple)} multiples, {exact_other} of {len(other)} others; mean "
                f"relative L2 error {format_error(_mean(r['rel_l2'] for r in multiple))} vs "
                f"{format_error(_mean(r['rel_l2'] for r in other))}"
                + (_CIRCULAR_HINT if circular and exact_multiple < len(multiple) else ""),
                exact_multiple == len(multiple) and exact_other == 0,
            )
        )
    output = [r for r in result.rows if r["layer"] == "output" and (r["dy"], r["dx"]) != (0, 0)]
    if output:
        agreement = [r["top1_agreement"] for r in output if r["top1_agreement"] is not None]
        errors = [r["rel_l2"] for r in output]
        text = f"relative L2 error of the output: mean {format_error(_mean(errors))}, max {format_error(max(errors))}"
        if agreement:
            text += f"; top-1 class unchanged for {_mean(agreement):.1%} of image-shift pairs"
        findings.append(Finding("The model's output under the shifts", text))
    if spatial and inexact is not None:
        worst = max(spatial, key=lambda row: row["max_rel_l2"])
        findings.append(
            Finding(
                f"Worst spatial layer: '{worst['layer']}' ({worst['type']}, stride {format_stride(worst['stride'])})",
                f"max relative L2 error {format_error(worst['max_rel_l2'])}",
            )
        )
    return findings


_CIRCULAR_HINT = (
    " (a circular shift wraps the image around, and a zero-padded layer sees the seam at the border:"
    " --mode crop or zero leaves border effects out)"
)


def _layers_before_first_stride(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    layers = []
    for row in summary:
        if not row["stride"] or max(row["stride"]) > 1:
            break
        layers.append(row)
    return layers


def _mean(values: Any) -> float:
    items = [value for value in values if value is not None and not math.isnan(value)]
    return sum(items) / len(items) if items else math.nan


def probe_section(
    result: ProbeResult,
    *,
    key: str,
    title: str,
    intro: str,
    heatmap_layers: Sequence[str] | None = None,
    explorers: Sequence[tuple[str, ExplorerData]] = (),
) -> Section:
    """A report section for one probe: findings, error versus depth, heat maps, explorers, per-layer table.

    An explorer must come from this very probe (``explorer.result is result``): its numbers are the section's.
    """
    for _, explorer in explorers:
        check(explorer.result is result, "explorers", "an explorer of another probe cannot show this probe's numbers")
    layers = list(heatmap_layers) if heatmap_layers else representative_layers(result)
    protocol = result.protocol
    reason = protocol.get("mode_reason", "given")
    why = "" if reason == "given" else f" (mode {reason})"
    shifts_text = ", ".join(f"({dy:g}, {dx:g})" for dy, dx in protocol["shifts"][:12]) + (
        " ..." if len(protocol["shifts"]) > 12 else ""
    )
    figures = [
        (
            "Relative L2 error of every probed layer, in forward order: mean over shifts that are a multiple of the "
            "layer's cumulative stride (blue) and over the others (red), and the maximum (line).",
            result.plot_depth(),
        ),
        (
            "The error of a few layers for every shift (dy down, dx right, in input pixels).",
            result.plot_heatmap(layers),
        ),
    ]
    return Section(
        key,
        title,
        intro + f"\n\nProtocol: {protocol['mode']} shifts {shifts_text}{why}; {protocol['images']} image(s) of size "
        f"{', '.join('x'.join(map(str, s[-2:])) for s in protocol['input_shapes'])}; {protocol['dtype']} on "
        f"{protocol['device']}; {protocol['layers_watched']} layers watched; layouts from {protocol['layouts']}.",
        figures=figures,
        tables=[
            Table(
                "Per layer: relative L2 error over the shifts (the zero shift excluded), and how many shifts are "
                f"exact (error <= {format_error(EXACT)})",
                list(result.SUMMARY_HEADERS),
                result.summary_table(),
            )
        ],
        findings=probe_findings(result),
        data={"protocol": protocol, "summary": result.summary(), "rows": result.rows},
        explorers=list(explorers),
    )


DEMO_IMAGES = ("chelsea", "coffee")
#: The demo's photos are resized (shorter side) and centre-cropped to this size: a small network's comparisons cost in
#: proportion to its maps' pixels, every property the sections show holds at any size, and the explorers' frames
#: travel in the report.
DEMO_SIZE = 160
#: The demo's shifts: every (dy, dx) in 0..3.
DEMO_SHIFTS = [(dy, dx) for dy in range(4) for dx in range(4)]
#: The layers the demo's explorers show: the first ReLU (stride 1), the max pooling (stride 2), the ReLU after the
#: stride-2 convolution (stride 4), the last ReLU, and the logits.
DEMO_SHOWN = {
    "simple_cnn": ["features.2", "features.3", "features.9", "features.12", "output"],
    "circular_cnn": ["features.2", "features.6", "features.12", "output"],
}


def demo_probe_sections() -> list[Section]:
    """The demo's probing sections: a typical small CNN, then one built to be exactly equivariant; each with an
    explorer of its probe."""
    # mode "auto" (the default) takes crop for simple_cnn's zero padding and circular for circular_cnn, as the
    # sections' words say (tests/test_demo.py checks it)
    sized = ModelOptions(size=DEMO_SIZE)
    typical, _, typical_explorer = run_probe(
        "simple_cnn", DEMO_IMAGES, shifts=DEMO_SHIFTS, options=sized, explore=ExploreOptions(DEMO_SHOWN["simple_cnn"])
    )
    exact, _, exact_explorer = run_probe(
        "circular_cnn",
        DEMO_IMAGES,
        shifts=DEMO_SHIFTS,
        options=sized,
        explore=ExploreOptions(DEMO_SHOWN["circular_cnn"]),
    )
    assert typical_explorer is not None and exact_explorer is not None  # asked for: explore was given
    return [
        probe_section(
            typical,
            key="probe-simple-cnn",
            title="Probing a small CNN layer by layer",
            intro="The article's ideas, measured inside a network: shiftlab's bundled simple_cnn (3x3 convolutions "
            "with zero padding, batch norm, ReLU, a 2x2 max pooling, a stride-2 convolution, global average "
            f"pooling and a linear head; seeded random weights) on the bundled photos ({DEMO_SIZE}x{DEMO_SIZE}, "
            "the shorter side resized, the centre kept). "
            "Each image is cut at 16 offsets (dy, dx in 0..3, the crop protocol of Zhang 2019: the probe's default, "
            "mode auto, chooses it because the network pads with zeros), so every input is real image content, and "
            "pixels whose receptive field reaches the border are left out. "
            "Before the first downsampling every layer is exactly equivariant. After it, only shifts that are a "
            "multiple of the cumulative stride still line up; the others alias. "
            "Move the input yourself in the explorer below: the first ReLU's map follows the cat pixel for pixel, "
            "the pooled maps line up only at even shifts and change in between.",
            explorers=[("Move the cat through simple_cnn", typical_explorer)],
        ),
        probe_section(
            exact,
            key="probe-circular-cnn",
            title="A CNN that is exactly equivariant: circular padding, no stride",
            intro="The same network with circular padding and without its pooling and stride (circular_cnn), under "
            "circular shifts (mode auto chooses them: every padding is circular). Every spatial layer commutes with "
            "every shift, to float precision, and the "
            "global average pooling makes the output invariant: the known answer that the measurement must "
            "reproduce. In the explorer the difference stays blank whatever the shift.",
            explorers=[("Move the cat through circular_cnn", exact_explorer)],
        ),
    ]
