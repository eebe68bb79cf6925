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
