"""Fine-tuning a converted model by self-distillation: the loss, the split, determinism, exactness, resume, torchrun.

Known answers: the loss against a hand computation of Hinton's KL and cross-entropy in plain Python; APS with
circular padding is exactly invariant to circular shifts whatever its weights (Chaman & Dokmanic 2021), so it must
stay so after fine-tuning; a network without batch normalisation gets the same gradient from one process as from
two processes sharing the batch. The held-out split is checked by instrumenting the student.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_nets import small_cnn
from helpers import ACCURACY_TOLERANCE, free_port, kill_when, load_script, needs_loopback, run_group, states_equal
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from shiftlab import cli
from shiftlab._io import safetensors_bytes
from shiftlab.data import Preprocess
from shiftlab.digits import load_digits
from shiftlab.errors import ShiftlabError
from shiftlab.experiments.variants import FINETUNED_VARIANTS, finetune_record, training_record
from shiftlab.finetune import (
    DistillationLoss,
    FinetuneOptions,
    FinetuneSettings,
    conversion_shift_mode,
    distillation_loss,
    finetune,
    holdout_split,
)
from shiftlab.invariance.datasets import open_images
from shiftlab.invariance.evaluate import PreprocessChoices
from shiftlab.layers import make_shift_invariant
from shiftlab.models import load_model

TESTS = Path(__file__).parent
SOURCE = TESTS.parent / "src"
NETS = TESTS / "finetune_nets.py"
ASSETS = resources.files("shiftlab").joinpath("assets")


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _pair(build=small_cnn, method: str = "blurpool", padding: str | None = None) -> tuple[nn.Module, nn.Module]:
    teacher = _seeded(build).eval()
    return teacher, make_shift_invariant(teacher, method, padding=padding)[0]


def _images(count: int, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, size, size, generator=generator), torch.randint(0, 3, (count,), generator=generator)


QUICK = FinetuneSettings(epochs=2, batch_size=8)


# --------------------------------------------------------------------------- the loss


class TestDistillationLoss:
    def test_equals_hand_computed_kl_and_cross_entropy(self):
        """T^2 KL(softmax(t/T) || softmax(s/T)) + w CE(s, y), averaged: written out in plain Python."""
        student = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.25], [2.5, 2.5, -0.5, 1.0]]
        teacher = [[2.0, 1.0, 0.0, -2.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 3.0, 0.5, 0.0]]
        labels = [1, 2, 0]
        temperature, weight = 2.5, 0.3

        def softmax(values, scale):
            exps = [math.exp(value / scale) for value in values]
            return [item / sum(exps) for item in exps]

        total = 0.0
        for s, t, y in zip(student, teacher, labels):
            p, q = softmax(t, temperature), softmax(s, temperature)
            kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            ce = -math.log(softmax(s, 1.0)[y])
            total += temperature**2 * kl + weight * ce
        expected = total / len(labels)
        loss = distillation_loss(
            torch.tensor(student, dtype=torch.float64),
            torch.tensor(teacher, dtype=torch.float64),
            torch.tensor(labels),
            temperature=temperature,
            label_weight=weight,
        )
        assert loss.dtype == torch.float64
        assert loss.item() == pytest.approx(expected, rel=1e-12)
        without = distillation_loss(
            torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), temperature=2.5
        )
        assert without.item() == pytest.approx(
            sum(
                temperature**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(softmax(t, 2.5), softmax(s, 2.5)))
                for s, t in zip(student, teacher)
            )
            / 3,
            rel=1e-12,
        )

    def test_unlabelled_images_add_no_cross_entropy(self):
        student, teacher = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
        some = distillation_loss(student, teacher, torch.tensor([1, -1, 3, -1]), label_weight=1.0)
        kl = [distillation_loss(student[i : i + 1], teacher[i : i + 1]) for i in range(4)]
        ce = [torch.nn.functional.cross_entropy(student[i : i + 1], torch.tensor([y])) for i, y in ((0, 1), (2, 3))]
        assert some.item() == pytest.approx((sum(kl) + sum(ce)).item() / 4, rel=1e-12)  # averaged over all 4

    def test_the_teacher_gets_no_gradient_and_the_student_does(self):
        student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        teacher = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        distillation_loss(student, teacher, torch.tensor([0, 1, 2])).backward()
        assert teacher.grad is None and student.grad is not None

    def test_gradcheck(self, single_thread):
        student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        teacher = torch.randn(3, 4, dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda s: distillation_loss(s, teacher, torch.tensor([0, 3, 1]), temperature=3.0), (student,)
        )

    def test_half_precision_is_computed_in_float32(self):
        student, teacher = torch.randn(4, 6), torch.randn(4, 6)
        half = distillation_loss(student.half(), teacher.half())
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(distillation_loss(student.half().float(), teacher.half().float()).item())

    def test_module_equals_function(self):
        student, teacher, labels = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
        module = DistillationLoss(temperature=3.0, label_weight=0.2)
        assert torch.equal(
            module(student, teacher, labels),
            distillation_loss(student, teacher, labels, temperature=3.0, label_weight=0.2),
        )
        assert repr(module) == "DistillationLoss(temperature=3, label_weight=0.2)"

    @pytest.mark.parametrize(
        "arguments, message",
        [
            ((torch.zeros(2, 3), torch.zeros(2, 4)), "logits: the student gives (2, 3) and the teacher (2, 4)"),
            (
                (torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)),
                "student logits: expected float logits (N, classes), got tensor of shape (2, 3, 1) and dtype float32",
            ),
            (
                (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2)),
                "labels: expected 2 integer class indices, got tensor of shape (2,) and dtype float32",
            ),
        ],
    )
    def test_bad_input(self, arguments, message):
        with pytest.raises(ShiftlabError) as info:
            distillation_loss(*arguments)
        assert str(info.value) == message
        with pytest.raises(ShiftlabError) as info:
            distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=-1)
        assert str(info.value) == "temperature: must be a positive number, got -1"


# --------------------------------------------------------------------------- settings, shift mode, split


class TestSettings:
    def test_defaults(self):
        settings = FinetuneSettings()
        assert (settings.epochs, settings.batch_size, settings.lr, settings.momentum) == (3, 64, 0.01, 0.9)
        assert (settings.weight_decay, settings.temperature, settings.label_weight) == (1e-4, 4.0, 0.5)
        assert (settings.shift_mode, settings.max_shift, settings.seed) == ("auto", None, 0)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"epochs": 0}, "epochs: must be an integer >= 1, got 0"),
            ({"batch_size": 2.5}, "batch size: must be an integer, got 2.5"),
            ({"lr": 0}, "lr: must be a positive number, got 0"),
            ({"momentum": 1.0}, "momentum: must be below 1, got 1.0"),
            ({"label_weight": -1}, "label weight: must be >= 0, got -1"),
            ({"shift_mode": "fourier"}, "shift mode: must be one of auto, circular, crop, got 'fourier'"),
            ({"max_shift": 0}, "max shift: must be an integer >= 1, got 0"),
        ],
    )
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            FinetuneSettings(**kwargs)
        assert str(info.value) == message


class TestShiftMode:
    @pytest.mark.parametrize(
        "name, method, padding, expected",
        [
            ("resnet18", "aps", "circular", "circular"),
            ("resnet18", "aps", None, "crop"),
            ("resnet18", "blurpool", "circular", "crop"),
            ("mobilenet_v3_small", "aps", "circular", "circular"),
            ("vgg11", "blurpool", None, "crop"),
        ],
    )
    def test_real_architectures(self, name, method, padding, expected):
        model, _ = load_model(name)
        converted, _ = make_shift_invariant(model, method, padding=padding, inplace=True)
        assert conversion_shift_mode(converted) == expected

    def test_unconverted_model_is_crop(self):
        assert conversion_shift_mode(small_cnn()) == "crop"


class TestHoldoutSplit:
    def test_by_name_only(self, tmp_path):
        """The same files give the same split whatever their order, the folder's spelling, or new files beside them."""
        root = tmp_path / "photos"
        root.mkdir()
        for index in range(40):
            Image.fromarray(np.full((4, 4), index, dtype=np.uint8)).save(root / f"{index:02d}.png")
        images = open_images(root)
        training, held_out = holdout_split(images, 0.25)
        assert sorted(training + held_out) == list(range(40)) and 4 <= len(held_out) <= 16
        names = {images.name(index) for index in held_out}
        relative = open_images(os.path.relpath(root))
        assert {relative.name(index) for index in holdout_split(relative, 0.25)[1]} == {
            os.path.relpath(name) for name in names
        }
        for index in range(40, 60):
            Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / f"{index:02d}.png")
        more = open_images(root)
        assert names <= {more.name(index) for index in holdout_split(more, 0.25)[1]}

    def test_fraction_on_average(self):
        images = open_images(torch.zeros(2000, 1, 2, 2))
        _, held_out = holdout_split(images, 0.1)
        assert 150 < len(held_out) < 250

    @pytest.mark.parametrize(
        "count, fraction, message",
        [
            (10, 1.0, "holdout fraction: must lie between 0 and 1, got 1"),
            (
                3,
                0.01,
                "holdout fraction: 0.01 of 3 image(s) leaves 0 held out and 3 for training; give more images, "
                "another fraction, or --holdout DATA",
            ),
        ],
    )
    def test_bad_fraction(self, count, fraction, message):
        with pytest.raises(ShiftlabError) as info:
            holdout_split(open_images(torch.zeros(count, 1, 2, 2)), fraction)
        assert str(info.value) == message


# --------------------------------------------------------------------------- fine-tuning


class Recorder(nn.Module):
    """The student, recording the distinct pixel values of every input it sees in training mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen_training: set[float] = set()
        self.seen_eval: set[float] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (self.seen_training if self.training else self.seen_eval).update(torch.unique(x).tolist())
        return self.model(x)


class TestFinetune:
    def test_the_held_out_images_never_enter_training(self):
        """Every image is a different constant; the student records what it is trained on."""
        count = 60
        values = (torch.arange(count, dtype=torch.float32) + 1) / 64  # exact in float32, never 0
        images = values[:, None, None, None].expand(count, 1, 16, 16).contiguous()
        teacher, converted = _pair(method="aps", padding="circular")
        student = Recorder(converted)
        result = finetune(teacher, student, images, QUICK, options=FinetuneOptions(holdout_fraction=0.2))
        held_out = {float(values[index]) for index in holdout_split(open_images(images), 0.2)[1]}
        assert held_out and result.protocol["holdout"]["images"] == len(held_out)
        assert not (student.seen_training - {0.0}) & held_out
        assert len(student.seen_training - {0.0}) == count - len(held_out)  # every training image, each epoch
        assert held_out <= student.seen_eval  # the evaluation did see them: the recorder works
        assert result.protocol["data"]["usable"] == count - len(held_out)

    def test_same_inputs_same_weights(self):
        images, labels = _images(40)
        first = finetune(*_pair(), (images, labels), QUICK, holdout=_images(9, seed=1))
        second = finetune(*_pair(), (images, labels), QUICK, holdout=_images(9, seed=1))
        assert states_equal(first.student.state_dict(), second.student.state_dict())
        assert first.steps == second.steps and first.epochs == second.epochs
        assert len(first.steps) == 2 * 5 and first.steps[-1]["lr"] == pytest.approx(
            0.01 * 0.5 * (1 + math.cos(math.pi * 9 / 10))
        )
        other = finetune(
            *_pair(), (images, labels), FinetuneSettings(epochs=2, batch_size=8, seed=1), holdout=_images(9, seed=1)
        )
        assert not states_equal(first.student.state_dict(), other.student.state_dict())

    def test_labels_are_used_or_ignored(self):
        images, labels = _images(24)
        used = finetune(*_pair(), (images, labels), QUICK, holdout=_images(9, seed=1))
        ignored = finetune(
            *_pair(), (images, labels), QUICK, holdout=_images(9, seed=1), options=FinetuneOptions(labels="ignore")
        )
        assert used.steps[0]["cross_entropy"] > 0 and ignored.steps[0]["cross_entropy"] is None
        assert used.steps[0]["loss"] == pytest.approx(
            used.steps[0]["distillation"] + 0.5 * used.steps[0]["cross_entropy"]
        )
        assert used.protocol["data"]["labels"] == "used (cross-entropy term)"
        assert ignored.protocol["data"]["labels"] == "not used (distillation only)"
        unlabelled = finetune(*_pair(), images, QUICK, holdout=images[:9])
        assert unlabelled.accuracy_name == "agreement with the original"
        assert unlabelled.metrics("original")["accuracy"] == 1.0  # the original agrees with itself

    def test_teacher_outputs_kept_or_recomputed(self):
        images, labels = _images(24)
        kept = finetune(
            *_pair(), (images, labels), QUICK, holdout=_images(9, seed=1), options=FinetuneOptions(cache_teacher=True)
        )
        recomputed = finetune(
            *_pair(), (images, labels), QUICK, holdout=_images(9, seed=1), options=FinetuneOptions(cache_teacher=False)
        )
        assert kept.protocol["teacher_outputs"] == "computed once, kept"
        assert recomputed.protocol["teacher_outputs"] == "computed on every batch"
        for key, value in kept.student.state_dict().items():
            torch.testing.assert_close(recomputed.student.state_dict()[key], value, rtol=1e-4, atol=1e-5)

    def test_teacher_left_as_it_was(self):
        teacher, student = _pair()
        teacher.train()
        before = {key: value.clone() for key, value in teacher.state_dict().items()}
        finetune(teacher, student, _images(24), QUICK, holdout=_images(9, seed=1))
        assert teacher.training and all(parameter.requires_grad for parameter in teacher.parameters())
        assert states_equal(teacher.state_dict(), before)

    def test_progress_bar_with_remaining_time(self, capsys):
        finetune(
            *_pair(),
            _images(24),
            FinetuneSettings(epochs=1, batch_size=8),
            holdout=_images(9, seed=1),
            options=FinetuneOptions(progress=True),
        )
        err = capsys.readouterr().err
        assert "fine-tune" in err and "step" in err and "<" in err  # tqdm's elapsed<remaining

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (
                {"labels": "use", "data": torch.rand(8, 1, 16, 16)},
                "labels: use was asked for, but the training data has none (8 images in memory (1x16x16))",
            ),
            ({"labels": "maybe"}, "labels: must be one of use, ignore, got 'maybe'"),
            ({"views": 1}, "views: must be an integer >= 2, got 1"),
            ({"resume": True}, "resume: needs the checkpoint file of the run to continue"),
            (
                {"data": "digits", "crop": 20},
                "resize and crop: do not apply to the bundled digits (28x28, placed on a black canvas by shiftlab); "
                "leave them out",
            ),
            (
                {"data": (torch.rand(8, 1, 16, 16), torch.full((8,), 5))},
                "labels: class index 5 of the training data is out of range for the teacher's 3 outputs",
            ),
        ],
    )
    def test_bad_input(self, kwargs, message):
        teacher, student = _pair()
        arguments = {"data": _images(8), "holdout": _images(4, seed=1), **kwargs}
        preprocess = {key: arguments.pop(key) for key in ("resize", "crop") if key in arguments}
        with pytest.raises(ShiftlabError) as info:
            options = {key: arguments.pop(key) for key in ("labels", "views", "resume") if key in arguments}
            finetune(
                teacher,
                student,
                **arguments,
                preprocess=PreprocessChoices(**preprocess),
                options=FinetuneOptions(**options),
            )
        assert str(info.value).startswith(message)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"preprocess": {"crop": 12}}, "preprocess: expected a Preprocess or PreprocessChoices, got {'crop': 12}"),
            ({"options": {"views": 4}}, "options: expected FinetuneOptions, got {'views': 4}"),
            (
                {"preprocess": PreprocessChoices(resize=20, interpolation="bicubic")},
                "interpolation: fine-tuning resizes bilinearly (antialiased), got 'bicubic'",
            ),
            (
                {"preprocess": Preprocess.make(channels=1, resize=20, squash=True)},
                "preprocess: fine-tuning resizes the shorter side with antialiasing: give a Preprocess without "
                "squash, antialiased",
            ),
            (
                {"preprocess": Preprocess.make(channels=3, normalize="imagenet")},
                "normalize: 'imagenet' has 3 channels, but the model takes 1",
            ),
        ],
    )
    def test_bad_groups(self, kwargs, message):
        with pytest.raises(ShiftlabError) as info:
            finetune(*_pair(), _images(8), QUICK, holdout=_images(4, seed=1), **kwargs)
        assert str(info.value) == message

    def test_old_keywords_are_gone(self):
        """The README never showed them: they are refused, not silently ignored."""
        with pytest.raises(TypeError, match="views"):
            finetune(*_pair(), _images(8), QUICK, holdout=_images(4, seed=1), views=4)  # type: ignore[call-arg]

    def test_a_preprocess_is_its_choices(self):
        """A whole ``Preprocess`` trains as the same choices given one by one."""
        images, labels = _images(24, size=20)
        runs = [
            finetune(*_pair(), (images, labels), QUICK, holdout=_images(9, seed=1, size=20), preprocess=preprocess)
            for preprocess in (
                Preprocess.make(channels=1, resize=18, crop=16, mean=[0.5], std=[0.25]),
                PreprocessChoices(resize=18, crop=16, mean=[0.5], std=[0.25]),
            )
        ]
        assert states_equal(runs[0].student.state_dict(), runs[1].student.state_dict())
        assert runs[0].protocol["preparation"] == runs[1].protocol["preparation"]
        assert runs[0].protocol["preparation"]["model_input"] == "16x16 (centre 16x16 window)"

    def test_models_that_do_not_fit(self):
        teacher, student = _pair()
        with pytest.raises(ShiftlabError) as info:
            finetune(teacher, teacher, _images(8), holdout=_images(4, seed=1))
        assert str(info.value) == "student: is the teacher itself: give a converted copy"
        other = make_shift_invariant(nn.Sequential(*list(_seeded(small_cnn))[:-1], nn.Linear(8, 5)), "blurpool")[0]
        with pytest.raises(ShiftlabError) as info:
            finetune(teacher, other, _images(8), holdout=_images(4, seed=1))
        assert str(info.value) == "student: gives 5 outputs per image, the teacher 3"
        with pytest.raises(ShiftlabError) as info:
            finetune(nn.Conv2d(1, 2, 3), student, _images(8), holdout=_images(4, seed=1))
        assert str(info.value) == (
            "teacher: returns tensor of shape (8, 2, 14, 14) and dtype float32 for 8 inputs: expected class logits "
            "(N, classes)"
        )

    def test_images_of_several_sizes_need_a_crop(self, tmp_path):
        for index, size in enumerate((16, 16, 18, 16)):
            Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        (tmp_path / "9.png").write_bytes(b"not an image")
        with pytest.raises(ShiftlabError) as info:
            finetune(*_pair(), tmp_path, QUICK, holdout=_images(4, seed=1))
        assert str(info.value) == (
            "data: the model inputs differ in size (16x16, 18x18): give a resize and a crop (--resize, --crop) so "
            "that every image gives one size"
        )
        result = finetune(
            *_pair(),
            tmp_path,
            FinetuneSettings(epochs=1, batch_size=2),
            holdout=_images(4, seed=1),
            preprocess=PreprocessChoices(crop=12),
        )
        assert (
            result.protocol["data"]["usable"] == 4
            and result.protocol["preparation"]["model_input"] == "12x12 (centre 12x12 window)"
        )
        assert [item["name"] for item in result.skipped] == [str(tmp_path / "9.png")]


class TestExactness:
    def test_circular_aps_stays_exactly_invariant_after_fine_tuning(self):
        """The trained digits_cnn, converted with circular padding and APS, fine-tuned briefly: every test digit
        keeps its class and its logits (to float rounding) under every phase of the stride-4 network."""
        teacher, _ = load_model("digits_cnn")
        student, _ = make_shift_invariant(teacher, "aps", padding="circular")
        before = {key: value.clone() for key, value in student.state_dict().items()}
        images, labels = load_digits("train")
        test_images, test_labels = load_digits("test")
        result = finetune(
            teacher,
            student,
            (images[:256], labels[:256]),
            FinetuneSettings(epochs=1),
            holdout=(test_images[:100], test_labels[:100]),
        )
        assert result.protocol["settings"]["shift_mode"] == "circular"
        assert not states_equal(student.state_dict(), before)  # it was trained
        after = result.metrics("fine-tuned")
        assert after["agreeing_pairs"] == after["pairs"] == 100 * 6
        with torch.no_grad():
            reference = student(test_images)
            for dy in range(-1, 3):
                for dx in range(-1, 3):
                    shifted = student(torch.roll(test_images, (dy, dx), dims=(-2, -1)))
                    assert torch.equal(shifted.argmax(1), reference.argmax(1)), (dy, dx)
                    torch.testing.assert_close(shifted, reference, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- the command line


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, expected: str) -> None:
    assert status == 2
    assert err.strip().splitlines() == [f"shiftlab: error: {expected}"], err


def _write_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / name / f"{index:02d}.png")
    return root


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return _write_folder(tmp_path / "train", 8, 0), _write_folder(tmp_path / "held", 2, 1)


def _convert(folders, *extra: str) -> list[str]:
    train, held = folders
    return [
        "convert", "--model", f"{NETS}:small_cnn", "--method", "aps", "--padding", "circular",
        "--finetune", str(train), "--holdout", str(held), "--epochs", "2", "--batch-size", "8", *extra,
    ]  # fmt: skip


class TestCommandLine:
    def test_outputs(self, capsys, folders, tmp_path):
        out = tmp_path / "out"
        status, stdout, err = run(capsys, *_convert(folders), "--out", str(out))
        assert status == 0, err
        assert sorted(path.name for path in out.iterdir()) == [
            "changes.csv",
            "changes.json",
            "finetune.json",
            "report.html",
            "results.json",
            "training_curve.png",
            "weights.safetensors",
        ]
        record = json.loads((out / "finetune.json").read_text())
        assert record["protocol"]["settings"]["shift_mode"] == "circular"
        assert record["protocol"]["data"]["usable"] == 24 and record["protocol"]["holdout"]["images"] == 6
        assert len(record["steps"]) == 6 and [row["epoch"] for row in record["epochs"]] == [0, 1, 2]
        assert record["metrics"]["fine-tuned"]["pairs"] == 6 * 6
        changes = json.loads((out / "changes.json").read_text())
        assert changes["finetune"]["fine-tuned"] == record["metrics"]["fine-tuned"]
        model, _ = load_model(f"{NETS}:small_cnn+circular+aps", weights=out / "weights.safetensors")
        assert states_equal(model.state_dict(), load_file(str(out / "weights.safetensors")))
        report = (out / "report.html").read_text()
        assert "Keeping the accuracy" in report and "converted and fine-tuned" in report
        assert "original" in stdout and "converted, fine-tuned" in stdout

    def test_bad_input_exits_2_with_one_line_and_writes_nothing(self, capsys, folders, tmp_path):
        out = tmp_path / "out"
        base = ["convert", "--model", f"{NETS}:small_cnn", "--method", "aps", "--out", str(out)]
        cases = [
            (["--epochs", "2"], "--epochs: only applies with --finetune DATA (add it, or leave the option out)"),
            (["--resume"], "--resume: only applies with --finetune DATA (add it, or leave the option out)"),
            (
                ["--finetune", str(tmp_path / "missing")],
                f"data '{tmp_path / 'missing'}': no such folder or file (and not a bundled data set: digits)",
            ),
            (_convert(folders, "--epochs", "0")[5:], "epochs: must be an integer >= 1, got 0"),
            (
                _convert(folders, "--holdout-fraction", "0.5")[5:],
                "--holdout-fraction: applies only without --holdout (the held-out images are given)",
            ),
            (
                _convert(folders, "--resume")[5:],
                f"--resume: '{out / 'checkpoint.pt'}' holds no checkpoint: there is no run to continue",
            ),
            (
                ["--finetune", str(folders[0]), "--holdout", str(folders[0] / "a")],
                f"holdout: 8 of its image(s) are also in the training data ({folders[0] / 'a' / '00.png'}, ...): "
                "held-out images must never be trained on",
            ),
            (
                ["--finetune", str(folders[0]), "--holdout", str(folders[1]), "--labels", "use", "--classes", "a,b"],
                f"data '{folders[0]}': has class folder(s) c that are not among the classes given (a, b)",
            ),
        ]
        for arguments, message in cases:
            status, _, err = run(capsys, *base, *arguments)
            assert_one_line_error(status, err, message)
            assert not out.exists()
        out.write_text("a file")
        status, _, err = run(capsys, *_convert(folders), "--out", str(out))
        assert_one_line_error(status, err, f"output folder '{out}': exists and is not a folder")

    def test_help_quotes_the_defaults(self, capsys):
        """The parser does not import torch, so its help states FinetuneSettings' defaults itself: they must agree."""
        with pytest.raises(SystemExit):
            cli.main(["convert", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        defaults = FinetuneSettings()
        for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "label_weight"):
            option = "--" + name.replace("_", "-")
            quoted = re.search(r"\(default: ([^)]*)\)", text[text.rindex(f"{option} ") :])  # the help, after the usage
            assert quoted is not None and quoted.group(1) == f"{getattr(defaults, name):g}", (option, quoted)

    def test_resume_at_a_run_with_other_settings(self, capsys, folders, tmp_path):
        out = tmp_path / "out"
        status, _, err = run(capsys, *_convert(folders, "--checkpoint-every", "2"), "--out", str(out))
        assert status == 0, err
        (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
        status, _, err = run(capsys, *_convert(folders, "--resume"), "--out", str(out))
        assert status == 2 and f"--resume: '{out / 'checkpoint.pt'}' is not a readable checkpoint" in err

    def test_resume_refuses_a_malicious_checkpoint_without_torchs_advice(self, capsys, folders, tmp_path):
        class Payload:
            def __reduce__(self):
                return (print, ("this must never run",))

        out = tmp_path / "out"
        out.mkdir()
        torch.save({"format": "x", "evil": Payload()}, out / "checkpoint.pt")
        status, _, err = run(capsys, *_convert(folders, "--resume"), "--out", str(out))
        assert status == 2 and err.strip().splitlines()[-1] == (
            f"shiftlab: error: --resume: '{out / 'checkpoint.pt'}' is not a readable checkpoint (it references print)"
        )
        assert "weights_only=False" not in err and "this must never run" not in capsys.readouterr().out


# --------------------------------------------------------------------------- processes


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SOURCE}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(folders, tmp_path):
    train, held = folders
    arguments = ["-m", "shiftlab", *_convert(folders, "--checkpoint-every", "2")]
    arguments[arguments.index(f"{NETS}:small_cnn")] = f"{NETS}:slow_cnn"
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    command = [sys.executable, *arguments, "--out", str(interrupted)]
    partial = interrupted / "checkpoint.partial.json"
    done = kill_when(command, _environment(SHIFTLAB_TEST_SLEEP="0.3"), partial, "steps_done", 2, timeout=180)
    assert 2 <= done["steps_done"] < done["steps"] == 6
    assert not (interrupted / "weights.safetensors").exists()
    resumed = run_group(command + ["--resume"], 240, env=_environment())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = run_group([sys.executable, *arguments, "--out", str(reference)], 240, env=_environment())
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert (interrupted / "weights.safetensors").read_bytes() == (reference / "weights.safetensors").read_bytes()
    assert not (interrupted / "checkpoint.pt").exists()  # removed once the outputs are written
    first = json.loads((interrupted / "finetune.json").read_text())
    second = json.loads((reference / "finetune.json").read_text())
    assert first["steps"] == second["steps"] and first["metrics"] == second["metrics"]


@pytest.mark.slow
@needs_loopback
def test_two_processes_under_torchrun(capsys, folders, tmp_path):
    """Without batch normalisation, two processes sharing each batch give one process's weights (to rounding)."""
    port = free_port()
    arguments = _convert(folders)
    arguments[arguments.index(f"{NETS}:small_cnn")] = f"{NETS}:plain_cnn"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status, _, err = run(capsys, *arguments, "--out", str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    completed = run_group(
        launcher + ["-m", "shiftlab", *arguments, "--out", str(tmp_path / "two")], 300, env=_environment()
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("report: ") == 1  # the first process writes, the other does not
    one = load_file(str(tmp_path / "one" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5)
    first = json.loads((tmp_path / "one" / "finetune.json").read_text())
    second = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert second["protocol"]["processes"] == 2 and first["protocol"]["processes"] == 1
    for row, other in zip(first["steps"], second["steps"]):
        assert other["loss"] == pytest.approx(row["loss"], rel=1e-4)


@pytest.mark.slow
@needs_loopback
def test_every_process_ends_with_the_same_student(tmp_path):
    """With batch normalisation each process normalises with its own images; DDP keeps the parameters equal, and at
    the end process 0's running statistics become everyone's: the same student, bit for bit, in every process."""
    import torch.multiprocessing as multiprocessing
    from finetune_nets import finetune_in_process

    multiprocessing.start_processes(
        finetune_in_process, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True
    )
    first, second = (torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2))
    assert states_equal(first["state"], second["state"])
    assert any("running_mean" in key for key in first["state"])
    assert first["steps"] == second["steps"] and first["epochs"] == second["epochs"]


# --------------------------------------------------------------------------- the shipped fine-tuned weights


@pytest.fixture(scope="module")
def reference_script():
    return load_script("finetune_reference")


class TestShippedFinetuned:
    """The three conversions of the trained digits_cnn that ship fine-tuned (scripts/finetune_reference.py)."""

    @pytest.mark.parametrize("variant", FINETUNED_VARIANTS)
    def test_file_record_and_spec(self, variant):
        record = finetune_record(variant)
        with resources.as_file(ASSETS.joinpath(record["weights"])) as path:
            data = path.read_bytes()
            model, _ = load_model(record["spec"], weights=path)
        assert hashlib.sha256(data).hexdigest() == record["weights_sha256"]
        shipped = load_file(str(ASSETS.joinpath(record["weights"])))
        assert states_equal(model.state_dict(), shipped)
        metadata = {"variant": f"finetuned_{variant}", "seed": "0"}
        assert safetensors_bytes(shipped, metadata) == data  # the same weights, the same bytes
        assert record["settings"] == FinetuneSettings(seed=0).describe()  # the defaults, as documented

    @pytest.mark.parametrize("variant", FINETUNED_VARIANTS)
    def test_targets_and_recorded_accuracy(self, variant):
        """>= 97.6% on the 1,000 test digits (within 0.5 points of the original's 98.1%), as recorded."""
        record = finetune_record(variant)
        images, labels = load_digits("test")
        with resources.as_file(ASSETS.joinpath(record["weights"])) as path:
            model, _ = load_model(record["spec"], weights=path)
        original, _ = load_model("digits_cnn")
        with torch.no_grad():
            correct = int((model(images).argmax(1) == labels).sum())
            model.load_state_dict(original.state_dict())  # the same layers with the original's weights: before
            before = int((model(images).argmax(1) == labels).sum())
        assert abs(correct - record["test_correct"]) <= ACCURACY_TOLERANCE * 1000, (correct, record["test_correct"])
        assert abs(before - record["metrics"]["converted"]["correct"]) <= ACCURACY_TOLERANCE * 1000
        assert record["test_correct"] >= 976 and correct >= 976 - ACCURACY_TOLERANCE * 1000
        assert record["metrics"]["original"]["correct"] == training_record("baseline")["test_correct"]
        if variant == "circular_aps":
            after = record["metrics"]["fine-tuned"]
            assert after["agreeing_pairs"] == after["pairs"] == 6000

    def test_shipped_circular_aps_is_exact(self):
        """The first 200 test digits under every phase of the stride 4 (the record: all 1,000, 6,000 view pairs)."""
        record = finetune_record("circular_aps")
        images = load_digits("test")[0][:200]
        with resources.as_file(ASSETS.joinpath(record["weights"])) as path:
            model, _ = load_model(record["spec"], weights=path)
        with torch.no_grad():
            reference = model(images)
            for dy, dx in [(dy, dx) for dy in range(4) for dx in range(4)]:
                shifted = model(torch.roll(images, (dy, dx), dims=(-2, -1)))
                assert torch.equal(shifted.argmax(1), reference.argmax(1)), (dy, dx)

    @pytest.mark.slow
    def test_the_script_reproduces_the_first_steps(self, reference_script):
        """The shipped run, replayed for its first steps: the same losses (to another CPU's rounding)."""
        record = finetune_record("blurpool")
        images, labels = load_digits("test")
        result, replayed = reference_script.run("blurpool", holdout=(images[:20], labels[:20]), max_steps=6)
        assert len(result.steps) == 6 and replayed["threads"] == record["threads"]
        for row, shipped in zip(result.steps, record["steps"]):
            assert row["step"] == shipped["step"] and row["lr"] == shipped["lr"]
            assert row["loss"] == pytest.approx(shipped["loss"], rel=1e-4)
            assert row["distillation"] == pytest.approx(shipped["distillation"], rel=1e-4)
        assert replayed["protocol"]["data"] == record["protocol"]["data"]
        assert result.protocol["data"]["images"] == 4000  # the training split, never the test one
        assert "training digits" in result.protocol["data"]["description"]
        assert replayed["protocol"]["settings"] == record["protocol"]["settings"]
        assert replayed["protocol"]["seeding"] == record["protocol"]["seeding"]
