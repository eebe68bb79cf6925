"""What the layers share: checking their input maps, and padding them by any amount in the four modes offered.

The modes are torch's names, as ``nn.Conv2d(padding_mode=...)`` spells them: ``"zeros"``, ``"reflect"``,
``"replicate"``, ``"circular"`` (:data:`PADDING_MODES`). The layers once spelled the first ``"zero"``; that name is
still accepted, with a ``DeprecationWarning`` (:func:`check_padding`).

``torch.nn.functional.pad`` refuses reflect padding of ``p >= H`` pixels and
circular padding of ``p > H``; the small maps at the end of a network (a 2x2
map under a size-4 blur) meet exactly that. Such maps are padded here by
index: reflection is repeated (numpy's ``np.pad(mode="reflect")`` convention),
circular padding wraps around as often as needed, and a single row reflects
onto itself. Everything else goes to ``F.pad``.
"""

from __future__ import annotations

import warnings
from typing import Literal, cast

import torch
import torch.nn.functional as F

from shiftlab.errors import InternalError, check_choice, describe, fail

__all__ = ["PADDING_MODES", "PaddingMode", "check_maps", "check_padding", "pad2d"]

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
#: The padding modes, as :class:`torch.nn.Conv2d` names them; the blur and polyphase layers take them all.
PADDING_MODES: tuple[PaddingMode, ...] = ("zeros", "reflect", "replicate", "circular")
#: The layers' former name for ``"zeros"``, still accepted (with a ``DeprecationWarning``).
_DEPRECATED_ZERO = "zero"


def check_padding(padding: object, subject: str = "padding") -> PaddingMode:
    """``padding`` as one of :data:`PADDING_MODES`; the former ``"zero"`` becomes ``"zeros"``, with a warning.

    Example:
        >>> check_padding("circular")
        'circular'
        >>> check_padding("wrap")
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: padding: must be one of zeros, reflect, replicate, circular, got 'wrap'
    """
    if isinstance(padding, str) and padding == _DEPRECATED_ZERO:
        # stacklevel 3: the warning points at the line that called the layer or function, not at this check.
        warnings.warn(f"{subject}: 'zero' is deprecated, use 'zeros' (torch's name)", DeprecationWarning, stacklevel=3)
        return "zeros"
    return cast(PaddingMode, check_choice(padding, subject, PADDING_MODES))


def check_maps(x: object, subject: str, *, batched: bool = False) -> torch.Tensor:
    """``x`` as a floating-point tensor of shape ``(..., H, W)`` (``(N, C, H, W)`` when ``batched``), not empty."""
    pattern = "(N, C, H, W)" if batched else "(..., H, W)"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        fail(subject, f"expected a floating-point tensor of shape {pattern}, got {describe(x)}")
    if (x.ndim != 4) if batched else (x.ndim < 2):
        fail(subject, f"expected shape {pattern}, got {describe(x)}")
    if x.numel() == 0:
        fail(subject, f"is empty: {describe(x)}")
    return x


def pad2d(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad the last two axes of a 4-D tensor by ``pads = (left, right, top, bottom)`` in ``mode``."""
    if not any(pads):
        return x
    left, right, top, bottom = pads
    height, width = x.shape[-2:]
    if mode not in PADDING_MODES:  # the layers check their mode when built: anything else is shiftlab's bug
        raise InternalError(f"pad2d: unknown padding mode {mode!r}")
    if mode == "zeros":
        return F.pad(x, pads)
    if mode == "replicate":
        return F.pad(x, pads, mode="replicate")
    if mode == "reflect" and max(top, bottom) < height and max(left, right) < width:
        return F.pad(x, pads, mode="reflect")
    if mode == "circular" and max(top, bottom) <= height and max(left, right) <= width:
        return F.pad(x, pads, mode="circular")
    rows = _source_indices(height, top, bottom, mode, x.device)
    columns = _source_indices(width, left, right, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, columns)


def _source_indices(size: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """For each padded position along one axis, the index of the input pixel it copies."""
    positions = torch.arange(-before, size + after, device=device)
    if mode == "circular":
        return positions.remainder(size)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)  # reflect: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ..., repeating
    folded = positions.remainder(period)
    return torch.where(folded >= size, period - folded, folded)
