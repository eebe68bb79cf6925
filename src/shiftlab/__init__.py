"""shiftlab: see and measure how convolutional networks respond to translation.

The public API, re-exported from the modules that define it (nothing is defined here).
"""

from shiftlab.data import Preprocess, prepare_images
from shiftlab.equivariance import EquivarianceResult, ShiftComparison, ShiftError, equivariance_error, feature_stride
from shiftlab.errors import InternalError, ShiftlabError
from shiftlab.evaluate import EvaluationResult, evaluate
from shiftlab.figures import (
    show_convergence,
    show_error_vs_depth,
    show_feature_map,
    show_pyramid,
    show_shift_heatmaps,
    show_shift_table,
)
from shiftlab.images import SAMPLES, load_image, sample_image, single_pixel_image
from shiftlab.kernels import KERNEL_NAMES, binomial_kernel, box_kernel, gaussian_kernel, get_kernel
from shiftlab.layers import make_shift_invariant
from shiftlab.metrics import MapError, compare_maps
from shiftlab.models import load_model, load_weights
from shiftlab.ops import Convolve, MaxPool, convolve, max_pool, max_pyramid_depth, pool_pyramid
from shiftlab.outputs import main_output
from shiftlab.probe import ProbeResult, probe, select_layers
from shiftlab.shifts import SHIFT_MODES, parse_shifts, shift, shift_grid, shift_range, shift_with_mask

__version__ = "0.1.0"

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
