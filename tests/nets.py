"""Small networks with known equivariance, shared by the test modules."""

from __future__ import annotations

import torch
from torch import nn


def pooled_net(seed: int = 0) -> nn.Sequential:
    """Circular conv, ReLU, 2x2 max pooling, circular conv: exact for even shifts only from layer '2' on."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
    ).eval()


def fcn_stride_four(seed: int = 0) -> nn.Sequential:
    """Zero padding; conv - ReLU - maxpool(2) - conv stride 2: total stride 4, exact off the border for multiples."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),
    ).eval()
