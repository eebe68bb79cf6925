"""``python -m shiftlab``: the ``shiftlab`` command (also what ``torchrun -m shiftlab`` runs)."""

import sys

from shiftlab._command import interrupted_imports

with interrupted_imports():  # Ctrl-C while the command starts: one line, status 130
    from shiftlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
