"""The dataset metrics by name: what ``--metrics consistency,imagenet-p`` builds, and the options that concern each.

The metrics themselves live in :mod:`shiftlab.invariance.protocols` (classification) and
:mod:`shiftlab.invariance.dense` (segmentation maps); this module sits above both, so that neither imports the other's
users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from shiftlab.errors import check, check_choice
from shiftlab.invariance.dense import DenseConsistency
from shiftlab.invariance.protocols import (
    DEFAULT_GRID,
    Consistency,
    DiagonalShift,
    FeatureSimilarity,
    InvarianceProtocol,
    ShiftAccuracy,
    SubpixelConsistency,
    TranslationSequence,
)

__all__ = ["METRIC_NAMES", "ProtocolOptions", "make_protocol"]

#: The metrics by CLI name, in the order a report shows them.
METRIC_NAMES: tuple[str, ...] = (
    "consistency",
    "crop-consistency",
    "shift-accuracy",
    "subpixel",
    "imagenet-p",
    "diagonal",
    "cosine",
    "dense-consistency",
)


@dataclass(frozen=True)
class ProtocolOptions:
    """The command line's metric options; each metric takes the ones that concern it.

    ``views`` and ``max_shift`` set ``consistency``'s and ``crop-consistency``'s views and reach, and also
    ``dense-consistency``'s (the unshifted input and ``views - 1`` shifts); ``shifts`` and ``shift_mode`` are the grid
    of ``shift-accuracy`` and ``cosine``; ``sequence_shift`` and ``sequence_8bit`` make ImageNet-P's chains.
    """

    views: int = 8
    max_shift: int = 32
    shifts: Sequence[tuple[float, float]] = DEFAULT_GRID
    shift_mode: str = "circular"
    subpixel_shifts: Sequence[tuple[float, float]] = ((0.0, 0.5), (0.5, 0.0), (0.5, 0.5))
    sequence_shift: int = 20
    sequence_8bit: bool = False
    diagonal_mode: str = "crop"
    dense_mode: str = "circular"
    dense_step: int = 1


_OPTION_NAMES = tuple(item.name for item in fields(ProtocolOptions))


def make_protocol(name: str, options: ProtocolOptions | None = None, **changes: Any) -> InvarianceProtocol:
    """A metric from its CLI name (:data:`METRIC_NAMES`) and :class:`ProtocolOptions` (``changes``: single options).

    Example:
        >>> make_protocol("crop-consistency", views=4).describe()["pairs_per_image"]
        6
        >>> make_protocol("consistency", ProtocolOptions(views=3)).describe()["pairs_per_image"]
        3
    """
    name = check_choice(name, "metric", METRIC_NAMES)
    unknown = sorted(set(changes) - set(_OPTION_NAMES))
    check(not unknown, "metric options", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTION_NAMES)}")
    chosen = replace(options or ProtocolOptions(), **changes)
    if name in ("consistency", "crop-consistency"):
        mode = "circular" if name == "consistency" else "crop"
        return Consistency(mode, views=chosen.views, max_shift=chosen.max_shift)
    if name == "shift-accuracy":
        return ShiftAccuracy(chosen.shifts, mode=chosen.shift_mode)
    if name == "subpixel":
        return SubpixelConsistency(chosen.subpixel_shifts)
    if name == "imagenet-p":
        return TranslationSequence(max_shift=chosen.sequence_shift, eight_bit=chosen.sequence_8bit)
    if name == "diagonal":
        return DiagonalShift(chosen.diagonal_mode)
    if name == "cosine":
        return FeatureSimilarity(chosen.shifts, mode=chosen.shift_mode)
    return DenseConsistency(chosen.dense_mode, views=chosen.views, max_shift=chosen.max_shift, step=chosen.dense_step)
