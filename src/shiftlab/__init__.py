"""shiftlab: see and measure how convolutional networks respond to translation.

The public API, re-exported from the modules that define it (nothing is defined here).

The names load on first use (PEP 562): ``import shiftlab`` costs next to nothing, and ``shiftlab.probe`` imports
torch and the probe when it is first read, so that ``shiftlab --help`` answers without them. ``from shiftlab
import X`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Every public name -> the module that defines it.
_ORIGINS: dict[str, str] = {
    "Preprocess": "shiftlab.data",
    "prepare_images": "shiftlab.data",
    "EquivarianceResult": "shiftlab.probing.equivariance",
    "ShiftComparison": "shiftlab.probing.equivariance",
    "ShiftError": "shiftlab.probing.equivariance",
    "equivariance_error": "shiftlab.probing.equivariance",
    "feature_stride": "shiftlab.probing.equivariance",
    "InternalError": "shiftlab.errors",
    "ShiftlabError": "shiftlab.errors",
    "EvaluationResult": "shiftlab.invariance.evaluate",
    "evaluate": "shiftlab.invariance.evaluate",
    "show_convergence": "shiftlab.report.figures",
    "show_error_vs_depth": "shiftlab.report.figures",
    "show_feature_map": "shiftlab.report.figures",
    "show_pyramid": "shiftlab.report.figures",
    "show_shift_heatmaps": "shiftlab.report.figures",
    "show_shift_table": "shiftlab.report.figures",
    "SAMPLES": "shiftlab.images",
    "load_image": "shiftlab.images",
    "sample_image": "shiftlab.images",
    "single_pixel_image": "shiftlab.images",
    "KERNEL_NAMES": "shiftlab.kernels",
    "binomial_kernel": "shiftlab.kernels",
    "box_kernel": "shiftlab.kernels",
    "gaussian_kernel": "shiftlab.kernels",
    "get_kernel": "shiftlab.kernels",
    "make_shift_invariant": "shiftlab.layers",
    "MapError": "shiftlab.distances",
    "compare_maps": "shiftlab.distances",
    "load_model": "shiftlab.models",
    "load_weights": "shiftlab.models",
    "Convolve": "shiftlab.ops",
    "MaxPool": "shiftlab.ops",
    "convolve": "shiftlab.ops",
    "max_pool": "shiftlab.ops",
    "max_pyramid_depth": "shiftlab.ops",
    "pool_pyramid": "shiftlab.ops",
    "main_output": "shiftlab.outputs",
    "ProbeResult": "shiftlab.probing.layerwise",
    "probe": "shiftlab.probing.layerwise",
    "select_layers": "shiftlab.probing.layerwise",
    "SHIFT_MODES": "shiftlab.shifts",
    "parse_shifts": "shiftlab.shifts",
    "shift": "shiftlab.shifts",
    "shift_grid": "shiftlab.shifts",
    "shift_range": "shiftlab.shifts",
    "shift_with_mask": "shiftlab.shifts",
}

__all__ = [
    "KERNEL_NAMES",
    "SAMPLES",
    "SHIFT_MODES",
    "Convolve",
    "EquivarianceResult",
    "EvaluationResult",
    "InternalError",
    "MapError",
    "MaxPool",
    "Preprocess",
    "ProbeResult",
    "ShiftComparison",
    "ShiftError",
    "ShiftlabError",
    "binomial_kernel",
    "box_kernel",
    "compare_maps",
    "convolve",
    "equivariance_error",
    "evaluate",
    "feature_stride",
    "gaussian_kernel",
    "get_kernel",
    "load_image",
    "load_model",
    "load_weights",
    "main_output",
    "make_shift_invariant",
    "max_pool",
    "max_pyramid_depth",
    "parse_shifts",
    "pool_pyramid",
    "prepare_images",
    "probe",
    "sample_image",
    "select_layers",
    "shift",
    "shift_grid",
    "shift_range",
    "shift_with_mask",
    "show_convergence",
    "show_error_vs_depth",
    "show_feature_map",
    "show_pyramid",
    "show_shift_heatmaps",
    "show_shift_table",
    "single_pixel_image",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in this module's namespace).

    A submodule that is not a public name (``shiftlab.cli``) is not found here: Python's import system finds it.
    """
    origin = _ORIGINS.get(name)
    if origin is None:
        raise AttributeError(f"module 'shiftlab' has no attribute {name!r}")
    from shiftlab._command import interrupted_imports

    with interrupted_imports():  # Ctrl-C while the command imports torch: one line, status 130
        value = getattr(importlib.import_module(origin), name)
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, eagerly
    from shiftlab.data import Preprocess, prepare_images
    from shiftlab.distances import MapError, compare_maps
    from shiftlab.errors import InternalError, ShiftlabError
    from shiftlab.images import SAMPLES, load_image, sample_image, single_pixel_image
    from shiftlab.invariance.evaluate import EvaluationResult, evaluate
    from shiftlab.kernels import KERNEL_NAMES, binomial_kernel, box_kernel, gaussian_kernel, get_kernel
    from shiftlab.layers import make_shift_invariant
    from shiftlab.models import load_model, load_weights
    from shiftlab.ops import Convolve, MaxPool, convolve, max_pool, max_pyramid_depth, pool_pyramid
    from shiftlab.outputs import main_output
    from shiftlab.probing.equivariance import (
        EquivarianceResult,
        ShiftComparison,
        ShiftError,
        equivariance_error,
        feature_stride,
    )
    from shiftlab.probing.layerwise import ProbeResult, probe, select_layers
    from shiftlab.report.figures import (
        show_convergence,
        show_error_vs_depth,
        show_feature_map,
        show_pyramid,
        show_shift_heatmaps,
        show_shift_table,
    )
    from shiftlab.shifts import SHIFT_MODES, parse_shifts, shift, shift_grid, shift_range, shift_with_mask
