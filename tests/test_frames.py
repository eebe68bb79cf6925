"""The explorer's packing: 8-bit frames restored exactly, predicted from the moved original, small where a layer is
equivariant, and JSON that a browser can read (no NaN)."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from nets import fcn_stride_four
from torch import nn

from shiftlab.probing.explore import explorer_data
from shiftlab.probing.frames import colormap_tables, explorer_payload, predict_plane, quantise


def images(count: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def decode_frames(payload: dict[str, Any], layer: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8-bit frames of one layer and kept channel, decoded as the explorer script (``report/templates/explorer.js``)
    decodes them, written from the format's description, not from shiftlab's code: ``(original (h, w), shifted
    (S, h, w))``."""
    blob = np.frombuffer(zlib.decompress(base64.b64decode(payload["data"])), dtype=np.uint8)
    entry = payload["layers"][layer]
    height, width = entry["height"], entry["width"]
    size = height * width
    start = entry["channels"][channel]["offset"]
    original = median_edge_restore(blob[start : start + size].reshape(height, width))
    shifted = []
    for index, row in enumerate(entry["rows"]):
        residual = blob[start + (1 + index) * size : start + (2 + index) * size].reshape(height, width)
        dy, dx = int(row["aligned_dy"]), int(row["aligned_dx"])
        if entry["part"] == "whole":
            predicted = original
        elif entry["circular"]:
            predicted = np.roll(original, (dy, dx), axis=(0, 1))
        else:  # moved down and right by (dy, dx), zero fill
            predicted = np.zeros_like(original)
            for y in range(height):
                for x in range(width):
                    if 0 <= y - dy < height and 0 <= x - dx < width:
                        predicted[y, x] = original[y - dy, x - dx]
        shifted.append(((predicted.astype(np.int64) + residual) % 256).astype(np.uint8))
    return original, np.stack(shifted)


def median_edge_restore(residual: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector undone, pixel by pixel: each pixel is its residual plus the prediction from its
    left (a), upper (b) and upper-left (c) neighbours, 0 outside the frame, modulo 256."""
    height, width = residual.shape
    plane = np.zeros((height, width), dtype=np.int64)
    for y in range(height):
        for x in range(width):
            a = plane[y, x - 1] if x > 0 else 0
            b = plane[y - 1, x] if y > 0 else 0
            c = plane[y - 1, x - 1] if x > 0 and y > 0 else 0
            guess = min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c
            plane[y, x] = (int(residual[y, x]) + guess) % 256
    return plane.astype(np.uint8)


class TestQuantise:
    def test_scale_and_extremes(self, rng):
        values = rng.normal(size=(5, 7, 9))
        q, low, high, bad = quantise(values)
        assert q.dtype == np.uint8 and bad == 0
        assert (low, high) == (values.min(), values.max())
        assert q.min() == 0 and q.max() == 255
        # within half a step of the value, everywhere
        assert np.abs(low + q * (high - low) / 255 - values).max() <= (high - low) / 510 + 1e-12

    def test_constant_and_non_finite(self):
        q, low, high, bad = quantise(np.full((2, 2), 3.0))
        assert q.tolist() == [[0, 0], [0, 0]] and (low, high, bad) == (3.0, 3.0, 0)
        q, _, _, bad = quantise(np.array([np.inf, -np.inf, np.nan]))
        assert q.tolist() == [0, 0, 0] and bad == 3


class TestPacking:
    @pytest.mark.parametrize("mode", ["circular", "crop", "zero"])
    def test_frames_restored_exactly(self, mode):
        data = explorer_data(
            fcn_stride_four(), images(), [(0, 0), (0, 1), (2, 3), (-1, 4)], mode=mode, show=["0", "2", "output"]
        )
        payload = explorer_payload(data)
        for position, layer in enumerate(data.layers):
            for slot in range(len(layer.channels)):
                expected, _, _, _ = quantise(np.concatenate([layer.reference[slot][None], layer.shifted[:, slot]]))
                original, shifted = decode_frames(payload, position, slot)
                np.testing.assert_array_equal(original, expected[0])
                np.testing.assert_array_equal(shifted, expected[1:])

    def test_circular_layer_under_circular_shifts_gives_the_moved_original(self):
        net = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
        x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        data = explorer_data(net, x, [(0, 0), (1, 2)], show=["output"])
        original, shifted = decode_frames(explorer_payload(data), 0, 0)
        np.testing.assert_array_equal(shifted[1], np.roll(original, (1, 2), axis=(0, 1)))

    def test_equivariant_layers_cost_almost_nothing(self):
        # Circular convolution under circular shifts: every shifted frame is the moved original, so the 16 frames
        # pack into little more than the one original frame.
        model = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1, padding_mode="circular"))
        shifts = [(dy, dx) for dy in range(4) for dx in range(4)]
        data = explorer_data(model, images(size=64, seed=2), shifts, show=["0"], channels=1)
        payload = explorer_payload(data)
        packed = len(payload["data"]) * 3 / 4
        one_frame = 64 * 64 + 3 * 64 * 64  # the map, and the input
        assert payload["rawBytes"] == one_frame + 16 * 64 * 64
        assert packed < 1.1 * one_frame  # the 16 shifted frames (64 KiB) cost under 1.7 KiB: their residuals are 0

    def test_payload_is_plain_json(self):
        data = explorer_data(fcn_stride_four(), images(count=2), [(0, 0), (3, 3)], mode="crop")
        payload = explorer_payload(data, title="t", key="k")
        json.dumps(payload, allow_nan=False)  # NaN would be refused: JSON has none
        assert payload["grid"] is None  # two shifts on a diagonal: no grid
        rows = payload["layers"][0]["rows"]
        assert rows == [{key: value for key, value in row.items()} for row in data.layers[0].rows]

    def test_grid_detection(self):
        data = explorer_data(fcn_stride_four(), images(), [(0, 0), (0, 1), (1, 0), (1, 1)], show=["0"])
        assert explorer_payload(data)["grid"] == {"dy": [0, 1], "dx": [0, 1], "index": [[0, 1], [2, 3]]}
        data = explorer_data(fcn_stride_four(), images(), [(0, 0), (1, 1)], show=["0"])
        assert explorer_payload(data)["grid"] is None

    def test_colormaps(self):
        tables = colormap_tables()
        assert set(tables) == {"map", "difference", "error"}
        assert all(len(table) == 768 and all(0 <= value <= 255 for value in table) for table in tables.values())
        middle = tables["difference"][127 * 3 : 128 * 3]
        assert min(middle) > 230  # the difference map is near white at zero


def test_median_edge_prediction_round_trip(rng):
    plane = rng.integers(0, 256, size=(13, 17), dtype=np.uint8)
    np.testing.assert_array_equal(median_edge_restore(predict_plane(plane)), plane)
    smooth = np.tile(np.arange(30, dtype=np.uint8), (20, 1))  # a ramp along x: the upper neighbour predicts it
    residual = predict_plane(smooth)
    assert not residual[1:, 1:].any()
