"""Numbers and strides as text, the same way in tables, figures and the command line."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ROUNDING_LEVEL", "format_error", "format_number", "format_stride"]

#: An error (a relative L2 error, the absolute difference of values of order one) below this is float32 rounding:
#: its digits differ between CPUs, thread counts and library versions (float32's machine epsilon is 1.2e-7, and a
#: deep network adds up many such roundings). The probe counts such a shift as exact; text prints it as ``< 1e-05``.
ROUNDING_LEVEL = 1e-5


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


def format_error(value: Any, digits: int = 4) -> str:
    """Format an error for a table: as :func:`format_number`, but a non-zero error below :data:`ROUNDING_LEVEL`
    as ``< 1e-05``, since its digits are float rounding and would change from one machine to the next.

    An exact zero stays ``0``: moving data (a roll, a max pooling) gives exactly zero on any machine.

    Example:
        >>> [format_error(v) for v in (0.0, 5.73e-08, 9.9e-06, 1e-05, 0.2677145, float("nan"), None)]
        ['0', '< 1e-05', '< 1e-05', '1e-05', '0.2677', 'n/a', '-']
    """
    if isinstance(value, float) and 0 < abs(value) < ROUNDING_LEVEL:
        return f"< {format_number(ROUNDING_LEVEL)}"
    return format_number(value, digits)


def format_stride(stride: Any) -> str:
    """A layer's cumulative stride as text: ``"4"`` when square, ``"4x2"`` otherwise, ``"global"`` for none.

    Example:
        >>> [format_stride(s) for s in ([4, 4], (4, 2), None)]
        ['4', '4x2', 'global']
    """
    if not stride:
        return "global"
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"
