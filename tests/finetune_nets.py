"""Small classifiers for the fine-tuning tests, quick to train; also loaded by spec (tests/finetune_nets.py:NAME).

Each has a max pooling and a stride-2 convolution (what BlurPool and APS replace) and 3 classes, for 1-channel
images of 16x16. ``small_cnn`` has batch normalisation; ``plain_cnn`` has none, so that its gradient over a batch
does not depend on how the batch is split between processes; ``slow_cnn`` sleeps in every training step
(``SHIFTLAB_TEST_SLEEP`` seconds), so that a test can kill a run in the middle.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


def _layers(normalise: bool) -> list[nn.Module]:
    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not normalise)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU()] if normalise else [conv, nn.ReLU()]

    return [
        *block(1, 4),
        nn.MaxPool2d(2),
        *block(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ]


def small_cnn() -> nn.Module:
    return nn.Sequential(*_layers(normalise=True))


def plain_cnn() -> nn.Module:
    return nn.Sequential(*_layers(normalise=False))


class SlowCNN(nn.Sequential):
    """``small_cnn`` that sleeps ``SHIFTLAB_TEST_SLEEP`` seconds in every forward pass in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(float(os.environ.get("SHIFTLAB_TEST_SLEEP", "0")))
        return super().forward(x)


def slow_cnn() -> nn.Module:
    return SlowCNN(*_layers(normalise=True))


def finetune_in_process(rank: int, world: int, port: int, out: str) -> None:
    """Process ``rank`` of ``world``: fine-tune ``small_cnn`` converted to APS on 40 random images; save the student.

    Started by ``torch.multiprocessing`` with the environment torchrun would set, so that a test can compare what
    every process ends with.
    """
    from shiftlab.finetune import FinetuneSettings, finetune
    from shiftlab.layers import make_shift_invariant

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = small_cnn().eval()
    student, _ = make_shift_invariant(teacher, "aps", padding="circular")
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 16, 16, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    held = torch.rand(9, 1, 16, 16, generator=generator)
    result = finetune(teacher, student, (images, labels), FinetuneSettings(epochs=2, batch_size=8), holdout=held)
    torch.save({"state": student.state_dict(), "steps": result.steps, "epochs": result.epochs}, f"{out}/{rank}.pt")
