"""Layers that make CNNs more shift-invariant, and the conversion of existing models to them.

* :mod:`~shiftlab.layers.blurpool`: BlurPool (Zhang 2019): blur, then subsample. More consistent, not exact.
* :mod:`~shiftlab.layers.aps`: adaptive polyphase sampling (Chaman & Dokmanic 2021): exactly invariant to
  circular shifts, with circular padding everywhere.
* :mod:`~shiftlab.layers.subsampled_conv`: strided convolutions split into a stride-1 convolution and one of those.
* :mod:`~shiftlab.layers.circular`: circular padding everywhere.
* :mod:`~shiftlab.layers.discovery`: finding a model's downsampling layers.
* :mod:`~shiftlab.layers.convert`: :func:`make_shift_invariant`, which puts it all together.
* :mod:`~shiftlab.layers.recipes`: which layout it builds: shiftlab's own (any model), or the authors' published
  networks, layer for layer and key for key (:mod:`~shiftlab.layers.zhang2019`,
  :mod:`~shiftlab.layers.chaman2021`).
* :mod:`~shiftlab.layers.spec`: the ``+blurpool``, ``+aps``, ``+circular``, ``@RECIPE`` suffixes of model specs.
"""

from shiftlab.layers._maps import PADDING_MODES, PaddingMode
from shiftlab.layers.aps import APS_NORMS, APS_TIE_BREAKS, APSPool2d, PhaseLink, aps_pool2d, polyphase_norms
from shiftlab.layers.blurpool import BlurPool2d, MaxBlurPool2d, binomial_filter, blur_pool2d, max_blur_pool2d
from shiftlab.layers.circular import make_circular
from shiftlab.layers.convert import METHODS, make_shift_invariant
from shiftlab.layers.discovery import find_downsampling_layers
from shiftlab.layers.recipes import RECIPES
from shiftlab.layers.spec import Conversion, split_model_spec
from shiftlab.layers.subsampled_conv import APSConv2d, BlurConv2d

__all__ = [
    "APS_NORMS",
    "APS_TIE_BREAKS",
    "METHODS",
    "PADDING_MODES",
    "RECIPES",
    "APSConv2d",
    "APSPool2d",
    "BlurConv2d",
    "BlurPool2d",
    "Conversion",
    "MaxBlurPool2d",
    "PaddingMode",
    "PhaseLink",
    "aps_pool2d",
    "binomial_filter",
    "blur_pool2d",
    "find_downsampling_layers",
    "make_circular",
    "make_shift_invariant",
    "max_blur_pool2d",
    "polyphase_norms",
    "split_model_spec",
]
