"""A transcription of Chaman & Dokmanic's ImageNet APS ResNet (``resnet18_apsK``), written anew for the tests.

Their code (achaman2/truly_shift_invariant_cnns, ``models/aps_models/resnet.py`` and ``apspool.py``) cannot be
installed and runs its APS on CUDA only, so the tests carry this description of it, which shares no code with
shiftlab. What it says about their network:

* Every 3x3 and 7x7 convolution is ``Sequential(circular padding layer, Conv2d without padding)``; 1x1 ones are
  plain. The stem convolution runs at stride 1 (their default ``pool_only=False``).
* ``maxpool`` is ``Sequential(ApsPool, circular padding (0, 1, 0, 1), MaxPool2d(2, stride=1), ApsPool)``.
* A block that subsamples runs its convolutions at stride 1 and calls ``aps_down`` on the output of the ReLU after
  the first 3x3 convolution's batch norm (basic block) or after the 3x3 convolution's (bottleneck); the shortcut is
  ``Sequential(ApsPool, 1x1 Conv2d, BatchNorm2d)`` and its ApsPool takes the phase ``aps_down`` chose.
* ApsPool: with a filter size above 1, a binomial blur (outer product of a row of Pascal's triangle, normalised,
  kept per channel in ``filt``) at stride 1 after circular padding of ``(k - 1) // 2`` before and ``k // 2`` after;
  then an odd height or width is padded circularly by one row or column at the end; the four components are listed
  as ``x[::2, ::2]``, ``x[1::2, ::2]``, ``x[::2, 1::2]``, ``x[1::2, 1::2]`` and, per sample, the one with the largest
  norm over all channels and positions is kept, the first one on a tie (they compute the norms in the map's own
  precision; this transcription in float64, see ``_norm``).

Their bottleneck block cannot be built (it reads its stride before setting it); the one here follows the rules above.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(parts: torch.Tensor, criterion: str) -> torch.Tensor:
    # In float64, unlike theirs: on a blurred stem map the four norms can agree to 1e-6, below float32 rounding of a
    # sum over 50,000 values, and a float32 choice then depends on the summation order (theirs differs on CPU and
    # CUDA). The rule, not the rounding, is what is compared.
    flat = parts.flatten(2).double()  # (N, 4, everything else)
    if criterion == "l2":
        return flat.norm(p=2, dim=2)
    if criterion == "l1":
        return flat.norm(p=1, dim=2)
    return flat.abs().max(dim=2).values


class WrapPad(nn.Module):
    """``F.pad(x, pads, mode="circular")`` as a layer (their ``circular_pad``)."""

    def __init__(self, pads: list[int]) -> None:
        super().__init__()
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, mode="circular")


class ReferenceApsPool(nn.Module):
    def __init__(self, channels: int, filt_size: int, criterion: str = "l2") -> None:
        super().__init__()
        self.filt_size, self.criterion = filt_size, criterion
        if filt_size > 1:
            row = torch.tensor([float(math.comb(filt_size - 1, i)) for i in range(filt_size)])
            grid = row[:, None] * row[None, :]
            self.register_buffer("filt", (grid / grid.sum())[None, None].repeat(channels, 1, 1, 1))

    def components(self, x: torch.Tensor) -> torch.Tensor:
        if self.filt_size > 1:
            before, after = (self.filt_size - 1) // 2, self.filt_size // 2
            x = F.conv2d(F.pad(x, [before, after, before, after], mode="circular"), self.filt, groups=x.shape[1])
        if x.shape[2] % 2:
            x = F.pad(x, [0, 0, 0, 1], mode="circular")
        if x.shape[3] % 2:
            x = F.pad(x, [0, 1, 0, 0], mode="circular")
        return torch.stack([x[:, :, ::2, ::2], x[:, :, 1::2, ::2], x[:, :, ::2, 1::2], x[:, :, 1::2, 1::2]], dim=1)

    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.components(x)
        phase = _norm(parts, self.criterion).argmax(dim=1)
        return parts[torch.arange(len(parts)), phase], phase

    def take(self, x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        parts = self.components(x)
        return parts[torch.arange(len(parts)), phase]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choose(x)[0]


def wrapped_conv(cin: int, cout: int, size: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(WrapPad([size // 2] * 4), nn.Conv2d(cin, cout, size, groups=groups, bias=False))


class ReferenceBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, filt_size: int, criterion: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = wrapped_conv(cin, planes, 3), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = wrapped_conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.stride = stride
        if stride > 1:
            self.aps_down = ReferenceApsPool(planes, filt_size, criterion)
        self.downsample = _shortcut(cin, planes, stride, filt_size, criterion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        phase = None
        if self.stride > 1:
            out, phase = self.aps_down.choose(out)
        out = self.bn2(self.conv2(out))
        return self.relu(out + _shortcut_forward(self.downsample, x, phase))


class ReferenceBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, filt_size: int, criterion: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = wrapped_conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        if stride > 1:
            self.aps_down = ReferenceApsPool(planes, filt_size, criterion)
        self.downsample = _shortcut(cin, planes * 4, stride, filt_size, criterion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        phase = None
        if self.stride > 1:
            out, phase = self.aps_down.choose(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + _shortcut_forward(self.downsample, x, phase))


def _shortcut(cin: int, cout: int, stride: int, filt_size: int, criterion: str) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    layers: list[nn.Module] = [ReferenceApsPool(cin, filt_size, criterion)] if stride > 1 else []
    return nn.Sequential(*layers, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def _shortcut_forward(shortcut: nn.Sequential | None, x: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
    if shortcut is None:
        return x
    layers = list(shortcut)
    if phase is not None:
        x = layers.pop(0).take(x, phase)
    for layer in layers:
        x = layer(x)
    return x


class ReferenceResNet(nn.Module):
    def __init__(self, block: type, depths: list[int], filt_size: int = 1, criterion: str = "l2") -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = wrapped_conv(3, 64, 7), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.Sequential(
            ReferenceApsPool(64, filt_size, criterion),
            WrapPad([0, 1, 0, 1]),
            nn.MaxPool2d(2, stride=1),
            ReferenceApsPool(64, filt_size, criterion),
        )
        cin = 64
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 1 and position == 0 else 1
                blocks.append(block(cin, planes, stride, filt_size, criterion))
                cin = planes * block.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


#: The depths of torchvision's ResNets, and their blocks.
DEPTHS = {
    "resnet18": (ReferenceBasicBlock, [2, 2, 2, 2]),
    "resnet34": (ReferenceBasicBlock, [3, 4, 6, 3]),
    "resnet50": (ReferenceBottleneck, [3, 4, 6, 3]),
    "resnet101": (ReferenceBottleneck, [3, 4, 23, 3]),
}


def reference_resnet(name: str, filt_size: int = 1, criterion: str = "l2") -> ReferenceResNet:
    block, depths = DEPTHS[name]
    return ReferenceResNet(block, depths, filt_size, criterion)
