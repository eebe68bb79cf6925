"""Numpy in, numpy out; torch in, torch out.

The operators compute with torch whatever they are given. These two helpers
convert an input to a tensor without copying where possible and convert the
result back to the caller's type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shiftlab.errors import describe, fail, first_line

__all__ = ["as_float_tensor", "like_input", "require_spatial"]


def as_float_tensor(value: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, came_from_numpy)`` for an array-like of real numbers.

    Floating tensors and arrays keep their dtype (and device); booleans and
    integers become float32. Numpy arrays share memory with the tensor, except
    read-only, byte-swapped or negatively strided ones, which are copied.
    """
    if isinstance(value, torch.Tensor):
        tensor, from_numpy = value, False
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            fail(name, f"expected an array or tensor, got {describe(value)} ({first_line(error)})")
        if array.dtype == object or array.dtype.kind not in "biuf":
            fail(name, f"expected real numbers, got {describe(value)}")
        if any(stride < 0 for stride in array.strides) or not array.flags.writeable or not array.dtype.isnative:
            # torch cannot view negative strides or swapped bytes, and warns on read-only memory.
            array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C")
        tensor, from_numpy = torch.from_numpy(array), True
    if tensor.is_complex():
        fail(name, f"expected real numbers, got {describe(value)}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor, from_numpy


def like_input(result: torch.Tensor, from_numpy: bool) -> Any:
    """Convert ``result`` back to numpy when the input was numpy."""
    return result.detach().cpu().numpy() if from_numpy else result


def require_spatial(tensor: torch.Tensor, name: str) -> tuple[int, int]:
    """Check that ``tensor`` is ``(..., H, W)`` with a non-empty map; return ``(H, W)``."""
    # Plain ifs, not check(): this runs on every operator call, and describe() is not free.
    if tensor.ndim < 2:
        fail(name, f"expected an image or feature map of shape (..., H, W), got {describe(tensor)}")
    if tensor.numel() == 0:
        fail(name, f"is empty: {describe(tensor)}")
    height, width = tensor.shape[-2:]
    return int(height), int(width)
