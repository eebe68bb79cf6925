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


# --------------------------------------------------------------------------- dense (segmentation) models


class CircularSegmenter(nn.Module):
    """Circular-padded 3x3 convolutions and a per-pixel classifier (4 classes), at ``stride`` (1: no stride).

    Every layer commutes with circular shifts (by multiples of the stride): its maps move with the input exactly.
    Returns a dict, as torchvision's segmentation models do.
    """

    def __init__(self, stride: int = 1, classes: int = 4) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular", bias=False),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=stride, padding=1, padding_mode="circular", bias=False),
            nn.ReLU(),
            nn.Conv2d(8, classes, 1, bias=False),
        )
        for parameter in self.parameters():  # centred weights: the predicted class varies from pixel to pixel
            parameter.data = torch.randn(parameter.shape, generator=generator)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x - 0.5), "aux": x.mean(dim=1, keepdim=True)}


class ZeroPaddedSegmenter(CircularSegmenter):
    """The same with zero padding: its maps change near the borders of the input."""

    def __init__(self) -> None:
        super().__init__()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.padding_mode = "zeros"


class PixelClassifier(nn.Module):
    """The class of each pixel is its brightest channel: a per-pixel function, equivariant to any shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 10.0


def lraspp(classes: int = 4) -> nn.Module:
    """torchvision's LR-ASPP on MobileNetV3-Large, random weights (no download: weights_backbone=None)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=classes
    )
    with torch.no_grad():  # untrained, its biases decide every pixel alike: let the features decide instead
        for head in (model.classifier.low_classifier, model.classifier.high_classifier):
            head.bias.zero_()
            head.weight.mul_(1000.0)
    return model.eval()


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
