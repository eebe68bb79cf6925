"""shiftlab: see and measure how convolutional networks respond to translation.

The public API, re-exported from the modules that define it (nothing is defined here).
"""

from shiftlab.errors import ShiftlabError
from shiftlab.images import SAMPLES, load_image, sample_image, single_pixel_image
from shiftlab.kernels import KERNEL_NAMES, binomial_kernel, box_kernel, gaussian_kernel, get_kernel
from shiftlab.metrics import MapError, compare_maps
from shiftlab.ops import Convolve, MaxPool, convolve, max_pool, max_pyramid_depth, pool_pyramid
from shiftlab.shifts import SHIFT_MODES, parse_shifts, shift, shift_grid, shift_range, shift_with_mask
from shiftlab.figures import show_convergence, show_feature_map, show_pyramid, show_shift_table

__version__ = "0.1.0"

__all__ = [
    "KERNEL_NAMES",
    "SAMPLES",
    "SHIFT_MODES",
    "Convolve",
    "MapError",
    "MaxPool",
    "ShiftlabError",
    "binomial_kernel",
    "box_kernel",
    "compare_maps",
    "convolve",
    "gaussian_kernel",
    "get_kernel",
    "load_image",
    "max_pool",
    "max_pyramid_depth",
    "parse_shifts",
    "pool_pyramid",
    "sample_image",
    "shift",
    "shift_grid",
    "shift_range",
    "shift_with_mask",
    "show_convergence",
    "show_feature_map",
    "show_pyramid",
    "show_shift_table",
    "single_pixel_image",
]
