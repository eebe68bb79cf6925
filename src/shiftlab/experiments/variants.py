"""The bundled digit classifier trained six ways, side by side: does BlurPool or APS make it shift-invariant?

The variants (:data:`shiftlab.models.DIGITS_CNN_VARIANTS`) are ``digits_cnn`` with two paddings (zeros, as
trained originally; circular) times three ways to downsample (strided, as trained originally; BlurPool, Zhang 2019;
adaptive polyphase sampling, APS, Chaman & Dokmanic 2021). Each was converted right after its initialisation and
then trained as converted by ``scripts/train_reference.py`` with the same seed (the same initial weights, the same
data order) and the same budget; their weights ship with shiftlab and load by spec (``digits_cnn+circular+aps``).

Why six and not three. APS is exact only with circular padding everywhere, so its variant is
``+circular+aps``; but circular padding by itself changes how a network treats shifts (with zero padding, a
network can read absolute position off the borders of its maps), so comparing ``+circular+aps`` with the
zero-padded baseline and BlurPool alone would credit APS with what the padding does. With both paddings for every
method, each effect has its control: padding alone (``digits_cnn`` against ``digits_cnn+circular``), the
downsampling method at a fixed padding, and APS without the padding it needs (``digits_cnn+aps``).

Everything is measured with shiftlab's own tools on the first ``digits`` held-out test digits (a prefix: equal
numbers of each class), the same digits and the same shifts for every variant:

* accuracy: top-1 on the digits as they are (and, from each variant's training record, on all 1,000);
* circular consistency (:class:`~shiftlab.invariance.protocols.Consistency`, the APS protocol): ``views`` circular rolls
of
  each digit, shifts uniform in ``[-4, 4)`` per axis, the share of view pairs whose top-1 class agrees;
* crop consistency (the Zhang protocol): it needs room around the model's 28x28 input, so each digit is put in
  the middle of a 36x36 black canvas (MNIST's background is exactly 0: the canvas only adds more of it) and
  ``views`` 28x28 windows are cut at offsets uniform in ``[0, 8)``, shifts of -4..3 pixels with real content;
* worst-case shift accuracy (:class:`~shiftlab.invariance.protocols.ShiftAccuracy`, Michaeli et al. 2023): a digit
counts
  as correct only if it is classified correctly under every circular shift ``(dy, dx)`` in ``0..3`` (16 shifts:
  every phase of the network's stride 4 once; a circular shift by 4 more moves the phase back);
* the per-layer profile (:func:`shiftlab.probe`): the same 16 circular shifts on ``probe_digits`` digits, the
  same 18 layers of every variant (``features.0`` to ``features.15``, ``pool``, ``head``) and the output.
  "Aliasing" is the probe's mean relative L2 error at the downsampling layers (``features.3``, stride 2;
  ``features.7``, stride 4) over the shifts that are not a multiple of their stride.

Converting instead of retraining. Three of the conversions also ship applied to the *trained* ``digits_cnn`` and
fine-tuned by self-distillation (:mod:`shiftlab.finetune`, ``scripts/finetune_reference.py``): the original model
teaching its converted copy under shifts, 3 epochs on the 4,000 training digits. The comparison measures each of
them before fine-tuning (the baseline's weights, converted), after it, and beside the variant trained from scratch
with the same layers, on the same digits with the same protocol.

The probe aligns every digit with one shift per layer. APS moves each digit's maps by the floor or the ceiling of
``t / s``, depending on the phase it picks for that digit, so over several digits its strided layers show an error
that no single alignment removes, although every map is an exact shifted copy: probed one digit at a time (so
that the alignment is that digit's own), every layer of ``+circular+aps`` is exact, which this experiment checks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from shiftlab._format import format_stride
from shiftlab.digits import DIGITS_CLASSES, DIGITS_SIZES, load_digits
from shiftlab.errors import check, check_int
from shiftlab.invariance.evaluate import EvaluateOptions, EvaluationResult, PreprocessChoices, evaluate
from shiftlab.invariance.protocols import Consistency, ShiftAccuracy
from shiftlab.models import DIGITS_CNN_VARIANTS, DIGITS_CNN_WEIGHTS, load_model
from shiftlab.probing.layerwise import ProbeResult, probe
from shiftlab.report.figures import shade_stride_bands
from shiftlab.report.sections import ROUNDING_LEVEL, Finding, Section, Table, format_error, format_number

__all__ = [
    "CANVAS_MARGIN",
    "COLUMNS",
    "DEMO_VARIANT_DIGITS",
    "FINETUNED_VARIANTS",
    "FINETUNE_COLUMNS",
    "FINETUNE_STAGES",
    "PROBE_LAYERS",
    "PROBE_SHIFTS",
    "VARIANT_SPECS",
    "VariantsResult",
    "demo_variants_sections",
    "finetune_record",
    "run_variants",
    "training_record",
    "variants_section",
]

#: Variant -> its model spec, in table order: zero padding first, then circular; strided, BlurPool, APS.
VARIANT_SPECS: dict[str, str] = {name: f"digits_cnn{suffix}" for name, suffix in DIGITS_CNN_VARIANTS.items()}
#: Black pixels added on every side of a digit for the crop protocol's windows (shifts of -4..3).
CANVAS_MARGIN = 4
#: Circular shifts of the worst-case accuracy and of the per-layer probe: every phase of the stride-4 network once.
PROBE_SHIFTS: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in range(4) for dx in range(4))
#: The layers the probe watches, the same in every variant (a converted layer keeps its name).
PROBE_LAYERS: tuple[str, ...] = (*(f"features.{index}" for index in range(16)), "pool", "head")
#: The downsampling layers, where aliasing is measured.
DOWNSAMPLING_LAYERS: tuple[str, ...] = ("features.3", "features.7")
#: How many test digits the demo (and the README's table) uses: a prefix, 20 of each class.
DEMO_VARIANT_DIGITS = 200
EXACT = ROUNDING_LEVEL  # relative L2 error at or below which a layer counts as exact (float32 rounding)
#: The conversions that also ship applied to the trained baseline and fine-tuned (scripts/finetune_reference.py).
FINETUNED_VARIANTS: tuple[str, ...] = ("blurpool", "circular_blurpool", "circular_aps")
#: How each conversion of the trained baseline is shown: stage -> its label's ending (after the spec).
FINETUNE_STAGES: dict[str, str] = {
    "converted": "converted from digits_cnn, not fine-tuned",
    "fine-tuned": "converted from digits_cnn, fine-tuned",
    "scratch": "trained from scratch",
}
#: The accuracy a fine-tuned conversion may lose against the original, in test digits of 1,000 (0.5 points).
FINETUNE_ALLOWANCE = 5


def training_record(variant: str) -> dict[str, Any]:
    """The JSON that ``scripts/train_reference.py`` wrote beside the variant's shipped weights.

    Example:
        >>> record = training_record("circular_aps")
        >>> record["variant"], record["weights"]
        ('circular_aps', 'digits_cnn_circular_aps.safetensors')
    """
    check(
        variant in DIGITS_CNN_VARIANTS, "variant", f"must be one of {', '.join(DIGITS_CNN_VARIANTS)}, got {variant!r}"
    )
    text = resources.files("shiftlab").joinpath(f"assets/digits_cnn_{variant}.json").read_text()
    record: dict[str, Any] = json.loads(text)
    return record


def finetune_record(variant: str) -> dict[str, Any]:
    """The JSON that ``scripts/finetune_reference.py`` wrote beside the variant's fine-tuned weights.

    Example:
        >>> record = finetune_record("circular_aps")
        >>> record["spec"], record["weights"]
        ('digits_cnn+circular+aps', 'digits_cnn_finetuned_circular_aps.safetensors')
    """
    check(
        variant in FINETUNED_VARIANTS,
        "variant",
        f"must be one of {', '.join(FINETUNED_VARIANTS)}, got {variant!r}",
    )
    text = resources.files("shiftlab").joinpath(f"assets/digits_cnn_finetuned_{variant}.json").read_text()
    record: dict[str, Any] = json.loads(text)
    return record


def finetune_label(variant: str, stage: str) -> str:
    """The evaluation's label of one stage of a conversion of the trained baseline (see :data:`FINETUNE_STAGES`)."""
    return VARIANT_SPECS[variant] if stage == "scratch" else f"{VARIANT_SPECS[variant]}, {FINETUNE_STAGES[stage]}"


def _converted_baseline(variant: str, stage: str) -> torch.nn.Module:
    """``digits_cnn`` converted to ``variant`` with the baseline's weights, or with the fine-tuned ones."""
    name = DIGITS_CNN_WEIGHTS if stage == "converted" else f"digits_cnn_finetuned_{variant}.safetensors"
    with resources.as_file(resources.files("shiftlab").joinpath(f"assets/{name}")) as path:
        model, _ = load_model(VARIANT_SPECS[variant], weights=path)
    return model


@dataclass
class VariantsResult:
    """The numbers of the comparison: an evaluation of all variants, a probe of each, and their training records.

    Attributes:
        evaluation: accuracy, circular and crop consistency, shift accuracy; models labelled by their spec.
        probes: variant -> the probe of its ``probe_digits`` digits together.
        per_digit: variant -> layer -> the largest relative L2 error over the shifts and digits when each digit
            is probed alone (only for the variants probed so).
        records: variant -> its training record (:func:`training_record`).
        protocol: what was measured, how.
        finetuning: the same evaluation of the conversions of the trained baseline, before and after fine-tuning
            (labels: :func:`finetune_label`).
        finetune_records: variant -> its fine-tuning record (:func:`finetune_record`), for
            :data:`FINETUNED_VARIANTS`.
    """

    evaluation: EvaluationResult
    probes: dict[str, ProbeResult]
    per_digit: dict[str, dict[str, float]]
    records: dict[str, dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)
    finetuning: EvaluationResult | None = None
    finetune_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How many of the evaluated digits have ink within :data:`CANVAS_MARGIN` pixels of their border, where some
    #: crop windows cut it off (a crop of the others is a circular roll: only black pixels leave and enter).
    digits_near_border: int = 0

    @property
    def variants(self) -> list[str]:
        return list(self.probes)

    def aliasing(self, variant: str) -> float:
        """The probe's mean relative L2 error at the downsampling layers over shifts not a multiple of their stride."""
        rows = [
            row
            for row in self.probes[variant].rows
            if row["layer"] in DOWNSAMPLING_LAYERS and not row["multiple"] and row["rel_l2"] is not None
        ]
        return float(np.mean([row["rel_l2"] for row in rows]))

    def output_error(self, variant: str) -> float:
        """The probe's mean relative L2 error of the logits over the non-zero shifts."""
        rows = [row for row in self.probes[variant].layer_rows("output") if (row["dy"], row["dx"]) != (0, 0)]
        return float(np.mean([row["rel_l2"] for row in rows]))

    def numbers(self, variant: str) -> dict[str, Any]:
        """One variant's headline numbers (fractions in [0, 1], errors as relative L2)."""
        results = self.evaluation.results[VARIANT_SPECS[variant]]
        record = self.records[variant]
        return {
            "variant": variant,
            "spec": VARIANT_SPECS[variant],
            "padding": "circular" if "circular" in variant else "zeros",
            "downsampling": {"baseline": "strided", "circular": "strided"}.get(
                variant, "APS" if variant.endswith("aps") else "BlurPool"
            ),
            "recorded_accuracy": record["test_accuracy"],
            "accuracy": results["shift-accuracy"]["accuracy_unshifted"],
            "circular_consistency": results["consistency"]["consistency"],
            "circular_all_views_agree": results["consistency"]["all_views_agree"],
            "crop_consistency": results["crop-consistency"]["consistency"],
            "worst_case_accuracy": results["shift-accuracy"]["worst_case_accuracy"],
            "unchanged_under_every_shift": min(item["unchanged"] for item in results["shift-accuracy"]["per_shift"]),
            "aliasing": self.aliasing(variant),
            "output_error": self.output_error(variant),
            "per_digit_error": max(self.per_digit[variant].values()) if variant in self.per_digit else None,
        }

    def finetune_numbers(self, variant: str, stage: str) -> dict[str, Any]:
        """One stage (:data:`FINETUNE_STAGES`) of a conversion of the trained baseline: counts and fractions."""
        evaluation = self.evaluation if stage == "scratch" else self.finetuning
        assert evaluation is not None
        results = evaluation.results[finetune_label(variant, stage)]
        accuracy, circular = results["shift-accuracy"], results["consistency"]
        crop = results["crop-consistency"]
        if stage == "scratch":
            record = self.records[variant]
            correct, images = record["test_correct"], record["test_images"]
        else:
            record = self.finetune_records[variant]["metrics"]["fine-tuned" if stage == "fine-tuned" else "converted"]
            correct, images = record["correct"], record["images"]
        return {
            "variant": variant,
            "stage": stage,
            "label": finetune_label(variant, stage),
            "test_correct": correct,
            "test_images": images,
            "accuracy": accuracy["accuracy_unshifted"],
            "circular_consistency": circular["consistency"],
            "agreeing_pairs": circular["agreeing_pairs"],
            "pairs": circular["pairs"],
            "crop_consistency": crop["consistency"],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "numbers": [self.numbers(variant) for variant in self.variants],
            "finetuned": [
                self.finetune_numbers(variant, stage) for variant in self.finetune_records for stage in FINETUNE_STAGES
            ],
            "finetuning": None if self.finetuning is None else self.finetuning.to_dict(),
            "finetune_records": {
                variant: {key: value for key, value in record.items() if key != "steps"}
                for variant, record in self.finetune_records.items()
            },
            "evaluation": self.evaluation.to_dict(),
            "probes": {variant: result.summary() for variant, result in self.probes.items()},
            "records": self.records,
        }


def run_variants(
    digits: int = DEMO_VARIANT_DIGITS,
    *,
    views: int = 4,
    probe_digits: int = 20,
    per_digit_variants: tuple[str, ...] = ("circular_aps",),
    per_digit_count: int = 5,
    batch_size: int = 64,
) -> VariantsResult:
    """Measure every shipped variant of ``digits_cnn`` on the first ``digits`` test digits (see the module docstring).

    Args:
        digits: how many test digits (a prefix of the split: with a multiple of 10, as many of each class).
        views: views per digit of both consistency protocols (all pairs compared).
        probe_digits: digits probed together, per variant (the first ones).
        per_digit_variants: variants whose first ``per_digit_count`` digits are also probed one at a time.
        per_digit_count: how many digits are probed alone.
        batch_size: inputs per forward pass of the evaluation (part of its protocol).

    Returns:
        A :class:`VariantsResult`.

    Raises:
        ShiftlabError: counts out of range, an unknown variant.
    """
    digits = check_int(digits, "digits", minimum=2, maximum=DIGITS_SIZES["test"])
    views = check_int(views, "views", minimum=2)
    probe_digits = check_int(probe_digits, "probe digits", minimum=1, maximum=digits)
    per_digit_count = check_int(per_digit_count, "per-digit count", minimum=1, maximum=digits)
    for variant in per_digit_variants:
        check(variant in VARIANT_SPECS, "variant", f"must be one of {', '.join(VARIANT_SPECS)}, got {variant!r}")
    images, labels = load_digits("test")
    images, labels = images[:digits], labels[:digits]
    margin = CANVAS_MARGIN
    canvas = torch.nn.functional.pad(images, (margin, margin, margin, margin))  # black, as MNIST's background
    metrics = [
        Consistency("circular", views=views, max_shift=4),
        Consistency("crop", views=views, max_shift=2 * margin),
        ShiftAccuracy(PROBE_SHIFTS, mode="circular"),
    ]
    measure: dict[str, Any] = {
        "preprocess": PreprocessChoices(crop=images.shape[-1]),
        "classes": DIGITS_CLASSES,
        "metrics": metrics,
        "options": EvaluateOptions(batch_size=batch_size),
    }
    evaluation = evaluate({spec: spec for spec in VARIANT_SPECS.values()}, (canvas, labels), **measure)
    # the same digits, views and seed: each model's numbers do not depend on the others evaluated with it
    converted = {
        finetune_label(variant, stage): _converted_baseline(variant, stage)
        for variant in FINETUNED_VARIANTS
        for stage in ("converted", "fine-tuned")
    }
    # the worst case over 16 shifts costs two thirds of the evaluation: measured for the variants above only
    finetuning = evaluate(
        converted, (canvas, labels), **{**measure, "metrics": [metrics[0], metrics[1], ShiftAccuracy([(0, 0)])]}
    )
    probes: dict[str, ProbeResult] = {}
    per_digit: dict[str, dict[str, float]] = {}
    for variant, spec in VARIANT_SPECS.items():
        model, _ = load_model(spec)
        probes[variant] = probe(model, images[:probe_digits], shifts=PROBE_SHIFTS, mode="circular", layers=PROBE_LAYERS)
        if variant in per_digit_variants:
            worst: dict[str, float] = {}
            for index in range(per_digit_count):
                alone = probe(
                    model, images[index : index + 1], shifts=PROBE_SHIFTS, mode="circular", layers=PROBE_LAYERS
                )
                for row in alone.summary():
                    worst[row["layer"]] = max(worst.get(row["layer"], 0.0), row["max_rel_l2"])
            per_digit[variant] = worst
    protocol = {
        "data": f"the first {digits} of the {DIGITS_SIZES['test']} bundled test digits (shiftlab.digits, 'test')",
        "variants": dict(VARIANT_SPECS),
        "circular consistency": f"{views} circular rolls per digit, (dy, dx) uniform in [-4, 4) per axis, all pairs",
        "crop consistency": (
            f"each digit in the middle of a {28 + 2 * margin}x{28 + 2 * margin} black canvas; {views} 28x28 windows "
            f"per digit at offsets uniform in [0, {2 * margin}) per axis (shifts of -{margin}..{margin - 1}), all pairs"
        ),
        "worst-case accuracy": f"correct under every circular shift (dy, dx) in 0..3 ({len(PROBE_SHIFTS)} shifts)",
        "probe": (
            f"the same circular shifts on the first {probe_digits} digits together; layers "
            f"{', '.join(PROBE_LAYERS)} and the output; aliasing: mean relative L2 error at "
            f"{' and '.join(DOWNSAMPLING_LAYERS)} over the shifts that are not a multiple of their stride"
        ),
        "per-digit probe": (
            f"the same probe on each of the first {per_digit_count} digits alone, for {', '.join(per_digit_variants)}"
        ),
        "converted from the trained baseline": (
            f"{', '.join(VARIANT_SPECS[variant] for variant in FINETUNED_VARIANTS)} with the weights of digits_cnn "
            f"({DIGITS_CNN_WEIGHTS}), before and after fine-tuning by self-distillation "
            "(scripts/finetune_reference.py; the fine-tuned weights ship as assets/digits_cnn_finetuned_<variant>)"
        ),
        "seed": 0,
        "batch size": batch_size,
    }
    records = {variant: training_record(variant) for variant in VARIANT_SPECS}
    finetune_records = {variant: finetune_record(variant) for variant in FINETUNED_VARIANTS}
    inside = torch.zeros(images.shape[-2:], dtype=torch.bool)
    inside[margin:-margin, margin:-margin] = True
    near_border = int((images[..., ~inside] != 0).flatten(1).any(1).sum())
    return VariantsResult(evaluation, probes, per_digit, records, protocol, finetuning, finetune_records, near_border)


def _percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


#: The columns of the side-by-side table (the README's as well, printed by scripts/variants_tables.py).
COLUMNS = (
    "model spec",
    "padding",
    "downsampling",
    "accuracy (1,000 digits)",
    "accuracy",
    "circular consistency",
    "crop consistency",
    "worst-case accuracy",
    "aliasing",
    "output error",
)


def _table_rows(result: VariantsResult) -> list[list[str]]:
    rows = []
    for variant in result.variants:
        item = result.numbers(variant)
        rows.append(
            [
                f"`{item['spec']}`",
                item["padding"],
                item["downsampling"],
                _percent(item["recorded_accuracy"]),
                _percent(item["accuracy"]),
                _percent(item["circular_consistency"], 2),
                _percent(item["crop_consistency"], 2),
                _percent(item["worst_case_accuracy"]),
                format_error(item["aliasing"], 3),
                format_error(item["output_error"], 3),
            ]
        )
    return rows


#: The columns of the table of conversions of the trained baseline (the README's as well).
FINETUNE_COLUMNS = (
    "conversion",
    "model",
    "test accuracy (1,000 digits)",
    "circular consistency",
    "crop consistency",
)


def _finetune_rows(result: VariantsResult) -> list[list[str]]:
    rows = []
    for variant in result.finetune_records:
        for stage in FINETUNE_STAGES:
            item = result.finetune_numbers(variant, stage)
            rows.append(
                [
                    f"`{VARIANT_SPECS[variant]}`" if stage == "converted" else "",
                    FINETUNE_STAGES[stage],
                    f"{item['test_correct']:,} / {item['test_images']:,}",
                    _percent(item["circular_consistency"]),
                    _percent(item["crop_consistency"]),
                ]
            )
    return rows


# --------------------------------------------------------------------------- figures

_METHOD_COLOURS = {"strided": "#d1495b", "BlurPool": "#edae49", "APS": "#2e86ab"}


def _style(item: dict[str, Any]) -> dict[str, Any]:
    circular = item["padding"] == "circular"
    return {
        "color": _METHOD_COLOURS[item["downsampling"]],
        "linestyle": "--" if circular else "-",
        "marker": "s" if circular else "o",
    }


def show_variant_summary(result: VariantsResult, *, dpi: int = 100) -> Figure:
    """The headline numbers of every variant as dots on one scale: accuracy, both consistencies, the worst case."""
    measures = [
        ("accuracy", "accuracy", "o", "#3d405b"),
        ("circular_consistency", "circular consistency", "s", "#2e86ab"),
        ("crop_consistency", "crop consistency", "D", "#66a182"),
        ("worst_case_accuracy", f"worst-case accuracy ({len(PROBE_SHIFTS)} circular shifts)", "v", "#d1495b"),
    ]
    items = [result.numbers(variant) for variant in result.variants]
    figure = Figure(figsize=(8.0, 0.5 * len(items) + 1.6), dpi=dpi, layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(items))[::-1]
    lowest = 100.0
    for offset, (key, label, marker, colour) in zip(np.linspace(-0.24, 0.24, len(measures)), measures):
        values = [100 * item[key] for item in items]
        lowest = min(lowest, *values)
        axes.plot(values, positions + offset, marker, color=colour, label=label, markersize=6, linestyle="none")
    axes.set_yticks(positions, [item["spec"] for item in items], fontsize=8)
    axes.axvline(100, color="#9aa3b5", linewidth=0.8)
    axes.set_xlim(math.floor(lowest) - 1, 100.6)
    axes.set_xlabel(f"% of the {result.evaluation.images['evaluated']} test digits (consistency: of view pairs)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower left", framealpha=0.9)
    return figure


def show_variant_profiles(result: VariantsResult, *, dpi: int = 100) -> Figure:
    """The probe's error versus depth for every variant: mean relative L2 error over the non-zero shifts per layer.

    Colour: how the network downsamples; dashed lines and squares: circular padding. The dotted line is
    ``+circular+aps`` probed one digit at a time (largest error over digits and shifts), where each digit's maps
    are aligned by their own shift. Shaded bands: the cumulative stride.
    """
    layers = [*PROBE_LAYERS, "output"]
    figure = Figure(figsize=(9.0, 5.2), dpi=dpi, layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(layers))
    reference = next(iter(result.probes.values()))
    strides = {row["layer"]: row["stride"] for row in reference.summary()}
    labels = [format_stride(strides.get(name)) for name in layers]
    shade_stride_bands(axes, [label if label == "global" else f"stride {label}" for label in labels])
    for variant in result.variants:
        item = result.numbers(variant)
        summary = {row["layer"]: row["mean_rel_l2"] for row in result.probes[variant].summary()}
        axes.plot(positions, [summary[name] for name in layers], markersize=4, label=item["spec"], **_style(item))
    for variant, worst in result.per_digit.items():
        axes.plot(
            positions,
            [worst[name] for name in layers],
            ":",
            color="#3d405b",
            linewidth=1.5,
            label=f"{VARIANT_SPECS[variant]}, each digit probed alone (max)",
        )
    axes.set_xticks(positions, layers, rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(layers) - 0.4)
    axes.set_ylim(bottom=0)
    axes.set_ylabel("relative L2 error (mean over shifts)")
    axes.set_xlabel("layer, in forward order (features.3: first downsampling; features.7: second)")
    axes.grid(axis="y", alpha=0.3)
    figure.legend(fontsize=7, loc="outside lower center", ncol=3, frameon=False)
    return figure


# --------------------------------------------------------------------------- the report section


def _pair(result: VariantsResult, key: str, before: str, after: str, digits: int = 2) -> str:
    first, second = result.numbers(before)[key], result.numbers(after)[key]
    if key in ("aliasing", "output_error"):
        return f"{format_error(first, 3)} -> {format_error(second, 3)}"
    return f"{_percent(first, digits)} -> {_percent(second, digits)}"


def variant_findings(result: VariantsResult) -> list[Finding]:
    """The comparison in sentences, each with its numbers; claims are checked (see the module docstring)."""
    numbers = {variant: result.numbers(variant) for variant in result.variants}
    aps = numbers["circular_aps"]
    evaluated = result.evaluation.results[aps["spec"]]
    consistency = evaluated["consistency"]
    grid = len(evaluated["shift-accuracy"]["per_shift"])
    findings = [
        Finding(
            "With circular padding, APS is exactly invariant to circular shifts: every pair of circular views of "
            "every digit gets the same class (digits_cnn+circular+aps)",
            f"circular consistency {_percent(aps['circular_consistency'], 2)} ({consistency['agreeing_pairs']} of "
            f"{consistency['pairs']} view pairs); all views agree on {_percent(aps['circular_all_views_agree'])} "
            "of the digits",
            consistency["agreeing_pairs"] == consistency["pairs"],
        ),
        Finding(
            f"... and each digit keeps its class under all {grid} circular shifts of the grid, so its worst-case "
            "accuracy is its accuracy",
            f"class unchanged for {_percent(aps['unchanged_under_every_shift'])} of the digits under the shift that "
            f"changes most; worst case {_percent(aps['worst_case_accuracy'])}, unshifted {_percent(aps['accuracy'])}",
            aps["unchanged_under_every_shift"] == 1.0 and aps["worst_case_accuracy"] == aps["accuracy"],
        ),
    ]
    if aps["per_digit_error"] is not None:
        findings.append(
            Finding(
                "Probed one digit at a time, every layer of digits_cnn+circular+aps is exact: its maps are shifted "
                "copies, moved by an amount that depends on the digit (the phase APS picks for it)",
                f"largest relative L2 error over every layer and shift: {format_error(aps['per_digit_error'], 2)}; "
                f"probed together, its downsampling layers show {format_error(aps['aliasing'], 3)}, because one "
                "alignment per layer cannot follow every digit's",
                aps["per_digit_error"] <= EXACT,
            )
        )
    pairs = [("baseline", "blurpool"), ("circular", "circular_blurpool")]
    better = all(
        numbers[base][key] < numbers[blur][key] < 1.0
        for base, blur in pairs
        for key in ("circular_consistency", "crop_consistency")
    )
    findings.append(
        Finding(
            "BlurPool makes the predictions more consistent than strided downsampling, with either padding, but "
            "not exactly consistent",
            f"circular consistency {_pair(result, 'circular_consistency', *pairs[0])} (zero padding), "
            f"{_pair(result, 'circular_consistency', *pairs[1])} (circular padding); crop consistency "
            f"{_pair(result, 'crop_consistency', *pairs[0])}, {_pair(result, 'crop_consistency', *pairs[1])}",
            better,
        )
    )
    lower = all(EXACT < numbers[blur]["aliasing"] < numbers[base]["aliasing"] for base, blur in pairs)
    findings.append(
        Finding(
            "BlurPool lowers the aliasing the probe measures at the downsampling layers, without removing it",
            f"mean relative L2 error at {' and '.join(DOWNSAMPLING_LAYERS)}, shifts not a multiple of the stride: "
            f"{_pair(result, 'aliasing', *pairs[0])} (zero padding), {_pair(result, 'aliasing', *pairs[1])} "
            "(circular padding)",
            lower,
        )
    )
    zero_aps = numbers["aps"]
    findings.append(
        Finding(
            "APS is exact only with circular padding: with zero padding (digits_cnn+aps) the borders break it",
            f"circular consistency {_percent(zero_aps['circular_consistency'], 2)}, against "
            f"{_percent(aps['circular_consistency'], 2)} with circular padding",
            zero_aps["circular_consistency"] < 1.0,
        )
    )
    findings.append(
        Finding(
            "Circular padding alone, with the same strided downsampling, already makes the predictions more "
            "consistent under circular shifts (with zero padding a network can read absolute position off its "
            "borders)",
            f"circular consistency {_pair(result, 'circular_consistency', 'baseline', 'circular')}; worst-case "
            f"accuracy {_pair(result, 'worst_case_accuracy', 'baseline', 'circular', 1)}",
            numbers["circular"]["circular_consistency"] > numbers["baseline"]["circular_consistency"],
        )
    )
    evaluated_digits = result.evaluation.images["evaluated"]
    findings.append(
        Finding(
            "Under crop shifts APS's guarantee does not apply: a moving window cuts off ink near the digit's border, "
            "which no network can see again; how much that costs depends on the data",
            f"{result.digits_near_border} of the {evaluated_digits} digits have ink within {CANVAS_MARGIN} pixels "
            f"of their border; crop consistency of digits_cnn+circular+aps {_percent(aps['crop_consistency'], 2)} "
            f"(circular {_percent(aps['circular_consistency'], 2)})",
        )
    )
    findings.append(
        Finding(
            "Accuracy on all 1,000 test digits (training records): no variant loses more than a point",
            ", ".join(f"{item['spec']} {_percent(item['recorded_accuracy'])}" for item in numbers.values()),
            all(
                item["recorded_accuracy"] >= numbers["baseline"]["recorded_accuracy"] - 0.01
                for item in numbers.values()
            ),
        )
    )
    return findings


def _training_table(result: VariantsResult) -> Table:
    rows = []
    for variant in result.variants:
        record = result.records[variant]
        rows.append(
            [
                VARIANT_SPECS[variant],
                record["weights"],
                f"{record['epochs']} epochs, {record['steps']} steps of {record['batch_size']}",
                f"{record['wall_seconds']:g} s",
                f"{record['cpu_seconds']:g} s",
                format_number(record["load_average_before"]),
                f"{record['test_correct']} / {record['test_images']}",
                record["weights_sha256"][:12],
            ]
        )
    return Table(
        "Training (scripts/train_reference.py --variant NAME): seed 0 for the initial weights and the data order, "
        "SGD with Nesterov momentum, warm-up then cosine; the times were taken on a shared 2-core machine "
        "(load average before the run beside them)",
        ["spec", "weights", "budget", "wall time", "CPU time", "load before", "test correct", "sha256"],
        rows,
    )


def variants_section(result: VariantsResult, *, key: str = "variants", lead: str = "") -> Section:
    """A report section: the side-by-side table, the findings, the per-layer profiles, the training records."""
    columns = [column.replace("model spec", "spec") for column in COLUMNS]
    table = Table(
        f"The variants side by side, on {result.evaluation.images['evaluated']} test digits (accuracy on 1,000: "
        "the training record's). Aliasing: the probe's mean relative L2 error at the downsampling layers over "
        "shifts that are not a multiple of their stride (one alignment for all digits). Output error: the same "
        "for the logits, over all non-zero shifts.",
        columns,
        [[cell.strip("`") for cell in row] for row in _table_rows(result)],
    )
    protocol = Table("Protocol", ["what", "how"], [[name, str(value)] for name, value in result.protocol.items()])
    intro = (
        "Does anti-aliasing (BlurPool, Zhang 2019) or adaptive polyphase sampling (APS, Chaman & Dokmanic 2021) make "
        "the bundled digit classifier shift-invariant? shiftlab ships digits_cnn trained six ways: zero or circular "
        "padding, times strided, BlurPool or APS downsampling; each was converted before training and trained with "
        "the baseline's seed (the same initial weights and data order) and budget. APS is exact only with circular "
        "padding, and circular padding alone changes how a network treats shifts, so every method comes with both "
        "paddings: each effect has its control."
        + (f"\n\n{lead}" if lead else "")
        + "\n\nCircular consistency rolls each digit (APS's protocol); crop consistency cuts 28x28 windows from the "
        f"digit on a black {28 + 2 * CANVAS_MARGIN}x{28 + 2 * CANVAS_MARGIN} canvas (Zhang's protocol; MNIST's "
        f"background is 0, so the canvas is more of it); the worst case asks for the right class under all "
        f"{len(PROBE_SHIFTS)} circular shifts in 0..3 (every phase of the stride 4). The probe's profile (figure) "
        "shows where each variant loses equivariance."
    )
    if result.finetune_records:
        intro += (
            "\n\nConverting instead of retraining: the trained digits_cnn converted without retraining loses "
            "accuracy, because the converted layers compute something else. Fine-tuned by self-distillation "
            "(shiftlab convert ... --finetune digits; the original teaches its converted copy under shifts, 3 "
            "epochs on the 4,000 training digits), each conversion keeps the original's accuracy and gains its "
            "consistency. The last tables show each conversion before fine-tuning, after it, and trained from "
            "scratch, measured on the same digits."
        )
    figures = [
        ("The headline numbers of every variant on one scale.", show_variant_summary(result)),
        (
            "The probe's error versus depth, one line per variant (colour: downsampling; dashed: circular padding). "
            "Before the first downsampling the circular-padded variants are exact; the zero-padded ones already "
            "differ at the seam of the roll. After it, BlurPool lowers the error and APS's maps move by a shift "
            "that depends on the digit: probed one digit at a time (dotted), APS is exact at every layer.",
            show_variant_profiles(result),
        ),
        (
            "Circular consistency against the distance between the two views' shifts.",
            result.evaluation.plot_consistency("consistency"),
        ),
    ]
    return Section(
        key,
        "BlurPool and APS, trained: the digit classifier six ways, side by side",
        intro,
        figures=figures,
        tables=[table, _training_table(result), *_finetune_tables(result), protocol],
        findings=variant_findings(result) + finetune_findings(result),
        data=result.to_dict(),
    )


def _finetune_tables(result: VariantsResult) -> list[Table]:
    if not result.finetune_records:
        return []
    comparison = Table(
        "The trained digits_cnn converted, before and after fine-tuning, beside the same layers trained from "
        "scratch: test accuracy on all 1,000 test digits (the records'), the rest on the "
        f"{result.evaluation.images['evaluated']} digits above",
        list(FINETUNE_COLUMNS),
        [[cell.strip("`") for cell in row] for row in _finetune_rows(result)],
    )
    rows = []
    for variant, record in result.finetune_records.items():
        settings = record["settings"]
        rows.append(
            [
                VARIANT_SPECS[variant],
                record["weights"],
                f"{settings['epochs']} epochs, {len(record['steps'])} steps of {settings['batch_size']}",
                f"{record['training_seconds']:g} s",
                f"{record['training_cpu_seconds']:g} s",
                format_number(record["load_average_before"]),
                f"{record['test_correct']} / {record['test_images']}",
                record["weights_sha256"][:12],
            ]
        )
    runs = Table(
        "Fine-tuning (scripts/finetune_reference.py, one thread): the training steps' wall and CPU time, taken on "
        "a shared 2-core machine (load average before the run beside them)",
        ["spec", "weights", "budget", "wall time", "CPU time", "load before", "test correct", "sha256"],
        rows,
    )
    return [comparison, runs]


def finetune_findings(result: VariantsResult) -> list[Finding]:
    """Before and after fine-tuning, in sentences with their numbers (none without the fine-tuning records)."""
    if not result.finetune_records:
        return []
    original = result.records["baseline"]
    stages = {
        variant: {stage: result.finetune_numbers(variant, stage) for stage in FINETUNE_STAGES}
        for variant in result.finetune_records
    }

    def counts(stage: str) -> str:
        return ", ".join(f"{VARIANT_SPECS[variant]} {item[stage]['test_correct']}" for variant, item in stages.items())

    findings = [
        Finding(
            "Converted without retraining, the trained digits_cnn loses accuracy: the converted layers compute "
            "another function than the one that was trained",
            f"test digits right, of 1,000: digits_cnn {original['test_correct']}; converted {counts('converted')}",
            all(item["converted"]["test_correct"] < original["test_correct"] for item in stages.values()),
        ),
        Finding(
            "Fine-tuned by self-distillation, every conversion is back within 0.5 points of the original's test "
            "accuracy",
            f"test digits right, of 1,000: fine-tuned {counts('fine-tuned')}; trained from scratch "
            f"{counts('scratch')}; digits_cnn {original['test_correct']}",
            all(
                item["fine-tuned"]["test_correct"] >= original["test_correct"] - FINETUNE_ALLOWANCE
                for item in stages.values()
            ),
        ),
    ]
    if "circular_aps" in stages:
        after = stages["circular_aps"]["fine-tuned"]
        findings.append(
            Finding(
                "... and APS with circular padding is still exactly consistent under circular shifts after "
                "fine-tuning (the weights change, the architecture's guarantee does not)",
                f"{after['agreeing_pairs']} of {after['pairs']} view pairs agree "
                f"({result.evaluation.images['evaluated']} digits)",
                after["agreeing_pairs"] == after["pairs"],
            )
        )
    cost = ", ".join(
        f"{VARIANT_SPECS[variant]} {record['training_seconds']:g} s ({record['training_cpu_seconds']:g} s of CPU)"
        for variant, record in result.finetune_records.items()
    )
    threads = {record["threads"] for record in result.finetune_records.values()}
    findings.append(
        Finding(
            f"Wall time of the fine-tuning steps, 3 epochs ({', '.join(map(str, sorted(threads)))} thread(s); "
            "a machine shared with other jobs)",
            cost,
        )
    )
    return findings


def demo_variants_sections() -> list[Section]:
    """The demo's comparison: every shipped variant on the first :data:`DEMO_VARIANT_DIGITS` test digits."""
    lead = (
        f"To keep the demo fast, the numbers below use the first {DEMO_VARIANT_DIGITS} of the 1,000 test digits "
        f"({DEMO_VARIANT_DIGITS // 10} of each class) and 4 views per digit; the README's table is this one."
    )
    return [variants_section(run_variants(), lead=lead)]
