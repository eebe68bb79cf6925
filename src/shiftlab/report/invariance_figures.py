"""Figures of an :class:`~shiftlab.invariance.evaluate.EvaluationResult`: consistency against shift distance, flips
along a translation sequence, accuracy over a shift grid, where segmentation maps change. Each function returns a
:class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shiftlab._format import figure_text
from shiftlab.errors import check, check_choice

__all__ = ["show_consistency_by_distance", "show_dense_positions", "show_sequence_flips", "show_shift_accuracy"]

COLOURS = ("#2e86ab", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97", "#3d405b", "#e07a5f")


def _colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _metric_results(result: Any, metric: str) -> dict[str, dict[str, Any]]:
    """Each model's results of ``metric``, keyed by the model's name as a figure shows it (``$`` is no maths)."""
    return {
        figure_text(model): result.results[model][metric] for model in result.models if metric in result.results[model]
    }


#: The metrics :func:`show_consistency_by_distance` draws, and what their agreement counts.
_AGREEMENT = {
    "consistency": "pairs whose top-1 agrees (%)",
    "crop-consistency": "pairs whose top-1 agrees (%)",
    "dense-consistency": "pixels whose class is unchanged (%)",
}


def show_consistency_by_distance(result: Any, *, metric: str | None = None, dpi: int = 100) -> Figure:
    """Agreement of view pairs against the distance between their shifts (rounded to whole pixels).

    Top panel: one line per model, with the overall consistency as a dashed line.
    Bottom panel: how many pairs each distance has (few pairs: a noisy point).

    Args:
        result: an :class:`~shiftlab.invariance.evaluate.EvaluationResult`.
        metric: ``"consistency"``, ``"crop-consistency"`` (top-1 agreement of two views) or
            ``"dense-consistency"`` (unchanged pixels, against the length of the shift; default: the first measured).
    """
    available = [name for name in _AGREEMENT if name in result.protocol["metrics"]]
    check(available, "figure", f"the result has no consistency metric ({', '.join(_AGREEMENT)})")
    chosen = metric or available[0]
    check_choice(chosen, "metric", available)
    per_model = _metric_results(result, chosen)
    figure = Figure(figsize=(7.2, 4.8), dpi=dpi, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    counts: dict[int, int] = {}
    for index, (model, values) in enumerate(per_model.items()):
        items = values["by_distance"]
        distances = [item["distance"] for item in items]
        top.plot(
            distances,
            [100 * item["consistency"] if item["consistency"] is not None else np.nan for item in items],
            "-o",
            markersize=3,
            color=_colour(index),
            label=f"{model} ({100 * values['consistency']:.1f}%)" if values["consistency"] is not None else model,
        )
        if values["consistency"] is not None:
            top.axhline(100 * values["consistency"], color=_colour(index), linestyle="--", linewidth=0.8)
        counts = {item["distance"]: item["pairs"] for item in items}
    lowest = min(
        (
            100 * item["consistency"]
            for values in per_model.values()
            for item in values["by_distance"]
            if item["consistency"] is not None
        ),
        default=0.0,
    )
    top.set_ylim(max(0.0, min(lowest, 95.0) - 3.0), 101.0)
    top.set_ylabel(_AGREEMENT[chosen])
    dense = chosen == "dense-consistency"
    what = "the length of the shift" if dense else "the distance between the two shifts"
    top.set_title(f"{chosen}: agreement against {what}", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower left")
    if counts:
        bottom.bar(list(counts), list(counts.values()), width=0.8, color="#9aa3b5")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))  # pairs are counted
    if dense:
        bottom.set_xlabel("length of the shift (px, rounded; around the torus for rolls)")
    else:
        bottom.set_xlabel("distance between the shifts of the two views (px, rounded; around the torus for rolls)")
    bottom.set_ylabel("pairs")
    bottom.grid(alpha=0.3, axis="y")
    return figure


def show_dense_positions(result: Any, *, dpi: int = 100) -> Figure:
    """Where the predicted class changes under shift: the share of compared pixels that changed, by their position
    in the unshifted prediction (a grid of equal fractions of its height and width), one panel per model.

    A network whose maps move with its input shows an empty map; zero padding shows a frame along the borders.
    """
    check("dense-consistency" in result.protocol["metrics"], "figure", "the result has no dense-consistency metric")
    per_model = _metric_results(result, "dense-consistency")
    count = len(per_model)
    figure = Figure(figsize=(min(16.0, 3.4 * count + 1.2), 3.4), dpi=dpi, layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, count))
    grids = {}
    for model, values in per_model.items():
        positions = values["by_position"]
        compared = np.asarray(positions["pixels"], dtype=float)
        agreeing = np.asarray(positions["agreeing"], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            grids[model] = np.where(compared > 0, 100 * (compared - agreeing) / compared, np.nan)
    finite = [grid[np.isfinite(grid)] for grid in grids.values()]
    high = max((float(values.max()) for values in finite if values.size), default=0.0)
    high = high if high > 0 else 1.0
    for axes, (model, grid) in zip(panels, grids.items()):
        image = axes.imshow(grid, cmap="magma", origin="upper", vmin=0.0, vmax=high, interpolation="nearest")
        bins = grid.shape[0]
        axes.set_xticks([0, bins - 1], ["left", "right"], fontsize=7)
        axes.set_yticks([0, bins - 1], ["top", "bottom"], fontsize=7)
        changed = per_model[model]["consistency"]
        share = f"{100 * (1 - changed):.2f}% changed" if changed is not None else "n/a"
        axes.set_title(f"{model}\n{share}", fontsize=9)
        figure.colorbar(image, ax=axes, shrink=0.8, label="pixels whose class changed (%)")
    return figure


def show_sequence_flips(result: Any, *, dpi: int = 100) -> Figure:
    """Along ImageNet-P's translation sequence: how often the top-1 class flips between neighbouring frames (left),
    and how often it differs from the unshifted frame's (right), one line per model."""
    check("imagenet-p" in result.protocol["metrics"], "figure", "the result has no imagenet-p metric")
    per_model = _metric_results(result, "imagenet-p")
    figure = Figure(figsize=(10.0, 3.8), dpi=dpi, layout="constrained")
    left, right = figure.subplots(1, 2)
    for index, (model, values) in enumerate(per_model.items()):
        steps = values["flip_rate_by_step"]
        middles = [(item["from_shift"] + item["to_shift"]) / 2 for item in steps]
        left.plot(
            middles,
            [100 * (item["flip_rate"] or 0) for item in steps],
            "-o",
            markersize=2.5,
            color=_colour(index),
            label=model,
        )
        frames = values["differs_from_centre"]
        right.plot(
            [item["shift"] for item in frames],
            [100 * (item["rate"] or 0) for item in frames],
            "-o",
            markersize=2.5,
            color=_colour(index),
            label=model,
        )
    left.set_title("top-1 flips between neighbouring frames", fontsize=10)
    left.set_xlabel("horizontal shift of the picture (px), between frames")
    left.set_ylabel("images (%)")
    right.set_title("top-1 differs from the unshifted frame", fontsize=10)
    right.set_xlabel("horizontal shift of the picture (px)")
    right.set_ylabel("images (%)")
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def show_shift_accuracy(result: Any, *, dpi: int = 100) -> Figure:
    """Top-1 accuracy for every shift of the grid: a heat map per model when the shifts fill a rectangle,
    otherwise accuracy against the shift's position in the list."""
    check("shift-accuracy" in result.protocol["metrics"], "figure", "the result has no shift-accuracy metric")
    per_model = _metric_results(result, "shift-accuracy")
    shifts = [tuple(item["shift"]) for item in next(iter(per_model.values()))["per_shift"]]
    rows = sorted({dy for dy, _ in shifts})
    cols = sorted({dx for _, dx in shifts})
    rectangle = len(shifts) == len(rows) * len(cols) == len(set(shifts)) and len(rows) > 1 and len(cols) > 1
    count = len(per_model)
    if not rectangle:
        figure = Figure(figsize=(7.0, 3.6), dpi=dpi, layout="constrained")
        axes = figure.subplots()
        for index, (model, values) in enumerate(per_model.items()):
            axes.plot(
                range(len(shifts)),
                [100 * (item["accuracy"] or 0) for item in values["per_shift"]],
                "-o",
                markersize=3,
                color=_colour(index),
                label=model,
            )
        axes.set_xticks(range(len(shifts)), [f"({dy:g},{dx:g})" for dy, dx in shifts], rotation=90, fontsize=7)
        axes.set_ylabel("top-1 accuracy (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return figure
    figure = Figure(figsize=(min(16.0, 3.6 * count + 1.0), 3.6), dpi=dpi, layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, count))
    grids = {}
    for model, values in per_model.items():
        grid = np.full((len(rows), len(cols)), np.nan)
        for item in values["per_shift"]:
            dy, dx = item["shift"]
            grid[rows.index(dy), cols.index(dx)] = 100 * (item["accuracy"] or 0)
        grids[model] = grid
    low = min(float(np.nanmin(grid)) for grid in grids.values())
    high = max(float(np.nanmax(grid)) for grid in grids.values())
    high = high if high > low else low + 1.0
    for axes, (model, values) in zip(panels, per_model.items()):
        grid = grids[model]
        image = axes.imshow(grid, cmap="viridis", origin="upper", vmin=low, vmax=high)
        axes.set_xticks(range(len(cols)), [f"{value:g}" for value in cols], fontsize=7)
        axes.set_yticks(range(len(rows)), [f"{value:g}" for value in rows], fontsize=7)
        axes.set_xlabel("dx (right)")
        axes.set_ylabel("dy (down)")
        worst = values["worst_case_accuracy"]
        axes.set_title(f"{model}\nworst case {100 * worst:.1f}%" if worst is not None else model, fontsize=9)
        for (row, col), value in np.ndenumerate(grid):
            if len(rows) * len(cols) <= 49 and np.isfinite(value):
                light = (value - low) / (high - low) > 0.6  # viridis is light at the top: dark text there
                axes.text(
                    col, row, f"{value:.0f}", ha="center", va="center", fontsize=6, color="black" if light else "white"
                )
        figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
    return figure
