"""Shift consistency of dense predictions (segmentation maps): the ``dense-consistency`` metric.

A segmentation model gives per-pixel class scores ``(N, classes, h, w)``; the predicted class of a
pixel is their argmax (ties to the lowest class, as :func:`torch.argmax`; a single channel is read as
binary logits, class 1 where it is positive). Shifting the input should shift the prediction. The
metric shifts the input, shifts the prediction back, and counts the compared pixels whose predicted
class is unchanged, with the mean intersection over union (mIoU) between the two aligned predictions.

**Protocol** (Rojas-Gomez et al. 2022, learnable polyphase sampling, whose code calls the share of
unchanged pixels "mASSC"): the prediction for the unshifted model input (the *reference*) is
compared with the prediction for each of ``K - 1`` shifted inputs, ``(dy, dx)`` drawn uniformly
from the integers in ``[-R, R]`` per axis (LPS: 5 shifts, ``R = 32``; ``(0, 0)`` can be drawn, as
there). The content moves down by ``dy`` and right by ``dx``. Modes:

``circular``
    the model input rolled (LPS's circular protocol); the prediction is rolled back and every
    pixel is compared. A network whose every layer commutes with circular shifts (circular
    padding and no stride, or polyphase sampling) scores 100%.
``crop``
    the window of the model's input size moved over the resized image (real content everywhere,
    as in Zhang 2019's crop protocol); only the pixels that both windows see, their overlap,
    are compared. Images need ``R`` pixels around the centre crop on every side.
``zero``
    the picture moved with black fill (LPS's "linear" shift); the overlap is compared, as in crop.

**Maps smaller than the input.** Maps of the input's size (upsampled, as torchvision's
segmentation models return them) align at any shift. A map smaller by a whole stride ``s`` per
axis (``h = H / s``) moves by whole pixels only under shifts that are multiples of ``s``: there the
reference pixel ``i`` meets the shifted pixel ``i + dy / s``. The metric draws multiples of
``step`` (``DenseConsistency(step=s)``, ``--dense-step s``) and refuses, in one line, a model whose
stride does not divide ``step``: under other shifts the two maps sample different points and no
pixel-for-pixel comparison is exact.

**Numbers** (sums over every compared pair of every image; integer states, so they are the same
under any batching, loader workers, processes or a resumed run):

* ``consistency``: unchanged pixels / compared pixels, pooled. LPS averages per shift, which is the
  same number when every pair compares as many pixels (circular mode, images of one size);
  ``consistency_per_comparison`` is that average (each pair's share summed in fixed point, units
  of ``2**-32``).
* ``miou``: for each class ``c``, ``I_c`` = compared pixels that both aligned predictions assign to
  ``c`` and ``U_c`` = those that either assigns to ``c``, summed over the data set; the mean of
  ``I_c / U_c`` over the classes with ``U_c > 0`` (present in either prediction). Counts are pooled
  over the data set (PASCAL VOC's convention), not averaged per image.
* ``unchanged_maps``: the share of pairs whose every compared pixel agrees.
* ``by_distance``: consistency by the length of the shift; ``by_position``: compared and unchanged
  pixels by where they lie in the reference map, on a :data:`POSITION_BINS` square grid of equal
  fractions of its height and width (where the changes happen: near the borders, at object edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from shiftlab.errors import check, check_choice, check_int, describe, fail
from shiftlab.invariance.protocols import (
    FIXED_POINT_SCALE,
    InvarianceProtocol,
    Metric,
    _ratio,
    _row,
    _zeros,
    shifted_key,
)
from shiftlab.invariance.views import IDENTITY, Geometry, ViewKey

__all__ = [
    "DENSE_MODES",
    "POSITION_BINS",
    "DenseConsistency",
    "DenseConsistencyMetric",
    "align_predictions",
    "map_stride",
    "predicted_classes",
]

#: How dense-consistency moves the input: rolls, crop windows, or the picture with black fill.
DENSE_MODES: tuple[str, ...] = ("circular", "crop", "zero")
#: Rows (and columns) of the grid that counts compared pixels by where they lie in the reference map.
POSITION_BINS = 16


def predicted_classes(scores: torch.Tensor) -> torch.Tensor:
    """The class of every pixel: the argmax over the channel axis (``dim=-3``), or ``scores > 0`` for one channel.

    Shape:
        - scores: :math:`(..., C, h, w)`
        - output: :math:`(..., h, w)`, int64

    Example:
        >>> predicted_classes(torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])).tolist()  # a tie goes to class 0
        [[0, 0]]
        >>> predicted_classes(torch.tensor([[[-1.0, 2.0]]])).tolist()  # one channel: binary logits
        [[0, 1]]
    """
    if scores.shape[-3] == 1:
        return (scores[..., 0, :, :] > 0).to(torch.int64)
    return scores.argmax(dim=-3)


def map_stride(input_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int] | None:
    """The whole stride ``(sy, sx)`` with ``input = map * stride`` per axis, or ``None`` when there is none.

    Example:
        >>> map_stride((224, 224), (28, 28)), map_stride((224, 224), (224, 224)), map_stride((225, 225), (113, 113))
        ((8, 8), (1, 1), None)
    """
    (height, width), (rows, cols) = input_size, map_size
    if rows <= 0 or cols <= 0 or height % rows or width % cols:
        return None
    return height // rows, width // cols


def align_predictions(
    reference: torch.Tensor, shifted: torch.Tensor, shift: tuple[int, int], mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels of two maps that show the same content, aligned; the borders excluded exactly.

    ``reference`` is the map for the unshifted input, ``shifted`` the map for the input moved down
    by ``dy`` and right by ``dx`` map pixels (``shift = (dy, dx)``, already divided by the map's stride).

    * ``"circular"``: ``shifted`` rolled back by ``(-dy, -dx)``; every pixel.
    * ``"crop"``, ``"zero"``: ``reference[i, j]`` against ``shifted[i + dy, j + dx]`` wherever both
      exist, the overlap of the two windows (empty when a shift reaches the map's size).

    Shape:
        - reference, shifted: :math:`(..., h, w)`
        - output: two tensors :math:`(..., h', w')`: the whole map (circular) or the overlap

    Example:
        >>> reference = torch.arange(9).reshape(3, 3)
        >>> shifted = torch.roll(reference, (1, 0), dims=(0, 1))  # content moved down by one
        >>> [part.tolist() for part in align_predictions(reference, shifted, (1, 0), "crop")]
        [[[0, 1, 2], [3, 4, 5]], [[0, 1, 2], [3, 4, 5]]]
    """
    check_choice(mode, "dense-consistency mode", DENSE_MODES)
    check(reference.shape == shifted.shape, "align_predictions", "expected two maps of one shape")
    dy, dx = int(shift[0]), int(shift[1])
    if mode == "circular":
        return reference, torch.roll(shifted, shifts=(-dy, -dx), dims=(-2, -1))
    top, bottom, left, right = _overlap(reference.shape[-2], reference.shape[-1], dy, dx)
    return (
        reference[..., top:bottom, left:right],
        shifted[..., top + dy : bottom + dy, left + dx : right + dx],
    )


def _overlap(rows: int, cols: int, dy: int, dx: int) -> tuple[int, int, int, int]:
    """The rows ``[top, bottom)`` and columns ``[left, right)`` of the reference map whose content the map of the
    input moved by ``(dy, dx)`` also shows (empty when a shift reaches the map's size)."""
    top, bottom = max(0, -dy), min(rows, rows - dy)
    left, right = max(0, -dx), min(cols, cols - dx)
    return top, max(bottom, top), left, max(right, left)


@dataclass(frozen=True)
class DenseConsistency(InvarianceProtocol):
    """Per-pixel class agreement and mIoU between the prediction for the unshifted input and each shift's, aligned.

    See the module docstring for the protocol and the definitions.

    Args:
        mode: ``"circular"``, ``"crop"`` or ``"zero"`` (:data:`DENSE_MODES`).
        views: ``K >= 2``: the unshifted input and ``K - 1`` shifted copies per image.
        max_shift: ``R``: shifts uniform in ``[-R, R]`` per axis (32, as LPS).
        step: shifts are multiples of ``step`` (a map at stride ``s`` needs ``s | step``).

    Example:
        >>> metric = DenseConsistency("circular", views=3, max_shift=4)
        >>> keys, infos = metric.views(Geometry.of(16, 16, None), torch.Generator().manual_seed(0))
        >>> keys[0], len(keys), tuple(infos.shape)  # the reference first; (dy, dx, H, W) per shifted view
        (('identity',), 3, (2, 4))
    """

    mode: str = "circular"
    views_per_image: int = 8
    max_shift: int = 32
    step: int = 1
    name = "dense-consistency"
    title = "Dense consistency under shift: per-pixel classes and mIoU (LPS protocol)"
    output_kind = "map"

    def __init__(self, mode: str = "circular", views: int = 8, max_shift: int = 32, step: int = 1) -> None:
        object.__setattr__(self, "mode", check_choice(mode, "dense-consistency mode", DENSE_MODES))
        object.__setattr__(self, "views_per_image", check_int(views, "dense-consistency views", minimum=2))
        object.__setattr__(self, "step", check_int(step, "dense-consistency step", minimum=1))
        shift = check_int(max_shift, "dense-consistency max shift", minimum=1)
        check(
            shift >= self.step,
            "dense-consistency max shift",
            f"is {shift}, smaller than the step {self.step}: every shift would be (0, 0)",
        )
        object.__setattr__(self, "max_shift", shift)

    @property
    def reach(self) -> int:
        """The largest shift drawn: the largest multiple of ``step`` up to ``max_shift``."""
        return self.step * (self.max_shift // self.step)

    def max_views(self) -> int:
        return self.views_per_image

    @property
    def needs_margin(self) -> bool:
        return self.mode == "crop"

    def problem(self, geometry: Geometry) -> str | None:
        if self.mode == "circular":
            return None
        reach, (rows, cols) = self.reach, geometry.size
        if reach >= min(rows, cols):
            return f"shifts up to {reach} px leave no overlap with a {rows}x{cols} model input"
        if self.mode == "zero":
            return None
        if (geometry.height, geometry.width) == geometry.size:
            return f"needs a crop smaller than the image: the window moves up to {reach} px each way around it"
        if not (
            geometry.fits(geometry.top - reach, geometry.left - reach)
            and geometry.fits(geometry.top + reach, geometry.left + reach)
        ):
            return (
                f"needs {rows + 2 * reach}x{cols + 2 * reach} pixels (the {rows}x{cols} window moved up to"
                f" {reach} px each way), the image has {geometry.height}x{geometry.width}"
            )
        return None

    def output_problem(self, output: torch.Tensor, input_size: tuple[int, int]) -> str | None:
        if output.ndim != 4 or not output.is_floating_point():
            return (
                f"returns {describe(output)}, not per-pixel class scores (N, classes, h, w),"
                " which dense-consistency compares"
            )
        height, width = int(input_size[0]), int(input_size[1])
        rows, cols = int(output.shape[-2]), int(output.shape[-1])
        stride = map_stride((height, width), (rows, cols))
        if stride is None:
            return (
                f"returns {rows}x{cols} maps for {height}x{width} inputs: not the input's size over a whole stride,"
                " so shifted maps cannot be aligned pixel for pixel (upsample the output to the input size)"
            )
        if self.step % stride[0] or self.step % stride[1]:
            needed = math.lcm(self.step, *stride)
            return (
                f"returns {rows}x{cols} maps for {height}x{width} inputs (stride {_stride_text(stride)}): such a map"
                f" moves by whole pixels only under shifts that are multiples of the stride, and dense-consistency"
                f" draws multiples of {self.step}; use --dense-step {needed} (DenseConsistency(step={needed})),"
                " or upsample the output to the input size"
            )
        return None

    def views(self, geometry: Geometry, generator: torch.Generator) -> tuple[list[ViewKey], torch.Tensor]:
        count, steps = self.views_per_image - 1, self.max_shift // self.step
        shifts = torch.randint(-steps, steps + 1, (count, 2), generator=generator) * self.step
        keys = [IDENTITY] + [shifted_key(self.mode, dy, dx, geometry) for dy, dx in shifts.tolist()]
        size = torch.tensor(geometry.size, dtype=shifts.dtype).expand(count, 2)
        return keys, torch.cat([shifts, size], dim=1)

    def max_distance(self) -> int:
        return int(math.floor(self.reach * math.sqrt(2.0) + 0.5))

    def metric(self, classes: int) -> DenseConsistencyMetric:
        return DenseConsistencyMetric(self, classes)

    def describe(self) -> dict[str, Any]:
        moves = {
            "circular": "the model input rolled; the prediction rolled back, every pixel compared",
            "crop": "the window of the model input moved over the resized image; the overlap of the two windows",
            "zero": "the picture moved with black fill, then the centre crop; the overlap of the two windows",
        }[self.mode]
        return {
            "shifts": (
                f"{self.views_per_image - 1} per image against the unshifted input, (dy, dx) uniform among the"
                f" multiples of {self.step} in [-{self.reach}, {self.reach}] per axis"
            ),
            "mode": f"{self.mode}: {moves}",
            "maps": "per-pixel argmax of the scores (one channel: score > 0); a map at stride s aligned at shift / s",
            "statistic": (
                "consistency: compared pixels whose class is unchanged, pooled over pairs and images; mIoU: mean over"
                " the classes present in either aligned prediction of intersection / union, counts pooled over the"
                " data set"
            ),
            "fixed_point": f"consistency_per_comparison summed in units of 2^-{int(math.log2(FIXED_POINT_SCALE))}",
        }


def _stride_text(stride: tuple[int, int]) -> str:
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"


class DenseConsistencyMetric(Metric):
    """Counts for :class:`DenseConsistency`: pixels compared and unchanged, per-class intersections and unions.

    ``update(outputs, labels, infos)`` takes ``outputs`` ``(n, K, C, h, w)`` (the reference first),
    ``infos`` ``(n, K - 1, 4)``: each shifted view's ``(dy, dx)`` and the input's ``(H, W)``.
    """

    def __init__(self, metric: DenseConsistency, classes: int) -> None:
        super().__init__()
        self.metric = metric
        self.classes = max(int(classes), 2)  # one channel: binary logits, classes 0 and 1
        bins = metric.max_distance() + 1
        self.add_state("images", _zeros())
        self.add_state("pairs", _zeros())
        self.add_state("pixels", _zeros())
        self.add_state("agreeing_pixels", _zeros())
        self.add_state("unchanged_maps", _zeros())
        self.add_state("share_fixed", _zeros())
        self.add_state("intersection", _zeros(self.classes))
        self.add_state("union", _zeros(self.classes))
        self.add_state("pairs_by_distance", _zeros(bins))
        self.add_state("pixels_by_distance", _zeros(bins))
        self.add_state("agreeing_by_distance", _zeros(bins))
        self.add_state("pixels_by_position", _zeros(POSITION_BINS, POSITION_BINS))
        self.add_state("agreeing_by_position", _zeros(POSITION_BINS, POSITION_BINS))
        self._cells: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, infos: torch.Tensor | None) -> None:
        assert infos is not None and outputs.ndim == 5, "outputs (n, views, C, h, w) and the views' shifts"
        classes = predicted_classes(outputs).to(self.device)
        check(
            outputs.shape[2] == 1 or outputs.shape[2] == self.classes,
            "dense-consistency",
            f"the model's maps have {outputs.shape[2]} channels here and {self.classes} on the first image",
        )
        rows, cols = classes.shape[-2:]
        mode, count = self.metric.mode, self.classes
        cells = self._position_cells(rows, cols)
        for image in range(classes.shape[0]):
            reference = classes[image, 0]
            for view, (dy, dx, height, width) in enumerate(infos[image].tolist(), start=1):
                stride = map_stride((height, width), (rows, cols))
                if stride is None or dy % stride[0] or dx % stride[1]:
                    fail(
                        "dense-consistency",
                        f"a {rows}x{cols} map of a {height}x{width} input cannot be moved by ({dy}, {dx}) input pixels",
                    )
                first, second = align_predictions(
                    reference, classes[image, view], (dy // stride[0], dx // stride[1]), mode
                )
                same = first == second
                agreeing, compared = int(same.sum()), same.numel()
                both = torch.bincount(first[same], minlength=count)
                self.intersection += both
                self.union += (
                    torch.bincount(first.flatten(), minlength=count)
                    + torch.bincount(second.flatten(), minlength=count)
                    - both
                )
                self.pairs += 1
                self.pixels += compared
                self.agreeing_pixels += agreeing
                self.unchanged_maps += int(compared > 0 and agreeing == compared)
                if compared:  # the pair's share, rounded to the nearest 2^-32 with integers only
                    self.share_fixed += (2 * agreeing * FIXED_POINT_SCALE + compared) // (2 * compared)
                distance = self._distance(dy, dx, height, width)
                self.pairs_by_distance[distance] += 1
                self.pixels_by_distance[distance] += compared
                self.agreeing_by_distance[distance] += agreeing
                if mode == "circular":
                    where = cells
                else:
                    top, bottom, left, right = _overlap(rows, cols, dy // stride[0], dx // stride[1])
                    where = cells[top:bottom, left:right]
                self._count_positions(where, same)
        self.images += classes.shape[0]

    def _position_cells(self, rows: int, cols: int) -> torch.Tensor:
        """For every pixel of a ``rows x cols`` reference map, its cell of the position grid (row-major index)."""
        key = (rows, cols, self.device)
        if key not in self._cells:
            row_cells = torch.arange(rows, device=self.device) * POSITION_BINS // rows
            col_cells = torch.arange(cols, device=self.device) * POSITION_BINS // cols
            self._cells[key] = row_cells[:, None] * POSITION_BINS + col_cells[None, :]
        return self._cells[key]

    def _count_positions(self, cells: torch.Tensor, same: torch.Tensor) -> None:
        size = POSITION_BINS * POSITION_BINS
        shape = (POSITION_BINS, POSITION_BINS)
        self.pixels_by_position += torch.bincount(cells.flatten(), minlength=size).reshape(shape)
        self.agreeing_by_position += torch.bincount(cells[same], minlength=size).reshape(shape)

    def _distance(self, dy: int, dx: int, height: int, width: int) -> int:
        """The length of the shift, rounded to whole pixels; for rolls, around the torus of the input's size."""
        if self.metric.mode == "circular":
            dy, dx = min(dy % height, -dy % height), min(dx % width, -dx % width)
        bins = self.pairs_by_distance.shape[0]
        return min(int(math.floor(math.sqrt(dy * dy + dx * dx) + 0.5)), bins - 1)

    def compute(self) -> dict[str, Any]:
        images, pairs, pixels = int(self.images), int(self.pairs), int(self.pixels)
        per_class = [
            {"class": index, "intersection": both, "union": either, "iou": both / either}
            for index, (both, either) in enumerate(zip(self.intersection.tolist(), self.union.tolist()))
            if either
        ]
        by_distance = [
            {
                "distance": distance,
                "pairs": int(count),
                "pixels": int(compared),
                "agreeing": int(agree),
                "consistency": _ratio(agree, compared),
            }
            for distance, (count, compared, agree) in enumerate(
                zip(
                    self.pairs_by_distance.tolist(),
                    self.pixels_by_distance.tolist(),
                    self.agreeing_by_distance.tolist(),
                )
            )
            if count
        ]
        return {
            "images": images,
            "pairs": pairs,
            "pixels": pixels,
            "agreeing_pixels": int(self.agreeing_pixels),
            "consistency": _ratio(int(self.agreeing_pixels), pixels),
            "consistency_per_comparison": _ratio(int(self.share_fixed), pairs * FIXED_POINT_SCALE),
            "miou": sum(item["iou"] for item in per_class) / len(per_class) if per_class else None,
            "classes_present": len(per_class),
            "unchanged_maps": _ratio(int(self.unchanged_maps), pairs),
            "per_class": per_class,
            "by_distance": by_distance,
            "by_position": {
                "bins": POSITION_BINS,
                "pixels": self.pixels_by_position.tolist(),
                "agreeing": self.agreeing_by_position.tolist(),
            },
        }

    def rows(self) -> list[dict[str, Any]]:
        result = self.compute()
        rows = [
            _row("consistency", result["consistency"], result["pixels"]),
            _row("miou", result["miou"], result["classes_present"]),
            _row("unchanged_maps", result["unchanged_maps"], result["pairs"]),
            _row("consistency_per_comparison", result["consistency_per_comparison"], result["pairs"]),
        ]
        rows += [
            _row("consistency", item["consistency"], item["pixels"], at=f"distance {item['distance']}")
            for item in result["by_distance"]
        ]
        return rows
