"""Numbers, strides and names as text, the same way in tables, figures, reports and the command line."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ROUNDING_LEVEL", "figure_text", "format_error", "format_number", "format_stride", "name_bytes", "printable"]

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


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(character: str) -> str:
    code = ord(character)
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by Python's surrogateescape: the byte itself
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: Any) -> str:
    """``text`` as it can be shown on one line anywhere: every character that cannot be printed as it is
    (line breaks, tabs and other control characters, bytes of a file name that are not UTF-8) as a
    backslash escape (``\\n``, ``\\t``, ``\\xff``, ``\\u2028``).

    Python reads a file name that is not valid UTF-8 with its bad bytes as lone surrogates
    (``surrogateescape``); they cannot be written to a UTF-8 file or terminal, and come out here as
    ``\\xNN``, the byte itself. Backslashes are kept as they are: the result is for reading, not
    for parsing back (:func:`name_bytes` keeps a name losslessly).

    Example:
        >>> printable("a" + chr(10) + "b.png"), printable(b"caf\\xff.png".decode("utf-8", "surrogateescape"))
        ('a\\\\nb.png', 'caf\\\\xff.png')
        >>> printable("ok: été 東京")
        'ok: été 東京'
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else _escape(character) for character in text)


def name_bytes(name: Any) -> str | None:
    """The bytes of a file name that is not valid UTF-8, as hexadecimal (``None`` for a valid name).

    The lossless companion of :func:`printable` in JSON outputs: ``bytes.fromhex(value)`` gives the
    name as the file system holds it (``os.fsdecode`` of that, the ``str`` Python uses).

    Example:
        >>> name_bytes("a.png"), name_bytes(b"\\xffa.png".decode("utf-8", "surrogateescape"))
        (None, 'ff612e706e67')
    """
    text = str(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").hex()
        except UnicodeEncodeError:  # a surrogate no file system gives (e.g. from JSON): its UTF-8 form
            return text.encode("utf-8", "surrogatepass").hex()
    return None


def figure_text(text: Any) -> str:
    """User-supplied text (a file, model or layer name) for a matplotlib figure, shown as it is.

    :func:`printable`, with every ``$`` escaped: matplotlib reads text between two ``$`` as maths
    (mathtext) and fails on what is not (``x$\\bad$.png``); it shows ``\\$`` as ``$``.

    Example:
        >>> figure_text("w$x$.pt")
        'w\\\\$x\\\\$.pt'
    """
    return printable(text).replace("$", "\\$")
