"""Tests for the published recipes: ``make_shift_invariant(model, recipe="zhang2019" | "chaman2021")``.

What is checked: a torchvision network converted with a published recipe *is* the authors' network. Its state_dict
has the authors' keys and shapes, their checkpoints load into it, and with the same weights its outputs equal theirs
(eval mode, batch norm statistics and affine parameters randomised so that a misplaced layer would show):

* zhang2019 against antialiased-cnns 0.3 itself (ResNet, VGG, DenseNet, MobileNetV2, AlexNet; several filter sizes);
* chaman2021 against ``tests/chaman_reference.py``, a transcription of their ImageNet ``resnet18_apsK`` (their
  code cannot be installed and runs on CUDA only), and exactly invariant to circular shifts.

Also: the released files' form (``{"state_dict": ...}``, old DenseNet keys) loads through ``load_model``; weights of
the unconverted model load before the conversion; specs, the command and every refusal, in one line.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json

import pytest
import torch
from chaman_reference import reference_resnet
from safetensors.torch import load_file
from torch import nn

from shiftlab import cli
from shiftlab.errors import ShiftlabError
from shiftlab.layers import APSPool2d, BlurPool2d, make_shift_invariant, split_model_spec
from shiftlab.layers.chaman2021 import APSResidualBlock
from shiftlab.models import load_model

torchvision = pytest.importorskip("torchvision")


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    """A torchvision network with random weights (seed 0), built once: conversions copy it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None).eval()


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random batch norm statistics and affine parameters (so a BN is no identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def zhang_model(name: str, kernel_size: int, seed: int = 0) -> nn.Module:
    antialiased_cnns = pytest.importorskip("antialiased_cnns")
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):  # it prints while building
        torch.manual_seed(seed)
        return randomised(getattr(antialiased_cnns, name)(filter_size=kernel_size), seed + 1)


def images(size: int, count: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_same_network(ours: nn.Module, theirs: nn.Module, size: int) -> None:
    """The same state_dict keys and shapes, theirs loads strictly, and the outputs then agree to 1e-5 relative."""
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert sorted(mine) == sorted(reference)
    assert all(mine[key].shape == value.shape for key, value in reference.items())
    ours.load_state_dict(reference, strict=True)
    x = images(size)
    with torch.no_grad():
        expected, actual = theirs(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


# --------------------------------------------------------------------------- zhang2019: antialiased-cnns itself

ZHANG_CASES = [
    *[("resnet18", k, 64) for k in range(1, 8)],
    ("resnet34", 4, 64),
    ("resnet50", 2, 64),
    ("resnet50", 4, 64),
    pytest.param("resnet101", 4, 64, marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", 4, 64, marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", 4, 64, marks=pytest.mark.slow),
    pytest.param("vgg11", 4, 64, marks=pytest.mark.slow),
    pytest.param("vgg16_bn", 5, 96, marks=pytest.mark.slow),
    ("densenet121", 4, 64),
    ("densenet121", 2, 64),
    ("mobilenet_v2", 4, 64),
    ("mobilenet_v2", 3, 64),
    ("alexnet", 4, 128),
    pytest.param("alexnet", 5, 128, marks=pytest.mark.slow),
]


class TestZhang2019:
    @pytest.mark.parametrize(("name", "kernel_size", "size"), ZHANG_CASES)
    def test_is_antialiased_cnns_network(self, name, kernel_size, size):
        converted, _ = make_shift_invariant(torchvision_model(name), recipe="zhang2019", kernel_size=kernel_size)
        assert_same_network(converted, zhang_model(name, kernel_size), size)

    def test_the_comparison_sees_a_small_difference(self):
        # One blur of 8 padded with zeros instead of reflection: no longer Zhang's network, and the test says so.
        converted, _ = make_shift_invariant(torchvision_model("resnet18"), recipe="zhang2019")
        converted.layer3[0].conv2[0].padding = "zeros"
        with pytest.raises(AssertionError):
            assert_same_network(converted, zhang_model("resnet18", 4), 64)

    def test_change_table_of_resnet18(self):
        _, changes = make_shift_invariant(torchvision_model("resnet18"), recipe="zhang2019")
        assert [(row["layer"], row["change"]) for row in changes] == [("maxpool", "downsampling")] + [
            (f"layer{stage}.0.{part}", "downsampling")
            for stage in (2, 3, 4)
            for part in ("conv1", "conv2", "downsample.0")
        ]
        maxpool, conv1, conv2, shortcut = changes[:4]
        assert maxpool["after"] == (
            "MaxPool2d(kernel_size=2, stride=1, padding=0, dilation=1, ceil_mode=False) + "
            "BlurPool2d(kernel_size=4, stride=2, padding='reflect', channels=64)"
        )
        assert conv1["after"] == "Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
        assert conv2["after"].startswith("BlurPool2d(kernel_size=4, stride=2, padding='reflect', channels=128) + ")
        assert shortcut["after"] == (
            "BlurPool2d(kernel_size=4, stride=2, padding='reflect', channels=64) + "
            "Conv2d(64, 128, kernel_size=(1, 1), stride=(1, 1), bias=False)"
        )
        assert conv1["note"] == (
            "at stride 1: the subsampling moves after its batch norm and ReLU, to the blur 'layer2.0.conv2.0'"
        )

    def test_keys_renumbered_as_his(self):
        vgg, changes = make_shift_invariant(torchvision_model("vgg11"), recipe="zhang2019")
        assert [row["layer"] for row in changes] == ["features.2", "features.5", "features.10", "features.15"] + [
            "features.20"
        ]
        assert [type(layer).__name__ for layer in vgg.features[:5]] == [
            "Conv2d", "ReLU", "MaxPool2d", "BlurPool2d", "Conv2d"
        ]  # fmt: skip
        mobilenet, changes = make_shift_invariant(torchvision_model("mobilenet_v2"), recipe="zhang2019")
        assert changes[-1] == {
            "layer": "classifier.0",
            "change": "layout",
            "before": "Dropout(p=0.2, inplace=False)",
            "after": "(removed)",
            "note": "Zhang's MobileNetV2 has no dropout: the Linear becomes classifier.0",
        }
        assert isinstance(mobilenet.classifier[0], nn.Linear) and len(mobilenet.features[2].conv) == 5

    def test_original_untouched_and_inplace_keeps_parameters(self):
        model = torchvision_model("resnet18")
        state = {key: value.clone() for key, value in model.state_dict().items()}
        converted, _ = make_shift_invariant(model, recipe="zhang2019")
        assert type(model.maxpool) is nn.MaxPool2d and model.layer2[0].conv1.stride == (2, 2)
        assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
        assert not any(module.training for module in converted.modules())
        own = torchvision.models.resnet18()
        weight = own.layer2[0].downsample[0].weight
        same, _ = make_shift_invariant(own, recipe="zhang2019", inplace=True)
        assert same is own and own.layer2[0].downsample[1].weight is weight
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(own, recipe="zhang2019")
        assert str(error.value) == (
            "model ResNet: was converted already (layer 'maxpool.1' is a BlurPool2d); convert the original"
        )

    def test_released_checkpoint_loads_by_spec(self, tmp_path):
        reference = zhang_model("resnet18", 4)
        path = tmp_path / "resnet18_lpf4.pth"
        torch.save({"state_dict": reference.state_dict(), "epoch": 90}, path)  # the released files' form
        model, info = load_model("resnet18+blurpool@zhang2019", weights=path)
        assert info.spec == "resnet18+blurpool@zhang2019"
        x = images(64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)

    def test_checkpoint_of_another_filter_size_refused(self, tmp_path):
        path = tmp_path / "resnet18_lpf3.pth"
        torch.save({"state_dict": zhang_model("resnet18", 3).state_dict()}, path)
        with pytest.raises(ShiftlabError) as error:
            load_model("resnet18+blurpool@zhang2019", weights=path)
        assert str(error.value) == (
            f"weights '{path}': do not fit the model: 7 of the wrong shape (maxpool.1.filt (64, 1, 3, 3) vs "
            "(64, 1, 4, 4); layer2.0.conv2.0.filt (128, 1, 3, 3) vs (128, 1, 4, 4); ...)"
        )
        model, _ = load_model("resnet18+blurpool3@zhang2019", weights=path)
        assert model.maxpool[1].kernel_size == (3, 3)

    def test_densenet_checkpoint_with_old_keys(self, tmp_path):
        reference = zhang_model("densenet121", 4)
        old = {}
        for key, value in reference.state_dict().items():  # the keys of the released DenseNet files
            for part in ("norm1", "norm2", "conv1", "conv2"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
            old[key] = value
        assert "features.denseblock1.denselayer1.norm.1.weight" in old
        path = tmp_path / "densenet121_lpf4.pth"
        torch.save({"state_dict": old}, path)
        model, _ = load_model("densenet121+blurpool@zhang2019", weights=path)
        x = images(64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
        older = {key: value for key, value in old.items() if not key.endswith("num_batches_tracked")}
        torch.save(older, path)  # saved before PyTorch 0.4.1: no batch counts
        model, _ = load_model("densenet121+blurpool@zhang2019", weights=path)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)

    def test_weights_of_the_unconverted_model_load_before_converting(self, tmp_path):
        trained = randomised(torchvision.models.resnet18(), seed=5)
        path = tmp_path / "torchvision.pt"
        torch.save(trained.state_dict(), path)
        model, _ = load_model("resnet18+blurpool@zhang2019", weights=path)
        expected, _ = make_shift_invariant(trained, recipe="zhang2019")
        x = images(64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- chaman2021: the transcription

CHAMAN_CASES = [
    *[("resnet18", k, "l2", 64) for k in range(1, 6)],  # their resnet18_aps1 ... resnet18_aps5
    ("resnet18", 1, "l2", 57),  # odd sizes: padded circularly at the bottom and right before choosing
    ("resnet18", 4, "l1", 57),
    ("resnet18", 3, "linf", 50),
    ("resnet34", 1, "l2", 64),
    ("resnet50", 1, "l2", 64),
    pytest.param("resnet50", 3, "l2", 57, marks=pytest.mark.slow),
    pytest.param("resnet101", 2, "l2", 64, marks=pytest.mark.slow),
]


def chaman_model(name: str, kernel_size: int, criterion: str = "l2", seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return randomised(reference_resnet(name, kernel_size, criterion), seed + 1)


class TestChaman2021:
    @pytest.mark.parametrize(("name", "kernel_size", "norm", "size"), CHAMAN_CASES)
    def test_is_their_network(self, name, kernel_size, norm, size):
        converted, _ = make_shift_invariant(
            torchvision_model(name), recipe="chaman2021", kernel_size=kernel_size, norm=norm
        )
        assert_same_network(converted, chaman_model(name, kernel_size, norm), size)

    def test_the_comparison_sees_another_phase(self):
        # The shortcut of one block at phase (0, 0) instead of the main path's: no longer their network.
        converted, _ = make_shift_invariant(torchvision_model("resnet18"), recipe="chaman2021")
        converted.layer3[0].downsample[0] = nn.MaxPool2d(1, stride=2)  # x[..., ::2, ::2]
        with pytest.raises(AssertionError):
            assert_same_network(converted, chaman_model("resnet18", 1), 64)

    @pytest.mark.parametrize("kernel_size", [1, 3])
    def test_exactly_invariant_to_circular_shifts(self, kernel_size):
        converted, _ = make_shift_invariant(torchvision_model("resnet18"), recipe="chaman2021", kernel_size=kernel_size)
        converted.load_state_dict(chaman_model("resnet18", kernel_size).state_dict())
        x = images(64, count=1)
        shifts = [(0, 0), (1, 0), (0, 1), (5, 13), (31, 2), (63, 63)]
        with torch.no_grad():
            outputs = torch.cat([converted(torch.roll(x, shift, (2, 3))) for shift in shifts])
        torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-5)

    def test_layout(self):
        converted, changes = make_shift_invariant(torchvision_model("resnet18"), recipe="chaman2021")
        block = converted.layer2[0]
        assert isinstance(block, APSResidualBlock)
        assert repr(block).splitlines()[0] == "APSResidualBlock("
        assert "main path: conv1 -> bn1 -> relu -> aps_down -> conv2 -> bn2, added to downsample" in repr(block)
        aps = [module for module in converted.modules() if isinstance(module, APSPool2d)]
        assert len(aps) == 2 + 3 * 2 and all(layer.tie_break == "column-major" for layer in aps)
        assert block.aps_down.link is block.downsample[0].link is not None
        assert [type(layer).__name__ for layer in converted.maxpool] == [
            "APSPool2d", "CircularPad2d", "MaxPool2d", "APSPool2d"
        ]  # fmt: skip
        assert converted.conv1[1].stride == (1, 1) and converted.conv1[0].padding == (3, 3, 3, 3)
        notes = {row["layer"]: row["note"] for row in changes}
        assert notes["layer2.0"] == (
            "APS (aps_down) after the ReLU that follows conv1; its polyphase choice shared with 'layer2.0.downsample.0'"
        )
        assert {row["change"] for row in changes} == {"downsampling", "padding"}
        assert not any(isinstance(module, BlurPool2d) for module in converted.modules())


# --------------------------------------------------------------------------- arguments, architectures, specs


class TestRefusals:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"recipe": "zhang"}, "recipe: must be one of shiftlab, zhang2019, chaman2021, got 'zhang'"),
            (
                {"recipe": "zhang2019", "method": "aps"},
                "method: recipe 'zhang2019' is Zhang's anti-aliasing (BlurPool), method 'blurpool'; got 'aps'",
            ),
            (
                {"recipe": "chaman2021", "method": "blurpool"},
                "method: recipe 'chaman2021' is Chaman & Dokmanic's APS, method 'aps'; got 'blurpool'",
            ),
            (
                {"recipe": "zhang2019", "padding": "circular"},
                "padding: recipe 'zhang2019' keeps the zero padding of Zhang's networks; for circular padding use "
                "recipe 'shiftlab'",
            ),
        ],
    )
    def test_arguments(self, kwargs, message):
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(torchvision_model("resnet18"), **kwargs)
        assert str(error.value) == message

    def test_architectures_not_covered(self):
        model = torchvision_model("mobilenet_v3_small")
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, recipe="zhang2019")
        assert str(error.value) == (
            "model MobileNetV3: recipe 'zhang2019' covers the networks Zhang released, as torchvision builds them: "
            "ResNet (resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2, wide_resnet101_2); "
            "VGG (vgg11/13/16/19, with or without _bn); DenseNet (densenet121/161/169/201); MobileNetV2 "
            "(mobilenet_v2); AlexNet (alexnet); for any other model use recipe 'shiftlab'"
        )
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(torchvision_model("vgg11"), recipe="chaman2021")
        assert str(error.value) == (
            "model VGG: recipe 'chaman2021' covers the networks Chaman & Dokmanic trained on ImageNet, as "
            "torchvision builds them: ResNet (resnet18, their only ImageNet network; resnet34/50/101/152, resnext "
            "and wide_resnet follow the same rules); for any other model use recipe 'shiftlab'"
        )

    @pytest.mark.parametrize("recipe", ["zhang2019", "chaman2021"])
    def test_changed_networks_refused_and_left_alone(self, recipe):
        model = torchvision.models.resnet18()
        model.maxpool = nn.Identity()
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, recipe=recipe, inplace=True)
        assert str(error.value) == (
            f"model ResNet: recipe '{recipe}' follows torchvision's ResNet, and 'maxpool' is Identity() where it "
            "expects MaxPool2d(3, stride=2, padding=1); use recipe 'shiftlab' for a changed network"
        )
        model = torchvision.models.resnet18()
        model.avgpool = nn.AvgPool2d(2)
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, recipe=recipe, inplace=True)
        assert str(error.value) == (
            f"model ResNet: recipe '{recipe}' follows torchvision's ResNet, and its layer 'avgpool' subsamples "
            "where that network does not; use recipe 'shiftlab' for a changed network"
        )
        assert type(model.maxpool) is nn.MaxPool2d and model.layer2[0].conv1.stride == (2, 2)
        model = torchvision.models.resnet18()
        model.layer2[0].downsample = None
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, recipe=recipe)
        assert str(error.value) == (
            f"model ResNet: recipe '{recipe}' follows torchvision's ResNet, and 'layer2.0' is BasicBlock() where it "
            "expects a shortcut downsample = Sequential(Conv2d 1x1 at stride 2, BatchNorm2d); use recipe "
            "'shiftlab' for a changed network"
        )

    def test_chaman2021_needs_convolutions_that_keep_the_size(self):
        model = torchvision.models.resnet18()
        model.layer1[1].conv2.padding = (0, 0)
        with pytest.raises(ShiftlabError) as error:
            make_shift_invariant(model, recipe="chaman2021")
        assert str(error.value) == (
            "model ResNet: recipe 'chaman2021' follows torchvision's ResNet, and 'layer1.1.conv2' is Conv2d(64, 64, "
            "kernel_size=(3, 3), stride=(1, 1), bias=False) where it expects a square convolution padded to keep the "
            "map's size; use recipe 'shiftlab' for a changed network"
        )


class TestSpecs:
    def test_recipe_suffixes(self):
        base, conversion = split_model_spec("resnet50+blurpool3@zhang2019")
        assert base == "resnet50" and conversion is not None
        assert (conversion.method, conversion.kernel_size, conversion.recipe) == ("blurpool", 3, "zhang2019")
        _, conversion = split_model_spec("resnet18+aps@chaman2021")
        assert conversion is not None and (conversion.padding, conversion.recipe) == ("circular", "chaman2021")
        _, conversion = split_model_spec("resnet18+circular+aps@chaman2021")
        assert conversion is not None and conversion.padding == "circular"
        _, conversion = split_model_spec("resnet18+blurpool@shiftlab")
        assert conversion is not None and conversion.recipe == "shiftlab"
        model, info = load_model("resnet18+aps2@chaman2021")
        assert isinstance(model.layer3[0], APSResidualBlock) and model.maxpool[0].filt.shape == (64, 1, 2, 2)
        assert info.description.endswith("converted (aps2@chaman2021: 24 layers changed)")

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (
                "resnet18+blurpool@zhang",
                "model: 'resnet18+blurpool@zhang': unknown recipe 'zhang'; the recipes: shiftlab, zhang2019, "
                "chaman2021",
            ),
            (
                "resnet18+aps@zhang2019",
                "model 'resnet18+aps@zhang2019': recipe 'zhang2019' is Zhang's anti-aliasing (BlurPool), method "
                "'blurpool'; got 'aps'",
            ),
            (
                "resnet18+circular+blurpool@zhang2019",
                "model 'resnet18+circular+blurpool@zhang2019': recipe 'zhang2019' keeps the zero padding of Zhang's "
                "networks; for circular padding use recipe 'shiftlab'",
            ),
            (
                "digits_cnn+blurpool@zhang2019",
                "model DigitsCNN: recipe 'zhang2019' covers the networks Zhang released, as torchvision builds them: "
                "ResNet",
            ),
        ],
    )
    def test_bad_specs(self, spec, message):
        with pytest.raises(ShiftlabError) as error:
            load_model(spec)
        assert str(error.value).startswith(message)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class TestConvertCommand:
    def test_recipe_end_to_end(self, capsys, tmp_path):
        out = tmp_path / "zhang"
        status, stdout, stderr = run(
            capsys, "convert", "--model", "resnet18", "--recipe", "zhang2019", "--kernel-size", "3", "--out", str(out)
        )
        assert status == 0, stderr
        record = json.loads((out / "changes.json").read_text())
        assert record["converted_spec"] == "resnet18+blurpool3@zhang2019"
        assert (record["recipe"], record["method"], record["padding"]) == ("zhang2019", "blurpool", None)
        saved = load_file(str(out / "weights.safetensors"))
        assert "layer2.0.conv2.1.weight" in saved and saved["maxpool.1.filt"].shape == (64, 1, 3, 3)
        assert f"load with: --model 'resnet18+blurpool3@zhang2019' --weights {out / 'weights.safetensors'}" in stdout
        model, _ = load_model("resnet18+blurpool3@zhang2019", weights=out / "weights.safetensors")
        assert torch.equal(model.layer2[0].conv2[1].weight, saved["layer2.0.conv2.1.weight"])
        status, _, stderr = run(
            capsys, "convert", "--model", "resnet18", "--recipe", "chaman2021", "--out", str(tmp_path / "c")
        )
        assert status == 0, stderr
        assert json.loads((tmp_path / "c" / "changes.json").read_text())["converted_spec"] == "resnet18+aps@chaman2021"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (
                ["--model", "resnet18"],
                "--method: give blurpool or aps (or a published --recipe, zhang2019 or chaman2021, which implies it)",
            ),
            (
                ["--model", "resnet18", "--recipe", "zhang"],
                "--recipe: must be one of shiftlab, zhang2019, chaman2021, got 'zhang'",
            ),
            (
                ["--model", "resnet18", "--recipe", "zhang2019", "--method", "aps"],
                "--method: recipe 'zhang2019' is Zhang's anti-aliasing (BlurPool), method 'blurpool'; got 'aps'",
            ),
            (
                ["--model", "resnet18", "--recipe", "zhang2019", "--padding", "circular"],
                "--padding: recipe 'zhang2019' keeps the zero padding of Zhang's networks; for circular padding use "
                "recipe 'shiftlab'",
            ),
            (
                ["--model", "simple_cnn", "--recipe", "chaman2021"],
                "model SimpleCNN: recipe 'chaman2021' covers the networks Chaman & Dokmanic trained on ImageNet, as "
                "torchvision builds them: ResNet (resnet18, their only ImageNet network; resnet34/50/101/152, "
                "resnext and wide_resnet follow the same rules); for any other model use recipe 'shiftlab'",
            ),
        ],
        ids=["no-method", "recipe", "method", "padding", "architecture"],
    )
    def test_bad_input_one_line_nothing_written(self, capsys, tmp_path, argv, message):
        out = tmp_path / "out"
        status, _, stderr = run(capsys, "convert", *argv, "--out", str(out))
        assert status == 2
        assert stderr.strip().splitlines() == [f"shiftlab: error: {message}"]
        assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recipe", ["zhang2019", "chaman2021"])
def test_cuda_model_converted_on_its_device(recipe):
    model = torchvision_model("resnet18")
    converted, _ = make_shift_invariant(copy.deepcopy(model).cuda(), recipe=recipe, kernel_size=3)
    assert all(tensor.device.type == "cuda" for tensor in converted.state_dict().values())
    x = images(64)
    with torch.no_grad():
        output = converted(x.cuda()).cpu()
    assert output.shape == (2, 1000) and bool(output.isfinite().all())
    if recipe == "zhang2019":  # no data-dependent choice: the same numbers as on the CPU, to TF32-free rounding
        reference, _ = make_shift_invariant(model, recipe=recipe, kernel_size=3)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                output = converted(x.cuda()).cpu()
                torch.testing.assert_close(output, reference(x), rtol=1e-4, atol=1e-5)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
