"""Tests for shiftlab.layers.circular: circular padding everywhere, and the layers that cannot have it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.layers import make_circular
from shiftlab.ops import Convolve, MaxPool

pytestmark = pytest.mark.usefixtures("single_thread")


def zero_padded_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.ReflectionPad2d(2),
        nn.Conv2d(6, 6, 5),  # padded by the module before it
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.AvgPool2d(5, stride=1, padding=2, count_include_pad=False),
        nn.Conv2d(6, 4, (1, 7), padding=(0, 3), padding_mode="reflect"),
        Convolve("laplacian", padding="same", relu=False),
    ).eval()


def commutes_with_roll(model: nn.Module, x: torch.Tensor) -> bool:
    out = model(x)
    return all(
        torch.allclose(model(torch.roll(x, shift, (2, 3))), torch.roll(out, shift, (2, 3)), atol=1e-5)
        for shift in [(1, 0), (0, 3), (5, 2)]
    )


class TestMakeCircular:
    def test_every_padding_becomes_circular(self, generator):
        model = zero_padded_net()
        x = torch.rand(2, 3, 12, 15, generator=generator)
        assert not commutes_with_roll(model, x)
        circular, changes = make_circular(model)
        assert commutes_with_roll(circular, x)
        assert [(row["layer"], row["change"]) for row in changes] == [
            ("0", "padding"), ("2", "padding"), ("4", "padding"), ("5", "padding"), ("6", "padding"), ("7", "padding")
        ]  # fmt: skip
        assert changes[1]["after"] == "CircularPad2d((2, 2, 2, 2))"
        assert changes[3]["after"] == ("CircularPad2d((2, 2, 2, 2)) + AvgPool2d(kernel_size=5, stride=1, padding=0)")
        assert circular[6].padding_mode == "circular" and circular[7].padding == "circular"

    def test_weights_kept_and_original_untouched(self):
        model = zero_padded_net()
        before = {key: value.clone() for key, value in model.state_dict().items()}
        circular, _ = make_circular(model)
        assert model[0].padding_mode == "zeros" and isinstance(model[2], nn.ReflectionPad2d)
        assert list(circular.state_dict()) == list(before)
        assert all(torch.equal(circular.state_dict()[key], value) for key, value in before.items())

    def test_inplace(self):
        model = zero_padded_net()
        circular, _ = make_circular(model, inplace=True)
        assert circular is model and model[0].padding_mode == "circular"

    def test_strided_layers_keep_their_stride(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, padding=1))
        circular, changes = make_circular(model)
        assert circular[0].stride == (2, 2) and circular[0].padding_mode == "circular"
        assert changes[1]["after"] == (
            "CircularPad2d((1, 1, 1, 1)) + MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)"
        )

    def test_nothing_to_change(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"))
        assert make_circular(model)[1] == []


class TestCannotBeCircular:
    @pytest.mark.parametrize(
        ("model", "message"),
        [
            (
                nn.Sequential(nn.Conv2d(3, 4, 3)),
                "layer '0' (Conv2d): cannot be made circular: its window is 3x3 and its padding 0x0 pixels in all, "
                "so it changes the map's size by (-2, -2); only layers that keep the size commute with circular shifts",
            ),
            (
                nn.Sequential(nn.Conv2d(3, 4, (3, 5), padding=(1, 1), dilation=(1, 2))),
                "layer '0' (Conv2d): cannot be made circular: its window is 3x9 and its padding 2x2 pixels in all, "
                "so it changes the map's size by (+0, -6); only layers that keep the size commute with circular shifts",
            ),
            (
                nn.Sequential(nn.Identity(), nn.MaxPool2d(2, stride=1)),
                "layer '1' (MaxPool2d): cannot be made circular: its window is 2x2 and its padding 0x0 pixels in all, "
                "so it changes the map's size by (-1, -1); only layers that keep the size commute with circular shifts",
            ),
            (
                nn.Sequential(nn.ZeroPad2d(2), nn.Conv2d(3, 4, 3)),
                "layer '1' (Conv2d): cannot be made circular: its window is 3x3 and its padding 4x4 pixels in all, "
                "so it changes the map's size by (+2, +2); only layers that keep the size commute with circular shifts",
            ),
            (
                nn.Sequential(nn.ConstantPad2d((1, -1, 0, 0), 0.0)),
                "layer '0' (ConstantPad2d): cannot be made circular: negative padding (1, -1, 0, 0) crops the map",
            ),
            (
                nn.Sequential(nn.ConvTranspose2d(3, 4, 3, padding=1)),
                "layer '0' (ConvTranspose2d): cannot be made circular: torch pads a ConvTranspose2d with zeros only",
            ),
            (
                nn.Sequential(Convolve("sobel_y")),
                "layer '0' (Convolve): cannot be made circular: its window is 3x3 and its padding 0x0 pixels in all, "
                "so it changes the map's size by (-2, -2); only layers that keep the size commute with circular shifts",
            ),
            (
                nn.Sequential(MaxPool(3, stride=1)),
                "layer '0' (MaxPool): cannot be made circular: its window is 3x3 and its padding 0x0 pixels in all, "
                "so it changes the map's size by (-2, -2); only layers that keep the size commute with circular shifts",
            ),
        ],
        ids=["valid-conv", "dilated", "pool", "pad-module-too-much", "crop", "transposed", "convolve", "shiftlab-pool"],
    )
    def test_named_and_nothing_changed(self, model, message):
        before = repr(model)
        with pytest.raises(ShiftlabError) as error:
            make_circular(model, inplace=True)
        assert str(error.value) == message
        assert repr(model) == before

    def test_pad_module_before_the_layer_counts(self, generator):
        model = nn.Sequential(nn.ZeroPad2d((1, 1, 2, 2)), nn.Conv2d(3, 4, (5, 3)))
        circular, changes = make_circular(model)
        assert [row["layer"] for row in changes] == ["0"]
        assert commutes_with_roll(circular, torch.rand(1, 3, 9, 8, generator=generator))

    def test_not_a_module(self):
        with pytest.raises(ShiftlabError) as error:
            make_circular("resnet18")  # type: ignore[arg-type]
        assert str(error.value) == "model: expected a torch.nn.Module, got str"
