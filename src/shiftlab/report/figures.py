"""Matplotlib figures. Every function returns a :class:`matplotlib.figure.Figure` and draws nothing on screen.

Figures are built with ``Figure()`` rather than ``pyplot``, so they are not
kept alive by pyplot's global state (no leak in a loop) and they show once in
Jupyter when returned from a cell. Save them with ``fig.savefig("x.png")`` or
``"x.svg"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure

from shiftlab._format import figure_text, format_stride
from shiftlab.distances import peak_position
from shiftlab.errors import check, check_choice, describe

if TYPE_CHECKING:
    from shiftlab.finetune import FinetuneResult

__all__ = [
    "show_convergence",
    "show_error_vs_depth",
    "show_shift_heatmaps",
    "show_feature_map",
    "show_pyramid",
    "show_shift_table",
    "show_training_curve",
    "shade_stride_bands",
]

FEATURE_CMAP = "magma"


def _display_array(value: Any, name: str) -> np.ndarray:
    """A 2-D map or a channels-last RGB image, as float numpy, for ``imshow``."""
    array = (
        value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float32)
    )
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] == 3:
        array = np.clip(np.moveaxis(array, 0, -1), 0.0, 1.0)
    check(
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3),
        name,
        f"expected a 2-D map (H, W) or an RGB image (3, H, W), got {describe(value)}",
    )
    return array


def _display_range(array: np.ndarray) -> tuple[float, float]:
    """Colour limits: from min(0, min) to the 99.5th percentile, so that a few strong edges leave the rest visible."""
    low = min(0.0, float(array.min()))
    high = float(np.percentile(array, 99.5))
    if high <= low:
        high = float(array.max())
    return low, high if high > low else low + 1.0


def _imshow(axes, array: np.ndarray, cmap: str) -> None:
    if array.ndim == 3:
        axes.imshow(array, interpolation="nearest")
    else:
        low, high = _display_range(array)
        axes.imshow(array, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def _shape_title(array: np.ndarray) -> str:
    return f"{array.shape[0]} x {array.shape[1]}"


def show_feature_map(
    image: Any,
    feature_map: Any,
    *,
    titles: Sequence[str] = ("input", "feature map"),
    cmap: str = FEATURE_CMAP,
    dpi: int = 100,
) -> Figure:
    """The input beside its feature map (the article's first figure), each titled with its shape.

    Args:
        image: ``(H, W)`` gray or ``(3, H, W)`` RGB.
        feature_map: ``(H', W')`` map, e.g. ``convolve(image, "sobel_y")``.
        titles: titles of the two panels; the shape is appended.
        cmap: colour map of the feature map (the input is shown in gray).
        dpi: resolution of the figure.

    Example:
        >>> from shiftlab import convolve, sample_image
        >>> image = sample_image("chelsea")
        >>> fig = show_feature_map(image, convolve(image, "sobel_y"))
        >>> [axes.get_title() for axes in fig.axes]
        ['input (300 x 451)', 'feature map (298 x 449)']
    """
    first, second = _display_array(image, "image"), _display_array(feature_map, "feature_map")
    figure = Figure(figsize=(10, 4), dpi=dpi, layout="constrained")
    left, right = figure.subplots(1, 2)
    _imshow(left, first, "gray")
    _imshow(right, second, cmap)
    left.set_title(f"{figure_text(titles[0])} ({_shape_title(first)})")
    right.set_title(f"{figure_text(titles[1])} ({_shape_title(second)})")
    return figure


def show_pyramid(
    levels: Sequence[Any],
    *,
    title: str | None = None,
    cmap: str = FEATURE_CMAP,
    dpi: int = 100,
    panel_size: float = 2.4,
) -> Figure:
    """One panel per pooling level, titled with the level's shape (the article's ``visualize_pooling``).

    Args:
        levels: maps as returned by :func:`shiftlab.pool_pyramid` (level 0 first).
        title: an optional title over all panels.
        cmap: colour map.
        dpi: resolution.
        panel_size: width of one panel in inches.

    Example:
        >>> import numpy as np
        >>> from shiftlab import pool_pyramid
        >>> fig = show_pyramid(pool_pyramid(np.eye(8), 3))
        >>> [axes.get_title() for axes in fig.axes]
        ['level 0: 8 x 8', 'level 1: 4 x 4', 'level 2: 2 x 2', 'level 3: 1 x 1']
    """
    check(len(levels) > 0, "levels", "is empty: pass at least one map")
    arrays = [_display_array(level, f"levels[{index}]") for index, level in enumerate(levels)]
    aspect = arrays[0].shape[0] / arrays[0].shape[1]
    figure = Figure(
        figsize=(panel_size * len(arrays), panel_size * aspect + (0.9 if title else 0.6)),
        dpi=dpi,
        layout="constrained",
    )
    for index, (axes, array) in enumerate(zip(np.atleast_1d(figure.subplots(1, len(arrays))), arrays)):
        _imshow(axes, array, cmap)
        axes.set_title(f"level {index}: {_shape_title(array)}", fontsize=9)
    if title:
        figure.suptitle(figure_text(title))
    return figure


def _normalised(array: np.ndarray) -> np.ndarray:
    low, high = _display_range(array)
    return (array - low) / (high - low)


def show_convergence(
    levels_a: Sequence[Any],
    levels_b: Sequence[Any],
    *,
    labels: Sequence[str] = ("A", "B"),
    dpi: int = 100,
    panel_size: float = 2.4,
) -> Figure:
    """Track, level by level, where the strongest responses of two pyramids land.

    Top row: each level as a colour overlay, ``A`` in magenta and ``B`` in
    green (white where both respond), with the strongest response of each
    marked (a cross for A, a plus for B). Bottom: the distance between the two
    strongest responses, in pixels of the level and of the input, per level.

    Args:
        levels_a: pyramid of the first image (from :func:`shiftlab.pool_pyramid`).
        levels_b: pyramid of the second image, same number of levels and shapes.
        labels: names of the two images.

    Example:
        >>> from shiftlab import pool_pyramid, sample_image
        >>> a, b = (pool_pyramid(sample_image(name), 3) for name in ("pixel_a", "pixel_b"))
        >>> len(show_convergence(a, b).axes)
        5
    """
    check(
        len(levels_a) == len(levels_b) > 0,
        "levels",
        f"the two pyramids need the same number of levels, got {len(levels_a)} and {len(levels_b)}",
    )
    arrays_a = [_display_array(level, "levels_a") for level in levels_a]
    arrays_b = [_display_array(level, "levels_b") for level in levels_b]
    for index, (a, b) in enumerate(zip(arrays_a, arrays_b)):
        check(
            a.shape == b.shape and a.ndim == 2,
            "levels",
            f"level {index} has shapes {a.shape} and {b.shape}; expected equal 2-D maps",
        )
    count = len(arrays_a)
    aspect = arrays_a[0].shape[0] / arrays_a[0].shape[1]
    figure = Figure(figsize=(panel_size * count, panel_size * aspect + 2.8), dpi=dpi, layout="constrained")
    grid = figure.add_gridspec(2, count, height_ratios=[panel_size * aspect, 2.0])
    level_px, input_px = [], []
    for index, (a, b) in enumerate(zip(arrays_a, arrays_b)):
        axes = figure.add_subplot(grid[0, index])
        na, nb = _normalised(a), _normalised(b)
        axes.imshow(np.stack([na, nb, na], axis=-1).clip(0, 1), interpolation="nearest")
        peak_a, peak_b = peak_position(a), peak_position(b)
        for peak, marker, colour in ((peak_a, "X", "#ff4fd8"), (peak_b, "P", "#5dff5d")):
            axes.plot(
                peak[1], peak[0], marker, color=colour, markersize=11, markeredgecolor="white", markeredgewidth=1.2
            )
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"level {index}: {_shape_title(a)}", fontsize=9)
        distance = float(np.hypot(peak_a[0] - peak_b[0], peak_a[1] - peak_b[1]))
        level_px.append(distance)
        input_px.append(distance * 2**index)
    chart = figure.add_subplot(grid[1, :])
    chart.plot(range(count), level_px, "o-", label="in pixels of the level")
    chart.plot(range(count), input_px, "s--", label="in pixels of the input (x 2^level)")
    chart.set_xlabel("pooling level")
    chart.set_ylabel("distance between peaks")
    chart.set_xticks(range(count))
    chart.grid(alpha=0.3)
    chart.legend(
        title=f"{figure_text(labels[0])} (X, magenta) vs {figure_text(labels[1])} (+, green)",
        fontsize=8,
        title_fontsize=8,
    )
    return figure


def show_shift_table(
    table: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    dpi: int = 100,
    fmt: str = "{:.3f}",
) -> Figure:
    """A heat map of a small table of errors, with each value written in its cell.

    Zeros are written as ``0`` so that exact results stand out.

    Example:
        >>> import numpy as np
        >>> fig = show_shift_table(np.array([[0.0, 0.5]]), ["shift 1"], ["level 0", "level 1"])
        >>> fig.axes[0].get_yticklabels()[0].get_text()
        'shift 1'
    """
    values = np.asarray(table, dtype=np.float64)
    check(
        values.shape == (len(row_labels), len(col_labels)),
        "table",
        f"shape {values.shape} does not match {len(row_labels)} row and {len(col_labels)} column labels",
    )
    figure = Figure(figsize=(1.0 + 0.9 * len(col_labels), 0.9 + 0.5 * len(row_labels)), dpi=dpi, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(values, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(np.nanmax(values)), 1e-12))
    for (row, col), value in np.ndenumerate(values):
        text = "0" if value == 0 else fmt.format(value)
        axes.text(
            col,
            row,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value < 0.6 * image.get_clim()[1] else "black",
        )
    axes.set_xticks(range(len(col_labels)), [figure_text(label) for label in col_labels], fontsize=8)
    axes.set_yticks(range(len(row_labels)), [figure_text(label) for label in row_labels], fontsize=8)
    axes.set_xlabel(figure_text(xlabel))
    axes.set_ylabel(figure_text(ylabel))
    if title:
        axes.set_title(figure_text(title), fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


# --------------------------------------------------------------------------- probe results


def _finite_reduce(values: np.ndarray, reduce: Any) -> float:
    finite = values[np.isfinite(values)]
    return float(reduce(finite)) if finite.size else float("nan")


#: A probe row of a token map's prefix tokens has its layer's name with this suffix (see
# shiftlab.probing.layerwise.PREFIX).
_PREFIX = "[prefix]"
#: Beyond this many layers, only the outermost ones (blocks, and layers outside blocks) get a name on the x axis.
_NAMED_LAYERS = 60


def _layer_table(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per layer, in forward order: name, stride, and the metric aggregated over the (non-zero) shifts."""
    layers: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        layers.setdefault(row["layer"], []).append(row)
    table = []
    for name, items in sorted(layers.items(), key=lambda item: item[1][0]["depth"]):
        moved = [row for row in items if (row["dy"], row["dx"]) != (0, 0)] or items
        values = np.array([row[metric] for row in moved], dtype=np.float64)
        multiple = np.array([bool(row["multiple"]) for row in moved])
        table.append(
            {
                "layer": name,
                "stride": items[0]["stride"],
                "known": items[0].get("layout") != "unknown",
                "max": _finite_reduce(values, np.max),
                "multiple": _finite_reduce(values[multiple], np.mean),
                "other": _finite_reduce(values[~multiple], np.mean),
                "all": _finite_reduce(values, np.mean),
            }
        )
    return table


def _outermost(names: Sequence[str]) -> list[bool]:
    """For each layer name, whether no other probed layer contains it (``layer1.0`` contains ``layer1.0.conv1``)."""
    known = set(names)

    def inside(name: str) -> bool:
        parts = name.split(":")[0].split(".")
        return any(".".join(parts[:cut]) in known for cut in range(1, len(parts)))

    return [not inside(name) for name in names]


_METRIC_LABELS = {"rel_l2": "relative L2 error", "max_abs": "max abs error", "cosine": "cosine similarity"}


def shade_stride_bands(axes: Any, labels: Sequence[str]) -> None:
    """Shade every other run of equal labels along the x axis (layer ``i`` at ``x = i``) and name each run above.

    The depth plots use it for the cumulative stride: the bands show where the network downsamples.
    """
    start, band = 0, 0
    for index in range(1, len(labels) + 1):
        if index == len(labels) or labels[index] != labels[start]:
            if band % 2 == 0:
                axes.axvspan(start - 0.5, index - 0.5, color="#e9edf5", zorder=0)
            axes.text(
                (start + index - 1) / 2,
                1.01,
                labels[start],
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="#4a5468",
            )
            start, band = index, band + 1


def show_error_vs_depth(
    rows: Sequence[dict[str, Any]],
    *,
    metric: str = "rel_l2",
    title: str | None = None,
    dpi: int = 100,
) -> Figure:
    """Equivariance error of every probed layer, in forward order, by whether the shift is a multiple of the stride.

    Shaded bands mark the cumulative stride. Where equivariance holds, the
    "multiple of the stride" points sit at zero; aliasing lifts the others.
    A token map's prefix tokens (a ViT's class token) are drawn at their
    layer's position, as a series of their own: invariance is what is expected of them.
    With many layers, only the outermost (the blocks, and the layers outside them) are
    named on the x axis.

    Args:
        rows: :attr:`shiftlab.probing.layerwise.ProbeResult.rows` (or any rows with the same keys).
        metric: ``"rel_l2"`` (default), ``"max_abs"`` or ``"cosine"``.
        title: optional title.
    """
    check(len(rows) > 0, "rows", "is empty: nothing was probed")
    check_choice(metric, "metric", _METRIC_LABELS)
    everything = _layer_table(rows, metric)
    table = [row for row in everything if not row["layer"].endswith(_PREFIX)]
    position_of = {row["layer"]: index for index, row in enumerate(table)}
    prefixes = [
        (position_of[row["layer"].removesuffix(_PREFIX)], row["all"])
        for row in everything
        if row["layer"].endswith(_PREFIX) and row["layer"].removesuffix(_PREFIX) in position_of
    ]
    count = len(table)
    figure = Figure(figsize=(min(18.0, max(7.0, 0.16 * min(count, 90) + 3)), 4.6), dpi=dpi, layout="constrained")
    axes = figure.subplots()
    positions = np.arange(count)
    shade_stride_bands(axes, [format_stride(row["stride"], known=row["known"]) for row in table])
    axes.plot(
        positions, [row["max"] for row in table], "-", color="#9aa3b5", linewidth=1, label="max over shifts", zorder=2
    )
    axes.plot(
        positions,
        [row["other"] for row in table],
        "o",
        color="#d1495b",
        markersize=4,
        label="shifts NOT a multiple of the stride (mean)",
        zorder=3,
    )
    axes.plot(
        positions,
        [row["multiple"] for row in table],
        "s",
        color="#2e86ab",
        markersize=4,
        label="shifts that are a multiple of the stride (mean)",
        zorder=4,
    )
    if prefixes:
        axes.plot(
            [position for position, _ in prefixes],
            [value for _, value in prefixes],
            "D",
            color="#7a5195",
            markersize=4,
            label="prefix (class) tokens, all shifts (mean): invariance expected",
            zorder=4,
        )
    names = [figure_text(row["layer"]) for row in table]
    if count > _NAMED_LAYERS:
        named = [index for index, outer in enumerate(_outermost(names)) if outer]
        axes.set_xticks(positions, minor=True)
        axes.set_xticks(positions[named], [names[index] for index in named], rotation=90, fontsize=7)
        for index in named:
            axes.axvline(index + 0.5, color="#c5cad6", linewidth=0.6, zorder=1)
        xlabel = "layer, in forward order: the blocks are named, the layers inside them are ticks before them"
    else:
        axes.set_xticks(positions, names, rotation=90, fontsize=7)
        xlabel = "layer, in forward order"
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylabel(_METRIC_LABELS[metric])
    if metric != "cosine":
        # At least 0 to 1e-3: an exactly equivariant network's float rounding (1e-8) should look like the zero it is.
        bottom, top = axes.get_ylim()
        axes.set_ylim(min(0.0, bottom), max(top, 1e-3))
    axes.set_xlabel(f"{xlabel} (cumulative stride above the plot)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    if title:
        figure.suptitle(figure_text(title), fontsize=11)
    return figure


def show_shift_heatmaps(
    rows_by_layer: dict[str, Sequence[dict[str, Any]]],
    *,
    metric: str = "rel_l2",
    dpi: int = 100,
    panel_size: float = 3.0,
) -> Figure:
    """The error of chosen layers over the ``(dy, dx)`` grid of shifts, one panel per layer.

    Cells are annotated when the grid is small; white means the shift was not probed.

    Args:
        rows_by_layer: layer name -> its rows (:meth:`shiftlab.probing.layerwise.ProbeResult.layer_rows`).
        metric: the value shown.
    """
    check(len(rows_by_layer) > 0, "layers", "give at least one layer")
    check_choice(metric, "metric", _METRIC_LABELS)
    first = next(iter(rows_by_layer.values()))
    ys = sorted({row["dy"] for row in first})
    xs = sorted({row["dx"] for row in first})
    count = len(rows_by_layer)
    aspect = len(ys) / len(xs)
    figure = Figure(
        figsize=(panel_size * count + 0.8, max(1.6, panel_size * aspect) + 0.9), dpi=dpi, layout="constrained"
    )
    panels = np.atleast_1d(figure.subplots(1, count))
    values_all = [row[metric] for rows in rows_by_layer.values() for row in rows if np.isfinite(row[metric])]
    high = max(values_all) if values_all else 1.0
    image = None
    for axes, (name, rows) in zip(panels, rows_by_layer.items()):
        grid = np.full((len(ys), len(xs)), np.nan)
        for row in rows:
            grid[ys.index(row["dy"]), xs.index(row["dx"])] = row[metric]
        image = axes.imshow(grid, cmap="viridis", vmin=0.0, vmax=high if high > 0 else 1.0, aspect="auto")
        if grid.size <= 100:
            for (r, c), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    axes.text(
                        c,
                        r,
                        "0" if value == 0 else f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value < 0.6 * high else "black",
                    )
        axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=7)
        axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys], fontsize=7)
        axes.set_xlabel("dx (input px)", fontsize=8)
        axes.set_ylabel("dy (input px)", fontsize=8)
        stride = format_stride(rows[0]["stride"], known=rows[0].get("layout") != "unknown")
        axes.set_title(f"{figure_text(name)}\nstride {stride}", fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(panels), shrink=0.85, label=_METRIC_LABELS[metric])
    return figure


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last ``window`` values at every position (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def show_training_curve(result: FinetuneResult, *, dpi: int = 100) -> Figure:
    """A fine-tuning run (:func:`shiftlab.finetune`): the loss per step, and the held-out accuracy after each epoch.

    Left: the loss of every step (thin) and its running mean over a tenth of an epoch, with the distillation term
    alone when labels were used too; dotted lines end the epochs. Right: the student's held-out accuracy (or its
    agreement with the original, without labels) before the first step and after each epoch, against the
    original model's (dashed).
    """
    steps = result.steps
    figure = Figure(figsize=(10.0, 3.6), dpi=dpi, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2, width_ratios=[1.6, 1.0])
    if steps:
        numbers = np.array([row["step"] for row in steps])
        per_epoch = max(1, result.protocol["steps_per_epoch"])
        window = max(1, per_epoch // 10)
        series = [("loss", "loss (the training objective)", "#3d405b")]
        if steps[0]["cross_entropy"] is not None:
            series.append(("distillation", "distillation term", "#2e86ab"))
        for key, label, colour in series:
            values = np.array([row[key] for row in steps], dtype=float)
            loss_axes.plot(numbers, values, color=colour, linewidth=0.6, alpha=0.35)
            loss_axes.plot(numbers, _running_mean(values, window), color=colour, linewidth=1.6, label=label)
        for row in result.epochs[1:-1]:
            loss_axes.axvline(row["step"], color="#9aa3b5", linestyle=":", linewidth=0.9)
        loss_axes.set_yscale("log")
        loss_axes.legend(fontsize=8)
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss (log scale)")
    loss_axes.set_title(f"training: {result.protocol['data']['usable']} images, {len(steps)} steps", fontsize=9)
    loss_axes.grid(alpha=0.3)
    name = result.accuracy_name
    epochs = [row for row in result.epochs if row["holdout_accuracy"] is not None]
    accuracy_axes.plot(
        [row["epoch"] for row in epochs],
        [100 * row["holdout_accuracy"] for row in epochs],
        "o-",
        color="#d1495b",
        label="converted, fine-tuned",
    )
    original = result.metrics("original")["accuracy"]
    if original is not None:
        accuracy_axes.axhline(100 * original, color="#3d405b", linestyle="--", linewidth=1.2, label="original")
    accuracy_axes.set_xticks([row["epoch"] for row in result.epochs])
    accuracy_axes.set_xlabel("epoch (0: converted, before fine-tuning)")
    accuracy_axes.set_ylabel(f"held-out {name} (%)")
    accuracy_axes.set_title(f"{result.protocol['holdout']['images']} held-out images, unshifted", fontsize=9)
    accuracy_axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8, loc="lower right")
    return figure
