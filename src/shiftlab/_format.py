"""Numbers and strides as text, the same way in tables, figures and the command line."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_number", "format_stride"]


def format_number(value: Any, digits: int = 4) -> str:
    """Format a number for a table: exact zeros as ``0``, tiny values in scientific notation.

    Example:
        >>> [format_number(v) for v in (0.0, 1.23456789, 3e-9, 12345.6, None, (1, 2))]
        ['0', '1.235', '3e-09', '1.235e+04', '-', '(1, 2)']
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0:
            return "0"
        return f"{value:.{digits}g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(format_number(item, digits) for item in value) + ")"
    return str(value)


def format_stride(stride: Any, *, known: bool = True) -> str:
    """A layer's cumulative stride as text: ``"4"`` when square, ``"4x2"`` otherwise, ``"global"`` for none, ``"n/a"``
    for a layer whose layout is not ``known``.

    Example:
        >>> [format_stride(s) for s in ([4, 4], (4, 2), None)]
        ['4', '4x2', 'global']
        >>> format_stride(None, known=False)
        'n/a'
    """
    if not known:
        return "n/a"
    if not stride:
        return "global"
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"
