"""Models with known answers for the evaluation tests; also loaded by spec (tests/evaluation_nets.py:NAME)."""

from __future__ import annotations

import os
import signal
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


class NaNLogits(nn.Module):
    """small_classifier's logits times NaN: every output is NaN (argmax 0 everywhere: 'perfectly consistent')."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


class InfWhenBright(nn.Module):
    """small_classifier, with an infinite logit for every input whose mean is above 0.6 (bright images only)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        bright = x.flatten(1).mean(dim=1) > 0.6
        return torch.where(bright[:, None], torch.full_like(logits, float("inf")), logits)


class Stopping(nn.Module):
    """small_classifier that fails on its SHIFTLAB_TEST_FAIL_AT-th forward pass, after a short pause: with
    KeyboardInterrupt (as Ctrl-C would) when SHIFTLAB_TEST_FAIL is 'interrupt', killed (SIGKILL) when it is 'kill',
    else with a RuntimeError; on rank SHIFTLAB_TEST_FAIL_RANK only when that is set."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_classifier()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        rank = os.environ.get("SHIFTLAB_TEST_FAIL_RANK")
        due = self.calls == int(os.environ.get("SHIFTLAB_TEST_FAIL_AT", "0"))
        if due and (rank is None or rank == os.environ.get("RANK")):
            how = os.environ.get("SHIFTLAB_TEST_FAIL")
            if how == "interrupt":
                raise KeyboardInterrupt
            time.sleep(0.5)  # the other processes are waiting in a collective operation by now
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("out of memory (a test)")
        return self.inner(x)
