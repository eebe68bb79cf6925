"""Tests for make_shift_invariant, the ``+blurpool``/``+aps``/``+circular`` model specs and ``shiftlab convert``.

What is checked: APS with circular padding makes predictions *identical* under every circular shift of a grid,
before any training (torchvision's ResNet-18, and a user model with odd sizes and stride 3), and the probe sees
every layer's map as a shifted copy; BlurPool lowers the aliasing the probe measures and raises the consistency of
predictions, without being exact; conversions of torchvision models change exactly the layers their definitions
make downsample, keep every weight, and run; bad input fails with one line and changes nothing.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import shiftlab
from shiftlab import cli
from shiftlab.errors import ShiftlabError
from shiftlab.layers import (
    APSConv2d,
    APSPool2d,
    BlurConv2d,
    BlurPool2d,
    find_downsampling_layers,
    make_shift_invariant,
    split_model_spec,
)
from shiftlab.models import load_model, load_weights

torchvision = pytest.importorskip("torchvision")


def torchvision_model(name: str, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def stride_three_net(seed: int = 0) -> nn.Sequential:
    """A user model with two stride-3 downsamplings (a 5x5 convolution and a 3x3 max pool)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 5, stride=3, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(3, stride=3), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
        ).eval()  # fmt: skip


def four_stride_net(seed: int = 0) -> nn.Sequential:
    """A small classifier with four stride-2 layers (max pools and strided convolutions), zero padding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        ).eval()  # fmt: skip


def rolled_outputs(model: nn.Module, x: torch.Tensor, shifts: list[tuple[int, int]]) -> torch.Tensor:
    """``(shifts, N, classes)``: the model's output for every circular shift of ``x``."""
    with torch.no_grad():
        batch = torch.cat([torch.roll(x, shift, (2, 3)) for shift in shifts])
        return model(batch).reshape(len(shifts), x.shape[0], -1)


def smooth_images(count: int, size: int, seed: int = 1) -> torch.Tensor:
    noise = torch.rand(count, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(noise, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- APS: exact


class TestApsExact:
    def test_resnet18_identical_predictions_under_circular_shifts(self):
        model = torchvision_model("resnet18")
        converted, _ = make_shift_invariant(model, "aps", padding="circular")
        x = smooth_images(1, 32)
        shifts = [(dy, dx) for dy in (0, 1, 2, 5, 13, 24) for dx in (0, 3, 7, 30)]
        outputs = rolled_outputs(converted, x, shifts)
        assert (outputs.argmax(-1) == outputs[0].argmax(-1)).all()
        torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-5)
        original = rolled_outputs(model, x, shifts)
        assert (original - original[0]).abs().max() > 1e-2  # the unconverted model is not invariant

    def test_user_model_with_odd_sizes_and_stride_three(self):
        model = stride_three_net()
        converted, changes = make_shift_invariant(model, "aps", padding="circular")
        assert [row["layer"] for row in changes if row["change"] == "downsampling"] == ["2", "5"]
        x = torch.rand(2, 3, 27, 45, generator=torch.Generator().manual_seed(0))
        shifts = [(dy, dx) for dy in range(27) for dx in range(0, 45, 4)]
        outputs = rolled_outputs(converted, x, shifts)
        assert (outputs.argmax(-1) == outputs[0].argmax(-1)).all()
        torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-5)
        assert (rolled_outputs(model, x, shifts) - outputs[0]).abs().max() > 1e-3

    @pytest.mark.parametrize(
        ("build", "size", "strides"),
        [
            (lambda: torchvision_model("resnet18"), (32, 32), {(2, 2), (4, 4), (8, 8), (16, 16)}),
            (stride_three_net, (81, 99), {(3, 3), (9, 9)}),  # sizes at which the probe finds stride 9
        ],
        ids=["resnet18", "stride-3"],
    )
    def test_probe_sees_shifted_copies_at_every_layer(self, build, size, strides):
        model = build()
        converted, _ = make_shift_invariant(model, "aps", padding="circular")
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
        shifts = [(0, 1), (1, 0), (3, 5), (7, 13), (16, 16)]
        rows = shiftlab.probe(converted, x, shifts=shifts, mode="circular").rows
        assert strides <= {tuple(row["stride"]) for row in rows if row["stride"]}
        assert any(not row["multiple"] for row in rows if row["stride"] and max(row["stride"]) > 1)
        assert max(row["rel_l2"] for row in rows) < 1e-5, max(rows, key=lambda row: row["rel_l2"])
        if len(list(model.modules())) < 20:  # (the big one is known not to be invariant: see the test above)
            original = shiftlab.probe(model, x, shifts=shifts, mode="circular").rows
            assert max(row["rel_l2"] for row in original) > 0.1

    def test_residual_shortcuts_linked(self):
        _, changes = make_shift_invariant(torchvision_model("resnet18"), "aps", padding="circular")
        notes = {row["layer"]: row["note"] for row in changes if row["change"] == "downsampling"}
        for stage in (2, 3, 4):
            main, shortcut = f"layer{stage}.0.conv1", f"layer{stage}.0.downsample.0"
            assert notes[main] == f"polyphase choice shared with '{shortcut}' (residual shortcut)"
            assert notes[shortcut] == f"polyphase choice shared with '{main}' (residual shortcut)"
        assert notes["conv1"] == notes["maxpool"] == ""


# --------------------------------------------------------------------------- BlurPool: better, not exact


class TestBlurPool:
    def test_lowers_aliasing_and_raises_consistency(self):
        model = four_stride_net()
        converted, changes = make_shift_invariant(model, "blurpool")
        assert len(changes) == 4
        x = smooth_images(64, 32)
        shifts = [(0, 1), (1, 1), (1, 2), (0, 3)]
        aliasing, consistency = [], []
        for net in (model, converted):
            rows = shiftlab.probe(net, x[:4], shifts=shifts, mode="circular").rows
            strided = [
                row["rel_l2"] for row in rows if row["stride"] and max(row["stride"]) > 1 and not row["multiple"]
            ]
            aliasing.append(sum(strided) / len(strided))
            with torch.no_grad():  # centre the random head, so that the top-1 class varies between images
                net[-1].bias -= net(x).mean(0)
            outputs = rolled_outputs(net, x, [(0, 0), *shifts])
            consistency.append(float((outputs[1:].argmax(-1) == outputs[0].argmax(-1)).float().mean()))
        assert aliasing[1] < 0.7 * aliasing[0]
        assert aliasing[1] > 1e-3  # better, not exact
        assert consistency[1] > consistency[0] + 0.1
        assert consistency[1] < 1.0

    def test_recipes(self):
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, padding=1), nn.AvgPool2d(2),
            nn.Conv2d(4, 4, 1, stride=(2, 1)),
        )  # fmt: skip
        converted, changes = make_shift_invariant(model, "blurpool", kernel_size=5)
        assert [row["after"] for row in changes] == [
            "BlurConv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)) + "
            "BlurPool2d(kernel_size=5, stride=2, padding='reflect')",
            "MaxPool2d(kernel_size=3, stride=1, padding=1, dilation=1, ceil_mode=False) + "
            "BlurPool2d(kernel_size=5, stride=2, padding='reflect')",
            "BlurPool2d(kernel_size=5, stride=2, padding='reflect')",
            "BlurConv2d(4, 4, kernel_size=(1, 1), stride=(1, 1)) + "
            "BlurPool2d(kernel_size=(5, 1), stride=(2, 1), padding='reflect')",
        ]
        assert changes[2]["note"] == (
            "Zhang's recipe: the 2x2 average becomes the binomial blur; output size H: ceil(H / 2) instead of "
            "floor((H + 0 - 2) / 2) + 1; W: ceil(W / 2) instead of floor((W + 0 - 2) / 2) + 1"
        )
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        assert converted(x).shape == model(x).shape


# --------------------------------------------------------------------------- torchvision models

#: The layers that subsample, from the architectures' definitions in torchvision.
TORCHVISION_DOWNSAMPLING = {
    # stem conv and max pool; the first block of stages 2-4: its first 3x3 conv and its 1x1 shortcut
    "resnet18": ["conv1", "maxpool"]
    + [f"layer{stage}.0.{part}" for stage in (2, 3, 4) for part in ("conv1", "downsample.0")],
    # cfg "A": a 2x2 max pool after the convolutions of each of the five stages
    "vgg11": ["features.2", "features.5", "features.10", "features.15", "features.20"],
    # the stem conv and the depthwise conv of the blocks whose config says stride 2 (blocks 1, 2, 4 and 9)
    "mobilenet_v3_small": ["features.0.0", "features.1.block.0.0", "features.2.block.1.0"]
    + ["features.4.block.1.0", "features.9.block.1.0"],
    # the stem conv and the depthwise conv of the first block of the stages with stride 2 (stages 2, 3, 4 and 6)
    "efficientnet_b0": ["features.0.0"] + [f"features.{stage}.0.block.1.0" for stage in (2, 3, 4, 6)],
    # the 4x4 stride-4 patchify stem and the 2x2 stride-2 convolution between stages
    "convnext_tiny": ["features.0.0", "features.2.1", "features.4.1", "features.6.1"],
}


@pytest.mark.parametrize(
    ("name", "size"),
    [
        # Sizes: torch's circular padding needs maps at least as large as the padding, so the last stage's maps
        # (1/32 of the input) must be 2 pixels for 5x5 depthwise convolutions and 3 for ConvNeXt's 7x7 ones.
        ("resnet18", 32),
        pytest.param("mobilenet_v3_small", 64, marks=pytest.mark.slow),
        pytest.param("vgg11", 32, marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", 64, marks=pytest.mark.slow),
        pytest.param("convnext_tiny", 96, marks=pytest.mark.slow),
    ],
)
def test_torchvision_conversion(name, size):
    model = torchvision_model(name)
    state = model.state_dict()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for method, padding in (("blurpool", None), ("aps", "circular")):
        converted, changes = make_shift_invariant(model, method, padding=padding)
        downsampling = [row["layer"] for row in changes if row["change"] == "downsampling"]
        assert downsampling == TORCHVISION_DOWNSAMPLING[name]
        assert all(row["change"] == "padding" for row in changes if row["layer"] not in downsampling)
        assert (len(changes) > len(downsampling)) == (padding == "circular")
        converted_state = converted.state_dict()
        assert list(converted_state) == list(state)
        assert all(torch.equal(converted_state[key], value) for key, value in state.items())
        with torch.no_grad():
            assert converted(x).shape == model(x).shape
        kinds = (BlurConv2d, BlurPool2d) if method == "blurpool" else (APSConv2d, APSPool2d)
        assert sum(isinstance(module, kinds) for module in converted.modules()) >= len(downsampling)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_find_downsampling_layers_agrees_with_the_definitions():
    names = [name for name, _ in find_downsampling_layers(torchvision_model("resnet18"))]
    assert names == TORCHVISION_DOWNSAMPLING["resnet18"]


# --------------------------------------------------------------------------- weights, copies, surgery


class TestWeightsAndCopies:
    def test_state_dict_loads_before_and_after(self, tmp_path):
        model = four_stride_net()
        with torch.no_grad():
            model[1].running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
        before = tmp_path / "before.safetensors"
        save_file(model.state_dict(), str(before))
        converted, _ = make_shift_invariant(four_stride_net(seed=1), "aps", padding="circular")
        load_weights(converted, before)  # weights of the unconverted model fit the converted one
        reference, _ = make_shift_invariant(model, "aps", padding="circular")
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(converted(x), reference(x), rtol=0, atol=0)
        after = tmp_path / "after.pt"
        torch.save(converted.state_dict(), after)
        load_weights(four_stride_net(seed=2), after)  # and the other way round

    def test_deep_copy_by_default(self):
        model = four_stride_net()
        converted, _ = make_shift_invariant(model, "blurpool")
        assert not any(module.training for module in converted.modules())  # eval() kept
        assert type(model[4]) is nn.Conv2d and model[4].stride == (2, 2) and type(model[3]) is nn.MaxPool2d
        assert converted[4].weight is not model[4].weight
        assert torch.equal(converted[4].weight, model[4].weight)

    def test_inplace_keeps_the_parameter_objects(self):
        model = four_stride_net()
        weight = model[4].weight
        converted, _ = make_shift_invariant(model, "aps", inplace=True)
        assert converted is model and isinstance(model[4], APSConv2d) and model[4].weight is weight

    def test_module_registered_twice_is_replaced_everywhere(self):
        pool = nn.MaxPool2d(2)
        model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), pool, nn.Conv2d(3, 3, 3, padding=1), pool)
        converted, changes = make_shift_invariant(model, "blurpool")
        assert [row["layer"] for row in changes] == ["1"]
        assert converted[1] is converted[3] and isinstance(converted[3], nn.Sequential)

    def test_the_model_itself_downsamples(self):
        converted, changes = make_shift_invariant(nn.MaxPool2d(2), "aps")
        assert isinstance(converted, nn.Sequential) and changes[0]["layer"] == ""
        assert converted(torch.rand(1, 2, 6, 6)).shape == (1, 2, 3, 3)

    def test_shortcut_named_shortcut_is_linked_and_exact(self):
        class Block(nn.Module):  # the usual CIFAR ResNet block
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
                self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
                self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))

        torch.manual_seed(0)
        model = nn.Sequential(Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
        converted, changes = make_shift_invariant(model, "aps", padding="circular")
        assert changes[0]["note"] == "polyphase choice shared with '0.shortcut.0' (residual shortcut)"
        x = torch.rand(3, 4, 10, 12, generator=torch.Generator().manual_seed(0))
        outputs = rolled_outputs(converted, x, [(0, 0), (1, 0), (0, 1), (5, 7)])
        torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-6)

    def test_shortcut_that_cannot_be_linked_says_so(self):
        model = nn.Sequential()
        model.add_module("conv", nn.Conv2d(3, 3, 3, stride=2, padding=1))
        model.add_module("pool", nn.MaxPool2d(2))
        model.add_module("downsample", nn.AvgPool2d(2))
        _, changes = make_shift_invariant(model, "aps")
        assert changes[2]["note"] == (
            "not linked to a main path: 1 downsampling layer(s) in 'downsample' and 2 elsewhere in the model "
            "(a shortcut is linked when each side has exactly one, at the same stride)"
        )

    @pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
    def test_a_path_that_is_the_only_downsampling_is_no_shortcut(self, name):
        # timm's ConvNeXt stages.N.downsample and a ViT's patch_embed.proj carry a shortcut's name, but their parent
        # has no other downsampling path: nothing to link, and no note that says otherwise.
        timm = pytest.importorskip("timm")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False)
        _, changes = make_shift_invariant(model, "aps")
        named = [row for row in changes if row["layer"].split(".")[-2:-1] in (["downsample"], ["patch_embed"])]
        assert named and all(row["note"] == "" for row in named)
        assert not any("linked" in row["note"] for row in changes)


# --------------------------------------------------------------------------- bad input


class Strided(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


UNSUPPORTED_TEXT = "make_shift_invariant converts strided Conv2d, MaxPool2d and AvgPool2d layers"


class TestBadInput:
    @pytest.mark.parametrize(
        ("layer", "message"),
        [
            (
                nn.ConvTranspose2d(3, 3, 2, stride=2),
                "layer '1' (ConvTranspose2d): a strided ConvTranspose2d (stride (2, 2)) is not supported; "
                f"{UNSUPPORTED_TEXT}",
            ),
            (
                nn.FractionalMaxPool2d(2, output_ratio=0.5),
                "layer '1' (FractionalMaxPool2d): FractionalMaxPool2d subsamples at random fractional positions, "
                f"which no recipe covers; {UNSUPPORTED_TEXT}",
            ),
            (
                nn.LPPool2d(2, 2),
                f"layer '1' (LPPool2d): a strided LPPool2d (stride None) is not supported; {UNSUPPORTED_TEXT}",
            ),
            (
                nn.PixelUnshuffle(2),
                "layer '1' (PixelUnshuffle): PixelUnshuffle subsamples by moving pixels into channels, which no "
                f"recipe covers; {UNSUPPORTED_TEXT}",
            ),
            (
                nn.MaxPool2d(2, return_indices=True),
                "layer '1' (MaxPool2d): a MaxPool2d with return_indices=True (for MaxUnpool2d) is not supported; "
                f"{UNSUPPORTED_TEXT}",
            ),
            (
                Strided(3, 3, 3, stride=2),
                "layer '1' (Strided): Strided has its own forward, which a conversion would bypass; "
                f"{UNSUPPORTED_TEXT} of exactly those types",
            ),
        ],
        ids=["conv-transpose", "fractional", "lp-pool", "pixel-unshuffle", "indices", "subclass"],
    )
    def test_unsupported_layer_named_and_nothing_changed(self, layer, message):
        model = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1), layer)
        for method in ("blurpool", "aps"):
            with pytest.raises(ShiftlabError) as error:
                make_shift_invariant(model, method, inplace=True)
            assert str(error.value) == message
        assert type(model[0]) is nn.Conv2d and model[0].stride == (2, 2)

    def test_no_downsampling_layer(self):
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)))
        assert str(error.value) == (
            "model Sequential: has no downsampling layer (a strided Conv2d, MaxPool2d or AvgPool2d): "
            "nothing to make shift-invariant"
        )

    def test_aps_on_a_model_whose_padding_cannot_be_circular(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2))
        before = repr(model)
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, "aps", padding="circular", inplace=True)
        assert str(error.value) == (
            "layer '1' (Conv2d): cannot be made circular: its window is 3x3 and its padding 0x0 pixels in all, so it "
            "changes the map's size by (-2, -2); only layers that keep the size commute with circular shifts"
        )
        assert repr(model) == before
        make_shift_invariant(model, "aps")  # without circular padding it converts (not exact)

    @pytest.mark.parametrize("method", ["aps", "blurpool"])
    def test_strided_valid_convolution_refused_under_circular_padding(self, method):
        model = nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), nn.Flatten(), nn.Linear(1176, 10))
        before = repr(model)
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, method, padding="circular", inplace=True)
        assert str(error.value) == (
            "layer '0' (Conv2d): cannot be made circular: it is a \"valid\" convolution (a 5x5 window at stride 2, "
            "no padding), and circular padding would change its output size (H: floor((H - 5) / 2) + 1 would become "
            "ceil(H / 2); W: floor((W - 5) / 2) + 1 would become ceil(W / 2)); only layers that keep the size commute "
            "with circular shifts"
        )
        assert repr(model) == before
        converted, _ = make_shift_invariant(model, method)  # without circular padding: the same size, it runs
        assert converted(torch.rand(2, 1, 32, 32)).shape == (2, 10)

    def test_strided_convolutions_that_need_no_padding_pass(self):
        # A window no wider than the stride (1x1, patchify) has nothing to pad; padded ones get circular padding.
        model = nn.Sequential(
            nn.Conv2d(3, 4, 2, stride=2), nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, (1, 3), stride=(2, 3)),
            nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 2 * 1, 3),
        )  # fmt: skip
        converted, _ = make_shift_invariant(model, "aps", padding="circular")
        x = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(0))
        assert converted(x).shape == model(x).shape == (1, 3)

    def test_strided_layer_with_too_much_padding(self):
        model = nn.Sequential(nn.ZeroPad2d(3), nn.Conv2d(3, 4, 3, stride=2, padding=1))
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, "aps", padding="circular")
        assert str(error.value) == (
            "layer '1' (Conv2d): cannot be made circular: its window is 3x3 and its padding 8x8 pixels in all, so it "
            "changes the map's size by (+6, +6) (before subsampling); only layers that keep the size commute with "
            "circular shifts"
        )

    def test_converted_already(self):
        converted, _ = make_shift_invariant(four_stride_net(), "blurpool")
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(converted, "aps")
        assert (
            str(error.value)
            == "model Sequential: was converted already (layer '3.1' is a BlurPool2d); convert the original"
        )

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"method": "lpf"}, "method: must be one of blurpool, aps, got 'lpf'"),
            ({"padding": "zeros"}, "padding: must be one of None, circular, got 'zeros'"),
            ({"kernel_size": 8}, "kernel_size: must be an integer >= 1 and <= 7, got 8"),
            ({"norm": "l0"}, "norm: must be one of l2, l1, linf, got 'l0'"),
        ],
    )
    def test_arguments(self, kwargs, message):
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(four_stride_net(), **kwargs)
        assert str(error.value) == message

    def test_not_a_model(self):
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant("resnet18")  # type: ignore[arg-type]
        assert str(error.value) == "model: expected a torch.nn.Module, got str"


# --------------------------------------------------------------------------- model specs


class TestSpecs:
    def test_suffixes(self):
        model, info = load_model("resnet18+circular+aps")
        assert info.spec == "resnet18+circular+aps" and info.source == "torchvision"
        assert (
            info.description
            == "torchvision resnet18, random weights (seed 0), converted (circular+aps: 21 layers changed)"
        )
        assert isinstance(model.conv1, APSConv2d) and model.layer1[0].conv1.padding_mode == "circular"
        model, info = load_model("simple_cnn+blurpool5")
        assert isinstance(model.features[3], nn.Sequential) and model.features[3][1].kernel_size == (5, 5)
        model, _ = load_model("article+aps")
        assert model(torch.rand(1, 1, 34, 34)).shape == (1, 1, 4, 4)

    def test_split(self):
        assert split_model_spec("resnet18") == ("resnet18", None)
        base, conversion = split_model_spec("resnet18+aps3+circular")
        assert base == "resnet18" and conversion is not None
        assert (conversion.method, conversion.padding, conversion.kernel_size) == ("aps", "circular", 3)

    def test_file_path_with_a_plus(self, tmp_path):
        folder = tmp_path / "a+b"
        folder.mkdir()
        (folder / "my+net.py").write_text(
            "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))\n"
        )
        plain, info = load_model(f"{folder / 'my+net.py'}:build")
        assert type(plain[0]) is nn.Conv2d and info.source == "import"
        converted, info = load_model(f"{folder / 'my+net.py'}:build+aps")
        assert isinstance(converted[0], APSConv2d) and info.spec.endswith("my+net.py:build+aps")

    def test_weights_after_conversion(self, tmp_path):
        model, _ = load_model("simple_cnn")
        with torch.no_grad():
            model.head.bias.fill_(0.5)
        path = tmp_path / "w.pt"
        torch.save(model.state_dict(), path)
        converted, _ = load_model("simple_cnn+circular+aps", weights=path)
        assert torch.equal(converted.head.bias, torch.full((10,), 0.5))

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (
                "resnet18+blurpool+aps",
                "model: 'resnet18+blurpool+aps' asks for 2 conversions (blurpool, aps); give one of +blurpool and +aps",
            ),
            ("resnet18+circular+circular", "model: 'resnet18+circular+circular': '+circular' is given twice"),
            ("+aps", "model: '+aps': no model before the conversion suffixes"),
        ],
    )
    def test_bad_specs(self, spec, message):
        with pytest.raises(ShiftlabError) as error:
            load_model(spec)
        assert str(error.value) == message

    def test_weights_that_do_not_fit(self, tmp_path):
        path = tmp_path / "other.safetensors"
        save_file({"conv.weight": torch.zeros(1)}, str(path))
        with pytest.raises(ShiftlabError) as error:
            load_model("simple_cnn+aps", weights=path)
        assert str(error.value).startswith(f"weights '{path}': do not fit the model: ")
        assert "1 unexpected (conv.weight)" in str(error.value)


# --------------------------------------------------------------------------- the command


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class TestConvertCommand:
    def test_end_to_end(self, capsys, tmp_path):
        out = tmp_path / "converted"
        status, stdout, stderr = run(
            capsys, "convert", "--model", "simple_cnn", "--method", "aps", "--padding", "circular", "--out", str(out)
        )
        assert status == 0, stderr
        assert sorted(path.name for path in out.iterdir()) == ["changes.csv", "changes.json", "weights.safetensors"]
        record = json.loads((out / "changes.json").read_text())
        assert record["converted_spec"] == "simple_cnn+circular+aps" and record["method"] == "aps"
        lines = (out / "changes.csv").read_text().splitlines()
        assert lines[0] == "layer,change,before,after,note" and len(lines) == 1 + len(record["changes"])
        model, _ = load_model("simple_cnn+circular+aps", weights=out / "weights.safetensors")
        reference, _ = load_model("simple_cnn")
        assert set(load_file(str(out / "weights.safetensors"))) == set(reference.state_dict())
        assert "features.3" in stdout and "-> CircularPad2d" not in stdout.splitlines()[0]
        assert f"load with: --model 'simple_cnn+circular+aps' --weights {out / 'weights.safetensors'}" in stdout

    def test_weights_in_and_out(self, capsys, tmp_path):
        model, _ = load_model("simple_cnn")
        with torch.no_grad():
            model.head.weight.mul_(3)
        source = tmp_path / "trained.pt"
        torch.save(model.state_dict(), source)
        status, _, stderr = run(
            capsys,
            "convert",
            "--model",
            "simple_cnn",
            "--method",
            "blurpool",
            "--kernel-size",
            "3",
            "--weights",
            str(source),
            "--out",
            str(tmp_path / "o"),
        )
        assert status == 0, stderr
        saved = load_file(str(tmp_path / "o" / "weights.safetensors"))
        assert torch.equal(saved["head.weight"], model.head.weight)
        assert json.loads((tmp_path / "o" / "changes.json").read_text())["converted_spec"] == "simple_cnn+blurpool3"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--model", "simple_cnn", "--method", "lpf"], "--method: must be one of blurpool, aps, got 'lpf'"),
            (
                ["--model", "simple_cnn", "--method", "aps", "--padding", "zero"],
                "--padding: must be one of circular, got 'zero'",
            ),
            (
                ["--model", "simple_cnn", "--method", "aps", "--kernel-size", "x"],
                "--kernel-size: must be an integer, got 'x'",
            ),
            (
                ["--model", "simple_cnn", "--method", "aps", "--kernel-size", "9"],
                "--kernel-size: must be an integer >= 1 and <= 7, got 9",
            ),
            (
                ["--model", "circular_cnn", "--method", "blurpool"],
                "model SimpleCNN: has no downsampling layer (a strided Conv2d, MaxPool2d or AvgPool2d): "
                "nothing to make shift-invariant",
            ),
            (
                ["--model", "article", "--method", "aps", "--padding", "circular"],
                "layer 'edges' (Convolve): cannot be made circular: its window is 3x3 and its padding 0x0 pixels "
                "in all, so it changes the map's size by (-2, -2); only layers that keep the size commute with "
                "circular shifts",
            ),
            (
                ["--model", "simple_cnn+aps", "--method", "aps"],
                "model SimpleCNN: was converted already (layer 'features.3.1' is a APSPool2d); convert the original",
            ),
        ],
        ids=["method", "padding", "kernel-text", "kernel-range", "no-downsampling", "not-circular", "twice"],
    )
    def test_bad_input_one_line_nothing_written(self, capsys, tmp_path, argv, message):
        out = tmp_path / "out"
        status, _, stderr = run(capsys, "convert", *argv, "--out", str(out))
        assert status == 2
        assert stderr.strip().splitlines() == [f"shiftlab: error: {message}"]
        assert not out.exists() and list(tmp_path.iterdir()) == []

    def test_weights_that_do_not_fit(self, capsys, tmp_path):
        path = tmp_path / "w.safetensors"
        save_file({"x": torch.zeros(2)}, str(path))
        status, _, stderr = run(
            capsys,
            "convert",
            "--model",
            "simple_cnn",
            "--method",
            "aps",
            "--weights",
            str(path),
            "--out",
            str(tmp_path / "o"),
        )
        assert status == 2 and stderr.startswith(f"shiftlab: error: weights '{path}': do not fit the model: ")
        assert not (tmp_path / "o").exists()


def test_public_api():
    assert shiftlab.make_shift_invariant is make_shift_invariant
    assert "make_shift_invariant" in shiftlab.__all__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_converted_on_its_device():
    model = stride_three_net().cuda()
    for method in ("blurpool", "aps"):
        converted, _ = make_shift_invariant(model, method, padding="circular")
        assert all(buffer.device.type == "cuda" for buffer in converted.buffers())
        x = torch.rand(2, 3, 27, 45, generator=torch.Generator().manual_seed(0))
        reference, _ = make_shift_invariant(stride_three_net(), method, padding="circular")
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round to 1e-3: compare in full float32
        try:
            with torch.no_grad():
                torch.testing.assert_close(converted(x.cuda()).cpu(), reference(x), rtol=1e-4, atol=1e-5)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
