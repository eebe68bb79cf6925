"""Small helpers shared by the tests of the bundled digits, models and trained variants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parent.parent

# A CPU other than the one that recorded an accuracy may sum in another order and flip a borderline image or two;
# 3 of the 1,000 test images (0.3 percentage points) is the allowance.
ACCURACY_TOLERANCE = 0.003


def states_equal(first: dict, second: dict) -> bool:
    """Two state_dicts with the same keys and bit-identical tensors."""
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (the scripts are not part of the package), once per session."""
    module_name = f"_shiftlab_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
