"""An explorer's frames, packed for the browser: 8-bit, predicted from the moved original, deflated, base64.

:func:`explorer_payload` turns :class:`shiftlab.probing.explore.ExplorerData` into one JSON-able dict that the report's
explorer script draws (``report/templates/explorer.js``); nothing in it is fetched from anywhere.

The packing, per shown layer and kept channel:

* **8 bits.** Every frame of the channel (the original output and the output for every shift) is quantised on one
  scale, ``q = round(255 (v - lo) / (hi - lo))`` with ``lo``, ``hi`` the extremes over all of them, so frames compare
  across shifts. Non-finite values become 0 and are counted (``nonFinite``).
* **Predicted.** The frame for shift ``t`` is stored as its difference, modulo 256, from the original's 8-bit frame
  moved by the probe's alignment (the same move the explorer draws). Where a layer is equivariant that difference is
  zero away from the border, and deflate all but removes it; decoding adds the moved frame back, so the 8-bit frames
  are restored exactly. The original's frame itself (and each plane of the input) is stored as its difference from
  the median edge detector of LOCO-I / JPEG-LS (Weinberger, Seroussi & Sapiro 2000): each pixel predicted from its
  left, upper and upper-left neighbours (0 outside the frame), which removes a quarter to a third of a smooth map's
  bytes.
* **Deflated** (zlib, the format of the browsers' ``DecompressionStream("deflate")``) and base64-encoded.

The input (8-bit, as displayed: ``C x H x W``, or one frame per shift in ``fourier`` mode) and each layer's border
core (one byte per pixel) travel in the same blob. The numbers (the probe's rows and the shown image's errors) are
plain JSON beside it, never re-derived from the 8-bit frames; the difference panel is drawn from the 8-bit frames,
on the maps' colour scale.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
from matplotlib import colormaps

from shiftlab._io import to_jsonable
from shiftlab.probing.explore import ExplorerData, ExplorerLayer, move_map

__all__ = [
    "COLORMAPS",
    "DISPLAY_PERCENTILE",
    "colormap_tables",
    "explorer_payload",
    "predict_plane",
    "quantise",
]

#: The maps' colour scale ends at this percentile of the original output (the static figures do the same), so that a
#: few strong responses leave the rest visible. The 8-bit frames keep the full range.
DISPLAY_PERCENTILE = 99.5
#: Colour maps: the maps (as the static figures), the differences (diverging, white at 0), the errors over shifts.
COLORMAPS = {"map": "magma", "difference": "RdBu_r", "error": "YlOrRd"}


def quantise(frames: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """``frames`` on one 8-bit scale: ``(q, lo, hi, non_finite)`` with ``v ~ lo + q (hi - lo) / 255``.

    Example:
        >>> q, lo, hi, bad = quantise(np.array([[0.0, 0.5], [1.0, np.nan]]))
        >>> q.tolist(), lo, hi, bad
        ([[0, 128], [255, 0]], 0.0, 1.0, 1)
    """
    values = np.asarray(frames, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8), 0.0, 0.0, int(values.size)
    low, high = float(values[finite].min()), float(values[finite].max())
    scale = 255.0 / (high - low) if high > low else 0.0
    quantised = np.where(finite, np.rint((np.where(finite, values, low) - low) * scale), 0.0)
    return quantised.astype(np.uint8), low, high, int(values.size - finite.sum())


def _med(plane: np.ndarray) -> np.ndarray:
    """The median edge detector's prediction of every pixel of an ``(h, w)`` plane from its neighbours ``a`` (left),
    ``b`` (up), ``c`` (up-left), 0 outside: ``min(a, b)`` if ``c >= max(a, b)``, ``max(a, b)`` if ``c <= min(a, b)``,
    else ``a + b - c``."""
    padded = np.pad(plane.astype(np.int16), ((1, 0), (1, 0)))
    a, b, c = padded[1:, :-1], padded[:-1, 1:], padded[:-1, :-1]
    high, low = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= high, low, np.where(c <= low, high, a + b - c))


def predict_plane(plane: np.ndarray) -> np.ndarray:
    """An 8-bit ``(h, w)`` plane as its residual from :func:`_med`, modulo 256 (the explorer script restores the
    plane pixel by pixel, adding back the prediction from the pixels it has restored).

    Example:
        >>> plane = np.array([[10, 12, 14], [11, 13, 15]], dtype=np.uint8)
        >>> predict_plane(plane).tolist()
        [[10, 2, 2], [1, 1, 1]]
    """
    return (plane.astype(np.int16) - _med(plane)).astype(np.uint8)


def colormap_tables() -> dict[str, list[int]]:
    """The explorer's colour maps (:data:`COLORMAPS`), 256 RGB entries each, flat: ``[r0, g0, b0, r1, ...]``;
    one copy per page.

    Example:
        >>> [len(table) for table in colormap_tables().values()]
        [768, 768, 768]
    """
    tables = {}
    for role, name in COLORMAPS.items():
        table = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
        tables[role] = [int(value) for value in np.rint(table * 255).astype(np.uint8).ravel()]
    return tables


class _Blob:
    """Byte arrays laid end to end; :meth:`add` says where each starts."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
        offset = self.size
        self.parts.append(data)
        self.size += len(data)
        return offset


def _layer_payload(layer: ExplorerLayer, blob: _Blob) -> dict[str, Any]:
    height, width = layer.reference.shape[-2:]
    shifts = layer.shifted.shape[0]
    channels = []
    for slot, channel in enumerate(layer.channels):
        frames = np.concatenate([layer.reference[slot][None], layer.shifted[:, slot]])
        quantised, low, high, non_finite = quantise(frames)
        original = quantised[0]
        offset = blob.add(predict_plane(original))
        for index in range(shifts):
            predicted = (
                original
                if layer.part == "whole"
                else move_map(original, layer.alignment(index), circular=layer.circular)
            )
            blob.add(quantised[1 + index] - predicted)  # uint8 arithmetic: modulo 256
        clip = float(np.percentile(original, DISPLAY_PERCENTILE)) if original.size else 255.0
        channels.append(
            {
                "index": channel,
                "lo": low,
                "hi": high,
                "clip": max(1.0, clip),
                "nonFinite": non_finite,
                "offset": offset,
            }
        )
    core = None if layer.core is None else blob.add(layer.core.astype(np.uint8))
    return {
        "label": layer.label,
        "type": layer.kind,
        "layout": layer.layout,
        "part": layer.part,
        "stride": list(layer.stride) if layer.stride else None,
        "shape": list(layer.shape),
        "height": int(height),
        "width": int(width),
        "circular": layer.circular,
        "channelCount": layer.channel_count,
        "channels": channels,
        "core": core,
        "valuesKept": layer.values_kept,
        "rows": layer.rows,
        "image": layer.image_errors,
    }


def _grid(shifts: list[tuple[float, float]]) -> dict[str, list[Any]] | None:
    """The shifts as a ``dy x dx`` grid when they are every pair of their rows and columns (in any order):
    the rows ``dy``, the columns ``dx`` (both sorted), and ``index[row][column]``, the shift's position in the list.

    Example:
        >>> _grid([(1, 0), (0, 0), (1, 1), (0, 1)])
        {'dy': [0, 1], 'dx': [0, 1], 'index': [[1, 3], [0, 2]]}
        >>> _grid([(0, 0), (1, 1)]) is None
        True
    """
    ys = sorted({dy for dy, _ in shifts})
    xs = sorted({dx for _, dx in shifts})
    if len(ys) * len(xs) != len(shifts) or len(set(shifts)) != len(shifts):
        return None
    position = {pair: index for index, pair in enumerate(shifts)}
    return {"dy": ys, "dx": xs, "index": [[position[dy, dx] for dx in xs] for dy in ys]}


def explorer_payload(data: ExplorerData, *, title: str = "", key: str = "explorer") -> dict[str, Any]:
    """Everything the explorer script needs, as JSON-able data (frames packed as the module docstring says).

    Args:
        data: from :func:`shiftlab.probing.explore.explorer_data`.
        title: a heading for the explorer.
        key: a name unique in the page (element ids start with it).
    """
    blob = _Blob()
    display = np.rint(np.clip(data.display, 0.0, 1.0) * 255).astype(np.uint8)
    channels = display.shape[0]
    if channels not in (1, 3):  # neither gray nor RGB: the channels' mean, in gray
        display = np.rint(data.display.mean(axis=0, keepdims=True).clip(0, 1) * 255).astype(np.uint8)
    input_offset = blob.add(np.stack([predict_plane(plane) for plane in display]))
    per_shift = None
    if data.display_shifted is not None:
        frames = data.display_shifted
        frames = frames if frames.shape[1] in (1, 3) else frames.mean(axis=1, keepdims=True)
        per_shift = {
            "offset": blob.add(np.rint(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)),
            "height": int(frames.shape[-2]),
            "width": int(frames.shape[-1]),
        }
    layers = [_layer_payload(layer, blob) for layer in data.layers]
    packed = zlib.compress(b"".join(blob.parts), 9)
    name = data.names[data.image] if data.image < len(data.names) else None
    return to_jsonable(
        {
            "key": key,
            "title": title,
            "mode": data.mode,
            "shifts": [list(pair) for pair in data.shifts],
            "grid": _grid(data.shifts),
            "images": data.image_count,
            "imageName": name,
            "input": {
                "channels": int(display.shape[0]),
                "height": int(display.shape[1]),
                "width": int(display.shape[2]),
                "margin": list(data.margin) if data.margin else None,
                "offset": input_offset,
                "perShift": per_shift,
            },
            "layers": layers,
            "rawBytes": blob.size,
            "data": base64.b64encode(packed).decode("ascii"),
        }
    )
