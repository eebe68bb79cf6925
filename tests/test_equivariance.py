"""Tests for shiftlab.probing.equivariance (equivariance_error, feature_stride) and its hot path,
shiftlab.probing._compare.

Known answers: circularly padded stride-1 convolutions commute with every
circular shift; stride-2 max pooling commutes with even shifts only; a zero
padded network of total stride s commutes with multiples of s away from the
border. The sums of :mod:`shiftlab.probing._compare` are checked against a slow,
obvious numpy reference (``np.roll`` or a pixel-by-pixel zero fill, masked).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from nets import fcn_stride_four
from torch import nn

from shiftlab import convolve, max_pool
from shiftlab.distances import map_error
from shiftlab.errors import ShiftlabError
from shiftlab.probing._compare import Scratch, alignment_candidates, comparison_pairs, pair_sums, whole_sums
from shiftlab.probing.equivariance import (
    NOTE_GLOBAL,
    NOTE_NOT_MULTIPLE,
    NOTE_WHOLE_MAP,
    EquivarianceResult,
    ShiftComparison,
    equivariance_error,
    feature_stride,
)

EXACT = 1e-6

# Up to the size of the smallest test input (12) less one: a larger circular shift repeats one of these, and is refused.
ALL_SHIFTS = [(0, 0), (1, 0), (0, 1), (-1, -1), (3, -5), (-7, 6), (11, -10), (-9, 11)]
EVEN_SHIFTS = [(0, 0), (2, 0), (0, -2), (4, 6), (-10, 14)]
ODD_SHIFTS = [(1, 0), (0, 1), (1, 1), (-3, 2), (15, 0)]


def circular_conv_net(channels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(6, 4, 5, padding=2, padding_mode="circular"),
    ).eval()


# --------------------------------------------------------------------------- the numpy reference


def reference_sums(
    reference: np.ndarray, output: np.ndarray, offset: tuple[int, int], circular: bool, core: np.ndarray | None = None
) -> dict[str, float]:
    """The sums for one shifted map and one whole-pixel move, from their definitions, in float64.

    Circular: ``output`` against ``np.roll(reference, offset)``, every pixel.
    Otherwise: ``output[y, x]`` against ``reference[y - oy, x - ox]`` where that
    source exists and (with a core) both pixels are in the core.
    """
    reference, output = reference.astype(np.float64), output.astype(np.float64)
    height, width = reference.shape[-2:]
    oy, ox = offset
    if circular:
        moved = np.roll(reference, (oy, ox), axis=(-2, -1))
        valid = np.ones((height, width), dtype=bool)
    else:
        moved = np.zeros_like(reference)
        valid = np.zeros((height, width), dtype=bool)
        for y in range(height):
            for x in range(width):
                sy, sx = y - oy, x - ox
                if 0 <= sy < height and 0 <= sx < width and (core is None or (core[y, x] and core[sy, sx])):
                    valid[y, x] = True
                    moved[..., y, x] = reference[..., sy, sx]
    keep = np.broadcast_to(valid, reference.shape)
    a, b = output[keep], moved[keep]
    return {
        "squared_difference": float(((a - b) ** 2).sum()),
        "squared_reference": float((b**2).sum()),
        "squared_output": float((a**2).sum()),
        "dot": float((a * b).sum()),
        "max_abs": float(np.abs(a - b).max()) if a.size else 0.0,
        "compared": int(keep.sum()),
        "total": int(reference.size),
    }


def candidates(dy: int, dx: int, stride: tuple[int, int]) -> set[tuple[int, int]]:
    """Floor and ceiling of shift / stride per axis, with integer arithmetic."""

    def axis(value: int, step: int) -> set[int]:
        return {value // step, -((-value) // step)}

    return {(oy, ox) for oy in axis(dy, stride[0]) for ox in axis(dx, stride[1])}


class Found(NamedTuple):
    """One pair's sums, read back."""

    squared_difference: float
    squared_reference: float
    squared_output: float
    max_abs: float
    compared: int
    total: int

    @property
    def rel_l2(self) -> float:
        return map_error(*self).rel_l2


def compare_shifts(reference, shifted, shifts, *, stride, circular, core=None, scratch=None) -> list[dict]:
    """pair_sums for every shift and candidate, read back: one ``{alignment: Found}`` per shift."""
    pairs = comparison_pairs(shifts, stride)
    maps = torch.cat([reference[None], shifted.to(reference.dtype)])
    sums = pair_sums(maps, pairs, circular=circular, core=core, scratch=scratch)
    assert sums.squares.dtype == sums.largest.dtype == torch.float64 and sums.compared.dtype == torch.int64
    squares, largest, compared = sums.squares.tolist(), sums.largest.tolist(), sums.compared.tolist()
    results: list[dict] = [{} for _ in shifts]
    for position, (index, offset) in enumerate(pairs):
        results[index][offset] = Found(*squares[position], largest[position], compared[position], sums.total)
    return results


def assert_sums_close(sums: Found, expected: dict[str, float], rel: float = 1e-6) -> None:
    assert sums.compared == expected["compared"]
    assert sums.total == expected["total"]
    for name in ("squared_difference", "squared_reference", "squared_output", "max_abs"):
        assert getattr(sums, name) == pytest.approx(expected[name], rel=rel, abs=1e-12), name


def run_compare(reference: torch.Tensor, shifted: torch.Tensor, shifts, stride, circular, core=None, scratch=None):
    results = compare_shifts(reference, shifted, shifts, stride=stride, circular=circular, core=core, scratch=scratch)
    assert len(results) == len(shifts)
    ref_np = reference.double().cpu().numpy()
    core_np = None if core is None else core.cpu().numpy()
    for index, ((dy, dx), found) in enumerate(zip(shifts, results)):
        assert set(found) == candidates(dy, dx, stride)
        for offset, sums in found.items():
            expected = reference_sums(ref_np, shifted[index].double().cpu().numpy(), offset, circular, core_np)
            assert_sums_close(sums, expected)
    return results


# --------------------------------------------------------------------------- _compare

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


class TestAlignmentCandidates:
    @pytest.mark.parametrize(
        "dy, dx, stride, expected",
        [
            (0, 3, (2, 2), [(0, 1), (0, 2)]),
            (4, 4, (2, 2), [(2, 2)]),
            (-3, 0, (2, 1), [(-2, 0), (-1, 0)]),
            (5, 7, (4, 8), [(1, 0), (1, 1), (2, 0), (2, 1)]),
            (0.5, 0, (1, 1), [(0, 0), (1, 0)]),
        ],
    )
    def test_floor_and_ceiling(self, dy, dx, stride, expected):
        assert alignment_candidates(dy, dx, stride) == expected

    def test_pairs_grouped_by_alignment(self):
        pairs = comparison_pairs([(0, 1), (0, 2), (0, 3)], (1, 2))
        assert pairs == [(0, (0, 0)), (0, (0, 1)), (1, (0, 1)), (2, (0, 1)), (2, (0, 2))]


class TestCompareShifts:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("shape", [(2, 3, 7, 9), (5, 6), (1, 11, 4)])
    @pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 3)])
    def test_circular(self, generator, shape, stride, device):
        shifts = [(0, 0), (1, 2), (-3, 1), (4, -5), (9, -13), (-20, 31)]  # incl. larger than half the size
        reference = torch.randn(shape, generator=generator).to(device)
        shifted = torch.randn((len(shifts), *shape), generator=generator).to(device)
        run_compare(reference, shifted, shifts, stride, circular=True)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("shape", [(2, 3, 7, 9), (5, 6), (1, 11, 4)])
    @pytest.mark.parametrize("stride", [(1, 1), (2, 2), (3, 2)])
    def test_zero_fill(self, generator, shape, stride, device):
        shifts = [(0, 0), (1, 2), (-3, 1), (4, -5), (-2, -2)]
        reference = torch.randn(shape, generator=generator).to(device)
        shifted = torch.randn((len(shifts), *shape), generator=generator).to(device)
        run_compare(reference, shifted, shifts, stride, circular=False)

    @pytest.mark.parametrize("box", [(1, 6, 2, 7), (0, 9, 0, 8), (3, 4, 3, 4), (2, 9, 0, 5)])
    def test_rectangular_core(self, generator, box):
        shape = (2, 3, 9, 8)
        core = torch.zeros(9, 8, dtype=torch.bool)
        top, bottom, left, right = box
        core[top:bottom, left:right] = True
        shifts = [(0, 0), (1, -1), (-2, 3), (3, 0), (0, -7)]
        reference = torch.randn(shape, generator=generator)
        shifted = torch.randn((len(shifts), *shape), generator=generator)
        run_compare(reference, shifted, shifts, (1, 1), circular=False, core=core)
        run_compare(reference, shifted, shifts, (2, 2), circular=False, core=core)

    @pytest.mark.parametrize("kind", ["disc", "L", "random", "two_boxes"])
    def test_non_rectangular_core(self, generator, kind):
        height, width = 11, 9
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        if kind == "disc":
            core = (ys - 5) ** 2 + (xs - 4) ** 2 <= 12
        elif kind == "L":
            core = ((ys >= 2) & (xs <= 3)) | ((ys >= 8) & (xs <= 7))
        elif kind == "two_boxes":
            core = ((ys < 3) & (xs < 3)) | ((ys > 6) & (xs > 5))
        else:
            core = torch.rand(height, width, generator=generator) < 0.6
        shape = (2, 2, height, width)
        shifts = [(0, 0), (1, 1), (-2, 3), (4, -1), (0, 6)]
        reference = torch.randn(shape, generator=generator)
        shifted = torch.randn((len(shifts), *shape), generator=generator)
        run_compare(reference, shifted, shifts, (1, 1), circular=False, core=core)
        run_compare(reference, shifted, shifts, (2, 1), circular=False, core=core)

    @pytest.mark.parametrize("circular", [True, False])
    def test_infinity_and_nan_come_out_as_torch_gives_them(self, generator, circular):
        reference = torch.randn(2, 6, 10, generator=generator)
        shifted = torch.randn(2, 2, 6, 10, generator=generator)
        shifted[0, 1, 2, 3] = math.inf  # an overflow: infinite error, finite elsewhere
        shifted[1, 0, 4, 4] = math.nan  # a NaN: NaN error
        first, second = compare_shifts(reference, shifted, [(0, 0), (0, 0)], stride=(1, 1), circular=circular)
        assert first[(0, 0)].squared_difference == math.inf and first[(0, 0)].max_abs == math.inf
        assert first[(0, 0)].rel_l2 == math.inf
        assert math.isnan(second[(0, 0)].squared_difference) and math.isnan(second[(0, 0)].max_abs)
        assert math.isnan(second[(0, 0)].rel_l2)

    def test_maps_that_require_grad(self, generator):
        reference = torch.randn(2, 6, 10, generator=generator, requires_grad=True)
        shifted = torch.randn(1, 2, 6, 10, generator=generator) * 2
        (found,) = compare_shifts(reference, shifted.requires_grad_(), [(0, 1)], stride=(1, 1), circular=True)
        expected = reference_sums(reference.detach().numpy(), shifted[0].detach().numpy(), (0, 1), True)
        assert_sums_close(found[(0, 1)], expected)

    def test_moved_out_of_the_frame_compares_nothing(self, generator):
        reference = torch.randn(2, 5, 6, generator=generator)
        shifted = torch.randn(1, 2, 5, 6, generator=generator)
        (found,) = compare_shifts(reference, shifted, [(0, 6)], stride=(1, 1), circular=False)
        sums = found[(0, 6)]
        assert (sums.compared, sums.total) == (0, 60)
        assert math.isnan(sums.rel_l2)

    def test_equal_maps_give_zero(self, generator):
        image = torch.randn(2, 3, 8, 10, generator=generator)
        shifts = [(2, -4), (-6, 10), (3, 3)]
        shifted = torch.stack([torch.roll(image, (dy // 2, dx // 2), (-2, -1)) for dy, dx in shifts])
        for found, (dy, dx) in zip(compare_shifts(image, shifted, shifts, stride=(2, 2), circular=True), shifts):
            assert found[(dy // 2, dx // 2)].rel_l2 == 0.0

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("circular", [True, False])
    def test_half_precision_is_computed_in_float32(self, generator, dtype, circular):
        shape = (2, 3, 9, 7)
        shifts = [(0, 0), (1, -2), (-3, 5)]
        reference = torch.randn(shape, generator=generator).to(dtype)
        shifted = torch.randn((len(shifts), *shape), generator=generator).to(dtype)
        # The half-precision values are exact in float32 and their differences too: the reference is exact.
        run_compare(reference, shifted, shifts, (1, 1), circular=circular)

    def test_float64_inputs(self, generator):
        shape = (2, 8, 8)
        shifts = [(1, 1), (-2, 5)]
        reference = torch.randn(shape, generator=generator, dtype=torch.float64)
        shifted = torch.randn((2, *shape), generator=generator, dtype=torch.float64)
        results = compare_shifts(reference, shifted, shifts, stride=(1, 1), circular=True)
        expected = reference_sums(reference.numpy(), shifted[1].numpy(), (-2, 5), True)
        assert results[1][(-2, 5)].squared_difference == pytest.approx(expected["squared_difference"], rel=1e-13)

    def test_scratch_reuse_across_shapes_and_dtypes(self, generator):
        scratch = Scratch()
        for shape, dtype in [
            ((2, 8, 8), torch.float32),
            ((3, 12, 5), torch.float32),
            ((1, 4, 4), torch.float64),
            ((2, 8, 8), torch.float16),
        ]:
            reference = torch.randn(shape, generator=generator).to(dtype)
            shifted = torch.randn((3, *shape), generator=generator).to(dtype)
            shifts = [(0, 1), (2, -1), (1, 0)]
            run_compare(reference, shifted, shifts, (1, 1), circular=True, scratch=scratch)
            run_compare(reference, shifted, shifts, (1, 1), circular=False, scratch=scratch)

    @pytest.mark.parametrize("circular", [True, False])
    def test_groups_larger_than_the_scratch_limit(self, generator, monkeypatch, circular):
        # With a scratch limit of two maps, a group of five maps is compared in three pieces: same sums.
        reference = torch.randn(2, 6, 10, generator=generator)
        shifted = torch.randn(5, 2, 6, 10, generator=generator)
        shifts = [(0, 1), (0, 2), (1, 0), (0, 2), (0, 3)]
        monkeypatch.setattr("shiftlab.probing._compare.SCRATCH_ELEMENTS", 2 * reference.numel())
        run_compare(reference, shifted, shifts, (1, 2), circular=circular)

    @pytest.mark.parametrize("circular", [True, False])
    def test_accuracy_on_a_million_values(self, circular):
        # Relative error of the sums against float64 numpy below 1e-6 on ~10^6 values,
        # for maps that are close (a small difference) and maps that are not.
        generator = torch.Generator().manual_seed(7)
        reference = torch.randn(4, 16, 128, 128, generator=generator)  # 1,048,576 values
        close = torch.roll(reference, (1, -2), (-2, -1)) + 1e-3 * torch.randn(reference.shape, generator=generator)
        far = torch.randn(reference.shape, generator=generator) + 3.0
        shifted = torch.stack([close, far])
        results = compare_shifts(reference, shifted, [(1, -2), (1, -2)], stride=(1, 1), circular=circular)
        ref_np = reference.double().numpy()
        for index in range(2):
            output = shifted[index].double().numpy()
            if circular:
                moved, out = np.roll(ref_np, (1, -2), axis=(-2, -1)), output
            else:
                moved, out = ref_np[..., :-1, 2:], output[..., 1:, :-2]
            sums = results[index][(1, -2)]
            difference = ((out - moved) ** 2).sum()
            assert abs(sums.squared_difference - difference) / difference < 1e-6
            assert abs(sums.squared_reference - (moved**2).sum()) / (moved**2).sum() < 1e-6
            assert abs(sums.squared_output - (out**2).sum()) / (out**2).sum() < 1e-6
            assert sums.compared == out.size


class TestWholeSums:
    @pytest.mark.parametrize("shape", [(3, 10), (10,), (2, 4, 1, 1), (1,)])
    def test_matches_numpy(self, generator, shape):
        reference = torch.randn(shape, generator=generator)
        shifted = torch.randn((4, *shape), generator=generator)
        shifted[0] = reference
        sums = whole_sums(reference, shifted)
        squares, largest, compared = sums.squares.tolist(), sums.largest.tolist(), sums.compared.tolist()
        assert len(squares) == 4
        assert Found(*squares[0], largest[0], compared[0], sums.total).rel_l2 == 0.0
        for index in range(4):
            a, b = shifted[index].double().numpy().ravel(), reference.double().numpy().ravel()
            expected = {
                "squared_difference": float(((a - b) ** 2).sum()),
                "squared_reference": float((b**2).sum()),
                "squared_output": float((a**2).sum()),
                "max_abs": float(np.abs(a - b).max()),
                "compared": a.size,
                "total": a.size,
            }
            assert_sums_close(Found(*squares[index], largest[index], compared[index], sums.total), expected, rel=1e-12)

    def test_half_precision(self, generator):
        reference = torch.randn(2, 10, generator=generator).to(torch.bfloat16)
        shifted = torch.randn(3, 2, 10, generator=generator).to(torch.bfloat16)
        difference = whole_sums(reference, shifted).squares[2, 0].item()
        a, b = shifted[2].double().numpy(), reference.double().numpy()
        assert difference == pytest.approx(((a - b) ** 2).sum(), rel=1e-12)


class TestShiftComparison:
    """The accumulator: any split of the images, in any order, merged, gives the same rows."""

    SHIFTS = [(0, 0), (0, 1), (1, 1), (2, -2), (-3, 0)]

    def maps(self, images: int = 6) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        reference = torch.randn(images, 3, 8, 10, generator=generator)
        # f(T_t x): the reference moved by t // 2 plus noise, so every row has a finite, distinct error
        shifted = [torch.roll(reference, (dy // 2, dx // 2), (-2, -1)) for dy, dx in self.SHIFTS]
        noise = 0.1 * torch.randn(len(self.SHIFTS), *reference.shape, generator=generator)
        return torch.cat([reference[None], torch.stack(shifted) + noise])

    @pytest.mark.parametrize("circular", [True, False])
    def test_any_split_of_images_and_shifts_gives_the_same_rows(self, circular):
        maps = self.maps()
        whole = ShiftComparison(self.SHIFTS, stride=(2, 2), circular=circular)
        whole.update(maps)
        parts = [ShiftComparison(self.SHIFTS, stride=(2, 2), circular=circular) for _ in range(3)]
        parts[0].update(maps[:, :2])  # two images, every shift
        parts[1].update(maps[[0, 3, 1], 2:], indices=[2, 0])  # the other images, shifts in another order...
        parts[1].update(maps[[0, 2, 4, 5], 2:], indices=[1, 3, 4])  # ... and the rest of them
        merged = parts[2].merge(parts[0]).merge(parts[1])
        for mine, theirs in zip(merged.compute(), whole.compute()):
            assert mine is not None and theirs is not None
            assert (mine.aligned_dy, mine.aligned_dx, mine.multiple) == (
                theirs.aligned_dy,
                theirs.aligned_dx,
                theirs.multiple,
            )
            assert mine.rel_l2 == pytest.approx(theirs.rel_l2, rel=1e-12)
            assert mine.max_abs == theirs.max_abs and mine.valid_fraction == theirs.valid_fraction

    def test_unmeasured_shifts_are_none_and_logits_agreement(self):
        comparison = ShiftComparison([(0, 1), (0, 2)], stride=None, logits=True)
        logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]], [[0.0, 3.0], [0.0, 1.0]]])  # (1 + 1, 2 images, 2 classes)
        comparison.update(logits, indices=[1])
        first, second = comparison.compute()
        assert first is None and second is not None and second.note == NOTE_GLOBAL
        assert comparison.top1_agreement() == [None, 0.5]

    def test_bad_indices_are_a_bug_not_bad_input(self):
        comparison = ShiftComparison([(0, 1)], stride=(1, 1))
        with pytest.raises(ValueError, match="do not name distinct shifts"):
            comparison.update(torch.zeros(2, 4, 4), indices=[3])


# --------------------------------------------------------------------------- feature_stride


class TestFeatureStride:
    @pytest.mark.parametrize(
        "input_size, output_size, expected",
        [
            ((224, 224), (56, 56), (4, 4)),
            ((224, 224), (7, 7), (32, 32)),
            ((224, 224), (112, 112), (2, 2)),
            ((114, 99), (8, 99), (16, 1)),
            ((90, 6), (30, 4), (3, 1)),
            ((32, 32), (32, 32), (1, 1)),
            ((6, 6), (4, 4), (1, 1)),  # a valid 3x3 convolution: no stride
            ((225, 225), (113, 113), (2, 2)),  # odd size, padded stride 2
            ((64, 64), (1, 1), (64, 64)),
            ((224, 224), (55, 55), (4, 4)),  # AlexNet's first convolution: round(224 / 55)
            ((1, 3, 40, 40), (1, 8, 10, 10), (4, 4)),  # only the last two axes count
            ((30, 30), (10, 10), (3, 3)),
        ],
    )
    def test_examples(self, input_size, output_size, expected):
        assert feature_stride(input_size, output_size) == expected


# --------------------------------------------------------------------------- equivariance_error: known answers


class TestCircularConvolutionIsExact:
    @pytest.mark.parametrize("kernel", ["sobel_y", "sobel_x", "laplacian", [[1, 2, 0], [0, -1, 3]]])
    def test_shiftlab_convolve(self, generator, kernel):
        x = torch.rand(2, 16, 16, generator=generator)
        result = equivariance_error(lambda t: convolve(t, kernel, padding="circular"), x, ALL_SHIFTS)
        assert result.stride == (1, 1)
        for error in result.errors:
            assert error.rel_l2 <= EXACT, (error.dy, error.dx)
            assert error.multiple and (error.aligned_dy, error.aligned_dx) == (error.dy, error.dx)
            assert error.note == "" and error.valid_fraction == 1.0

    def test_nn_conv2d_circular(self, generator):
        net = circular_conv_net()
        x = torch.rand(2, 3, 15, 17, generator=generator)  # odd sizes
        result = equivariance_error(net, x, ALL_SHIFTS)
        assert result.max_rel_l2 <= EXACT
        assert all(error.cosine == pytest.approx(1.0, abs=1e-6) for error in result.errors)

    def test_numpy_input(self, rng):
        x = rng.random((12, 12))
        result = equivariance_error(lambda t: convolve(t, "sobel_y", padding="circular"), x, [(1, 2), (-5, 7)])
        assert result.max_rel_l2 <= EXACT

    def test_fourier_mode_integer_shifts(self, generator):
        x = torch.rand(1, 3, 16, 16, generator=generator)
        result = equivariance_error(circular_conv_net(), x, [(1, 0), (-3, 5), (8, 8)], mode="fourier")
        assert result.max_rel_l2 <= 1e-5

    def test_float64(self, generator):
        net = circular_conv_net().double()
        x = torch.rand(1, 3, 12, 12, generator=generator, dtype=torch.float64)
        assert equivariance_error(net, x, ALL_SHIFTS).max_rel_l2 <= 1e-14

    def test_same_padding_is_not_circularly_equivariant(self, generator):
        # The negative control: zero padding breaks the commutation at the border.
        x = torch.rand(1, 16, 16, generator=generator) + 1.0
        result = equivariance_error(lambda t: convolve(t, "sobel_y", padding="same", relu=False), x, [(3, 0)])
        assert result.errors[0].rel_l2 > 1e-2


class TestZeroPaddedConvolution:
    @pytest.mark.parametrize(
        "kernel", ["sobel_y", "sobel_x", "laplacian", [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]
    )
    @pytest.mark.parametrize("mode", ["zero", "crop"])
    def test_exact_away_from_the_border(self, generator, kernel, mode):
        # Kernels with zero taps included: a pixel that does not depend on the border band is kept.
        x = torch.rand(2, 32, 32, generator=generator)
        result = equivariance_error(
            lambda t: convolve(t, kernel, padding="same"), x, [(0, 1), (-3, 2), (4, -4)], mode=mode
        )
        for error in result.errors:
            assert error.rel_l2 <= EXACT, (error.dy, error.dx)
            assert 0 < error.valid_fraction < 1

    def test_circular_mode_sees_the_border(self, generator):
        x = torch.rand(2, 20, 20, generator=generator) + 1.0
        result = equivariance_error(lambda t: convolve(t, "laplacian", padding="same", relu=False), x, [(0, 1)])
        assert result.errors[0].rel_l2 > 1e-2


class TestMaxPoolStrideTwo:
    @pytest.mark.parametrize("pool", [nn.MaxPool2d(2), max_pool], ids=["nn.MaxPool2d", "shiftlab.max_pool"])
    def test_even_shifts_are_exact(self, generator, pool):
        x = torch.rand(2, 3, 16, 16, generator=generator)
        result = equivariance_error(pool, x, EVEN_SHIFTS)
        assert result.stride == (2, 2)
        for error, (dy, dx) in zip(result.errors, EVEN_SHIFTS):
            assert error.multiple
            assert (error.feature_dy, error.feature_dx) == (dy / 2, dx / 2)
            assert (error.aligned_dy, error.aligned_dx) == (dy // 2, dx // 2)
            assert error.rel_l2 <= EXACT and error.note == ""

    @pytest.mark.parametrize("pool", [nn.MaxPool2d(2), max_pool], ids=["nn.MaxPool2d", "shiftlab.max_pool"])
    def test_odd_shifts_alias(self, generator, pool):
        x = torch.rand(2, 3, 16, 16, generator=generator)
        result = equivariance_error(pool, x, ODD_SHIFTS)
        for error, (dy, dx) in zip(result.errors, ODD_SHIFTS):
            assert not error.multiple
            assert error.rel_l2 > 1e-2, (dy, dx)
            assert error.note == NOTE_NOT_MULTIPLE
            # the best whole-pixel alignment is the floor or the ceiling of t / 2
            assert error.aligned_dy in (math.floor(dy / 2), math.ceil(dy / 2))
            assert error.aligned_dx in (math.floor(dx / 2), math.ceil(dx / 2))

    def test_constant_input_is_trivially_equivariant(self):
        result = equivariance_error(nn.MaxPool2d(2), torch.ones(1, 8, 8), [(0, 1)])
        assert result.errors[0].rel_l2 == 0.0 and not result.errors[0].multiple


class TestZeroPaddedNetworkOfStrideFour:
    MULTIPLES = [(0, 0), (0, 4), (4, -4), (-8, 8), (8, 0)]
    OTHERS = [(0, 1), (0, 2), (1, 3), (2, 2), (3, 0), (-6, 0)]

    @pytest.mark.parametrize("mode, size", [("zero", 48), ("crop", 64)])
    def test_multiples_of_the_stride_are_exact_on_the_valid_region(self, generator, mode, size):
        x = torch.rand(1, 3, size, size, generator=generator)
        result = equivariance_error(fcn_stride_four(), x, self.MULTIPLES + self.OTHERS, mode=mode)
        assert result.stride == (4, 4)
        assert result.core is not None and result.core.any() and not result.core.all()
        for error in result.errors:
            if (error.dy, error.dx) in self.MULTIPLES:
                assert error.multiple and error.rel_l2 <= 1e-5, (error.dy, error.dx)
                assert 0 < error.valid_fraction < 1
            else:
                assert not error.multiple and error.rel_l2 > 1e-2, (error.dy, error.dx)

    def test_crop_reference_is_the_centre_window(self, generator):
        x = torch.rand(1, 3, 64, 64, generator=generator)
        result = equivariance_error(fcn_stride_four(), x, [(0, 4), (-8, 0)], mode="crop")
        assert result.input_shape == (1, 3, 48, 56)
        assert result.output_shape == (1, 6, 12, 14)

    def test_circular_mode_on_zero_padded_net_is_not_exact_because_of_border_effects(self, generator):
        # Under circular shifts the content wraps around, but zero padding does not:
        # even multiples of the stride give errors at the border, and circular mode
        # compares every pixel.
        x = torch.rand(1, 3, 48, 48, generator=generator)
        result = equivariance_error(fcn_stride_four(), x, [(0, 4), (4, -4), (-8, 8)], mode="circular")
        assert result.core is None
        for error in result.errors:
            assert error.multiple and error.valid_fraction == 1.0
            assert error.rel_l2 > 1e-2


class TestInvariance:
    def test_global_average_pooling_of_a_circular_net(self, generator):
        net = circular_conv_net()
        x = torch.rand(2, 3, 16, 16, generator=generator)
        result = equivariance_error(lambda t: net(t).mean(dim=(-2, -1)), x, ALL_SHIFTS)
        assert result.output_shape == (2, 4)
        assert result.stride is None
        for error in result.errors:
            assert error.rel_l2 <= EXACT
            assert error.stride is None and error.note == NOTE_GLOBAL
            assert not error.multiple and error.valid_fraction == 1.0

    def test_one_by_one_map_is_compared_as_a_whole(self, generator):
        net = circular_conv_net()
        x = torch.rand(1, 3, 16, 16, generator=generator)
        result = equivariance_error(lambda t: net(t).amax(dim=(-2, -1), keepdim=True), x, [(3, 5)])
        assert result.output_shape == (1, 4, 1, 1)
        assert result.errors[0].note == NOTE_GLOBAL and result.errors[0].rel_l2 <= EXACT

    def test_not_invariant_output(self):
        x = torch.arange(16.0).reshape(1, 4, 4)
        result = equivariance_error(lambda t: t[..., 0, :], x, [(1, 0)])
        # rank 2 output of a rank 3 input: whole comparison; row 0 becomes the old row 3
        assert result.errors[0].note == NOTE_GLOBAL
        expected = np.linalg.norm(np.arange(12.0, 16.0) - np.arange(4.0)) / np.linalg.norm(np.arange(4.0))
        assert result.errors[0].rel_l2 == pytest.approx(expected)

    def test_whole_map_when_every_pixel_sees_the_border(self, generator):
        x = torch.rand(1, 8, 8, generator=generator)
        result = equivariance_error(
            lambda t: t.mean(dim=(-2, -1), keepdim=True).expand_as(t).clone(), x, [(0, 1)], mode="zero"
        )
        assert not result.core.any()
        assert NOTE_WHOLE_MAP in result.errors[0].note


class TestStrideOverride:
    def test_given_stride_is_used(self, generator):
        x = torch.rand(1, 30, 30, generator=generator)
        result = equivariance_error(lambda t: t[..., ::3, ::3], x, [(3, -6), (0, 1)], stride=3)
        assert result.stride == (3, 3)
        first, second = result.errors
        assert (first.feature_dy, first.feature_dx, first.multiple) == (1.0, -2.0, True)
        assert first.rel_l2 <= EXACT
        assert not second.multiple

    def test_wrong_stride_shows_as_an_error(self, generator):
        x = torch.rand(1, 16, 16, generator=generator)
        right = equivariance_error(nn.MaxPool2d(2), x, [(0, 2)])
        wrong = equivariance_error(nn.MaxPool2d(2), x, [(0, 2)], stride=(1, 1))
        assert right.errors[0].rel_l2 <= EXACT
        assert wrong.stride == (1, 1) and wrong.errors[0].rel_l2 > 1e-2

    def test_per_axis_stride(self, generator):
        x = torch.rand(1, 16, 16, generator=generator)
        result = equivariance_error(lambda t: t[..., ::2, :], x, [(2, 1)], stride=(2, 1))
        assert result.stride == (2, 1) and result.errors[0].rel_l2 <= EXACT

    @pytest.mark.parametrize(
        "stride, message",
        [
            (0, "stride: must be an integer >= 1, got 0"),
            ((1, 2, 3), "stride: must be an integer or a pair of integers, got (1, 2, 3)"),
            ((2, 0), "stride: must be an integer >= 1, got 0"),
            ((1.5, 1), "stride: must be an integer, got 1.5"),
        ],
    )
    def test_bad_stride(self, stride, message):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), [(0, 1)], stride=stride)
        assert str(info.value) == message

    def test_numpy_and_python_numbers_alike(self):
        # Every public function takes the same shift types: Python and numpy integers and floats.
        x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
        shifts = [(np.int64(1), np.int32(2)), (np.float64(3.0), 1), (2, np.int8(-1))]
        result = equivariance_error(lambda t: t, x, shifts, stride=np.int64(1))
        assert [(error.dy, error.dx) for error in result.errors] == [(1, 2), (3, 1), (2, -1)]
        assert all(type(error.dy) is int for error in result.errors)
        fourier = equivariance_error(lambda t: t, x, [(np.float32(0.5), 0)], mode="fourier")
        assert fourier.errors[0].dy == 0.5


class TestEquivarianceResult:
    def test_fields_and_helpers(self, generator):
        x = torch.rand(1, 3, 16, 16, generator=generator)
        result = equivariance_error(nn.MaxPool2d(2), x, [(0, 2), (0, 1), (1, 1)])
        assert isinstance(result, EquivarianceResult)
        assert result.mode == "circular"
        assert result.input_shape == (1, 3, 16, 16) and result.output_shape == (1, 3, 8, 8)
        assert result.reference_scale == pytest.approx(float(nn.MaxPool2d(2)(x).abs().max()))
        assert result.max_rel_l2 == max(error.rel_l2 for error in result.errors)
        assert result.worst().rel_l2 == result.max_rel_l2
        rows = result.rows()
        assert len(rows) == 3 and all(row["mode"] == "circular" for row in rows)
        assert rows[0]["dx"] == 2 and rows[0]["stride"] == (2, 2)

    def test_zero_mode_keeps_the_core(self, generator):
        x = torch.rand(1, 16, 16, generator=generator)
        box = [[1.0, 1.0, 1.0]] * 3
        result = equivariance_error(lambda t: convolve(t, box, padding="same"), x, [(2, -1)], mode="zero")
        # a 3x3 box: the core excludes the 2-pixel band and one more pixel, vertically; 1 + 1 horizontally
        expected = torch.zeros(16, 16, dtype=torch.bool)
        expected[3:13, 2:14] = True
        assert torch.equal(result.core, expected)
        assert result.errors[0].rel_l2 <= EXACT


class TestEquivarianceErrors:
    def test_empty_shifts(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), [])
        assert str(info.value) == "shifts: is empty: give at least one (dy, dx) pair"

    def test_bad_mode(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), [(0, 1)], mode="reflect")
        assert str(info.value) == "mode: must be one of circular, zero, crop, fourier, got 'reflect'"

    def test_input_too_small_for_the_crop_margin(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), [(0, 4)], mode="crop")
        assert (
            str(info.value)
            == "shifts: crop windows for shifts up to (0, 4) need an input of at least 1x9 pixels, got 8x8"
        )

    def test_zero_shift_out_of_the_frame(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), [(0, 7), (-8, 1)], mode="zero")
        assert str(info.value) == (
            "shifts: (-8, 1) moves all of the 8x8 image out of the frame (zero shifts must be smaller than the image: "
            "|dy| < 8, |dx| < 8)"
        )

    @pytest.mark.parametrize("mode", ["circular", "fourier"])
    def test_periodic_shift_as_large_as_the_image(self, mode):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 10), [(7, -9), (0, 1), (-8, 3)], mode=mode)
        assert str(info.value) == (
            f"shifts: (-8, 3) is not smaller than the 8x10 image: {mode} shifts repeat with its size, so it is (0, 3) "
            "again"
        )
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 10), [(0, 1000)], mode=mode)
        assert str(info.value).endswith("so it is (0, 0) again")
        if mode == "fourier":  # sub-pixel shifts repeat too
            with pytest.raises(ShiftlabError) as info:
                equivariance_error(lambda t: t, torch.zeros(1, 8, 10), [(0.5, -10.25)], mode=mode)
            assert str(info.value).endswith("so it is (0.5, -0.25) again")

    def test_fn_raising_runtime_error(self):
        def broken(tensor):
            raise RuntimeError("kernel size can't be greater than actual input size\nmore detail")

        with pytest.raises(ShiftlabError) as info:
            equivariance_error(broken, torch.zeros(1, 8, 8), [(0, 1)])
        assert (
            str(info.value)
            == "fn: failed on an input of shape (1, 8, 8): kernel size can't be greater than actual input size"
        )

    def test_module_rejecting_the_input(self):
        with pytest.raises(ShiftlabError, match=r"^fn: failed on an input of shape \(1, 8, 8\): "):
            equivariance_error(nn.Conv2d(3, 4, 3), torch.zeros(1, 8, 8), [(0, 1)])

    def test_fn_raising_any_other_error(self):
        # fn is the user's: whatever it raises on the input is its answer, named with its type, the original chained
        def broken(tensor):
            raise KeyError("no such key")

        with pytest.raises(ShiftlabError) as info:
            equivariance_error(broken, torch.zeros(1, 8, 8), [(0, 1)])
        assert str(info.value) == "fn: failed on an input of shape (1, 8, 8): KeyError: 'no such key'"
        assert isinstance(info.value.__cause__, KeyError)

    def test_fn_changing_the_shape(self):
        calls = []

        def unstable(tensor):
            calls.append(1)
            return tensor if len(calls) == 1 else tensor[..., 1:]

        with pytest.raises(ShiftlabError) as info:
            equivariance_error(unstable, torch.zeros(1, 8, 8), [(0, 1)])
        assert str(info.value) == "fn: gave shape (1, 8, 7) for a shifted input but (1, 8, 8) for the reference"

    def test_fn_returning_nothing_to_compare(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t[..., :0], torch.zeros(1, 8, 8), [(0, 1)])
        assert str(info.value) == (
            "fn: returned an empty output, tensor of shape (1, 8, 0) and dtype float32: nothing to compare"
        )

    def test_fn_returning_booleans(self):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t > 0.5, torch.zeros(1, 8, 8), [(0, 1)])
        assert str(info.value) == "fn: must return floating-point values, got tensor of shape (1, 8, 8) and dtype bool"

    def test_fn_returning_numpy_is_accepted(self, rng):
        result = equivariance_error(lambda t: t.numpy() * 2.0, rng.random((8, 8)), [(1, 1)])
        assert result.max_rel_l2 == 0.0

    @pytest.mark.parametrize(
        "shifts, message",
        [
            ([(0, 0.5)], "shifts: (0, 0.5) is not a whole number of pixels; sub-pixel shifts need mode='fourier'"),
            ([3], "shifts: expected (dy, dx) pairs, got 3"),
            ([(1, 2, 3)], "shifts: expected (dy, dx) pairs, got (1, 2, 3)"),
            ([(0, math.nan)], "shift dx: must be a finite number, got nan"),
            ([("1", 0)], "shift dy: must be a finite number, got '1'"),
        ],
    )
    def test_bad_shifts(self, shifts, message):
        with pytest.raises(ShiftlabError) as info:
            equivariance_error(lambda t: t, torch.zeros(1, 8, 8), shifts)
        assert str(info.value) == message

    def test_input_needs_two_axes(self):
        with pytest.raises(ShiftlabError, match=r"^x: expected an image or feature map of shape"):
            equivariance_error(lambda t: t, torch.zeros(8), [(0, 1)])
