"""Tests for shiftlab.images: load_image on every format and array kind, its errors, and the bundled samples.

Every image file is made with Pillow (or, for the decompression bombs, by hand)
in ``tmp_path``. Expected values come from the pixel data written, scaled by
hand (``/ 255``, ``/ 65535``), with BT.601 luma ``0.299 R + 0.587 G + 0.114 B``
computed in float64.
"""

from __future__ import annotations

import struct
import zlib
from importlib import resources

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, features

from shiftlab.errors import ShiftlabError
from shiftlab.images import (
    MAX_PIXELS,
    SAMPLES,
    SCENE_CANVAS,
    SCENE_LEFT,
    SCENE_OBJECT,
    SCENE_SHIFT,
    SCENE_TOP,
    load_image,
    sample_image,
    scene_pair,
    single_pixel_image,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_webp = pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")

SAMPLE_SHAPES = {
    "pixel_a": (10, 10),
    "pixel_b": (10, 10),
    "chelsea": (300, 451),
    "chelsea_mirror": (300, 451),
    "chelsea_left": (256, 640),
    "chelsea_right": (256, 640),
    "coffee": (400, 600),
    "astronaut": (512, 512),
}


# --------------------------------------------------------------------------- helpers


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of channels-last RGB values in [0, 1], in float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def chw(rgb: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(rgb, dtype=np.float64), -1, 0)


def random_rgb(rng: np.random.Generator, height: int = 12, width: int = 17) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def random_gray(rng: np.random.Generator, height: int = 12, width: int = 17) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width), dtype=np.uint8)


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def handmade_png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG whose header claims ``width x height``; ``rows`` is the raw scanline data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(rows if rows is not None else b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def assert_one_line_error(info, subject: str, problem: str | None = None) -> str:
    """The error is a ShiftlabError and a ValueError, on one line, starting with ``subject: ``."""
    error = info.value
    assert isinstance(error, ShiftlabError) and isinstance(error, ValueError)
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(subject + ": "), message
    if problem is not None:
        assert message == f"{subject}: {problem}"
    return message


def assert_new_float32(result: np.ndarray, *sources) -> None:
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float32
    assert result.flags.c_contiguous and result.flags.writeable
    for source in sources:
        if isinstance(source, torch.Tensor):
            source = source.detach().cpu().numpy()
        if isinstance(source, np.ndarray):
            assert not np.shares_memory(result, source)


# --------------------------------------------------------------------------- files


class TestLoadPng:
    def test_gray_8bit(self, rng, tmp_path):
        gray = random_gray(rng)
        path = save(Image.fromarray(gray), tmp_path / "gray.png")
        result = load_image(path)
        assert result.shape == gray.shape
        assert_new_float32(result)
        np.testing.assert_allclose(result, gray / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_allclose(load_image(str(path), grayscale=False), np.stack([gray / 255.0] * 3), atol=1e-7)

    def test_gray_known_values(self, tmp_path):
        gray = np.array([[0, 51, 255]], dtype=np.uint8)
        path = save(Image.fromarray(gray), tmp_path / "known.png")
        np.testing.assert_array_equal(load_image(path), np.array([[0.0, 0.2, 1.0]], dtype=np.float32))

    def test_rgb(self, rng, tmp_path):
        rgb = random_rgb(rng)
        path = save(Image.fromarray(rgb), tmp_path / "rgb.png")
        np.testing.assert_allclose(load_image(path), luma(rgb / 255.0), rtol=0, atol=1e-6)
        colour = load_image(path, grayscale=False)
        assert colour.shape == (3, 12, 17)
        assert_new_float32(colour)
        np.testing.assert_allclose(colour, chw(rgb / 255.0), rtol=0, atol=1e-7)

    def test_rgba_is_composited_onto_black(self, rng, tmp_path):
        rgba = rng.integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
        rgba[0, 0, 3] = 0  # fully transparent: black
        rgba[0, 1, 3] = 255  # opaque: the colour itself
        path = save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
        premultiplied = rgba[..., :3] / 255.0 * (rgba[..., 3:] / 255.0)
        colour = load_image(path, grayscale=False)
        np.testing.assert_allclose(colour, chw(premultiplied), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(colour[:, 0, 0], [0, 0, 0])
        np.testing.assert_allclose(colour[:, 0, 1], rgba[0, 1, :3] / 255.0, atol=1e-7)
        np.testing.assert_allclose(load_image(path), luma(premultiplied), rtol=0, atol=1e-6)

    def test_la(self, rng, tmp_path):
        gray = random_gray(rng)
        alpha = random_gray(rng)
        path = save(Image.fromarray(np.stack([gray, alpha], -1), mode="LA"), tmp_path / "la.png")
        expected = gray / 255.0 * alpha / 255.0
        np.testing.assert_allclose(load_image(path), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(load_image(path, grayscale=False), np.stack([expected] * 3), rtol=0, atol=1e-6)

    @staticmethod
    def palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
        palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]], dtype=np.uint8)
        indices = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 1, 4, 4, 0]], dtype=np.uint8)
        image = Image.fromarray(indices, mode="P")
        image.putpalette(palette.ravel().tolist())
        return image, palette, indices

    def test_palette(self, tmp_path):
        image, palette, indices = self.palette_image()
        path = save(image, tmp_path / "palette.png")
        assert Image.open(path).mode == "P"
        rgb = palette[indices] / 255.0
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(rgb), atol=1e-7)
        np.testing.assert_allclose(load_image(path), luma(rgb), atol=1e-6)
        # Pure red, green and blue give the luma weights themselves.
        np.testing.assert_allclose(load_image(path)[0, :4], [0.299, 0.587, 0.114, 1.0], atol=1e-6)

    def test_palette_with_one_transparent_colour(self, tmp_path):
        image, palette, indices = self.palette_image()
        path = save(image, tmp_path / "palette_t.png", transparency=1)
        rgb = palette[indices] / 255.0
        rgb[indices == 1] = 0.0  # index 1 is transparent: black
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(rgb), atol=1e-7)
        np.testing.assert_allclose(load_image(path), luma(rgb), atol=1e-6)

    def test_palette_with_alpha_per_colour(self, tmp_path):
        image, palette, indices = self.palette_image()
        alphas = np.array([255, 128, 0, 64, 200], dtype=np.uint8)
        path = save(image, tmp_path / "palette_a.png", transparency=bytes(alphas.tolist()))
        rgb = palette[indices] / 255.0 * (alphas[indices] / 255.0)[..., None]
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(rgb), atol=1e-6)

    def test_one_bit(self, tmp_path):
        bits = np.array([[0, 1, 1, 0, 1, 0, 0, 0, 1], [1, 0, 0, 1, 1, 1, 0, 1, 0]], dtype=bool)
        path = save(Image.fromarray(bits), tmp_path / "bits.png")
        assert Image.open(path).mode == "1"
        result = load_image(path)
        assert_new_float32(result)
        np.testing.assert_array_equal(result, bits.astype(np.float32))
        np.testing.assert_array_equal(load_image(path, grayscale=False), np.stack([bits] * 3).astype(np.float32))

    def test_gray_16bit_scaling(self, tmp_path):
        values = np.array([[0, 1, 255, 256], [257, 32768, 65534, 65535]], dtype=np.uint16)
        path = save(Image.fromarray(values), tmp_path / "gray16.png")
        assert Image.open(path).mode.startswith("I")
        result = load_image(path)
        assert_new_float32(result)
        np.testing.assert_allclose(result, values / 65535.0, rtol=1e-7, atol=0)
        assert result[1, 3] == 1.0 and result[0, 0] == 0.0
        assert result[0, 1] == np.float32(1 / 65535)
        assert result[0, 2] != np.float32(1 / 255)  # 16-bit 255 is not 8-bit 255

    def test_gray_16bit_random(self, rng, tmp_path):
        values = rng.integers(0, 65536, size=(13, 7), dtype=np.uint16)
        path = save(Image.fromarray(values), tmp_path / "noise16.png")
        np.testing.assert_allclose(load_image(path), values / 65535.0, rtol=1e-7, atol=0)

    def test_exif_orientation_is_applied(self, rng, tmp_path):
        gray = random_gray(rng, 4, 6)
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        path = save(Image.fromarray(gray), tmp_path / "rotated.png", exif=exif)
        result = load_image(path)
        assert result.shape == (6, 4)
        np.testing.assert_allclose(result, np.rot90(gray, k=-1) / 255.0, atol=1e-7)

    def test_path_as_string_and_path(self, rng, tmp_path):
        gray = random_gray(rng)
        path = save(Image.fromarray(gray), tmp_path / "both.png")
        np.testing.assert_array_equal(load_image(str(path)), load_image(path))

    def test_handmade_png_helper(self, tmp_path):
        # Validates the hand-written PNG used for the bomb tests: a real 3x2 image.
        rows = b"\x00\x00\x80\xff" + b"\x00\x01\x02\x03"
        path = tmp_path / "handmade.png"
        path.write_bytes(handmade_png(3, 2, rows))
        np.testing.assert_allclose(load_image(path), np.array([[0, 128, 255], [1, 2, 3]]) / 255.0, atol=1e-7)


class TestLoadOtherFormats:
    def test_jpeg_gray(self, tmp_path):
        # A smooth ramp survives JPEG almost unchanged.
        ramp = np.tile(np.linspace(0, 255, 32), (24, 1)).astype(np.uint8)
        path = save(Image.fromarray(ramp), tmp_path / "ramp.jpg", quality=95)
        result = load_image(path)
        assert_new_float32(result)
        assert result.shape == (24, 32)
        assert np.abs(result - ramp / 255.0).mean() < 0.01
        decoded = np.asarray(Image.open(path), dtype=np.float64) / 255.0
        np.testing.assert_allclose(result, decoded, atol=1e-7)

    def test_jpeg_rgb(self, rng, tmp_path):
        rgb = random_rgb(rng, 16, 16)
        path = save(Image.fromarray(rgb), tmp_path / "rgb.jpeg", quality=90)
        decoded = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(decoded), atol=1e-7)
        np.testing.assert_allclose(load_image(path), luma(decoded), atol=1e-6)
        # A second decoder agrees to within a grey level or two.
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert np.abs(load_image(path, grayscale=False) - chw(bgr[..., ::-1] / 255.0)).max() <= 3 / 255

    @pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_deflate"])
    def test_tiff_8bit(self, rng, tmp_path, compression):
        rgb = random_rgb(rng)
        options = {"compression": compression} if compression else {}
        path = save(Image.fromarray(rgb), tmp_path / "rgb.tif", **options)
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(rgb / 255.0), atol=1e-7)
        gray = random_gray(rng)
        path = save(Image.fromarray(gray), tmp_path / "gray.tiff", **options)
        np.testing.assert_allclose(load_image(path), gray / 255.0, atol=1e-7)

    @pytest.mark.parametrize("mode", ["I;16", "I;16B"])
    def test_tiff_16bit(self, rng, tmp_path, mode):
        values = rng.integers(0, 65536, size=(5, 9), dtype=np.uint16)
        values[0, :3] = [0, 1, 65535]
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (9, 5), values.astype(dtype).tobytes())
        path = save(image, tmp_path / "gray16.tif")
        result = load_image(path)
        np.testing.assert_allclose(result, values / 65535.0, rtol=1e-7, atol=0)
        assert result[0, 2] == 1.0

    def test_tiff_32bit_integer_in_16bit_range(self, tmp_path):
        values = np.array([[0, 1000, 65535]], dtype=np.int32)
        path = save(Image.fromarray(values, mode="I"), tmp_path / "int32.tif")
        assert Image.open(path).mode == "I"
        np.testing.assert_allclose(load_image(path), values / 65535.0, rtol=1e-7)

    def test_tiff_32bit_integer_out_of_range(self, tmp_path):
        path = save(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I"), tmp_path / "big.tif")
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        assert_one_line_error(
            info,
            f"image '{path}'",
            "holds 32-bit integers outside 0..65535; only 8- and 16-bit integer images are supported",
        )

    def test_tiff_float(self, rng, tmp_path):
        values = rng.random((6, 8)).astype(np.float32)
        values[0, :2] = [0.0, 1.0]
        path = save(Image.fromarray(values, mode="F"), tmp_path / "float.tif")
        assert Image.open(path).mode == "F"
        result = load_image(path)
        assert_new_float32(result)
        np.testing.assert_array_equal(result, values)
        np.testing.assert_array_equal(load_image(path, grayscale=False), np.stack([values] * 3))

    @pytest.mark.parametrize(
        ("bad", "problem"), [(1.5, "has values in [0, 1.5], outside [0, 1]"), (np.nan, "holds NaN or Inf values")]
    )
    def test_tiff_float_out_of_range(self, tmp_path, bad, problem):
        values = np.array([[0.0, 0.5, bad]], dtype=np.float32)
        path = save(Image.fromarray(values, mode="F"), tmp_path / "bad_float.tif")
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert problem in message

    @pytest.mark.parametrize("mode", ["RGB", "L"])
    def test_bmp(self, rng, tmp_path, mode):
        data = random_rgb(rng) if mode == "RGB" else random_gray(rng)
        path = save(Image.fromarray(data), tmp_path / "image.bmp")
        expected = luma(data / 255.0) if mode == "RGB" else data / 255.0
        np.testing.assert_allclose(load_image(path), expected, atol=1e-6)

    def test_gif_first_frame(self, tmp_path):
        first = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (5, 1))
        second = np.full((5, 8), 200, dtype=np.uint8)
        frames = [Image.fromarray(first), Image.fromarray(second)]
        path = tmp_path / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
        assert Image.open(path).n_frames == 2
        result = load_image(path)
        np.testing.assert_allclose(result, first / 255.0, atol=1e-6)
        np.testing.assert_allclose(load_image(path, grayscale=False), np.stack([first / 255.0] * 3), atol=1e-6)

    def test_gif_with_transparency(self, tmp_path):
        indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
        image = Image.fromarray(indices, mode="P")
        image.putpalette([200, 100, 50, 255, 255, 255])
        path = save(image, tmp_path / "transparent.gif", transparency=1)
        expected = np.zeros((3, 2, 2))
        expected[:, indices == 0] = np.array([[200], [100], [50]]) / 255.0
        np.testing.assert_allclose(load_image(path, grayscale=False), expected, atol=1e-7)

    @requires_webp
    def test_webp_lossless(self, rng, tmp_path):
        rgb = random_rgb(rng)
        path = save(Image.fromarray(rgb), tmp_path / "image.webp", lossless=True)
        np.testing.assert_allclose(load_image(path, grayscale=False), chw(rgb / 255.0), atol=1e-7)

    def test_file_with_a_sample_name_wins(self, rng, tmp_path, monkeypatch):
        gray = random_gray(rng, 3, 4)
        monkeypatch.chdir(tmp_path)
        save(Image.fromarray(gray), tmp_path / "chelsea", format="PNG")
        np.testing.assert_allclose(load_image("chelsea"), gray / 255.0, atol=1e-7)


# --------------------------------------------------------------------------- grayscale convention


class TestGrayscaleConvention:
    @pytest.mark.parametrize(
        ("colour", "expected"),
        [((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114), ((255, 255, 255), 1.0), ((0, 0, 0), 0.0)],
    )
    def test_primaries(self, colour, expected):
        array = np.array([[colour]], dtype=np.uint8)
        assert load_image(array)[0, 0] == pytest.approx(expected, abs=1e-6)

    def test_luma_in_float_not_pillows_rounded_l(self, rng, tmp_path):
        rgb = random_rgb(rng, 32, 32)
        path = save(Image.fromarray(rgb), tmp_path / "rgb.png")
        result = load_image(path)
        np.testing.assert_allclose(result, luma(rgb / 255.0), atol=1e-6)
        pillow_l = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        assert np.abs(result - pillow_l).max() > 1e-3  # Pillow rounds to 8 bits

    def test_same_convention_for_arrays_tensors_and_pil(self, rng):
        rgb = random_rgb(rng)
        expected = luma(rgb / 255.0)
        np.testing.assert_allclose(load_image(rgb), expected, atol=1e-6)
        np.testing.assert_allclose(load_image(Image.fromarray(rgb)), expected, atol=1e-6)
        np.testing.assert_allclose(load_image(torch.from_numpy(rgb).permute(2, 0, 1)), expected, atol=1e-6)
        np.testing.assert_allclose(load_image(rgb / 255.0), expected, atol=1e-6)


# --------------------------------------------------------------------------- arrays, tensors, PIL images


class TestLoadArrays:
    def test_uint8_2d(self):
        result = load_image(np.array([[0, 255]], dtype=np.uint8))
        np.testing.assert_array_equal(result, np.array([[0.0, 1.0]], dtype=np.float32))
        assert_new_float32(result)

    def test_uint16_2d(self):
        values = np.array([[0, 1, 65535]], dtype=np.uint16)
        np.testing.assert_allclose(load_image(values), values / 65535.0, rtol=1e-7)

    def test_big_endian_uint16(self):
        values = np.array([[0, 1, 256, 65535]], dtype=np.uint16)
        np.testing.assert_allclose(load_image(values.astype(">u2")), values / 65535.0, rtol=1e-7)

    def test_bool(self):
        mask = np.array([[True, False], [False, True]])
        result = load_image(mask)
        np.testing.assert_array_equal(result, mask.astype(np.float32))
        assert_new_float32(result, mask)

    @pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
    def test_float(self, rng, dtype):
        values = rng.random((5, 6)).astype(dtype)
        result = load_image(values)
        assert_new_float32(result, values)
        np.testing.assert_array_equal(result, values.astype(np.float32))

    @pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
    def test_other_integers_in_range(self, dtype):
        np.testing.assert_array_equal(load_image(np.array([[0, 1]], dtype=dtype)), [[0.0, 1.0]])

    def test_hwc_rgb(self, rng):
        rgb = random_rgb(rng)
        result = load_image(rgb, grayscale=False)
        assert result.shape == (3, 12, 17)
        np.testing.assert_allclose(result, chw(rgb / 255.0), atol=1e-7)

    def test_hwc_rgba(self, rng):
        rgba = rng.integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
        expected = rgba[..., :3] / 255.0 * rgba[..., 3:] / 255.0
        np.testing.assert_allclose(load_image(rgba, grayscale=False), chw(expected), atol=1e-6)
        np.testing.assert_allclose(load_image(rgba), luma(expected), atol=1e-6)

    def test_chw_rgb_numpy(self, rng):
        rgb = random_rgb(rng)
        result = load_image(np.ascontiguousarray(np.moveaxis(rgb, -1, 0)), grayscale=False)
        np.testing.assert_allclose(result, chw(rgb / 255.0), atol=1e-7)

    @pytest.mark.parametrize("shape", [(1, 5, 6), (5, 6, 1)])
    def test_single_channel(self, rng, shape):
        values = rng.random(shape)
        result = load_image(values)
        assert result.shape == (5, 6)
        np.testing.assert_allclose(result, values.reshape(5, 6), atol=1e-7)
        assert load_image(values, grayscale=False).shape == (3, 5, 6)

    def test_ambiguous_numpy_is_channels_last(self, rng):
        values = rng.random((3, 5, 4))  # both axes could be channels: numpy arrays are (H, W, C)
        expected = values[..., :3] * values[..., 3:]
        np.testing.assert_allclose(load_image(values, grayscale=False), chw(expected), atol=1e-6)

    def test_negative_stride_views(self, rng):
        rgb = random_rgb(rng)
        view = rgb[::-1, ::-2]
        np.testing.assert_allclose(load_image(view, grayscale=False), chw(view / 255.0), atol=1e-7)
        gray = rng.random((5, 7))
        np.testing.assert_array_equal(load_image(gray[:, ::-1]), gray[:, ::-1].astype(np.float32))

    def test_read_only_input(self, rng):
        values = rng.random((4, 4)).astype(np.float32)
        values.flags.writeable = False
        result = load_image(values)
        result[0, 0] = 5.0
        assert values[0, 0] != 5.0

    @pytest.mark.parametrize(
        "make",
        [
            lambda rng: rng.random((5, 6)).astype(np.float32),
            lambda rng: rng.random((5, 6, 1)).astype(np.float32),
            lambda rng: rng.random((5, 6, 3)).astype(np.float32),
            lambda rng: rng.random((3, 5, 6)).astype(np.float32),
            lambda rng: random_gray(rng),
        ],
        ids=["hw", "hw1", "hw3", "3hw", "uint8"],
    )
    @pytest.mark.parametrize("grayscale", [True, False])
    def test_mutating_the_result_leaves_the_input(self, rng, make, grayscale):
        values = make(rng)
        copy = values.copy()
        result = load_image(values, grayscale=grayscale)
        assert_new_float32(result, values)
        result += 0.25
        np.testing.assert_array_equal(values, copy)


class TestLoadTensors:
    @pytest.mark.parametrize("channels", [1, 3, 4])
    def test_chw(self, generator, channels):
        tensor = torch.rand(channels, 5, 7, generator=generator)
        result = load_image(tensor, grayscale=False)
        values = tensor.permute(1, 2, 0).double().numpy()
        if channels == 1:
            expected = np.repeat(values, 3, axis=-1)
        elif channels == 4:
            expected = values[..., :3] * values[..., 3:]
        else:
            expected = values
        np.testing.assert_allclose(result, chw(expected), atol=1e-6)
        np.testing.assert_allclose(load_image(tensor), luma(expected), atol=1e-6)

    def test_ambiguous_tensor_is_channels_first(self, generator):
        tensor = torch.rand(3, 5, 3, generator=generator, dtype=torch.float64)
        np.testing.assert_allclose(load_image(tensor, grayscale=False), tensor.numpy(), atol=1e-7)

    def test_hw_and_hwc(self, generator):
        tensor = torch.rand(6, 5, generator=generator)
        np.testing.assert_array_equal(load_image(tensor), tensor.numpy())
        hwc = torch.rand(6, 5, 3, generator=generator)
        np.testing.assert_allclose(load_image(hwc, grayscale=False), chw(hwc.numpy()), atol=1e-7)

    def test_uint8_and_bool_tensors(self):
        np.testing.assert_allclose(
            load_image(torch.tensor([[0, 51, 255]], dtype=torch.uint8)), [[0.0, 0.2, 1.0]], atol=1e-7
        )
        np.testing.assert_array_equal(load_image(torch.tensor([[True, False]])), [[1.0, 0.0]])

    def test_requires_grad_and_non_contiguous(self, generator):
        tensor = torch.rand(3, 6, 8, generator=generator, requires_grad=True)
        view = tensor[:, ::2, 1:].transpose(1, 2)
        result = load_image(view, grayscale=False)
        np.testing.assert_allclose(result, view.detach().numpy(), atol=1e-7)

    def test_result_does_not_alias_tensor(self, generator):
        tensor = torch.rand(6, 5, generator=generator)
        copy = tensor.clone()
        result = load_image(tensor)
        assert_new_float32(result, tensor)
        result[...] = 0
        torch.testing.assert_close(tensor, copy, rtol=0, atol=0)

    @requires_cuda
    def test_cuda_tensor(self, generator):
        tensor = torch.rand(3, 6, 8, generator=generator)
        np.testing.assert_array_equal(load_image(tensor.cuda(), grayscale=False), tensor.numpy())


class TestLoadPil:
    def test_modes(self, rng):
        rgb = random_rgb(rng)
        np.testing.assert_allclose(load_image(Image.fromarray(rgb), grayscale=False), chw(rgb / 255.0), atol=1e-7)
        gray = random_gray(rng)
        np.testing.assert_allclose(load_image(Image.fromarray(gray)), gray / 255.0, atol=1e-7)
        values16 = np.array([[0, 65535]], dtype=np.uint16)
        np.testing.assert_allclose(load_image(Image.fromarray(values16)), [[0.0, 1.0]], atol=1e-7)
        floats = rng.random((3, 3)).astype(np.float32)
        np.testing.assert_array_equal(load_image(Image.fromarray(floats, mode="F")), floats)

    def test_pil_image_is_left_unchanged(self, rng):
        rgb = random_rgb(rng)
        image = Image.fromarray(rgb)
        result = load_image(image)
        result[...] = 0
        assert image.mode == "RGB" and image.size == (17, 12)
        np.testing.assert_array_equal(np.asarray(image), rgb)

    def test_cmyk_is_converted(self):
        image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))  # no ink: white
        np.testing.assert_allclose(load_image(image), [[1.0, 1.0]], atol=1e-6)

    def test_empty_pil_image(self):
        with pytest.raises(ShiftlabError) as info:
            load_image(Image.new("L", (0, 5)))
        assert_one_line_error(info, "image (PIL)", "is empty (0x5 pixels)")

    def test_max_pixels(self):
        with pytest.raises(ShiftlabError) as info:
            load_image(Image.new("L", (10, 10)), max_pixels=99)
        assert_one_line_error(
            info,
            "image (PIL)",
            "has 100 pixels, more than the limit of 99 (a decompression bomb?); pass max_pixels= to allow it",
        )
        assert load_image(Image.new("L", (10, 10)), max_pixels=100).shape == (10, 10)


# --------------------------------------------------------------------------- errors


class TestFileErrors:
    def test_missing_path(self, tmp_path):
        path = tmp_path / "missing.png"
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "no such file" in message
        for name in SAMPLES:
            assert name in message

    def test_missing_relative_name(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ShiftlabError) as info:
            load_image("kitten")
        assert_one_line_error(info, "image 'kitten'", f"no such file (and not a bundled sample: {', '.join(SAMPLES)})")

    def test_directory(self, tmp_path):
        with pytest.raises(ShiftlabError) as info:
            load_image(tmp_path)
        assert_one_line_error(info, f"image '{tmp_path}'", "is a directory, not an image file")

    def test_text_file_named_png(self, tmp_path):
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        assert_one_line_error(info, f"image '{path}'", "is not an image Pillow can read (unknown or corrupt format)")

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        assert_one_line_error(info, f"image '{path}'", "is an empty file (0 bytes)")

    @pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
    def test_truncated_png(self, rng, tmp_path, fraction):
        source = save(Image.fromarray(random_rgb(rng, 64, 64)), tmp_path / "noise.png")  # noise does not compress
        data = source.read_bytes()
        path = tmp_path / "cut.png"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "is truncated or corrupt (" in message

    @pytest.mark.parametrize("fraction", [0.5, 0.8])
    def test_truncated_jpeg(self, rng, tmp_path, fraction):
        source = save(Image.fromarray(random_rgb(rng, 64, 64)), tmp_path / "noise.jpg", quality=95)
        data = source.read_bytes()
        path = tmp_path / "cut.jpg"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "is truncated or corrupt (" in message

    def test_png_cut_inside_its_header(self, rng, tmp_path):
        source = save(Image.fromarray(random_gray(rng)), tmp_path / "small.png")
        path = tmp_path / "header.png"
        path.write_bytes(source.read_bytes()[:20])
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "truncated or corrupt" in message or "not an image Pillow can read" in message

    def test_png_with_a_bad_checksum(self, tmp_path):
        data = bytearray(handmade_png(3, 2, b"\x00\x00\x80\xff\x00\x01\x02\x03"))
        data[29] ^= 0xFF  # a byte of the IHDR checksum
        path = tmp_path / "crc.png"
        path.write_bytes(bytes(data))
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "truncated or corrupt" in message or "not an image Pillow can read" in message

    def test_decompression_bomb(self, tmp_path):
        path = tmp_path / "bomb.png"
        path.write_bytes(handmade_png(100_000, 100_000))
        assert path.stat().st_size < 200
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "too many pixels" in message and "decompression bomb" in message

    def test_bomb_between_the_limits(self, tmp_path):
        # 9000 x 9000 = 81 megapixels: above shiftlab's 64 MP limit, below Pillow's own.
        path = tmp_path / "big.png"
        path.write_bytes(handmade_png(9000, 9000))
        with pytest.raises(ShiftlabError) as info:
            load_image(path)
        assert_one_line_error(
            info,
            f"image '{path}'",
            f"has 81,000,000 pixels, more than the limit of {MAX_PIXELS:,} (a decompression bomb?); pass max_pixels= "
            "to allow it",
        )

    def test_max_pixels_above_pillows_limit_is_honoured(self, tmp_path):
        # 10000 x 10000 = 100 MP, more than Pillow's default 89 MP warning limit. With
        # max_pixels raised, the size is allowed: the file is then refused only because its
        # pixel data is missing.
        path = tmp_path / "large.png"
        path.write_bytes(handmade_png(10_000, 10_000))
        with pytest.raises(ShiftlabError) as info:
            load_image(path, max_pixels=10**8)
        message = assert_one_line_error(info, f"image '{path}'")
        assert "too many pixels" not in message and "is truncated or corrupt" in message

    def test_max_pixels_with_a_real_image(self, rng, tmp_path):
        path = save(Image.fromarray(random_rgb(rng, 20, 30)), tmp_path / "small.png")
        with pytest.raises(ShiftlabError) as info:
            load_image(path, max_pixels=599)
        assert_one_line_error(
            info,
            f"image '{path}'",
            "has 600 pixels, more than the limit of 599 (a decompression bomb?); pass max_pixels= to allow it",
        )
        assert load_image(path, max_pixels=600).shape == (20, 30)

    def test_max_pixels_with_arrays(self):
        with pytest.raises(ShiftlabError) as info:
            load_image(np.zeros((20, 30, 3), dtype=np.uint8), max_pixels=100)
        assert_one_line_error(
            info,
            "image (numpy array of shape (20, 30, 3) and dtype uint8)",
            "has 600 pixels, more than the limit of 100 (a decompression bomb?); pass max_pixels= to allow it",
        )
        with pytest.raises(ShiftlabError, match="more than the limit of 100"):
            load_image(torch.zeros(3, 20, 30), max_pixels=100)


ARRAY_ERRORS = [
    (np.zeros((0, 5), dtype=np.float32), "is empty (0 pixels)"),
    (np.zeros((5, 0, 3), dtype=np.uint8), "is empty (0 pixels)"),
    (np.zeros(5, dtype=np.float32), "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"),
    (np.zeros((2, 3, 4, 5), dtype=np.float32), "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"),
    (np.zeros((1, 1, 4, 4, 3), dtype=np.uint8), "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"),
    (
        np.zeros((5, 6, 7), dtype=np.float32),
        "has no channel axis of length 1, 3 or 4 (expected (H, W, C) or (C, H, W))",
    ),
    (
        np.zeros((2, 5, 5), dtype=np.float32),
        "has no channel axis of length 1, 3 or 4 (expected (H, W, C) or (C, H, W))",
    ),
    (np.zeros((5, 5, 2), dtype=np.uint8), "has no channel axis of length 1, 3 or 4 (expected (H, W, C) or (C, H, W))"),
    (np.array([[0.0, np.nan]]), "holds NaN or Inf values"),
    (np.array([[0.0, np.inf]], dtype=np.float32), "holds NaN or Inf values"),
    (np.array([[-np.inf, 0.5]]), "holds NaN or Inf values"),
    (
        np.array([[-0.5, 1.0]]),
        "has values in [-0.5, 1], outside [0, 1]; scale it first (for 0..255 data, divide by 255)",
    ),
    (
        np.array([[0.0, 1.0001]]),
        "has values in [0, 1.0001], outside [0, 1]; scale it first (for 0..255 data, divide by 255)",
    ),
    (
        np.array([[0, 255]], dtype=np.int64),
        "has values in [0, 255], outside [0, 1]; scale it first (for 0..255 data, divide by 255)",
    ),
    (np.zeros((3, 3), dtype=np.complex64), "expected real numbers"),
    (np.array([[None, 1]], dtype=object), "expected real numbers"),
    (np.array([["a", "b"]]), "expected real numbers"),
]


class TestArrayErrors:
    @pytest.mark.parametrize(
        ("array", "problem"), ARRAY_ERRORS, ids=lambda value: str(getattr(value, "shape", value))[:30]
    )
    def test_numpy(self, array, problem):
        with pytest.raises(ShiftlabError) as info:
            load_image(array)
        subject = f"image (numpy array of shape {tuple(array.shape)} and dtype {array.dtype})"
        assert_one_line_error(info, subject, problem)

    @pytest.mark.parametrize(
        ("array", "problem"),
        [
            (array, problem)
            for array, problem in ARRAY_ERRORS
            if array.dtype.kind in "biufc" and array.dtype != np.complex64
        ],
        ids=lambda value: str(getattr(value, "shape", value))[:30],
    )
    def test_tensors(self, array, problem):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        with pytest.raises(ShiftlabError) as info:
            load_image(tensor)
        subject = f"image (tensor of shape {tuple(tensor.shape)} and dtype {str(tensor.dtype).replace('torch.', '')})"
        message = assert_one_line_error(info, subject)
        # Tensors are read channels-first, so the channel-axis message may differ; the rest is the same.
        if "channel axis" not in problem:
            assert message == f"{subject}: {problem}"

    def test_complex_tensor(self):
        with pytest.raises(ShiftlabError) as info:
            load_image(torch.zeros(3, 3, dtype=torch.complex64))
        assert_one_line_error(info, "image (tensor of shape (3, 3) and dtype complex64)", "expected real numbers")

    @pytest.mark.parametrize(
        "source",
        [[[0.0, 1.0]], b"\x89PNG", 3, None, np.float32(0.5)],
        ids=["list", "bytes", "int", "none", "numpy-scalar"],
    )
    def test_unsupported_types(self, source):
        with pytest.raises(ShiftlabError) as info:
            load_image(source)
        assert_one_line_error(
            info,
            "image",
            f"expected a path, sample name, numpy array, PIL image or torch tensor, got {type(source).__name__}",
        )


# --------------------------------------------------------------------------- samples


class TestSamples:
    @pytest.mark.parametrize("name", list(SAMPLES))
    def test_every_sample_loads(self, name):
        gray = sample_image(name)
        colour = sample_image(name, grayscale=False)
        assert gray.shape == SAMPLE_SHAPES[name]
        assert colour.shape == (3, *SAMPLE_SHAPES[name])
        for result in (gray, colour):
            assert_new_float32(result)
            assert 0.0 <= result.min() and result.max() <= 1.0
        np.testing.assert_allclose(gray, luma(np.moveaxis(colour, 0, -1)), atol=1e-6)

    def test_samples_are_described(self):
        assert set(SAMPLES) == set(SAMPLE_SHAPES)
        for name, sample in SAMPLES.items():
            assert sample.name == name and sample.description

    @pytest.mark.parametrize(("name", "pixel"), [("pixel_a", (2, 2)), ("pixel_b", (7, 7))])
    def test_single_pixels(self, name, pixel):
        expected = np.zeros((10, 10), dtype=np.float32)
        expected[pixel] = 1.0
        np.testing.assert_array_equal(sample_image(name), expected)
        np.testing.assert_array_equal(sample_image(name, grayscale=False), np.stack([expected] * 3))
        np.testing.assert_array_equal(load_image(name), expected)

    def test_single_pixel_image(self):
        expected = np.zeros((10, 10), dtype=np.float32)
        expected[7, 7] = 1
        result = single_pixel_image(-3, -3)
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, expected)
        assert single_pixel_image(0, 4, size=5).tolist()[0] == [0, 0, 0, 0, 1]

    @pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
    def test_photos_match_an_independent_decoder(self, name):
        with resources.as_file(resources.files("shiftlab").joinpath("assets", f"{name}.png")) as path:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            from_file = load_image(path, grayscale=False)
        expected = chw(bgr[..., ::-1] / 255.0)
        np.testing.assert_allclose(sample_image(name, grayscale=False), expected, atol=1e-7)
        np.testing.assert_array_equal(from_file, sample_image(name, grayscale=False))

    def test_chelsea_mirror_is_the_exact_flip(self):
        chelsea = sample_image("chelsea", grayscale=False)
        mirror = sample_image("chelsea_mirror", grayscale=False)
        np.testing.assert_array_equal(mirror, chelsea[:, :, ::-1])
        assert not np.array_equal(mirror, chelsea)
        np.testing.assert_allclose(sample_image("chelsea_mirror"), sample_image("chelsea")[:, ::-1], atol=1e-6)

    def test_chelsea_right_is_chelsea_left_translated(self):
        left = sample_image("chelsea_left", grayscale=False)
        right = sample_image("chelsea_right", grayscale=False)
        assert SCENE_SHIFT == 256
        np.testing.assert_array_equal(np.roll(left, SCENE_SHIFT, axis=-1), right)
        assert not np.array_equal(left, right)
        np.testing.assert_allclose(
            np.roll(sample_image("chelsea_left"), SCENE_SHIFT, axis=-1), sample_image("chelsea_right"), atol=1e-6
        )

    def test_scene_layout(self):
        left, right = scene_pair()
        assert left.shape == right.shape == (*SCENE_CANVAS, 3)
        height, width = SCENE_OBJECT
        for image, start in ((left, SCENE_LEFT), (right, SCENE_LEFT + SCENE_SHIFT)):
            background = np.ones(SCENE_CANVAS, dtype=bool)
            background[SCENE_TOP : SCENE_TOP + height, start : start + width] = False
            assert (image[background] == 0.5).all()
            assert (image[~background] != 0.5).any(axis=-1).mean() > 0.9
        np.testing.assert_array_equal(
            left[SCENE_TOP : SCENE_TOP + height, SCENE_LEFT : SCENE_LEFT + width],
            right[SCENE_TOP : SCENE_TOP + height, SCENE_LEFT + SCENE_SHIFT : SCENE_LEFT + SCENE_SHIFT + width],
        )

    def test_load_image_falls_back_to_samples(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)  # no file called "chelsea" here
        np.testing.assert_array_equal(load_image("chelsea"), sample_image("chelsea"))
        np.testing.assert_array_equal(load_image("chelsea", grayscale=False), sample_image("chelsea", grayscale=False))

    def test_results_are_fresh_copies(self):
        first = sample_image("chelsea", grayscale=False)
        first[...] = 0
        assert sample_image("chelsea", grayscale=False).max() > 0
        pixel = sample_image("pixel_a")
        pixel[...] = 9
        assert sample_image("pixel_a").sum() == 1

    def test_unknown_sample(self):
        with pytest.raises(ShiftlabError) as info:
            sample_image("dog")
        assert_one_line_error(info, "sample", f"unknown name 'dog'; known: {', '.join(SAMPLES)}")
