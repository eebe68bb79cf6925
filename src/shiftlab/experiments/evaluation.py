"""Report sections for an :class:`~shiftlab.invariance.evaluate.EvaluationResult`: a table per metric, models side by
side, with figures and findings; used by ``shiftlab evaluate`` and by the demo.
"""

from __future__ import annotations

from typing import Any

from shiftlab.invariance.evaluate import EvaluationResult
from shiftlab.report.sections import Finding, Section, Table, format_error, format_number

__all__ = ["DEMO_DIGITS", "demo_evaluation_sections", "evaluation_protocol", "evaluation_sections"]

_SKIPPED_SHOWN = 20


def _percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{100 * low:.1f}, {100 * high:.1f}]"


def evaluation_protocol(result: EvaluationResult) -> dict[str, Any]:
    """The protocol as flat ``name: text`` pairs for the report's details table."""
    protocol = result.protocol
    details: dict[str, Any] = {
        "data": protocol["data"]["description"],
        "images": (
            f"{result.images['evaluated']} evaluated, {result.images['skipped']} skipped, of {result.images['total']}"
        ),
        "resize": protocol["preparation"]["resize"],
        "model input": protocol["preparation"]["model_input"],
        "seed": protocol["seed"],
        "seeding": protocol["seeding"],
        "batch size": (
            f"{protocol['batch_size']} inputs per forward pass ({protocol['images_per_pack']} image(s) per pack)"
        ),
        "device, dtype": f"{protocol['device']}, {protocol['dtype']}",
    }
    if "loader" in protocol:
        loader = protocol["loader"]
        details["decoding processes"] = f"{loader['workers']} ({loader['chosen']}; the numbers do not depend on it)"
    if protocol.get("chosen_by_auto"):
        details["chosen by auto"] = "; ".join(protocol["chosen_by_auto"])
    for name, description in protocol["metrics"].items():
        details[f"metric {name}"] = "; ".join(f"{key}: {value}" for key, value in description.items())
    return details


def _overview(result: EvaluationResult, key: str, title: str | None = None, lead: str = "") -> Section:
    protocol = result.protocol
    model_rows = [
        [
            label,
            record.get("spec") or record.get("source"),
            record["weights"]["file"] if isinstance(record.get("weights"), dict) else (record.get("weights") or "-"),
            record.get("normalize"),
            record.get("channels"),
            record["preprocessing"]["source"] if "preprocessing" in record else "-",
        ]
        for label, record in protocol["models"].items()
    ]
    tables = [Table("Models", ["model", "spec", "weights", "normalisation", "channels", "preprocessing"], model_rows)]
    findings = [
        Finding(
            "Images evaluated",
            f"{result.images['evaluated']} of {result.images['total']}"
            f" ({result.images['skipped']} skipped: unreadable or too small)",
            result.images["skipped"] == 0 if result.images["total"] else None,
        )
    ]
    if result.skipped:
        tables.append(
            Table(
                f"Skipped images ({len(result.skipped)}; the first {min(len(result.skipped), _SKIPPED_SHOWN)} shown)",
                ["index", "image", "reason"],
                [[item["index"], item["name"], item["reason"]] for item in result.skipped[:_SKIPPED_SHOWN]],
            )
        )
    intro = (
        f"Data: {protocol['data']['description']}. Resize: {protocol['preparation']['resize']}; model input: "
        f"{protocol['preparation']['model_input']}. Every model sees the same shifted views of every image; "
        f"the shifts of image i are drawn from a generator seeded by the seed ({protocol['seed']}), the metric "
        "and i alone, so the numbers "
        "do not depend on batching, loader workers, the number of processes or an interruption."
    )
    return Section(
        key,
        title or "Evaluation: data, models and protocol",
        (lead + "\n\n" if lead else "") + intro,
        tables=tables,
        findings=findings,
        data={"protocol": result.protocol, "images": result.images, "skipped": result.skipped},
    )


def _consistency(result: EvaluationResult, name: str) -> Section:
    description = result.protocol["metrics"][name]
    rows, findings = [], []
    for model in result.models:
        values = result.results[model][name]
        rows.append(
            [
                model,
                _percent(values["consistency"], 2),
                _interval(*values["ci95"]),
                _percent(values["all_views_agree"]),
                values["images"],
                values["pairs"],
            ]
        )
        findings.append(
            Finding(
                f"{model}: share of view pairs whose top-1 class agrees",
                f"{_percent(values['consistency'], 2)} (95% interval {_interval(*values['ci95'])}); all "
                f"{description['views_per_image']} views agree on {_percent(values['all_views_agree'])} of images",
            )
        )
    if name == "consistency":
        intro = (
            "The protocol of adaptive polyphase sampling (Chaman & Dokmanic 2021): views are circular rolls of the "
            "model input. "
            "A network whose layers all commute with circular shifts (circular padding, no stride, or adaptive "
            "polyphase sampling) scores 100% here; strides and zero padding can show up as disagreement."
        )
    else:
        intro = (
            "The protocol of Zhang (2019, anti-aliased CNNs): views are windows of the model's input size cut at "
            "random "
            "offsets from a larger centre square of the resized image, so every view is real image content."
        )
    intro += (
        f"\n\nShifts: {description['shifts']}. {description['views_per_image']} views per image, all "
        f"{description['pairs_per_image']} pairs compared. The interval treats images, not pairs, as independent."
    )
    figures = [
        (
            "Agreement of view pairs against the distance between their two shifts (dashed: overall), "
            "and how many pairs each distance has.",
            result.plot_consistency(name),
        )
    ]
    table = Table(
        "Consistency per model",
        ["model", "consistency", "95% interval", "all views agree", "images", "pairs"],
        rows,
    )
    return Section(f"evaluate-{name}", _titles[name], intro, figures=figures, tables=[table], findings=findings)


def _shift_accuracy(result: EvaluationResult) -> Section:
    description = result.protocol["metrics"]["shift-accuracy"]
    rows, findings = [], []
    for model in result.models:
        values = result.results[model]["shift-accuracy"]
        worst_shift = min(values["per_shift"], key=lambda item: item["accuracy"] or 0.0)
        rows.append(
            [
                model,
                _percent(values["accuracy_unshifted"]),
                _percent(values["mean_accuracy"]),
                f"{_percent(worst_shift['accuracy'])} at ({worst_shift['shift'][0]:g}, {worst_shift['shift'][1]:g})",
                _percent(values["worst_case_accuracy"]),
                values["images"],
            ]
        )
        findings.append(
            Finding(
                f"{model}: accuracy when every shift of the grid must be classified correctly",
                f"{_percent(values['worst_case_accuracy'])},"
                f" against {_percent(values['accuracy_unshifted'])} unshifted",
            )
        )
    intro = (
        f"Top-1 accuracy under each of {len(description['shifts'])} {description['mode']} shifts, and the adversarial, "
        "worst-case accuracy of Michaeli et al. (2023): an image counts as correct only if it is correct under "
        "every shift of the grid."
    )
    return Section(
        "evaluate-shift-accuracy",
        _titles["shift-accuracy"],
        intro,
        figures=[("Top-1 accuracy for every shift of the grid (dy down, dx right).", result.plot_shift_accuracy())],
        tables=[
            Table(
                "Accuracy under shift",
                ["model", "unshifted", "mean over shifts", "lowest single shift", "worst case (all shifts)", "images"],
                rows,
            )
        ],
        findings=findings,
    )


def _subpixel(result: EvaluationResult) -> Section:
    description = result.protocol["metrics"]["subpixel"]
    shifts = [f"({dy:g}, {dx:g})" for dy, dx in description["shifts"]]
    rows = []
    for model in result.models:
        values = result.results[model]["subpixel"]
        rows.append(
            [model]
            + [_percent(item["consistency"]) for item in values["per_shift"]]
            + [_percent(values["consistency_under_every_shift"]), values["images"]]
        )
    intro = (
        "Band-limited shifts by fractions of a pixel (the spectrum multiplied by a phase ramp): a signal that is "
        "properly sampled moves smoothly, so an alias-free network keeps its answer. The table gives the share of "
        "images whose top-1 class equals that of the unshifted input."
    )
    return Section(
        "evaluate-subpixel",
        _titles["subpixel"],
        intro,
        tables=[Table("Top-1 unchanged under sub-pixel shifts", ["model", *shifts, "all shifts", "images"], rows)],
    )


def _sequence(result: EvaluationResult) -> Section:
    rows, findings = [], []
    k = None
    for model in result.models:
        values = result.results[model]["imagenet-p"]
        k = values["k"]
        row: list[Any] = [model]
        for item in values["per_difficulty"]:
            row += [_percent(item["flip_probability"], 2), format_number(item[f"top{k}_distance"])]
        rows.append(row + [values["sequences"]])
        first = values["per_difficulty"][0]
        findings.append(
            Finding(
                f"{model}: flip probability at difficulty {first['difficulty']}",
                f"{_percent(first['flip_probability'], 2)} of neighbouring frames change the top-1 class;"
                f" top-{k} distance {format_number(first[f'top{k}_distance'])}",
            )
        )
    difficulties = result.protocol["metrics"]["imagenet-p"]["difficulties"]
    columns = ["model"]
    for step in difficulties:
        columns += [f"flip prob. d={step}", f"top-{k} dist. d={step}"]
    intro = (
        "ImageNet-P's translation perturbation (Hendrycks & Dietterich 2019): "
        f"{result.protocol['metrics']['imagenet-p']['frames']}. At difficulty d, frame j is compared with frame j + d. "
        f"{result.protocol['metrics']['imagenet-p']['note']}."
    )
    return Section(
        "evaluate-imagenet-p",
        _titles["imagenet-p"],
        intro,
        figures=[
            (
                "Along the translation sequence: how often the top-1 class flips between neighbouring frames, "
                "and how often it differs from the unshifted frame's.",
                result.plot_sequence(),
            )
        ],
        tables=[Table("Flip probability and top-k distance", columns + ["sequences"], rows)],
        findings=findings,
    )


def _diagonal(result: EvaluationResult) -> Section:
    rows, findings = [], []
    for model in result.models:
        values = result.results[model]["diagonal"]
        rows.append([model, _percent(values["p_top1_change"], 2), format_error(values["mac"]), values["images"]])
        findings.append(
            Finding(
                f"{model}: a one-pixel diagonal shift changes the top-1 class",
                f"for {_percent(values['p_top1_change'], 2)} of images (MAC {format_error(values['mac'])})",
            )
        )
    mode = result.protocol["metrics"]["diagonal"]["mode"]
    intro = (
        "Azulay & Weiss (2019): the window at (c, c) against the window at (c + 1, c + 1) "
        f"({mode} mode), the content one pixel up and left. MAC is the mean absolute change of the softmax "
        "probability of the class that is top-1 before the shift. They report that the answer of modern CNNs changes "
        "for about 30% of images under such a shift."
    )
    return Section(
        "evaluate-diagonal",
        _titles["diagonal"],
        intro,
        tables=[Table("One-pixel diagonal shift", ["model", "P(top-1 change)", "MAC", "images"], rows)],
        findings=findings,
    )


def _cosine(result: EvaluationResult) -> Section:
    description = result.protocol["metrics"]["cosine"]
    rows = []
    for model in result.models:
        values = result.results[model]["cosine"]
        rows.append(
            [model, format_number(values["mean_cosine"]), format_number(values["min_cosine"]), values["images"]]
        )
    intro = (
        f"Cosine similarity between the flattened output for the unshifted input and for each of "
        f"{len(description['shifts'])} {description['mode']} shifts: 1 means the output did not change."
    )
    return Section(
        "evaluate-cosine",
        _titles["cosine"],
        intro,
        tables=[Table("Cosine similarity under shift", ["model", "mean", "minimum", "images"], rows)],
    )


def _dense(result: EvaluationResult) -> Section:
    description = result.protocol["metrics"]["dense-consistency"]
    rows, findings = [], []
    for model in result.models:
        values = result.results[model]["dense-consistency"]
        rows.append(
            [
                model,
                _percent(values["consistency"], 2),
                _percent(values["miou"], 2),
                _percent(values["unchanged_maps"]),
                values["classes_present"],
                values["images"],
                values["pairs"],
                values["pixels"],
            ]
        )
        findings.append(
            Finding(
                f"{model}: share of compared pixels whose predicted class is unchanged by a shift",
                f"{_percent(values['consistency'], 2)}; mIoU between the aligned predictions"
                f" {_percent(values['miou'], 2)} over {values['classes_present']} classes; every pixel unchanged in"
                f" {_percent(values['unchanged_maps'])} of the pairs",
            )
        )
    intro = (
        "Segmentation maps under shift, the protocol of learnable polyphase sampling (Rojas-Gomez et al. 2022, "
        "mASSC in their code): the prediction for the unshifted input is compared with the prediction for each "
        "shifted input, shifted back, pixel by pixel (the class of a pixel: the argmax of its scores). "
        f"Shifts: {description['shifts']}. Mode {description['mode']}. "
        "A network whose layers all commute with the shift (circular padding and no stride, or polyphase sampling, "
        "under circular shifts) scores 100%.\n\n"
        "Consistency pools the compared pixels of every pair and image (the JSON's consistency_per_comparison "
        "weighs each pair the same, as LPS averages). mIoU: for each class, the pixels both aligned predictions "
        "give it over those either gives it, summed over the data set, averaged over the classes present in either."
    )
    figures = [
        (
            "Pixels whose class is unchanged against the length of the shift (dashed: overall), and how many pairs "
            "each length has.",
            result.plot_consistency("dense-consistency"),
        ),
        (
            "Where the class changes: the share of compared pixels whose class changed, by position in the unshifted "
            "prediction (16 x 16 cells of equal fractions of its height and width).",
            result.plot_dense_positions(),
        ),
    ]
    table = Table(
        "Dense consistency per model",
        [
            "model",
            "consistency",
            "mIoU",
            "maps unchanged",
            "classes",
            "images",
            "pairs",
            "pixels",
        ],
        rows,
    )
    return Section(
        "evaluate-dense-consistency",
        _titles["dense-consistency"],
        intro,
        figures=figures,
        tables=[table],
        findings=findings,
    )


_titles = {
    "consistency": "Consistency under circular shifts (APS protocol)",
    "crop-consistency": "Consistency under crop shifts (Zhang 2019 protocol)",
    "shift-accuracy": "Accuracy under shift, and the worst case over the grid",
    "subpixel": "Consistency under sub-pixel (Fourier) shifts",
    "imagenet-p": "Translation sequences (ImageNet-P): flip probability and top-5 distance",
    "diagonal": "One-pixel diagonal shift (Azulay & Weiss): P(top-1 change) and MAC",
    "cosine": "Cosine similarity of the output under shift",
    "dense-consistency": "Dense consistency under shift: per-pixel classes and mIoU (LPS protocol)",
}


def evaluation_sections(
    result: EvaluationResult, *, overview_key: str = "evaluation", title: str | None = None, lead: str = ""
) -> list[Section]:
    """An overview section (``title``, ``lead`` paragraph), then one section per metric, in the order given."""
    sections = [_overview(result, overview_key, title, lead)]
    for name in result.protocol["metrics"]:
        if name in ("consistency", "crop-consistency"):
            sections.append(_consistency(result, name))
        elif name == "shift-accuracy":
            sections.append(_shift_accuracy(result))
        elif name == "subpixel":
            sections.append(_subpixel(result))
        elif name == "imagenet-p":
            sections.append(_sequence(result))
        elif name == "diagonal":
            sections.append(_diagonal(result))
        elif name == "cosine":
            sections.append(_cosine(result))
        elif name == "dense-consistency":
            sections.append(_dense(result))
    for section in sections[1:]:
        section.data = {
            "results": {
                model: result.results[model].get(section.key.removeprefix("evaluate-")) for model in result.models
            }
        }
    return sections


#: How many of the bundled test digits the demo evaluates (a prefix: 20 of each class).
DEMO_DIGITS = 200


def demo_evaluation_sections() -> list[Section]:
    """The demo's evaluation: the bundled digit classifier on the first 200 held-out digits, three protocols."""
    from shiftlab.digits import DIGITS_CLASSES, load_digits
    from shiftlab.invariance.evaluate import EvaluateOptions, evaluate
    from shiftlab.invariance.protocols import Consistency, DiagonalShift, TranslationSequence

    images, labels = load_digits("test")
    result = evaluate(
        {"digits_cnn": "digits_cnn"},
        (images[:DEMO_DIGITS], labels[:DEMO_DIGITS]),
        classes=DIGITS_CLASSES,
        metrics=[
            Consistency("circular", views=4, max_shift=4),
            DiagonalShift("circular"),
            TranslationSequence(max_shift=4),
        ],
        options=EvaluateOptions(batch_size=64),
    )
    lead = (
        f"From pictures to predictions: shiftlab's bundled digit classifier (digits_cnn: 3x3 convolutions with zero "
        f"padding, a 2x2 max pooling and a stride-2 convolution, trained on the bundled MNIST digits) on the first "
        f"{DEMO_DIGITS} held-out test digits (20 of each class), under three published protocols at the digits' scale: "
        "circular rolls of up to 4 pixels (APS), a one-pixel diagonal shift (Azulay & Weiss), and translation "
        "sequences of -4..4 pixels with black fill (ImageNet-P). The network's downsampling layers alias, so a shift "
        "of a few pixels changes some of its answers. The command shiftlab evaluate runs the same on your model and "
        "data."
    )
    return evaluation_sections(
        result,
        overview_key="evaluation",
        title="Evaluating a trained classifier under shifts: the bundled digits",
        lead=lead,
    )
