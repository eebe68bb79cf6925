"""Report sections for a :class:`~shiftlab.finetune.FinetuneResult`: before and after, the curve, the protocol.

Used by ``shiftlab convert ... --finetune DATA``: the first section compares the original model, its converted copy
before fine-tuning and after it on the held-out images; the evaluation's own sections
(:func:`~shiftlab.experiments.evaluation.evaluation_sections`) follow with each metric in detail.
"""

from __future__ import annotations

from typing import Any

from shiftlab.experiments.evaluation import _percent, evaluation_sections
from shiftlab.finetune import STAGES, FinetuneResult
from shiftlab.report.sections import Finding, Section, Table

__all__ = ["finetune_protocol", "finetune_sections"]

#: How each stage is called in the report.
STAGE_NAMES: dict[str, str] = {
    "original": "original",
    "converted": "converted, not fine-tuned",
    "fine-tuned": "converted and fine-tuned",
}
#: The accuracy the fine-tuned model may lose against the original before the report says so (0.5 points).
ACCURACY_ALLOWANCE = 0.005


def _count(part: int | None, whole: int | None) -> str:
    return "n/a" if part is None or whole is None else f"{part:,} / {whole:,}"


def finetune_protocol(result: FinetuneResult) -> dict[str, Any]:
    """The protocol as flat ``name: text`` pairs for the report's details table."""
    protocol = result.protocol
    settings = protocol["settings"]
    return {
        "training data": f"{protocol['data']['description']} ({protocol['data']['usable']} usable)",
        "labels": protocol["data"]["labels"],
        "held-out data": f"{protocol['holdout']['description']}: {protocol['holdout']['split']}",
        "model input": protocol["preparation"]["model_input"],
        "normalisation": protocol["preparation"]["normalize"],
        "views": protocol["views"],
        "loss": settings["loss"],
        "optimiser": settings["optimizer"],
        "learning rate": settings["lr_schedule"],
        "budget": (
            f"{settings['epochs']} epochs of {protocol['steps_per_epoch']} steps of {settings['batch_size']} images"
        ),
        "teacher outputs": protocol["teacher_outputs"],
        "seed": settings["seed"],
        "seeding": protocol["seeding"],
        "processes, device": f"{protocol['processes']}, {protocol['device']}",
        "teacher": str(protocol["teacher"]),
        "student (before)": str(protocol["student"]),
    }


def _findings(result: FinetuneResult) -> list[Finding]:
    name = result.accuracy_name
    original, before, after = (result.metrics(stage) for stage in STAGES)
    findings = [
        Finding(
            f"The {name} on the held-out images, original -> converted (before fine-tuning)",
            f"{_percent(original['accuracy'])} -> {_percent(before['accuracy'])}"
            f" ({_count(before['correct'], before['images'])})",
        ),
        Finding(
            f"Fine-tuning brings the {name} back to within {100 * ACCURACY_ALLOWANCE:.1f} points of the original's",
            f"{_percent(after['accuracy'])} ({_count(after['correct'], after['images'])}) against "
            f"{_percent(original['accuracy'])} ({_count(original['correct'], original['images'])})",
            after["accuracy"] >= original["accuracy"] - ACCURACY_ALLOWANCE,
        ),
    ]
    if result.protocol["settings"]["shift_mode"] == "circular" and before["circular_consistency"] == 1.0:
        findings.append(
            Finding(
                "APS with circular padding stays exactly invariant to circular shifts after fine-tuning: every "
                "pair of circular views of every held-out image gets the same class",
                f"{_count(after['agreeing_pairs'], after['pairs'])} view pairs agree (before: "
                f"{_count(before['agreeing_pairs'], before['pairs'])})",
                after["agreeing_pairs"] == after["pairs"],
            )
        )
    else:
        findings.append(
            Finding(
                "Circular consistency, original -> converted -> fine-tuned",
                " -> ".join(_percent(item["circular_consistency"], 2) for item in (original, before, after)),
            )
        )
    findings.append(
        Finding(
            "The held-out images were never trained on",
            f"{result.protocol['holdout']['images']:,} held-out images: {result.protocol['holdout']['split']}; "
            f"{result.protocol['data']['usable']:,} training images",
        )
    )
    return findings


def finetune_sections(result: FinetuneResult, *, title: str = "", figure: Any = None) -> list[Section]:
    """The before-and-after section (with the training curve), then the held-out evaluation's sections."""
    name = result.accuracy_name
    rows = []
    for stage in STAGES:
        item = result.metrics(stage)
        rows.append(
            [
                STAGE_NAMES[stage],
                f"{_percent(item['accuracy'])} ({_count(item['correct'], item['images'])})",
                f"{_percent(item['circular_consistency'], 2)} ({_count(item['agreeing_pairs'], item['pairs'])})",
                _percent(item["crop_consistency"], 2),
            ]
        )
    table = Table(
        f"Held-out images ({result.protocol['holdout']['images']:,}): {name} on the unshifted images, and the share "
        "of view pairs whose top-1 class agrees (circular rolls; crop windows where the images leave room for them)",
        ["model", name, "circular consistency", "crop consistency"],
        rows,
    )
    epochs = Table(
        "After each epoch (0: the converted model before the first step)",
        ["epoch", "step", "mean loss", f"held-out {name}"],
        [
            [
                row["epoch"],
                row["step"],
                "-" if row["loss"] is None else f"{row['loss']:.4f}",
                _percent(row["holdout_accuracy"]),
            ]
            for row in result.epochs
        ],
    )
    tables = [table, epochs]
    if result.skipped:
        tables.append(
            Table(
                f"Training images that could not be used ({len(result.skipped)}; the first 20 shown)",
                ["index", "image", "reason"],
                [[item["index"], item["name"], item["reason"]] for item in result.skipped[:20]],
            )
        )
    protocol = result.protocol
    intro = (
        "A converted model computes another function than the one that was trained, so it loses accuracy. Here the "
        "original model taught its converted copy by self-distillation (Hinton et al. 2015): the copy saw "
        f"randomly shifted views ({protocol['views']}) and learned to match the original's softened output on the "
        f"unshifted image ({protocol['settings']['loss']}). Labels: {protocol['data']['labels']}. Every number "
        f"below is measured on held-out images: {protocol['holdout']['split']}."
    )
    figures = [
        (
            "Training curve: the loss of every step (and its running mean), and the held-out "
            f"{name} before the first step and after each epoch.",
            figure if figure is not None else result.plot_curve(),
        )
    ]
    overview = Section(
        "finetune",
        title or "Keeping the accuracy: the converted model, fine-tuned by self-distillation",
        intro,
        figures=figures,
        tables=tables,
        findings=_findings(result),
        data={
            "metrics": {stage: result.metrics(stage) for stage in STAGES},
            "epochs": result.epochs,
            "seconds": result.seconds,
        },
    )
    details = evaluation_sections(
        result.evaluation, overview_key="finetune-evaluation", title="The held-out evaluation: data, models, protocol"
    )
    # the unshifted accuracy is in the table above; the evaluation's own section is about grids of shifts
    return [overview] + [section for section in details if section.key != "evaluate-shift-accuracy"]
