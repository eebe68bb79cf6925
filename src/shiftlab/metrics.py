"""How far apart two maps are, on the pixels that count.

The same three numbers are used everywhere in shiftlab (the article
experiments, :func:`shiftlab.equivariance_error`, :func:`shiftlab.probe`):

* relative L2 error ``||a - b|| / ||b||`` (``b`` is the reference; 0 when both are 0),
* maximum absolute error ``max |a - b|``,
* cosine similarity ``<a, b> / (||a|| ||b||)`` (1 when both are 0).

They are computed from sums (:class:`ErrorSums`) so that they can be
accumulated over images and batches without keeping the maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shiftlab._tensors import as_float_tensor
from shiftlab.errors import check

__all__ = ["ErrorSums", "MapError", "compare_maps", "peak_position"]


@dataclass(frozen=True)
class MapError:
    """Relative L2 error, max absolute error, cosine similarity, and the fraction of pixels compared."""

    rel_l2: float
    max_abs: float
    cosine: float
    valid_fraction: float = 1.0


@dataclass
class ErrorSums:
    """Running sums from which :class:`MapError` is computed; add them with ``+``."""

    squared_difference: float = 0.0
    squared_reference: float = 0.0
    squared_output: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    compared: int = 0
    total: int = 0

    @classmethod
    def of(cls, output: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> ErrorSums:
        """Sums over the pixels where ``mask`` (broadcast over leading axes) is true, in float64."""
        a, b = output.double(), reference.double()
        total = a.numel()
        if mask is not None:
            keep = mask.expand_as(a)
            a, b = a[keep], b[keep]
        difference = a - b
        return cls(
            squared_difference=float((difference * difference).sum()),
            squared_reference=float((b * b).sum()),
            squared_output=float((a * a).sum()),
            dot=float((a * b).sum()),
            max_abs=float(difference.abs().max()) if difference.numel() else 0.0,
            compared=int(a.numel()),
            total=total,
        )

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            self.squared_difference + other.squared_difference,
            self.squared_reference + other.squared_reference,
            self.squared_output + other.squared_output,
            self.dot + other.dot,
            max(self.max_abs, other.max_abs),
            self.compared + other.compared,
            self.total + other.total,
        )

    @property
    def rel_l2(self) -> float:
        """``||a - b|| / ||b||`` (0 when both are 0, NaN when no pixel was compared)."""
        if self.compared == 0:
            return math.nan
        if self.squared_reference > 0:
            return math.sqrt(self.squared_difference / self.squared_reference)
        return 0.0 if self.squared_difference == 0 else math.inf

    @property
    def cosine(self) -> float:
        """``<a, b> / (||a|| ||b||)`` (1 when both are 0, NaN when no pixel was compared)."""
        if self.compared == 0:
            return math.nan
        norms = math.sqrt(self.squared_output * self.squared_reference)
        if norms > 0:
            return max(-1.0, min(1.0, self.dot / norms))
        return 1.0 if self.squared_output == self.squared_reference else 0.0

    @property
    def valid_fraction(self) -> float:
        """The share of the pixels that were compared."""
        return self.compared / self.total if self.total else 0.0

    def result(self) -> MapError:
        """The metrics; NaN everywhere when no pixel was compared."""
        if self.compared == 0:
            return MapError(math.nan, math.nan, math.nan, 0.0)
        return MapError(self.rel_l2, self.max_abs, self.cosine, self.valid_fraction)


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
    keep = None
    if mask is not None:
        keep = torch.as_tensor(mask, device=a.device).bool()
    return ErrorSums.of(a, b.to(a.device), keep).result()


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
