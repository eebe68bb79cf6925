"""``python -m shiftlab``: the ``shiftlab`` command (also what ``torchrun -m shiftlab`` runs)."""

import sys

from shiftlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
