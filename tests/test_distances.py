"""Tests for shiftlab.distances: compare_maps and ErrorSums against the numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shiftlab.distances import MapError, compare_maps, map_error
from shiftlab.errors import ShiftlabError


def numpy_metrics(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Relative L2, max abs, cosine and valid fraction, straight from the definitions, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.ones(a.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), a.shape)
    x, y = a[keep], b[keep]
    rel = np.linalg.norm(x - y) / np.linalg.norm(y)
    largest = np.abs(x - y).max()
    cosine = np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))
    return float(rel), float(largest), float(cosine), keep.sum() / keep.size


class TestCompareMaps:
    @pytest.mark.parametrize("shape", [(7,), (5, 6), (2, 3, 9, 8)])
    def test_matches_numpy_without_mask(self, rng, shape):
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        rel, largest, cosine, fraction = numpy_metrics(a, b)
        error = compare_maps(a, b)
        assert error.rel_l2 == pytest.approx(rel, rel=1e-12)
        assert error.max_abs == pytest.approx(largest, rel=1e-12)
        assert error.cosine == pytest.approx(cosine, rel=1e-12, abs=1e-14)
        assert error.valid_fraction == 1.0

    @pytest.mark.parametrize("shape", [(6, 7), (3, 6, 7), (2, 4, 6, 7)])
    def test_matches_numpy_with_mask_broadcast_over_leading_axes(self, rng, shape):
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        mask = rng.random(shape[-2:]) < 0.6
        rel, largest, cosine, fraction = numpy_metrics(a, b, mask)
        error = compare_maps(a, b, mask)
        assert error.rel_l2 == pytest.approx(rel, rel=1e-12)
        assert error.max_abs == pytest.approx(largest, rel=1e-12)
        assert error.cosine == pytest.approx(cosine, rel=1e-12, abs=1e-14)
        assert error.valid_fraction == pytest.approx(fraction)
        assert error.valid_fraction == pytest.approx(mask.mean())

    def test_masked_out_pixels_do_not_count(self, rng):
        a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
        mask = np.zeros((5, 5), dtype=bool)
        mask[1:3, 2:5] = True
        garbage = a.copy()
        garbage[~mask] = 1e9
        assert compare_maps(garbage, b, mask) == compare_maps(a, b, mask)

    def test_torch_float32_inputs_summed_in_float64(self, generator):
        a = torch.rand(4, 64, 64, generator=generator)
        b = a + 1e-3 * torch.rand(4, 64, 64, generator=generator)
        rel, largest, cosine, _ = numpy_metrics(a.numpy(), b.numpy())
        error = compare_maps(a, b)
        assert error.rel_l2 == pytest.approx(rel, rel=1e-9)
        assert error.max_abs == pytest.approx(largest, rel=1e-6)

    def test_torch_mask(self, generator):
        a, b = torch.rand(2, 5, 5, generator=generator), torch.rand(2, 5, 5, generator=generator)
        mask = torch.rand(5, 5, generator=generator) < 0.5
        rel, _, _, _ = numpy_metrics(a.numpy(), b.numpy(), mask.numpy())
        assert compare_maps(a, b, mask).rel_l2 == pytest.approx(rel, rel=1e-9)

    def test_known_answer(self):
        error = compare_maps(np.array([3.0, 4.0]), np.array([0.0, 5.0]))
        # ||a - b|| = sqrt(9 + 1), ||b|| = 5, <a, b> = 20, ||a|| = 5
        assert error == MapError(rel_l2=math.sqrt(10) / 5, max_abs=3.0, cosine=0.8, valid_fraction=1.0)

    def test_identical_maps(self, rng):
        a = rng.standard_normal((4, 4))
        assert compare_maps(a, a.copy()) == MapError(0.0, 0.0, 1.0, 1.0)

    def test_opposite_maps(self, rng):
        a = rng.standard_normal((4, 4))
        error = compare_maps(-a, a)
        assert error.rel_l2 == pytest.approx(2.0) and error.cosine == pytest.approx(-1.0)

    def test_both_zero(self):
        assert compare_maps(np.zeros((3, 3)), np.zeros((3, 3))) == MapError(0.0, 0.0, 1.0, 1.0)

    def test_zero_reference_nonzero_output(self):
        error = compare_maps(np.array([[0.0, 2.0]]), np.zeros((1, 2)))
        assert error.rel_l2 == math.inf
        assert error.max_abs == 2.0
        assert error.cosine == 0.0

    def test_zero_output_nonzero_reference(self):
        error = compare_maps(np.zeros((1, 2)), np.array([[0.0, 2.0]]))
        assert error.rel_l2 == 1.0 and error.cosine == 0.0

    def test_empty_mask_gives_nan(self, rng):
        error = compare_maps(rng.random((3, 3)), rng.random((3, 3)), np.zeros((3, 3), dtype=bool))
        assert math.isnan(error.rel_l2) and math.isnan(error.max_abs) and math.isnan(error.cosine)
        assert error.valid_fraction == 0.0

    def test_shape_mismatch(self):
        with pytest.raises(ShiftlabError) as info:
            compare_maps(np.zeros((2, 3)), np.zeros((3, 2)))
        assert str(info.value) == "output: shape (2, 3) differs from the reference's (3, 2)"


class TestMapError:
    def test_matches_compare_maps_from_the_sums(self, generator):
        a, b = torch.randn(3, 6, 6, generator=generator), torch.randn(3, 6, 6, generator=generator)
        x, y = a.double().numpy(), b.double().numpy()
        sums = (((x - y) ** 2).sum(), (y**2).sum(), (x**2).sum(), np.abs(x - y).max(), x.size, x.size)
        from_identity = map_error(*sums)
        direct = compare_maps(a, b)
        assert from_identity.rel_l2 == pytest.approx(direct.rel_l2, rel=1e-12)
        assert from_identity.cosine == pytest.approx(direct.cosine, rel=1e-12)
        assert from_identity.max_abs == direct.max_abs
        with_dot = map_error(*sums, dot=(x * y).sum())
        assert with_dot.cosine == pytest.approx(direct.cosine, rel=1e-12, abs=1e-15)
        assert with_dot.rel_l2 == pytest.approx(direct.rel_l2, rel=1e-12)

    def test_nothing_compared(self):
        error = map_error(0.0, 0.0, 0.0, 0.0, 0, 18)
        assert math.isnan(error.rel_l2) and math.isnan(error.cosine) and error.valid_fraction == 0.0

    def test_no_total_gives_zero_fraction(self):
        assert map_error(0.0, 1.0, 1.0, 0.0, 1, 0).valid_fraction == 0.0

    def test_cosine_is_clamped(self):
        # Rounding can push <a, b> / (|a| |b|) slightly beyond 1.
        assert map_error(0.0, 1.0, 1.0, 0.0, 1, 1, dot=1.0 + 1e-12).cosine == 1.0
        assert map_error(4.0, 1.0, 1.0, 2.0, 1, 1, dot=-1.0 - 1e-12).cosine == -1.0

    def test_zero_reference(self):
        assert map_error(0.0, 0.0, 0.0, 0.0, 3, 3).rel_l2 == 0.0
        assert map_error(1.0, 0.0, 1.0, 1.0, 3, 3).rel_l2 == math.inf
