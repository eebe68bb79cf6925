"""Models with known answers for the evaluation tests; also loaded by spec (tests/evaluation_nets.py:NAME)."""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class PixelProbe(nn.Module):
    """Class 1 exactly when the input's top-left pixel (channel 0) is bright; logits [0, 0] (a tie: class 0) else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x[:, 0, 0, 0] > 0.5).to(x.dtype)
        return torch.stack([torch.zeros_like(bright), bright], dim=1)


class ChannelMax(nn.Module):
    """Logits = the largest value of each channel: exactly invariant to any circular shift (a max ignores order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class FeatureMap(nn.Module):
    """A feature extractor without classes: a 4-D output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def small_classifier() -> nn.Module:
    """Zero padding and a stride: its answers change under shifts (10 classes)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


class PerSample(nn.Module):
    """Runs the wrapped model one image at a time: its outputs cannot depend on the batch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.inner(x[index : index + 1]) for index in range(x.shape[0])])


def per_sample_classifier() -> nn.Module:
    return PerSample(small_classifier())


class Slow(nn.Module):
    """small_classifier, sleeping SHIFTLAB_TEST_SLEEP seconds per forward pass (for the kill-and-resume test)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("SHIFTLAB_TEST_SLEEP", "0")))
        return self.inner(x)
