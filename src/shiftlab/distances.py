"""How far apart two maps are, on the pixels that count.

The same three numbers are used everywhere in shiftlab (the article
experiments, :func:`shiftlab.equivariance_error`, :func:`shiftlab.probe`):

* relative L2 error ``||a - b|| / ||b||`` (``b`` is the reference; 0 when both are 0),
* maximum absolute error ``max |a - b|``,
* cosine similarity ``<a, b> / (||a|| ||b||)`` (1 when both are 0).

They are computed from sums (:func:`map_error`), so that they can be
accumulated over images and batches without keeping the maps (see
:class:`shiftlab.probing.equivariance.ShiftComparison`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shiftlab._tensors import as_float_tensor
from shiftlab.errors import check

__all__ = ["MapError", "compare_maps", "map_error", "peak_position"]


@dataclass(frozen=True)
class MapError:
    """Relative L2 error, max absolute error, cosine similarity, and the fraction of pixels compared."""

    rel_l2: float
    max_abs: float
    cosine: float
    valid_fraction: float = 1.0


def map_error(
    squared_difference: float,
    squared_reference: float,
    squared_output: float,
    largest: float,
    compared: int,
    total: int,
    dot: float | None = None,
) -> MapError:
    """The metrics from the sums over the compared pixels (NaN everywhere when no pixel was compared).

    ``dot`` is ``<a, b>``; when it is not given it comes from the identity
    ``<a, b> = (|a|^2 + |b|^2 - |a - b|^2) / 2``, whose cancellation blurs only the
    cosine of nearly equal maps (to about 1e-16 in float64), never the L2 error.

    Example:
        >>> map_error(1.0, 4.0, 1.0, 1.0, 2, 4)
        MapError(rel_l2=0.5, max_abs=1.0, cosine=1.0, valid_fraction=0.5)
    """
    if compared == 0:
        return MapError(math.nan, math.nan, math.nan, 0.0)
    if squared_reference > 0:
        rel_l2 = math.sqrt(squared_difference / squared_reference)
    else:
        rel_l2 = 0.0 if squared_difference == 0 else math.inf
    if dot is None:
        dot = 0.5 * (squared_output + squared_reference - squared_difference)
    norms = math.sqrt(squared_output * squared_reference)
    if norms > 0:
        cosine = max(-1.0, min(1.0, dot / norms))  # rounding can push it a hair beyond +-1
    else:
        cosine = 1.0 if squared_output == squared_reference else 0.0
    valid_fraction = compared / total if total else 0.0
    return MapError(rel_l2, largest, cosine, valid_fraction)


def compare_maps(output: Any, reference: Any, mask: Any = None) -> MapError:
    """Compare ``output`` with ``reference`` on the pixels where ``mask`` is true.

    Args:
        output: ``(..., H, W)`` array or tensor (e.g. ``f(shift(x))``).
        reference: same shape (e.g. ``shift(f(x))``): the relative error divides by its norm.
        mask: optional boolean ``(H, W)`` (or broadcastable) mask of pixels to compare.

    Example:
        >>> import numpy as np
        >>> compare_maps(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
        MapError(rel_l2=0.0, max_abs=0.0, cosine=1.0, valid_fraction=1.0)
        >>> compare_maps(np.array([[3.0, 9.0]]), np.array([[4.0, 0.0]]), mask=np.array([[True, False]])).rel_l2
        0.25
    """
    a, _ = as_float_tensor(output, "output")
    b, _ = as_float_tensor(reference, "reference")
    check(a.shape == b.shape, "output", f"shape {tuple(a.shape)} differs from the reference's {tuple(b.shape)}")
    a, b = a.double(), b.to(a.device).double()
    total = a.numel()
    if mask is not None:
        keep = torch.as_tensor(mask, device=a.device).bool().expand_as(a)
        a, b = a[keep], b[keep]
    difference = a - b
    return map_error(
        float(difference.square().sum()),
        float(b.square().sum()),
        float(a.square().sum()),
        float(difference.abs().max()) if difference.numel() else 0.0,
        difference.numel(),
        total,
        dot=float((a * b).sum()),
    )


def peak_position(array: Any) -> tuple[int, int]:
    """``(row, column)`` of the largest value of a 2-D map (the first one in reading order on ties).

    Example:
        >>> import numpy as np
        >>> peak_position(np.array([[0.0, 3.0], [3.0, 1.0]]))
        (0, 1)
    """
    values = np.asarray(array)
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(row), int(col)
