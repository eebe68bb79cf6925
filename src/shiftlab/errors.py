"""The one error type shiftlab raises for bad input, and the helpers that raise it.

Every check on user input goes through :func:`check` or :func:`fail`, so that a
message always has the same shape: ``"<what>: <what is wrong>"`` on one line.
The command line prints that line to stderr and exits with status 2.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar

from shiftlab._format import printable

__all__ = [
    "InternalError",
    "add_note",
    "ShiftlabError",
    "check",
    "check_choice",
    "check_int",
    "check_pair",
    "check_real",
    "describe",
    "fail",
    "first_line",
]

T = TypeVar("T")


class ShiftlabError(ValueError):
    """Bad input to shiftlab: the message names the input and what is wrong with it.

    It subclasses :class:`ValueError`, so code that already catches ``ValueError``
    keeps working.

    Example:
        >>> try:
        ...     fail("kernel_size", "must be a positive integer, got 0")
        ... except ShiftlabError as error:
        ...     print(error)
        kernel_size: must be a positive integer, got 0
    """


class InternalError(RuntimeError):
    """A bug in shiftlab itself, never bad input: the message says so and asks for a report.

    Raised ``from`` the original exception, so that its traceback shows where shiftlab failed.
    The command line prints that traceback and exits with status 1 (bad input exits with 2).

    Example:
        >>> str(InternalError("the probe's hook on layer 'conv1' failed")).split(" (")[0]
        "shiftlab internal error: the probe's hook on layer 'conv1' failed"
    """

    def __init__(self, what: str) -> None:
        super().__init__(
            f"shiftlab internal error: {_one_line(what)} (a bug in shiftlab, not a problem with your model or input; "
            "please report it with the traceback)"
        )


def _one_line(text: str) -> str:
    """A message on one line that any terminal or file can take: names with line breaks, control characters
    or bytes that are not UTF-8 are escaped (see :func:`shiftlab._format.printable`)."""
    return printable(str(text).strip())


def fail(subject: str, problem: str) -> NoReturn:
    """Raise :class:`ShiftlabError` with the message ``"<subject>: <problem>"``.

    Args:
        subject: the input at fault, as the user would name it (``"image 'a.png'"``).
        problem: what is wrong with it, and where possible what would be right.
    """
    raise ShiftlabError(f"{_one_line(subject)}: {_one_line(problem)}")


def check(condition: object, subject: str, problem: str) -> None:
    """Raise :class:`ShiftlabError` unless ``condition`` is true.

    Example:
        >>> check(3 > 2, "x", "never raised")
        >>> check(False, "stride", "must be >= 1, got 0")
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: stride: must be >= 1, got 0
    """
    if not condition:
        fail(subject, problem)


def add_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to ``error`` (``BaseException.add_note``, also on Python 3.10): what happened to the work
    done so far, say. The command line prints the notes after the message, on the same line.

    Example:
        >>> error = KeyboardInterrupt()
        >>> add_note(error, "the counts so far are kept in 'c.pt'")
        >>> error.__notes__
        ["the counts so far are kept in 'c.pt'"]
    """
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:
        error.__dict__.setdefault("__notes__", []).append(note)


def describe(value: object) -> str:
    """A short description of a value for an error message (type and shape, never its data).

    Example:
        >>> import numpy as np
        >>> describe(np.zeros((2, 3), dtype=np.float32))
        'numpy array of shape (2, 3) and dtype float32'
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        kind = "tensor" if type(value).__module__.startswith("torch") else "numpy array"
        return f"{kind} of shape {tuple(shape)} and dtype {str(dtype).replace('torch.', '')}"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:57]}..."


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for quoting a library's error.

    Example:
        >>> first_line(RuntimeError("shape mismatch" + chr(10) + "a long explanation"))
        'shape mismatch'
        >>> first_line(EOFError())
        'EOFError'
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --------------------------------------------------------------------------- the checks that recur
#
# Each returns the value in its canonical Python type, so a caller writes ``size = check_int(size, "size", minimum=1)``
# and never deals with numpy scalars or 0-d tensors again. Messages follow "<subject>: must be ..., got <value>".


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as a Python number (anything else unchanged)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def check_real(value: Any, subject: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """A finite real number (Python, numpy or a 0-d tensor; not a bool), as a ``float``.

    Example:
        >>> import numpy as np
        >>> check_real(np.float32(0.5), "sigma")
        0.5
        >>> check_real(float("nan"), "dy")
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: dy: must be a finite number, got nan
    """
    value = _scalar(value)
    if not _is_number(value) or not math.isfinite(value):
        fail(subject, f"must be a finite number, got {value!r}")
    number = float(value)
    if positive and number <= 0:
        fail(subject, f"must be a positive number, got {value!r}")
    if minimum is not None and number < minimum:
        fail(subject, f"must be >= {minimum:g}, got {value!r}")
    return number


def check_int(value: Any, subject: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number (Python or numpy integer, an integral float, a 0-d tensor; not a bool), as an ``int``.

    Example:
        >>> import numpy as np
        >>> check_int(np.int64(3), "size", minimum=1)
        3
        >>> check_int(2.5, "size")
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: size: must be an integer, got 2.5
        >>> check_int(0, "stride", minimum=1)
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: stride: must be an integer >= 1, got 0
    """
    value = _scalar(value)
    whole = isinstance(value, numbers.Integral) or (_is_number(value) and math.isfinite(value) and value == int(value))
    if isinstance(value, bool) or not whole:
        fail(subject, f"must be an integer, got {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        limits = [f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else ""]
        bounds = " and ".join(limit for limit in limits if limit)
        fail(subject, f"must be an integer {bounds}, got {value!r}")
    return number


def check_pair(value: Any, subject: str, *, minimum: int | None = None) -> tuple[int, int]:
    """An integer or a pair of integers (``stride=2`` or ``stride=(2, 1)``), as an ``(int, int)`` tuple.

    Example:
        >>> check_pair(2, "stride"), check_pair((4, 1), "stride")
        ((2, 2), (4, 1))
    """
    value = _scalar(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = check_int(value, subject, minimum=minimum)
        return number, number
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else None
    if items is None or len(items) != 2:
        fail(subject, f"must be an integer or a pair of integers, got {value!r}")
    first, second = (check_int(item, subject, minimum=minimum) for item in items)
    return first, second


def check_choice(value: Any, subject: str, choices: Iterable[T]) -> T:
    """One of ``choices`` (compared with ``==``).

    Example:
        >>> check_choice("zero", "mode", ("circular", "zero"))
        'zero'
        >>> check_choice("wrap", "mode", ("circular", "zero"))
        Traceback (most recent call last):
        ...
        shiftlab.errors.ShiftlabError: mode: must be one of circular, zero, got 'wrap'
    """
    options = list(choices)
    for option in options:
        if value == option:
            return option
    fail(subject, f"must be one of {', '.join(map(str, options))}, got {value!r}")
