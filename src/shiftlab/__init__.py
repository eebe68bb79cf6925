"""shiftlab: see and measure how convolutional networks respond to translation."""
from shiftlab.errors import ShiftlabError
from shiftlab.kernels import KERNEL_NAMES, binomial_kernel, box_kernel, gaussian_kernel, get_kernel
from shiftlab.ops import Convolve, MaxPool, convolve, max_pool, max_pyramid_depth, pool_pyramid

__version__ = "0.1.0"
