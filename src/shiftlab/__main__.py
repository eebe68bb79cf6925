"""``python -m shiftlab``: the ``shiftlab`` command (also what ``torchrun -m shiftlab`` runs)."""

import os
import sys

from shiftlab._command import EXIT_INTERRUPTED, interrupted_imports

with interrupted_imports():  # Ctrl-C while the command starts: one line, status 130
    from shiftlab.cli import main

if __name__ == "__main__":
    status = main()
    if status == EXIT_INTERRUPTED:
        # Under ``python -m``, CPython may end with SIGINT instead of this status: when Ctrl-C lands in code that the
        # interpreter ran for an extension's import (torch's), its "unhandled KeyboardInterrupt" flag stays set even
        # though shiftlab caught the interrupt (4 of 30 Ctrl-Cs during the imports, measured). Leave with the status
        # itself, the streams flushed: the command has already cleaned up after itself.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
