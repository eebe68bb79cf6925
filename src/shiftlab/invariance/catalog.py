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
    GRID_MODES,
    Consistency,
    DiagonalShift,
    FeatureSimilarity,
    InvarianceProtocol,
    ShiftAccuracy,
    SubpixelConsistency,
    TranslationSequence,
)

__all__ = ["AUTO", "METRIC_NAMES", "MetricChoice", "ProtocolOptions", "make_protocol"]

#: ``metrics="auto"`` and ``diagonal_mode="auto"``: chosen from the run's resize and crop (see :class:`MetricChoice`).
AUTO = "auto"

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

    ``diagonal_mode`` may be ``"auto"`` where the resize and crop are known (:class:`MetricChoice`).
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


@dataclass(frozen=True)
class MetricChoice:
    """Metrics made once a run knows its resize and crop, which may be the models' own (a pretrained model's).

    ``names``: metric names (:data:`METRIC_NAMES`), or ``"auto"``: every classification metric that the data and the
    preparation allow: ``consistency``; ``crop-consistency`` when the resized image leaves room for the crop windows
    (``resize >= crop + max_shift - 1``); ``shift-accuracy`` with labels; ``subpixel``, ``imagenet-p`` and
    ``diagonal``. ``options.diagonal_mode="auto"``: Azulay and Weiss's crop windows when the resize leaves room
    around the crop, else circular rolls.

    Example:
        >>> choice = MetricChoice("auto", ProtocolOptions(max_shift=16, diagonal_mode="auto"))
        >>> [metric.name for metric in choice.protocols(resize=256, crop=224, labelled=False)]
        ['consistency', 'crop-consistency', 'subpixel', 'imagenet-p', 'diagonal']
        >>> choice.protocols(resize=None, crop=None, labelled=False)[-1].mode
        'circular'
        >>> choice.reasons(resize=256, crop=224)[1]
        'diagonal mode auto: crop (resize 256 and crop 224; crop windows need room around the crop)'
    """

    names: str | Sequence[str] = AUTO
    options: ProtocolOptions = ProtocolOptions()

    def __post_init__(self) -> None:
        names = self.names if isinstance(self.names, str) and self.names == AUTO else list(self.names)
        if not isinstance(names, str):
            check(names, "metrics", f"give at least one of {', '.join(METRIC_NAMES)} (or auto)")
            for name in names:
                check(
                    name in METRIC_NAMES,
                    "metrics",
                    f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)} (or auto)",
                )
        check_choice(self.options.diagonal_mode, "diagonal mode", (AUTO, *GRID_MODES))
        object.__setattr__(self, "names", names)

    def protocols(self, resize: int | None, crop: int | None, labelled: bool) -> list[InvarianceProtocol]:
        """The metrics for a run whose images are resized to ``resize`` (shorter side) and cut to a centre ``crop``
        (None: not resized, not cut), with or without labels."""
        names = self.names if not isinstance(self.names, str) else self._auto_names(resize, crop, labelled)
        options = self.options
        if options.diagonal_mode == AUTO:
            options = replace(options, diagonal_mode="crop" if self._room_around(resize, crop) else "circular")
        return [make_protocol(name, options) for name in names]

    def reasons(self, resize: int | None, crop: int | None) -> list[str]:
        """What ``auto`` chose, and why, in words (nothing where no choice was left to it)."""
        geometry = f"resize {resize} and crop {crop}" if resize and crop else "no resize with a smaller crop"
        said = []
        if isinstance(self.names, str):
            verdict = "with" if self._room_for_windows(resize, crop) else "without"
            said.append(
                f"metrics auto: {verdict} crop-consistency ({geometry}; its windows, up to "
                f"{self.options.max_shift} pixels apart, need a resize of at least crop + {self.options.max_shift - 1})"
            )
        if self.options.diagonal_mode == AUTO:
            mode = "crop" if self._room_around(resize, crop) else "circular"
            said.append(f"diagonal mode auto: {mode} ({geometry}; crop windows need room around the crop)")
        return said

    def _auto_names(self, resize: int | None, crop: int | None, labelled: bool) -> list[str]:
        names = ["consistency"]
        if self._room_for_windows(resize, crop):
            names.append("crop-consistency")
        if labelled:
            names.append("shift-accuracy")
        return names + ["subpixel", "imagenet-p", "diagonal"]

    def _room_for_windows(self, resize: int | None, crop: int | None) -> bool:
        return resize is not None and crop is not None and resize >= crop + self.options.max_shift - 1

    @staticmethod
    def _room_around(resize: int | None, crop: int | None) -> bool:
        return resize is not None and crop is not None and resize > crop
