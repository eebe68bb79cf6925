"""shiftlab.report.figures on known inputs: the data drawn (images, lines, cell texts) read back from the matplotlib
artists equals what was given or a numpy computation of it, and user text arrives escaped (``$`` is no mathtext)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from shiftlab.errors import ShiftlabError
from shiftlab.report.figures import (
    show_convergence,
    show_error_vs_depth,
    show_feature_map,
    show_pyramid,
    show_shift_heatmaps,
    show_shift_table,
)


def rendered(figure: Figure) -> Figure:
    """Draw the figure once (as saving would): mathtext and layout errors surface here."""
    figure.canvas.draw()
    return figure


# --------------------------------------------------------------------------- images


def test_feature_map_shows_both_arrays_with_their_shapes_and_the_percentile_colour_limits(rng):
    image = rng.random((3, 5, 7))
    feature = rng.normal(size=(4, 6))
    figure = rendered(show_feature_map(image, feature, titles=("in $x$", "edges")))
    left, right = figure.axes
    np.testing.assert_allclose(left.images[0].get_array(), np.moveaxis(image, 0, -1), rtol=1e-6)
    np.testing.assert_allclose(right.images[0].get_array(), feature, rtol=1e-6)
    assert left.get_title() == "in \\$x\\$ (5 x 7)" and right.get_title() == "edges (4 x 6)"
    low, high = right.images[0].get_clim()
    assert low == pytest.approx(min(0.0, feature.min())) and high == pytest.approx(np.percentile(feature, 99.5))


def test_feature_map_clips_rgb_and_accepts_a_one_channel_map():
    image = np.stack([np.full((2, 2), -1.0), np.full((2, 2), 0.5), np.full((2, 2), 2.0)])
    figure = show_feature_map(image, np.ones((1, 2, 2)))
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array()[0, 0], [0.0, 0.5, 1.0])
    assert figure.axes[1].images[0].get_array().shape == (2, 2)


def test_feature_map_refuses_other_shapes_in_one_line():
    with pytest.raises(ShiftlabError) as error:
        show_feature_map(np.zeros((2, 3, 4)), np.zeros((3, 3)))
    expected = (
        "expected a 2-D map (H, W) or an RGB image (3, H, W), got numpy array of shape (2, 3, 4) and dtype float64"
    )
    assert str(error.value) == f"image: {expected}"


def test_pyramid_panels_show_each_level_titled_with_its_shape():
    levels = [np.arange(64.0).reshape(8, 8), np.arange(16.0).reshape(4, 4), np.array([[3.0]])]
    figure = rendered(show_pyramid(levels, title="cat $5"))
    assert [axes.get_title() for axes in figure.axes] == ["level 0: 8 x 8", "level 1: 4 x 4", "level 2: 1 x 1"]
    for axes, level in zip(figure.axes, levels):
        np.testing.assert_array_equal(axes.images[0].get_array(), level)
    assert figure.get_suptitle() == "cat \\$5"
    with pytest.raises(ShiftlabError, match=r"^levels: is empty: pass at least one map$"):
        show_pyramid([])


def test_convergence_plots_the_distance_between_the_peaks_per_level():
    # peaks: level 0 at (0, 0) and (3, 4): 5 px apart, 5 input px; level 1 at (1, 1) and (1, 0): 1 px, 2 input px
    a0, b0 = np.zeros((6, 6)), np.zeros((6, 6))
    a0[0, 0], b0[3, 4] = 1.0, 1.0
    a1, b1 = np.zeros((3, 3)), np.zeros((3, 3))
    a1[1, 1], b1[1, 0] = 2.0, 2.0
    figure = rendered(show_convergence([a0, a1], [b0, b1], labels=("A $", "B")))
    chart = figure.axes[-1]
    level_line, input_line = chart.lines
    np.testing.assert_allclose(level_line.get_ydata(), [5.0, 1.0])
    np.testing.assert_allclose(input_line.get_ydata(), [5.0, 2.0])
    # each overlay marks the two peaks at (column, row)
    markers = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in figure.axes[0].lines]
    assert markers == [(0.0, 0.0), (4.0, 3.0)]
    assert chart.get_legend().get_title().get_text() == "A \\$ (X, magenta) vs B (+, green)"
    with pytest.raises(ShiftlabError) as error:
        show_convergence([a0], [a0, a1])
    assert str(error.value) == "levels: the two pyramids need the same number of levels, got 1 and 2"


# --------------------------------------------------------------------------- tables and probe results


def test_shift_table_shows_the_values_written_in_their_cells():
    table = np.array([[0.0, 0.25], [1.0, 0.125]])
    figure = rendered(
        show_shift_table(table, ["r$1", "r2"], ["c1", "c2"], title="t $", xlabel="x $", ylabel="y", fmt="{:.2f}")
    )
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), table)
    cells = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axes.texts}
    assert cells == {(0, 0): "0", (0, 1): "0.25", (1, 0): "1.00", (1, 1): "0.12"}
    assert [label.get_text() for label in axes.get_yticklabels()] == ["r\\$1", "r2"]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["c1", "c2"]
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == ("t \\$", "x \\$", "y")
    with pytest.raises(ShiftlabError) as error:
        show_shift_table(table, ["one"], ["c1", "c2"])
    assert str(error.value) == "table: shape (2, 2) does not match 1 row and 2 column labels"


def probe_rows() -> list[dict]:
    """Two layers (stride 1, then 2) and a prefix-token row, over shifts (0, 0), (0, 1), (0, 2), (1, 1)."""
    rows = []
    errors = {
        "conv": {(0, 0): 0.0, (0, 1): 0.1, (0, 2): 0.2, (1, 1): 0.3},
        "pool": {(0, 0): 0.0, (0, 1): 0.5, (0, 2): 0.01, (1, 1): 0.7},
        "pool[prefix]": {(0, 0): 0.0, (0, 1): 0.4, (0, 2): 0.4, (1, 1): 0.1},
    }
    for depth, (layer, values) in enumerate(errors.items()):
        stride = [1, 1] if layer == "conv" else [2, 2]
        for (dy, dx), value in values.items():
            multiple = dy % stride[0] == 0 and dx % stride[1] == 0
            rows.append(
                {
                    "layer": layer,
                    "depth": depth,
                    "dy": dy,
                    "dx": dx,
                    "stride": stride,
                    "multiple": multiple,
                    "rel_l2": value,
                }
            )
    return rows


def test_error_vs_depth_plots_max_and_means_of_the_moved_shifts_per_layer():
    figure = rendered(show_error_vs_depth(probe_rows(), title="net $"))
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.lines}
    maximum = lines["max over shifts"]
    other = lines["shifts NOT a multiple of the stride (mean)"]
    multiple = lines["shifts that are a multiple of the stride (mean)"]
    prefix = lines["prefix (class) tokens, all shifts (mean): invariance expected"]
    # (0, 0) is left out: conv's moved shifts are all multiples of 1; pool's (0, 2) is the only multiple of 2
    np.testing.assert_allclose(maximum.get_ydata(), [0.3, 0.7])
    np.testing.assert_allclose(multiple.get_ydata(), [0.2, 0.01])
    np.testing.assert_allclose(other.get_ydata(), [math.nan, 0.6])
    np.testing.assert_allclose(prefix.get_xdata(), [1]) and np.testing.assert_allclose(prefix.get_ydata(), [0.3])
    assert [label.get_text() for label in axes.get_xticklabels()] == ["conv", "pool"]
    bands = [text.get_text() for text in axes.texts]
    assert bands == ["1", "2"]  # the cumulative stride named above each band
    assert figure.get_suptitle() == "net \\$"
    with pytest.raises(ShiftlabError, match=r"^rows: is empty: nothing was probed$"):
        show_error_vs_depth([])
    with pytest.raises(ShiftlabError, match=r"^metric: "):
        show_error_vs_depth(probe_rows(), metric="l7")


def test_shift_heatmaps_put_each_error_at_its_shift_and_leave_the_others_blank():
    rows = [row for row in probe_rows() if row["layer"] != "pool[prefix]"]
    by_layer = {"conv $a": [row for row in rows if row["layer"] == "conv"], "pool": rows[4:]}
    figure = rendered(show_shift_heatmaps(by_layer))
    conv, pool = figure.axes[:2]
    # rows dy in (0, 1), columns dx in (0, 1, 2); (1, 0) and (1, 2) were not probed
    np.testing.assert_allclose(conv.images[0].get_array().filled(np.nan), [[0.0, 0.1, 0.2], [np.nan, 0.3, np.nan]])
    np.testing.assert_allclose(pool.images[0].get_array().filled(np.nan), [[0.0, 0.5, 0.01], [np.nan, 0.7, np.nan]])
    assert conv.get_title() == "conv \\$a\nstride 1" and pool.get_title() == "pool\nstride 2"
    assert conv.images[0].get_clim() == (0.0, 0.7)  # one colour scale for every panel
    assert sorted(text.get_text() for text in conv.texts) == ["0", "0.10", "0.20", "0.30"]


def test_training_curve_plots_the_losses_their_running_mean_and_the_accuracy_per_epoch():
    from types import SimpleNamespace

    from shiftlab.report.figures import show_training_curve

    epoch = [4.0, 2.0, 3.0, 1.0, 0.5, 0.25, 2.0, 1.0, 0.5, 0.125, 1.0, 0.5, 0.25, 0.5, 1.0, 2.0, 1.0, 0.5, 0.25, 0.125]
    losses = epoch + [value / 2 for value in epoch]  # two epochs of 20 steps
    steps = [
        {"step": step, "loss": loss, "cross_entropy": 0.1, "distillation": loss / 2}
        for step, loss in enumerate(losses, start=1)
    ]
    epochs = [
        {"epoch": 0, "step": 0, "holdout_accuracy": 0.5},
        {"epoch": 1, "step": 20, "holdout_accuracy": 0.625},
        {"epoch": 2, "step": 40, "holdout_accuracy": 0.75},
    ]
    result = SimpleNamespace(
        steps=steps,
        epochs=epochs,
        protocol={"steps_per_epoch": 20, "data": {"usable": 80}, "holdout": {"images": 16}},
        accuracy_name="accuracy",
        metrics=lambda which: {"accuracy": 0.8},
    )
    figure = rendered(show_training_curve(result))
    loss_axes, accuracy_axes = figure.axes
    raw, mean, raw_distillation, mean_distillation, epoch_end = loss_axes.lines
    np.testing.assert_allclose(raw.get_ydata(), losses)
    np.testing.assert_allclose(raw_distillation.get_ydata(), np.array(losses) / 2)
    window = 2  # a tenth of the 20 steps of an epoch
    running = [np.mean(losses[max(0, end - window) : end]) for end in range(1, len(losses) + 1)]
    np.testing.assert_allclose(mean.get_ydata(), running)
    np.testing.assert_allclose(mean_distillation.get_ydata(), np.array(running) / 2)
    assert list(epoch_end.get_xdata()) == [20, 20]  # the first epoch ends at step 20
    points, original = accuracy_axes.lines
    np.testing.assert_allclose(points.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(points.get_ydata(), [50.0, 62.5, 75.0])
    np.testing.assert_allclose(original.get_ydata(), [80.0, 80.0])
    assert loss_axes.get_title() == "training: 80 images, 40 steps"
    assert accuracy_axes.get_ylabel() == "held-out accuracy (%)"
