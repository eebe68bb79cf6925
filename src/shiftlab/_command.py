"""Whether this process is the ``shiftlab`` command, and Ctrl-C while the command is still importing.

The command imports torch, matplotlib and the rest only in the commands that need them, inside
:func:`shiftlab.cli.main`, which turns Ctrl-C into one line. :func:`interrupted_imports` wraps the imports that run
before ``main`` can catch anything: :mod:`shiftlab.cli`'s own, and a public name of ``shiftlab`` loaded on first use
(``shiftlab/__init__.py``). When this process is the command (the ``shiftlab`` script, ``python -m shiftlab``,
``torchrun -m shiftlab``), Ctrl-C there ends it with one line and status 130 instead of a long traceback;
anywhere else (a library user's ``from shiftlab import probe``), the ``KeyboardInterrupt`` goes on unchanged.
:func:`interrupts_held` holds Ctrl-C back during ``import torch`` and ``import torchvision``, whose C++ would
otherwise abort the process.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EXIT_INTERRUPTED", "interrupted_imports", "interrupts_held", "is_command"]

#: The exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def is_command(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process runs the ``shiftlab`` command: its script, or ``python [options] -m shiftlab``.

    Example:
        >>> is_command(["/usr/bin/shiftlab", "demo"], ["python", "/usr/bin/shiftlab", "demo"])
        True
        >>> is_command(["-m"], ["python", "-u", "-m", "shiftlab", "evaluate"])
        True
        >>> is_command(["train.py"], ["python", "train.py"])
        False
    """
    argv = sys.argv if argv is None else argv
    orig_argv = list(getattr(sys, "orig_argv", [])) if orig_argv is None else orig_argv
    if argv and Path(argv[0]).name in ("shiftlab", "shiftlab.exe", "shiftlab-script.py"):
        return True
    for position, argument in enumerate(orig_argv[:-1]):
        if argument == "-m":
            module = orig_argv[position + 1]
            return module == "shiftlab" or module.startswith("shiftlab.")
    return False


@contextlib.contextmanager
def interrupted_imports() -> Iterator[None]:
    """Around imports that run before :func:`shiftlab.cli.main`: Ctrl-C in the command ends it with one line,
    ``shiftlab: interrupted``, and status 130."""
    try:
        yield
    except KeyboardInterrupt:
        if not is_command():
            raise
        print("shiftlab: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise it (``KeyboardInterrupt``) as the block's last act.

    For ``import torch``: torch's import runs Python code from C++ (pybind11), where a ``KeyboardInterrupt``
    does not propagate but ends the process (``std::terminate``: "terminate called after throwing an instance of
    'pybind11::error_already_set'", status -6); held back, Ctrl-C waits the second or two the import takes. Outside
    the main thread (where no signal handler can be set) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
