"""Tests for shiftlab.layers.blurpool: BlurPool and max-blur pooling against independent numpy loops.

The reference builds its filter from repeated convolution of ``[1, 1]`` (Pascal's triangle), pads with
``np.pad`` and sums every window in a Python loop; it shares no code with the implementation. Known answers come
from kornia's documented examples (zero padding), conventions of Zhang's reference and timm from their sources.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shiftlab.errors import InternalError, ShiftlabError
from shiftlab.layers import (
    APSPool2d,
    BlurConv2d,
    BlurPool2d,
    MaxBlurPool2d,
    binomial_filter,
    blur_pool2d,
    max_blur_pool2d,
)
from shiftlab.layers._maps import pad2d

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Hundreds of tiny tensors: one thread, or the pool's hand-offs cost 100x the work on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("single_thread")

PADDINGS = ("zeros", "reflect", "replicate", "circular")
NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
SHAPES = [(2, 3, 9, 13), (1, 2, 8, 6), (1, 1, 2, 3)]  # odd, even and non-square, smaller than most filters


def pascal_row(size: int) -> np.ndarray:
    row = np.array([1.0])
    for _ in range(size - 1):
        row = np.convolve(row, [1.0, 1.0])
    return row


def reference_blur_pool(x: np.ndarray, kernel: int, stride: int, padding: str) -> np.ndarray:
    """Zhang's BlurPool of every (H, W) map: pad (k-1)//2 before and ceil((k-1)/2) after, then, for every tap
    (a, b) of the filter, add its weight times the padded map read from (a, b) at the stride."""
    row = pascal_row(kernel)
    weights = np.outer(row, row) / np.outer(row, row).sum()
    before, after = int((kernel - 1) / 2), int(np.ceil((kernel - 1) / 2))
    maps = x.reshape(-1, *x.shape[-2:]).astype(np.float64)
    height, width = maps.shape[-2:]
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    out = np.zeros((maps.shape[0], rows, cols))
    for index, one in enumerate(maps):
        padded = np.pad(one, ((before, after), (before, after)), mode=NUMPY_MODES[padding])
        for a in range(kernel):
            for b in range(kernel):
                out[index] += weights[a, b] * padded[a : a + stride * rows : stride, b : b + stride * cols : stride]
    return out.reshape(*x.shape[:-2], rows, cols)


class TestAgainstReference:
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("stride", [1, 2, 3])
    @pytest.mark.parametrize("kernel", range(1, 8))
    def test_every_size_stride_padding(self, rng, kernel, stride, padding, shape):
        x = rng.standard_normal(shape)
        result = blur_pool2d(torch.from_numpy(x), kernel, stride, padding)
        np.testing.assert_allclose(result.numpy(), reference_blur_pool(x, kernel, stride, padding), atol=1e-12)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_other_leading_shapes(self, rng, padding):
        x = rng.standard_normal((2, 3, 2, 7, 5))
        for value in (x, x[0, 0, 0], x[0]):
            result = blur_pool2d(torch.from_numpy(value), 4, 2, padding).numpy()
            np.testing.assert_allclose(result, reference_blur_pool(value, 4, 2, padding), atol=1e-12)

    def test_stride_and_kernel_per_axis(self, rng):
        x = rng.standard_normal((1, 2, 9, 10))
        result = blur_pool2d(torch.from_numpy(x), (3, 1), (2, 1)).numpy()
        # Blur along rows only: the 1-D reference along axis -2 at stride 2, columns untouched.
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="reflect")
        expected = (padded[..., 0:-2:2, :] + 2 * padded[..., 1:-1:2, :] + padded[..., 2::2, :]) / 4
        np.testing.assert_allclose(result, expected, atol=1e-12)

    def test_non_contiguous_input(self, rng):
        x = torch.from_numpy(rng.standard_normal((2, 4, 10, 9)))
        for view in (x.transpose(-1, -2), x.to(memory_format=torch.channels_last), x[..., ::2, :]):
            expected = reference_blur_pool(view.contiguous().numpy(), 3, 2, "reflect")
            np.testing.assert_allclose(blur_pool2d(view, 3, 2).numpy(), expected, atol=1e-12)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_pad2d_matches_numpy_for_any_amount(self, rng, padding):
        # torch refuses reflect padding >= the size; the index fallback must give numpy's answer.
        x = rng.standard_normal((1, 1, 2, 3))
        for pads in [(0, 1, 2, 0), (3, 3, 3, 3), (5, 2, 1, 6)]:
            expected = np.pad(x[0, 0], ((pads[2], pads[3]), (pads[0], pads[1])), mode=NUMPY_MODES[padding])
            np.testing.assert_array_equal(pad2d(torch.from_numpy(x), pads, padding)[0, 0].numpy(), expected)

    def test_single_pixel_reflects_onto_itself(self):
        np.testing.assert_array_equal(
            pad2d(torch.ones(1, 1, 1, 1), (2, 2, 2, 2), "reflect").numpy(), np.ones((1, 1, 5, 5))
        )


class TestKnownAnswers:
    def test_filters_are_pascal_rows(self):
        expected = {1: [1], 2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1], 5: [1, 4, 6, 4, 1], 6: [1, 5, 10, 10, 5, 1]}
        expected[7] = [1, 6, 15, 20, 15, 6, 1]
        for size, row in expected.items():
            row = np.array(row, dtype=np.float64)
            np.testing.assert_array_equal(
                binomial_filter(size, dtype=torch.float64).numpy(), np.outer(row, row) / row.sum() ** 2
            )

    def test_kornia_documented_examples_with_zero_padding(self):
        # kornia.filters.blur_pool2d / max_blur_pool2d docstrings: torch.eye(5)[None, None], kernel 3, stride 2.
        eye = torch.eye(5)[None, None]
        expected = [[0.3125, 0.0625, 0.0], [0.0625, 0.3750, 0.0625], [0.0, 0.0625, 0.3125]]
        torch.testing.assert_close(blur_pool2d(eye, 3, 2, "zeros"), torch.tensor(expected)[None, None])
        torch.testing.assert_close(
            max_blur_pool2d(eye, 3, 2, 2, "zeros"), torch.tensor([[[[0.5625, 0.3125], [0.3125, 0.8750]]]])
        )

    def test_timm_convention_differs_for_even_kernels(self, rng):
        # timm: symmetric padding ((s - 1) + (k - 1)) // 2 per side, reflect.
        x = torch.from_numpy(rng.standard_normal((1, 1, 8, 8)))
        for kernel, same in ((3, True), (5, True), (4, False)):
            pad = ((2 - 1) + (kernel - 1)) // 2
            weight = binomial_filter(kernel, dtype=torch.float64)[None, None]
            timm_like = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), weight, stride=2)
            ours = blur_pool2d(x, kernel, 2)
            assert (timm_like.shape == ours.shape and torch.allclose(timm_like, ours)) == same
        assert timm_like.shape[-1] == ours.shape[-1] + 1  # k = 4: one more row and column

    @pytest.mark.parametrize("kernel", range(1, 8))
    def test_equals_kornia_with_zero_padding(self, rng, kernel):
        """kornia 0.9 pads as Zhang does, (k - 1) // 2 before and k // 2 after: the same output, shape included."""
        kornia = pytest.importorskip("kornia", minversion="0.9")
        x = torch.from_numpy(rng.standard_normal((2, 3, 11, 12)))
        for size in [(11, 12), (8, 8), (9, 7), (5, 6), (3, 3)]:  # odd, even, non-square, smaller than the filter
            maps = x[..., : size[0], : size[1]]
            for stride in (1, 2, 3):
                expected = kornia.filters.blur_pool2d(maps, kernel, stride=stride)
                ours = blur_pool2d(maps, kernel, stride, "zeros")
                assert ours.shape == expected.shape, (size, stride)
                torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(
                    kornia.filters.BlurPool2D(kernel, stride)(maps), ours, rtol=1e-12, atol=1e-12
                )
            for pool in (2, 3):
                expected = kornia.filters.max_blur_pool2d(maps, kernel, stride=2, max_pool_size=pool)
                ours = max_blur_pool2d(maps, kernel, 2, pool, "zeros")
                assert ours.shape == expected.shape, (size, pool)
                torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
                module = MaxBlurPool2d(kernel, 2, pool, "zeros", dtype=torch.float64)
                torch.testing.assert_close(module(maps), expected, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(
                    kornia.filters.MaxBlurPool2D(kernel, 2, pool)(maps), ours, rtol=1e-12, atol=1e-12
                )

    def test_size_one_is_plain_subsampling(self, rng):
        x = torch.from_numpy(rng.standard_normal((2, 3, 7, 8)))
        assert torch.equal(blur_pool2d(x, 1, 3), x[..., ::3, ::3])

    def test_constant_map_stays_constant_except_zero_padding(self):
        x = torch.full((1, 1, 7, 6), 2.5, dtype=torch.float64)
        for padding in ("reflect", "replicate", "circular"):
            assert torch.allclose(blur_pool2d(x, 5, 2, padding), torch.full((1, 1, 4, 3), 2.5, dtype=torch.float64))
        assert blur_pool2d(x, 5, 2, "zeros")[0, 0, 0, 0] < 2.5


class TestMaxBlurPool:
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("window", [1, 2, 3])
    def test_against_reference(self, rng, window, padding):
        x = rng.standard_normal((2, 2, 9, 8))
        rows, cols = x.shape[-2] - window + 1, x.shape[-1] - window + 1
        pooled = np.stack([x[..., i : i + rows, j : j + cols] for i in range(window) for j in range(window)]).max(
            axis=0
        )
        expected = reference_blur_pool(pooled, 4, 2, padding)
        result = max_blur_pool2d(torch.from_numpy(x), 4, 2, window, padding).numpy()
        np.testing.assert_allclose(result, expected, atol=1e-12)
        layer = MaxBlurPool2d(4, 2, window, padding, dtype=torch.float64)
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), expected, atol=1e-12)

    def test_module_applies_its_registered_filter(self, generator):
        """The blur is the layer's buffer, not a filter rebuilt per call: a filter written into the buffer is used."""
        layer = MaxBlurPool2d(3, 2, 2, "zeros")
        assert [name for name, _ in layer.named_buffers()] == ["blur.filter"]
        weights = torch.rand(3, 3, generator=generator, dtype=torch.float64)
        layer.blur.filter.copy_(weights)  # float32 buffer: the filter the layer must apply
        x = torch.rand(2, 3, 9, 10, generator=generator, dtype=torch.float64)
        pooled = F.max_pool2d(x, 2, stride=1)
        expected = F.conv2d(
            F.pad(pooled, (1, 1, 1, 1)), weights.float().double().expand(3, 1, 3, 3), stride=2, groups=3
        )
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(layer(x), max_blur_pool2d(x, 3, 2, 2, "zeros"))

    def test_buffers_created_where_and_as_asked(self, generator):
        layer = MaxBlurPool2d(4, 2, dtype=torch.float64)
        assert layer.blur.filter.dtype == torch.float64
        assert torch.equal(layer.blur.filter, binomial_filter(4, dtype=torch.float64))
        x = torch.rand(1, 2, 9, 9, generator=generator, dtype=torch.float64)
        assert torch.equal(layer(x), max_blur_pool2d(x, 4, 2))
        on_meta = MaxBlurPool2d(4, 2, device="meta")
        assert on_meta.blur.filter.device.type == "meta"
        assert on_meta(torch.empty(2, 3, 9, 8, device="meta")).shape == (2, 3, 4, 4)

    def test_module_equals_function(self, generator):
        x = torch.rand(2, 3, 11, 10, generator=generator)
        torch.testing.assert_close(
            MaxBlurPool2d(3, 2, 2, "circular")(x), max_blur_pool2d(x, 3, 2, 2, "circular"), rtol=0, atol=0
        )

    def test_map_smaller_than_the_window(self):
        with pytest.raises(ShiftlabError) as error:
            max_blur_pool2d(torch.zeros(1, 1, 1, 5), max_pool_size=2)
        assert str(error.value) == "x: map of size 1x5 is smaller than the 2x2 max pool"


class TestModule:
    @pytest.mark.parametrize("padding", PADDINGS)
    def test_module_equals_function(self, generator, padding):
        x = torch.rand(2, 5, 9, 12, generator=generator)
        assert torch.equal(BlurPool2d(4, 2, padding)(x), blur_pool2d(x, 4, 2, padding))

    def test_channels_from_the_input_and_nothing_in_the_state_dict(self, generator):
        layer = BlurPool2d(5, 3)
        for channels in (1, 4, 17):
            assert layer(torch.rand(2, channels, 9, 9, generator=generator)).shape == (2, channels, 3, 3)
        assert layer.state_dict() == {}
        assert "filter" in dict(layer.named_buffers())

    @pytest.mark.parametrize("kernel", range(1, 8))
    def test_per_channel_filter_is_zhangs_layer_down_to_its_state_dict(self, generator, kernel):
        antialiased_cnns = pytest.importorskip("antialiased_cnns")
        reference = antialiased_cnns.BlurPool(6, filt_size=kernel, stride=2)
        layer = BlurPool2d(kernel, 2, channels=6)
        assert {key: value.shape for key, value in layer.state_dict().items()} == {
            key: value.shape for key, value in reference.state_dict().items()
        }
        assert torch.equal(layer.filt, reference.filt)
        x = torch.rand(2, 6, 11, 14, generator=generator)
        assert torch.equal(layer(x), reference(x)) and torch.equal(layer(x), BlurPool2d(kernel, 2)(x))
        assert repr(layer) == f"BlurPool2d(kernel_size={kernel}, stride=2, padding='reflect', channels=6)"

    def test_per_channel_filter_applies_what_was_loaded(self, generator):
        layer = BlurPool2d(3, 2, "zeros", channels=2)
        weights = torch.rand(2, 1, 3, 3, generator=generator)
        layer.load_state_dict({"filt": weights})  # as Zhang's layer would: the buffer is the filter
        x = torch.rand(1, 2, 8, 8, generator=generator)
        expected = F.conv2d(F.pad(x, (1, 1, 1, 1)), weights, stride=2, groups=2)
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-7)
        with pytest.raises(RuntimeError, match="size mismatch for filt"):  # another filter size: refused by shape
            layer.load_state_dict({"filt": torch.rand(2, 1, 4, 4)})

    def test_per_channel_filter_needs_its_channels(self):
        layer = BlurPool2d(3, channels=4)
        for x in (torch.zeros(1, 3, 6, 6), torch.zeros(4, 6, 6)):
            with pytest.raises(ShiftlabError) as error:
                layer(x)
            assert str(error.value) == (
                "x: expected shape (N, 4, H, W): this BlurPool2d keeps one filter per channel, got tensor of shape "
                f"{tuple(x.shape)} and dtype float32"
            )
        with pytest.raises(ShiftlabError) as error:
            BlurPool2d(3, channels=0)
        assert str(error.value) == "channels: must be an integer >= 1, got 0"

    def test_device_and_dtype_like_timm(self, generator):
        """Buffers created where ``device``/``dtype`` say; on ``meta``, materialised by ``to_empty`` and
        ``reset_parameters``, as timm's layers are."""
        layer = BlurPool2d(3, 2, channels=4, device="meta", dtype=torch.float64)
        assert {name: (buffer.device.type, buffer.dtype) for name, buffer in layer.named_buffers()} == {
            "filter": ("meta", torch.float64),
            "filt": ("meta", torch.float64),
        }
        assert layer(torch.empty(1, 4, 7, 7, device="meta", dtype=torch.float64)).shape == (1, 4, 4, 4)
        layer.to_empty(device="cpu")
        layer.reset_parameters()
        fresh = BlurPool2d(3, 2, channels=4, dtype=torch.float64)
        assert torch.equal(layer.filter, fresh.filter) and torch.equal(layer.filt, fresh.filt)
        assert torch.equal(
            fresh.filt[2, 0] * 16, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64)
        )
        x = torch.rand(1, 4, 7, 7, generator=generator, dtype=torch.float64)
        assert torch.equal(layer(x), blur_pool2d(x, 3, 2))

    def test_follows_dtype(self, generator):
        layer = BlurPool2d(3, 2).double()
        assert layer.filter.dtype == torch.float64
        x = torch.rand(1, 2, 6, 6, generator=generator)
        assert layer(x).dtype == torch.float32  # the filter is cast to the input

    def test_repr(self):
        assert (
            repr(BlurPool2d((3, 1), (2, 1), "zeros"))
            == "BlurPool2d(kernel_size=(3, 1), stride=(2, 1), padding='zeros')"
        )
        assert repr(BlurPool2d()) == "BlurPool2d(kernel_size=4, stride=2, padding='reflect')"


class TestGradientsDevicesDtypes:
    @pytest.mark.parametrize("padding", PADDINGS)
    @pytest.mark.parametrize("kernel", [3, 4])
    def test_gradcheck(self, generator, kernel, padding):
        x = torch.rand(1, 2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: blur_pool2d(t, kernel, 2, padding), (x,))

    def test_gradcheck_max_blur(self, generator):
        x = torch.rand(1, 1, 6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: max_blur_pool2d(t, 3, 2), (x,))

    def test_float64_kept(self, rng):
        x = rng.standard_normal((1, 2, 7, 7))
        result = BlurPool2d(4, 2)(torch.from_numpy(x))
        assert result.dtype == torch.float64
        np.testing.assert_allclose(result.numpy(), reference_blur_pool(x, 4, 2, "reflect"), atol=1e-13)

    @pytest.mark.parametrize("padding", PADDINGS)
    def test_bfloat16_kept(self, generator, padding):
        x = torch.rand(2, 3, 10, 9, generator=generator)
        result = BlurPool2d(4, 2, padding)(x.bfloat16())
        assert result.dtype == torch.bfloat16
        torch.testing.assert_close(result.float(), blur_pool2d(x, 4, 2, padding), atol=2e-2, rtol=2e-2)

    @requires_cuda
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_cuda_matches_cpu(self, generator, dtype):
        x = torch.rand(2, 3, 17, 12, generator=generator)
        layer = BlurPool2d(4, 2).cuda()
        result = layer(x.to("cuda", dtype))
        assert result.device.type == "cuda" and result.dtype == dtype
        torch.testing.assert_close(result.float().cpu(), blur_pool2d(x, 4, 2), atol=1e-2, rtol=1e-2)
        assert max_blur_pool2d(x.cuda(), 3, 2, 2, "circular").device.type == "cuda"
        built_there = MaxBlurPool2d(3, 2, 2, "circular", device="cuda", dtype=dtype)
        assert built_there.blur.filter.device.type == "cuda" and built_there.blur.filter.dtype == dtype
        torch.testing.assert_close(
            built_there(x.to("cuda", dtype)).float().cpu(),
            max_blur_pool2d(x, 3, 2, 2, "circular"),
            atol=1e-2,
            rtol=1e-2,
        )


class TestDeprecatedZero:
    """``"zero"``, the layers' former name for torch's ``"zeros"``, still works, with a warning at the caller."""

    MESSAGE = r"^padding: 'zero' is deprecated, use 'zeros' \(torch's name\)$"

    def test_functions_and_modules(self, generator):
        x = torch.rand(2, 3, 9, 8, generator=generator)
        calls = [
            lambda padding: blur_pool2d(x, 3, 2, padding),
            lambda padding: max_blur_pool2d(x, 3, 2, 2, padding),
            lambda padding: BlurPool2d(3, 2, padding)(x),
            lambda padding: MaxBlurPool2d(3, 2, 2, padding)(x),
        ]
        for call in calls:
            with pytest.warns(DeprecationWarning, match=self.MESSAGE) as record:
                old = call("zero")
            assert len(record) == 1 and torch.equal(old, call("zeros"))
        with pytest.warns(DeprecationWarning, match=self.MESSAGE):
            layer = BlurPool2d(3, 2, "zero")
        assert layer.padding == "zeros" and "padding='zeros'" in repr(layer)  # stored, and shown, as torch names it

    def test_warning_points_at_the_caller(self):
        x = torch.zeros(1, 1, 4, 4)
        calls = [
            lambda: blur_pool2d(x, padding="zero"),
            lambda: max_blur_pool2d(x, padding="zero"),
            lambda: BlurPool2d(padding="zero"),
            lambda: MaxBlurPool2d(padding="zero"),
        ]
        for call in calls:
            with pytest.warns(DeprecationWarning) as record:
                call()
            assert len(record) == 1 and record[0].filename == __file__

    def test_other_layers_that_take_a_padding(self, generator):
        x = torch.rand(2, 3, 8, 8, generator=generator)
        with pytest.warns(DeprecationWarning, match=self.MESSAGE):
            pool = APSPool2d(2, kernel_size=3, padding="zero", channels=3)
        assert pool.blur_padding == "zeros"
        assert torch.equal(pool(x), APSPool2d(2, kernel_size=3, padding="zeros", channels=3)(x))
        with pytest.warns(DeprecationWarning, match=self.MESSAGE):
            layer = BlurConv2d(3, 4, 3, stride=2, padding=1, blur_kernel_size=3, blur_padding="zero")
        assert layer.blur.padding == "zeros"

    def test_unknown_mode_is_not_padded_by_guess(self):
        with pytest.raises(InternalError, match=r"pad2d: unknown padding mode 'zero'"):
            pad2d(torch.zeros(1, 1, 4, 4), (1, 1, 1, 1), "zero")


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"kernel_size": 0}, "kernel_size: must be an integer >= 1, got 0"),
            ({"kernel_size": 8}, "kernel_size: binomial filters go from 1 to 7, got 8"),
            ({"kernel_size": 2.5}, "kernel_size: must be an integer, got 2.5"),
            ({"stride": 0}, "stride: must be an integer >= 1, got 0"),
            ({"stride": (2, 2, 2)}, "stride: must be an integer or a pair of integers, got (2, 2, 2)"),
            ({"padding": "wrap"}, "padding: must be one of zeros, reflect, replicate, circular, got 'wrap'"),
        ],
    )
    def test_arguments(self, kwargs, message):
        for call in (lambda: blur_pool2d(torch.zeros(1, 1, 4, 4), **kwargs), lambda: BlurPool2d(**kwargs)):
            with pytest.raises(ShiftlabError) as error:
                call()
            assert str(error.value) == message

    @pytest.mark.parametrize(
        ("x", "message"),
        [
            (
                np.zeros((4, 4)),
                "x: expected a floating-point tensor of shape (..., H, W), "
                "got numpy array of shape (4, 4) and dtype float64",
            ),
            (
                torch.zeros(4, 4, dtype=torch.int64),
                "x: expected a floating-point tensor of shape (..., H, W), got tensor of shape (4, 4) and dtype int64",
            ),
            (torch.zeros(4), "x: expected shape (..., H, W), got tensor of shape (4,) and dtype float32"),
            (torch.zeros(2, 0, 4), "x: is empty: tensor of shape (2, 0, 4) and dtype float32"),
        ],
        ids=["numpy", "integer", "1-d", "empty"],
    )
    def test_input(self, x, message):
        for call in (lambda: blur_pool2d(x), lambda: BlurPool2d()(x), lambda: max_blur_pool2d(x)):
            with pytest.raises(ShiftlabError) as error:
                call()
            assert str(error.value) == message
