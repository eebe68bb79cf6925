"""Dataset invariance: how much a model's predictions change under translation.

``protocols`` (the published protocols and their metrics, the accumulators), ``dense`` (segmentation maps),
``datasets`` (sources and loader), ``views`` (shifted views), ``catalog`` (the protocols by name),
``evaluate`` (the run).

This package replaces the module ``shiftlab.invariance``: it re-exports what that module gave
(``from shiftlab.invariance import ...`` keeps working).
Inside shiftlab, import from the defining module (``shiftlab.invariance.protocols``), never from here
(tests/test_architecture.py checks it).
"""

from shiftlab.invariance.protocols import (
    DEFAULT_GRID,
    FIXED_POINT_SCALE,
    GRID_MODES,
    Consistency,
    DiagonalShift,
    FeatureSimilarity,
    InvarianceProtocol,
    ShiftAccuracy,
    SubpixelConsistency,
    TranslationSequence,
    sample_seed,
    top_k_distance,
)

__all__ = [
    "Consistency",
    "DEFAULT_GRID",
    "DiagonalShift",
    "FIXED_POINT_SCALE",
    "FeatureSimilarity",
    "GRID_MODES",
    "InvarianceProtocol",
    "ShiftAccuracy",
    "SubpixelConsistency",
    "TranslationSequence",
    "sample_seed",
    "top_k_distance",
]
