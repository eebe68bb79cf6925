"""How much a model's *predictions* change under translation: the published protocols, one documented definition each.

Each metric is a protocol (which shifted views of an image it needs; see
:mod:`shiftlab.invariance.views`) and an :class:`~shiftlab.accumulate.Accumulator` that
turns the model's outputs for those views into counts. Every state is an
integer, so results are exact under any split of the data (batches, loader
workers, processes, a resumed run). The two averages of real numbers (MAC,
cosine similarity) are summed in fixed point: each image's value is rounded
to a multiple of ``2**-32`` (:data:`FIXED_POINT_SCALE`) and added as an int64,
which makes the sum independent of the order of additions; the rounding
(2.3e-10 per image) is far below any difference worth reporting, and the sum
cannot overflow before 2**31 images.

Random shifts come from a generator seeded by the run's seed, the metric and the
image's index only (:func:`sample_seed`), so image ``i`` sees the same shifts in
any batch, worker or process.

The metrics (CLI names):

``consistency``
    APS (Chaman & Dokmanic 2021): ``K`` circular rolls of the model input,
    ``(dy, dx)`` drawn uniformly from ``[-R, R)`` per axis (``R = 32`` for ImageNet);
    the share of the ``K (K - 1) / 2`` pairs of views of an image whose top-1
    classes agree, averaged over images.
``crop-consistency``
    Zhang (2019): ``K`` windows of the model's input size at offsets drawn from
    ``[0, R)`` per axis from the corner of the centre ``(crop + R)`` square of the
    resized image (224 in 256 for ImageNet: ``--resize 256 --crop 224``); all pairs,
    as above. The windows cover ``crop + R - 1`` pixels per axis (the square's last
    row and column are never used), so that is all an image needs: one that is
    exactly that size holds every window, its corner at ``(0, 0)``.
    Zhang draws one pair per image and pass; ``K`` views give ``K (K - 1) / 2`` pairs
    of the same distribution for ``K`` forward passes.
    Both report a 95% confidence interval over images (see :class:`ConsistencyMetric`)
    and the share of images on which all ``K`` views agree.
``shift-accuracy``
    Michaeli et al. (2023): top-1 accuracy under each shift of a grid, and the
    worst case: an image counts as correct only if it is correct under every shift.
``subpixel``
    the share of images whose top-1 class survives a band-limited (Fourier)
    fractional shift, such as half a pixel, per shift and under all of them.
``imagenet-p``
    Hendrycks & Dietterich (2019), translation sequences: frames shifted
    horizontally by ``-T .. T`` pixels (``T = 20``) with black fill, cut at the
    centre crop; for difficulty ``d`` every frame ``j`` is compared with frame
    ``j + d`` (the consecutive frames of the chains ``i, i + d, i + 2d, ...``).
    Flip probability: the share of compared pairs whose top-1 differs; top-5
    distance: ``sum_{i=1..5} |(i - 1) - min(sigma(i) - 1, 5)|`` with
    ``sigma = rank_2 o rank_1^-1``. Every sequence has ``2T + 1 - d`` comparisons,
    so the mean over sequences of their mean is the total over the count. The
    published frames were 8-bit: ``--imagenet-p-8bit`` rounds the picture to 8-bit
    levels before the frames are cut (:class:`TranslationSequence`).
``diagonal``
    Azulay & Weiss (2019): the window at ``(c, c)`` (the centre crop) against the
    window at ``(c + 1, c + 1)``, the content one pixel up and left. P(top-1 change)
    and MAC, the mean absolute change of the softmax probability of the class that
    is top-1 at ``(c, c)``.
``cosine``
    for models without classes: the cosine similarity between the flattened output
    for the unshifted input and for each shift of a grid (for spatial outputs this
    measures invariance, not equivariance).
``dense-consistency``
    for segmentation models (per-pixel class maps): the share of pixels whose class
    is unchanged when the input is shifted and the prediction shifted back, and the
    mIoU between the two (Rojas-Gomez et al. 2022); see :mod:`shiftlab.invariance.dense`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from shiftlab.accumulate import Accumulator
from shiftlab.errors import check, check_choice, check_int, check_real, describe
from shiftlab.invariance.views import IDENTITY, Geometry, ViewKey
from shiftlab.shifts import SHIFT_MODES

__all__ = [
    "DEFAULT_GRID",
    "FIXED_POINT_SCALE",
    "GRID_MODES",
    "Consistency",
    "DiagonalShift",
    "FeatureSimilarity",
    "InvarianceProtocol",
    "ShiftAccuracy",
    "SubpixelConsistency",
    "TranslationSequence",
    "sample_seed",
    "top_k_distance",
]

#: Real-valued per-image values (MAC, cosine) are summed as integers in units of 1 / FIXED_POINT_SCALE.
FIXED_POINT_SCALE = 2**32
#: The default grid of shift-accuracy and cosine: every (dy, dx) in -2..2.
DEFAULT_GRID: tuple[tuple[float, float], ...] = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3))
#: How a grid metric shifts: circular rolls, windows with black fill (zero), crop windows, or Fourier shifts.
GRID_MODES = SHIFT_MODES  # the one tuple of shift modes (shiftlab.shifts)
Z_95 = 1.959963984540054  # the two-sided 95% quantile of the normal distribution

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, stream: int, index: int) -> int:
    """The seed of image ``index``'s generator: SplitMix64 over ``seed``, the metric's ``stream`` and ``index``.

    ``splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ index)``, kept to 63 bits
    (what :meth:`torch.Generator.manual_seed` takes). Neighbouring indices get
    unrelated seeds; nothing depends on how the images are batched or sharded.

    Example:
        >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 1, 3)
        True
    """
    mixed = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (stream & _MASK64)) ^ (index & _MASK64))
    return mixed & ((1 << 63) - 1)


def _stream(name: str) -> int:
    return zlib.crc32(name.encode("ascii"))


def _fixed_point(values: torch.Tensor) -> torch.Tensor:
    """float64 values as int64 multiples of 1 / FIXED_POINT_SCALE (rounded to nearest), where the values are."""
    return torch.round(values.double() * FIXED_POINT_SCALE).to(torch.int64)


def _ratio(numerator: int | float, denominator: int | float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def shifted_key(mode: str, dy: float, dx: float, geometry: Geometry) -> ViewKey:
    """The view key for the content moved by ``(dy, dx)`` in ``mode`` (see :data:`GRID_MODES`)."""
    if mode == "circular":
        return ("roll", int(dy), int(dx))
    if mode == "fourier":
        return ("fourier", float(dy), float(dx))
    top, left = geometry.top - int(dy), geometry.left - int(dx)
    if mode == "crop":
        return ("window", top, left)
    return ("zero", top, left)


def _fits_crop(shifts: Sequence[tuple[float, float]], geometry: Geometry) -> bool:
    return all(geometry.fits(geometry.top - int(dy), geometry.left - int(dx)) for dy, dx in shifts)


def _check_grid(shifts: Any, mode: str, name: str) -> tuple[tuple[float, float], ...]:
    pairs = []
    for pair in shifts:
        check(len(pair) == 2, name, f"shifts must be (dy, dx) pairs, got {pair!r}")
        dy, dx = check_real(pair[0], f"{name} shift dy"), check_real(pair[1], f"{name} shift dx")
        if mode != "fourier":
            check(
                dy == int(dy) and dx == int(dx),
                name,
                f"shift ({dy:g}, {dx:g}) is fractional: only the fourier mode shifts by fractions of a pixel",
            )
            dy, dx = int(dy), int(dx)
        pairs.append((dy, dx))
    check(pairs, name, "needs at least one shift")
    return tuple(pairs)


def _format_shift(dy: float, dx: float) -> str:
    return f"({dy:g}, {dx:g})"


# --------------------------------------------------------------------------- the metric interface


class InvarianceProtocol:
    """A protocol: the views of one image it needs, and how their outputs become counts.

    Subclasses set ``name`` (the CLI name, also the key in results), ``title``,
    ``needs_labels`` and ``output_kind``, and implement the methods below.
    """

    name: str = ""
    title: str = ""
    needs_labels: bool = False
    #: What the metric reads from a model's (main) output, checked by :meth:`output_problem`:
    #: ``"logits"`` (class scores ``(N, classes)``), ``"map"`` (per-pixel class scores
    #: ``(N, classes, h, w)``, see :mod:`shiftlab.invariance.dense`) or ``"any"`` tensor.
    output_kind: str = "logits"

    @property
    def stream(self) -> int:
        return _stream(self.name)

    @property
    def needs_margin(self) -> bool:
        """Whether the views are cut around the model input, so that it must be a crop smaller than the image."""
        return False

    def max_views(self) -> int:
        """The most views one image needs (an upper bound; shared views are evaluated once)."""
        raise NotImplementedError

    def problem(self, geometry: Geometry) -> str | None:
        """Why images of this geometry cannot be measured (``None``: they can)."""
        return None

    def output_problem(self, output: torch.Tensor, input_size: tuple[int, int]) -> str | None:
        """Why this metric cannot read ``output``, a model's output for inputs of ``input_size`` (``None``: it can).

        The answer completes "model 'NAME': ...". Class logits must be a float ``(N, classes)``
        with at least two classes.
        """
        if self.output_kind == "logits" and not (
            output.ndim == 2 and output.shape[1] >= 2 and output.is_floating_point()
        ):
            return (
                f"returns {describe(output)}, not class logits (N, classes); for per-pixel class maps"
                " (segmentation) use --metrics dense-consistency, for a model without classes --metrics cosine"
            )
        return None

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], torch.Tensor | None]:
        """The views of one image, and what the state needs to know about them (e.g. the drawn offsets)."""
        raise NotImplementedError

    def metric(self, classes: int) -> Metric:
        """A fresh accumulator for a model with ``classes`` outputs."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The protocol in words and numbers."""
        raise NotImplementedError


class Metric(Accumulator):
    """An accumulator of one metric for one model: ``update(outputs, labels, infos)``, ``compute() -> dict``.

    The outputs are reduced where they are (a GPU's logits are not copied whole); what is added to the states is
    moved to the states' :attr:`~shiftlab.accumulate.Accumulator.device` (the CPU unless :meth:`to` moved them).
    """

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        """Add ``n`` images: ``outputs`` ``(n, views, ...)`` in view order, ``labels`` ``(n,)`` (-1: none)."""
        raise NotImplementedError

    def count(self) -> int:
        """How many images have been added (a checkpoint's packs done must account for exactly these)."""
        return int(self.images)

    def rows(self) -> list[dict[str, Any]]:
        """The results as tidy rows: ``statistic``, ``at`` (a shift, difficulty, distance or ""), ``value``,
        ``count`` (what the value is an average over), ``ci_low``, ``ci_high``."""
        raise NotImplementedError


def _row(statistic: str, value: float | None, count: int, at: str = "", ci: tuple[Any, Any] = (None, None)) -> dict:
    return {"statistic": statistic, "at": at, "value": value, "count": count, "ci_low": ci[0], "ci_high": ci[1]}


def _top1(outputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Top-1 class per view, on ``device``; ties go to the lowest class index (as ``torch.argmax``)."""
    return outputs.argmax(dim=-1).to(device)


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


# --------------------------------------------------------------------------- consistency


@dataclass(frozen=True)
class Consistency(InvarianceProtocol):
    """Top-1 agreement between shifted views of an image: APS's circular protocol or Zhang's crop protocol.

    Args:
        mode: ``"circular"`` (rolls of the model input, shifts in ``[-max_shift, max_shift)`` per
            axis) or ``"crop"`` (windows of the input size at offsets in ``[0, max_shift)`` per axis
            from the corner of the centre ``crop + max_shift`` square of the resized image, as
            Zhang's ``CenterCrop(256)`` then random 224 crops; images need ``crop + max_shift - 1``
            pixels per axis).
        views: ``K >= 2`` views per image; all ``K (K - 1) / 2`` pairs are compared.
        max_shift: ``R`` above (32 in both papers' ImageNet protocols).

    Example:
        >>> metric = Consistency("circular", views=4, max_shift=2)
        >>> keys, offsets = metric.views(Geometry.of(8, 8, None), torch.Generator().manual_seed(0))
        >>> len(keys), tuple(offsets.shape)  # (dy, dx) and, for rolls, the input's size
        (4, (4, 4))
    """

    mode: str = "circular"
    views_per_image: int = 8
    max_shift: int = 32

    def __init__(self, mode: str = "circular", views: int = 8, max_shift: int = 32) -> None:
        object.__setattr__(self, "mode", check_choice(mode, "consistency mode", ("circular", "crop")))
        object.__setattr__(self, "views_per_image", check_int(views, "consistency views", minimum=2))
        object.__setattr__(self, "max_shift", check_int(max_shift, "consistency max shift", minimum=1))

    @property
    def name(self) -> str:  # type: ignore[override]
        return "consistency" if self.mode == "circular" else "crop-consistency"

    @property
    def title(self) -> str:  # type: ignore[override]
        if self.mode == "circular":
            return "Consistency under circular shifts (APS protocol)"
        return "Consistency under crop shifts (Zhang 2019 protocol)"

    def max_views(self) -> int:
        return self.views_per_image

    @property
    def needs_margin(self) -> bool:
        return self.mode == "crop"

    def _corner(self, geometry: Geometry) -> tuple[int, int]:
        """Where offset (0, 0) puts a window: the corner of the centre ``crop + R`` square, placed as
        torchvision's ``CenterCrop`` places it. An image of ``crop + R - 1`` pixels (all the windows
        need) gets ``round(-1 / 2) = 0``: the windows then fill it exactly."""
        side = geometry.size[0] + self.max_shift
        return max(0, int(round((geometry.height - side) / 2.0))), max(0, int(round((geometry.width - side) / 2.0)))

    def problem(self, geometry: Geometry) -> str | None:
        if self.mode == "circular":
            return None
        if (geometry.height, geometry.width) == geometry.size:
            return f"needs a crop smaller than the image (the window), and offsets up to {self.max_shift} around it"
        window, last = geometry.size[0], self.max_shift - 1
        need = window + last  # offsets 0 .. R - 1
        if min(geometry.height, geometry.width) < need:
            return (
                f"needs {need}x{need} pixels (a {window}x{window} window at offsets 0 to {last}),"
                f" the image has {geometry.height}x{geometry.width}"
            )
        return None

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], torch.Tensor]:
        count, limit = self.views_per_image, self.max_shift
        if self.mode == "circular":
            offsets = torch.randint(-limit, limit, (count, 2), generator=generator)
            # the input's size rides along: two rolls are as far apart as they are on the torus
            periods = torch.tensor(geometry.size, dtype=offsets.dtype).expand(count, 2)
            return [("roll", int(dy), int(dx)) for dy, dx in offsets.tolist()], torch.cat([offsets, periods], dim=1)
        offsets = torch.randint(0, limit, (count, 2), generator=generator)
        top, left = self._corner(geometry)
        return [("window", top + int(dy), left + int(dx)) for dy, dx in offsets.tolist()], offsets

    def max_distance(self) -> int:
        span = 2 * self.max_shift - 1 if self.mode == "circular" else self.max_shift - 1  # (fewer on a small torus)
        return int(math.floor(span * math.sqrt(2.0) + 0.5))

    def metric(self, classes: int) -> ConsistencyMetric:
        return ConsistencyMetric(self)

    def describe(self) -> dict[str, Any]:
        if self.mode == "circular":
            shifts = (
                f"circular rolls of the model input, (dy, dx) uniform in [-{self.max_shift}, {self.max_shift}) per axis"
            )
        else:
            shifts = (
                f"windows of the model input size at offsets uniform in [0, {self.max_shift}) per axis"
                f" from the corner of the centre square of side crop + {self.max_shift}"
                f" (images need crop + {self.max_shift - 1} pixels per axis)"
            )
        pairs = self.views_per_image * (self.views_per_image - 1) // 2
        return {
            "shifts": shifts,
            "views_per_image": self.views_per_image,
            "pairs_per_image": pairs,
            "statistic": "share of view pairs whose top-1 classes agree, averaged over images",
            "interval": "95% normal interval of the mean of the per-image agreement fractions (images as clusters)",
        }


class ConsistencyMetric(Metric):
    """Counts for :class:`Consistency`: agreeing pairs (and their squares per image), per shift distance.

    The 95% interval treats images, not pairs, as the independent units: with
    ``a_i`` the share of agreeing pairs of image ``i``, it is
    ``mean(a) +- 1.96 * s(a) / sqrt(n)`` (``s``: sample standard deviation), from
    the integer sums of agreeing pairs and of their squares. Deterministic; no
    bootstrap. Undefined for fewer than two images.
    """

    def __init__(self, metric: Consistency) -> None:
        super().__init__()
        self.metric = metric
        count = metric.views_per_image
        self.pairs_per_image = count * (count - 1) // 2
        first, second = torch.triu_indices(count, count, 1)
        self._first, self._second = first, second
        bins = metric.max_distance() + 1
        self.add_state("images", _zeros())
        self.add_state("agreeing_pairs", _zeros())
        self.add_state("agreeing_pairs_squared", _zeros())
        self.add_state("all_views_agree", _zeros())
        self.add_state("pairs_by_distance", _zeros(bins))
        self.add_state("agreeing_by_distance", _zeros(bins))

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        assert infos is not None
        top1, infos = _top1(outputs, self.device), infos.to(self.device)
        agree = top1[:, self._first] == top1[:, self._second]
        per_image = agree.sum(dim=1, dtype=torch.int64)
        self.images += top1.shape[0]
        self.agreeing_pairs += per_image.sum()
        self.agreeing_pairs_squared += (per_image * per_image).sum()
        self.all_views_agree += (per_image == self.pairs_per_image).sum()
        delta = (infos[:, self._first, :2] - infos[:, self._second, :2]).to(torch.int64).abs()
        if infos.shape[-1] == 4:  # circular rolls: the distance around the torus of the input's size
            period = infos[:, self._first, 2:].to(torch.int64)
            delta = torch.minimum(delta % period, period - delta % period)
        squared = (delta * delta).sum(dim=-1)
        distance = torch.floor(torch.sqrt(squared.double()) + 0.5).to(torch.int64).flatten()
        bins = self.pairs_by_distance.shape[0]
        self.pairs_by_distance += torch.bincount(distance, minlength=bins)
        self.agreeing_by_distance += torch.bincount(distance[agree.flatten()], minlength=bins)

    def compute(self) -> dict[str, Any]:
        images, pairs = int(self.images), self.pairs_per_image
        agreeing, squared = int(self.agreeing_pairs), int(self.agreeing_pairs_squared)
        consistency = _ratio(agreeing, images * pairs)
        interval: tuple[float | None, float | None] = (None, None)
        if images >= 2 and consistency is not None:
            # sum of squared deviations of a_i = agreeing_i / pairs, from the integer sums
            deviations = (squared - agreeing * agreeing / images) / (pairs * pairs)
            half = Z_95 * math.sqrt(max(deviations, 0.0) / (images - 1) / images)
            interval = (max(0.0, consistency - half), min(1.0, consistency + half))
        by_distance = [
            {"distance": distance, "pairs": int(total), "agreeing": int(agree), "consistency": _ratio(agree, total)}
            for distance, (total, agree) in enumerate(
                zip(self.pairs_by_distance.tolist(), self.agreeing_by_distance.tolist())
            )
            if total
        ]
        return {
            "images": images,
            "pairs": images * pairs,
            "agreeing_pairs": agreeing,
            "consistency": consistency,
            "ci95": list(interval),
            "all_views_agree": _ratio(int(self.all_views_agree), images),
            "by_distance": by_distance,
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        rows = [
            _row("consistency", result["consistency"], result["pairs"], ci=(result["ci95"][0], result["ci95"][1])),
            _row("all_views_agree", result["all_views_agree"], result["images"]),
        ]
        rows += [
            _row("consistency", item["consistency"], item["pairs"], at=f"distance {item['distance']}")
            for item in result["by_distance"]
        ]
        return rows


# --------------------------------------------------------------------------- accuracy under shift


@dataclass(frozen=True)
class _GridProtocol(InvarianceProtocol):
    """A metric over a grid of shifts of one mode: the unshifted input, then each shift of the grid."""

    shifts: tuple[tuple[float, float], ...] = field(default=((0, 0),))
    mode: str = "circular"

    def __init__(self, shifts: Sequence[tuple[float, float]], mode: str = "circular") -> None:
        object.__setattr__(self, "mode", check_choice(mode, f"{self.name} mode", GRID_MODES))
        object.__setattr__(self, "shifts", _check_grid(shifts, self.mode, self.name))

    def max_views(self) -> int:
        return len(self.shifts) + 1

    @property
    def needs_margin(self) -> bool:
        return self.mode == "crop" and any(dy or dx for dy, dx in self.shifts)

    def problem(self, geometry: Geometry) -> str | None:
        if self.mode == "crop" and not _fits_crop(self.shifts, geometry):
            return _crop_problem(self.shifts, geometry)
        return None

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], None]:
        return [IDENTITY] + [shifted_key(self.mode, dy, dx, geometry) for dy, dx in self.shifts], None


@dataclass(frozen=True, init=False)
class ShiftAccuracy(_GridProtocol):
    """Top-1 accuracy under each shift of a grid, and the worst case over the grid (Michaeli et al. 2023).

    Args:
        shifts: ``(dy, dx)`` pairs (see :func:`shiftlab.parse_shifts`); whole pixels except in fourier mode.
        mode: one of :data:`GRID_MODES`.

    Example:
        >>> metric = ShiftAccuracy([(0, 0), (0, 1)], mode="circular")
        >>> metric.views(Geometry.of(8, 8, None), torch.Generator())[0]
        [('identity',), ('roll', 0, 0), ('roll', 0, 1)]
    """

    name = "shift-accuracy"
    title = "Accuracy under shift, and the worst case over the grid"
    needs_labels = True

    def metric(self, classes: int) -> ShiftAccuracyMetric:
        return ShiftAccuracyMetric(self)

    def describe(self) -> dict[str, Any]:
        return {
            "shifts": [list(pair) for pair in self.shifts],
            "mode": self.mode,
            "statistic": "top-1 accuracy per shift; worst case: correct under every shift of the grid",
        }


def _crop_problem(shifts: Sequence[tuple[float, float]], geometry: Geometry) -> str:
    reach_y = max(abs(int(dy)) for dy, _ in shifts)
    reach_x = max(abs(int(dx)) for _, dx in shifts)
    return (
        f"crop shifts up to ({reach_y}, {reach_x}) need {reach_y} and {reach_x} pixels around the"
        f" {geometry.size[0]}x{geometry.size[1]} crop; the image has {geometry.height}x{geometry.width}"
    )


class ShiftAccuracyMetric(Metric):
    """Counts for :class:`ShiftAccuracy`: correct images unshifted, per shift, under every shift; unchanged top-1."""

    def __init__(self, metric: ShiftAccuracy) -> None:
        super().__init__()
        self.metric = metric
        count = len(metric.shifts)
        self.add_state("images", _zeros())
        self.add_state("correct_unshifted", _zeros())
        self.add_state("correct_by_shift", _zeros(count))
        self.add_state("correct_under_every_shift", _zeros())
        self.add_state("unchanged_by_shift", _zeros(count))

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        top1 = _top1(outputs, self.device)
        correct = top1 == labels.to(self.device)[:, None]
        self.images += top1.shape[0]
        self.correct_unshifted += correct[:, 0].sum()
        self.correct_by_shift += correct[:, 1:].sum(dim=0)
        self.correct_under_every_shift += correct[:, 1:].all(dim=1).sum()
        self.unchanged_by_shift += (top1[:, 1:] == top1[:, :1]).sum(dim=0)

    def compute(self) -> dict[str, Any]:
        images = int(self.images)
        per_shift: list[dict[str, Any]] = [
            {
                "shift": list(shift),
                "accuracy": _ratio(correct, images),
                "unchanged": _ratio(unchanged, images),
            }
            for shift, correct, unchanged in zip(
                self.metric.shifts, self.correct_by_shift.tolist(), self.unchanged_by_shift.tolist()
            )
        ]
        accuracies: list[float] = [item["accuracy"] for item in per_shift if item["accuracy"] is not None]
        return {
            "images": images,
            "accuracy_unshifted": _ratio(int(self.correct_unshifted), images),
            "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
            "worst_case_accuracy": _ratio(int(self.correct_under_every_shift), images),
            "per_shift": per_shift,
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        images = result["images"]
        rows = [
            _row("accuracy_unshifted", result["accuracy_unshifted"], images),
            _row("mean_accuracy", result["mean_accuracy"], images * len(self.metric.shifts)),
            _row("worst_case_accuracy", result["worst_case_accuracy"], images),
        ]
        for item in result["per_shift"]:
            rows.append(_row("accuracy", item["accuracy"], images, at=_format_shift(*item["shift"])))
            rows.append(_row("unchanged", item["unchanged"], images, at=_format_shift(*item["shift"])))
        return rows


# --------------------------------------------------------------------------- sub-pixel consistency


@dataclass(frozen=True)
class SubpixelConsistency(InvarianceProtocol):
    """The share of images whose top-1 class survives each band-limited fractional shift, and all of them.

    Args:
        shifts: fractional ``(dy, dx)`` pairs; default half a pixel down, right, and both.

    Example:
        >>> SubpixelConsistency().views(Geometry.of(8, 8, None), torch.Generator())[0][1]
        ('fourier', 0.0, 0.5)
    """

    shifts: tuple[tuple[float, float], ...] = ((0.0, 0.5), (0.5, 0.0), (0.5, 0.5))
    name = "subpixel"
    title = "Consistency under sub-pixel (band-limited Fourier) shifts"

    def __init__(self, shifts: Sequence[tuple[float, float]] = ((0.0, 0.5), (0.5, 0.0), (0.5, 0.5))) -> None:
        pairs = _check_grid(shifts, "fourier", "subpixel")
        object.__setattr__(self, "shifts", tuple((float(dy), float(dx)) for dy, dx in pairs))

    def max_views(self) -> int:
        return len(self.shifts) + 1

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], None]:
        return [IDENTITY] + [("fourier", dy, dx) for dy, dx in self.shifts], None

    def metric(self, classes: int) -> SubpixelMetric:
        return SubpixelMetric(self)

    def describe(self) -> dict[str, Any]:
        return {
            "shifts": [list(pair) for pair in self.shifts],
            "mode": "fourier (band-limited, circular; on even sizes the Nyquist frequency keeps its real part)",
            "statistic": "share of images whose top-1 class equals that of the unshifted input",
        }


class SubpixelMetric(Metric):
    """Counts for :class:`SubpixelConsistency`."""

    def __init__(self, metric: SubpixelConsistency) -> None:
        super().__init__()
        self.metric = metric
        self.add_state("images", _zeros())
        self.add_state("unchanged_by_shift", _zeros(len(metric.shifts)))
        self.add_state("unchanged_under_every_shift", _zeros())

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        top1 = _top1(outputs, self.device)
        unchanged = top1[:, 1:] == top1[:, :1]
        self.images += top1.shape[0]
        self.unchanged_by_shift += unchanged.sum(dim=0)
        self.unchanged_under_every_shift += unchanged.all(dim=1).sum()

    def compute(self) -> dict[str, Any]:
        images = int(self.images)
        return {
            "images": images,
            "consistency_under_every_shift": _ratio(int(self.unchanged_under_every_shift), images),
            "per_shift": [
                {"shift": list(shift), "consistency": _ratio(count, images)}
                for shift, count in zip(self.metric.shifts, self.unchanged_by_shift.tolist())
            ],
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        rows = [_row("consistency_under_every_shift", result["consistency_under_every_shift"], result["images"])]
        rows += [
            _row("consistency", item["consistency"], result["images"], at=_format_shift(*item["shift"]))
            for item in result["per_shift"]
        ]
        return rows


# --------------------------------------------------------------------------- ImageNet-P translation sequences


def top_k_distance(first: torch.Tensor, second: torch.Tensor, k: int = 5) -> torch.Tensor:
    """ImageNet-P's top-k distance between the rankings of two logit vectors (last axis), per pair.

    With ``sigma = rank_2 o rank_1^-1`` (``sigma(i)``: the rank under ``second`` of
    the class ranked ``i`` under ``first``), ``d = sum_{i=1..k} |(i - 1) - min(sigma(i) - 1, k)|``.
    Ranks are ordinal: equal logits are ranked by class index (scipy's ``rankdata(-x, "ordinal")``).

    Example:
        >>> top_k_distance(torch.tensor([5.0, 4, 3, 2, 1, 0]), torch.tensor([4.0, 5, 3, 2, 1, 0]))
        tensor(2)
        >>> top_k_distance(torch.tensor([5.0, 4, 3, 2, 1, 0]), torch.tensor([0.0, 4, 3, 2, 1, 5]))
        tensor(5)
    """
    order_first = torch.sort(first, dim=-1, descending=True, stable=True).indices[..., :k]
    rank_second = torch.argsort(torch.sort(second, dim=-1, descending=True, stable=True).indices, dim=-1)
    sigma = torch.gather(rank_second, -1, order_first)  # 0-based ranks under `second` of first's top k
    positions = torch.arange(k, device=first.device)
    return (positions - torch.clamp(sigma, max=k)).abs().sum(dim=-1)


@dataclass(frozen=True)
class TranslationSequence(InvarianceProtocol):
    """ImageNet-P's translation sequences: flip probability and top-5 distance per difficulty.

    ImageNet-P's published frames were made from a picture resized to 8-bit pixels (PIL), saved as PNG and
    compressed as video (H.264). By default shiftlab cuts its frames from the resized picture as it is, in floating
    point; ``eight_bit=True`` rounds it to 8-bit levels first (:func:`shiftlab.invariance.views.round_to_8bit`), as the
    published frames were. The video compression is not reproduced.

    Args:
        max_shift: frames shift the picture horizontally by ``-max_shift .. max_shift`` pixels (20).
        difficulties: the frame steps compared (ImageNet-P: 1, 2, 3).
        eight_bit: round the picture to 8-bit levels before the frames are cut (``--imagenet-p-8bit``).

    Example:
        >>> metric = TranslationSequence(max_shift=1, difficulties=(1, 2))
        >>> metric.views(Geometry.of(4, 6, crop=4), torch.Generator())[0]  # the crop's corner is (0, 1)
        [('zero', 0, 2), ('zero', 0, 1), ('zero', 0, 0)]
        >>> rounded = TranslationSequence(max_shift=1, difficulties=(1,), eight_bit=True)
        >>> rounded.views(Geometry.of(4, 6, crop=4), torch.Generator())[0]
        [('zero8', 0, 2), ('zero8', 0, 1), ('zero8', 0, 0)]
    """

    max_shift: int = 20
    difficulties: tuple[int, ...] = (1, 2, 3)
    eight_bit: bool = False
    name = "imagenet-p"
    title = "Translation sequences (ImageNet-P): flip probability and top-5 distance"

    def __init__(self, max_shift: int = 20, difficulties: Sequence[int] = (1, 2, 3), eight_bit: bool = False) -> None:
        check(isinstance(eight_bit, bool), "imagenet-p eight_bit", f"expected True or False, got {eight_bit!r}")
        object.__setattr__(self, "eight_bit", eight_bit)
        object.__setattr__(self, "max_shift", check_int(max_shift, "imagenet-p max shift", minimum=1))
        frames = 2 * self.max_shift + 1
        steps = tuple(check_int(d, "imagenet-p difficulty", minimum=1, maximum=frames - 1) for d in difficulties)
        check(
            steps and len(set(steps)) == len(steps),
            "imagenet-p difficulties",
            f"expected distinct steps, got {difficulties!r}",
        )
        object.__setattr__(self, "difficulties", steps)

    @property
    def frames(self) -> int:
        return 2 * self.max_shift + 1

    def max_views(self) -> int:
        return self.frames

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], None]:
        keys = [shifted_key("zero", 0, dx, geometry) for dx in range(-self.max_shift, self.max_shift + 1)]
        return ([("zero8", *key[1:]) for key in keys] if self.eight_bit else keys), None

    def metric(self, classes: int) -> SequenceMetric:
        return SequenceMetric(self, classes)

    def describe(self) -> dict[str, Any]:
        rounded = ", rounded to 8-bit levels (round(255 v) / 255, halves up) before the frames are cut"
        return {
            "frames": (
                f"{self.frames}: the picture{rounded if self.eight_bit else ''} moved right by "
                f"-{self.max_shift}..{self.max_shift} px, black fill, then the centre crop"
            ),
            "eight_bit": self.eight_bit,
            "difficulties": list(self.difficulties),
            "statistic": (
                "flip probability: share of compared frame pairs (j, j + d) whose top-1 differs;"
                " top-5 distance: their mean"
            ),
            "note": (
                "ImageNet-P's published frames were rounded to 8 bits and compressed as video (H.264); "
                + (
                    "these are rounded to 8 bits, not compressed"
                    if self.eight_bit
                    else "these are exact (in floating point): --imagenet-p-8bit rounds them as the published were"
                )
            ),
        }


class SequenceMetric(Metric):
    """Counts for :class:`TranslationSequence`: flips and top-k distances per difficulty, flips per frame step."""

    def __init__(self, metric: TranslationSequence, classes: int) -> None:
        super().__init__()
        self.metric = metric
        self.k = min(5, classes)
        count = len(metric.difficulties)
        self.add_state("sequences", _zeros())
        self.add_state("flips", _zeros(count))
        self.add_state("top_k_distance", _zeros(count))
        self.add_state("flips_by_step", _zeros(metric.frames - 1))
        self.add_state("differs_from_centre", _zeros(metric.frames))

    def count(self) -> int:
        return int(self.sequences)

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        top1 = _top1(outputs, self.device)
        self.sequences += top1.shape[0]
        for position, step in enumerate(self.metric.difficulties):
            self.flips[position] += (top1[:, :-step] != top1[:, step:]).sum()
            distances = top_k_distance(outputs[:, :-step], outputs[:, step:], self.k)
            self.top_k_distance[position] += distances.sum().to(self.device)
        self.flips_by_step += (top1[:, :-1] != top1[:, 1:]).sum(dim=0)
        centre = self.metric.max_shift
        self.differs_from_centre += (top1 != top1[:, centre : centre + 1]).sum(dim=0)

    def compute(self) -> dict[str, Any]:
        sequences, frames = int(self.sequences), self.metric.frames
        per_difficulty = []
        for position, step in enumerate(self.metric.difficulties):
            comparisons = sequences * (frames - step)
            per_difficulty.append(
                {
                    "difficulty": step,
                    "comparisons": comparisons,
                    "flip_probability": _ratio(int(self.flips[position]), comparisons),
                    f"top{self.k}_distance": _ratio(int(self.top_k_distance[position]), comparisons),
                }
            )
        shifts = list(range(-self.metric.max_shift, self.metric.max_shift + 1))
        return {
            "sequences": sequences,
            "k": self.k,
            "per_difficulty": per_difficulty,
            "flip_rate_by_step": [
                {"from_shift": shifts[j], "to_shift": shifts[j + 1], "flip_rate": _ratio(count, sequences)}
                for j, count in enumerate(self.flips_by_step.tolist())
            ],
            "differs_from_centre": [
                {"shift": shift, "rate": _ratio(count, sequences)}
                for shift, count in zip(shifts, self.differs_from_centre.tolist())
            ],
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        rows = []
        for item in result["per_difficulty"]:
            at = f"difficulty {item['difficulty']}"
            rows.append(_row("flip_probability", item["flip_probability"], item["comparisons"], at=at))
            rows.append(_row(f"top{self.k}_distance", item[f"top{self.k}_distance"], item["comparisons"], at=at))
        return rows


# --------------------------------------------------------------------------- Azulay & Weiss's one-pixel diagonal shift


@dataclass(frozen=True)
class DiagonalShift(InvarianceProtocol):
    """P(top-1 change) and MAC between the windows at ``(c, c)`` and ``(c + 1, c + 1)`` (Azulay & Weiss 2019).

    Args:
        mode: ``"crop"`` (two windows of the resized image, real content; needs a crop
            smaller than the image) or ``"circular"``, ``"zero"``, ``"fourier"`` (the content
            moved up and left by one pixel in that mode).

    Example:
        >>> DiagonalShift().views(Geometry.of(10, 10, crop=8), torch.Generator())[0]
        [('identity',), ('window', 2, 2)]
    """

    mode: str = "crop"
    name = "diagonal"
    title = "One-pixel diagonal shift (Azulay & Weiss): P(top-1 change) and MAC"

    def __init__(self, mode: str = "crop") -> None:
        object.__setattr__(self, "mode", check_choice(mode, "diagonal mode", GRID_MODES))

    def max_views(self) -> int:
        return 2

    @property
    def needs_margin(self) -> bool:
        return self.mode == "crop"

    def problem(self, geometry: Geometry) -> str | None:
        if self.mode == "crop" and not _fits_crop([(-1, -1)], geometry):
            return (
                f"the crop protocol needs a window (--crop) at least one pixel smaller than the image,"
                f" which is {geometry.height}x{geometry.width} (or use the circular mode)"
            )
        return None

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], None]:
        return [IDENTITY, shifted_key(self.mode, -1, -1, geometry)], None

    def metric(self, classes: int) -> DiagonalMetric:
        return DiagonalMetric(self)

    def describe(self) -> dict[str, Any]:
        return {
            "shift": "window (c, c) -> (c + 1, c + 1): the content moves one pixel up and left",
            "mode": self.mode,
            "statistic": (
                "P(top-1 change); MAC: mean |p(y) - p'(y)| of the softmax probability of the class y"
                " that is top-1 at (c, c)"
            ),
            "fixed_point": f"MAC summed in units of 2^-{int(math.log2(FIXED_POINT_SCALE))} per image",
        }


class DiagonalMetric(Metric):
    """Counts for :class:`DiagonalShift`; MAC summed in fixed point (see the module docstring)."""

    def __init__(self, metric: DiagonalShift) -> None:
        super().__init__()
        self.metric = metric
        self.add_state("images", _zeros())
        self.add_state("changed", _zeros())
        self.add_state("absolute_change_fixed", _zeros())

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        top1 = outputs.argmax(dim=-1)
        probabilities = torch.softmax(outputs.double(), dim=-1)
        chosen = top1[:, :1]
        before = probabilities[:, 0].gather(-1, chosen)[:, 0]
        after = probabilities[:, 1].gather(-1, chosen)[:, 0]
        self.images += top1.shape[0]
        self.changed += (top1[:, 0] != top1[:, 1]).sum().to(self.device)
        self.absolute_change_fixed += _fixed_point((before - after).abs()).sum().to(self.device)

    def compute(self) -> dict[str, Any]:
        images = int(self.images)
        mac = _ratio(int(self.absolute_change_fixed), images * FIXED_POINT_SCALE)
        return {"images": images, "p_top1_change": _ratio(int(self.changed), images), "mac": mac}

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        return [
            _row("p_top1_change", result["p_top1_change"], result["images"]),
            _row("mac", result["mac"], result["images"]),
        ]


# --------------------------------------------------------------------------- cosine similarity of features


@dataclass(frozen=True, init=False)
class FeatureSimilarity(_GridProtocol):
    """Cosine similarity of a model's flattened output for the unshifted input and for each shift of a grid.

    For models without classes (embeddings, feature extractors). Two zero vectors
    count as identical (1); a zero vector against a non-zero one as 0.

    Example:
        >>> FeatureSimilarity([(0, 1)]).views(Geometry.of(8, 8, None), torch.Generator())[0]
        [('identity',), ('roll', 0, 1)]
    """

    name = "cosine"
    title = "Cosine similarity of the output under shift"
    output_kind = "any"

    def metric(self, classes: int) -> CosineMetric:
        return CosineMetric(self)

    def describe(self) -> dict[str, Any]:
        return {
            "shifts": [list(pair) for pair in self.shifts],
            "mode": self.mode,
            "statistic": "cosine similarity of the flattened outputs (unshifted vs shifted), mean and minimum",
            "fixed_point": f"summed in units of 2^-{int(math.log2(FIXED_POINT_SCALE))} per image",
        }


class CosineMetric(Metric):
    """Fixed-point sums and minima of the cosine similarity per shift."""

    def __init__(self, metric: FeatureSimilarity) -> None:
        super().__init__()
        self.metric = metric
        count = len(metric.shifts)
        self.add_state("images", _zeros())
        self.add_state("cosine_fixed", _zeros(count))
        self.add_state("minimum_fixed", torch.full((count,), torch.iinfo(torch.int64).max), reduce="min")

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        flat = outputs.flatten(2).double()
        reference, shifted = flat[:, :1], flat[:, 1:]
        dot = (reference * shifted).sum(dim=-1)
        norms = reference.norm(dim=-1) * shifted.norm(dim=-1)
        both_zero = (reference.norm(dim=-1) == 0) & (shifted.norm(dim=-1) == 0)
        cosine = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
        cosine = torch.where(both_zero, torch.ones_like(cosine), cosine).clamp(-1.0, 1.0)
        fixed = _fixed_point(cosine).to(self.device)
        self.images += fixed.shape[0]
        self.cosine_fixed += fixed.sum(dim=0)
        torch.minimum(self.minimum_fixed, fixed.min(dim=0).values, out=self.minimum_fixed)

    def compute(self) -> dict[str, Any]:
        images = int(self.images)
        per_shift: list[dict[str, Any]] = [
            {
                "shift": list(shift),
                "mean_cosine": _ratio(total, images * FIXED_POINT_SCALE),
                "min_cosine": minimum / FIXED_POINT_SCALE if images else None,
            }
            for shift, total, minimum in zip(
                self.metric.shifts, self.cosine_fixed.tolist(), self.minimum_fixed.tolist()
            )
        ]
        means: list[float] = [item["mean_cosine"] for item in per_shift if item["mean_cosine"] is not None]
        minima: list[float] = [item["min_cosine"] for item in per_shift if item["min_cosine"] is not None]
        return {
            "images": images,
            "mean_cosine": sum(means) / len(means) if means else None,
            "min_cosine": min(minima) if minima else None,
            "per_shift": per_shift,
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        images = result["images"]
        rows = [
            _row("mean_cosine", result["mean_cosine"], images * len(self.metric.shifts)),
            _row("min_cosine", result["min_cosine"], images),
        ]
        for item in result["per_shift"]:
            rows.append(_row("mean_cosine", item["mean_cosine"], images, at=_format_shift(*item["shift"])))
        return rows
