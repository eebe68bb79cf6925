"""Tests for shiftlab.kernels: named filters, sized families, literals, .npy files and their errors.

References are independent of the implementation: Pascal's triangle written out
by hand, OpenCV's ``getGaussianKernel`` and ``getDerivKernels``, and literal
arrays.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import shiftlab
from shiftlab.errors import ShiftlabError
from shiftlab.kernels import (
    KERNEL_NAMES,
    binomial_kernel,
    box_kernel,
    describe_kernel,
    gaussian_kernel,
    get_kernel,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PASCAL_ROWS = {
    1: [1],
    2: [1, 1],
    3: [1, 2, 1],
    4: [1, 3, 3, 1],
    5: [1, 4, 6, 4, 1],
    6: [1, 5, 10, 10, 5, 1],
    7: [1, 6, 15, 20, 15, 6, 1],
}

SOBEL_Y = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


def opencv_sigma(size: int) -> float:
    """OpenCV's documented default sigma for a Gaussian of side ``size``."""
    return 0.3 * ((size - 1) * 0.5 - 1) + 0.8


def as_numpy(kernel: torch.Tensor) -> np.ndarray:
    return kernel.detach().cpu().double().numpy()


# --------------------------------------------------------------------------- names


class TestKernelNames:
    def test_exported_from_package(self):
        assert shiftlab.KERNEL_NAMES is KERNEL_NAMES
        assert shiftlab.get_kernel is get_kernel

    def test_names_are_unique(self):
        assert len(set(KERNEL_NAMES)) == len(KERNEL_NAMES)

    @pytest.mark.parametrize("name", KERNEL_NAMES)
    def test_every_name_resolves(self, name):
        kernel = get_kernel(name)
        assert isinstance(kernel, torch.Tensor)
        assert kernel.ndim == 2 and kernel.numel() > 0
        assert kernel.dtype == torch.float32
        assert kernel.device.type == "cpu"
        assert bool(torch.isfinite(kernel).all())

    @pytest.mark.parametrize("name", KERNEL_NAMES)
    def test_every_name_is_described(self, name):
        text = describe_kernel(name)
        assert isinstance(text, str) and text and "\n" not in text

    @pytest.mark.parametrize("name", KERNEL_NAMES)
    def test_surrounding_whitespace_is_ignored(self, name):
        torch.testing.assert_close(get_kernel(f"  {name}\n"), get_kernel(name))

    def test_sobel_y_is_the_articles_kernel(self):
        np.testing.assert_array_equal(as_numpy(get_kernel("sobel_y")), SOBEL_Y)

    def test_sobel_y_is_opencv_sobel_in_x(self):
        # OpenCV's derivative along x (columns) with smoothing along y (rows).
        along_x, along_y = cv2.getDerivKernels(1, 0, 3)
        expected = np.outer(along_y.ravel(), along_x.ravel())
        np.testing.assert_array_equal(as_numpy(get_kernel("sobel_y")), expected)

    def test_sobel_x_is_opencv_sobel_in_y(self):
        along_x, along_y = cv2.getDerivKernels(0, 1, 3)
        expected = np.outer(along_y.ravel(), along_x.ravel())
        np.testing.assert_array_equal(as_numpy(get_kernel("sobel_x")), expected)

    def test_sobel_x_is_the_transpose_of_sobel_y(self):
        np.testing.assert_array_equal(as_numpy(get_kernel("sobel_x")), SOBEL_Y.T)

    @pytest.mark.parametrize(("alias", "name"), [("vertical_edges", "sobel_y"), ("horizontal_edges", "sobel_x")])
    def test_aliases(self, alias, name):
        torch.testing.assert_close(get_kernel(alias), get_kernel(name), rtol=0, atol=0)

    def test_laplacian(self):
        np.testing.assert_array_equal(as_numpy(get_kernel("laplacian")), LAPLACIAN)

    def test_identity(self):
        expected = np.zeros((3, 3))
        expected[1, 1] = 1
        np.testing.assert_array_equal(as_numpy(get_kernel("identity")), expected)

    def test_describe_kernel_sized_families(self):
        assert "mean" in describe_kernel("box9")
        assert "Gaussian" in describe_kernel("gaussian11")
        assert "binomial" in describe_kernel("binomial5")

    def test_describe_kernel_unknown(self):
        with pytest.raises(ShiftlabError) as info:
            describe_kernel("blur")
        message = str(info.value)
        assert message.startswith("kernel: unknown name 'blur'; known: ")
        for name in KERNEL_NAMES:
            assert name in message


# --------------------------------------------------------------------------- sized families


class TestBoxKernel:
    @pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
    def test_known_values(self, size):
        kernel = box_kernel(size)
        assert kernel.shape == (size, size) and kernel.dtype == torch.float32
        np.testing.assert_allclose(as_numpy(kernel), np.ones((size, size)) / size**2, rtol=1e-7)

    def test_by_name(self):
        np.testing.assert_allclose(as_numpy(get_kernel("box5")), np.full((5, 5), 1 / 25), rtol=1e-7)

    def test_numpy_integer_size(self):
        assert box_kernel(np.int64(3)).shape == (3, 3)


class TestBinomialKernel:
    @pytest.mark.parametrize("size", sorted(PASCAL_ROWS))
    def test_pascal_rows(self, size):
        row = np.array(PASCAL_ROWS[size], dtype=np.float64)
        expected = np.outer(row, row) / np.outer(row, row).sum()
        np.testing.assert_allclose(as_numpy(binomial_kernel(size)), expected, rtol=1e-6, atol=0)
        np.testing.assert_allclose(as_numpy(get_kernel(f"binomial{size}")), expected, rtol=1e-6, atol=0)

    def test_binomial3_times_16(self):
        np.testing.assert_array_equal(as_numpy(binomial_kernel(3) * 16), [[1, 2, 1], [2, 4, 2], [1, 2, 1]])

    @pytest.mark.parametrize("size", [1, 4, 7, 12])
    def test_sums_to_one(self, size):
        assert float(binomial_kernel(size, dtype=torch.float64).sum()) == pytest.approx(1.0, abs=1e-12)


class TestGaussianKernel:
    # OpenCV's getGaussianKernel is only a plain sampled Gaussian for odd sizes, so
    # it is the reference for those; even sizes are checked against the formula.
    @pytest.mark.parametrize("size", [1, 3, 5, 7, 9, 13])
    def test_matches_opencv_with_its_default_sigma(self, size):
        row = cv2.getGaussianKernel(size, opencv_sigma(size), ktype=cv2.CV_64F).ravel()
        np.testing.assert_allclose(as_numpy(gaussian_kernel(size)), np.outer(row, row), rtol=1e-5, atol=1e-8)

    @pytest.mark.parametrize(("size", "sigma"), [(5, 0.5), (5, 3.0), (7, 1.2), (11, 2.5)])
    def test_matches_opencv_with_explicit_sigma(self, size, sigma):
        row = cv2.getGaussianKernel(size, sigma, ktype=cv2.CV_64F).ravel()
        expected = np.outer(row, row)
        np.testing.assert_allclose(as_numpy(gaussian_kernel(size, sigma, dtype=torch.float64)), expected, rtol=1e-12)

    @pytest.mark.parametrize(("size", "sigma"), [(2, None), (4, None), (6, 1.2), (12, None)])
    def test_even_sizes_are_centred_between_pixels(self, size, sigma):
        sigma = opencv_sigma(size) if sigma is None else sigma
        offsets = [i - (size - 1) / 2 for i in range(size)]  # e.g. -1.5 -0.5 0.5 1.5
        row = np.array([math.exp(-x * x / (2 * sigma * sigma)) for x in offsets])
        row /= row.sum()
        np.testing.assert_allclose(
            as_numpy(gaussian_kernel(size, sigma, dtype=torch.float64)), np.outer(row, row), rtol=1e-12
        )

    def test_gaussian2_is_the_box(self):
        # Two taps at -0.5 and +0.5 weigh the same whatever sigma is.
        np.testing.assert_allclose(as_numpy(gaussian_kernel(2)), np.full((2, 2), 0.25), rtol=1e-7)

    def test_by_name(self):
        row = cv2.getGaussianKernel(7, opencv_sigma(7), ktype=cv2.CV_64F).ravel()
        np.testing.assert_allclose(as_numpy(get_kernel("gaussian7")), np.outer(row, row), rtol=1e-5, atol=1e-8)

    @pytest.mark.parametrize("size", [1, 2, 3, 5, 6, 7, 15])
    def test_sums_to_one_and_is_symmetric(self, size):
        kernel = as_numpy(gaussian_kernel(size, dtype=torch.float64))
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(kernel, kernel[::-1, :], rtol=1e-12)
        np.testing.assert_allclose(kernel, kernel[:, ::-1], rtol=1e-12)
        np.testing.assert_allclose(kernel, kernel.T, rtol=1e-12)
        assert (kernel > 0).all()

    def test_peak_in_the_centre(self):
        kernel = as_numpy(gaussian_kernel(5))
        assert np.unravel_index(kernel.argmax(), kernel.shape) == (2, 2)

    def test_float32_sum(self):
        assert float(gaussian_kernel(5).sum()) == pytest.approx(1.0, abs=1e-6)

    @pytest.mark.parametrize("sigma", [0, 0.0, -1.0, float("nan"), float("inf")])
    def test_bad_sigma(self, sigma):
        with pytest.raises(ShiftlabError) as info:
            gaussian_kernel(5, sigma)
        assert str(info.value) == f"sigma: must be a positive number, got {sigma!r}"


class TestSizeErrors:
    @pytest.mark.parametrize("factory", [box_kernel, binomial_kernel, gaussian_kernel])
    @pytest.mark.parametrize("size", [0, -3, 256, 2.0, True, "3", None])
    def test_bad_sizes(self, factory, size):
        family = factory.__name__.removesuffix("_kernel")
        with pytest.raises(ShiftlabError) as info:
            factory(size)
        assert str(info.value) == f"{family} kernel size: must be an integer from 1 to 255, got {size!r}"

    @pytest.mark.parametrize("name", ["box0", "gaussian0", "binomial0", "box256", "binomial999"])
    def test_bad_sizes_by_name(self, name):
        family = name.rstrip("0123456789")
        size = int(name[len(family) :])
        with pytest.raises(
            ShiftlabError, match=rf"^{family} kernel size: must be an integer from 1 to 255, got {size}$"
        ):
            get_kernel(name)

    @pytest.mark.parametrize("size", [1, 255])
    def test_limits_are_allowed(self, size):
        assert box_kernel(size).shape == (size, size)


# --------------------------------------------------------------------------- literals


class TestLiterals:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[[1,0],[0,-1]]", [[1, 0], [0, -1]]),
            ("[[1, 0], [0, -1]]", [[1, 0], [0, -1]]),
            ("1 0; 0 -1", [[1, 0], [0, -1]]),
            ("1, 0; 0, -1", [[1, 0], [0, -1]]),
            (" 1 0 ; 0 -1 ; ", [[1, 0], [0, -1]]),
            ("((1, 2), (3, 4))", [[1, 2], [3, 4]]),
            ("1 2 3", [[1, 2, 3]]),
            ("1; 2; 3", [[1], [2], [3]]),
            ("[[1.5e-1, -2, +3]]", [[0.15, -2, 3]]),
            ("7", [[7]]),
            ("[[0.25, 0.25], [0.25, 0.25]]", [[0.25, 0.25], [0.25, 0.25]]),
        ],
    )
    def test_known_values(self, text, expected):
        kernel = get_kernel(text)
        assert kernel.dtype == torch.float32
        np.testing.assert_allclose(as_numpy(kernel), np.array(expected, dtype=np.float64), rtol=1e-7)

    def test_float64(self):
        kernel = get_kernel("0.1 0.2; 0.3 0.4", dtype=torch.float64)
        assert kernel.dtype == torch.float64
        np.testing.assert_array_equal(kernel.numpy(), [[0.1, 0.2], [0.3, 0.4]])

    @pytest.mark.parametrize("text", ["[[1, 2], [3]]", "1 2; 3", "1 2 3; 4 5"])
    def test_ragged(self, text):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(text)
        assert str(info.value) == (
            f"kernel literal {text!r}: could not be read as a 2-D array of numbers with rows of equal length"
        )

    @pytest.mark.parametrize("text", ["[[1, 2]", "[[1, 2]]]", "1 2: 3", "1..2"])
    def test_unparsable(self, text):
        with pytest.raises(ShiftlabError, match=r"^kernel literal .*: could not be read as a 2-D array of numbers"):
            get_kernel(text)

    @pytest.mark.parametrize(("text", "shape"), [("[1, 2, 3]", "(3,)"), ("[[[1]]]", "(1, 1, 1)")])
    def test_not_2d(self, text, shape):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(text)
        assert str(info.value) == f"kernel literal {text!r}: expected a 2-D kernel (kh, kw), got shape {shape}"

    def test_infinite_value(self):
        with pytest.raises(ShiftlabError) as info:
            get_kernel("[[1, 1e999]]")
        assert str(info.value) == "kernel literal '[[1, 1e999]]': holds NaN or Inf"

    @pytest.mark.parametrize("text", ["sobel", "Sobel_Y", "gauss5", "box", "[]", "", "nan", "__import__('os')"])
    def test_unknown_names(self, text):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(text)
        message = str(info.value)
        assert message.startswith(f"kernel: unknown name {text.strip()!r}; known names: ")
        assert "'[[1,0],[0,-1]]'" in message and ".npy" in message
        for name in KERNEL_NAMES:
            assert name in message
        assert "\n" not in message


# --------------------------------------------------------------------------- .npy files


class TestNpyFiles:
    def test_float_array(self, tmp_path, rng):
        values = rng.normal(size=(3, 5))
        path = tmp_path / "kernel.npy"
        np.save(path, values)
        kernel = get_kernel(str(path))
        assert kernel.dtype == torch.float32 and kernel.shape == (3, 5)
        np.testing.assert_allclose(as_numpy(kernel), values, rtol=1e-6)
        np.testing.assert_array_equal(get_kernel(path, dtype=torch.float64).numpy(), values)

    @pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint8, np.float16, np.float32, bool])
    def test_real_dtypes(self, tmp_path, dtype):
        values = np.array([[1, 0], [0, 1]], dtype=dtype)
        path = tmp_path / "kernel.npy"
        np.save(path, values)
        kernel = get_kernel(path)
        assert kernel.dtype == torch.float32
        np.testing.assert_array_equal(kernel.numpy(), [[1, 0], [0, 1]])

    def test_file_without_npy_suffix(self, tmp_path):
        path = tmp_path / "kernel.bin"
        with path.open("wb") as handle:
            np.save(handle, np.array([[2.0, -1.0]]))
        np.testing.assert_array_equal(get_kernel(str(path)).numpy(), [[2.0, -1.0]])

    def test_pickled_object_array_is_refused(self, tmp_path):
        path = tmp_path / "evil.npy"
        np.save(path, np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
        with pytest.raises(ShiftlabError) as info:
            get_kernel(str(path))
        message = str(info.value)
        assert message.startswith(f"kernel file '{path}': is not a readable .npy array")
        assert "\n" not in message

    def test_missing(self, tmp_path):
        path = tmp_path / "missing.npy"
        with pytest.raises(ShiftlabError) as info:
            get_kernel(str(path))
        assert str(info.value) == f"kernel file '{path}': not found"

    def test_directory(self, tmp_path):
        path = tmp_path / "folder.npy"
        path.mkdir()
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': is not a file"

    def test_text_file_named_npy(self, tmp_path):
        path = tmp_path / "text.npy"
        path.write_text("1 0\n0 -1\n")
        with pytest.raises(ShiftlabError, match=r"^kernel file '.*text\.npy': is not a readable \.npy array"):
            get_kernel(path)

    def test_truncated_npy(self, tmp_path):
        path = tmp_path / "cut.npy"
        np.save(path, np.ones((10, 10)))
        path.write_bytes(path.read_bytes()[:-40])
        with pytest.raises(ShiftlabError, match=r"^kernel file '.*cut\.npy': is not a readable \.npy array"):
            get_kernel(path)

    def test_npz_named_npy(self, tmp_path):
        path = tmp_path / "archive.npy"
        with path.open("wb") as handle:
            np.savez(handle, a=np.ones((2, 2)))
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': must hold an array of real numbers"

    @pytest.mark.parametrize("values", [np.array([[1 + 1j, 0]]), np.array([["a", "b"]])])
    def test_not_real_numbers(self, tmp_path, values):
        path = tmp_path / "kernel.npy"
        np.save(path, values)
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': must hold an array of real numbers"

    def test_one_dimensional(self, tmp_path):
        path = tmp_path / "row.npy"
        np.save(path, np.array([1.0, 2.0, 3.0]))
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': expected a 2-D kernel (kh, kw), got shape (3,)"

    def test_nan(self, tmp_path):
        path = tmp_path / "nan.npy"
        np.save(path, np.array([[1.0, np.nan]]))
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': holds NaN or Inf"

    def test_empty(self, tmp_path):
        path = tmp_path / "empty.npy"
        np.save(path, np.zeros((0, 3)))
        with pytest.raises(ShiftlabError) as info:
            get_kernel(path)
        assert str(info.value) == f"kernel file '{path}': is empty (shape (0, 3))"


# --------------------------------------------------------------------------- arrays and tensors


class TestArraysAndTensors:
    def test_nested_list(self):
        kernel = get_kernel([[1, 2], [3, 4]])
        assert kernel.dtype == torch.float32
        np.testing.assert_array_equal(kernel.numpy(), [[1, 2], [3, 4]])

    def test_numpy(self, rng):
        values = rng.normal(size=(4, 2))
        kernel = get_kernel(values)
        assert kernel.dtype == torch.float32  # numpy input defaults to float32 whatever its dtype
        np.testing.assert_allclose(kernel.numpy(), values, rtol=1e-6)

    def test_negative_stride_numpy(self, rng):
        values = rng.normal(size=(3, 4))
        np.testing.assert_array_equal(get_kernel(values[::-1, ::-2], dtype=torch.float64).numpy(), values[::-1, ::-2])

    def test_numpy_does_not_alias(self):
        values = np.ones((2, 2))
        kernel = get_kernel(values, dtype=torch.float64)
        values[0, 0] = 5
        assert float(kernel[0, 0]) == 1.0

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.float32])
    def test_tensor_keeps_its_floating_dtype(self, dtype):
        kernel = get_kernel(torch.ones(2, 3, dtype=dtype))
        assert kernel.dtype == dtype and kernel.shape == (2, 3)

    @pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
    def test_integer_tensor_becomes_float32(self, dtype):
        kernel = get_kernel(torch.tensor([[1, 0], [0, 1]], dtype=dtype))
        assert kernel.dtype == torch.float32
        np.testing.assert_array_equal(kernel.numpy(), [[1, 0], [0, 1]])

    def test_explicit_dtype_wins_over_tensor_dtype(self):
        assert get_kernel(torch.ones(2, 2, dtype=torch.float64), dtype=torch.float32).dtype == torch.float32

    def test_non_contiguous_tensor(self, generator):
        values = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        view = values.t()[::2]
        torch.testing.assert_close(get_kernel(view), view, rtol=0, atol=0)

    def test_gradient_is_kept(self):
        weight = torch.ones(3, 3, dtype=torch.float64, requires_grad=True)
        kernel = get_kernel(weight)
        assert kernel.requires_grad
        kernel.sum().backward()
        torch.testing.assert_close(weight.grad, torch.ones(3, 3, dtype=torch.float64))

    @pytest.mark.parametrize(
        ("spec", "shape"),
        [
            ([1.0, 2.0, 3.0], "(3,)"),
            (np.ones(5), "(5,)"),
            (np.ones((2, 2, 2)), "(2, 2, 2)"),
            (np.float64(3.0), "()"),
        ],
    )
    def test_not_2d(self, spec, shape):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(spec)
        assert str(info.value) == f"kernel: expected a 2-D kernel (kh, kw), got shape {shape}"

    def test_not_2d_tensor(self):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(torch.ones(3))
        assert (
            str(info.value)
            == "kernel (tensor of shape (3,) and dtype float32): expected a 2-D kernel (kh, kw), got shape (3,)"
        )

    @pytest.mark.parametrize(("spec", "shape"), [(np.zeros((0, 3)), "(0, 3)"), ([[]], "(1, 0)")])
    def test_empty(self, spec, shape):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(spec)
        assert str(info.value) == f"kernel: is empty (shape {shape})"

    def test_empty_tensor(self):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(torch.zeros(2, 0))
        assert str(info.value) == "kernel (tensor of shape (2, 0) and dtype float32): is empty (shape (2, 0))"

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_nan_and_inf(self, bad):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(np.array([[1.0, bad], [0.0, 0.0]]))
        assert str(info.value) == "kernel: holds NaN or Inf"
        with pytest.raises(
            ShiftlabError, match=r"^kernel \(tensor of shape \(2, 2\) and dtype float64\): holds NaN or Inf$"
        ):
            get_kernel(torch.tensor([[1.0, bad], [0.0, 0.0]], dtype=torch.float64))

    def test_infinities_of_both_signs_and_nan_together(self):
        # The check reads the kernel's extremes: every mix of non-finite values must still be caught.
        for values in ([[np.inf, -np.inf]], [[np.nan, np.inf]], [[-np.inf, 0.0, np.nan]]):
            with pytest.raises(ShiftlabError, match="^kernel: holds NaN or Inf$"):
                get_kernel(np.array(values))
            with pytest.raises(ShiftlabError, match=r"holds NaN or Inf$"):
                get_kernel(torch.tensor(values, requires_grad=True))

    def test_value_overflowing_float32_is_refused(self):
        # Finite in float64, infinite once cast to the float32 default.
        with pytest.raises(ShiftlabError, match="^kernel: holds NaN or Inf$"):
            get_kernel(np.array([[1e300]]))

    @pytest.mark.parametrize("spec", [[[1, 2], [3]], [["a", "b"]], [[1, None, object()]]])
    def test_not_numbers(self, spec):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(spec)
        message = str(info.value)
        assert message.startswith("kernel: expected a 2-D array of numbers, got ")
        assert "\n" not in message

    def test_complex_tensor(self):
        with pytest.raises(ShiftlabError) as info:
            get_kernel(torch.ones(2, 2, dtype=torch.complex64))
        assert (
            str(info.value) == "kernel (tensor of shape (2, 2) and dtype complex64): expected real numbers, got complex"
        )

    def test_complex_numpy_is_refused_not_truncated(self):
        # Casting complex to float would silently drop the imaginary part.
        with pytest.raises(ShiftlabError, match="^kernel: .*complex"):
            get_kernel(np.array([[1 + 2j, 0], [0, 1]]))


# --------------------------------------------------------------------------- device and dtype


class TestDeviceAndDtype:
    SPECS = ["sobel_y", "gaussian5", "box3", "binomial4", "1 0; 0 -1", [[1.0, 2.0]], np.eye(2)]

    @pytest.mark.parametrize("spec", SPECS, ids=lambda spec: str(spec)[:20])
    @pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
    def test_dtype(self, spec, dtype):
        kernel = get_kernel(spec, dtype=dtype)
        assert kernel.dtype == dtype
        np.testing.assert_allclose(as_numpy(kernel), as_numpy(get_kernel(spec, dtype=torch.float64)), rtol=1e-3)

    @pytest.mark.parametrize("spec", SPECS, ids=lambda spec: str(spec)[:20])
    @pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
    def test_cpu_device(self, spec, device):
        assert get_kernel(spec, device=device).device == torch.device("cpu")

    @pytest.mark.parametrize("factory", [box_kernel, binomial_kernel, gaussian_kernel])
    def test_factories(self, factory):
        kernel = factory(3, dtype=torch.float64, device="cpu")
        assert kernel.dtype == torch.float64 and kernel.device == torch.device("cpu")
        assert factory(3).dtype == torch.float32

    def test_gaussian_float64_is_accurate(self):
        row = cv2.getGaussianKernel(5, opencv_sigma(5), ktype=cv2.CV_64F).ravel()
        np.testing.assert_allclose(gaussian_kernel(5, dtype=torch.float64).numpy(), np.outer(row, row), rtol=1e-12)

    def test_npy_dtype(self, tmp_path):
        path = tmp_path / "k.npy"
        np.save(path, np.array([[0.1, 0.2]]))
        assert get_kernel(path, dtype=torch.float64).dtype == torch.float64
        assert get_kernel(Path(path)).dtype == torch.float32

    @requires_cuda
    @pytest.mark.parametrize("spec", ["sobel_y", "gaussian5", "1 0; 0 -1", np.eye(2)], ids=str)
    def test_cuda_device(self, spec):
        kernel = get_kernel(spec, device="cuda", dtype=torch.float64)
        assert kernel.device.type == "cuda" and kernel.dtype == torch.float64
        torch.testing.assert_close(kernel.cpu(), get_kernel(spec, dtype=torch.float64))

    @requires_cuda
    def test_cuda_tensor_stays_on_its_device(self):
        kernel = get_kernel(torch.ones(2, 2, device="cuda"))
        assert kernel.device.type == "cuda"


def test_binomial_row_eleven():
    # Row 11 of Pascal's triangle is 1 10 45 120 210 252 210 120 45 10 1, summing to 2**10.
    kernel = binomial_kernel(11, dtype=torch.float64).numpy()
    row = np.array([1, 10, 45, 120, 210, 252, 210, 120, 45, 10, 1], dtype=np.float64)
    np.testing.assert_allclose(kernel, np.outer(row, row) / 1024**2, rtol=1e-12)
