"""Tests for shiftlab.ops (convolve, max_pool, pool_pyramid and their modules) and shiftlab._tensors.

References are independent of the implementation: ``scipy.ndimage.correlate``
for convolution, a plain loop for max pooling (checked in turn against
``torch.nn.functional.max_pool2d``), and hand-worked known answers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import shiftlab
from shiftlab._tensors import as_float_tensor, like_input, require_spatial
from shiftlab.errors import ShiftlabError
from shiftlab.kernels import get_kernel
from shiftlab.ops import (
    Convolve,
    MaxPool,
    convolve,
    max_pool,
    max_pyramid_depth,
    pool_pyramid,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PADDINGS = ("valid", "same", "circular")
KERNEL_SHAPES = [(1, 1), (2, 2), (3, 3), (2, 3), (4, 1), (1, 5), (3, 5), (5, 4), (6, 6)]
IMAGE_SHAPES = [(9, 13), (12, 7), (6, 6)]
# Over a million values each: one map larger than a million values, and many small maps.
LARGE_SHAPES = [(1, 1030, 1030), (40, 180, 160)]


# --------------------------------------------------------------------------- references


def reference_correlate(image: np.ndarray, kernel: np.ndarray, padding: str, relu: bool) -> np.ndarray:
    """``convolve`` of one ``(H, W)`` map, computed in float64 by scipy.ndimage.

    scipy centres the kernel at ``(kh // 2, kw // 2)``; the valid region is the
    zero-padded result cropped to the windows that lie inside the image.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    mode = "wrap" if padding == "circular" else "constant"
    full = ndimage.correlate(image, kernel, mode=mode, cval=0.0, origin=0)
    if padding == "valid":
        height, width = image.shape
        full = full[kh // 2 : kh // 2 + height - kh + 1, kw // 2 : kw // 2 + width - kw + 1]
    return np.maximum(full, 0.0) if relu else full


def reference_max_pool(image: np.ndarray, kernel_size: int, stride: int) -> np.ndarray:
    """Max pooling of one ``(H, W)`` map by two plain loops (windows past the edge are dropped)."""
    height, width = image.shape
    rows = (height - kernel_size) // stride + 1
    cols = (width - kernel_size) // stride + 1
    out = np.empty((rows, cols), dtype=np.float64)
    for i in range(rows):
        for j in range(cols):
            window = image[i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            out[i, j] = window.max()
    return out


def per_map(function, stack: np.ndarray, *args) -> np.ndarray:
    """Apply a 2-D reference to every map of a ``(..., H, W)`` stack."""
    maps = stack.reshape(-1, *stack.shape[-2:])
    results = np.stack([function(one, *args) for one in maps])
    return results.reshape(*stack.shape[:-2], *results.shape[-2:])


@pytest.fixture(params=["fixed", "learnable"])
def as_kernel(request):
    """The kernel as given, or as a float64 tensor that requires grad (a learnable filter).

    A learnable filter makes ``convolve`` build an autograd graph for it; the
    results must not differ from those for the same kernel held fixed.
    """
    if request.param == "fixed":
        return lambda spec: spec
    return lambda spec: get_kernel(spec, dtype=torch.float64).requires_grad_()


# --------------------------------------------------------------------------- _tensors


class TestAsFloatTensor:
    def test_numpy_float_shares_memory(self):
        array = np.zeros((2, 3), dtype=np.float32)
        tensor, from_numpy = as_float_tensor(array, "image")
        assert from_numpy and tensor.dtype == torch.float32
        array[0, 0] = 7
        assert float(tensor[0, 0]) == 7

    @pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
    def test_floating_numpy_keeps_dtype(self, dtype):
        tensor, _ = as_float_tensor(np.zeros((2, 2), dtype=dtype), "image")
        assert tensor.dtype == torch.from_numpy(np.zeros(1, dtype=dtype)).dtype

    @pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
    def test_integer_and_bool_numpy_become_float32(self, dtype):
        tensor, from_numpy = as_float_tensor(np.array([[0, 1], [1, 0]], dtype=dtype), "image")
        assert from_numpy and tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), [[0, 1], [1, 0]])

    @pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64])
    def test_integer_and_bool_tensors_become_float32(self, dtype):
        tensor, from_numpy = as_float_tensor(torch.tensor([[0, 1]], dtype=dtype), "image")
        assert not from_numpy and tensor.dtype == torch.float32

    def test_tensor_is_returned_as_is(self):
        value = torch.zeros(2, 2, dtype=torch.float64)
        tensor, from_numpy = as_float_tensor(value, "image")
        assert tensor is value and not from_numpy

    def test_negative_strides(self):
        array = np.arange(12.0).reshape(3, 4)
        tensor, _ = as_float_tensor(array[::-1, ::-2], "image")
        np.testing.assert_array_equal(tensor.numpy(), array[::-1, ::-2])

    def test_nested_list(self):
        tensor, from_numpy = as_float_tensor([[1, 2], [3, 4]], "image")
        assert from_numpy and tensor.dtype == torch.float32

    @pytest.mark.parametrize(
        ("value", "description"),
        [
            (np.zeros((2, 2), dtype=np.complex128), "numpy array of shape (2, 2) and dtype complex128"),
            (np.array([["a", "b"]]), "numpy array of shape (1, 2) and dtype <U1"),
            (np.array([[None, 1]], dtype=object), "numpy array of shape (1, 2) and dtype object"),
            (torch.zeros(2, 2, dtype=torch.complex64), "tensor of shape (2, 2) and dtype complex64"),
        ],
    )
    def test_not_real_numbers(self, value, description):
        with pytest.raises(ShiftlabError) as info:
            as_float_tensor(value, "image")
        assert str(info.value) == f"image: expected real numbers, got {description}"

    def test_ragged_list(self):
        with pytest.raises(ShiftlabError, match=r"^feature map: expected an array or tensor, got \[\[1, 2\], \[3\]\]"):
            as_float_tensor([[1, 2], [3]], "feature map")

    def test_like_input(self):
        result = torch.ones(2, 2, requires_grad=True) * 2
        as_array = like_input(result, True)
        assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32
        assert like_input(result, False) is result

    def test_require_spatial(self):
        assert require_spatial(torch.zeros(2, 3, 4, 5), "x") == (4, 5)
        with pytest.raises(ShiftlabError) as info:
            require_spatial(torch.zeros(5), "x")
        assert (
            str(info.value)
            == "x: expected an image or feature map of shape (..., H, W), got tensor of shape (5,) and dtype float32"
        )
        with pytest.raises(ShiftlabError) as info:
            require_spatial(torch.zeros(0, 3, 3), "x")
        assert str(info.value) == "x: is empty: tensor of shape (0, 3, 3) and dtype float32"


# --------------------------------------------------------------------------- convolve


class TestConvolve:
    def test_docstring_step(self):
        step = np.array([[0, 0, 1, 1]] * 3, dtype=np.float32)
        np.testing.assert_array_equal(convolve(step, "sobel_y"), [[4.0, 4.0]])

    def test_exported_from_package(self):
        assert shiftlab.convolve is convolve and shiftlab.max_pool is max_pool

    @pytest.mark.parametrize("image_shape", IMAGE_SHAPES, ids=str)
    @pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES, ids=str)
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
    def test_matches_scipy(self, rng, as_kernel, image_shape, kernel_shape, padding, relu):
        image = rng.random(image_shape).astype(np.float32)
        kernel = rng.normal(size=kernel_shape).astype(np.float32)
        result = convolve(image, as_kernel(kernel), padding=padding, relu=relu)
        expected = reference_correlate(image, kernel, padding, relu)
        assert isinstance(result, np.ndarray) and result.dtype == np.float32
        assert result.shape == expected.shape
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("backend", ["numpy", "torch"])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_dtypes_and_backends(self, rng, as_kernel, backend, dtype, padding):
        image = rng.normal(size=(11, 8)).astype(dtype)
        kernel = rng.normal(size=(3, 4)).astype(dtype)
        expected = reference_correlate(image, kernel, padding, relu=False)
        if backend == "numpy":
            result = convolve(image, as_kernel(kernel), padding=padding, relu=False)
            assert isinstance(result, np.ndarray)
            assert result.dtype == np.dtype(dtype)
        else:
            result = convolve(torch.from_numpy(image), as_kernel(torch.from_numpy(kernel)), padding=padding, relu=False)
            assert isinstance(result, torch.Tensor)
            assert result.dtype == getattr(torch, dtype)
            result = result.detach().numpy()
        tolerance = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_large_kernel(self, rng, padding):
        # 10x10 = 100 taps, and an even size.
        image = rng.random((14, 17))
        kernel = rng.normal(size=(10, 10))
        result = convolve(image, kernel, padding=padding, relu=False)
        np.testing.assert_allclose(result, reference_correlate(image, kernel, padding, False), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
    @pytest.mark.parametrize("kernel_shape", [(3, 2), (5, 3)], ids=str)
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_large_inputs(self, rng, shape, kernel_shape, padding):
        # Over a million values: inputs this large are filtered piece by piece (rows of a map, groups of
        # maps); the pieces' seams must not show. A (5, 3) rank-1 kernel with zero taps, a (3, 2) general one.
        stack = rng.random(shape)
        kernel = (
            rank_one_kernel(rng, kernel_shape, zero_taps=True) if kernel_shape == (5, 3) else rng.normal(size=(3, 2))
        )
        result = convolve(stack, kernel, padding=padding)
        np.testing.assert_allclose(
            result, per_map(reference_correlate, stack, kernel, padding, True), rtol=1e-12, atol=1e-12
        )

    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("shape", [(2, 3, 9, 10), (3, 9, 10), (1, 1, 9, 10), (2, 1, 3, 9, 10)], ids=str)
    def test_batches_equal_per_map(self, rng, as_kernel, padding, shape):
        stack = rng.random(shape).astype(np.float32)
        kernel = as_kernel(rng.normal(size=(3, 3)).astype(np.float32))
        result = convolve(stack, kernel, padding=padding)
        maps = stack.reshape(-1, *shape[-2:])
        singles = np.stack([convolve(one, kernel, padding=padding) for one in maps])
        assert result.shape == (*shape[:-2], *singles.shape[-2:])
        np.testing.assert_allclose(result.reshape(singles.shape), singles, rtol=1e-6, atol=1e-6)
        expected = per_map(reference_correlate, stack, get_kernel(kernel, dtype=torch.float64).detach(), padding, True)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_torch_batches(self, generator, as_kernel, padding):
        stack = torch.rand(2, 3, 8, 11, generator=generator, dtype=torch.float64)
        kernel = as_kernel("laplacian")
        result = convolve(stack, kernel, padding=padding, relu=False)
        for n in range(2):
            for c in range(3):
                torch.testing.assert_close(result[n, c], convolve(stack[n, c], kernel, padding=padding, relu=False))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("kernel", ["sobel_y", "laplacian", "gaussian5"])
    def test_half_precision_tensors(self, generator, dtype, padding, kernel):
        # Computed in the input's own dtype, every pass rounding to it: at most 5 passes (Laplacian)
        # on values up to about 4, each off by up to half an eps of the value, so within 10 eps.
        image = torch.rand(2, 9, 10, generator=generator).to(dtype)
        result = convolve(image, kernel, padding=padding, relu=False)
        assert result.dtype == dtype
        expected = per_map(reference_correlate, image.double().numpy(), get_kernel(kernel).double(), padding, False)
        np.testing.assert_allclose(result.double().numpy(), expected, rtol=0, atol=10 * torch.finfo(dtype).eps)

    @pytest.mark.parametrize("shape", [(7, 7), (2, 7, 7)])
    def test_output_shapes(self, shape):
        image = np.zeros(shape, dtype=np.float32)
        assert convolve(image, np.ones((3, 2))).shape == (*shape[:-2], 5, 6)
        assert convolve(image, np.ones((3, 2)), padding="same").shape == shape
        assert convolve(image, np.ones((3, 2)), padding="circular").shape == shape

    @pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.int32, np.int64, np.uint16])
    def test_integer_and_bool_numpy_give_float32(self, as_kernel, dtype):
        image = (np.arange(30).reshape(5, 6) % 2).astype(dtype)
        result = convolve(image, as_kernel("box3"), relu=False)
        assert isinstance(result, np.ndarray) and result.dtype == np.float32
        np.testing.assert_allclose(
            result, reference_correlate(image, np.full((3, 3), 1 / 9), "valid", False), rtol=1e-6
        )

    @pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
    def test_integer_and_bool_tensors_give_float32(self, dtype):
        image = (torch.arange(30).reshape(5, 6) % 2).to(dtype)
        result = convolve(image, "box3")
        assert isinstance(result, torch.Tensor) and result.dtype == torch.float32

    def test_nested_list_input(self):
        result = convolve([[0, 0, 1, 1]] * 3, "sobel_y")
        assert isinstance(result, np.ndarray) and result.dtype == np.float32
        np.testing.assert_array_equal(result, [[4.0, 4.0]])

    @pytest.mark.parametrize("view", ["flip_cols", "flip_rows", "flip_both_strided", "transposed"])
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_numpy_views(self, rng, as_kernel, view, padding):
        base = rng.random((12, 14)).astype(np.float32)
        image = {
            "flip_cols": base[:, ::-1],
            "flip_rows": base[::-1],
            "flip_both_strided": base[::-1, ::-2],
            "transposed": base.T,
        }[view]
        kernel = rng.normal(size=(2, 3)).astype(np.float32)
        result = convolve(image, as_kernel(kernel), padding=padding)
        np.testing.assert_allclose(
            result, reference_correlate(image.copy(), kernel, padding, True), rtol=1e-5, atol=1e-5
        )

    def test_negative_stride_kernel(self, rng):
        image = rng.random((8, 8))
        kernel = rng.normal(size=(3, 3))
        flipped = kernel[::-1, ::-1]
        np.testing.assert_allclose(
            convolve(image, flipped, relu=False),
            reference_correlate(image, flipped.copy(), "valid", False),
            rtol=1e-5,
            atol=1e-5,
        )

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_non_contiguous_tensors(self, generator, as_kernel, padding):
        base = torch.rand(2, 3, 10, 12, generator=generator)
        kernel = torch.randn(3, 2, generator=generator)
        views = [
            base.transpose(-1, -2),
            base[..., ::2],
            base[:, ::2, 1:, :],
            base.permute(1, 0, 2, 3),
            base.contiguous(memory_format=torch.channels_last),
        ]
        for image in views:
            assert not image.is_contiguous() or image.stride() != base.stride()
            result = convolve(image, as_kernel(kernel.t()), padding=padding)
            expected = per_map(reference_correlate, image.numpy().copy(), kernel.t().numpy(), padding, True)
            np.testing.assert_allclose(result.detach().numpy(), expected, rtol=1e-5, atol=1e-5)

    def test_input_is_not_modified(self, rng, as_kernel):
        image = rng.normal(size=(2, 9, 9)).astype(np.float32)
        copy = image.copy()
        tensor = torch.from_numpy(copy.copy())
        for padding in PADDINGS:
            convolve(image, as_kernel("laplacian"), padding=padding)
            convolve(tensor, as_kernel("laplacian"), padding=padding)
        np.testing.assert_array_equal(image, copy)
        np.testing.assert_array_equal(tensor.numpy(), copy)

    def test_output_does_not_alias_input(self):
        image = np.ones((5, 5), dtype=np.float32)
        out = convolve(image, "identity", padding="same", relu=False)
        out[:] = 9
        assert (image == 1).all()

    def test_read_only_numpy(self, rng, as_kernel):
        image = rng.random((6, 7)).astype(np.float32)
        image.flags.writeable = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = convolve(image, as_kernel("sobel_y"), padding="same")
        np.testing.assert_allclose(
            result, reference_correlate(image, get_kernel("sobel_y").numpy(), "same", True), atol=1e-5
        )

    def test_big_endian_numpy(self, rng):
        image = rng.random((6, 7))
        swapped = image.astype(">f8")
        result = convolve(swapped, "sobel_y", relu=False)
        np.testing.assert_allclose(
            result, reference_correlate(image, get_kernel("sobel_y").numpy(), "valid", False), atol=1e-12
        )

    @pytest.mark.parametrize("relu", [True, False])
    def test_relu(self, rng, relu):
        image = rng.normal(size=(9, 9))
        result = convolve(image, "laplacian", relu=relu, padding="same")
        linear = reference_correlate(image, get_kernel("laplacian").numpy(), "same", False)
        assert (linear < 0).any()
        np.testing.assert_allclose(result, np.maximum(linear, 0) if relu else linear, atol=1e-12)

    def test_relu_is_the_default(self):
        image = np.array([[0, 0, 1, 1]] * 3, dtype=np.float32)[:, ::-1]  # darker to the right
        np.testing.assert_array_equal(convolve(image, "sobel_y"), [[0.0, 0.0]])
        np.testing.assert_array_equal(convolve(image, "sobel_y", relu=False), [[-4.0, -4.0]])

    def test_identity_kernel(self, rng, as_kernel):
        image, identity = rng.normal(size=(7, 5)), as_kernel("identity")
        for padding in ("same", "circular"):
            np.testing.assert_array_equal(convolve(image, identity, padding=padding, relu=False), image)
        np.testing.assert_array_equal(convolve(image, identity, relu=False), image[1:-1, 1:-1])

    def test_even_kernel_centre_is_k_over_2(self, as_kernel):
        # The centre of a 2x2 kernel is its [1, 1] tap: that tap alone copies the image,
        # the [0, 0] tap alone moves it one pixel down and right.
        image = np.arange(1.0, 17.0).reshape(4, 4)
        centre, corner = as_kernel([[0, 0], [0, 1]]), as_kernel([[1, 0], [0, 0]])
        np.testing.assert_array_equal(convolve(image, centre, padding="same"), image)
        moved = np.zeros_like(image)
        moved[1:, 1:] = image[:-1, :-1]
        np.testing.assert_array_equal(convolve(image, corner, padding="same"), moved)
        np.testing.assert_array_equal(convolve(image, corner, padding="circular"), np.roll(image, (1, 1), axis=(0, 1)))

    def test_known_answer_box(self):
        image = np.arange(16.0).reshape(4, 4)
        np.testing.assert_allclose(convolve(image, "box2"), [[2.5, 3.5, 4.5], [6.5, 7.5, 8.5], [10.5, 11.5, 12.5]])
        # With zero padding the 2x2 window of output [i, j] covers rows i-1..i and columns j-1..j.
        np.testing.assert_allclose(convolve(image, "box2", padding="same")[0, 0], 0.0)
        np.testing.assert_allclose(convolve(image, "box2", padding="same")[1, 1], (0 + 1 + 4 + 5) / 4)

    def test_kernel_as_big_as_the_image(self, rng, as_kernel):
        image = rng.random((4, 5))
        kernel = rng.normal(size=(4, 5))
        for padding in PADDINGS:
            np.testing.assert_allclose(
                convolve(image, as_kernel(kernel), padding=padding, relu=False),
                reference_correlate(image, kernel, padding, False),
                rtol=1e-12,
                atol=1e-12,
            )
        assert convolve(image, kernel, relu=False).shape == (1, 1)
        assert convolve(image, kernel, relu=False)[0, 0] == pytest.approx((image * kernel).sum())

    @pytest.mark.parametrize(
        "kernel",
        ["sobel_y", "1 2; 3 4", "[[0.5, -1]]", np.array([[1.0, -1.0]]), torch.tensor([[2.0], [1.0]]), [[1, 1]]],
        ids=["name", "literal", "bracket-literal", "numpy", "tensor", "list"],
    )
    def test_kernel_specs(self, rng, kernel):
        image = rng.random((6, 6)).astype(np.float32)
        expected_kernel = get_kernel(kernel, dtype=torch.float64).numpy()
        result = convolve(image, kernel, padding="same", relu=False)
        np.testing.assert_allclose(result, reference_correlate(image, expected_kernel, "same", False), atol=1e-5)

    def test_kernel_from_npy_file(self, rng, tmp_path):
        kernel = rng.normal(size=(3, 2))
        path = tmp_path / "k.npy"
        np.save(path, kernel)
        image = rng.random((6, 6))
        np.testing.assert_allclose(
            convolve(image, str(path), relu=False), reference_correlate(image, kernel, "valid", False), atol=1e-12
        )

    def test_kernel_takes_the_image_dtype(self, rng):
        image = rng.random((6, 6))  # float64
        kernel = np.array([[1 / 3, 1 / 7]], dtype=np.float64)
        result = convolve(image, torch.from_numpy(kernel).float(), relu=False)
        assert result.dtype == np.float64
        # The float32 kernel is used as given (cast to float64 exactly).
        kernel32 = kernel.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(result, reference_correlate(image, kernel32, "valid", False), rtol=1e-13)


class TestSobelDirection:
    def test_brighter_to_the_right_is_positive(self):
        image = np.zeros((7, 8), dtype=np.float32)
        image[:, 4:] = 1.0  # a vertical edge between columns 3 and 4
        response = convolve(image, "sobel_y", relu=False)
        # Valid output column j looks at input columns j..j+2: the edge lies inside for j = 2 and 3.
        assert (response[:, [2, 3]] == 4.0).all()
        assert (response[:, [0, 1, 4, 5]] == 0.0).all()

    def test_horizontal_edge_is_ignored(self):
        image = np.zeros((8, 7), dtype=np.float32)
        image[4:] = 1.0
        assert (convolve(image, "sobel_y", relu=False) == 0).all()
        assert (convolve(image, "sobel_x", relu=False) >= 0).all()
        assert convolve(image, "sobel_x", relu=False).max() == 4.0

    def test_matches_scipy_sobel_along_columns(self, rng):
        image = rng.random((10, 12))
        expected = ndimage.sobel(image, axis=1, mode="constant")[1:-1, 1:-1]
        np.testing.assert_allclose(convolve(image, "sobel_y", relu=False), expected, atol=1e-12)
        expected_rows = ndimage.sobel(image, axis=0, mode="constant")[1:-1, 1:-1]
        np.testing.assert_allclose(convolve(image, "sobel_x", relu=False), expected_rows, atol=1e-12)

    def test_vertical_edges_alias(self, rng):
        image = rng.random((6, 6))
        np.testing.assert_array_equal(convolve(image, "vertical_edges"), convolve(image, "sobel_y"))


@pytest.mark.usefixtures("single_thread")
class TestConvolveGradients:
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
    @pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 3)], ids=str)
    def test_gradcheck_image_and_kernel(self, generator, padding, relu, kernel_shape):
        image = torch.rand(2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
        kernel = torch.randn(*kernel_shape, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, k: convolve(x, k, padding=padding, relu=relu), (image, kernel))

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_gradcheck_image_only(self, generator, padding):
        image = torch.rand(5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: convolve(x, "sobel_y", padding=padding, relu=False), (image,))

    def test_gradient_known_answer(self):
        # d/dk of sum(valid correlation) is the sum of the image under each tap.
        image = torch.arange(16.0, dtype=torch.float64).reshape(4, 4)
        kernel = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
        convolve(image, kernel, relu=False).sum().backward()
        expected = torch.tensor([[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 45 + 9], [45 + 36, 45 + 45]], dtype=torch.float64)
        torch.testing.assert_close(kernel.grad, expected)

    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("kernel_shape", [(1, 1), (3, 3), (2, 5), (4, 4)], ids=str)
    def test_with_and_without_gradients_agree(self, generator, padding, dtype, kernel_shape):
        image = torch.randn(2, 3, 11, 9, generator=generator, dtype=dtype)
        kernel = torch.randn(*kernel_shape, generator=generator, dtype=dtype)
        with torch.no_grad():
            fast = convolve(image, kernel, padding=padding, relu=False)
        with_grad = convolve(image.clone().requires_grad_(), kernel, padding=padding, relu=False)
        assert with_grad.requires_grad and not fast.requires_grad
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(with_grad.detach(), fast, rtol=tolerance, atol=tolerance)
        kernel_grad = convolve(image, kernel.clone().requires_grad_(), padding=padding, relu=True)
        torch.testing.assert_close(kernel_grad.detach(), fast.clamp(min=0), rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_no_grad_context(self, generator, padding):
        # Under no_grad an input that requires grad gives a plain result, equal to the differentiable one.
        image = torch.rand(2, 8, 9, generator=generator, dtype=torch.float64, requires_grad=True)
        with torch.no_grad():
            plain = convolve(image, "sobel_y", padding=padding)
        differentiable = convolve(image, "sobel_y", padding=padding)
        assert not plain.requires_grad and differentiable.requires_grad
        torch.testing.assert_close(differentiable.detach(), plain, rtol=1e-12, atol=1e-12)


class TestConvolveErrors:
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize(("shape", "size"), [((2, 5), "2x5"), ((5, 2), "5x2"), ((3, 1, 1), "1x1")])
    def test_map_smaller_than_kernel(self, padding, shape, size):
        with pytest.raises(ShiftlabError) as info:
            convolve(np.zeros(shape), "sobel_y", padding=padding)
        assert str(info.value) == f"image: map of size {size} is smaller than the 3x3 kernel"

    def test_map_smaller_than_non_square_kernel(self):
        with pytest.raises(ShiftlabError) as info:
            convolve(torch.zeros(4, 4), np.ones((5, 2)))
        assert str(info.value) == "image: map of size 4x4 is smaller than the 5x2 kernel"

    @pytest.mark.parametrize("padding", ["full", "SAME", "", None, "reflect", 0])
    def test_bad_padding(self, padding):
        with pytest.raises(ShiftlabError) as info:
            convolve(np.zeros((5, 5)), "sobel_y", padding=padding)
        assert str(info.value) == f"padding: must be one of valid, same, circular, got {padding!r}"

    @pytest.mark.parametrize(
        ("image", "message"),
        [
            (
                np.zeros(5),
                r"image: expected an image or feature map of shape \(\.\.\., H, W\), got {} of shape \(5,\) and "
                r"dtype float64",
            ),
            (np.zeros((0, 5)), r"image: is empty: {} of shape \(0, 5\) and dtype float64"),
            (np.zeros((2, 0, 5)), r"image: is empty: {} of shape \(2, 0, 5\) and dtype float64"),
            (
                np.zeros((4, 4), dtype=complex),
                r"image: expected real numbers, got {} of shape \(4, 4\) and dtype complex128",
            ),
            (
                np.array([["a", "b"], ["c", "d"]]),
                r"image: expected real numbers, got {} of shape \(2, 2\) and dtype <U1",
            ),
        ],
    )
    def test_bad_images(self, image, message):
        with pytest.raises(ShiftlabError, match="^" + message.format("(numpy array|tensor)") + "$"):
            convolve(image, [[1]])
        if image.dtype.kind != "U":  # torch has no string tensors
            with pytest.raises(ShiftlabError, match="^" + message.format("tensor") + "$"):
                convolve(torch.from_numpy(image), [[1]])

    def test_bad_kernel(self):
        with pytest.raises(ShiftlabError, match=r"^kernel: unknown name 'sobel'"):
            convolve(np.zeros((5, 5)), "sobel")
        with pytest.raises(ShiftlabError, match=r"^kernel: expected a 2-D kernel \(kh, kw\), got shape \(3,\)$"):
            convolve(np.zeros((5, 5)), [1, 2, 3])
        with pytest.raises(ShiftlabError, match=r"holds NaN or Inf$"):
            convolve(np.zeros((5, 5)), [[np.nan]])

    def test_kernel_overflowing_the_image_dtype(self):
        # 1e300 is finite in float64 but infinite once cast to the image's float32.
        with pytest.raises(ShiftlabError, match=r"holds NaN or Inf$"):
            convolve(np.zeros((5, 5), dtype=np.float32), np.array([[1e300]]))

    def test_errors_are_value_errors(self):
        with pytest.raises(ValueError):
            convolve(np.zeros((2, 2)), "sobel_y")


class TestConvolveModule:
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("relu", [True, False])
    @pytest.mark.parametrize("kernel", ["sobel_y", "gaussian5", "1 2; -3 4"])
    def test_equals_function(self, generator, padding, relu, kernel):
        image = torch.randn(2, 3, 9, 10, generator=generator)
        layer = Convolve(kernel, padding=padding, relu=relu)
        torch.testing.assert_close(layer(image), convolve(image, kernel, padding=padding, relu=relu), rtol=0, atol=0)

    def test_float64_input(self, generator):
        image = torch.randn(1, 1, 8, 8, generator=generator, dtype=torch.float64)
        layer = Convolve("laplacian", padding="circular", relu=False)
        result = layer(image)
        assert result.dtype == torch.float64
        expected = reference_correlate(image[0, 0].numpy(), get_kernel("laplacian").numpy(), "circular", False)
        np.testing.assert_allclose(result[0, 0].numpy(), expected, atol=1e-12)

    def test_kernel_buffer(self):
        layer = Convolve(np.array([[1.0, 2.0]], dtype=np.float64))
        assert layer.kernel.dtype == torch.float32
        torch.testing.assert_close(layer.kernel, torch.tensor([[1.0, 2.0]]))
        assert "kernel" in dict(layer.named_buffers())
        assert "kernel" not in layer.state_dict()
        assert list(layer.parameters()) == []

    def test_module_to_float64(self):
        layer = Convolve("box3").to(torch.float64)
        assert layer.kernel.dtype == torch.float64

    def test_defaults_and_repr(self):
        layer = Convolve("sobel_y")
        assert layer.padding == "valid" and layer.relu is True
        assert repr(layer) == "Convolve(kernel_size=(3, 3), padding='valid', relu=True)"
        assert "kernel_size=(2, 5), padding='circular', relu=False" in repr(
            Convolve(np.ones((2, 5)), padding="circular", relu=False)
        )

    @pytest.mark.usefixtures("single_thread")
    def test_gradient_flows_to_input(self, generator):
        image = torch.rand(1, 2, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
        layer = Convolve("sobel_y", padding="same", relu=False)
        assert torch.autograd.gradcheck(layer, (image,))

    def test_in_sequential(self, generator):
        model = torch.nn.Sequential(Convolve("sobel_y", padding="same"), MaxPool(2))
        image = torch.rand(1, 1, 8, 8, generator=generator)
        assert model(image).shape == (1, 1, 4, 4)

    def test_bad_padding_at_construction(self):
        with pytest.raises(ShiftlabError) as info:
            Convolve("sobel_y", padding="zeros")
        assert str(info.value) == "padding: must be one of valid, same, circular, got 'zeros'"

    def test_bad_kernel_at_construction(self):
        with pytest.raises(ShiftlabError, match="^kernel: unknown name 'edges'"):
            Convolve("edges")

    def test_numpy_through_module(self):
        layer = Convolve("sobel_y")
        result = layer(np.array([[0, 0, 1, 1]] * 3, dtype=np.float32))
        assert isinstance(result, np.ndarray)
        np.testing.assert_array_equal(result, [[4.0, 4.0]])


# --------------------------------------------------------------------------- rank-1 kernels


def rank_one_kernel(rng: np.random.Generator, shape: tuple[int, int], zero_taps: bool) -> np.ndarray:
    """``outer(column, row)`` of random factors with mixed signs.

    With ``zero_taps``, one tap of the row, and of the column too where the kernel
    keeps more non-zero taps than its two factors, is zero, so whole columns and
    rows of the kernel are zero (as in a Sobel kernel).
    """
    column, row = (rng.normal(size=length) for length in shape)
    for factor in (column, row):
        factor[rng.permutation(len(factor))[:2]] *= -1  # negative entries whatever the draw
    if zero_taps:
        for factor, other in ((row, column), (column, row)):
            left, other_left = len(factor) - 1, np.count_nonzero(other)
            if left >= 2 and left * other_left > left + other_left:
                factor[rng.integers(len(factor))] = 0.0
    return np.outer(column, row)


SEPARABLE_SHAPES = [(3, 3), (2, 3), (3, 2), (4, 4), (5, 3), (3, 7), (6, 5), (2, 5)]


class TestRankOneKernels:
    """Rank-1 kernels (Sobel, box, binomial, Gaussian, random outer products) and near misses, against scipy."""

    @pytest.mark.parametrize("kernel_shape", SEPARABLE_SHAPES, ids=str)
    @pytest.mark.parametrize("zero_taps", [False, True], ids=["dense", "zero-taps"])
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_matches_scipy(self, rng, kernel_shape, zero_taps, padding, relu, dtype):
        image = rng.normal(size=(13, 11)).astype(dtype)
        kernel = rank_one_kernel(rng, kernel_shape, zero_taps).astype(dtype)
        result = convolve(image, kernel, padding=padding, relu=relu)
        assert isinstance(result, np.ndarray) and result.dtype == np.dtype(dtype)
        expected = reference_correlate(image, kernel, padding, relu)
        tolerance = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("shape", [(2, 3, 12, 10), (4, 9, 14), (1, 1, 8, 8), (2, 1, 2, 9, 10)], ids=str)
    @pytest.mark.parametrize("backend", ["numpy", "torch"])
    def test_batches(self, rng, padding, shape, backend):
        stack = rng.normal(size=shape)
        kernel = rank_one_kernel(rng, (3, 4), zero_taps=True)
        source = stack if backend == "numpy" else torch.from_numpy(stack)
        result = convolve(source, kernel, padding=padding, relu=False)
        assert isinstance(result, np.ndarray if backend == "numpy" else torch.Tensor)
        expected = per_map(reference_correlate, stack, kernel, padding, False)
        np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("name", ["sobel_y", "sobel_x", "box3", "box5", "gaussian3", "gaussian7", "binomial5"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_named_kernels(self, generator, name, dtype):
        # Gaussians included in float32, where rounding leaves them rank 1 only to about 3e-8.
        image = torch.rand(2, 15, 16, generator=generator, dtype=dtype)
        result = convolve(image, name, padding="circular", relu=False)
        kernel = get_kernel(name, dtype=dtype).double().numpy()
        expected = per_map(reference_correlate, image.double().numpy(), kernel, "circular", False)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(result.numpy(), expected, rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("name", ["sobel_y", "sobel_x", "laplacian", "binomial3", "box2", "identity"])
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_small_integer_images_are_exact(self, rng, name, padding, dtype):
        # Small integers times these kernels' entries (integers, or powers of two) are exact
        # in float32, and so are their sums: any rounding on the way, from factoring the kernel or
        # otherwise, would show.
        image = rng.integers(-50, 50, size=(3, 11, 12)).astype(dtype)
        kernel = get_kernel(name, dtype=torch.float64).numpy()
        expected = per_map(reference_correlate, image, kernel, padding, False)
        np.testing.assert_array_equal(convolve(image, name, padding=padding, relu=False), expected)

    @pytest.mark.parametrize(
        "kernel",
        ["laplacian", "identity", "box2", "[[1, 2, 3]]", "1; 2; 3; 4", "0 0 0; 1 2 1; 0 0 0", "[[0, 0], [0, 0]]"],
        ids=["laplacian", "one-tap", "2x2", "one-row", "one-column", "one-non-zero-row", "zeros"],
    )
    def test_other_kernels(self, rng, kernel):
        # Not rank 1, or rank 1 but a single row, column or 2x2; all zeros.
        image = rng.normal(size=(9, 10))
        result = convolve(image, kernel, padding="same", relu=False)
        expected = reference_correlate(image, get_kernel(kernel, dtype=torch.float64).numpy(), "same", False)
        np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize(
        ("dtype", "relative"),
        [("float64", 1e-13), ("float64", 1e-6), ("float32", 1e-5), ("float32", 1e-2)],
    )
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_near_rank_one(self, rng, dtype, relative, padding):
        # A rank-1 kernel plus a perturbation above 8 eps of the dtype is not rank 1: treating it as
        # one would drop the perturbation, which the float64 comparison would see.
        kernel = rank_one_kernel(rng, (3, 4), zero_taps=False)
        kernel[1, 2] += relative * np.abs(kernel).max()
        kernel = kernel.astype(dtype)
        image = rng.normal(size=(2, 10, 12)).astype(dtype)
        result = convolve(image, kernel, padding=padding, relu=False)
        tolerance = 1e-5 if dtype == "float32" else 1e-12
        expected = per_map(reference_correlate, image, kernel, padding, False)
        np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 4), (5, 3), (4, 6)], ids=str)
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("shape", [(2, 19, 23), (1, 1030, 1030)], ids=["small", "over-a-million-values"])
    @pytest.mark.parametrize("trial", range(3))
    def test_circular_is_exactly_shift_equivariant(self, rng, kernel_shape, dtype, shape, trial):
        # Every output pixel goes through the same float operations in the same order, wherever it
        # lies in its row or in the input: rolling commutes with filtering bit for bit.
        image = rng.random(shape).astype(dtype)
        kernel = rank_one_kernel(rng, kernel_shape, zero_taps=bool(trial % 2)).astype(dtype)
        shift = tuple(int(rng.integers(-size, size)) for size in shape[-2:])
        for relu in (False, True):
            shifted_then_filtered = convolve(
                np.roll(image, shift, axis=(-2, -1)), kernel, padding="circular", relu=relu
            )
            filtered_then_shifted = np.roll(
                convolve(image, kernel, padding="circular", relu=relu), shift, axis=(-2, -1)
            )
            np.testing.assert_array_equal(shifted_then_filtered, filtered_then_shifted)

    @pytest.mark.parametrize("kernel", ["sobel_y", "laplacian"])
    def test_output_memory(self, rng, kernel):
        # Every call returns fresh, writable memory that aliases neither the input nor an earlier
        # result; torch callers get an ordinary, resizable tensor.
        image = rng.normal(size=(2, 9, 9)).astype(np.float32)
        first = convolve(image, kernel, relu=False)
        second = convolve(image, kernel, relu=False)
        assert first.flags.writeable and not np.shares_memory(first, second) and not np.shares_memory(first, image)
        first[...] = 7
        np.testing.assert_array_equal(second, convolve(image, kernel, relu=False))
        tensor = convolve(torch.from_numpy(image), kernel, relu=False)
        tensor.resize_(3, 3)


# --------------------------------------------------------------------------- equivariance


class TestConvolutionShiftProperties:
    @pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 2), (4, 3), (1, 5)], ids=str)
    @pytest.mark.parametrize("trial", range(4))
    def test_circular_is_exactly_shift_equivariant(self, rng, as_kernel, kernel_shape, trial):
        image = rng.random((2, 12, 17)).astype(np.float32)
        kernel = rng.normal(size=kernel_shape).astype(np.float32)
        shift = (int(rng.integers(-12, 12)), int(rng.integers(-17, 17)))
        for relu in (False, True):
            shifted_then_filtered = convolve(
                np.roll(image, shift, axis=(-2, -1)), kernel, padding="circular", relu=relu
            )
            filtered_then_shifted = np.roll(
                convolve(image, kernel, padding="circular", relu=relu), shift, axis=(-2, -1)
            )
            np.testing.assert_allclose(shifted_then_filtered, filtered_then_shifted, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 4), (5, 1)], ids=str)
    @pytest.mark.parametrize("offset", [(0, 1), (3, 5), (2, 0), (7, 6)], ids=str)
    def test_valid_commutes_with_shifts_away_from_borders(self, rng, as_kernel, kernel_shape, offset):
        scene = rng.random((30, 34))
        kernel = rng.normal(size=kernel_shape)
        height, width = 20, 22
        dy, dx = offset
        first = convolve(scene[:height, :width], kernel, relu=False)
        second = convolve(scene[dy : dy + height, dx : dx + width], kernel, relu=False)
        out_h, out_w = first.shape
        # The second window sees the scene moved by (dy, dx): its output is the first one moved the same way.
        np.testing.assert_allclose(second[: out_h - dy, : out_w - dx], first[dy:, dx:], rtol=1e-12, atol=1e-12)
        whole = convolve(scene, kernel, relu=False)
        np.testing.assert_allclose(second, whole[dy : dy + out_h, dx : dx + out_w], rtol=1e-12, atol=1e-12)

    def test_same_padding_is_not_circularly_equivariant(self, rng):
        # Zero padding breaks the exact property at the borders: a control for the test above.
        image = rng.random((10, 10)) + 0.5
        shifted = convolve(np.roll(image, 3, axis=1), "box3", padding="same")
        rolled = np.roll(convolve(image, "box3", padding="same"), 3, axis=1)
        assert np.abs(shifted - rolled).max() > 0.1


# --------------------------------------------------------------------------- max_pool


POOL_SETTINGS = [(2, None), (2, 2), (3, 3), (3, 2), (2, 1), (3, 1), (4, 3), (1, 1), (1, 2), (2, 3), (3, 5)]


class TestMaxPool:
    def test_docstring_example(self):
        np.testing.assert_array_equal(max_pool(np.arange(16.0).reshape(4, 4)), [[5.0, 7.0], [13.0, 15.0]])

    @pytest.mark.parametrize(("kernel_size", "stride"), POOL_SETTINGS, ids=str)
    @pytest.mark.parametrize("shape", [(9, 11), (10, 10), (7, 12), (8, 5), (12, 13)], ids=str)
    def test_matches_loop_reference(self, rng, kernel_size, stride, shape):
        image = rng.normal(size=shape)
        result = max_pool(image, kernel_size, stride)
        expected = reference_max_pool(image, kernel_size, kernel_size if stride is None else stride)
        assert result.shape == expected.shape
        np.testing.assert_array_equal(result, expected)

    @pytest.mark.parametrize(("kernel_size", "stride"), [(2, 2), (3, 3), (3, 2), (2, 1), (4, 3)], ids=str)
    def test_loop_reference_matches_torch(self, rng, kernel_size, stride):
        # Cross-check the loop reference itself against torch's max_pool2d.
        image = rng.normal(size=(2, 9, 11))
        torch_result = F.max_pool2d(torch.from_numpy(image), kernel_size, stride).numpy()
        np.testing.assert_array_equal(per_map(reference_max_pool, image, kernel_size, stride), torch_result)
        np.testing.assert_array_equal(max_pool(image, kernel_size, stride), torch_result)

    @pytest.mark.parametrize("shape", [(2, 3, 9, 10), (3, 9, 10), (2, 1, 2, 9, 10)], ids=str)
    def test_batches_equal_per_map(self, rng, shape):
        stack = rng.normal(size=shape).astype(np.float32)
        result = max_pool(stack, 3, 2)
        np.testing.assert_array_equal(result, per_map(reference_max_pool, stack, 3, 2).astype(np.float32))

    def test_trailing_rows_and_columns_are_dropped(self):
        image = np.zeros((9, 9), dtype=np.float32)
        image[8, :] = 100.0
        image[:, 8] = 100.0
        result = max_pool(image, 2)
        assert result.shape == (4, 4)
        assert (result == 0).all()

    def test_all_negative_values(self):
        image = -np.arange(1.0, 17.0).reshape(4, 4)
        np.testing.assert_array_equal(max_pool(image), [[-1.0, -3.0], [-9.0, -11.0]])

    def test_nan_stays_in_its_window(self):
        image = np.zeros((4, 4))
        image[0, 0] = np.nan
        result = max_pool(image)
        assert np.isnan(result[0, 0])
        assert (result.ravel()[1:] == 0).all()

    @pytest.mark.parametrize("backend", ["numpy", "torch"])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_types(self, rng, backend, dtype):
        image = rng.normal(size=(6, 6)).astype(dtype)
        source = image if backend == "numpy" else torch.from_numpy(image)
        result = max_pool(source, 2)
        if backend == "numpy":
            assert isinstance(result, np.ndarray) and result.dtype == np.dtype(dtype)
        else:
            assert isinstance(result, torch.Tensor) and result.dtype == getattr(torch, dtype)
            result = result.numpy()
        np.testing.assert_array_equal(result, reference_max_pool(image, 2, 2).astype(dtype))

    @pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64])
    def test_integer_and_bool_become_float32(self, dtype):
        image = (np.arange(16).reshape(4, 4) % 3).astype(dtype)
        result = max_pool(image)
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, reference_max_pool(image.astype(np.float64), 2, 2))
        assert max_pool(torch.from_numpy(image)).dtype == torch.float32

    def test_numpy_views(self, rng):
        base = rng.normal(size=(10, 11))
        for image in (base[:, ::-1], base[::-1, ::2], base.T):
            np.testing.assert_array_equal(max_pool(image, 3, 2), reference_max_pool(image, 3, 2))

    def test_non_contiguous_tensors(self, generator):
        base = torch.randn(2, 3, 10, 12, generator=generator)
        for image in (base.transpose(-1, -2), base[..., ::2], base.contiguous(memory_format=torch.channels_last)):
            expected = per_map(reference_max_pool, image.numpy().copy(), 2, 2)
            np.testing.assert_array_equal(max_pool(image).numpy(), expected.astype(np.float32))

    @pytest.mark.parametrize(("kernel_size", "stride"), [(1, 1), (2, 2), (3, 1)], ids=str)
    def test_input_not_modified_and_output_not_aliased(self, rng, kernel_size, stride):
        image = rng.normal(size=(6, 6))
        copy = image.copy()
        result = max_pool(image, kernel_size, stride)
        result[...] = 99
        np.testing.assert_array_equal(image, copy)

    def test_kernel_one_is_identity(self, rng):
        image = rng.normal(size=(5, 7))
        np.testing.assert_array_equal(max_pool(image, 1), image)
        np.testing.assert_array_equal(max_pool(image, 1, 2), image[::2, ::2])

    @pytest.mark.parametrize(("kernel_size", "stride"), [(2, 2), (3, 2), (2, 1)], ids=str)
    @pytest.mark.usefixtures("single_thread")
    def test_gradcheck(self, generator, kernel_size, stride):
        image = torch.randn(2, 7, 8, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: max_pool(x, kernel_size, stride), (image,))

    def test_gradient_goes_to_the_maximum(self):
        image = torch.tensor([[1.0, 5.0], [2.0, 3.0]], requires_grad=True)
        max_pool(image).sum().backward()
        torch.testing.assert_close(image.grad, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


class TestMaxPoolErrors:
    @pytest.mark.parametrize(
        ("shape", "kernel_size", "size"),
        [((1, 4), 2, "1x4"), ((4, 1), 2, "4x1"), ((2, 5, 5), 6, "5x5"), ((3, 3), 4, "3x3")],
    )
    def test_map_smaller_than_window(self, shape, kernel_size, size):
        with pytest.raises(ShiftlabError) as info:
            max_pool(np.zeros(shape), kernel_size)
        assert (
            str(info.value)
            == f"image: map of size {size} is smaller than the {kernel_size}x{kernel_size} pooling window"
        )

    @pytest.mark.parametrize(
        ("kernel_size", "problem"),
        [
            (0, "must be an integer >= 1, got 0"),
            (-1, "must be an integer >= 1, got -1"),
            (2.5, "must be an integer, got 2.5"),
            (True, "must be an integer, got True"),
            ("2", "must be an integer, got '2'"),
            (None, "must be an integer, got None"),
        ],
    )
    def test_bad_kernel_size(self, kernel_size, problem):
        with pytest.raises(ShiftlabError) as info:
            max_pool(np.zeros((4, 4)), kernel_size)
        assert str(info.value) == f"kernel_size: {problem}"

    @pytest.mark.parametrize(
        ("stride", "problem"),
        [
            (0, "must be an integer >= 1, got 0"),
            (-2, "must be an integer >= 1, got -2"),
            (1.5, "must be an integer, got 1.5"),
            (False, "must be an integer, got False"),
            ("1", "must be an integer, got '1'"),
        ],
    )
    def test_bad_stride(self, stride, problem):
        with pytest.raises(ShiftlabError) as info:
            max_pool(np.zeros((4, 4)), 2, stride)
        assert str(info.value) == f"stride: {problem}"

    def test_whole_numbers_of_any_type(self, rng):
        # The project's integer vocabulary (errors.check_int): numpy integers and integral floats are sizes too.
        image = rng.normal(size=(6, 7))
        expected = max_pool(image, 3, 2)
        for kernel_size, stride in ((np.int64(3), np.int32(2)), (3.0, 2.0), (torch.tensor(3), torch.tensor(2))):
            np.testing.assert_array_equal(max_pool(image, kernel_size, stride), expected)

    def test_bad_image(self):
        with pytest.raises(ShiftlabError, match=r"^image: expected an image or feature map of shape \(\.\.\., H, W\)"):
            max_pool(np.zeros(4))
        with pytest.raises(ShiftlabError, match=r"^image: is empty"):
            max_pool(torch.zeros(3, 0, 4))


class TestMaxPoolModule:
    @pytest.mark.parametrize(("kernel_size", "stride"), [(2, None), (3, 2), (2, 1)], ids=str)
    def test_equals_function(self, generator, kernel_size, stride):
        image = torch.randn(2, 3, 9, 10, generator=generator)
        layer = MaxPool(kernel_size, stride)
        torch.testing.assert_close(layer(image), max_pool(image, kernel_size, stride), rtol=0, atol=0)
        torch.testing.assert_close(layer(image), F.max_pool2d(image, kernel_size, stride), rtol=0, atol=0)

    def test_defaults_and_repr(self):
        layer = MaxPool()
        assert (layer.kernel_size, layer.stride) == (2, 2)
        assert repr(layer) == "MaxPool(kernel_size=2, stride=2)"
        assert repr(MaxPool(3, 1)) == "MaxPool(kernel_size=3, stride=1)"

    def test_docstring_shape(self):
        assert MaxPool(2)(torch.zeros(1, 1, 9, 9)).shape == (1, 1, 4, 4)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ((0,), "kernel_size: must be an integer >= 1, got 0"),
            ((2, 0), "stride: must be an integer >= 1, got 0"),
            ((2.5,), "kernel_size: must be an integer, got 2.5"),
        ],
    )
    def test_bad_arguments_at_construction(self, args, message):
        with pytest.raises(ShiftlabError) as info:
            MaxPool(*args)
        assert str(info.value) == message


# --------------------------------------------------------------------------- pooling and shifts


class TestPoolingShiftProperties:
    @pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (2, 3), (4, 2)], ids=str)
    def test_stride_two_commutes_with_even_shifts(self, rng, shift):
        scene = rng.normal(size=(3, 30, 34))
        ty, tx = shift
        height, width = 20, 22
        crop = scene[:, 2 * ty : 2 * ty + height, 2 * tx : 2 * tx + width]
        pooled_crop = max_pool(crop, 2)
        pooled_scene = max_pool(scene[:, : height + 2 * ty, : width + 2 * tx], 2)
        np.testing.assert_array_equal(pooled_crop, pooled_scene[:, ty : ty + height // 2, tx : tx + width // 2])

    @pytest.mark.parametrize("kernel_size", [2, 3])
    def test_stride_two_with_overlap_commutes_with_even_shifts(self, rng, kernel_size):
        scene = rng.normal(size=(25, 25))
        pooled_scene = max_pool(scene, kernel_size, 2)
        pooled_crop = max_pool(scene[4:, 6:], kernel_size, 2)
        np.testing.assert_array_equal(
            pooled_crop, pooled_scene[2 : 2 + pooled_crop.shape[0], 3 : 3 + pooled_crop.shape[1]]
        )

    def test_odd_shift_counterexample(self):
        # A 2x2 block of ones straddling all four pooling windows lights all of them;
        # moved one pixel down-right it sits inside one window and lights only that one.
        image = np.zeros((4, 4), dtype=np.float32)
        image[1:3, 1:3] = 1.0
        np.testing.assert_array_equal(max_pool(image), [[1.0, 1.0], [1.0, 1.0]])
        moved = np.roll(image, (1, 1), axis=(0, 1))
        np.testing.assert_array_equal(max_pool(moved), [[0.0, 0.0], [0.0, 1.0]])
        # No shift of the first pooled map gives the second: they do not even have the same sum.
        assert max_pool(image).sum() != max_pool(moved).sum()

    def test_odd_shift_counterexample_one_row(self):
        # Two lit pixels in the middle of a row light both windows; moved right by one
        # pixel they fill the second window only.
        row = np.array([[0.0, 1.0, 1.0, 0.0]] * 2)
        moved = np.roll(row, 1, axis=1)
        np.testing.assert_array_equal(max_pool(row), [[1.0, 1.0]])
        np.testing.assert_array_equal(max_pool(moved), [[0.0, 1.0]])
        # Whereas an even shift just moves the pooled output by one.
        np.testing.assert_array_equal(max_pool(np.roll(moved, 2, axis=1)), [[1.0, 0.0]])

    @pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (3, 5)], ids=str)
    def test_random_images_break_with_odd_shifts(self, rng, shift):
        scene = rng.random((4, 32, 32))
        ty, tx = shift
        crop = scene[:, ty : ty + 24, tx : tx + 24]
        pooled_crop = max_pool(crop, 2)
        pooled_scene = max_pool(scene, 2)
        # Compare with the pooled scene moved by each whole number of output pixels
        # around the half-way shift: none of them matches.
        for oy in {ty // 2, (ty + 1) // 2}:
            for ox in {tx // 2, (tx + 1) // 2}:
                candidate = pooled_scene[:, oy : oy + 12, ox : ox + 12]
                assert np.abs(pooled_crop - candidate).max() > 0.05
                assert np.mean(pooled_crop != candidate) > 0.2


# --------------------------------------------------------------------------- pool_pyramid


class TestPoolPyramid:
    def test_level_zero_is_a_read_only_view_of_numpy_input(self):
        image = np.arange(16, dtype=np.float32).reshape(4, 4)
        level0 = pool_pyramid(image, 1)[0]
        np.testing.assert_array_equal(level0, image)
        assert np.shares_memory(level0, image) and not level0.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            level0[0, 0] = 99.0
        assert image.flags.writeable and image[0, 0] == 0.0

    def test_level_zero_of_integer_input_is_converted(self):
        levels = pool_pyramid(np.eye(4, dtype=np.uint8), 1)
        assert levels[0].dtype == np.float32 and levels[1].tolist() == [[1.0, 0.0], [0.0, 1.0]]

    def test_shapes_10x10(self):
        levels = pool_pyramid(np.zeros((10, 10)), 3)
        assert [level.shape for level in levels] == [(10, 10), (5, 5), (2, 2), (1, 1)]

    @pytest.mark.parametrize(
        ("shape", "kernel_size", "iterations", "shapes"),
        [
            ((16, 9), 2, 3, [(16, 9), (8, 4), (4, 2), (2, 1)]),
            ((27, 28), 3, 3, [(27, 28), (9, 9), (3, 3), (1, 1)]),
            ((2, 3, 8, 8), 2, 2, [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]),
        ],
    )
    def test_shapes(self, shape, kernel_size, iterations, shapes):
        levels = pool_pyramid(np.zeros(shape), iterations, kernel_size)
        assert [level.shape for level in levels] == shapes

    def test_levels_match_repeated_reference(self, rng):
        image = rng.normal(size=(10, 10))
        levels = pool_pyramid(image, 3)
        assert len(levels) == 4
        np.testing.assert_array_equal(levels[0], image)
        expected = image
        for level in levels[1:]:
            expected = reference_max_pool(expected, 2, 2)
            np.testing.assert_array_equal(level, expected)

    def test_iterations_zero(self, rng):
        image = rng.normal(size=(3, 3))
        levels = pool_pyramid(image, 0)
        assert len(levels) == 1
        np.testing.assert_array_equal(levels[0], image)

    def test_types(self, generator):
        tensor = torch.rand(1, 8, 8, generator=generator, dtype=torch.float64)
        levels = pool_pyramid(tensor, 2)
        assert all(isinstance(level, torch.Tensor) and level.dtype == torch.float64 for level in levels)
        arrays = pool_pyramid(tensor.numpy(), 2)
        assert all(isinstance(level, np.ndarray) and level.dtype == np.float64 for level in arrays)
        integers = pool_pyramid(np.ones((4, 4), dtype=np.uint8), 1)
        assert all(level.dtype == np.float32 for level in integers)
        np.testing.assert_array_equal(integers[0], np.ones((4, 4)))

    def test_kernel_size_one(self, rng):
        image = rng.normal(size=(3, 3))
        levels = pool_pyramid(image, 5, kernel_size=1)
        assert len(levels) == 6
        for level in levels:
            np.testing.assert_array_equal(level, image)

    @pytest.mark.usefixtures("single_thread")
    def test_gradients_flow_through_levels(self, generator):
        image = torch.rand(8, 8, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: pool_pyramid(x, 2)[-1], (image,))

    def test_single_pixels_from_the_article(self):
        first = np.zeros((10, 10), dtype=np.float32)
        first[2, 2] = 1.0
        second = np.zeros((10, 10), dtype=np.float32)
        second[-3, -3] = 1.0
        first_levels = pool_pyramid(first, 3)
        second_levels = pool_pyramid(second, 3)
        # One pooling: [2, 2] -> [1, 1] and [7, 7] -> [3, 3] of a 5x5 map.
        assert np.argwhere(first_levels[1]).tolist() == [[1, 1]]
        assert np.argwhere(second_levels[1]).tolist() == [[3, 3]]
        # Two poolings: [0, 0] and [1, 1] of a 2x2 map.
        np.testing.assert_array_equal(first_levels[2], [[1.0, 0.0], [0.0, 0.0]])
        np.testing.assert_array_equal(second_levels[2], [[0.0, 0.0], [0.0, 1.0]])
        # Three: the two images can no longer be told apart.
        np.testing.assert_array_equal(first_levels[3], [[1.0]])
        np.testing.assert_array_equal(second_levels[3], first_levels[3])

    def test_too_many_iterations(self):
        with pytest.raises(ShiftlabError) as info:
            pool_pyramid(np.zeros((10, 10)), 4)
        assert str(info.value) == "iterations: 4 poolings with a 2x2 window do not fit a 10x10 map: at most 3 do"

    def test_too_many_iterations_non_square(self):
        with pytest.raises(ShiftlabError) as info:
            pool_pyramid(torch.zeros(2, 12, 40), 5, kernel_size=3)
        assert str(info.value) == "iterations: 5 poolings with a 3x3 window do not fit a 12x40 map: at most 2 do"

    def test_map_smaller_than_window(self):
        with pytest.raises(ShiftlabError) as info:
            pool_pyramid(np.zeros((1, 5)), 1)
        assert str(info.value) == "iterations: 1 poolings with a 2x2 window do not fit a 1x5 map: at most 0 do"

    @pytest.mark.parametrize(
        ("iterations", "problem"),
        [
            (-1, "must be an integer >= 0, got -1"),
            (1.5, "must be an integer, got 1.5"),
            (True, "must be an integer, got True"),
            ("2", "must be an integer, got '2'"),
            (None, "must be an integer, got None"),
        ],
    )
    def test_bad_iterations(self, iterations, problem):
        with pytest.raises(ShiftlabError) as info:
            pool_pyramid(np.zeros((4, 4)), iterations)
        assert str(info.value) == f"iterations: {problem}"

    @pytest.mark.parametrize(
        ("kernel_size", "problem"),
        [
            (0, "must be an integer >= 1, got 0"),
            (-2, "must be an integer >= 1, got -2"),
            (1.5, "must be an integer, got 1.5"),
        ],
    )
    def test_bad_kernel_size(self, kernel_size, problem):
        with pytest.raises(ShiftlabError) as info:
            pool_pyramid(np.zeros((4, 4)), 1, kernel_size)
        assert str(info.value) == f"kernel_size: {problem}"

    def test_bad_image(self):
        with pytest.raises(ShiftlabError, match=r"^image: expected an image or feature map"):
            pool_pyramid(np.zeros(10), 1)


class TestDepthAndSizes:
    @pytest.mark.parametrize(
        ("height", "width", "kernel_size", "depth"),
        [
            (10, 10, 2, 3),
            (1, 1, 2, 0),
            (2, 2, 2, 1),
            (16, 9, 2, 3),
            (256, 256, 2, 8),
            (27, 27, 3, 3),
            (8, 8, 3, 1),
            (5, 100, 2, 2),
        ],
    )
    def test_max_pyramid_depth(self, height, width, kernel_size, depth):
        assert max_pyramid_depth(height, width, kernel_size) == depth
        image = np.zeros((height, width))
        assert len(pool_pyramid(image, depth, kernel_size)) == depth + 1
        with pytest.raises(ShiftlabError, match=f"at most {depth} do$"):
            pool_pyramid(image, depth + 1, kernel_size)

    def test_depth_kernel_one(self):
        with pytest.raises(ShiftlabError) as info:
            max_pyramid_depth(10, 10, 1)
        assert str(info.value) == "kernel_size: a 1x1 pooling never shrinks a map: its depth is unbounded"

    @pytest.mark.parametrize("kernel_size", [0, 2.5])
    def test_depth_bad_kernel_size(self, kernel_size):
        with pytest.raises(ShiftlabError) as info:
            max_pyramid_depth(10, 10, kernel_size)
        problem = "must be an integer >= 1, got 0" if kernel_size == 0 else "must be an integer, got 2.5"
        assert str(info.value) == f"kernel_size: {problem}"

    @pytest.mark.parametrize(
        ("size", "kernel_size", "stride", "expected"),
        [(9, 2, 2, 4), (10, 2, 2, 5), (10, 3, 1, 8), (10, 3, 2, 4), (7, 7, 3, 1), (12, 3, 5, 2), (11, 4, 3, 3)],
    )
    def test_output_size(self, size, kernel_size, stride, expected):
        # (size - kernel_size) // stride + 1 along each axis, as torch's max_pool2d without padding.
        image = np.zeros((size, size + 1))
        expected_shape = F.max_pool2d(torch.from_numpy(image)[None], kernel_size, stride).shape[1:]
        assert max_pool(image, kernel_size, stride).shape == expected_shape
        assert expected_shape[0] == expected


# --------------------------------------------------------------------------- CUDA


@requires_cuda
class TestCuda:
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_convolve_matches_cpu(self, generator, padding):
        image = torch.rand(2, 3, 20, 17, generator=generator, dtype=torch.float64)
        kernel = torch.randn(4, 3, generator=generator, dtype=torch.float64)
        result = convolve(image.cuda(), kernel, padding=padding)
        assert result.device.type == "cuda" and result.dtype == torch.float64
        torch.testing.assert_close(result.cpu(), convolve(image, kernel, padding=padding))

    def test_max_pool_and_pyramid(self, generator):
        image = torch.rand(2, 3, 20, 17, generator=generator)
        torch.testing.assert_close(max_pool(image.cuda(), 3, 2).cpu(), max_pool(image, 3, 2))
        levels = pool_pyramid(image.cuda(), 3)
        assert all(level.device.type == "cuda" for level in levels)

    def test_modules(self, generator):
        image = torch.rand(1, 2, 12, 12, generator=generator)
        layer = Convolve("sobel_y", padding="same").cuda()
        torch.testing.assert_close(layer(image.cuda()).cpu(), Convolve("sobel_y", padding="same")(image))
