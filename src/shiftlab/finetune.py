"""Convert a trained model and keep its accuracy: the original teaches its shift-invariant copy, from images alone.

:func:`shiftlab.layers.make_shift_invariant` changes what a network computes, so a model trained before the
conversion loses accuracy (the bundled ``digits_cnn`` drops from 98.1% to 75-78%). :func:`finetune` gives it
back by *self-distillation* (Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network"): the
original model (the *teacher*, frozen, in eval mode) labels the images, and its converted copy (the *student*)
learns to give the same answers under shifts. No labels are needed; when the data has them, a cross-entropy term
is added.

The loss (:func:`distillation_loss`), for a student's logits ``s`` on a shifted view of an image, the teacher's
logits ``t`` on the unshifted image and the image's label ``y``::

    T^2 KL(softmax(t / T) || softmax(s / T)) + label_weight * CE(s, y)

averaged over the batch. Softening by the temperature ``T`` shows the student how the teacher ranks the wrong
classes too; the factor ``T^2`` keeps the gradients of the soft term on the scale of the hard one's (Hinton).

The views (:class:`FinetuneSettings`, ``shift_mode``)
    Each image of a batch is shifted by ``(dy, dx)``, each uniform in ``[-R, R)``: ``"circular"`` rolls the model
    input (the shift under which APS with circular padding is exactly invariant); ``"crop"`` moves the model's
    window over the (resized) image, reading black outside it (the crop protocol, Zhang 2019, and random-crop
    training). ``"auto"`` picks circular for a student with APS layers and circular padding everywhere, crop
    otherwise (:func:`conversion_shift_mode`). The teacher always sees the unshifted model input, so the student is
    taught to give every shifted view the answer the original gives the image.

Held-out evidence
    The weights are judged on images the fine-tuning never saw: ``holdout`` data, or else a fraction of ``data``
    chosen by the images' names alone (:func:`holdout_split`). Before the first step and after each epoch the
    student's held-out accuracy is measured; at the end :func:`shiftlab.evaluate` measures the original, the
    converted model before fine-tuning and after it side by side (accuracy; circular consistency, ``views`` rolls per
    image with shifts in ``[-R, R)``; crop consistency, ``views`` windows at offsets in ``[0, 2R)``, when the images
    leave room for them), the protocols of the demo. Without labels "accuracy" is the agreement with the original
    model's top-1. ``shiftlab evaluate`` measures more (worst-case accuracy over a grid of shifts, ImageNet-P, ...)
    on the saved weights.

The bundled digits
    ``data="digits"`` trains on the 4,000 training digits of :func:`shiftlab.digits.load_digits` and holds out the
    1,000 test digits (never trained on). Each digit sits in the middle of a black canvas ``R`` pixels wider on every
    side and the model input is its centre 28x28 window: a crop shift of up to ``R`` pixels is then a window of
    the canvas (MNIST's background is exactly 0, so the canvas only adds more of it), as in the demo's protocol.

Reproducible
    Everything random is derived from ``seed``: the order of epoch ``e`` from a generator seeded with
    ``sample_seed(seed, crc32("finetune order"), e)``, the shift of training image ``i`` in epoch ``e`` from one
    seeded with ``sample_seed(seed, crc32("finetune shifts"), e * 2^32 + i)``, dropout (if the model has any) in
    step ``k`` of process ``r`` from one seeded with ``sample_seed(seed, crc32("finetune dropout"),
    k * 2^16 + r)`` (:func:`shiftlab.invariance.protocols.sample_seed`; no global random state is read or changed). On
    one process and the CPU the same inputs and settings give the same weights, bit for bit, for a given number of
    intra-op threads; on a GPU as far as its kernels are deterministic.

Checkpoints
    With ``checkpoint``, the student, the optimiser's state, the step and the curve so far are written there
    (atomically) every ``checkpoint_every`` steps and at the end of every epoch; ``resume=True`` continues from
    it after any interruption (even ``kill -9``) and gives the same final weights as a run that was never
    interrupted. A checkpoint made with other settings, data or models is refused.

Several processes
    Under ``torchrun`` the student is wrapped in :class:`torch.nn.parallel.DistributedDataParallel` (gloo on the
    CPU, NCCL on GPUs: :func:`shiftlab.distributed.process_group`). Every step's batch of ``batch_size`` images is
    split between the processes (every ``world``-th image each), and each process's loss is scaled so that the
    averaged gradient is the gradient of the whole batch's mean loss. Batch normalisation uses each process's own
    images for its statistics (as torchvision's reference scripts do without ``--sync-bn``), and DDP copies the
    running statistics of process 0 to the others before each step; a last batch smaller than the number of
    processes is dropped. The result is the same in every process.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab._io import (
    atomic_write_bytes,
    atomic_write_text,
    json_text,
    read_checkpoint,
    safetensors_bytes,
    to_jsonable,
)
from shiftlab.data import Preprocess
from shiftlab.digits import DIGITS_CLASSES, load_digits
from shiftlab.distributed import Processes, gather_objects, process_group, shard
from shiftlab.errors import ShiftlabError, check, check_choice, check_int, check_real, describe, fail, first_line
from shiftlab.invariance.datasets import EvaluationDataset, ImageSet, LoadedImage, make_loader, open_images
from shiftlab.invariance.evaluate import (
    EvaluateOptions,
    EvaluationResult,
    PreprocessChoices,
    _first_difference,
    evaluate,
)
from shiftlab.invariance.protocols import Consistency, ShiftAccuracy, sample_seed
from shiftlab.invariance.views import IDENTITY, Geometry, ViewKey, build_view
from shiftlab.layers.aps import APSPool2d
from shiftlab.models import _first_conv_channels, resolve_device

__all__ = [
    "FINETUNE_SHIFT_MODES",
    "LABELS",
    "STAGES",
    "DistillationLoss",
    "FinetuneOptions",
    "FinetuneResult",
    "FinetuneSettings",
    "conversion_shift_mode",
    "distillation_loss",
    "finetune",
    "holdout_split",
]

CHECKPOINT_FORMAT = "shiftlab-finetune-checkpoint/1"

#: How the student's views are shifted: ``auto`` picks from the student (:func:`conversion_shift_mode`).
FINETUNE_SHIFT_MODES: tuple[str, ...] = ("auto", "circular", "crop")
#: What to do with the data's labels: ``use`` (a cross-entropy term; the data must have labels) or ``ignore``.
LABELS: tuple[str, ...] = ("use", "ignore")

#: The labels of the three models the final evaluation compares.
STAGES: tuple[str, ...] = ("original", "converted", "fine-tuned")
#: Teacher outputs are computed once and kept when they take at most this many bytes; else once per step.
TEACHER_CACHE_BYTES = 1 << 30

_ORDER_STREAM = zlib.crc32(b"finetune order")
_SHIFT_STREAM = zlib.crc32(b"finetune shifts")
_DROPOUT_STREAM = zlib.crc32(b"finetune dropout")


# --------------------------------------------------------------------------- the loss


def _loss_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``T^2 KL(softmax(t/T) || softmax(s/T))`` and the cross-entropy (0 without a label).

    Half-precision logits are taken to float32 first: a softmax of 16-bit values loses the small probabilities
    that the temperature is there to show.
    """
    if student_logits.dtype in (torch.float16, torch.bfloat16):
        student_logits = student_logits.float()
    teacher_logits = teacher_logits.to(student_logits.dtype)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    divergence = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=1)
    divergence = divergence * temperature**2
    if labels is None:
        return divergence, torch.zeros_like(divergence)
    cross_entropy = F.cross_entropy(student_logits, labels, reduction="none", ignore_index=-1)
    return divergence, cross_entropy


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    label_weight: float = 0.5,
) -> torch.Tensor:
    r"""Knowledge-distillation loss (Hinton et al. 2015): the softened teacher as target, plus the labels if given.

    .. math::
        \frac{1}{N} \sum_n \Big[ T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t_n / T) \,\|\, \mathrm{softmax}(s_n / T)\big)
        + w \, \mathrm{CE}(s_n, y_n) \Big]

    Args:
        student_logits: the student's logits ``s``.
        teacher_logits: the teacher's logits ``t`` (no gradient flows into them).
        labels: class indices ``y``; ``None`` or ``-1`` for an image without one (no cross-entropy term).
        temperature: ``T > 0``; 1 compares the plain softmax outputs.
        label_weight: ``w >= 0``, the weight of the cross-entropy term.

    Returns:
        The mean over the batch (a scalar tensor).

    Shape:
        - student_logits, teacher_logits: :math:`(N, K)`
        - labels: :math:`(N,)`
        - output: :math:`()`

    Raises:
        ShiftlabError: logits that are not ``(N, K)`` of one shape, labels of another length, a bad temperature.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> distillation_loss(logits, logits).item()  # the same answers: nothing to learn
        0.0
        >>> round(distillation_loss(logits, logits, torch.tensor([0]), label_weight=1.0).item(), 4)
        0.1698
    """
    temperature = check_real(temperature, "temperature", positive=True)
    label_weight = check_real(label_weight, "label weight", minimum=0)
    for name, logits in (("student logits", student_logits), ("teacher logits", teacher_logits)):
        check(
            isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.is_floating_point(),
            name,
            f"expected float logits (N, classes), got {describe(logits)}",
        )
    check(
        student_logits.shape == teacher_logits.shape,
        "logits",
        f"the student gives {tuple(student_logits.shape)} and the teacher {tuple(teacher_logits.shape)}",
    )
    if labels is not None:
        check(
            isinstance(labels, torch.Tensor)
            and labels.shape == student_logits.shape[:1]
            and not labels.is_floating_point(),
            "labels",
            f"expected {student_logits.shape[0]} integer class indices, got {describe(labels)}",
        )
    divergence, cross_entropy = _loss_terms(student_logits, teacher_logits.detach(), labels, temperature)
    return (divergence + label_weight * cross_entropy).mean()


class DistillationLoss(nn.Module):
    """:func:`distillation_loss` as a module.

    Example:
        >>> loss = DistillationLoss(temperature=2.0)
        >>> loss(torch.zeros(4, 10), torch.zeros(4, 10)).item()
        0.0
    """

    def __init__(self, temperature: float = 4.0, label_weight: float = 0.5) -> None:
        super().__init__()
        self.temperature = check_real(temperature, "temperature", positive=True)
        self.label_weight = check_real(label_weight, "label weight", minimum=0)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return distillation_loss(
            student_logits, teacher_logits, labels, temperature=self.temperature, label_weight=self.label_weight
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, label_weight={self.label_weight:g}"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FinetuneSettings:
    """How the student is trained; every default is explained in the README ("Keeping the accuracy").

    Attributes:
        epochs: passes over the training images (3: on the bundled digits the held-out accuracy is back within
            0.5 points of the original's after 2, and the third lets the learning rate reach 0).
        batch_size: images per step, over all processes (64, as the original ``digits_cnn`` was trained).
        lr: peak learning rate of SGD (0.01: a tenth of the rate the digits were trained with from scratch, the
            usual step down for fine-tuning a trained model).
        momentum: SGD momentum, Nesterov's (0.9).
        weight_decay: L2 penalty on every parameter (1e-4: weak; a few epochs move the weights little).
        temperature: distillation temperature ``T`` (4: softens a confident teacher's outputs enough to show how
            it ranks the other classes; Hinton's examples range from 2 to 20).
        label_weight: weight of the cross-entropy term when labels are used (0.5: below the distillation term's 1,
            as Hinton advises, since the teacher's soft targets carry more per image than a label; large enough to
            correct some of the teacher's own mistakes).
        shift_mode: ``"auto"``, ``"circular"`` or ``"crop"`` (see the module docstring).
        max_shift: ``R``, shifts uniform in ``[-R, R)`` per axis; ``None``: an eighth of the model input's shorter
            side, rounded up (4 for 28x28 digits: every phase of their stride 4; 28 for 224x224).
        seed: seeds the order, the shifts and dropout (see the module docstring).

    The learning rate follows a cosine from ``lr`` to 0 over all steps, per step, without warm-up: the student
    starts from trained weights, and batch normalisation in training mode uses each batch's own statistics from
    the first step, so the converted layers' changed statistics do not need a warm-up to settle.

    Example:
        >>> FinetuneSettings(epochs=5).lr
        0.01
        >>> FinetuneSettings(temperature=0)
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: temperature: must be a positive number, got 0
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 4.0
    label_weight: float = 0.5
    shift_mode: str = "auto"
    max_shift: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        values = {
            "epochs": check_int(self.epochs, "epochs", minimum=1),
            "batch_size": check_int(self.batch_size, "batch size", minimum=1),
            "lr": check_real(self.lr, "lr", positive=True),
            "momentum": check_real(self.momentum, "momentum", minimum=0),
            "weight_decay": check_real(self.weight_decay, "weight decay", minimum=0),
            "temperature": check_real(self.temperature, "temperature", positive=True),
            "label_weight": check_real(self.label_weight, "label weight", minimum=0),
            "shift_mode": check_choice(self.shift_mode, "shift mode", FINETUNE_SHIFT_MODES),
            "max_shift": None if self.max_shift is None else check_int(self.max_shift, "max shift", minimum=1),
            "seed": check_int(self.seed, "seed", minimum=0),
        }
        check(self.momentum < 1, "momentum", f"must be below 1, got {self.momentum!r}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def describe(self) -> dict[str, Any]:
        """The settings, with the optimiser, the schedule and the loss in words."""
        return {
            **asdict(self),
            "optimizer": (
                f"SGD, Nesterov momentum {self.momentum:g}, weight decay {self.weight_decay:g} on every parameter"
            ),
            "lr_schedule": f"cosine from {self.lr:g} to 0 over all steps (per step), no warm-up",
            "loss": (
                f"T^2 KL(softmax(teacher / T) || softmax(student / T)) with T = {self.temperature:g}"
                f" (+ {self.label_weight:g} x cross-entropy when labels are used), averaged over the batch"
            ),
        }


# --------------------------------------------------------------------------- shifts and the split


def conversion_shift_mode(student: nn.Module) -> str:
    """The shift the conversion is meant for: ``"circular"`` for APS with circular padding everywhere, else ``"crop"``.

    Circular means: the model has an :class:`~shiftlab.layers.APSPool2d` and every padded convolution pads
    circularly (the condition of APS's exact invariance; see :mod:`shiftlab.layers.aps`).

    Example:
        >>> from shiftlab.layers import make_shift_invariant
        >>> from shiftlab.models import DigitsCNN
        >>> conversion_shift_mode(make_shift_invariant(DigitsCNN(), "aps", padding="circular")[0])
        'circular'
        >>> conversion_shift_mode(make_shift_invariant(DigitsCNN(), "aps")[0])
        'crop'
    """
    modules = list(student.modules())
    has_aps = any(isinstance(module, APSPool2d) for module in modules)
    circular = all(module.padding_mode == "circular" for module in modules if _pads(module))
    return "circular" if has_aps and circular else "crop"


def _pads(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution that pads its input."""
    if not isinstance(module, nn.Conv2d):
        return False
    if isinstance(module.padding, str):
        return module.padding == "same" and any(size > 1 for size in module.kernel_size)
    return any(amount > 0 for amount in module.padding)


def _relative_names(images: ImageSet) -> list[str]:
    if images.tensors is not None:
        return [images.name(index) for index in range(len(images))]
    paths = [os.path.abspath(str(item)) for item in images.items]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [Path(os.path.relpath(path, root)).as_posix() for path in paths]


def holdout_split(images: ImageSet, fraction: float) -> tuple[list[int], list[int]]:
    """``(training, held-out)`` image indices: an image is held out when the hash of its name falls below ``fraction``.

    The name is the image's path relative to the folder that holds all of them (``#i`` for images in memory); the
    hash is the first 8 bytes of its SHA-256 read as a fraction of ``2^64``. So the split depends on the names
    alone: not on ``seed``, the order of the files or the images added later (the rule of TensorFlow's
    image-retraining example); the held-out share is ``fraction`` on average, not exactly.

    Raises:
        ShiftlabError: a fraction outside ``(0, 1)``, or one that leaves either side empty.

    Example:
        >>> images = open_images(torch.zeros(20, 1, 4, 4))
        >>> training, held_out = holdout_split(images, 0.25)
        >>> len(training) + len(held_out), held_out
        (20, [1, 8, 16])
    """
    fraction = check_real(fraction, "holdout fraction")
    check(0 < fraction < 1, "holdout fraction", f"must lie between 0 and 1, got {fraction:g}")
    training: list[int] = []
    held_out: list[int] = []
    for index, name in enumerate(_relative_names(images)):
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
        (held_out if int.from_bytes(digest[:8], "big") / 2.0**64 < fraction else training).append(index)
    check(
        training and held_out,
        "holdout fraction",
        f"{fraction:g} of {len(images)} image(s) leaves {len(held_out)} held out and {len(training)} for training;"
        " give more images, another fraction, or --holdout DATA",
    )
    return training, held_out


def _subset(images: ImageSet, indices: Sequence[int], description: str) -> ImageSet:
    labels = None if images.labels is None else tuple(images.labels[index] for index in indices)
    if images.tensors is not None:
        tensors = images.tensors[list(indices)]
        return ImageSet(tuple(range(len(indices))), labels, images.classes, description, tensors)
    return ImageSet(tuple(images.items[index] for index in indices), labels, images.classes, description)


def _draw_shift(seed: int, epoch: int, index: int, limit: int) -> tuple[int, int]:
    generator = torch.Generator().manual_seed(sample_seed(seed, _SHIFT_STREAM, (epoch << 32) | index))
    dy, dx = torch.randint(-limit, limit, (2,), generator=generator).tolist()
    return int(dy), int(dx)


def _shifted_key(mode: str, dy: int, dx: int, geometry: Geometry) -> ViewKey:
    if mode == "circular":
        return ("roll", dy, dx)
    return ("zero", geometry.top - dy, geometry.left - dx)  # the window moved up-left: the content moves down-right


# --------------------------------------------------------------------------- the data


@dataclass
class _Data:
    """The training and held-out images, how they are prepared, and where they came from."""

    training: ImageSet
    holdout: ImageSet
    crop: int | None
    resize: int | None
    split: str
    canvas: int = 0  # black pixels added around bundled images (0: none)

    @property
    def room(self) -> int:
        """Pixels around the model input in the held-out images, per axis (0: unknown), for crop windows."""
        if self.split == BUNDLED_TEST_SPLIT:
            return 2 * self.canvas
        if self.resize is not None and self.crop is not None:
            return max(0, self.resize - self.crop)
        return 0


BUNDLED_TEST_SPLIT = "the 1,000 bundled test digits, never trained on"


def _bundled_digits(margin: int) -> tuple[ImageSet, ImageSet]:
    sets = []
    for split, count in (("train", 4000), ("test", 1000)):
        images, labels = load_digits(split)
        canvas = F.pad(images, (margin,) * 4)  # MNIST's background is exactly 0: more of it
        image_set = open_images((canvas, labels), classes=DIGITS_CLASSES)
        side = 28 + 2 * margin
        description = (
            f"the {count:,} bundled {'training' if split == 'train' else 'test'} digits (shiftlab.digits, "
            f"{split!r}), each in the middle of a black {side}x{side} canvas; model input: the centre 28x28"
        )
        sets.append(replace(image_set, description=description))
    return sets[0], sets[1]


def _resolve_data(
    data: Any,
    holdout: Any,
    holdout_fraction: float,
    classes: Any,
    resize: int | None,
    crop: int | None,
    margin_for: Callable[[int], int],
) -> _Data:
    if isinstance(data, str) and data == "digits" and not Path(data).exists():
        check(
            resize is None and crop is None,
            "resize and crop",
            "do not apply to the bundled digits (28x28, placed on a black canvas by shiftlab); leave them out",
        )
        margin = margin_for(28)
        training, test = _bundled_digits(margin)
        if holdout is None:
            return _Data(training, test, 28, None, BUNDLED_TEST_SPLIT, margin)
        held = holdout if isinstance(holdout, ImageSet) else open_images(holdout, classes=classes)
        return _Data(training, held, 28, None, "the held-out data given, never trained on", margin)
    images = data if isinstance(data, ImageSet) else open_images(data, classes=classes)
    if holdout is not None:
        held = holdout if isinstance(holdout, ImageSet) else open_images(holdout, classes=classes)
        if images.tensors is None and held.tensors is None:
            mine = {os.path.realpath(str(item)) for item in images.items}
            shared = [str(item) for item in held.items if os.path.realpath(str(item)) in mine]
            check(
                not shared,
                "holdout",
                f"{len(shared)} of its image(s) are also in the training data ({shared[0] if shared else ''}"
                f"{', ...' if len(shared) > 1 else ''}): held-out images must never be trained on",
            )
        return _Data(images, held, crop, resize, "the held-out data given, never trained on")
    kept, held_out = holdout_split(images, holdout_fraction)
    split = (
        f"{len(held_out)} of the {len(images)} images of the data ({holdout_fraction:g} on average), chosen by "
        "the SHA-256 of their names (shiftlab.finetune.holdout_split), never trained on"
    )
    return _Data(
        _subset(images, kept, f"{images.description}: the {len(kept)} images not held out"),
        _subset(images, held_out, f"{images.description}: the {len(held_out)} held-out images"),
        crop,
        resize,
        split,
    )


# --------------------------------------------------------------------------- the result


@dataclass
class FinetuneResult:
    """What :func:`finetune` did and measured: the fine-tuned student, the training curve, before and after.

    Attributes:
        student: the fine-tuned model (eval mode, on the device it was trained on).
        protocol: everything that determines the weights (data, split, preparation, settings, models, seeding).
        steps: one row per step: ``step``, ``epoch``, ``lr``, ``loss``, ``distillation``, ``cross_entropy``
            (means over the step's images, all processes together).
        epochs: one row before the first step (``epoch`` 0) and one after each epoch: ``epoch``, ``step``,
            ``loss`` (the epoch's mean), ``holdout_accuracy`` (of the student, unshifted).
        evaluation: :func:`shiftlab.evaluate` on the held-out images, models :data:`STAGES`.
        skipped: ``[{"index", "name", "reason"}]`` for the training images that could not be used.
        seconds: ``training`` (wall time of the training steps), ``training_cpu`` (their CPU time, every thread of
            this process), ``evaluation`` (wall time of the held-out measurements).
    """

    student: nn.Module
    protocol: dict[str, Any]
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    evaluation: EvaluationResult
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy_name(self) -> str:
        """``"accuracy"``, or ``"agreement with the original"`` when the held-out images have no labels."""
        return "accuracy" if self.protocol["holdout"]["labels"] else "agreement with the original"

    def metrics(self, stage: str) -> dict[str, Any]:
        """The held-out headline numbers of one of :data:`STAGES`, as fractions (``None``: not measured).

        Keys: ``accuracy``, ``circular_consistency``, ``crop_consistency``,
        and the counts behind them (``correct``, ``images``, ``agreeing_pairs``, ``pairs``).
        """
        stage = check_choice(stage, "stage", STAGES)
        results = self.evaluation.results[stage]
        accuracy = results["shift-accuracy"]
        circular = results["consistency"]
        crop = results.get("crop-consistency")
        return {
            "accuracy": accuracy["accuracy_unshifted"],
            "correct": round(accuracy["accuracy_unshifted"] * accuracy["images"]),
            "images": accuracy["images"],
            "circular_consistency": circular["consistency"],
            "agreeing_pairs": circular["agreeing_pairs"],
            "pairs": circular["pairs"],
            "crop_consistency": None if crop is None else crop["consistency"],
            "crop_agreeing_pairs": None if crop is None else crop["agreeing_pairs"],
            "crop_pairs": None if crop is None else crop["pairs"],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "metrics": {stage: self.metrics(stage) for stage in STAGES},
            "epochs": self.epochs,
            "steps": self.steps,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "evaluation": self.evaluation.to_dict(),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Everything but the weights as JSON; written to ``path`` (atomically) when given."""
        text = json_text(self.to_dict())
        if path is not None:
            atomic_write_text(path, text)
        return text

    def save_weights(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """The student's ``state_dict`` as ``.safetensors`` (atomically; the same weights give the same bytes)."""
        return atomic_write_bytes(path, safetensors_bytes(self.student.state_dict(), metadata))

    def plot_curve(self, **kwargs: Any):
        """The training curve: the loss per step, and the held-out accuracy after every epoch."""
        from shiftlab.report.figures import show_training_curve

        return show_training_curve(self, **kwargs)


# --------------------------------------------------------------------------- finetune


@dataclass(frozen=True)
class FinetuneOptions:
    """How :func:`finetune` runs: which images and labels it uses, where and how it computes, what it writes.

    None of it changes what is learnt, except ``max_steps``, and ``cache_teacher`` to float rounding.

    Attributes:
        holdout_fraction: the share of ``data`` held out when no ``holdout`` is given (:func:`holdout_split`).
        labels: ``"use"`` (a cross-entropy term; the data must have labels), ``"ignore"``, or ``None``: use them
            when the data has them.
        classes: class names in index order (folders and list files; see
        :func:`shiftlab.invariance.datasets.open_images`). views: views per image of the held-out consistency metrics.
        workers: image-decoding processes (0: in this process).
        device: where the models run (under ``torchrun`` with CUDA: one GPU per process).
        cache_teacher: keep the teacher's outputs on the unshifted images after one pass (they never change);
            ``None``: when they take at most :data:`TEACHER_CACHE_BYTES`, else the teacher runs on every batch.
        checkpoint: file for the run's state, written every ``checkpoint_every`` steps and after every epoch.
        resume: continue from ``checkpoint`` (refused if it was made with other settings).
        progress: progress bars on stderr (``None``: only on a terminal).
        max_steps: stop after this many steps, the learning-rate schedule still the full run's (for quick
            checks: the first steps of a run, exactly).

    Example:
        >>> FinetuneOptions(views=8, device="cuda").checkpoint_every
        50
        >>> FinetuneOptions(views=1)
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: views: must be an integer >= 2, got 1
    """

    holdout_fraction: float = 0.1
    labels: str | None = None
    classes: str | Sequence[str] | None = None
    views: int = 4
    workers: int = 0
    device: str = "cpu"
    cache_teacher: bool | None = None
    checkpoint: str | Path | None = None
    checkpoint_every: int = 50
    resume: bool = False
    progress: bool | None = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        values = {
            "labels": None if self.labels is None else check_choice(self.labels, "labels", LABELS),
            "views": check_int(self.views, "views", minimum=2),
            "workers": check_int(self.workers, "workers", minimum=0),
            "checkpoint": None if self.checkpoint is None else Path(self.checkpoint),
            "checkpoint_every": check_int(self.checkpoint_every, "checkpoint every", minimum=1),
            "max_steps": None if self.max_steps is None else check_int(self.max_steps, "max steps", minimum=1),
        }
        check(
            not self.resume or self.checkpoint is not None, "resume", "needs the checkpoint file of the run to continue"
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)


def _preprocess_choices(preprocess: Preprocess | PreprocessChoices | None) -> PreprocessChoices:
    """``preprocess`` as the choices :func:`finetune` applies; a whole :class:`Preprocess` taken apart.

    Fine-tuning resizes the shorter side, bilinear and antialiased: another resize is refused, not ignored.
    """
    if preprocess is None:
        return PreprocessChoices()
    if isinstance(preprocess, Preprocess):
        check(
            preprocess.resize is None or (preprocess.antialias and not preprocess.squash),
            "preprocess",
            "fine-tuning resizes the shorter side with antialiasing: give a Preprocess without squash, antialiased",
        )
        custom = preprocess.mean is not None and preprocess.normalize == "custom"
        preprocess = PreprocessChoices(
            resize=preprocess.resize,
            crop=preprocess.crop,
            interpolation=preprocess.interpolation,
            normalize="none" if custom else preprocess.normalize,
            mean=preprocess.mean if custom else None,
            std=preprocess.std if custom else None,
        )
    check(
        isinstance(preprocess, PreprocessChoices),
        "preprocess",
        f"expected a Preprocess or PreprocessChoices, got {describe(preprocess)}",
    )
    check(
        preprocess.resize is None or preprocess.interpolation in (None, "bilinear"),
        "interpolation",
        f"fine-tuning resizes bilinearly (antialiased), got {preprocess.interpolation!r}",
    )
    return preprocess


@dataclass
class _Log:
    """What the run has recorded so far: the rows of :class:`FinetuneResult` and the time spent."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"training": 0.0, "training_cpu": 0.0, "evaluation": 0.0})

    def add_training(self, started: tuple[float, float]) -> tuple[float, float]:
        """Add the wall and CPU time (all threads) since ``started``; return now, to start the next span."""
        now = (time.perf_counter(), time.process_time())
        self.seconds["training"] += now[0] - started[0]
        self.seconds["training_cpu"] += now[1] - started[1]
        return now


@dataclass
class _Run:
    """Everything one process needs while it trains."""

    teacher: nn.Module
    student: nn.Module
    data: _Data
    dataset: EvaluationDataset
    preprocess: Preprocess
    settings: FinetuneSettings
    mode: str
    use_labels: bool
    processes: Processes
    options: FinetuneOptions
    trained: nn.Module | None = None  # the student, wrapped for DDP under torchrun
    limit: int = 0  # R: shifts in [-R, R)
    teacher_outputs: torch.Tensor | None = None  # (training images, classes), or None: computed per step
    usable: list[int] = field(default_factory=list)  # training images that load
    geometries: dict[int, Geometry] = field(default_factory=dict)
    steps_per_epoch: int = 0
    total: int = 0  # steps of the whole schedule
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluate()'s options for the held-out images


def finetune(
    teacher: nn.Module,
    student: nn.Module,
    data: Any,
    settings: FinetuneSettings | None = None,
    *,
    holdout: Any = None,
    preprocess: Preprocess | PreprocessChoices | None = None,
    options: FinetuneOptions | None = None,
) -> FinetuneResult:
    """Fine-tune ``student`` (a converted copy of ``teacher``) to give ``teacher``'s answers under shifts.

    See the module docstring for the loss, the views, the held-out split, seeding, checkpoints and ``torchrun``.

    Args:
        teacher: the original model (left unchanged: eval mode, no gradient).
        student: its converted copy (:func:`shiftlab.layers.make_shift_invariant`, a model spec's ``+aps``, ...),
            trained in place and returned in the result.
        data: the training images: anything :func:`shiftlab.evaluate` accepts (a folder, a list file, tensors
            ``(N, C, H, W)`` in ``[0, 1]``, a pair ``(images, labels)``), or ``"digits"`` (see the module docstring).
        settings: how the student is trained (:class:`FinetuneSettings`; ``None``: the defaults).
        holdout: held-out images (as ``data``); by default ``options.holdout_fraction`` of ``data``
            (:func:`holdout_split`), or for ``"digits"`` the 1,000 test digits.
        preprocess: how images become model inputs, a :class:`~shiftlab.invariance.evaluate.PreprocessChoices` or a
            :class:`~shiftlab.data.Preprocess` (its channels are the models'): ``resize``, the shorter side of every
            image before the window is cut (bilinear, antialiased; e.g. 256); ``crop``, the model input, the centre
            ``crop x crop`` window (e.g. 224; default the whole image, which must then have one size for all
            images); ``normalize`` (``"none"``, ``"imagenet"``, ...) or ``mean`` and ``std``, the model's input
            normalisation. ``None`` (and ``normalize="auto"``): no resize, no crop, no normalisation.
        options: how the run goes (:class:`FinetuneOptions`: the held-out fraction, labels, classes, views, loader
            workers, device, teacher cache, checkpoint, resume, progress bars, a step limit); ``None``: the defaults.

    Returns:
        A :class:`FinetuneResult`; in every process of a torchrun group, the same.

    Raises:
        ShiftlabError: bad data, models or settings (checked before anything is written).
    """
    settings = FinetuneSettings() if settings is None else settings
    check(isinstance(settings, FinetuneSettings), "settings", f"expected FinetuneSettings, got {describe(settings)}")
    for name, model in (("teacher", teacher), ("student", student)):
        check(isinstance(model, nn.Module), name, f"expected a torch.nn.Module, got {describe(model)}")
    check(teacher is not student, "student", "is the teacher itself: give a converted copy")
    check(
        any(parameter.requires_grad for parameter in student.parameters()),
        "student",
        "has no trainable parameters",
    )
    options = FinetuneOptions() if options is None else options
    check(isinstance(options, FinetuneOptions), "options", f"expected FinetuneOptions, got {describe(options)}")
    choices = _preprocess_choices(preprocess)
    target = resolve_device(options.device)
    mode = conversion_shift_mode(student) if settings.shift_mode == "auto" else settings.shift_mode

    def margin_for(side: int) -> int:
        return settings.max_shift if settings.max_shift is not None else max(1, math.ceil(side / 8))

    chosen = _resolve_data(
        data, holdout, options.holdout_fraction, options.classes, choices.resize, choices.crop, margin_for
    )
    channels = _first_conv_channels(student)
    check(
        channels == _first_conv_channels(teacher),
        "student",
        f"takes {channels} input channels, the teacher {_first_conv_channels(teacher)}",
    )
    normalize = "none" if choices.normalize == "auto" else choices.normalize
    prepare = Preprocess.make(channels=channels, normalize=normalize, mean=choices.mean, std=choices.std)
    has_labels = chosen.training.labels is not None
    if options.labels == "use":
        check(
            has_labels, "labels", f"use was asked for, but the training data has none ({chosen.training.description})"
        )
    use_labels = has_labels and options.labels != "ignore"
    dataset = EvaluationDataset(chosen.training, channels=channels, resize=chosen.resize)
    student_flags = [(module, module.training) for module in student.modules()]
    teacher_flags = [(module, module.training) for module in teacher.modules()]
    gradients = [(parameter, parameter.requires_grad) for parameter in teacher.parameters()]
    try:
        with process_group(target) as processes:
            run = _Run(teacher, student, chosen, dataset, prepare, settings, mode, use_labels, processes, options)
            return _finetune(run, margin_for)
    except BaseException:
        for module, training in student_flags:  # a failed run leaves the caller's flags as they were
            module.train(training)
        raise
    finally:
        for module, training in teacher_flags:
            module.train(training)
        for parameter, needed in gradients:
            parameter.requires_grad_(needed)


def _finetune(run: _Run, margin_for: Callable[[int], int]) -> FinetuneResult:
    settings, processes, options, data = run.settings, run.processes, run.options, run.data
    device = processes.device
    check(
        settings.batch_size >= processes.world,
        "batch size",
        f"{settings.batch_size} is smaller than the number of processes ({processes.world}): each needs an image",
    )
    teacher, student = run.teacher, run.student
    teacher.to(device).eval().requires_grad_(False)
    student.to(device)
    before = copy.deepcopy(student).eval()  # the converted model, not fine-tuned: the "before" of the report
    classes, skipped = _teacher_pass(run)
    run.limit = margin_for(min(run.geometries[run.usable[0]].size))
    _check_labels(run, classes)
    holdout = _holdout_with_labels(run)
    run.steps_per_epoch = _steps_per_epoch(len(run.usable), settings.batch_size, processes.world)
    run.total = settings.epochs * run.steps_per_epoch
    run.evaluation = {
        "preprocess": PreprocessChoices(
            resize=data.resize,
            crop=data.crop,
            normalize=run.preprocess.normalize if run.preprocess.normalize != "custom" else "none",
            mean=run.preprocess.mean if run.preprocess.normalize == "custom" else None,
            std=run.preprocess.std if run.preprocess.normalize == "custom" else None,
        ),
        "options": EvaluateOptions(
            seed=settings.seed, batch_size=max(settings.batch_size, 16), workers=options.workers, device=str(device)
        ),
    }
    protocol = _protocol(run, before, holdout, classes)
    run.trained = student
    if processes.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.trained = DistributedDataParallel(student, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.momentum > 0,
        weight_decay=settings.weight_decay,
    )
    log = _Log()
    done = 0
    if options.resume and options.checkpoint is not None:
        done = _load_checkpoint(run, protocol, optimizer, log)
    if not log.epochs:
        started = time.perf_counter()
        accuracy = _holdout_accuracy(student, holdout, run.evaluation)
        log.epochs.append({"epoch": 0, "step": 0, "loss": None, "holdout_accuracy": accuracy})
        log.seconds["evaluation"] += time.perf_counter() - started
    _train(run, optimizer, done, log, holdout, protocol)
    student.eval()
    started = time.perf_counter()
    metrics: list[Any] = [
        Consistency("circular", views=options.views, max_shift=run.limit),
        ShiftAccuracy([(0, 0)]),
    ]
    if _crop_fits(data, 2 * run.limit):
        metrics.append(Consistency("crop", views=options.views, max_shift=2 * run.limit))
    evaluation = evaluate(
        dict(zip(STAGES, (teacher, before, student))),
        holdout,
        metrics=metrics,
        preprocess=run.evaluation["preprocess"],
        options=replace(run.evaluation["options"], progress=options.progress),
    )
    log.seconds["evaluation"] += time.perf_counter() - started
    protocol["holdout"]["metrics"] = evaluation.protocol["metrics"]
    return FinetuneResult(student, protocol, log.steps, log.epochs, evaluation, skipped, log.seconds)


def _steps_per_epoch(images: int, batch_size: int, world: int) -> int:
    full, rest = divmod(images, batch_size)
    return full + (1 if rest >= world else 0)


def _crop_fits(data: _Data, offsets: int) -> bool:
    """Whether the crop protocol's windows (offsets up to ``offsets``) fit in the held-out images."""
    return data.crop is not None and data.room >= offsets


def _check_labels(run: _Run, classes: int) -> None:
    for name, images in (("training data", run.data.training), ("held-out data", run.data.holdout)):
        if images.classes is not None:
            check(
                len(images.classes) == classes,
                "classes",
                f"the {name} has {len(images.classes)} classes, but the teacher gives {classes} outputs",
            )
        if images.labels is not None:
            largest = max(images.labels)
            check(
                largest < classes,
                "labels",
                f"class index {largest} of the {name} is out of range for the teacher's {classes} outputs",
            )


# --------------------------------------------------------------------------- models on a batch


def _forward(model: nn.Module, inputs: torch.Tensor, name: str) -> torch.Tensor:
    try:
        output = model(inputs)
    except ShiftlabError:
        raise
    except Exception as error:  # the user's model may raise anything
        shape = "x".join(map(str, inputs.shape))
        fail(name, f"fails on inputs of shape {shape}: {type(error).__name__}: {first_line(error)}")
    check(
        isinstance(output, torch.Tensor) and output.ndim == 2 and output.shape[0] == inputs.shape[0],
        name,
        f"returns {describe(output)} for {inputs.shape[0]} inputs: expected class logits (N, classes)",
    )
    check(
        output.shape[1] >= 2 and output.is_floating_point(),
        name,
        f"returns {describe(output)}: expected float class logits, at least 2 classes",
    )
    return output


def _inputs(run: _Run, items: Sequence[LoadedImage], keys: Sequence[ViewKey]) -> torch.Tensor:
    views = [build_view(item.image, key, run.geometries[item.index]) for item, key in zip(items, keys)]  # type: ignore[arg-type]
    return run.preprocess.apply(torch.stack(views)).to(run.processes.device, non_blocking=True)


def _geometry(run: _Run, item: LoadedImage) -> Geometry | str:
    """Where the model input sits in a loaded image, or why the image cannot be used."""
    name = run.data.training.name(item.index)
    if item.image is None:
        return item.reason or f"image '{name}': could not be read"
    height, width = item.image.shape[-2:]
    crop = run.data.crop
    if crop is not None and (crop > height or crop > width):
        return f"image '{name}': is {height}x{width}, smaller than the {crop}x{crop} crop"
    return Geometry.of(height, width, crop)


def _teacher_pass(run: _Run) -> tuple[int, list[dict[str, Any]]]:
    """One pass over the training images: which load, where their window is, and (cached) the teacher's outputs.

    Returns the number of classes and the skipped images; sets ``run.usable``, ``run.geometries`` and
    ``run.teacher_outputs``. Every process reads its share of the images; what they found is gathered.
    """
    from tqdm.auto import tqdm

    processes = run.processes
    count = len(run.data.training)
    batch = run.settings.batch_size
    packs = [list(range(start, min(count, start + batch))) for start in range(0, count, batch)]
    mine = shard(packs, processes.rank, processes.world)
    outputs: dict[int, torch.Tensor] = {}
    geometries: dict[int, Geometry] = {}
    reasons: dict[int, str] = {}
    sizes: set[tuple[int, int]] = set()
    classes: int | None = None
    keep = False
    bar = tqdm(
        total=sum(len(pack) for pack in mine),
        desc="teacher",
        unit="img",
        file=sys.stderr,
        disable=_bar_disabled(run.options.progress, processes),
        leave=False,
        dynamic_ncols=True,
    )
    cache_teacher = run.options.cache_teacher
    try:
        for items in make_loader(run.dataset, mine, workers=run.options.workers) if mine else ():
            bar.update(len(items))
            usable = []
            for item in items:
                outcome = _geometry(run, item)
                if isinstance(outcome, str):
                    reasons[item.index] = outcome
                else:
                    geometries[item.index] = outcome
                    sizes.add(outcome.size)
                    usable.append(item)
            if not usable or len(sizes) > 1:
                continue  # several sizes are refused below, once every process has said what it saw
            run.geometries = geometries
            with torch.inference_mode():
                logits = _forward(run.teacher, _inputs(run, usable, [IDENTITY] * len(usable)), "teacher").float()
            if classes is None:
                classes = int(logits.shape[1])
                keep = cache_teacher if cache_teacher is not None else count * classes * 4 <= TEACHER_CACHE_BYTES
                with torch.inference_mode():
                    produced = _forward(run.student.eval(), _inputs(run, usable[:2], [IDENTITY] * 2), "student")
                check(
                    produced.shape[1] == classes,
                    "student",
                    f"gives {produced.shape[1]} outputs per image, the teacher {classes}",
                )
            if keep:
                outputs.update(zip((item.index for item in usable), logits.cpu()))
    finally:
        bar.close()
    found = gather_objects((outputs, geometries, reasons, classes), processes.world)
    geometries = {index: geometry for part in found for index, geometry in part[1].items()}
    reasons = {index: reason for part in found for index, reason in part[2].items()}
    sizes = {geometry.size for geometry in geometries.values()}
    if len(sizes) > 1:
        shown = ", ".join(f"{height}x{width}" for height, width in sorted(sizes)[:3])
        fail(
            "data",
            f"the model inputs differ in size ({shown}): give a resize and a crop (--resize, --crop) so that every "
            "image gives one size",
        )
    check(
        geometries,
        "data",
        f"none of the {count} training image(s) can be used (the first: {next(iter(reasons.values()), '')})",
    )
    classes = next(part[3] for part in found if part[3] is not None)
    run.geometries = geometries
    run.usable = sorted(geometries)
    if keep or any(part[0] for part in found):
        table = torch.zeros(count, classes)
        for part in found:
            for index, row in part[0].items():
                table[index] = row
        run.teacher_outputs = table
    skipped = [
        {"index": index, "name": run.data.training.name(index), "reason": reasons[index]} for index in sorted(reasons)
    ]
    return classes, skipped


def _holdout_with_labels(run: _Run) -> ImageSet:
    """The held-out images with their labels, or with the teacher's top-1 as labels when they have none."""
    holdout = run.data.holdout
    if holdout.labels is not None:
        return holdout
    dataset = EvaluationDataset(holdout, channels=run.dataset.channels, resize=run.data.resize)
    count = len(holdout)
    packs = [list(range(start, min(count, start + 64))) for start in range(0, count, 64)]
    mine = shard(packs, run.processes.rank, run.processes.world)
    local: dict[int, int] = {}
    for items in make_loader(dataset, mine, workers=run.options.workers) if mine else ():
        usable = []
        for item in items:
            if item.image is None:
                continue  # the evaluation skips it and says why
            height, width = item.image.shape[-2:]
            if run.data.crop is None or (run.data.crop <= height and run.data.crop <= width):
                usable.append((item, build_view(item.image, IDENTITY, Geometry.of(height, width, run.data.crop))))
        if not usable:
            continue
        with torch.inference_mode():
            inputs = run.preprocess.apply(torch.stack([view for _, view in usable])).to(run.processes.device)
            top = _forward(run.teacher, inputs, "teacher").argmax(dim=1).cpu().tolist()
        local.update(zip((item.index for item, _ in usable), top))
    found: dict[int, int] = {}
    for part in gather_objects(local, run.processes.world):
        found.update(part)
    labels = tuple(found.get(index, 0) for index in range(count))
    return replace(
        holdout, labels=labels, classes=None, description=f"{holdout.description}; labels: the original's top-1"
    )


def _bar_disabled(progress: bool | None, processes: Processes) -> bool | None:
    """tqdm's ``disable``: off when asked or not the main process; ``None`` (only on a terminal) when unsaid."""
    if progress is False or not processes.main:
        return True
    return None if progress is None else False


def _state_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode() + b"\0" + str(tuple(value.shape)).encode() + str(value.dtype).encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _describe_model(model: nn.Module) -> dict[str, Any]:
    """The model's class, size, weights and layers (a conversion keeps the weights and changes the layers)."""
    return {
        "type": type(model).__name__,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "weights_sha256": _state_digest(model),
        "layers_sha256": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
    }


def _protocol(run: _Run, before: nn.Module, holdout: ImageSet, classes: int) -> dict[str, Any]:
    data, settings, processes = run.data, run.settings, run.processes
    size = run.geometries[run.usable[0]].size
    if run.mode == "circular":
        how = f"circular rolls of the model input, (dy, dx) uniform in [-{run.limit}, {run.limit}) per axis"
    else:
        how = (
            f"the model's window moved by (dy, dx) uniform in [-{run.limit}, {run.limit}) per axis over the "
            "(resized) image, reading black outside it"
        )
    return to_jsonable(
        {
            "data": {
                "description": data.training.description,
                "images": len(data.training),
                "usable": len(run.usable),
                "fingerprint": data.training.fingerprint(),
                "labels": "used (cross-entropy term)" if run.use_labels else "not used (distillation only)",
            },
            "holdout": {
                "description": holdout.description,
                "images": len(holdout),
                "fingerprint": holdout.fingerprint(),
                "labels": data.holdout.labels is not None,
                "split": data.split,
                "views_per_image": run.options.views,
            },
            "preparation": {
                "resize": f"shorter side {data.resize} (bilinear, antialiased)" if data.resize else "none",
                "model_input": f"{size[0]}x{size[1]}"
                + (f" (centre {data.crop}x{data.crop} window)" if data.crop else ""),
                "canvas": f"{data.canvas} black pixels on every side" if data.canvas else "none",
                "normalize": run.preprocess.normalize,
                "mean": list(run.preprocess.mean) if run.preprocess.mean else None,
                "std": list(run.preprocess.std) if run.preprocess.std else None,
                "channels": run.preprocess.channels,
            },
            "settings": {**settings.describe(), "shift_mode": run.mode, "max_shift": run.limit},
            "views": how,
            "teacher_targets": "the teacher's softened output on the unshifted model input",
            "seeding": (
                "order of epoch e: torch.randperm, generator seeded with sample_seed(seed, crc32('finetune order'), e);"
                " shift of training image i in epoch e: torch.randint, generator seeded with sample_seed(seed, "
                "crc32('finetune shifts'), e * 2^32 + i); dropout in step k of process r: sample_seed(seed, "
                "crc32('finetune dropout'), k * 2^16 + r)"
            ),
            "classes": classes,
            "steps": run.total,
            "steps_per_epoch": run.steps_per_epoch,
            "max_steps": run.options.max_steps,
            "teacher_outputs": "computed once, kept" if run.teacher_outputs is not None else "computed on every batch",
            "processes": processes.world,
            "device": processes.device.type,
            "teacher": _describe_model(run.teacher),
            "student": _describe_model(before),
        }
    )


def _holdout_accuracy(student: nn.Module, holdout: ImageSet, options: dict[str, Any]) -> float | None:
    result = evaluate({"student": student}, holdout, metrics=[ShiftAccuracy([(0, 0)])], **options)
    value: float | None = result.results["student"]["shift-accuracy"]["accuracy_unshifted"]
    return value


def _epoch_order(seed: int, epoch: int, usable: Sequence[int]) -> list[int]:
    generator = torch.Generator().manual_seed(sample_seed(seed, _ORDER_STREAM, epoch))
    return [usable[position] for position in torch.randperm(len(usable), generator=generator).tolist()]


def _train(
    run: _Run, optimizer: torch.optim.Optimizer, done: int, log: _Log, holdout: ImageSet, protocol: dict[str, Any]
) -> None:
    from tqdm.auto import tqdm

    settings, processes, options = run.settings, run.processes, run.options
    batch_size, per_epoch = settings.batch_size, run.steps_per_epoch
    stop = run.total if options.max_steps is None else min(run.total, options.max_steps)
    bar = tqdm(
        total=stop,
        initial=min(done, stop),
        desc="fine-tune",
        unit="step",
        file=sys.stderr,
        disable=_bar_disabled(options.progress, processes),
        leave=False,
        dynamic_ncols=True,
    )
    step = done
    try:
        while step < stop:
            epoch = step // per_epoch
            order = _epoch_order(settings.seed, epoch, run.usable)
            last = min(per_epoch, stop - epoch * per_epoch)
            batches = [
                order[number * batch_size : (number + 1) * batch_size]
                for number in range(step - epoch * per_epoch, last)
            ]
            mine = [shard(batch, processes.rank, processes.world) for batch in batches]
            started = (time.perf_counter(), time.process_time())
            for batch, items in zip(batches, make_loader(run.dataset, mine, workers=options.workers)):
                log.steps.append(_step(run, optimizer, step, epoch, len(batch), items))
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{log.steps[-1]['loss']:.4f}", refresh=False)
                finished = step % per_epoch == 0
                if finished:
                    log.add_training(started)
                    _sync_buffers(run)
                    evaluated = time.perf_counter()
                    losses = [row["loss"] for row in log.steps if row["epoch"] == epoch + 1]
                    accuracy = _holdout_accuracy(run.student, holdout, run.evaluation)
                    log.epochs.append(
                        {
                            "epoch": epoch + 1,
                            "step": step,
                            "loss": sum(losses) / len(losses),
                            "holdout_accuracy": accuracy,
                        }
                    )
                    log.seconds["evaluation"] += time.perf_counter() - evaluated
                    started = (time.perf_counter(), time.process_time())
                if options.checkpoint is not None and (finished or step % options.checkpoint_every == 0):
                    _save_checkpoint(run, protocol, optimizer, step, log)
            if step % per_epoch:
                log.add_training(started)
    finally:
        bar.close()
    _sync_buffers(run)


def _sync_buffers(run: _Run) -> None:
    """Process 0's buffers (batch norm's running statistics) in every process: DDP keeps only its parameters equal."""
    if run.processes.world > 1:
        import torch.distributed as dist

        for buffer in run.student.buffers():
            dist.broadcast(buffer, 0)


def _step(
    run: _Run, optimizer: torch.optim.Optimizer, step: int, epoch: int, batch: int, items: Sequence[LoadedImage]
) -> dict[str, Any]:
    """One optimisation step on this process's share of a batch of ``batch`` images."""
    settings, processes = run.settings, run.processes
    device = processes.device
    for item in items:
        check(
            item.image is not None,
            f"image '{run.data.training.name(item.index)}'",
            f"loaded before and cannot be read now ({item.reason}): the data changed during the run",
        )
    rate = settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / run.total))
    for group in optimizer.param_groups:
        group["lr"] = rate
    keys = [
        _shifted_key(run.mode, *_draw_shift(settings.seed, epoch, item.index, run.limit), run.geometries[item.index])
        for item in items
    ]
    inputs = _inputs(run, items, keys)
    if run.teacher_outputs is not None:
        targets = run.teacher_outputs[[item.index for item in items]].to(device)
    else:
        with torch.inference_mode():
            targets = _forward(run.teacher, _inputs(run, items, [IDENTITY] * len(items)), "teacher").float()
        targets = targets.clone()  # an inference tensor cannot take part in autograd's bookkeeping
    labels = torch.tensor([item.label for item in items], device=device) if run.use_labels else None
    run.student.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(sample_seed(settings.seed, _DROPOUT_STREAM, (step << 16) | processes.rank))
        assert run.trained is not None
        logits = run.trained(inputs)
    divergence, cross_entropy = _loss_terms(logits, targets, labels, settings.temperature)
    # DDP averages the processes' gradients: scaled so, the average is the gradient of the batch's mean loss
    loss = (divergence.sum() + settings.label_weight * cross_entropy.sum()) * (processes.world / batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sums = torch.stack([divergence.detach().sum(), cross_entropy.detach().sum()]).double()
    if processes.world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    distillation, labelled = (value / batch for value in sums.tolist())
    return {
        "step": step + 1,
        "epoch": epoch + 1,
        "lr": rate,
        "loss": distillation + settings.label_weight * labelled,
        "distillation": distillation,
        "cross_entropy": labelled if run.use_labels else None,
    }


# --------------------------------------------------------------------------- checkpoints


def _partial_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".partial.json")


def _save_checkpoint(
    run: _Run, protocol: dict[str, Any], optimizer: torch.optim.Optimizer, step: int, log: _Log
) -> None:
    if not run.processes.main or run.options.checkpoint is None:
        return
    path = Path(run.options.checkpoint)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "settings": json.dumps(protocol, sort_keys=True),
        "step": step,
        "student": run.student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "steps": json.dumps(log.steps),
        "epochs": json.dumps(log.epochs),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)  # only now: bad input found before the run writes nothing
    atomic_write_bytes(path, buffer.getvalue())
    progress = {"complete": step == run.total, "steps_done": step, "steps": run.total}
    atomic_write_text(_partial_path(path), json_text(progress))


def _load_checkpoint(run: _Run, protocol: dict[str, Any], optimizer: torch.optim.Optimizer, log: _Log) -> int:
    assert run.options.checkpoint is not None
    path = Path(run.options.checkpoint)
    subject = "--resume"
    payload = read_checkpoint(path, CHECKPOINT_FORMAT, "is not a shiftlab fine-tuning checkpoint")
    difference = _first_difference(json.loads(payload["settings"]), json.loads(json.dumps(protocol)))
    check(difference is None, subject, f"'{path}' was made with other settings ({difference}); start a new run instead")
    run.student.load_state_dict(payload["student"])
    optimizer.load_state_dict(payload["optimizer"])
    log.steps[:] = json.loads(payload["steps"])
    log.epochs[:] = json.loads(payload["epochs"])
    step: int = payload["step"]
    return step
