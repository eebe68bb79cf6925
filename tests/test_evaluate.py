"""shiftlab.invariance.evaluate end to end: known answers, exactness across batch sizes and resumption, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from evaluation_nets import ChannelMax, FeatureMap, InfWhenBright, NaNLogits, PerSample, PixelProbe, small_classifier
from helpers import documented_generator, splitmix64
from PIL import Image

from shiftlab import evaluate
from shiftlab.data import Preprocess
from shiftlab.errors import ShiftlabError
from shiftlab.invariance.dense import DenseConsistency
from shiftlab.invariance.evaluate import COLUMNS, EvaluateOptions, EvaluationResult, PreprocessChoices, _checksum
from shiftlab.invariance.protocols import (
    Consistency,
    DiagonalShift,
    FeatureSimilarity,
    ShiftAccuracy,
    SubpixelConsistency,
    TranslationSequence,
    sample_seed,
)


def bright_pixel_images(count: int = 6, size: int = 12, at: tuple[int, int] = (2, 2)) -> torch.Tensor:
    images = torch.zeros(count, 3, size, size)
    images[:, 0, at[0], at[1]] = 1.0
    return images


def random_images(count: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator), torch.randint(0, 10, (count,), generator=generator)


# --------------------------------------------------------------------------- known answers


def test_pixel_model_known_answers():
    """The model answers 1 exactly when the bright pixel lands on the top-left corner of its input."""
    images = bright_pixel_images()  # 12x12, crop 8 at (2, 2): the bright pixel is the crop's corner
    labels = torch.ones(6, dtype=torch.int64)
    grid = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    metrics = [
        ShiftAccuracy(grid, mode="crop"),
        TranslationSequence(max_shift=2),
        DiagonalShift("crop"),
        Consistency("circular", views=8, max_shift=1),  # rolls in {-1, 0} per axis: a quarter of them are (0, 0)
    ]
    result = evaluate(PixelProbe(), (images, labels), metrics=metrics, preprocess=PreprocessChoices(crop=8))
    accuracy = result.results["PixelProbe"]["shift-accuracy"]
    assert accuracy["accuracy_unshifted"] == 1.0 and accuracy["worst_case_accuracy"] == 0.0
    assert [item["accuracy"] for item in accuracy["per_shift"]] == [float(shift == (0, 0)) for shift in grid]
    sequence = result.results["PixelProbe"]["imagenet-p"]["per_difficulty"]
    # 5 frames, only the centre one (2) is class 1: difficulties 1 and 2 see two flips, each of top-2 distance 2;
    # difficulty 3 compares frames (0, 3) and (1, 4) only
    assert [item["flip_probability"] for item in sequence] == [2 / 4, 2 / 3, 0.0]
    assert [item["top2_distance"] for item in sequence] == [4 / 4, 4 / 3, 0.0]
    diagonal = result.results["PixelProbe"]["diagonal"]
    assert diagonal["p_top1_change"] == 1.0
    assert diagonal["mac"] == pytest.approx(math.e / (1 + math.e) - 0.5, abs=1e-9)
    # consistency: view k is class 1 iff its roll is (0, 0); the rolls as documented, derived in this file
    agreeing, by_distance = 0, {0: [0, 0], 1: [0, 0]}  # distance: [pairs, agreeing]; (1, 1) is sqrt(2), rounded 1
    for index in range(6):
        rolls = documented_rolls(0, "consistency", index, views=8, max_shift=1)
        for a in range(8):
            for b in range(a + 1, 8):
                agree = (rolls[a] == (0, 0)) == (rolls[b] == (0, 0))
                agreeing += agree
                by_distance[int(rolls[a] != rolls[b])][0] += 1
                by_distance[int(rolls[a] != rolls[b])][1] += agree
    consistency = result.results["PixelProbe"]["consistency"]
    assert consistency["agreeing_pairs"] == agreeing and consistency["pairs"] == 6 * 28
    assert 0 < agreeing < 6 * 28  # some views land on (0, 0) and some do not: the count tells rolls apart
    assert {item["distance"]: [item["pairs"], item["agreeing"]] for item in consistency["by_distance"]} == by_distance


def documented_rolls(seed: int, metric: str, index: int, views: int, max_shift: int) -> list[tuple[int, int]]:
    """The circular rolls of image ``index``, written out from the documented protocol alone: the image's
    generator (:func:`helpers.documented_generator`) draws ``views`` ``(dy, dx)`` pairs uniform in
    ``[-max_shift, max_shift)``."""
    drawn = torch.randint(-max_shift, max_shift, (views, 2), generator=documented_generator(seed, metric, index))
    return [(int(dy), int(dx)) for dy, dx in drawn.tolist()]


def test_the_documented_seed_derivation():
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the first output of SplitMix64 from state 0, as published
    rolls = [documented_rolls(0, "consistency", index, views=4, max_shift=4) for index in range(3)]
    assert len({tuple(item) for item in rolls}) == 3  # neighbouring images get unrelated rolls
    assert all(-4 <= dy < 4 and -4 <= dx < 4 for item in rolls for dy, dx in item)
    assert [sample_seed(7, zlib.crc32(b"consistency"), index) for index in range(3)] == [
        splitmix64(splitmix64(splitmix64(7) ^ zlib.crc32(b"consistency")) ^ index) & ((1 << 63) - 1)
        for index in range(3)
    ]


def test_a_model_invariant_to_circular_shifts_is_fully_consistent():
    images, labels = random_images(8)
    metrics = [Consistency("circular", views=6, max_shift=8), ShiftAccuracy([(3, -5), (7, 7)], mode="circular")]
    result = evaluate(ChannelMax(), (images, labels % 3), metrics=metrics)
    assert result.value("ChannelMax", "consistency", "consistency") == 1.0
    assert result.value("ChannelMax", "consistency", "all_views_agree") == 1.0
    accuracy = result.results["ChannelMax"]["shift-accuracy"]
    assert accuracy["worst_case_accuracy"] == accuracy["accuracy_unshifted"]
    assert all(item["unchanged"] == 1.0 for item in accuracy["per_shift"])


def test_feature_models_are_compared_by_cosine():
    images, _ = random_images(4)
    result = evaluate(FeatureMap(), images, metrics=FeatureSimilarity([(0, 0), (0, 2)], mode="circular"))
    per_shift = result.results["FeatureMap"]["cosine"]["per_shift"]
    assert per_shift[0]["mean_cosine"] == pytest.approx(1.0, abs=1e-9)  # the unshifted input against itself
    assert per_shift[1]["mean_cosine"] < 0.999  # a 2-pixel roll moves the map: flattened outputs differ


# --------------------------------------------------------------------------- exactness


ALL_METRICS = [
    Consistency("circular", views=4, max_shift=4),
    Consistency("crop", views=4, max_shift=4),
    ShiftAccuracy([(0, 1), (1, 1)], mode="crop"),
    SubpixelConsistency(),
    TranslationSequence(max_shift=2),
    DiagonalShift("crop"),
]


def test_results_do_not_depend_on_the_batch_size(single_thread):
    """With a model whose outputs cannot depend on the batch, every number is equal for any batch size."""
    images, labels = random_images(5, size=20)
    runs = [
        evaluate(
            PerSample(small_classifier()),
            (images, labels),
            metrics=ALL_METRICS,
            preprocess=PreprocessChoices(crop=16),
            options=EvaluateOptions(batch_size=size),
        )
        for size in (1, 5, 64)
    ]
    texts = [json.loads(run.to_json()) for run in runs]
    for text in texts:
        text["protocol"].pop("batch_size"), text["protocol"].pop("images_per_pack")
    assert texts[0] == texts[1] == texts[2]


class Breaks(torch.nn.Module):
    """small_classifier that raises on its ``fail_at``-th forward pass (a machine that goes away)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = small_classifier(), 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the machine went away")
        return self.inner(x)


def test_resume_after_a_failure_gives_the_uninterrupted_numbers(tmp_path):
    images, labels = random_images(9, size=20)
    common = {"metrics": ALL_METRICS, "preprocess": PreprocessChoices(crop=16)}
    run = EvaluateOptions(batch_size=16)
    full = evaluate({"net": Breaks()}, (images, labels), **common, options=run)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(ShiftlabError, match="the machine went away"):
        evaluate(
            {"net": Breaks(fail_at=12)},
            (images, labels),
            **common,
            options=replace(run, checkpoint=checkpoint, checkpoint_every=1),
        )
    partial = json.loads((tmp_path / "run" / "checkpoint.partial.json").read_text())
    assert 0 < partial["packs_done"] < partial["packs"]
    resumed = evaluate(
        {"net": Breaks()}, (images, labels), **common, options=replace(run, checkpoint=checkpoint, resume=True)
    )
    assert resumed.to_json() == full.to_json()
    assert not (tmp_path / "run" / "checkpoint.partial.json").exists()
    again = evaluate(
        {"net": Breaks()}, (images, labels), **common, options=replace(run, checkpoint=checkpoint, resume=True)
    )
    assert again.to_json() == full.to_json()  # a finished run resumes to its result


def test_resume_refuses_other_settings(tmp_path):
    images, labels = random_images(3)
    checkpoint = tmp_path / "checkpoint.pt"
    evaluate(
        {"net": small_classifier()},
        (images, labels),
        metrics="consistency",
        options=EvaluateOptions(seed=0, checkpoint=checkpoint),
    )
    with pytest.raises(ShiftlabError) as error:
        evaluate(
            {"net": small_classifier()},
            (images, labels),
            metrics="consistency",
            options=EvaluateOptions(seed=1, checkpoint=checkpoint, resume=True),
        )
    assert str(error.value) == (
        f"--resume: '{checkpoint}' was made with other settings (seed: 0 there, 1 here); start a new run instead"
    )
    with pytest.raises(
        ShiftlabError, match=r"^--resume: '.*missing.pt' holds no checkpoint: there is no run to continue$"
    ):
        evaluate(
            small_classifier(),
            (images, labels),
            options=EvaluateOptions(checkpoint=tmp_path / "missing.pt", resume=True),
        )


def _checkpoint_run(tmp_path, **extra):
    """A finished run with a checkpoint (9 images, 3 packs), and what resuming it takes."""
    images, labels = random_images(9, size=20)
    common = {"metrics": [Consistency(views=4, max_shift=4)], "preprocess": PreprocessChoices(crop=16), **extra}
    run = EvaluateOptions(batch_size=12)
    checkpoint = tmp_path / "checkpoint.pt"
    result = evaluate(
        {"net": small_classifier()}, (images, labels), **common, options=replace(run, checkpoint=checkpoint)
    )
    return result, lambda: evaluate(
        {"net": small_classifier()},
        (images, labels),
        **common,
        options=replace(run, checkpoint=checkpoint, resume=True),
    )


def _resave(path, change, sign: bool) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    if sign:  # as a careful forger would: the checksum recomputed over the changed counts
        payload["checksum"] = _checksum(payload["settings"], payload["run"], payload["states"])
    torch.save(payload, path)


def test_resume_refuses_a_checkpoint_whose_counts_changed(tmp_path):
    """A flipped bit in a count: the checksum no longer matches, and the resumed numbers would be wrong."""
    result, resume = _checkpoint_run(tmp_path)
    assert resume().to_json() == result.to_json()
    checkpoint = tmp_path / "checkpoint.pt"

    def flip(payload):
        counts = payload["states"]["net\nconsistency"]["sum:agreeing_pairs"]
        counts ^= 1 << 3

    _resave(checkpoint, flip, sign=False)
    with pytest.raises(ShiftlabError) as error:
        resume()
    assert str(error.value) == (
        f"--resume: '{checkpoint}' is damaged: its contents do not match their checksum; start a new run instead"
    )


def test_resume_refuses_a_bit_flipped_on_disk(tmp_path):
    """One bit of the file itself (inside a stored tensor): refused, never resumed to other numbers."""
    import struct
    import zipfile

    _, resume = _checkpoint_run(tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    raw = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:  # torch.save stores tensors uncompressed, one record each
        info = [item for item in archive.infolist() if "/data/" in item.filename and item.file_size >= 8][-1]
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_length + extra_length] ^= 1  # the lowest bit of a stored int64 count
    checkpoint.write_bytes(bytes(raw))
    with pytest.raises(ShiftlabError, match=rf"^--resume: '{checkpoint}' is (damaged|not a readable checkpoint)"):
        resume()


def test_resume_refuses_packs_marked_done_that_were_not(tmp_path):
    """All 3 packs marked done over counts of one (a failure at the second), checksum and all: refused."""
    images, labels = random_images(9, size=20)
    common = {"metrics": [Consistency(views=4, max_shift=4)], "preprocess": PreprocessChoices(crop=16)}
    run = EvaluateOptions(batch_size=12)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(ShiftlabError, match="the machine went away"):
        evaluate(
            {"net": Breaks(fail_at=3)},
            (images, labels),
            **common,
            options=replace(run, checkpoint=checkpoint, checkpoint_every=1),
        )

    def mark_all_done(payload):
        payload["run"]["max:packs_done"].fill_(1)

    _resave(checkpoint, mark_all_done, sign=True)
    with pytest.raises(ShiftlabError) as error:
        evaluate(
            {"net": Breaks()}, (images, labels), **common, options=replace(run, checkpoint=checkpoint, resume=True)
        )
    assert str(error.value) == (
        f"--resume: '{checkpoint}' is inconsistent: its packs done hold 9 usable image(s), but the counts of"
        " model 'net', metric consistency cover 3; start a new run instead"
    )


def test_resume_refuses_a_malicious_checkpoint_without_torchs_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    images, labels = random_images(2)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"format": "x", "evil": Payload()}, checkpoint)
    with pytest.raises(ShiftlabError) as error:
        evaluate(
            small_classifier(),
            (images, labels),
            metrics="consistency",
            options=EvaluateOptions(checkpoint=checkpoint, resume=True),
        )
    assert str(error.value) == f"--resume: '{checkpoint}' is not a readable checkpoint (it references print)"
    assert "weights_only=False" not in str(error.value) and "Re-running" not in str(error.value)


def test_a_failure_says_where_the_counts_so_far_are(tmp_path):
    images, labels = random_images(9, size=20)
    common = {"metrics": [Consistency(views=4, max_shift=4)], "preprocess": PreprocessChoices(crop=16)}
    run = EvaluateOptions(batch_size=12)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(ShiftlabError) as error:
        evaluate(
            {"net": Breaks(fail_at=3)},
            (images, labels),
            **common,
            options=replace(run, checkpoint=checkpoint, checkpoint_every=1),
        )
    assert error.value.__notes__ == [
        f"the counts so far are kept in '{checkpoint}': the same run with --resume (resume=True) continues from there"
    ]
    with pytest.raises(ShiftlabError) as error:  # failed before its first checkpoint: nothing to point to
        evaluate(
            {"net": Breaks(fail_at=1)},
            (images, labels),
            **common,
            options=replace(run, checkpoint=tmp_path / "other.pt"),
        )
    assert not hasattr(error.value, "__notes__")


def test_nan_outputs_are_refused_not_scored():
    """logits * NaN: argmax is 0 everywhere, which would count as perfectly consistent."""
    images, labels = random_images(4)
    with pytest.raises(ShiftlabError) as error:
        evaluate({"broken": NaNLogits()}, (images, labels), metrics=["consistency", "shift-accuracy"])
    assert str(error.value) == (
        "model 'broken': outputs NaN or infinity for image '#0': no score can be computed from that"
        " (check the model and its weights)"
    )


def test_infinite_outputs_name_the_first_image_that_gives_them():
    images = torch.full((6, 3, 16, 16), 0.2)
    images[4] = 0.9  # only image 4 is bright; the first image checks the model before the run
    with pytest.raises(ShiftlabError) as error:
        evaluate(InfWhenBright(), images, metrics="consistency", options=EvaluateOptions(batch_size=8))
    assert str(error.value).startswith("model 'InfWhenBright': outputs NaN or infinity for image '#4'")


def test_labels_that_no_metric_uses_do_not_block_a_run():
    """consistency uses no labels: 3 classes against a model with 10 outputs is no reason to refuse it."""
    images, labels = random_images(3)
    result = evaluate(small_classifier(), (images, labels % 3), classes="a,b,c", metrics="consistency")
    assert result.images["evaluated"] == 3
    assert result.protocol["data"]["labels"] is True and result.protocol["data"]["labels_used"] is False


def test_a_run_in_which_no_image_can_be_evaluated_is_refused():
    images, _ = random_images(3, size=16)
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, metrics="consistency", preprocess=PreprocessChoices(crop=20))
    assert str(error.value) == (
        "data: no image could be evaluated (all 3 skipped); the first: image '#0': is 16x16, smaller than the"
        " 20x20 crop"
    )


@pytest.mark.parametrize(
    "metric",
    [DiagonalShift("crop"), Consistency("crop"), ShiftAccuracy([(0, 1)], mode="crop"), DenseConsistency("crop")],
    ids=str,
)
def test_metrics_that_cut_windows_around_the_input_need_a_crop(metric):
    images, labels = random_images(3)
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), (images, labels), metrics=[metric])
    assert str(error.value) == (
        f"metric {metric.name}: cuts windows around the model input, and without a crop the input is the whole"
        " image: give a crop smaller than the images (e.g. --resize 256 --crop 224)"
    )


# --------------------------------------------------------------------------- data and results


def test_unreadable_images_are_skipped_named_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / "d.png")  # smaller than the crop
    seen = []
    result = evaluate(
        small_classifier(),
        tmp_path,
        metrics="consistency",
        on_skip=lambda name, reason: seen.append(name),
        preprocess=PreprocessChoices(crop=16),
    )
    assert result.images == {"total": 4, "evaluated": 2, "skipped": 2}
    assert [item["name"] for item in result.skipped] == [str(tmp_path / "b.png"), str(tmp_path / "d.png")]
    assert "is truncated or corrupt" in result.skipped[0]["reason"] or "Pillow" in result.skipped[0]["reason"]
    assert result.skipped[1]["reason"] == f"image '{tmp_path / 'd.png'}': is 6x6, smaller than the 16x16 crop"
    assert seen == [str(tmp_path / "b.png"), str(tmp_path / "d.png")]
    assert result.results["Sequential"]["consistency"]["images"] == 2


CONSISTENCY_STATISTICS = ("consistency", "all_views_agree")


def brute_force_consistency_and_diagonal(model, images: torch.Tensor) -> dict[str, tuple[float, int, tuple | None]]:
    """``Consistency(views=3, max_shift=4)`` and ``DiagonalShift("circular")`` by their published definitions, one
    image and one view at a time: ``{statistic: (value, count, 95% interval or None)}``."""
    fractions, all_agree, changed, absolute_changes = [], 0, 0, []
    with torch.no_grad():
        for index, image in enumerate(images):
            rolls = documented_rolls(0, "consistency", index, views=3, max_shift=4)
            classes = [int(model(image.roll(roll, dims=(-2, -1))[None]).argmax()) for roll in rolls]
            agreeing = sum(classes[a] == classes[b] for a in range(3) for b in range(a + 1, 3))
            fractions.append(agreeing / 3)
            all_agree += agreeing == 3
            # Azulay & Weiss: the content moved one pixel up and left; the change of the top-1 class's probability
            before = torch.softmax(model(image[None]).double(), dim=-1)[0]
            after = torch.softmax(model(image.roll((-1, -1), dims=(-2, -1))[None]).double(), dim=-1)[0]
            top1 = int(before.argmax())
            changed += int(after.argmax()) != top1
            absolute_changes.append(abs(float(before[top1] - after[top1])))
    count = len(images)
    mean = sum(fractions) / count
    half = 1.96 * statistics.stdev(fractions) / math.sqrt(count)
    return {
        "consistency": (mean, 3 * count, (max(0.0, mean - half), min(1.0, mean + half))),
        "all_views_agree": (all_agree / count, count, None),
        "p_top1_change": (changed / count, count, None),
        "mac": (sum(absolute_changes) / count, count, None),
    }


def test_several_models_side_by_side_and_tidy_outputs(tmp_path):
    images, labels = random_images(5)
    result = evaluate(
        {"invariant": ChannelMax(), "aliasing": small_classifier()},
        (images, labels % 3),
        metrics=[Consistency(views=3, max_shift=4), DiagonalShift("circular")],
    )
    assert isinstance(result, EvaluationResult) and result.models == ["invariant", "aliasing"]
    lines = result.to_csv(tmp_path / "out.csv").splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == 1 + len(result.rows)
    # the headline numbers as written, against a brute-force evaluation of each model on the documented views
    written = {
        (row["model"], row["metric"], row["statistic"]): row
        for row in csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text()))
        if not row["at"]
    }
    models = {"invariant": ChannelMax(), "aliasing": small_classifier()}
    for name, model in models.items():
        expected = brute_force_consistency_and_diagonal(model, images)
        assert set(expected) == {key[2] for key in written if key[0] == name}
        for statistic, (value, count, ci) in expected.items():
            row = written[name, "consistency" if statistic in CONSISTENCY_STATISTICS else "diagonal", statistic]
            assert float(row["value"]) == pytest.approx(value, rel=1e-12, abs=1e-9), (name, statistic)
            assert int(row["count"]) == count
            assert [float(row["ci_low"]), float(row["ci_high"])] == pytest.approx(ci) if ci else not row["ci_low"]
    assert written["invariant", "consistency", "consistency"]["value"] == "1.0"  # ChannelMax ignores rolls
    assert written["invariant", "diagonal", "p_top1_change"]["value"] == "0.0"
    # the random-weight net answers one class throughout (consistency 1), but its probabilities move with a shift
    assert float(written["aliasing", "diagonal", "mac"]["value"]) > 1e-6
    assert json.loads(result.to_json(tmp_path / "out.json"))["models"] == ["invariant", "aliasing"]
    assert {row["model"] for row in result.summary()} == {"invariant", "aliasing"}
    figure = result.plot_consistency()
    assert len(figure.axes[0].lines) >= 2


# --------------------------------------------------------------------------- bad input


def test_bad_input_messages(tmp_path):
    images, labels = random_images(3)
    with pytest.raises(ShiftlabError) as error:
        evaluate(FeatureMap(), images, metrics="consistency")
    assert str(error.value) == (
        "model 'FeatureMap': returns tensor of shape (1, 4, 8, 8) and dtype float32, not class logits (N, classes);"
        " for per-pixel class maps (segmentation) use --metrics dense-consistency, for a model without classes"
        " --metrics cosine"
    )
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), (images, labels), classes="a,b,c", metrics="consistency")
    assert str(error.value) == f"labels: class index {int(labels.max())} has no name among the 3 classes"
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), (images, labels % 3), classes="a,b,c", metrics="shift-accuracy")
    assert str(error.value) == "classes: the data has 3 classes (a, b, c), but model 'Sequential' gives 10 outputs"
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, metrics="shift-accuracy")
    assert (
        str(error.value) == "metric shift-accuracy: needs labels, and the data has none (3 images in memory (3x16x16))"
    )
    with pytest.raises(ShiftlabError) as error:
        evaluate(
            small_classifier(), images, metrics="crop-consistency", preprocess=PreprocessChoices(resize=20, crop=16)
        )
    assert str(error.value) == (
        "metric crop-consistency: needs 47x47 pixels (a 16x16 window at offsets 0 to 31), the image has 20x20"
        " (--resize 20, --crop 16)"
    )


def test_the_callers_train_flags_are_restored():
    model = small_classifier().train()
    images, _ = random_images(2)
    evaluate(model, images, metrics=Consistency(views=2, max_shift=2))
    assert all(module.training for module in model.modules())
    with pytest.raises(ShiftlabError):
        evaluate(model, images, metrics="shift-accuracy")  # no labels: refused
    assert all(module.training for module in model.modules())


def test_workers_auto_is_recorded_outside_the_protocol_it_does_not_change(tmp_path):
    images, labels = random_images(4)
    auto = evaluate(
        small_classifier(), (images, labels), metrics="consistency", options=EvaluateOptions(workers="auto")
    )
    given = evaluate(small_classifier(), (images, labels), metrics="consistency", options=EvaluateOptions(workers=0))
    assert auto.protocol["loader"] == {"workers": 0, "chosen": "auto: the images are in memory: nothing to decode"}
    assert given.protocol["loader"] == {"workers": 0, "chosen": "given"}
    assert auto.results == given.results
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, metrics="consistency", options=EvaluateOptions(workers="many"))
    assert str(error.value) == "workers: expected a number of processes or 'auto', got 'many'"


# --------------------------------------------------------------------------- the preprocessing and options objects


def test_a_preprocess_replaces_each_models_own_and_choices_replace_parts_of_it():
    """resnet18's own normalisation is ImageNet's: choices keep it, a whole Preprocess (normalize none) does not."""
    images, labels = random_images(3, size=20)
    chosen = evaluate("resnet18", (images, labels), preprocess=PreprocessChoices(resize=18, crop=16))
    whole = evaluate("resnet18", (images, labels), preprocess=Preprocess.make(resize=18, crop=16))
    chosen_record = chosen.protocol["models"]["resnet18"]["preprocessing"]
    whole_record = whole.protocol["models"]["resnet18"]["preprocessing"]
    assert (chosen_record["normalize"], chosen_record["overridden"]) == ("imagenet", ["resize", "crop"])
    assert (whole_record["normalize"], whole_record["crop"]) == ("none", "16x16 centre")
    assert whole_record["source"] == "given (a Preprocess, in place of the model's own)"
    imagenet = evaluate(
        "resnet18", (images, labels), preprocess=Preprocess.make(resize=18, crop=16, normalize="imagenet")
    )
    assert imagenet.results == chosen.results  # the same inputs, named two ways


def test_the_old_keywords_the_readme_showed_still_work_with_a_deprecation_warning():
    images, labels = random_images(4, size=20)
    metric = Consistency("crop", views=3, max_shift=4)
    current = evaluate(
        small_classifier(),
        (images, labels),
        metrics=metric,
        preprocess=PreprocessChoices(resize=20, crop=16, normalize="none"),
        options=EvaluateOptions(batch_size=8, workers=0, device="cpu"),
    )
    with pytest.warns(DeprecationWarning) as caught:
        old = evaluate(
            small_classifier(), (images, labels), metrics=metric, resize=20, crop=16, normalize="none", batch_size=8,
            workers=0, device="cpu",
        )  # fmt: skip
    assert str(caught[0].message) == (
        "evaluate(resize=, crop=, normalize=, batch_size=, workers=, device=) is deprecated: give "
        "preprocess=PreprocessChoices(resize=..., crop=..., normalize=...); "
        "options=EvaluateOptions(batch_size=..., workers=..., device=...)"
    )
    assert caught[0].filename == __file__  # the warning points at the caller
    assert old.to_json() == current.to_json()


def test_the_grouped_options_are_checked():
    images, _ = random_images(2)
    with pytest.raises(TypeError, match=r"^evaluate\(\) got an unexpected keyword argument 'seed'$"):
        evaluate(small_classifier(), images, seed=1)  # never a loose keyword in the README: options= only
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, crop=8, preprocess=PreprocessChoices(resize=12))
    assert str(error.value) == "crop: give it in preprocess=, not beside it"
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, options={"seed": 1})
    assert str(error.value).startswith("options: expected EvaluateOptions, got ")
    with pytest.raises(ShiftlabError) as error:
        evaluate(small_classifier(), images, preprocess="imagenet")
    assert str(error.value).startswith("preprocess: expected a Preprocess, got ")
