"""The one error type shiftlab raises for bad input, and the helpers that raise it.

Every check on user input goes through :func:`check` or :func:`fail`, so that a
message always has the same shape: ``"<what>: <what is wrong>"`` on one line.
The command line prints that line to stderr and exits with status 2.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["ShiftlabError", "check", "describe", "fail", "first_line"]


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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
