"""shiftlab.report.invariance_figures on a hand-made EvaluationResult: the lines, bars and heat maps drawn carry exactly
the numbers of the result (in percent), model names arrive escaped, and a result without the metric is refused."""

from __future__ import annotations

import numpy as np
import pytest

from shiftlab.errors import ShiftlabError
from shiftlab.invariance.evaluate import EvaluationResult
from shiftlab.report.invariance_figures import (
    show_consistency_by_distance,
    show_dense_positions,
    show_sequence_flips,
    show_shift_accuracy,
)

MODELS = ["net $a", "other"]


def consistency(overall, by_distance):
    return {
        "consistency": overall,
        "by_distance": [
            {"distance": d, "pairs": p, "agreeing": round(c * p), "consistency": c} for d, p, c in by_distance
        ],
    }


def dense(pixels, agreeing, overall):
    return {
        "consistency": overall,
        "by_position": {"bins": 2, "pixels": pixels, "agreeing": agreeing},
        "by_distance": [],
    }


def sequence(flip_rates, from_centre, reach=2):
    shifts = list(range(-reach, reach + 1))
    return {
        "flip_rate_by_step": [
            {"from_shift": shifts[j], "to_shift": shifts[j + 1], "flip_rate": rate} for j, rate in enumerate(flip_rates)
        ],
        "differs_from_centre": [{"shift": shift, "rate": rate} for shift, rate in zip(shifts, from_centre)],
    }


def accuracy(shifts, values, worst):
    return {
        "worst_case_accuracy": worst,
        "per_shift": [{"shift": list(shift), "accuracy": value} for shift, value in zip(shifts, values)],
    }


GRID = [(dy, dx) for dy in (-1, 0, 1) for dx in (0, 2)]


def result(results: dict, metrics: list[str]) -> EvaluationResult:
    return EvaluationResult(
        protocol={"metrics": {name: {} for name in metrics}},
        models=list(results),
        images={"total": 4, "evaluated": 4, "skipped": 0},
        skipped=[],
        results=results,
    )


@pytest.fixture(scope="module")
def known() -> EvaluationResult:
    return result(
        {
            MODELS[0]: {
                "consistency": consistency(0.75, [(0, 4, 1.0), (2, 10, 0.7), (5, 2, 0.5)]),
                "dense-consistency": dense([[4, 0], [10, 8]], [[3, 0], [10, 2]], 0.75),
                "imagenet-p": sequence([0.0, 0.5, 0.25, 0.0], [0.5, 0.25, 0.0, 0.5, 1.0]),
                "shift-accuracy": accuracy(GRID, [1.0, 0.5, 0.25, 0.75, 0.0, 1.0], 0.0),
            },
            MODELS[1]: {
                "consistency": consistency(0.9, [(1, 6, 1.0), (3, 8, 0.875)]),
                "dense-consistency": dense([[1, 1], [1, 1]], [[1, 1], [1, 1]], 1.0),
                "imagenet-p": sequence([0.25, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.25, 0.25]),
                "shift-accuracy": accuracy(GRID, [0.5] * 6, 0.5),
            },
        },
        ["consistency", "dense-consistency", "imagenet-p", "shift-accuracy"],
    )


def draw(figure):
    figure.canvas.draw()  # as saving would: mathtext errors surface here
    return figure


def test_consistency_by_distance_draws_each_models_points_and_overall_line(known):
    figure = draw(show_consistency_by_distance(known))
    top, bottom = figure.axes
    points = [line for line in top.lines if line.get_marker() == "o"]
    assert [line.get_label() for line in points] == ["net \\$a (75.0%)", "other (90.0%)"]
    np.testing.assert_allclose(points[0].get_xdata(), [0, 2, 5])
    np.testing.assert_allclose(points[0].get_ydata(), [100.0, 70.0, 50.0])
    np.testing.assert_allclose(points[1].get_xdata(), [1, 3])
    np.testing.assert_allclose(points[1].get_ydata(), [100.0, 87.5])
    dashed = sorted(float(line.get_ydata()[0]) for line in top.lines if line.get_linestyle() == "--")
    assert dashed == [75.0, 90.0]
    assert top.get_ylabel() == "pairs whose top-1 agrees (%)"
    assert top.get_title() == "consistency: agreement against the distance between the two shifts"
    assert top.get_ylim() == (47.0, 101.0)  # 3 points below the lowest
    bars = {round(patch.get_x() + patch.get_width() / 2): patch.get_height() for patch in bottom.patches}
    assert bars == {1: 6, 3: 8}  # the pairs per distance (the last model's: every model sees the same pairs)


def test_consistency_by_distance_of_dense_consistency_counts_pixels(known):
    figure = draw(show_consistency_by_distance(known, metric="dense-consistency"))
    assert figure.axes[0].get_ylabel() == "pixels whose class is unchanged (%)"
    assert figure.axes[1].get_xlabel() == "length of the shift (px, rounded; around the torus for rolls)"


def test_dense_positions_show_the_share_of_changed_pixels_per_cell(known):
    figure = draw(show_dense_positions(known))
    first, second = [axes for axes in figure.axes if axes.images]
    np.testing.assert_allclose(first.images[0].get_array().filled(np.nan), [[25.0, np.nan], [0.0, 75.0]])
    np.testing.assert_allclose(second.images[0].get_array(), np.zeros((2, 2)))
    assert first.get_title() == "net \\$a\n25.00% changed" and second.get_title() == "other\n0.00% changed"
    assert first.images[0].get_clim() == (0.0, 75.0) == second.images[0].get_clim()  # one scale


def test_sequence_flips_plot_the_flip_rates_between_frames_and_against_the_centre(known):
    figure = draw(show_sequence_flips(known))
    left, right = figure.axes
    np.testing.assert_allclose(left.lines[0].get_xdata(), [-1.5, -0.5, 0.5, 1.5])  # between neighbouring frames
    np.testing.assert_allclose(left.lines[0].get_ydata(), [0.0, 50.0, 25.0, 0.0])
    np.testing.assert_allclose(left.lines[1].get_ydata(), [25.0, 25.0, 0.0, 0.0])
    np.testing.assert_allclose(right.lines[0].get_xdata(), [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [50.0, 25.0, 0.0, 50.0, 100.0])
    assert [line.get_label() for line in right.lines] == ["net \\$a", "other"]


def test_shift_accuracy_heat_map_places_each_shift_at_its_row_and_column(known):
    figure = draw(show_shift_accuracy(known))
    first, second = [axes for axes in figure.axes if axes.images]
    # rows dy = -1, 0, 1; columns dx = 0, 2
    np.testing.assert_allclose(first.images[0].get_array(), [[100.0, 50.0], [25.0, 75.0], [0.0, 100.0]])
    np.testing.assert_allclose(second.images[0].get_array(), np.full((3, 2), 50.0))
    assert [label.get_text() for label in first.get_yticklabels()] == ["-1", "0", "1"]
    assert [label.get_text() for label in first.get_xticklabels()] == ["0", "2"]
    assert first.get_title() == "net \\$a\nworst case 0.0%" and second.get_title() == "other\nworst case 50.0%"
    assert sorted(text.get_text() for text in first.texts) == ["0", "100", "100", "25", "50", "75"]


def test_shift_accuracy_of_a_list_that_is_no_rectangle_is_a_line_per_model():
    shifts = [(0, 1), (2, 0), (-1, -1)]
    found = result(
        {"m": {"shift-accuracy": accuracy(shifts, [0.5, 1.0, None], 0.5)}},
        ["shift-accuracy"],
    )
    axes = draw(show_shift_accuracy(found)).axes[0]
    np.testing.assert_allclose(axes.lines[0].get_ydata(), [50.0, 100.0, 0.0])  # undefined drawn as 0
    assert [label.get_text() for label in axes.get_xticklabels()] == ["(0,1)", "(2,0)", "(-1,-1)"]


@pytest.mark.parametrize(
    ("show", "message"),
    [
        (
            show_consistency_by_distance,
            "figure: the result has no consistency metric (consistency, crop-consistency, dense-consistency)",
        ),
        (show_dense_positions, "figure: the result has no dense-consistency metric"),
        (show_sequence_flips, "figure: the result has no imagenet-p metric"),
        (show_shift_accuracy, "figure: the result has no shift-accuracy metric"),
    ],
)
def test_a_result_without_the_metric_is_refused_in_one_line(show, message):
    empty = result({"m": {"cosine": {}}}, ["cosine"])
    with pytest.raises(ShiftlabError) as error:
        show(empty)
    assert str(error.value) == message
