"""Tests for shiftlab.probing.borders: which layers treat the border as an edge, and the mode ``auto`` chooses from
them.

Known answers: a layer is periodic (commutes with circular shifts of multiples of its stride) exactly when it pads
circularly, or not at all with windows no wider than its stride; the tests check the rule against that property
measured by brute force (``torch.roll``), not only against its own description.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.layers import BlurPool2d, MaxBlurPool2d, make_circular, make_shift_invariant
from shiftlab.models import load_model
from shiftlab.ops import Convolve
from shiftlab.probing.borders import CUT, CUT_OR_OWN, PROBE_MODES, EdgeLayer, ModeChoice, choose_mode, edge_layers


def hows(model: nn.Module) -> list[tuple[str, str]]:
    return [(edge.name, edge.how) for edge in edge_layers(model)]


def commutes_with_rolls(layer: nn.Module, stride: int, size: int = 16) -> bool:
    """Brute force: layer(roll(x, stride)) == roll(layer(x), 1) for a random map whose size is a multiple of the
    stride (the property a periodic layer has)."""
    x = torch.rand(1, 2, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = layer.double().eval()
    with torch.no_grad():
        reference, moved = layer(x), layer(torch.roll(x, stride, dims=-1))
    if reference.shape[-1] * stride != size:
        return False
    return torch.allclose(moved, torch.roll(reference, 1, dims=-1), atol=1e-12)


PERIODIC = [
    ("circular conv", nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), 1),
    ("strided circular conv", nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"), 2),
    ("patch embedding", nn.Conv2d(2, 2, 4, stride=4), 4),
    ("1x1 strided conv", nn.Conv2d(2, 2, 1, stride=2), 2),
    ("2x2 max pool", nn.MaxPool2d(2), 2),
    ("circular pad then pool", nn.Sequential(nn.CircularPad2d(1), nn.MaxPool2d(3, stride=2)), 2),
    ("transposed, kernel = stride", nn.ConvTranspose2d(2, 2, 2, stride=2), 1),
    ("nearest upsampling", nn.Upsample(scale_factor=2, mode="nearest"), 1),
    ("circular blur pool", BlurPool2d(3, stride=2, padding="circular"), 2),
    ("circular Convolve", Convolve("sobel_y", padding="circular", relu=False), 1),
]
EDGES = [
    ("zero-padded conv", nn.Conv2d(2, 2, 3, padding=1), 1, "pad with zeros"),
    ("reflect conv", nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), 1, "pad by reflection"),
    ("valid conv", nn.Conv2d(2, 2, 3), 1, CUT),
    ("padded max pool", nn.MaxPool2d(3, stride=2, padding=1), 2, "pad with -inf"),
    ("overlapping max pool", nn.MaxPool2d(3, stride=2), 2, CUT),
    ("zero pad module", nn.ZeroPad2d(1), 1, "pad with zeros"),
    ("transposed, overlapping", nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1), 1, None),
    ("bilinear upsampling", nn.Upsample(scale_factor=2, mode="bilinear"), 1, None),
    ("reflect blur pool", BlurPool2d(3, stride=2), 2, "pad by reflection"),
    ("Zhang's max blur pool", MaxBlurPool2d(3, stride=2, padding="circular"), 2, CUT),
    ("valid Convolve", Convolve("sobel_y", relu=False), 1, CUT),
]


class TestEdgeLayers:
    @pytest.mark.parametrize(("what", "layer", "stride"), PERIODIC, ids=[item[0] for item in PERIODIC])
    def test_periodic_layers_are_not_edges_and_commute_with_rolls(self, what, layer, stride):
        assert edge_layers(layer) == []
        if not isinstance(layer, (nn.ConvTranspose2d, nn.Upsample)):  # (they grow the map: checked below)
            assert commutes_with_rolls(layer, stride)

    @pytest.mark.parametrize(("what", "layer", "stride", "how"), EDGES, ids=[item[0] for item in EDGES])
    def test_edge_layers_are_named_and_do_not_commute_with_rolls(self, what, layer, stride, how):
        found = edge_layers(layer)
        assert len(found) >= 1
        if how is not None:
            assert found[-1].how == how
        if not isinstance(layer, (nn.ConvTranspose2d, nn.Upsample, nn.ZeroPad2d)):
            assert not commutes_with_rolls(layer, stride)

    @pytest.mark.parametrize("upsampling", [nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1),
                                            nn.Upsample(scale_factor=2, mode="bilinear")])  # fmt: skip
    def test_upsampling_that_mixes_neighbours_sees_the_border(self, upsampling):
        # upsampling by 2 then moving by 2 pixels should equal moving the input by 1 pixel, if it were periodic
        x = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        layer = upsampling.double().eval()
        with torch.no_grad():
            moved, reference = layer(torch.roll(x, 1, dims=-1)), layer(x)
        assert not torch.allclose(moved, torch.roll(reference, 2, dims=-1), atol=1e-9)

    def test_a_padding_module_before_a_layer_counts_as_its_padding(self):
        # CircularPad2d(1) + MaxPool2d(3, 2): periodic (as make_circular builds it); ZeroPad2d + the same: an edge
        assert edge_layers(nn.Sequential(nn.CircularPad2d(1), nn.MaxPool2d(3, stride=2))) == []
        zero = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))
        assert hows(zero) == [("0", "pad with zeros")]  # the pool itself no longer cuts the border

    def test_average_pooling_that_leaves_the_padding_out(self):
        pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)  # PoolFormer's token mixer
        assert hows(pool) == [("", "pad and leave the padding out of the average")]

    def test_a_convolution_with_its_own_forward_and_no_padding(self):
        class SamePadConv(nn.Conv2d):  # timm's Conv2dSame: pads with zeros inside its forward
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

        assert hows(nn.Sequential(SamePadConv(2, 2, 3))) == [("0", CUT_OR_OWN)]

    def test_one_and_three_dimensional_layers_are_not_counted(self):
        # in 2-D networks they work on channels (ECA's channel attention pads a Conv1d with zeros)
        net = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1), nn.Conv3d(1, 1, 3, padding=1))
        assert edge_layers(net) == []


class TestChooseMode:
    def test_given_modes_are_kept(self):
        for mode in PROBE_MODES[1:]:
            assert choose_mode(nn.Conv2d(1, 1, 3, padding=1), mode) == ModeChoice(mode, "given")

    def test_a_choice_travels_unchanged(self):
        choice = ModeChoice("crop", "auto: something")
        assert choose_mode(nn.Identity(), choice) is choice

    def test_bad_mode(self):
        with pytest.raises(ShiftlabError) as caught:
            choose_mode(nn.Identity(), "wrap")
        assert str(caught.value) == "mode: must be one of auto, circular, zero, crop, fourier, got 'wrap'"

    def test_resnet18_is_probed_with_crop_shifts(self):
        pytest.importorskip("torchvision")
        model, _ = load_model("resnet18")
        choice = choose_mode(model)
        assert choice == ModeChoice(
            "crop",
            "auto: 17 layers pad with zeros (conv1, layer1.0.conv1, layer1.0.conv2 and 14 more); 1 layer pads with "
            "-inf (maxpool)",
        )
        # the counts, independently: every 3x3 and 7x7 convolution of a ResNet-18 pads with zeros
        padded = [
            name for name, module in model.named_modules() if isinstance(module, nn.Conv2d) and module.padding != (0, 0)
        ]
        assert len(padded) == 17

    def test_made_circular_it_is_probed_with_circular_shifts(self):
        pytest.importorskip("torchvision")
        model, _ = load_model("resnet18")
        circular, _ = make_circular(model)
        assert choose_mode(circular).mode == "circular"
        assert choose_mode(circular).reason.startswith("auto: every padding is circular (18 layers: conv1, maxpool.0")
        aps, _ = make_shift_invariant(circular, "aps", padding="circular")
        assert choose_mode(aps).mode == "circular"
        blurred, _ = make_shift_invariant(model, "blurpool")  # reflect-padded blur: an edge like the zero padding
        assert choose_mode(blurred).mode == "crop"

    @pytest.mark.parametrize(
        ("spec", "mode"),
        [("simple_cnn", "crop"), ("circular_cnn", "circular"), ("article", "crop"), ("digits_cnn", "crop")],
    )
    def test_bundled_networks(self, spec, mode):
        model, _ = load_model(spec)
        assert choose_mode(model).mode == mode

    def test_no_padding_at_all_is_circular_and_says_what_cannot_be_seen(self):
        patches = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2))
        choice = choose_mode(patches)
        assert choice.mode == "circular"
        assert choice.reason == (
            "auto: no layer pads or cuts the border (padding written inside a forward, such as F.pad, cannot be "
            "seen: give mode crop if the model pads there)"
        )

    def test_a_function_shows_no_layers(self):
        assert choose_mode(lambda x: x) == ModeChoice(
            "circular", "auto: a function, not an nn.Module: its padding cannot be seen"
        )

    def test_many_names_are_counted(self):
        net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(5)], nn.Conv2d(1, 1, 3))
        assert choose_mode(net).reason == (
            "auto: 5 layers pad with zeros (0, 1, 2 and 2 more); 1 layer cuts the border without padding (5)"
        )
        assert edge_layers(net)[-1] == EdgeLayer("5", "Conv2d", CUT)
