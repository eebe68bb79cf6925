"""Tests for shiftlab.layers.subsampled_conv: a strided convolution split into a stride-1 convolution and a
blur pool or APS, keeping its Parameters and state_dict keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.layers import APSConv2d, BlurConv2d, aps_pool2d, blur_pool2d

pytestmark = pytest.mark.usefixtures("single_thread")


def conv(seed: int = 0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    settings = {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "stride": 2, "padding": 1}
    settings.update(kwargs)
    return nn.Conv2d(**settings).double()


class TestBlurConv2d:
    @pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect"])
    @pytest.mark.parametrize(
        "settings",
        [
            {},
            {"kernel_size": 5, "padding": 2, "stride": 3},
            {"dilation": 2, "padding": 2},
            {"groups": 3, "out_channels": 6},
        ],
        ids=str,
    )
    def test_is_blur_pool_of_the_stride_one_convolution(self, generator, settings, padding_mode):
        original = conv(padding_mode=padding_mode, **settings)
        layer = BlurConv2d.from_conv(original, blur_kernel_size=4)
        x = torch.rand(2, 3, 13, 10, generator=generator, dtype=torch.float64)
        dense = F.conv2d(
            F.pad(x, original._reversed_padding_repeated_twice, mode=padding_mode) if padding_mode != "zeros" else x,
            original.weight,
            original.bias,
            stride=1,
            padding=0 if padding_mode != "zeros" else original.padding,
            dilation=original.dilation,
            groups=original.groups,
        )
        torch.testing.assert_close(layer(x), blur_pool2d(dense, 4, original.stride))
        assert layer.stride == (1, 1) and layer.blur.stride == original.stride

    def test_keeps_parameters_and_keys(self):
        original = conv()
        layer = BlurConv2d.from_conv(original)
        assert layer.weight is original.weight and layer.bias is original.bias
        assert list(layer.state_dict()) == list(original.state_dict()) == ["weight", "bias"]
        assert original.stride == (2, 2)  # the original is not changed
        layer.load_state_dict(original.state_dict())
        original.load_state_dict(layer.state_dict())

    @pytest.mark.parametrize("bias", [True, False])
    @pytest.mark.parametrize("blur_padding", ["reflect", "zeros", "circular"])
    def test_one_by_one_blurs_first_when_that_is_the_same(self, generator, bias, blur_padding):
        original = conv(kernel_size=1, padding=0, bias=bias)
        layer = BlurConv2d.from_conv(original, blur_kernel_size=3, blur_padding=blur_padding)
        x = torch.rand(2, 3, 9, 8, generator=generator, dtype=torch.float64)
        dense = F.conv2d(x, original.weight, original.bias)
        torch.testing.assert_close(layer(x), blur_pool2d(dense, 3, 2, blur_padding))
        assert layer._blur_first() == (not bias or blur_padding != "zeros")

    def test_pre_padding(self, generator):
        original = conv(kernel_size=4, stride=4, padding=0)
        layer = BlurConv2d.from_conv(original, blur_kernel_size=2, blur_padding="circular", pre_padding=(0, 3, 0, 3))
        x = torch.rand(1, 3, 8, 12, generator=generator, dtype=torch.float64)
        dense = F.conv2d(F.pad(x, (0, 3, 0, 3), mode="circular"), original.weight, original.bias)
        torch.testing.assert_close(layer(x), blur_pool2d(dense, 2, 4, "circular"))
        assert "pre_padding=(0, 3, 0, 3) (circular)" in repr(layer)

    def test_built_directly(self, generator):
        layer = BlurConv2d(3, 4, 3, stride=2, padding=1, blur_kernel_size=5, blur_padding="replicate").double()
        x = torch.rand(1, 3, 7, 7, generator=generator, dtype=torch.float64)
        dense = F.conv2d(x, layer.weight, layer.bias, padding=1)
        torch.testing.assert_close(layer(x), blur_pool2d(dense, 5, 2, "replicate"))

    def test_bad_pre_padding(self):
        with pytest.raises(ShiftlabError) as error:
            BlurConv2d(3, 4, 3, pre_padding=(1, 1, -1, 1))
        assert (
            str(error.value)
            == "pre_padding: expected (left, right, top, bottom) non-negative integers, got (1, 1, -1, 1)"
        )


class TestAPSConv2d:
    def test_is_aps_of_the_stride_one_convolution(self, generator):
        original = conv(padding_mode="circular", stride=3)
        layer = APSConv2d.from_conv(original, norm="l1")
        x = torch.rand(2, 3, 12, 9, generator=generator, dtype=torch.float64)
        dense = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), original.weight, original.bias)
        out, phase = aps_pool2d(dense, 3, "l1", return_phase=True)
        assert torch.equal(layer(x), out) and torch.equal(layer.aps.last_phase, phase)
        assert list(layer.state_dict()) == ["weight", "bias"] and layer.weight is original.weight

    def test_unbatched_input(self, generator):
        layer = APSConv2d.from_conv(conv())
        x = torch.rand(3, 8, 8, generator=generator, dtype=torch.float64)
        assert torch.equal(layer(x), layer(x[None])[0])

    def test_exact_under_circular_shifts(self, generator):
        layer = APSConv2d.from_conv(conv(padding_mode="circular"))
        x = torch.rand(1, 3, 8, 10, generator=generator, dtype=torch.float64)
        out = layer(x)
        for shift in [(1, 0), (0, 1), (3, 5), (7, 9)]:
            moved = layer(torch.roll(x, shift, (2, 3)))
            # the convolution's rounding may depend on the position: equal to float64 precision, not bitwise
            assert any(
                torch.allclose(moved, torch.roll(out, (a, b), (2, 3)), rtol=0, atol=1e-12)
                for a in range(4)
                for b in range(5)
            )
