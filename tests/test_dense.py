"""dense-consistency: alignment against numpy loops, counts against a brute-force reference, known answers on
networks whose maps move with the input, a torchvision segmentation model end to end, one-line errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluation_nets import CircularSegmenter, PixelClassifier, ZeroPaddedSegmenter, lraspp, small_classifier
from PIL import Image

from shiftlab import cli, evaluate
from shiftlab.errors import ShiftlabError
from shiftlab.invariance.catalog import make_protocol
from shiftlab.invariance.dense import (
    POSITION_BINS,
    DenseConsistency,
    DenseConsistencyMetric,
    align_predictions,
    map_stride,
    predicted_classes,
)
from shiftlab.invariance.evaluate import EvaluateOptions, PreprocessChoices
from shiftlab.invariance.protocols import FIXED_POINT_SCALE, Consistency, sample_seed
from shiftlab.invariance.views import Geometry

# --------------------------------------------------------------------------- the pieces


def test_predicted_classes_argmax_ties_and_one_channel():
    scores = torch.tensor([[[[2.0, 0.0, 1.0]], [[2.0, 3.0, 0.0]], [[0.0, 1.0, 1.0]]]])  # (1, 3, 1, 3)
    assert predicted_classes(scores).tolist() == [[[0, 1, 0]]]  # ties go to the lowest class
    assert predicted_classes(torch.tensor([[[[-0.5, 0.0, 0.5]]]])).tolist() == [[[0, 0, 1]]]  # binary logits


def test_map_stride():
    assert map_stride((224, 224), (224, 224)) == (1, 1)
    assert map_stride((224, 160), (28, 40)) == (8, 4)
    assert map_stride((225, 225), (113, 113)) is None
    assert map_stride((8, 8), (16, 16)) is None


def _numpy_align(reference: np.ndarray, shifted: np.ndarray, dy: int, dx: int, mode: str) -> list[tuple]:
    """Every compared pixel, pixel by pixel: ``(i, j, reference class, aligned shifted class)``."""
    rows, cols = reference.shape
    pairs = []
    for i in range(rows):
        for j in range(cols):
            if mode == "circular":
                pairs.append((i, j, reference[i, j], shifted[(i + dy) % rows, (j + dx) % cols]))
            elif 0 <= i + dy < rows and 0 <= j + dx < cols:
                pairs.append((i, j, reference[i, j], shifted[i + dy, j + dx]))
    return pairs


@pytest.mark.parametrize("mode", ["circular", "crop", "zero"])
def test_align_predictions_matches_pixel_loops(mode):
    rng = np.random.default_rng(0)
    reference, shifted = rng.integers(0, 3, (2, 5, 7))
    for dy, dx in [(0, 0), (2, -3), (-4, 6), (5, 0), (-1, 9), (7, 7)]:
        first, second = align_predictions(torch.from_numpy(reference), torch.from_numpy(shifted), (dy, dx), mode)
        expected = [(first, second) for _, _, first, second in _numpy_align(reference, shifted, dy, dx, mode)]
        assert list(zip(first.flatten().tolist(), second.flatten().tolist())) == expected


def test_align_predictions_rolls_back_exactly():
    reference = torch.arange(20).reshape(4, 5)
    moved = torch.roll(reference, (3, -2), dims=(0, 1))
    first, second = align_predictions(reference, moved, (3, -2), "circular")
    assert torch.equal(first, second)
    first, second = align_predictions(reference, moved, (3, -2), "crop")
    assert tuple(first.shape) == (1, 3) and torch.equal(first, second)


# --------------------------------------------------------------------------- the counts against a brute force


def _reference_counts(classes: np.ndarray, infos: np.ndarray, mode: str, count: int, bins: int) -> dict:
    """The state's counts, recomputed with loops over images, shifted views and pixels."""
    totals = {"pairs": 0, "pixels": 0, "agreeing": 0, "unchanged": 0, "share": 0}
    intersection, union = np.zeros(count, np.int64), np.zeros(count, np.int64)
    by_distance = np.zeros((bins, 3), np.int64)
    by_position = np.zeros((2, POSITION_BINS, POSITION_BINS), np.int64)
    rows, cols = classes.shape[-2:]
    for image in range(classes.shape[0]):
        for view in range(1, classes.shape[1]):
            dy, dx, height, width = (int(value) for value in infos[image, view - 1])
            stride_y, stride_x = height // rows, width // cols
            pairs = _numpy_align(classes[image, 0], classes[image, view], dy // stride_y, dx // stride_x, mode)
            agreeing = sum(first == second for _, _, first, second in pairs)
            for i, j, first, second in pairs:
                intersection[first] += first == second
                union[first] += 1
                union[second] += first != second
                by_position[:, i * POSITION_BINS // rows, j * POSITION_BINS // cols] += (1, first == second)
            totals["pairs"] += 1
            totals["pixels"] += len(pairs)
            totals["agreeing"] += agreeing
            totals["unchanged"] += bool(pairs) and agreeing == len(pairs)
            totals["share"] += round(agreeing / len(pairs) * FIXED_POINT_SCALE) if pairs else 0
            if mode == "circular":
                dy, dx = min(dy % height, -dy % height), min(dx % width, -dx % width)
            distance = min(int(math.floor(math.hypot(dy, dx) + 0.5)), bins - 1)
            by_distance[distance] += (1, len(pairs), agreeing)
    return {
        **totals,
        "intersection": intersection,
        "union": union,
        "by_distance": by_distance,
        "by_position": by_position,
    }


@pytest.mark.parametrize(("mode", "stride"), [("circular", 1), ("crop", 1), ("zero", 1), ("circular", 2), ("crop", 4)])
def test_counts_match_a_brute_force_reference(mode, stride):
    generator = torch.Generator().manual_seed(stride)
    metric = DenseConsistency(mode, views=5, max_shift=8, step=stride)
    size, classes_count = 16, 4
    rows = size // stride
    scores = torch.randn(6, 5, classes_count, rows, rows, generator=generator)
    scores[:, 1] = scores[:, 0]  # one view unchanged: not every pair disagrees somewhere
    geometry = Geometry.of(size + 20, size + 20, size)
    infos = torch.stack([metric.views(geometry, torch.Generator().manual_seed(index))[1] for index in range(6)])
    state = metric.metric(classes_count)
    state.update(scores, torch.full((6,), -1), infos)
    expected = _reference_counts(
        predicted_classes(scores).numpy(), infos.numpy(), mode, classes_count, metric.max_distance() + 1
    )
    assert int(state.pairs) == expected["pairs"] == 24
    assert int(state.pixels) == expected["pixels"]
    assert int(state.agreeing_pixels) == expected["agreeing"]
    assert int(state.unchanged_maps) == expected["unchanged"]
    assert abs(int(state.share_fixed) - expected["share"]) <= expected["pairs"]  # each rounded to 2^-32, once
    assert state.intersection.tolist() == expected["intersection"].tolist()
    assert state.union.tolist() == expected["union"].tolist()
    assert state.pairs_by_distance.tolist() == expected["by_distance"][:, 0].tolist()
    assert state.pixels_by_distance.tolist() == expected["by_distance"][:, 1].tolist()
    assert state.agreeing_by_distance.tolist() == expected["by_distance"][:, 2].tolist()
    assert state.pixels_by_position.tolist() == expected["by_position"][0].tolist()
    assert state.agreeing_by_position.tolist() == expected["by_position"][1].tolist()
    result = state.compute()
    present = expected["union"] > 0
    miou = float(np.mean(expected["intersection"][present] / expected["union"][present]))
    assert result["miou"] == pytest.approx(miou, rel=1e-12)
    assert result["consistency"] == expected["agreeing"] / expected["pixels"]
    assert result["classes_present"] == int(present.sum())


def test_merged_states_equal_one_state():
    metric = DenseConsistency("crop", views=4, max_shift=4)
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 4, 3, 12, 12, generator=generator)
    geometry = Geometry.of(24, 24, 12)
    infos = torch.stack([metric.views(geometry, torch.Generator().manual_seed(index))[1] for index in range(5)])
    whole, first, second = metric.metric(3), metric.metric(3), metric.metric(3)
    whole.update(scores, torch.full((5,), -1), infos)
    first.update(scores[:2], torch.full((2,), -1), infos[:2])
    second.update(scores[2:], torch.full((3,), -1), infos[2:])
    merged = first.merge(second)
    assert all(torch.equal(getattr(merged, name), getattr(whole, name)) for name in merged.state_names)
    assert merged.compute() == whole.compute()


def test_shifts_follow_the_documented_seeding_and_step():
    metric = DenseConsistency("circular", views=6, max_shift=7, step=2)
    keys, infos = metric.views(Geometry.of(20, 20, None), torch.Generator().manual_seed(sample_seed(0, 1, 2)))
    expected = torch.randint(-3, 4, (5, 2), generator=torch.Generator().manual_seed(sample_seed(0, 1, 2))) * 2
    assert torch.equal(infos[:, :2], expected) and (infos[:, 2:] == 20).all()
    assert keys[1:] == [("roll", dy, dx) for dy, dx in expected.tolist()]
    crop_keys, _ = DenseConsistency("crop", views=3, max_shift=2).views(
        Geometry.of(10, 10, 6), torch.Generator().manual_seed(0)
    )
    shifts = torch.randint(-2, 3, (2, 2), generator=torch.Generator().manual_seed(0))
    assert crop_keys[1:] == [("window", 2 - dy, 2 - dx) for dy, dx in shifts.tolist()]  # content moves by (dy, dx)


# --------------------------------------------------------------------------- known answers through evaluate


def _images(count: int = 5, size: int = 24) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(7))


def _dense(result, model: str) -> dict:
    return result.results[model]["dense-consistency"]


def test_a_circular_network_without_stride_is_fully_consistent_under_rolls():
    metric = DenseConsistency("circular", views=5, max_shift=12)
    result = evaluate(CircularSegmenter(), _images(), metrics=metric, options=EvaluateOptions(dtype="float64"))
    values = _dense(result, "CircularSegmenter")
    assert values["classes_present"] >= 3  # the known answer is not a trivial constant map
    assert values["consistency"] == values["miou"] == values["unchanged_maps"] == 1.0
    assert values["pairs"] == 5 * 4 and values["pixels"] == 5 * 4 * 24 * 24


def test_a_circular_network_with_stride_is_consistent_under_shifts_that_are_multiples_of_it():
    metric = DenseConsistency("circular", views=5, max_shift=12, step=2)
    result = evaluate(CircularSegmenter(stride=2), _images(), metrics=metric, options=EvaluateOptions(dtype="float64"))
    values = _dense(result, "CircularSegmenter")
    assert values["consistency"] == 1.0 and values["pixels"] == 5 * 4 * 12 * 12


def test_zero_padding_breaks_consistency_and_a_per_pixel_classifier_keeps_it_in_every_mode():
    zero_padded = _dense(
        evaluate(ZeroPaddedSegmenter(), _images(), metrics=DenseConsistency("circular", views=5, max_shift=6)),
        "ZeroPaddedSegmenter",
    )
    assert zero_padded["consistency"] < 0.99
    for mode in ("circular", "crop", "zero"):
        values = _dense(
            evaluate(
                PixelClassifier(),
                _images(),
                metrics=DenseConsistency(mode, views=5, max_shift=6),
                preprocess=PreprocessChoices(crop=12),
            ),
            "PixelClassifier",
        )
        assert values["consistency"] == values["miou"] == 1.0, mode
        assert values["classes_present"] == 3


def test_crop_mode_compares_only_the_overlap_of_the_two_windows():
    """A per-pixel classifier agrees on every compared pixel; the count is the overlap, exactly."""
    metric = DenseConsistency("crop", views=4, max_shift=3)
    result = evaluate(PixelClassifier(), _images(size=20), metrics=metric, preprocess=PreprocessChoices(crop=12))
    expected = 0
    for index in range(5):
        _, infos = metric.views(
            Geometry.of(20, 20, 12), torch.Generator().manual_seed(sample_seed(0, metric.stream, index))
        )
        expected += sum((12 - abs(dy)) * (12 - abs(dx)) for dy, dx, _, _ in infos.tolist())
    assert _dense(result, "PixelClassifier")["pixels"] == expected


def test_zero_mode_without_a_crop_ignores_the_black_fill():
    """The whole image is the input: the shifted input is black where the picture left, and that part is not
    compared, so a per-pixel classifier stays fully consistent (black would be class 0 everywhere)."""
    result = evaluate(PixelClassifier(), _images(), metrics=DenseConsistency("zero", views=6, max_shift=9))
    assert _dense(result, "PixelClassifier")["consistency"] == 1.0


def test_images_of_several_sizes_without_a_crop(tmp_path):
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(20, 24), (24, 20), (20, 24), (18, 30)]):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{index}.png")
    metric = DenseConsistency("circular", views=3, max_shift=5)
    result = evaluate(
        CircularSegmenter(), tmp_path, metrics=metric, options=EvaluateOptions(batch_size=12, dtype="float64")
    )
    values = _dense(result, "CircularSegmenter")
    assert values["consistency"] == 1.0 and values["pixels"] == 2 * (480 + 480 + 480 + 540)


def test_the_result_does_not_depend_on_the_batch_size():
    metric = DenseConsistency("crop", views=4, max_shift=3)
    first, second = (
        evaluate(
            ZeroPaddedSegmenter(),
            _images(7),
            metrics=metric,
            preprocess=PreprocessChoices(crop=16),
            options=EvaluateOptions(batch_size=size, dtype="float64"),
        )
        for size in (4, 64)
    )
    assert _dense(first, "ZeroPaddedSegmenter") == _dense(second, "ZeroPaddedSegmenter")


# --------------------------------------------------------------------------- a torchvision segmentation model


@pytest.fixture(scope="module")
def segmenter():
    return lraspp()


def test_torchvision_lraspp_against_a_direct_computation(segmenter):
    """LR-ASPP (random weights, its dict output, maps upsampled to the input size), checked against the
    comparison written out by hand: the same views in one forward pass, the predictions rolled back, pixels counted."""
    images = _images(2, size=64)
    metric = DenseConsistency("circular", views=4, max_shift=16)
    values = _dense(evaluate(segmenter, images, metrics=metric), "LRASPP")
    shifts = [
        torch.randint(-16, 17, (3, 2), generator=torch.Generator().manual_seed(sample_seed(0, metric.stream, index)))
        for index in range(2)
    ]
    views = [
        [images[index]] + [torch.roll(images[index], (dy, dx), dims=(1, 2)) for dy, dx in shifts[index].tolist()]
        for index in range(2)
    ]
    with torch.inference_mode():  # one pass of 8 inputs, in evaluate's order (an nn.Module gets no normalisation)
        classes = segmenter(torch.stack(views[0] + views[1]))["out"].argmax(dim=1).reshape(2, 4, 64, 64)
    agreeing = sum(
        int((classes[index, 0] == torch.roll(classes[index, view], (-dy, -dx), dims=(0, 1))).sum())
        for index in range(2)
        for view, (dy, dx) in enumerate(shifts[index].tolist(), start=1)
    )
    assert values["classes_present"] >= 2 and values["pixels"] == 2 * 3 * 64 * 64
    assert values["agreeing_pixels"] == agreeing
    assert 0.0 < values["consistency"] < 1.0


def test_torchvision_lraspp_in_crop_mode(segmenter):
    result = evaluate(
        {"lraspp": segmenter},
        _images(2, size=80),
        metrics=DenseConsistency("crop", views=3, max_shift=8),
        preprocess=PreprocessChoices(crop=64),
    )
    values = _dense(result, "lraspp")
    assert values["pairs"] == 4 and 0.0 < values["consistency"] <= 1.0 and values["miou"] is not None
    assert [row["statistic"] for row in result.summary()] == [
        "consistency",
        "miou",
        "unchanged_maps",
        "consistency_per_comparison",
    ]


# --------------------------------------------------------------------------- bad input: one line each


def _message(call) -> str:
    with pytest.raises(ShiftlabError) as error:
        call()
    return str(error.value)


def test_bad_metric_options():
    assert _message(lambda: DenseConsistency("fourier")) == (
        "dense-consistency mode: must be one of circular, crop, zero, got 'fourier'"
    )
    assert _message(lambda: DenseConsistency(views=1)) == "dense-consistency views: must be an integer >= 2, got 1"
    assert _message(lambda: DenseConsistency(step=0)) == "dense-consistency step: must be an integer >= 1, got 0"
    assert _message(lambda: DenseConsistency(max_shift=3, step=4)) == (
        "dense-consistency max shift: is 3, smaller than the step 4: every shift would be (0, 0)"
    )


def test_outputs_that_are_not_maps_or_not_logits():
    images = _images()
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 5))
    assert _message(lambda: evaluate(classifier, images, metrics=DenseConsistency())) == (
        "model 'Sequential': returns tensor of shape (1, 5) and dtype float32, not per-pixel class scores"
        " (N, classes, h, w), which dense-consistency compares"
    )
    assert _message(lambda: evaluate(PixelClassifier(), images, metrics=Consistency())) == (
        "model 'PixelClassifier': returns tensor of shape (1, 3, 24, 24) and dtype float32, not class logits"
        " (N, classes); for per-pixel class maps (segmentation) use --metrics dense-consistency, for a model without"
        " classes --metrics cosine"
    )


def test_maps_at_a_stride_the_shifts_do_not_respect():
    images = _images()
    assert _message(lambda: evaluate(CircularSegmenter(stride=2), images, metrics=DenseConsistency(step=3))) == (
        "model 'CircularSegmenter': returns 12x12 maps for 24x24 inputs (stride 2): such a map moves by whole pixels"
        " only under shifts that are multiples of the stride, and dense-consistency draws multiples of 3;"
        " use --dense-step 6 (DenseConsistency(step=6)), or upsample the output to the input size"
    )
    odd = _images(size=25)
    assert _message(lambda: evaluate(CircularSegmenter(stride=2), odd, metrics=DenseConsistency(step=2))) == (
        "model 'CircularSegmenter': returns 13x13 maps for 25x25 inputs: not the input's size over a whole stride,"
        " so shifted maps cannot be aligned pixel for pixel (upsample the output to the input size)"
    )


def test_crop_mode_needs_room_around_the_crop():
    metric = DenseConsistency("crop", views=3, max_shift=4)
    assert _message(
        lambda: evaluate(PixelClassifier(), _images(), metrics=metric, preprocess=PreprocessChoices(resize=24, crop=20))
    ) == (
        "metric dense-consistency: needs 28x28 pixels (the 20x20 window moved up to 4 px each way),"
        " the image has 24x24 (--resize 24, --crop 20)"
    )
    assert metric.problem(Geometry.of(24, 24, None)) == (
        "needs a crop smaller than the image: the window moves up to 4 px each way around it"
    )
    assert DenseConsistency("zero", max_shift=8).problem(Geometry.of(24, 24, 8)) == (
        "shifts up to 8 px leave no overlap with a 8x8 model input"
    )


def test_a_model_returning_no_tensor():
    class Nothing(torch.nn.Module):
        def forward(self, x):
            return {"note": "no tensor here"}

    assert _message(lambda: evaluate(Nothing(), _images(), metrics=DenseConsistency())) == (
        "model 'Nothing': returns a dict that holds no tensor: nothing to measure"
    )


def test_make_metric_builds_it_from_the_cli_options():
    metric = make_protocol("dense-consistency", views=6, max_shift=16, dense_mode="zero", dense_step=4)
    assert metric == DenseConsistency("zero", views=6, max_shift=16, step=4)
    assert isinstance(metric.metric(1), DenseConsistencyMetric) and metric.metric(1).classes == 2
    assert list(itertools.islice(metric.describe(), 2)) == ["shifts", "mode"]


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(2)
    for index in range(3):
        Image.fromarray((rng.random((30, 26, 3)) * 255).astype(np.uint8)).save(root / f"{index}.png")
    return root


def test_cli_dense_consistency_end_to_end(capsys, photos, tmp_path):
    out = tmp_path / "out"
    nets = Path(__file__).parent / "evaluation_nets.py"
    status = cli.main(
        [
            "evaluate",
            "--model", f"{nets}:lraspp",
            "--model", f"{nets}:CircularSegmenter",
            "--data", str(photos),
            "--metrics", "dense-consistency",
            "--dense-mode", "crop",
            "--resize", "26",
            "--crop", "16",
            "--max-shift", "4",
            "--views", "3",
            "--workers", "0",
            "--out", str(out),
        ]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert status == 0
    assert "3 of 3 images evaluated, 0 skipped" in stdout
    assert any(line.split()[1:3] == ["dense-consistency", "miou"] for line in stdout.splitlines())
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["protocol"]["metrics"]["dense-consistency"]["mode"].startswith("crop: ")
    values = saved["results"][f"{nets}:CircularSegmenter"]["dense-consistency"]
    assert values["pairs"] == 3 * 2 and values["pixels"] > 0
    page = (out / "report.html").read_text()
    assert 'id="evaluate-dense-consistency"' in page and "Dense consistency per model" in page
    assert saved["protocol"]["loader"] == {"workers": 0, "chosen": "given"}
    assert "decoding processes" in page and "the numbers do not depend on it" in page


def test_cli_bad_dense_step(capsys, photos, tmp_path):
    out = tmp_path / "out"
    status = cli.main(
        ["evaluate", "--model", "simple_cnn", "--data", str(photos), "--metrics", "dense-consistency",
         "--dense-step", "0", "--out", str(out)]
    )  # fmt: skip
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "shiftlab: error: dense-consistency step: must be an integer >= 1, got 0"
    ]
    assert not out.exists()


def test_figures():
    metric = DenseConsistency("crop", views=4, max_shift=3)
    result = evaluate(
        {"circular": CircularSegmenter(), "zero-padded": ZeroPaddedSegmenter()},
        _images(),
        metrics=metric,
        preprocess=PreprocessChoices(crop=16),
    )
    positions = result.plot_dense_positions()
    assert [axes.get_title().split("\n")[0] for axes in positions.axes[:2]] == ["circular", "zero-padded"]
    grid = positions.axes[0].images[0].get_array()
    assert grid.shape == (POSITION_BINS, POSITION_BINS)
    by_distance = result.plot_consistency("dense-consistency")
    assert len(by_distance.axes[0].lines) == 4  # a line and its dashed overall value per model
    assert by_distance.axes[0].get_ylabel() == "pixels whose class is unchanged (%)"
    classification = evaluate(small_classifier(), _images(), metrics=Consistency(views=3, max_shift=2))
    assert _message(classification.plot_dense_positions) == "figure: the result has no dense-consistency metric"
