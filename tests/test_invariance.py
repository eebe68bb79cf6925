"""The invariance metrics on cases whose answers are known: constructed logits, hand-computed small cases, and
independent reimplementations of the published definitions (ImageNet-P's loops, scipy's ordinal ranks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from shiftlab.errors import ShiftlabError
from shiftlab.invariance.catalog import make_protocol
from shiftlab.invariance.protocols import (
    FIXED_POINT_SCALE,
    Consistency,
    DiagonalShift,
    FeatureSimilarity,
    ShiftAccuracy,
    SubpixelConsistency,
    TranslationSequence,
    sample_seed,
    top_k_distance,
)
from shiftlab.invariance.views import IDENTITY, Geometry, view_key


def one_hot_logits(classes_per_view: list[list[int]], classes: int = 4) -> torch.Tensor:
    """Logits (n, views, classes) whose top-1 class is the given one."""
    logits = torch.zeros(len(classes_per_view), len(classes_per_view[0]), classes)
    for image, row in enumerate(classes_per_view):
        for view, label in enumerate(row):
            logits[image, view, label] = 1.0
    return logits


# --------------------------------------------------------------------------- seeding


def test_sample_seed_depends_on_seed_stream_and_index_only():
    assert sample_seed(0, 7, 11) == sample_seed(0, 7, 11)
    seeds = {sample_seed(seed, stream, index) for seed in range(3) for stream in range(3) for index in range(50)}
    assert len(seeds) == 3 * 3 * 50
    assert all(0 <= value < 2**63 for value in seeds)


# --------------------------------------------------------------------------- consistency


def test_consistency_hand_computed_case():
    metric = Consistency("circular", views=3, max_shift=4)
    state = metric.metric(4)
    # image 0: classes 0, 0, 1 -> pairs (0,1) agree, (0,2) and (1,2) do not: 1 of 3; image 1: all agree: 3 of 3
    offsets = torch.tensor([[[0, 0], [0, 3], [4, 0]], [[1, 1], [1, 1], [-2, -2]]])
    state.update(one_hot_logits([[0, 0, 1], [2, 2, 2]]), torch.full((2,), -1), offsets)
    result = state.compute()
    assert result["agreeing_pairs"] == 4 and result["pairs"] == 6
    assert result["consistency"] == pytest.approx(4 / 6)
    assert result["all_views_agree"] == 0.5
    # 95% interval over images: a = (1/3, 1), mean 2/3, s = sqrt(2/9), half = 1.96 s / sqrt(2)
    half = 1.959963984540054 * math.sqrt(2 / 9) / math.sqrt(2)
    assert result["ci95"][0] == pytest.approx(2 / 3 - half)
    assert result["ci95"][1] == 1.0  # clipped
    # distances: image 0 pairs: |(0,-3)| = 3, |(-4,0)| = 4, |(-4,3)| = 5; image 1: 0, |(3,3)| = 4.24 -> 4 (twice)
    by_distance = {item["distance"]: (item["pairs"], item["agreeing"]) for item in result["by_distance"]}
    assert by_distance == {0: (1, 1), 3: (1, 1), 4: (3, 2), 5: (1, 0)}


def test_consistency_interval_is_undefined_for_one_image_and_collapses_when_all_agree():
    state = Consistency(views=2).metric(3)
    state.update(one_hot_logits([[1, 1]], 3), torch.full((1,), -1), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert state.compute()["ci95"] == [None, None]
    state.update(one_hot_logits([[0, 0]], 3), torch.full((1,), -1), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert state.compute()["ci95"] == [1.0, 1.0]


def test_consistency_counts_do_not_depend_on_how_images_are_split(generator):
    metric = Consistency("crop", views=5, max_shift=6)
    logits = torch.randn(12, 5, 7, generator=generator)
    offsets = torch.randint(0, 6, (12, 5, 2), generator=generator)
    whole = metric.metric(7)
    whole.update(logits, torch.full((12,), -1), offsets)
    parts = [metric.metric(7) for _ in range(3)]
    for part, (start, stop) in zip(parts, [(0, 1), (1, 8), (8, 12)]):
        part.update(logits[start:stop], torch.full((stop - start,), -1), offsets[start:stop])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.compute() == whole.compute()


def test_consistency_views_follow_the_documented_seeding():
    metric = Consistency("crop", views=4, max_shift=8)
    geometry = Geometry.of(40, 50, crop=24)
    generator = torch.Generator().manual_seed(sample_seed(3, metric.stream, 17))
    keys, offsets = metric.views(geometry, generator)
    expected = torch.randint(0, 8, (4, 2), generator=torch.Generator().manual_seed(sample_seed(3, metric.stream, 17)))
    assert torch.equal(offsets, expected)
    # canvas: the centre 32x32 square of the 40x50 image, at (4, 9)
    assert keys == [("window", 4 + int(dy), 9 + int(dx)) for dy, dx in expected.tolist()]


def test_crop_consistency_needs_room_around_the_crop():
    """Offsets 0 .. R - 1 need crop + R - 1 pixels: 224 + 31 = 255 for Zhang's protocol."""
    metric = Consistency("crop", max_shift=32)
    assert metric.problem(Geometry.of(256, 300, crop=224)) is None
    assert metric.problem(Geometry.of(255, 300, crop=224)) is None
    assert metric.problem(Geometry.of(254, 300, crop=224)) == (
        "needs 255x255 pixels (a 224x224 window at offsets 0 to 31), the image has 254x300"
    )
    assert Consistency("crop", max_shift=2).problem(Geometry.of(24, 25, crop=24)) == (
        "needs 25x25 pixels (a 24x24 window at offsets 0 to 1), the image has 24x25"
    )
    assert "needs a crop smaller than the image" in metric.problem(Geometry.of(32, 32, crop=None))
    assert metric.needs_margin and not Consistency("circular").needs_margin


@pytest.mark.parametrize(
    ("height", "width", "crop", "max_shift"),
    [(25, 25, 24, 2), (255, 255, 224, 32), (255, 300, 224, 32), (26, 40, 24, 2), (31, 31, 28, 4)],
)
def test_every_crop_window_fits_an_image_of_crop_plus_r_minus_1(height, width, crop, max_shift):
    """Brute force over all offsets: an image that passes problem() holds every window the metric can draw."""
    metric = Consistency("crop", views=2, max_shift=max_shift)
    geometry = Geometry.of(height, width, crop)
    assert metric.problem(geometry) is None
    top, left = metric._corner(geometry)
    assert all(geometry.fits(top + dy, left + dx) for dy in range(max_shift) for dx in range(max_shift))


def test_crop_windows_are_zhangs_centre_crop_then_offsets():
    """Offset (0, 0) is the corner of torchvision's CenterCrop(crop + R) of the resized image (Zhang: 224 in 256);
    the numbers of images that have that square are as before the crop + R - 1 rule."""
    from torchvision.transforms.v2 import functional as F

    metric = Consistency("crop", views=2, max_shift=32)
    for height, width in [(256, 256), (256, 341), (300, 256), (257, 258)]:
        index = torch.arange(height * width, dtype=torch.float64).reshape(1, height, width)
        corner = int(F.center_crop(index, [256, 256])[0, 0, 0])
        assert metric._corner(Geometry.of(height, width, crop=224)) == divmod(corner, width)


# --------------------------------------------------------------------------- accuracy under shift


def test_shift_accuracy_counts_per_shift_and_worst_case():
    metric = ShiftAccuracy([(0, 1), (1, 0)])
    state = metric.metric(3)
    # views: unshifted, (0, 1), (1, 0). labels 2, 0, 1
    logits = one_hot_logits([[2, 2, 2], [0, 1, 0], [0, 1, 1]], 3)
    state.update(logits, torch.tensor([2, 0, 1]), None)
    result = state.compute()
    assert result["accuracy_unshifted"] == pytest.approx(2 / 3)
    assert [item["accuracy"] for item in result["per_shift"]] == [pytest.approx(2 / 3), 1.0]
    # images 0 and 2 are right under both shifts of the grid (image 2 although it is wrong unshifted)
    assert result["worst_case_accuracy"] == pytest.approx(2 / 3)
    assert [item["unchanged"] for item in result["per_shift"]] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]


def test_grid_views_in_every_mode():
    geometry = Geometry.of(12, 12, crop=8)  # the crop sits at (2, 2)
    assert ShiftAccuracy([(1, -2)], mode="crop").views(geometry, torch.Generator())[0] == [IDENTITY, ("window", 1, 4)]
    assert ShiftAccuracy([(1, -2)], mode="zero").views(geometry, torch.Generator())[0] == [IDENTITY, ("zero", 1, 4)]
    assert ShiftAccuracy([(1, -2)], mode="circular").views(geometry, torch.Generator())[0][1] == ("roll", 1, -2)
    assert ShiftAccuracy([(0.5, 0)], mode="fourier").views(geometry, torch.Generator())[0][1] == ("fourier", 0.5, 0.0)
    assert ShiftAccuracy([(3, 0)], mode="crop").problem(geometry) == (
        "crop shifts up to (3, 0) need 3 and 0 pixels around the 8x8 crop; the image has 12x12"
    )


def test_fractional_shifts_only_in_fourier_mode():
    with pytest.raises(ShiftlabError, match=r"^shift-accuracy: shift \(0.5, 0\) is fractional"):
        ShiftAccuracy([(0.5, 0)], mode="circular")


# --------------------------------------------------------------------------- sub-pixel


def test_subpixel_counts_unchanged_top1():
    metric = SubpixelConsistency([(0, 0.5), (0.5, 0.5)])
    state = metric.metric(3)
    state.update(one_hot_logits([[1, 1, 1], [0, 0, 2]], 3), torch.full((2,), -1), None)
    result = state.compute()
    assert [item["consistency"] for item in result["per_shift"]] == [1.0, 0.5]
    assert result["consistency_under_every_shift"] == 0.5


# --------------------------------------------------------------------------- ImageNet-P


def imagenet_p_reference(logits: np.ndarray, difficulty: int) -> tuple[float, float]:
    """ImageNet-P's flip probability and top-5 distance, written as its test script loops (chains of step d)."""
    cumulative = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (logits.shape[-1] - 6)))
    flips, distances = 0.0, 0.0
    for video in logits:
        predictions = video.argmax(1)
        ranks = [rankdata(-frame, method="ordinal").astype(np.int64) for frame in video]
        flip_list, distance_list = [], []
        for start in range(difficulty):
            previous, perm1 = predictions[start], ranks[start]
            inverse = np.argsort(perm1)
            for prediction, perm2 in zip(predictions[start::difficulty][1:], ranks[start::difficulty][1:]):
                flip_list.append(int(previous != prediction))
                sigma = perm2[inverse]
                distance_list.append(np.sum(np.abs(cumulative[:5] - cumulative[sigma - 1][:5])))
                previous, perm1, inverse = prediction, perm2, np.argsort(perm2)
        flips += np.mean(flip_list) / len(logits)
        distances += np.mean(distance_list) / len(logits)
    return flips, distances


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_imagenet_p_matches_the_published_loops(difficulty, generator):
    metric = TranslationSequence(max_shift=4, difficulties=(difficulty,))
    # few distinct values: many ties, which the ordinal ranking must break by class index
    logits = torch.randint(0, 4, (6, metric.frames, 9), generator=generator).float()
    state = metric.metric(9)
    state.update(logits, torch.full((6,), -1), None)
    result = state.compute()["per_difficulty"][0]
    flips, distance = imagenet_p_reference(logits.numpy(), difficulty)
    assert result["flip_probability"] == pytest.approx(flips, abs=1e-12)
    assert result["top5_distance"] == pytest.approx(distance, abs=1e-12)


def test_top_k_distance_against_scipy_ranks(rng):
    first, second = rng.integers(0, 5, (200, 12)).astype(np.float32), rng.integers(0, 5, (200, 12)).astype(np.float32)
    cumulative = np.cumsum(np.asarray([0] + [1] * 5 + [0] * 6))
    expected = []
    for a, b in zip(first, second):
        sigma = rankdata(-b, method="ordinal")[np.argsort(rankdata(-a, method="ordinal"))]
        expected.append(np.sum(np.abs(cumulative[:5] - cumulative[sigma - 1][:5])))
    assert top_k_distance(torch.from_numpy(first), torch.from_numpy(second)).tolist() == expected


def test_imagenet_p_frames_are_horizontal_black_filled_windows():
    geometry = Geometry.of(6, 8, crop=4)
    keys, _ = TranslationSequence(max_shift=2).views(geometry, torch.Generator())
    # the crop sits at (1, 2); the picture moves right by -2..2, so the window moves left by the same
    assert [view_key(key, geometry) for key in keys] == [
        ("zero", 1, 4),
        ("zero", 1, 3),
        IDENTITY,
        ("zero", 1, 1),
        ("zero", 1, 0),
    ]


def test_imagenet_p_flips_by_step_and_from_centre():
    metric = TranslationSequence(max_shift=2, difficulties=(1, 2))
    state = metric.metric(2)
    state.update(one_hot_logits([[0, 0, 1, 0, 0]], 2), torch.full((1,), -1), None)
    result = state.compute()
    assert [item["flip_rate"] for item in result["flip_rate_by_step"]] == [0.0, 1.0, 1.0, 0.0]
    assert [item["rate"] for item in result["differs_from_centre"]] == [1.0, 1.0, 0.0, 1.0, 1.0]
    first, second = result["per_difficulty"]
    assert first["flip_probability"] == 2 / 4 and second["flip_probability"] == 2 / 3
    assert first["top2_distance"] == 2 * 2 / 4  # a flip of two classes swaps both ranks: distance 2


# --------------------------------------------------------------------------- Azulay & Weiss


def test_diagonal_change_and_mac_hand_computed():
    state = DiagonalShift().metric(2)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [2.0, 0.0]]])
    state.update(logits, torch.full((2,), -1), None)
    result = state.compute()
    # image 0: top-1 class 0 (a tie goes to the lower index), p = 0.5 -> 1 / (1 + e); image 1 unchanged
    assert result["p_top1_change"] == 0.5
    assert result["mac"] == pytest.approx((0.5 - 1 / (1 + math.e)) / 2, abs=2 / FIXED_POINT_SCALE)


def test_diagonal_views():
    geometry = Geometry.of(10, 10, crop=8)  # the crop at (1, 1); (c + 1, c + 1) is (2, 2)
    assert DiagonalShift("crop").views(geometry, torch.Generator())[0] == [IDENTITY, ("window", 2, 2)]
    assert DiagonalShift("circular").views(geometry, torch.Generator())[0] == [IDENTITY, ("roll", -1, -1)]
    assert DiagonalShift("crop").problem(Geometry.of(8, 8, crop=None)) is not None


# --------------------------------------------------------------------------- cosine


def test_cosine_similarity_known_vectors():
    state = FeatureSimilarity([(0, 1), (1, 0)]).metric(0)
    outputs = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]],  # 1/sqrt(2), -1
            [[0.0, 0.0], [0.0, 0.0], [0.0, 2.0]],  # two zero vectors: 1; zero against non-zero: 0
        ]
    )
    state.update(outputs, torch.full((2,), -1), None)
    result = state.compute()
    tolerance = 1 / FIXED_POINT_SCALE
    assert result["per_shift"][0]["mean_cosine"] == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=tolerance)
    assert result["per_shift"][1]["mean_cosine"] == pytest.approx(-0.5, abs=tolerance)
    assert result["per_shift"][0]["min_cosine"] == pytest.approx(1 / math.sqrt(2), abs=tolerance)
    assert result["min_cosine"] == -1.0


def test_fixed_point_sums_do_not_depend_on_the_order(generator):
    outputs = torch.randn(40, 3, 16, generator=generator)
    forward, backward = FeatureSimilarity([(0, 1), (1, 1)]).metric(0), FeatureSimilarity([(0, 1), (1, 1)]).metric(0)
    for index in range(40):
        forward.update(outputs[index : index + 1], torch.full((1,), -1), None)
        backward.update(outputs[39 - index : 40 - index], torch.full((1,), -1), None)
    assert forward.compute() == backward.compute()


# --------------------------------------------------------------------------- names and options


def test_make_metric_and_bad_options():
    assert make_protocol("consistency").describe()["pairs_per_image"] == 28
    assert make_protocol("crop-consistency", views=2, max_shift=4).name == "crop-consistency"
    with pytest.raises(ShiftlabError, match=r"^metric: must be one of consistency, crop-consistency"):
        make_protocol("accuracy")
    with pytest.raises(ShiftlabError, match=r"^consistency views: must be an integer >= 2, got 1$"):
        Consistency(views=1)
    with pytest.raises(ShiftlabError, match=r"^imagenet-p difficulty: must be an integer >= 1 and <= 4, got 5$"):
        TranslationSequence(max_shift=2, difficulties=(5,))


def test_consistency_distances_are_taken_around_the_torus():
    # Rolls of 0 and 8 on an 8-pixel input are the same view (distance 0); 0 and 5 are 3 apart around the torus.
    from shiftlab.invariance.protocols import Consistency

    metric = Consistency("circular", views=3, max_shift=8)
    state = metric.metric(classes=2)
    offsets = torch.tensor([[[0, 0, 8, 8], [8, 0, 8, 8], [5, 0, 8, 8]]])
    outputs = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # views 0 and 1 agree, view 2 does not
    state.update(outputs, torch.tensor([0]), offsets)
    by_distance = {item["distance"]: item for item in state.compute()["by_distance"] if item["pairs"]}
    assert by_distance[0]["pairs"] == 1 and by_distance[0]["agreeing"] == 1
    assert by_distance[3]["pairs"] == 2 and by_distance[3]["agreeing"] == 0


# --------------------------------------------------------------------------- where the sums are taken


def _batches_for(name: str):
    """A metric and two batches of (outputs, labels, infos) it can take: random logits (or maps, or features)."""
    from shiftlab.invariance.dense import DenseConsistency

    generator = torch.Generator().manual_seed(7)
    n, classes = 6, 5
    labels = torch.randint(0, classes, (n,), generator=generator)
    if name == "consistency":
        metric = Consistency(views=4, max_shift=3).metric(classes)
        infos = torch.randint(-3, 4, (n, 4, 2), generator=generator).float()
        return metric, [(torch.randn(n, 4, classes, generator=generator), labels, infos) for _ in range(2)]
    if name == "dense":
        metric = DenseConsistency(views=3, max_shift=2).metric(classes)
        shifts = torch.randint(-2, 3, (n, 2, 2), generator=generator)
        infos = torch.cat([shifts, torch.full((n, 2, 2), 8)], dim=-1)
        return metric, [(torch.randn(n, 3, classes, 8, 8, generator=generator), labels, infos) for _ in range(2)]
    protocol, views = {
        "shift-accuracy": (ShiftAccuracy([(0, 0), (0, 1), (2, 2)]), 4),
        "subpixel": (SubpixelConsistency(), 4),
        "imagenet-p": (TranslationSequence(max_shift=3), 7),
        "diagonal": (DiagonalShift(), 2),
        "cosine": (FeatureSimilarity([(0, 1), (1, 1)]), 3),
    }[name]
    metric = protocol.metric(classes)
    return metric, [(torch.randn(n, views, classes, generator=generator), labels, None) for _ in range(2)]


METRICS = ["consistency", "dense", "shift-accuracy", "subpixel", "imagenet-p", "diagonal", "cosine"]
TARGETS = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", METRICS)
def test_sums_follow_the_states_device_whatever_the_outputs_device(name, target):
    """States moved with .to() take updates there, from outputs on either device, and agree with the CPU's counts."""
    reference, batches = _batches_for(name)
    for outputs, labels, infos in batches:
        reference.update(outputs, labels, infos)
    for states_on, outputs_on in [(target, target), ("cpu", target), (target, "cpu")]:
        metric, _ = _batches_for(name)
        metric.to(states_on)
        for outputs, labels, infos in batches:
            moved = None if infos is None else infos.to(outputs_on)
            metric.update(outputs.to(outputs_on), labels.to(outputs_on), moved)
        assert {state.device.type for state in metric.state_dict().values()} == {torch.device(states_on).type}
        assert metric.compute() == reference.compute(), (states_on, outputs_on)
