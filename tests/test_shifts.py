"""Tests for shiftlab.shifts: the four shift modes, their masks, and the shift-list parsers.

References are independent of the implementation: ``np.roll`` for circular
shifts, maps filled pixel by pixel for the zero fill, plain slicing of the
larger image for crop windows, and analytic sinusoids for Fourier shifts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.shifts import (
    SHIFT_MODES,
    crop_margin,
    parse_shifts,
    shift,
    shift_grid,
    shift_range,
    shift_with_mask,
)

SIZES = [(8, 8), (7, 9), (10, 5), (1, 6)]
INTEGER_SHIFTS = [(0, 0), (1, 0), (0, 1), (2, -3), (-1, -1), (3, 4), (-4, 2)]


# --------------------------------------------------------------------------- references


def reference_zero_shift(image: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """``out[..., y, x] = in[..., y - dy, x - dx]`` where that source exists, 0 elsewhere; pixel by pixel."""
    height, width = image.shape[-2:]
    out = np.zeros_like(image)
    valid = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            source_y, source_x = y - dy, x - dx
            if 0 <= source_y < height and 0 <= source_x < width:
                out[..., y, x] = image[..., source_y, source_x]
                valid[y, x] = True
    return out, valid


def sinusoid(height: int, width: int, ky: int, kx: int, phase: float, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
    """``cos(2 pi (ky (y - dy) / H + kx (x - dx) / W) + phase)``: the analytically shifted band-limited wave."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.cos(2 * np.pi * (ky * (ys - dy) / height + kx * (xs - dx) / width) + phase)


def without_nyquist(image: np.ndarray) -> np.ndarray:
    """``image`` with the Nyquist rows/columns of its spectrum removed (even sizes only have them)."""
    spectrum = np.fft.fft2(image)
    height, width = image.shape[-2:]
    if height % 2 == 0:
        spectrum[..., height // 2, :] = 0
    if width % 2 == 0:
        spectrum[..., :, width // 2] = 0
    return np.fft.ifft2(spectrum).real


# --------------------------------------------------------------------------- circular


class TestCircular:
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("dy, dx", INTEGER_SHIFTS + [(9, -11), (-20, 17)])
    def test_equals_np_roll(self, rng, size, dy, dx):
        image = rng.standard_normal((2, 3, *size))
        expected = np.roll(image, (dy, dx), axis=(-2, -1))
        np.testing.assert_array_equal(shift(image, dy, dx), expected)
        np.testing.assert_array_equal(shift(torch.from_numpy(image), dy, dx).numpy(), expected)

    def test_direction_is_down_and_right(self):
        image = np.zeros((4, 5))
        image[1, 2] = 1.0
        moved = shift(image, 2, -1)
        assert moved[3, 1] == 1.0 and moved.sum() == 1.0

    def test_every_pixel_valid(self, rng):
        image, valid = shift_with_mask(rng.random((5, 7)), 3, -2)
        assert valid.shape == (5, 7) and valid.all()

    def test_default_mode_is_circular(self, rng):
        image = rng.random((6, 6))
        np.testing.assert_array_equal(shift(image, 1, 2), shift(image, 1, 2, mode="circular"))


# --------------------------------------------------------------------------- zero


class TestZero:
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("dy, dx", INTEGER_SHIFTS)
    def test_matches_pixel_by_pixel_reference(self, rng, size, dy, dx):
        image = rng.standard_normal((2, *size))
        expected, expected_valid = reference_zero_shift(image, dy, dx)
        out, valid = shift_with_mask(image, dy, dx, mode="zero")
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(valid, expected_valid)

    def test_mask_marks_the_filled_band(self):
        out, valid = shift_with_mask(np.ones((4, 6)), 1, -2, mode="zero")
        expected = np.ones((4, 6), dtype=bool)
        expected[0, :] = False  # moved down by 1: top row filled
        expected[:, -2:] = False  # moved left by 2: two right columns filled
        np.testing.assert_array_equal(valid, expected)
        np.testing.assert_array_equal(out, expected.astype(float))

    @pytest.mark.parametrize("dy, dx", [(4, 0), (0, -6), (10, 10)])
    def test_shift_out_of_the_frame_leaves_nothing(self, rng, dy, dx):
        out, valid = shift_with_mask(rng.random((4, 6)), dy, dx, mode="zero")
        assert not out.any() and not valid.any()

    def test_torch_input(self, generator):
        image = torch.rand(3, 5, 5, generator=generator)
        expected, expected_valid = reference_zero_shift(image.numpy(), -2, 1)
        out, valid = shift_with_mask(image, -2, 1, mode="zero")
        np.testing.assert_array_equal(out.numpy(), expected)
        np.testing.assert_array_equal(valid.numpy(), expected_valid)


# --------------------------------------------------------------------------- crop


class TestCrop:
    @pytest.mark.parametrize(
        "margin, dy, dx",
        [
            ((2, 3), 0, 0),
            ((2, 3), 1, -1),
            ((2, 3), -2, 0),
            ((2, 3), 2, 3),
            ((2, 3), -2, -3),
            ((0, 1), 0, 1),
            ((0, 1), 0, -1),
            ((3, 0), -2, 0),
            ((3, 0), 3, 0),
        ],
    )
    def test_window_of_the_larger_image(self, rng, margin, dy, dx):
        image = rng.standard_normal((2, 11, 13))
        my, mx = margin
        height, width = 11 - 2 * my, 13 - 2 * mx
        top, left = my - dy, mx - dx  # window offset: margin minus shift
        expected = image[..., top : top + height, left : left + width]
        out, valid = shift_with_mask(image, dy, dx, mode="crop", margin=margin)
        np.testing.assert_array_equal(out, expected)
        assert valid.shape == (height, width) and valid.all()

    def test_reference_window_is_the_centre(self, rng):
        image = rng.random((9, 10))
        np.testing.assert_array_equal(shift(image, 0, 0, mode="crop", margin=2), image[2:-2, 2:-2])

    def test_content_moves_like_the_other_modes(self, rng):
        # Inside the window, a crop shift agrees with the circular one: the same image content, moved.
        image = rng.random((12, 12))
        window = shift(image, 2, -1, mode="crop", margin=3)
        rolled = np.roll(image, (2, -1), axis=(0, 1))[3:-3, 3:-3]
        np.testing.assert_array_equal(window, rolled)

    def test_default_margin_is_the_shift(self, rng):
        image = rng.random((9, 10))
        out = shift(image, -2, 1, mode="crop")
        np.testing.assert_array_equal(out, image[4:9, 0:8])

    def test_int_margin_applies_to_both_axes(self, rng):
        image = rng.random((9, 10))
        assert shift(image, 0, 0, mode="crop", margin=1).shape == (7, 8)

    def test_output_is_a_copy(self, generator):
        image = torch.rand(6, 6, generator=generator)
        out = shift(image, 0, 0, mode="crop", margin=1)
        out.fill_(5.0)
        assert image.max() < 1.0


class TestCropErrors:
    def test_margin_smaller_than_shift(self):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((9, 9)), 2, 0, mode="crop", margin=1)
        assert (
            str(info.value)
            == "margin: (1, 1) is smaller than the shift (2, 0); a crop window cannot move beyond its margin"
        )

    def test_margin_leaves_nothing(self):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((6, 6)), 0, 0, mode="crop", margin=3)
        assert str(info.value) == "margin: (3, 3) leaves nothing of a 6x6 map"

    @pytest.mark.parametrize("margin", [-1, (1, -1), (1, 2, 3), (1.5, 1), "2"])
    def test_bad_margin(self, margin):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((9, 9)), 0, 0, mode="crop", margin=margin)
        assert str(info.value) == f"margin: must be a non-negative int or a pair of them, got {margin!r}"


# --------------------------------------------------------------------------- fourier


class TestFourier:
    @pytest.mark.parametrize("size", [(8, 8), (7, 9), (10, 5), (6, 11)])
    @pytest.mark.parametrize("dy, dx", INTEGER_SHIFTS)
    @pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-12)])
    def test_integer_shifts_equal_np_roll(self, rng, size, dy, dx, dtype, tolerance):
        image = rng.random((2, *size)).astype(dtype)
        out = shift(image, dy, dx, mode="fourier")
        assert out.dtype == dtype
        np.testing.assert_allclose(out, np.roll(image, (dy, dx), axis=(-2, -1)), rtol=0, atol=tolerance)

    @pytest.mark.parametrize("size", [(9, 7), (11, 11), (5, 13)])
    def test_two_half_pixel_shifts_make_one_pixel_odd_sizes(self, rng, size):
        image = rng.standard_normal(size)
        twice = shift(shift(image, 0.5, -0.5, mode="fourier"), 0.5, -0.5, mode="fourier")
        np.testing.assert_allclose(twice, np.roll(image, (1, -1), axis=(0, 1)), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("size", [(8, 8), (10, 6), (8, 7)])
    def test_two_half_pixel_shifts_make_one_pixel_even_sizes_band_limited(self, rng, size):
        # With an even size, a half-pixel shift of the Nyquist frequency is not real
        # (its phase is +-i) and the real inverse FFT drops it, so the identity holds
        # for images without Nyquist content only.
        image = without_nyquist(rng.standard_normal(size))
        twice = shift(shift(image, 0.5, 0.5, mode="fourier"), 0.5, 0.5, mode="fourier")
        np.testing.assert_allclose(twice, np.roll(image, (1, 1), axis=(0, 1)), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("height, width, ky, kx", [(16, 16, 3, 2), (15, 17, 4, -5), (12, 9, 5, 4), (9, 12, -2, 5)])
    @pytest.mark.parametrize("dy, dx", [(0.5, 0.0), (0.25, -1.75), (-2.3, 0.6), (7.9, 3.1)])
    def test_band_limited_sinusoid_moves_analytically(self, height, width, ky, kx, dy, dx):
        phase = 0.7
        wave = sinusoid(height, width, ky, kx, phase)
        expected = sinusoid(height, width, ky, kx, phase, dy, dx)
        np.testing.assert_allclose(shift(wave, dy, dx, mode="fourier"), expected, rtol=0, atol=1e-12)

    def test_sinusoid_float32(self):
        wave = sinusoid(16, 16, 2, 3, 0.1).astype(np.float32)
        expected = sinusoid(16, 16, 2, 3, 0.1, 0.5, -1.25)
        np.testing.assert_allclose(shift(wave, 0.5, -1.25, mode="fourier"), expected, rtol=0, atol=1e-5)

    def test_preserves_mean_and_energy_of_band_limited_image(self, rng):
        image = rng.standard_normal((9, 11))
        out = shift(image, 0.3, -0.8, mode="fourier")
        assert out.mean() == pytest.approx(image.mean(), abs=1e-12)
        assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(image), rel=1e-12)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_keeps_dtype(self, generator, dtype):
        image = torch.rand(8, 8, generator=generator).to(dtype)
        out = shift(image, 0, 1, mode="fourier")
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), torch.roll(image, 1, -1).float(), atol=1e-2, rtol=1e-2)

    def test_every_pixel_valid(self, rng):
        _, valid = shift_with_mask(rng.random((5, 6)), 0.5, 0.5, mode="fourier")
        assert valid.shape == (5, 6) and valid.all()

    @pytest.mark.parametrize("value", [np.float32(0.5), np.int64(2), 1])
    def test_accepts_numpy_scalars(self, rng, value):
        image = rng.random((6, 6))
        np.testing.assert_allclose(
            shift(image, value, 0, mode="fourier"), shift(image, float(value), 0, mode="fourier"), atol=1e-12
        )


# --------------------------------------------------------------------------- types and errors


class TestTypes:
    @pytest.mark.parametrize("mode", SHIFT_MODES)
    def test_numpy_in_numpy_out(self, rng, mode):
        image = rng.random((2, 8, 8)).astype(np.float32)
        out, valid = shift_with_mask(image, 1, -1, mode=mode)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert isinstance(valid, np.ndarray) and valid.dtype == np.bool_
        assert valid.shape == out.shape[-2:]

    @pytest.mark.parametrize("mode", SHIFT_MODES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_torch_in_torch_out(self, generator, mode, dtype):
        image = torch.rand(2, 8, 8, generator=generator, dtype=dtype)
        out, valid = shift_with_mask(image, 1, -1, mode=mode)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype
        assert isinstance(valid, torch.Tensor) and valid.dtype == torch.bool
        assert valid.shape == out.shape[-2:]

    @pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
    def test_integers_become_float32(self, dtype):
        out = shift(np.ones((3, 3), dtype=dtype), 0, 1, mode="zero")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [[0, 1, 1]] * 3)

    def test_numpy_input_is_not_modified(self, rng):
        image = rng.random((5, 5))
        copy = image.copy()
        for mode in SHIFT_MODES:
            shift(image, 1, 1, mode=mode)
        np.testing.assert_array_equal(image, copy)

    def test_negatively_strided_numpy(self, rng):
        image = rng.random((5, 6))[::-1]
        np.testing.assert_array_equal(shift(image, 1, 2), np.roll(image, (1, 2), axis=(0, 1)))


class TestShiftErrors:
    @pytest.mark.parametrize("mode", ["circular", "zero", "crop"])
    def test_fractional_shift_refused_outside_fourier(self, mode):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((8, 8)), 0.5, 0, mode=mode)
        assert (
            str(info.value)
            == f"dy: must be a whole number of pixels in {mode!r} mode, got 0.5; use mode='fourier' for sub-pixel "
            "shifts"
        )

    def test_fractional_dx(self):
        with pytest.raises(ShiftlabError, match=r"^dx: must be a whole number of pixels in 'zero' mode, got 1.25;"):
            shift(np.zeros((8, 8)), 0, 1.25, mode="zero")

    def test_whole_floats_are_accepted(self, rng):
        image = rng.random((4, 4))
        np.testing.assert_array_equal(shift(image, 1.0, -2.0), np.roll(image, (1, -2), axis=(0, 1)))

    @pytest.mark.parametrize("value", [math.nan, math.inf, "1", None, True])
    def test_not_a_finite_number(self, value):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((4, 4)), value, 0, mode="fourier")
        assert str(info.value) == f"dy: must be a finite number, got {value!r}"

    def test_bad_mode(self):
        with pytest.raises(ShiftlabError) as info:
            shift(np.zeros((4, 4)), 0, 1, mode="wrap")
        assert str(info.value) == "mode: must be one of circular, zero, crop, fourier, got 'wrap'"

    def test_needs_two_axes(self):
        with pytest.raises(ShiftlabError, match=r"^x: expected an image or feature map of shape \(\.\.\., H, W\)"):
            shift(np.zeros(4), 0, 1)

    def test_complex_refused(self):
        with pytest.raises(ShiftlabError, match=r"^x: expected real numbers"):
            shift(np.zeros((4, 4), dtype=complex), 0, 1)


# --------------------------------------------------------------------------- lists of shifts


class TestCropMargin:
    @pytest.mark.parametrize(
        "shifts, expected",
        [([(0, 0)], (0, 0)), ([(1, -3), (-2, 2)], (2, 3)), ([], (0, 0)), ([(0, -5)], (0, 5))],
    )
    def test_largest_shift_per_axis(self, shifts, expected):
        assert crop_margin(shifts) == expected


class TestShiftRange:
    @pytest.mark.parametrize(
        "spec, expected",
        [
            ("0:4", [0, 1, 2, 3]),
            ("-3:3:2", [-3, -1, 1]),
            ("5", [5]),
            ("-2", [-2]),
            (" 1:3 ", [1, 2]),
            ("4:0:-2", [4, 2]),
            ([3, -1], [3, -1]),
            (range(2), [0, 1]),
            (np.array([1, 2]), [1, 2]),
        ],
    )
    def test_forms(self, spec, expected):
        assert shift_range(spec) == expected

    def test_values_are_python_ints(self):
        assert all(type(value) is int for value in shift_range(np.arange(3)))

    def test_empty_range(self):
        with pytest.raises(ShiftlabError) as info:
            shift_range("0:0")
        assert str(info.value) == "shifts: '0:0' is empty (stop is excluded, as in Python: 0:8 gives 0..7)"

    @pytest.mark.parametrize("spec", ["a:b", "1.5", "", "1:x"])
    def test_not_numbers(self, spec):
        with pytest.raises(ShiftlabError) as info:
            shift_range(spec)
        assert (
            str(info.value)
            == f"shifts: cannot read {spec!r}: expected start:stop[:step] or a whole number, e.g. 0:8 or -2:3"
        )

    def test_step_zero(self):
        with pytest.raises(ShiftlabError) as info:
            shift_range("0:4:0")
        assert str(info.value) == "shifts: step of '0:4:0' must not be 0"

    def test_too_many_parts(self):
        with pytest.raises(ShiftlabError) as info:
            shift_range("0:4:1:2")
        assert str(info.value) == "shifts: cannot read '0:4:1:2': expected start:stop[:step]"

    def test_sequence_of_non_integers(self):
        with pytest.raises(ShiftlabError) as info:
            shift_range([1, 1.5])
        assert str(info.value) == "shifts: expected whole numbers, got [1, 1.5]"


class TestShiftGrid:
    def test_square_grid(self):
        assert shift_grid("0:2") == [(0, 0), (0, 1), (1, 0), (1, 1)]

    def test_rows_then_columns(self):
        assert shift_grid("0:2", [5, 6, 7]) == [(0, 5), (0, 6), (0, 7), (1, 5), (1, 6), (1, 7)]

    def test_every_pair_once(self):
        grid = shift_grid("-2:3", "0:4")
        assert len(grid) == 20 and len(set(grid)) == 20
        assert set(grid) == {(dy, dx) for dy in range(-2, 3) for dx in range(4)}


class TestParseShifts:
    @pytest.mark.parametrize(
        "spec, expected",
        [
            ("0:3", [(0, 0), (0, 1), (0, 2)]),
            ("4", [(0, 4)]),
            ("-2:3:2", [(0, -2), (0, 0), (0, 2)]),
            ("diag:0:3", [(0, 0), (1, 1), (2, 2)]),
            ("diag:-1", [(-1, -1)]),
            ("grid:0:2", [(0, 0), (0, 1), (1, 0), (1, 1)]),
            ("grid:0:2,5:7", [(0, 5), (0, 6), (1, 5), (1, 6)]),
            ("1,2;0,-3", [(1, 2), (0, -3)]),
            (" 1 , 2 ; +0 , -3 ", [(1, 2), (0, -3)]),
            ("7,-7", [(7, -7)]),
        ],
    )
    def test_forms(self, spec, expected):
        assert parse_shifts(spec) == expected

    def test_empty_range(self):
        with pytest.raises(ShiftlabError) as info:
            parse_shifts("0:0")
        assert str(info.value) == "shifts: '0:0' is empty (stop is excluded, as in Python: 0:8 gives 0..7)"

    def test_not_numbers(self):
        with pytest.raises(ShiftlabError) as info:
            parse_shifts("a:b")
        assert (
            str(info.value)
            == "shifts: cannot read 'a:b': expected start:stop[:step] or a whole number, e.g. 0:8 or -2:3"
        )

    @pytest.mark.parametrize("spec, item", [("1,2;3", "3"), ("1,2;3,4,5", "3,4,5"), ("1,x", "1,x"), ("1.5,2", "1.5,2")])
    def test_bad_pair(self, spec, item):
        with pytest.raises(ShiftlabError) as info:
            parse_shifts(spec)
        assert (
            str(info.value)
            == f"shifts: cannot read {item!r} in {spec!r}: expected dy,dx pairs separated by ';', e.g. '1,2;0,-3'"
        )

    @pytest.mark.parametrize("spec", ["0:4:0", "diag:0:4:0", "grid:0:4:0"])
    def test_step_zero(self, spec):
        body = spec.split(":", 1)[1] if spec[0].isalpha() else spec
        with pytest.raises(ShiftlabError) as info:
            parse_shifts(spec)
        assert str(info.value) == f"shifts: step of {body!r} must not be 0"

    def test_grid_with_bad_columns(self):
        with pytest.raises(ShiftlabError, match=r"^shifts: '3:3' is empty"):
            parse_shifts("grid:0:2,3:3")
