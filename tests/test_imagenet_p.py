"""ImageNet-P's frames rounded to 8 bits (``eight_bit``, ``--imagenet-p-8bit``), against a brute-force reference.

The published frames were cut from a picture resized to 8-bit pixels. The reference below builds every frame
with numpy loops from the definition (move the picture right by ``dx`` with black fill, round each value to the
nearest of the levels ``k / 255``, halves up, cut the centre crop), runs the model on each frame alone, and counts
flips and top-k distances by hand; the evaluation must give the same counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluation_nets import per_sample_classifier
from PIL import Image
from torch import nn

from shiftlab import cli, evaluate
from shiftlab.errors import ShiftlabError
from shiftlab.invariance.catalog import make_protocol
from shiftlab.invariance.evaluate import EvaluateOptions, PreprocessChoices
from shiftlab.invariance.protocols import TranslationSequence
from shiftlab.invariance.views import Geometry, build_view, round_to_8bit

NETS = Path(__file__).parent / "evaluation_nets.py"
THRESHOLD = 100.3 / 255  # between two levels: a value in (100.3, 100.5) / 255 is above it, its 8-bit level is not


class LevelProbe(nn.Module):
    """Class 1 when the top-left pixel of channel 0 is above :data:`THRESHOLD`: 8-bit rounding can change it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = (x[:, 0, 0, 0] > THRESHOLD).to(x.dtype)
        return torch.stack([torch.zeros_like(above), above], dim=1)


def near_level_images(count: int = 6, height: int = 10, width: int = 14) -> torch.Tensor:
    """Pictures whose every value lies within half a level of 100/255 or 101/255, none on a level."""
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(100, 102, (count, 3, height, width), generator=generator).double()
    offsets = torch.rand(count, 3, height, width, generator=generator, dtype=torch.float64) * 0.98 - 0.49
    return ((levels + offsets) / 255).float()


def reference_frame(picture: np.ndarray, dx: int, crop: int, eight_bit: bool) -> np.ndarray:
    """The frame of ``picture`` (C, H, W) moved right by ``dx``, by loops over its pixels."""
    channels, height, width = picture.shape
    top, left = round((height - crop) / 2), round((width - crop) / 2)
    frame = np.zeros((channels, crop, crop), dtype=np.float32)
    for c in range(channels):
        for y in range(crop):
            for x in range(crop):
                source = left + x - dx  # the moved picture's pixel (top + y, left + x) was at column - dx
                value = float(picture[c, top + y, source]) if 0 <= source < width else 0.0
                frame[c, y, x] = np.floor(value * 255 + 0.5) / 255 if eight_bit else value
    return frame


def reference_counts(model: nn.Module, pictures: torch.Tensor, metric: TranslationSequence, crop: int) -> dict:
    """Flips and top-k distance sums per difficulty, from the frames one at a time."""
    flips = {step: 0 for step in metric.difficulties}
    distances = {step: 0 for step in metric.difficulties}
    for picture in pictures.numpy():
        shifts = range(-metric.max_shift, metric.max_shift + 1)
        frames = [reference_frame(picture, dx, crop, metric.eight_bit) for dx in shifts]
        with torch.no_grad():
            logits = [model(torch.from_numpy(frame)[None])[0].double().numpy() for frame in frames]
        k = min(5, len(logits[0]))
        for step in metric.difficulties:
            for first, second in zip(logits[:-step], logits[step:]):
                order_first = sorted(range(len(first)), key=lambda c: (-first[c], c))
                order_second = sorted(range(len(second)), key=lambda c: (-second[c], c))
                flips[step] += order_first[0] != order_second[0]
                sigma = [order_second.index(order_first[i]) for i in range(k)]  # 0-based ranks under the second
                distances[step] += sum(abs(i - min(sigma[i], k)) for i in range(k))
    return {"flips": flips, "distances": distances}


def assert_matches_reference(model: nn.Module, pictures: torch.Tensor, metric: TranslationSequence, crop: int) -> dict:
    result = evaluate(
        model,
        pictures,
        metrics=[metric],
        preprocess=PreprocessChoices(crop=crop),
        options=EvaluateOptions(batch_size=16),
    )
    (values,) = [item["imagenet-p"] for item in result.results.values()]
    expected = reference_counts(model, pictures, metric, crop)
    for item in values["per_difficulty"]:
        step, comparisons = item["difficulty"], item["comparisons"]
        assert comparisons == len(pictures) * (metric.frames - step)
        assert round(item["flip_probability"] * comparisons) == expected["flips"][step], step
        assert round(item[f"top{values['k']}_distance"] * comparisons) == expected["distances"][step], step
    return expected


@pytest.mark.parametrize("eight_bit", [False, True])
def test_flips_equal_the_brute_force_reference_for_a_level_sensitive_model(eight_bit):
    pictures = near_level_images()
    metric = TranslationSequence(max_shift=3, difficulties=(1, 2, 3), eight_bit=eight_bit)
    counts = assert_matches_reference(LevelProbe(), pictures, metric, crop=8)
    assert counts["flips"][1] > 0


def test_rounding_changes_what_a_level_sensitive_model_sees():
    """The known answer the option exists for: rounded frames sit on levels, where the threshold reads them
    differently (above 100.3/255 unrounded, level 100 once rounded)."""
    pictures = near_level_images()
    exact = reference_counts(LevelProbe(), pictures, TranslationSequence(max_shift=3), crop=8)
    rounded = reference_counts(LevelProbe(), pictures, TranslationSequence(max_shift=3, eight_bit=True), crop=8)
    assert exact["flips"] != rounded["flips"]


def test_flips_equal_the_brute_force_reference_for_a_convolutional_network():
    """10 classes, so the top-5 distance is exercised; the network runs one frame at a time (PerSample), as the
    reference does, so both see the very same logits."""
    pictures = torch.rand(3, 3, 11, 15, generator=torch.Generator().manual_seed(2))
    assert_matches_reference(
        per_sample_classifier(), pictures, TranslationSequence(max_shift=2, difficulties=(1, 3), eight_bit=True), 9
    )


def test_frames_are_the_rounded_moved_picture():
    picture = near_level_images(count=1)[0]
    geometry = Geometry.of(10, 14, crop=8)
    keys, _ = TranslationSequence(max_shift=3, eight_bit=True).views(geometry, torch.Generator())
    for dx, key in zip(range(-3, 4), keys):
        expected = reference_frame(picture.numpy(), dx, 8, eight_bit=True)
        np.testing.assert_array_equal(build_view(picture, key, geometry).numpy(), expected)
    assert torch.equal(round_to_8bit(round_to_8bit(picture)), round_to_8bit(picture))  # levels stay levels


def test_eight_bit_pictures_are_unchanged():
    """A picture decoded from an 8-bit file (no --resize) is already on the levels: the option changes nothing."""
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(round_to_8bit(levels), levels)


def test_protocol_says_which_frames():
    exact, rounded = TranslationSequence().describe(), TranslationSequence(eight_bit=True).describe()
    assert not exact["eight_bit"] and rounded["eight_bit"]
    assert "rounded to 8-bit levels" in rounded["frames"] and "rounded" not in exact["frames"]
    assert make_protocol("imagenet-p", sequence_8bit=True) == TranslationSequence(eight_bit=True)


def test_bad_eight_bit():
    with pytest.raises(ShiftlabError) as info:
        TranslationSequence(eight_bit="yes")
    assert str(info.value) == "imagenet-p eight_bit: expected True or False, got 'yes'"


def test_command_line_option(capsys, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):
        Image.fromarray((rng.random((20, 26, 3)) * 255).astype(np.uint8)).save(root / f"{index}.png")
    common = ["evaluate", "--model", f"{NETS}:small_classifier", "--data", str(root), "--metrics", "imagenet-p"]
    common += ["--resize", "18", "--crop", "16", "--sequence-shift", "2", "--workers", "0"]
    for option, expected in (([], False), (["--imagenet-p-8bit"], True)):
        out = tmp_path / f"out{len(option)}"
        assert cli.main([*common, *option, "--out", str(out)]) == 0, capsys.readouterr().err
        protocol = json.loads((out / "evaluation.json").read_text())["protocol"]["metrics"]["imagenet-p"]
        assert protocol["eight_bit"] is expected
