"""``import shiftlab``: the public names load on first use, and are the same objects as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import shiftlab

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter (shiftlab from this checkout)."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert process.returncode == 0, process.stderr
    return process.stdout.strip()


def test_import_shiftlab_loads_no_heavy_module():
    code = "import sys, shiftlab\nprint(sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))"
    assert _fresh(code) == "[]"


def test_every_public_name_loads_and_is_its_modules_own():
    for name in shiftlab.__all__:
        value = getattr(shiftlab, name)
        module = sys.modules[shiftlab._ORIGINS[name]]
        assert value is getattr(module, name), name
    assert set(shiftlab._ORIGINS) == set(shiftlab.__all__)
    assert set(shiftlab.__all__) <= set(dir(shiftlab))


def test_probe_and_evaluate_stay_functions_when_their_subsystems_are_imported_first():
    code = (
        "import shiftlab.probing.layerwise, shiftlab.invariance.evaluate, inspect\n"
        "from shiftlab import probe, evaluate\n"
        "print(inspect.isfunction(probe), inspect.isfunction(evaluate), inspect.isfunction(shiftlab.probe))"
    )
    assert _fresh(code) == "True True True"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'shiftlab' has no attribute 'not_a_name'$"):
        shiftlab.not_a_name  # noqa: B018
