"""Tests for shiftlab.testing: the assertions users put in their own test suites."""

from __future__ import annotations

import re

import pytest
import torch
from nets import pooled_net
from torch import nn

from shiftlab import convolve, max_pool
from shiftlab.errors import ShiftlabError
from shiftlab.probing.equivariance import EquivarianceResult
from shiftlab.testing import DEFAULT_TOLERANCES, assert_shift_equivariant, assert_shift_invariant


def circular_conv(channels_in: int = 3, channels_out: int = 4, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, padding_mode="circular").eval()


def images(count: int = 1, channels: int = 3, size: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Marked:
    """``t + c * marker``: a fixed marker at pixel (0, 0) that does not move with the input.

    ``fn(T x) - T fn(x) = c * (marker - T marker)``: the largest difference is exactly ``c``.
    """

    def __init__(self, c: float) -> None:
        self.c = c

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        marker = torch.zeros(tensor.shape[-2:], dtype=tensor.dtype)
        marker[0, 0] = 1.0
        return tensor + self.c * marker


class TestAssertShiftEquivariant:
    def test_passes_on_a_circular_conv(self):
        result = assert_shift_equivariant(circular_conv(), images(count=2), [(0, 1), (3, -2), (-7, 9), (15, -13)])
        assert isinstance(result, EquivarianceResult)
        assert len(result.errors) == 4 and result.max_rel_l2 <= 1e-6

    def test_passes_on_shiftlab_convolve(self):
        assert_shift_equivariant(
            lambda t: convolve(t, "sobel_y", padding="circular"), torch.rand(2, 12, 12), [(1, 1), (-4, 5)]
        )

    def test_passes_on_even_shifts_of_a_pooling(self):
        assert_shift_equivariant(nn.MaxPool2d(2), images(), [(0, 2), (4, -6)])

    def test_numpy_input(self, rng):
        assert_shift_equivariant(lambda t: convolve(t, "laplacian", padding="circular"), rng.random((10, 10)), [(2, 3)])

    def test_fails_on_max_pooling_with_an_odd_shift(self):
        x = images()
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(nn.MaxPool2d(2), x, [(0, 2), (0, 1)])
        message = str(info.value)
        assert message.startswith("not shift-equivariant under mode='circular': shift (0, 1) gives max abs error ")
        position = re.search(
            r"worst at output index \((\d+), (\d+), (\d+), (\d+)\) \(got (\S+), expected (\S+)\)", message
        )
        assert position is not None, message
        index = tuple(int(value) for value in position.groups()[:4])
        # check the reported position independently: the pooled shifted image against the pooled image,
        # moved by the best whole-pixel alignment (dx / 2 = 0.5: 0 or 1)
        output = nn.MaxPool2d(2)(torch.roll(x, 1, -1))
        reference = nn.MaxPool2d(2)(x)
        candidates = [torch.roll(reference, offset, -1) for offset in (0, 1)]
        assert float(output[index]) == pytest.approx(float(position.group(5)), rel=1e-3)
        assert any(
            float(candidate[index]) == pytest.approx(float(position.group(6)), rel=1e-3) for candidate in candidates
        )
        assert (
            "; the shift is not a multiple of the stride (2, 2), so no whole-pixel alignment can match; 1 of 2 "
            "shifts fail" in message
        )
        # a single module has no sub-layers to blame
        assert "first breaks at layer" not in message

    def test_message_names_the_first_layer_that_breaks(self):
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(pooled_net(), images(), [(0, 1)])
        message = str(info.value)
        assert "shift (0, 1)" in message
        assert "; equivariance first breaks at layer '2' (MaxPool2d, stride [2, 2], relative L2 error " in message
        assert "worst at output index (0, " in message

    def test_message_for_a_function_has_no_layer(self):
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(max_pool, images(), [(1, 0)])
        assert "layer" not in str(info.value)
        assert "shift (1, 0)" in str(info.value)

    def test_worst_shift_is_named(self):
        # (0, 1) and (0, 3) both fail; the message names the one with the largest error
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(Marked(0.5), torch.zeros(1, 8, 8, dtype=torch.float64), [(0, 0), (0, 1), (0, 3)])
        message = str(info.value)
        assert "gives max abs error 0.5 " in message
        assert "; 2 of 3 shifts fail" in message
        assert "worst at output index (0, 0, 0) (got 0.5, expected 0)" in message

    def test_zero_mode(self):
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 4, 3, padding=1).eval()  # zero padding: exact away from the border
        assert_shift_equivariant(conv, images(size=20), [(2, -3), (-4, 1)], mode="zero")
        with pytest.raises(AssertionError, match=r"^not shift-equivariant under mode='circular'"):
            assert_shift_equivariant(conv, images(size=20) + 1.0, [(2, -3)], mode="circular")

    def test_auto_mode_takes_crop_for_zero_padding_and_says_so(self):
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 4, 3, padding=1).eval()
        assert_shift_equivariant(conv, images(size=20) + 1.0, [(2, -3)])  # auto: crop, the border left out
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(net, images(size=32), [(0, 2), (0, 1)])
        message = str(info.value)
        assert message.startswith("not shift-equivariant under mode='crop': shift (0, 1) gives max abs error ")
        assert message.endswith("; mode 'crop' chosen by auto: 1 layer pads with zeros (0)")

    def test_auto_mode_for_a_function_is_circular_and_says_so(self):
        with pytest.raises(AssertionError) as info:
            assert_shift_equivariant(max_pool, images(), [(1, 0)])
        assert str(info.value).endswith(
            "; mode 'circular' chosen by auto: a function, not an nn.Module: its padding cannot be seen"
        )

    def test_crop_mode_with_stride(self):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
        result = assert_shift_equivariant(net, images(size=32), [(0, 2), (2, 4)], mode="crop")
        assert result.stride == (2, 2)
        with pytest.raises(AssertionError, match=r"mode='crop': shift \(0, 1\)"):
            assert_shift_equivariant(net, images(size=32), [(0, 1)], mode="crop")

    def test_bad_arguments_are_not_assertion_errors(self):
        with pytest.raises(ShiftlabError, match=r"^shifts: is empty"):
            assert_shift_equivariant(circular_conv(), images(), [])


class TestTolerances:
    def test_defaults_depend_on_the_dtype(self):
        assert DEFAULT_TOLERANCES[torch.float64] < DEFAULT_TOLERANCES[torch.float32] < DEFAULT_TOLERANCES[torch.float16]
        assert set(DEFAULT_TOLERANCES) == {torch.float64, torch.float32, torch.float16, torch.bfloat16}

    def test_float64_conv_passes_with_tight_defaults(self):
        conv = circular_conv().double()
        result = assert_shift_equivariant(conv, images(dtype=torch.float64), [(1, 2), (-5, 3)])
        assert result.max_rel_l2 <= 1e-14

    def test_float64_defaults_are_tight(self):
        # An error of 1e-9 on values of about 1 is far above float64 rounding: it fails in float64 ...
        x = images(dtype=torch.float64)
        with pytest.raises(AssertionError, match=r"atol 1e-12 \+ rtol 1e-10"):
            assert_shift_equivariant(Marked(1e-9), x, [(0, 1)])
        # ... and is below float32 rounding (about 6e-8 near 1), so the float32 computation passes
        assert_shift_equivariant(Marked(1e-9), x.float(), [(0, 1)])

    def test_float32_defaults_reject_a_clear_error(self):
        with pytest.raises(AssertionError, match=r"atol 1e-06 \+ rtol 1e-05"):
            assert_shift_equivariant(Marked(1e-3), images(), [(0, 1)])

    def test_module_dtype_decides(self):
        # A float64 module given float32 input: its parameters' dtype picks the tolerances.
        class Wrapper(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

            def forward(self, x):
                return Marked(1e-9)(x.double() * self.scale)

        with pytest.raises(AssertionError, match=r"atol 1e-12 \+ rtol 1e-10"):
            assert_shift_equivariant(Wrapper(), torch.zeros(1, 1, 8, 8), [(0, 1)])

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_module(self, dtype):
        conv = circular_conv().to(dtype)
        x = images().to(dtype)
        try:
            conv(x)
        except RuntimeError as error:  # pragma: no cover - depends on the CPU build
            pytest.skip(f"CPU convolution does not support {dtype}: {error}")
        assert_shift_equivariant(conv, x, [(0, 1), (2, -3)])
        with pytest.raises(AssertionError, match=r"shift \(0, 1\)"):
            assert_shift_equivariant(nn.Sequential(nn.MaxPool2d(2)).to(dtype), x, [(0, 1)])

    def test_explicit_atol(self):
        x = torch.zeros(1, 8, 8, dtype=torch.float64)  # max|f(x)| = 0.25, the marker itself
        assert_shift_equivariant(Marked(0.25), x, [(0, 1)], atol=0.2501, rtol=0.0)
        with pytest.raises(
            AssertionError, match=r"gives max abs error 0\.25 > tolerance 0\.249 \(atol 0\.249 \+ rtol 0 "
        ):
            assert_shift_equivariant(Marked(0.25), x, [(0, 1)], atol=0.249, rtol=0.0)

    def test_explicit_rtol(self):
        x = torch.full((1, 8, 8), 2.0, dtype=torch.float64)  # max|f(x)| = 2.25
        assert_shift_equivariant(Marked(0.25), x, [(0, 1)], atol=0.0, rtol=0.25 / 2.25 + 1e-9)
        with pytest.raises(AssertionError, match=r"max\|f\(x\)\| 2\.25\)"):
            assert_shift_equivariant(Marked(0.25), x, [(0, 1)], atol=0.0, rtol=0.25 / 2.25 - 1e-9)

    def test_only_atol_given_keeps_the_default_rtol(self):
        x = torch.full((1, 8, 8), 100.0)
        # default float32 rtol 1e-5 x 100.0 = 1e-3 is the tolerance, atol 0 adds nothing
        assert_shift_equivariant(Marked(0.0009), x, [(0, 1)], atol=0.0)
        with pytest.raises(AssertionError):
            assert_shift_equivariant(Marked(0.002), x, [(0, 1)], atol=0.0)


class TestAssertShiftInvariant:
    def test_global_mean_pooling_passes(self):
        pool = lambda t: t.mean(dim=(-2, -1))
        assert assert_shift_invariant(pool, images(count=2), [(1, 2), (-3, 0), (15, -15)]) is None

    def test_circular_network_with_global_pooling(self):
        net = nn.Sequential(circular_conv(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
        assert_shift_invariant(net, images(count=2), [(0, 1), (5, -3)])

    def test_fails_naming_shift_and_output_index(self):
        x = torch.arange(16.0).reshape(1, 4, 4)
        with pytest.raises(AssertionError) as info:
            assert_shift_invariant(lambda t: t[..., 0, :], x, [(0, 0), (1, 0)])
        message = str(info.value)
        # row 0 becomes the old row 3: [12, 13, 14, 15] instead of [0, 1, 2, 3]; every entry changes by 12
        assert message.startswith(
            "not shift-invariant under mode='circular': shift (1, 0) changes the output by up to 12 > tolerance "
        )
        assert ", at output index (0, 0); 1 of 2 shifts fail" in message

    def test_worst_shift_and_position(self):
        x = torch.zeros(1, 5, 5)
        x[0, 2, 3] = 1.0

        def corner(tensor):
            return tensor[..., :, 3]  # the fourth column

        with pytest.raises(AssertionError) as info:
            assert_shift_invariant(corner, x, [(1, 0), (0, 1)])
        message = str(info.value)
        assert "shift (1, 0) changes the output by up to 1 " in message  # the first of the two equal failures
        assert "at output index (0, 2)" in message
        assert "; 2 of 2 shifts fail" in message

    def test_auto_mode_of_an_invariance_assertion(self):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.Flatten()).eval()
        x = torch.zeros(1, 3, 24, 24)
        x[:, :, 10:13, 10:13] = 1.0  # a blob far from the border: a crop window keeps it whole, the maximum unchanged
        assert_shift_invariant(net, x, [(0, 3), (-2, 4)])
        with pytest.raises(AssertionError) as info:
            assert_shift_invariant(nn.MaxPool2d(2), images(), [(0, 1)])
        assert str(info.value).endswith(
            "; mode 'circular' chosen by auto: no layer pads or cuts the border (padding written inside a forward, "
            "such as F.pad, cannot be seen: give mode crop if the model pads there)"
        )

    def test_max_pooling_is_not_invariant(self):
        with pytest.raises(AssertionError, match=r"^not shift-invariant under mode='circular': shift \(0, 1\)"):
            assert_shift_invariant(nn.MaxPool2d(2), images(), [(0, 1)])

    def test_shape_change(self):
        def corner_decides(tensor):  # a row when the corner pixel is lit, else one value
            return tensor.mean(dim=-1) if bool(tensor[..., 0, 0].any()) else tensor.mean(dim=(-2, -1))

        x = torch.zeros(1, 4, 4)
        x[0, 0, 0] = 1.0
        with pytest.raises(AssertionError) as info:
            assert_shift_invariant(corner_decides, x, [(0, 0), (0, 1), (1, 0)], mode="circular")
        assert str(info.value) == "not shift-invariant: shift (0, 1) changes the output shape from (1, 4) to (1,)"

    def test_shape_change_of_a_function_that_changes_by_itself(self):
        calls = []

        def unstable(tensor):  # not a function of its input: another shape on every call after the first
            calls.append(1)
            return tensor.mean(dim=-1) if len(calls) == 1 else tensor.mean(dim=(-2, -1))

        with pytest.raises(AssertionError) as info:
            assert_shift_invariant(unstable, torch.zeros(1, 4, 4), [(0, 1)], mode="circular")
        assert str(info.value) == (
            "not shift-invariant: the output's size changed from 4 to 1 values under a shift (fn does not give the "
            "same shape again for the same input)"
        )

    def test_tolerances(self):
        x = torch.zeros(1, 8, 8, dtype=torch.float64)
        x[0, 0, 0] = 0.25
        fn = lambda t: t[..., 0, :]
        assert_shift_invariant(fn, x, [(0, 1)], atol=0.2501, rtol=0.0)
        assert_shift_invariant(fn, x, [(0, 1)], atol=0.0, rtol=1.0001)  # rtol x max|f(x)| = 0.25
        with pytest.raises(
            AssertionError, match=r"changes the output by up to 0\.25 > tolerance 0\.249 \(atol 0\.249 \+ rtol 0 "
        ):
            assert_shift_invariant(fn, x, [(0, 1)], atol=0.249, rtol=0.0)

    def test_zero_mode(self):
        x = torch.zeros(1, 8, 8)
        x[0, 4, 4] = 1.0
        # the bright pixel stays inside the frame: the total is unchanged
        assert_shift_invariant(lambda t: t.sum(dim=(-2, -1)), x, [(2, -3)], mode="zero")
        with pytest.raises(AssertionError, match=r"mode='zero'"):
            assert_shift_invariant(lambda t: t.sum(dim=(-2, -1)), x, [(4, 0)], mode="zero")

    def test_bad_arguments_are_not_assertion_errors(self):
        with pytest.raises(ShiftlabError, match=r"^mode: must be one of"):
            assert_shift_invariant(lambda t: t.mean(), images(), [(0, 1)], mode="nope")
