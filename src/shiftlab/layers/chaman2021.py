"""Chaman & Dokmanic's truly shift-invariant ResNets, exactly: the ``resnet18_apsK`` layout of their ImageNet code.

Chaman & Dokmanic, "Truly Shift-Invariant Convolutional Neural Networks" (CVPR 2021;
achaman2/truly_shift_invariant_cnns,
``models/aps_models``). :func:`shiftlab.layers.make_shift_invariant` with ``recipe="chaman2021"`` turns a
torchvision ResNet into that layout, with their state_dict keys, so that a state_dict of their ``resnet18_apsK``
loads, and the outputs equal theirs with the same weights. What their layout is (our words):

* **Padding**: every 3x3 and 7x7 convolution pads circularly, by a padding layer before it (``conv1`` becomes
  ``conv1.0`` padding and ``conv1.1`` convolution, padding 0); 1x1 convolutions have none.
* **Stem** (their default ``pool_only=False``, the one they train): the 7x7 convolution runs at stride 1; after its
  batch norm and ReLU, ``maxpool`` is APS (stride 2), a circular padding of one pixel at the bottom and right, a 2x2
  max pool at stride 1, and APS again (``maxpool.0`` to ``maxpool.3``).
* **Blocks that subsample**: the strided 3x3 convolution runs at stride 1, and APS (``aps_down``, a new child of the
  block) comes after the batch norm and ReLU that follow it, in front of the next convolution. The shortcut runs APS
  first, at the phase the main path chose, then its 1x1 convolution at stride 1 (``downsample.0`` APS, ``.1``
  convolution, ``.2`` batch norm). The block becomes an :class:`APSResidualBlock`.
* **APS**: per sample, the polyphase component with the largest norm (l2 by default; their ``l1``, ``l_infty`` are
  ``l1``, ``linf`` here), ties going to the first in their order ``(0, 0), (1, 0), (0, 1), (1, 1)``; odd sizes are
  padded circularly by one at the bottom and right first. With a filter size above 1 ("APS + LPF"), a binomial blur
  at stride 1 with circular padding comes first, its filter kept per channel in the state_dict (``filt``).

Their code builds ``resnet18`` only (its bottleneck block refers to its stride before setting it, so ResNet-50 and
up cannot be built from it); bottleneck ResNets here follow the same rules: APS after the ReLU that follows the
strided 3x3 convolution (``conv2``), in front of ``conv3``. Their APS runs on CUDA for square maps at stride 2; this
one on any device, for any size. Their norms are computed in the map's precision, these in float64: on maps whose
two largest norms agree to float32 rounding (about 1e-7), the choices can differ.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from shiftlab.layers._edits import Spliced, rebuilt_conv
from shiftlab.layers._layouts import Layout, Plan, check_covered, expect, expect_shortcut, is_pool, planned
from shiftlab.layers.aps import APSPool2d
from shiftlab.layers.discovery import geometry

__all__ = ["CHAMAN2021_LAYOUTS", "APSResidualBlock"]

RECIPE = "chaman2021"

#: The order of a block's main path: APS (``aps_down``) after the ReLU that follows the strided convolution.
_MAIN_PATH: dict[type[nn.Module], tuple[str, ...]] = {
    BasicBlock: ("conv1", "bn1", "relu", "aps_down", "conv2", "bn2"),
    Bottleneck: ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "aps_down", "conv3", "bn3"),
}


class APSResidualBlock(nn.Module):
    """A torchvision residual block in Chaman & Dokmanic's layout: APS (``aps_down``) inside the main path.

    It takes over the block's layers under their own names (so the state_dict keys stay theirs) and adds
    ``aps_down``, which runs after the ReLU that follows the block's strided convolution (now at stride 1). The output
    is ``relu(main(x) + shortcut(x))``, the shortcut being ``downsample`` (which shares ``aps_down``'s polyphase
    choice through a :class:`~shiftlab.layers.aps.PhaseLink`).

    Shape:
        - input: :math:`(N, C_{in}, H, W)`
        - output: :math:`(N, C_{out}, \\lceil H / s \\rceil, \\lceil W / s \\rceil)`
    """

    def __init__(self, block: nn.Module, aps_down: APSPool2d) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.aps_down = aps_down
        self.main_path = _MAIN_PATH[type(block)]
        self.shortcut = "downsample" if "downsample" in self._modules else None
        self.train(block.training)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for name in self.main_path:
            out = self.get_submodule(name)(out)
        shortcut = x if self.shortcut is None else self.get_submodule(self.shortcut)(x)
        return self.get_submodule("relu")(out + shortcut)

    def extra_repr(self) -> str:
        return "main path: " + " -> ".join(self.main_path) + ", added to downsample"


def _aps(stride: tuple[int, int], kernel_size: int, norm: str, channels: int) -> APSPool2d:
    return APSPool2d(
        stride, norm, kernel_size=kernel_size, padding="circular", channels=channels, tie_break="column-major"
    )


def _padded(conv: nn.Conv2d) -> nn.Sequential:
    """Chaman's padded convolution: a circular padding layer, then the convolution at stride 1 without padding."""
    rows, columns = cast(tuple[int, int], conv.padding)
    return nn.Sequential(nn.CircularPad2d((columns, columns, rows, rows)), rebuilt_conv(conv, stride=(1, 1), padding=0))


def _aps_shortcut(old: nn.Conv2d, aps: Callable[[int], APSPool2d]) -> nn.Module:
    """The shortcut's strided 1x1 convolution: APS on its input, then the convolution at stride 1."""
    return Spliced(aps(old.in_channels), rebuilt_conv(old, stride=(1, 1)))


def _resnet(model: nn.Module, kernel_size: int, norm: str) -> Plan:
    assert isinstance(model, models.ResNet)
    expect(
        isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (7, 7) and model.conv1.padding == (3, 3),
        RECIPE,
        model,
        "conv1",
        "a 7x7 convolution with padding 3",
    )
    expect(is_pool(model.maxpool, nn.MaxPool2d, 3, 2, 1), RECIPE, model, "maxpool", "MaxPool2d(3, stride=2, padding=1)")
    stem = model.conv1.out_channels
    edits = [
        planned(
            model,
            "conv1",
            "downsampling",
            _padded,
            "circular padding in front (conv1.0), the convolution at stride 1 (conv1.1): its subsampling is APS "
            "after the ReLU, in maxpool.0 (their pool_only=False)",
        ),
        planned(
            model,
            "maxpool",
            "downsampling",
            lambda old: nn.Sequential(
                _aps((2, 2), kernel_size, norm, stem),
                nn.CircularPad2d((0, 1, 0, 1)),
                nn.MaxPool2d(2, stride=1),
                _aps((2, 2), kernel_size, norm, stem),
            ),
            "APS for the stem convolution, then a 2x2 max pool at stride 1 on a map padded circularly at the bottom "
            "and right, then APS",
        ),
    ]
    links = []
    for name, block in model.named_modules():
        if not isinstance(block, (BasicBlock, Bottleneck)):
            continue
        expect(type(block) in _MAIN_PATH, RECIPE, model, name, "torchvision's BasicBlock or Bottleneck")
        strided = "conv1" if isinstance(block, BasicBlock) else "conv2"
        for part, conv in block.named_children():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1):
                shape = geometry(conv)
                expect(
                    shape is not None and shape.total_padding() == (shape.extent[0] - 1,) * 2,
                    RECIPE,
                    model,
                    f"{name}.{part}",
                    "a square convolution padded to keep the map's size",
                )
                change = "downsampling" if conv.stride != (1, 1) else "padding"
                note = "circular padding in front, the convolution without padding (their keys: .0 and .1)"
                if conv.stride != (1, 1):
                    note += f"; at stride 1: the subsampling moves to '{name}.aps_down', after its batch norm and ReLU"
                edits.append(planned(model, f"{name}.{part}", change, _padded, note))
        conv = block.get_submodule(strided)
        expect(isinstance(conv, nn.Conv2d), RECIPE, model, f"{name}.{strided}", "a 3x3 Conv2d")
        if conv.stride == (1, 1):
            continue
        stride, channels = (conv.stride[0], conv.stride[1]), conv.out_channels
        expect_shortcut(RECIPE, model, name, stride)
        edits.append(
            planned(
                model,
                name,
                "downsampling",
                partial(APSResidualBlock, aps_down=_aps(stride, kernel_size, norm, channels)),
                f"APS (aps_down) after the ReLU that follows {strided}; its polyphase choice shared with "
                f"'{name}.downsample.0'",
            )
        )
        edits.append(
            planned(
                model,
                f"{name}.downsample.0",
                "downsampling",
                partial(_aps_shortcut, aps=partial(_aps, stride, kernel_size, norm)),
                f"the shortcut: APS at the phase '{name}.aps_down' chose, then its 1x1 convolution at stride 1 "
                "(downsample.0 and .1; the batch norm becomes downsample.2)",
            )
        )
        links.append((f"{name}.aps_down", f"{name}.downsample.0"))
    check_covered(RECIPE, model, edits)
    return Plan(edits, links)


#: The architectures of Chaman & Dokmanic's ImageNet code, as torchvision builds them.
CHAMAN2021_LAYOUTS: tuple[Layout, ...] = (
    Layout(
        models.ResNet,
        "ResNet (resnet18, their only ImageNet network; resnet34/50/101/152, resnext and wide_resnet follow the "
        "same rules)",
        _resnet,
    ),
)
