"""The reference article's experiments, redone with numbers: data first, then figures and report sections.

The article convolves photos with a Sobel filter, pools the edge maps
repeatedly and argues from pictures that pooling makes features invariant to
where the object is. Each function here reruns one of its experiments and
returns the measurements that the pictures only suggest:

* :func:`single_pixel_experiment`: where a single bright pixel lands at every pooling level;
* :func:`translation_experiment`: an object moved to the other side of the frame;
* :func:`mirror_experiment`: a photo and its mirror image (a reflection, not a translation);
* :func:`stride_experiment`: which shifts survive stride-2 pooling exactly (multiples of the stride only).

:func:`article_explorers` lets the reader move the inputs of three of them (the single pixel, the cat on its canvas,
the photo) through the same filter and poolings, as a network (:func:`article_network`) probed by
:func:`shiftlab.probe`. :func:`article_sections` turns the results into report sections.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.distances import compare_maps, peak_position
from shiftlab.images import SCENE_SHIFT, sample_image, single_pixel_image
from shiftlab.kernels import KernelSpec
from shiftlab.ops import Convolve, MaxPool, convolve, max_pyramid_depth, pool_pyramid
from shiftlab.probing.explore import ExplorerData, Screen, explorer_data
from shiftlab.report.figures import show_convergence, show_feature_map, show_pyramid, show_shift_table
from shiftlab.report.sections import ROUNDING_LEVEL, Finding, Section, Table, format_error, format_number
from shiftlab.shifts import shift_grid, shift_with_mask

__all__ = [
    "ArticleResults",
    "PairLevel",
    "PairResult",
    "PixelLevel",
    "SinglePixelResult",
    "StrideResult",
    "article_explorers",
    "article_network",
    "article_sections",
    "compare_pyramids",
    "mirror_experiment",
    "run_article",
    "single_pixel_experiment",
    "stride_experiment",
    "translation_experiment",
]

#: The article's filter and its number of poolings of a photo's edge map.
ARTICLE_KERNEL = "sobel_y"
PHOTO_POOLINGS = 6


def _maxima(array: np.ndarray) -> list[tuple[int, int]]:
    return [(int(r), int(c)) for r, c in np.argwhere(array == array.max())]


def normalised_distance(a: np.ndarray, b: np.ndarray) -> float:
    """L2 distance between the two maps scaled to unit L2 norm: 0 same up to scale, sqrt(2) if disjoint and >= 0.

    Example:
        >>> round(normalised_distance(np.array([1.0, 0.0]), np.array([0.0, 3.0])), 4)
        1.4142
    """
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else float(np.sqrt(2.0))
    return float(np.linalg.norm(a / na - b / nb))


# --------------------------------------------------------------------------- single pixel


@dataclass
class PixelLevel:
    """Where the bright pixel of each image is at one pooling level."""

    level: int
    shape: tuple[int, int]
    positions_a: list[tuple[int, int]]
    positions_b: list[tuple[int, int]]
    identical: bool


@dataclass
class SinglePixelResult:
    """The article's two 10x10 single-pixel images, pooled level by level."""

    levels: list[PixelLevel]
    findings: list[Finding]
    pyramid_a: list[np.ndarray] = field(repr=False)
    pyramid_b: list[np.ndarray] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": {"images": ["pixel_a: 1 at [2, 2]", "pixel_b: 1 at [-3, -3]"], "size": 10, "kernel_size": 2},
            "levels": [
                {
                    "level": lv.level,
                    "shape": list(lv.shape),
                    "positions_a": lv.positions_a,
                    "positions_b": lv.positions_b,
                    "identical": lv.identical,
                }
                for lv in self.levels
            ],
            "findings": [finding.to_dict() for finding in self.findings],
        }


def single_pixel_experiment(iterations: int = 3) -> SinglePixelResult:
    """Pool the article's two single-pixel images and check its claims about them.

    The article says that after two 2x2 poolings the pixels sit at ``[0, 0]``
    and ``[1, 1]`` of a 2x2 map, and that a third pooling makes both maps
    identical. Both are checked here, not assumed.

    Example:
        >>> result = single_pixel_experiment()
        >>> [level.positions_a for level in result.levels]
        [[(2, 2)], [(1, 1)], [(0, 0)], [(0, 0)]]
        >>> [finding.holds for finding in result.findings[:3]]
        [True, True, True]
    """
    image_a, image_b = single_pixel_image(2, 2), single_pixel_image(-3, -3)
    pyramid_a, pyramid_b = pool_pyramid(image_a, iterations), pool_pyramid(image_b, iterations)
    levels = [
        PixelLevel(index, tuple(a.shape), _maxima(a), _maxima(b), bool(np.array_equal(a, b)))
        for index, (a, b) in enumerate(zip(pyramid_a, pyramid_b))
    ]
    findings = []
    if iterations >= 2:
        two = levels[2]
        findings += [
            Finding(
                "After two 2x2 poolings, the first pixel is at [0, 0] of a 2x2 map (article)",
                f"shape {two.shape}, at {two.positions_a}",
                two.shape == (2, 2) and two.positions_a == [(0, 0)],
            ),
            Finding(
                "After two 2x2 poolings, the second pixel is at [1, 1] of a 2x2 map (article)",
                f"shape {two.shape}, at {two.positions_b}",
                two.shape == (2, 2) and two.positions_b == [(1, 1)],
            ),
        ]
    if iterations >= 3:
        three = levels[3]
        findings.append(
            Finding(
                "A third pooling makes both maps identical (article)",
                f"shape {three.shape}, identical: {three.identical}",
                three.identical,
            )
        )
        findings.append(
            Finding(
                "Why: the 10x10 map has shrunk to one pixel, so no position can be told apart any more. The pixels "
                "never moved closer; the grid got coarser.",
                f"distance between pixels, in input pixels: {[_input_distance(lv) for lv in levels]}",
            )
        )
    return SinglePixelResult(levels, findings, pyramid_a, pyramid_b)


def _input_distance(level: PixelLevel) -> float:
    (ra, ca), (rb, cb) = level.positions_a[0], level.positions_b[0]
    return round(float(np.hypot(ra - rb, ca - cb)) * 2**level.level, 2)


# --------------------------------------------------------------------------- photo pairs


@dataclass
class PairLevel:
    """Two pooled edge maps compared at one level."""

    level: int
    shape: tuple[int, int]
    map_distance: float
    peak_a: tuple[int, int]
    peak_b: tuple[int, int]
    peak_distance: float
    peak_distance_input: float
    aligned_rel_l2: float | None = None
    aligned_max_abs: float | None = None


def compare_pyramids(
    levels_a: list[np.ndarray],
    levels_b: list[np.ndarray],
    shift: tuple[int, int] | None = None,
    kernel_size: int = 2,
) -> list[PairLevel]:
    """Compare two pyramids level by level; with ``shift`` (input pixels), also after undoing it.

    ``shift`` is how far ``b``'s content sits from ``a``'s (down, right). At
    level ``l`` the maps have stride ``kernel_size ** l``; where the shift is a
    multiple of the stride, ``a`` is shifted by ``shift / stride`` (zero fill)
    and compared with ``b`` on the overlap.

    Example:
        >>> a = np.zeros((8, 8)); a[1, 1] = 1
        >>> rows = compare_pyramids([a], [np.roll(a, 4, axis=1)], shift=(0, 4))
        >>> rows[0].peak_distance, rows[0].aligned_rel_l2
        (4.0, 0.0)
    """
    rows = []
    for index, (a, b) in enumerate(zip(levels_a, levels_b)):
        peak_a, peak_b = peak_position(a), peak_position(b)
        distance = float(np.hypot(peak_a[0] - peak_b[0], peak_a[1] - peak_b[1]))
        row = PairLevel(
            index, tuple(a.shape), normalised_distance(a, b), peak_a, peak_b, distance, distance * kernel_size**index
        )
        stride = kernel_size**index
        if shift is not None and shift[0] % stride == 0 and shift[1] % stride == 0:
            moved, valid = shift_with_mask(a, shift[0] // stride, shift[1] // stride, mode="zero")
            error = compare_maps(b, moved, valid)
            row.aligned_rel_l2, row.aligned_max_abs = error.rel_l2, error.max_abs
        rows.append(row)
    return rows


@dataclass
class PairResult:
    """Two photos, their edge maps, the pooled pyramids and what the numbers say."""

    key: str
    names: tuple[str, str]
    relation: str
    kernel: str
    levels: list[PairLevel]
    findings: list[Finding]
    images: tuple[np.ndarray, np.ndarray] = field(repr=False)
    pyramids: tuple[list[np.ndarray], list[np.ndarray]] = field(repr=False)
    shift: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": {
                "images": list(self.names),
                "relation": self.relation,
                "kernel": self.kernel,
                "padding": "valid",
                "relu": True,
                "poolings": len(self.levels) - 1,
                "shift": list(self.shift) if self.shift else None,
            },
            "levels": [
                {
                    "level": lv.level,
                    "shape": list(lv.shape),
                    "map_distance": lv.map_distance,
                    "peak_a": list(lv.peak_a),
                    "peak_b": list(lv.peak_b),
                    "peak_distance": lv.peak_distance,
                    "peak_distance_input": lv.peak_distance_input,
                    "aligned_rel_l2": lv.aligned_rel_l2,
                    "aligned_max_abs": lv.aligned_max_abs,
                }
                for lv in self.levels
            ],
            "findings": [finding.to_dict() for finding in self.findings],
        }


def _edge_pyramid(image: np.ndarray, kernel: KernelSpec, poolings: int) -> list[np.ndarray]:
    edges = convolve(image, kernel)
    return pool_pyramid(edges, min(poolings, max_pyramid_depth(*edges.shape)))


def translation_experiment(kernel: KernelSpec = ARTICLE_KERNEL, poolings: int = PHOTO_POOLINGS) -> PairResult:
    """The cat on the left and on the right of the frame: a true translation by 256 pixels.

    Measures the equivariance of the edge map directly (the edge map of the
    moved image against the moved edge map, away from the borders: zero up to
    float error), then whether pooling ever makes the two maps alike.
    """
    left, right = sample_image("chelsea_left"), sample_image("chelsea_right")
    shift = (0, SCENE_SHIFT)
    pyramid_a, pyramid_b = _edge_pyramid(left, kernel, poolings), _edge_pyramid(right, kernel, poolings)
    levels = compare_pyramids(pyramid_a, pyramid_b, shift=shift)
    last = levels[-1]
    exact = [lv for lv in levels if lv.aligned_rel_l2 is not None]
    findings = [
        Finding(
            "Convolution is translation equivariant: the edge map of the moved image equals the moved edge map "
            "(valid region, away from the borders)",
            f"relative L2 error {format_error(levels[0].aligned_rel_l2)}, max abs error "
            f"{format_error(levels[0].aligned_max_abs)}",
            levels[0].aligned_max_abs is not None and levels[0].aligned_max_abs <= ROUNDING_LEVEL,
        ),
        Finding(
            f"Stride-2 pooling commutes with this shift at every level where {SCENE_SHIFT} px is a multiple of the "
            f"stride (all {len(exact)} levels here)",
            "largest relative L2 error over those levels: "
            + format_error(max(lv.aligned_rel_l2 for lv in exact if lv.aligned_rel_l2 is not None)),
            all(lv.aligned_max_abs is not None and lv.aligned_max_abs <= ROUNDING_LEVEL for lv in exact),
        ),
        Finding(
            "Pooling does not make the two maps alike: the object is still on the other side at the last level (the "
            "article's pictures suggest otherwise)",
            f"level {last.level} ({last.shape[0]}x{last.shape[1]}): normalised distance "
            f"{format_number(last.map_distance)} (0 = same, 1.41 = no overlap); peaks "
            f"{format_number(last.peak_distance)} px apart ({format_number(last.peak_distance_input)} input px)",
            last.map_distance > 0.5,
        ),
    ]
    return PairResult(
        "translation",
        ("chelsea_left", "chelsea_right"),
        "translation",
        str(kernel),
        levels,
        findings,
        (left, right),
        (pyramid_a, pyramid_b),
        shift,
    )


def mirror_experiment(kernel: KernelSpec = ARTICLE_KERNEL, poolings: int = PHOTO_POOLINGS) -> PairResult:
    """The photo and its mirror image: a reflection, with numbers that show it is not a translation.

    Mirroring turns a left-to-right gradient into a right-to-left one. The
    article's ``sobel_y`` is antisymmetric left-right, so the raw response to
    the mirror is exactly the negated, mirrored response to the photo, and
    ReLU keeps the half that it dropped for the photo.
    """
    photo, mirror = sample_image("chelsea"), sample_image("chelsea_mirror")
    pyramid_a, pyramid_b = _edge_pyramid(photo, kernel, poolings), _edge_pyramid(mirror, kernel, poolings)
    levels = compare_pyramids(pyramid_a, pyramid_b)
    raw_photo, raw_mirror = convolve(photo, kernel, relu=False), convolve(mirror, kernel, relu=False)
    sign_flip = compare_maps(raw_mirror, -raw_photo[:, ::-1])
    relu_photo, relu_mirror = pyramid_a[0], pyramid_b[0]
    as_if_translated = compare_maps(relu_mirror, relu_photo[:, ::-1])
    dropped_half = compare_maps(relu_mirror, np.maximum(-raw_photo, 0)[:, ::-1])
    energy_kept = float((relu_mirror**2).sum() / ((relu_mirror**2).sum() + (relu_photo**2).sum()))
    last = levels[-1]
    findings = [
        Finding(
            "The mirror image is a reflection, not a translation: the raw (pre-ReLU) response to it is the mirrored "
            "response to the photo with its sign flipped",
            f"max abs error of  conv(mirror) = -mirror(conv(photo)):  {format_error(sign_flip.max_abs)}",
            sign_flip.max_abs <= ROUNDING_LEVEL,
        ),
        Finding(
            "So after ReLU the mirror's edge map is NOT the mirrored edge map of the photo",
            f"relative L2 error {format_error(as_if_translated.rel_l2)}, cosine similarity "
            f"{format_number(as_if_translated.cosine)}",
            as_if_translated.rel_l2 > 0.5,
        ),
        Finding(
            "It is the half of the photo's response that ReLU removed (the negative part), mirrored",
            f"max abs error {format_error(dropped_half.max_abs)}; share of edge energy in the mirror's map: "
            f"{energy_kept:.1%}",
            dropped_half.max_abs <= ROUNDING_LEVEL,
        ),
        Finding(
            "Pooled maps of photo and mirror, compared as they are (what the article's pictures compare)",
            f"level {last.level} ({last.shape[0]}x{last.shape[1]}): normalised distance "
            f"{format_number(last.map_distance)}; peaks {format_number(last.peak_distance_input)} input px apart",
        ),
    ]
    return PairResult(
        "mirror",
        ("chelsea", "chelsea_mirror"),
        "reflection",
        str(kernel),
        levels,
        findings,
        (photo, mirror),
        (pyramid_a, pyramid_b),
    )


# --------------------------------------------------------------------------- stride table


@dataclass
class StrideResult:
    """Error after the best whole-pixel alignment, for each (shift, pooling level)."""

    shifts: list[int]
    errors: np.ndarray  # (len(shifts), levels): relative L2 after the best alignment
    exact: np.ndarray  # bool, shift % 2**level == 0
    findings: list[Finding]

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": {
                "image": "chelsea",
                "kernel": ARTICLE_KERNEL,
                "shift": "horizontal, crop windows of the photo",
                "metric": "relative L2 after the best whole-pixel alignment (floor or ceil of shift / stride)",
            },
            "shifts": self.shifts,
            "levels": list(range(self.errors.shape[1])),
            "errors": self.errors.tolist(),
            "multiple_of_stride": self.exact.tolist(),
            "findings": [finding.to_dict() for finding in self.findings],
        }


def stride_experiment(shifts: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 16), poolings: int = 5) -> StrideResult:
    """Shift the photo by a few pixels and find at which pooling levels the maps still line up exactly.

    Two crop windows of the photo, ``shift`` columns apart, are a true
    translation of each other. After ``l`` stride-2 poolings the shift is
    ``shift / 2**l`` pixels of the level: whole, and the maps line up exactly,
    only when the shift is a multiple of ``2**l``. Otherwise even the best
    whole-pixel alignment leaves an error: aliasing.

    Example:
        >>> result = stride_experiment(shifts=(1, 2), poolings=2)
        >>> result.exact.tolist()
        [[True, False, False], [True, True, False]]
        >>> bool((result.errors[result.exact] < 1e-6).all() and (result.errors[~result.exact] > 0.01).all())
        True
    """
    photo = sample_image("chelsea")
    margin = max(shifts)
    base = photo[:, : photo.shape[1] - margin]
    reference = _edge_pyramid(base, ARTICLE_KERNEL, poolings)
    errors = np.zeros((len(shifts), len(reference)))
    exact = np.zeros_like(errors, dtype=bool)
    for row, amount in enumerate(shifts):
        window = photo[:, amount : amount + base.shape[1]]  # content moved left by `amount`
        moved = _edge_pyramid(window, ARTICLE_KERNEL, poolings)
        for level, (a, b) in enumerate(zip(reference, moved)):
            stride = 2**level
            exact[row, level] = amount % stride == 0
            candidates = {amount // stride, -(-amount // stride)}
            errors[row, level] = min(
                compare_maps(b, *shift_with_mask(a, 0, -offset, mode="zero")).rel_l2 for offset in candidates
            )
    findings = [
        Finding(
            "Stride-2 max pooling commutes with shifts that are a multiple of its stride: zero error after alignment",
            f"largest error over those {int(exact.sum())} cases: {format_error(float(errors[exact].max()))}",
            bool((errors[exact] <= 1e-6).all()),
        ),
        Finding(
            "... and not with the others, even after the best whole-pixel alignment (aliasing)",
            f"smallest error over those {int((~exact).sum())} cases: {format_error(float(errors[~exact].min()))}",
            bool((errors[~exact] > 1e-3).all()),
        ),
    ]
    return StrideResult(list(shifts), errors, exact, findings)


# --------------------------------------------------------------------------- explorers


def article_network(poolings: int, *, kernel: KernelSpec = ARTICLE_KERNEL, edges: bool = True) -> nn.Sequential:
    """The article's pipeline as a network with named layers: ``edges`` (the filter, valid, then ReLU), then
    ``pool1`` ... ``poolN`` (2x2 max pooling, stride 2): ``poolK`` has been pooled K times.

    Example:
        >>> [name for name, _ in article_network(2).named_children()]
        ['edges', 'pool1', 'pool2']
        >>> article_network(2)(torch.zeros(1, 1, 10, 10)).shape
        torch.Size([1, 1, 2, 2])
    """
    layers: list[tuple[str, nn.Module]] = [("edges", Convolve(kernel, padding="valid", relu=True))] if edges else []
    layers += [(f"pool{level}", MaxPool(2)) for level in range(1, poolings + 1)]
    return nn.Sequential(OrderedDict(layers))


#: The horizontal shifts of the cat on its canvas: every pixel to 8, then doublings up to the translation of the
#: article's pair (SCENE_SHIFT = 256: chelsea_left moved by it is chelsea_right, exactly).
SCENE_STEPS = (*range(9), 12, 16, 24, 32, 64, 128, SCENE_SHIFT)
#: The horizontal shifts of the photo: every pixel to 8 (a multiple of the strides 2, 4 and 8).
PHOTO_STEPS = tuple(range(9))


def _gray(name: str) -> torch.Tensor:
    return torch.from_numpy(sample_image(name))[None, None]


def article_explorers(kernel: KernelSpec = ARTICLE_KERNEL) -> dict[str, ExplorerData]:
    """Three explorers of the article's experiments, each a probe of :func:`article_network` with its frames.

    * ``single-pixel``: the first single-pixel image, moved by every ``(dy, dx)`` in ``0..5`` (``(5, 5)`` puts the
      pixel where the second image has it), through three poolings; circular shifts (the canvas is black and the
      pixel never reaches its edge, so they are the pixel moving on the canvas).
    * ``translation``: the cat on its flat canvas (``chelsea_left``) moved right by :data:`SCENE_STEPS`, through the
      filter and six poolings; circular shifts of a flat canvas are the cat moving, and the last one is the article's
      pair (``chelsea_right``).
    * ``stride``: the photo, moved right by :data:`PHOTO_STEPS` pixels as crop windows (real content everywhere),
      through the filter and five poolings.
    """
    pixel = torch.from_numpy(single_pixel_image(2, 2))[None, None]
    return {
        "single-pixel": explorer_data(
            article_network(3, edges=False),
            pixel,
            shift_grid("0:6"),
            mode="circular",
            layers=["pool1", "pool2", "pool3"],
            screen=Screen(names=["pixel_a"]),
        ),
        "translation": explorer_data(
            article_network(PHOTO_POOLINGS, kernel=kernel),
            _gray("chelsea_left"),
            [(0, step) for step in SCENE_STEPS],
            mode="circular",
            layers=["edges", *(f"pool{level}" for level in range(1, PHOTO_POOLINGS + 1))],
            screen=Screen(names=["chelsea_left"]),
        ),
        "stride": explorer_data(
            article_network(5, kernel=kernel),
            _gray("chelsea"),
            [(0, step) for step in PHOTO_STEPS],
            mode="crop",
            layers=["edges", *(f"pool{level}" for level in range(1, 6))],
            screen=Screen(names=["chelsea"]),
        ),
    }


# --------------------------------------------------------------------------- all of it


@dataclass
class ArticleResults:
    """Every experiment of the article, as data."""

    single_pixel: SinglePixelResult
    translation: PairResult
    mirror: PairResult
    stride: StrideResult
    kernel: str = ARTICLE_KERNEL
    explorers: dict[str, ExplorerData] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "single_pixel": self.single_pixel.to_dict(),
            "translation": self.translation.to_dict(),
            "mirror": self.mirror.to_dict(),
            "stride": self.stride.to_dict(),
        }


def run_article(
    kernel: KernelSpec = ARTICLE_KERNEL, poolings: int = PHOTO_POOLINGS, *, explore: bool = True
) -> ArticleResults:
    """Run every experiment of the article on the bundled images; with ``explore``, also its explorers
    (:func:`article_explorers`)."""
    return ArticleResults(
        single_pixel=single_pixel_experiment(),
        translation=translation_experiment(kernel, poolings),
        mirror=mirror_experiment(kernel, poolings),
        stride=stride_experiment(),
        kernel=str(kernel),
        explorers=article_explorers(kernel) if explore else {},
    )


def _explorers(results: ArticleResults, key: str, title: str) -> list[tuple[str, ExplorerData]]:
    return [(title, results.explorers[key])] if key in results.explorers else []


def _pair_table(result: PairResult) -> Table:
    columns = [
        "level",
        "shape",
        "normalised distance",
        "peak A",
        "peak B",
        "peak distance (level px)",
        "peak distance (input px)",
    ]
    if result.shift is not None:
        columns += ["error after undoing the shift (rel. L2)", "max abs"]
    rows = []
    for lv in result.levels:
        row = [
            lv.level,
            f"{lv.shape[0]} x {lv.shape[1]}",
            format_number(lv.map_distance),
            _positions([lv.peak_a]),
            _positions([lv.peak_b]),
            format_number(lv.peak_distance),
            format_number(lv.peak_distance_input),
        ]
        if result.shift is not None:
            row += [format_error(lv.aligned_rel_l2), format_error(lv.aligned_max_abs)]
        rows.append([format_number(value) for value in row])
    return Table(f"{result.names[0]} (A) vs {result.names[1]} (B), edge maps pooled level by level", columns, rows)


def _positions(positions: list[tuple[int, int]]) -> str:
    return ", ".join(f"[{row}, {col}]" for row, col in positions)


def article_sections(results: ArticleResults) -> list[Section]:
    """Report sections (prose, figures, tables, findings) for every experiment of the article."""
    photo = sample_image("chelsea")
    edges = results.mirror.pyramids[0][0]
    pixel = results.single_pixel
    translation, mirror, stride = results.translation, results.mirror, results.stride
    pixel_rows = [
        [
            lv.level,
            f"{lv.shape[0]} x {lv.shape[1]}",
            _positions(lv.positions_a),
            _positions(lv.positions_b),
            format_number(lv.identical),
        ]
        for lv in pixel.levels
    ]
    return [
        Section(
            "edges",
            "Edges: convolution with the article's Sobel filter",
            "The article filters a photo with sobel_y = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] (cross-correlation, as "
            "CNN layers compute it, with no padding) and applies ReLU. "
            "Despite its name in the article, this filter differentiates along the columns: it responds to "
            "left-to-right intensity change, that is to vertical edges, and ReLU keeps only the edges where the "
            "image gets brighter to the right. "
            f"The output loses one pixel on every side: {photo.shape[0]} x {photo.shape[1]} becomes {edges.shape[0]} "
            f"x {edges.shape[1]}.",
            figures=[
                (
                    "The photo (left) and its edge map after ReLU (right).",
                    show_feature_map(photo, edges, titles=("chelsea", "sobel_y + ReLU")),
                )
            ],
        ),
        Section(
            "single-pixel",
            "Two single pixels, pooled until they meet",
            "The article pools two 10 x 10 images, one with a bright pixel at [2, 2] and one at [-3, -3] (that is "
            "[7, 7]), and observes that the pixels end up in the same place. "
            "Here the position of the bright pixel is computed at every level, and each of the article's statements "
            "is checked. In the explorer below, move the pixel yourself: it glides one input pixel at a time, its "
            "pooled copies jump from cell to cell, and (5, 5) puts it where the second image has it.",
            figures=[
                (
                    "Where the two pixels land, level by level (magenta X: first image, green +: second).",
                    show_convergence(pixel.pyramid_a, pixel.pyramid_b, labels=("pixel at [2, 2]", "pixel at [-3, -3]")),
                ),
                (
                    "The first image's pyramid: each panel titled with its shape, as in the article's "
                    "visualize_pooling.",
                    show_pyramid(pixel.pyramid_a),
                ),
            ],
            tables=[
                Table(
                    "Position of the maximum at each level",
                    ["level", "shape", "pixel A", "pixel B", "maps identical"],
                    [[format_number(v) for v in row] for row in pixel_rows],
                )
            ],
            findings=pixel.findings,
            data=pixel.to_dict(),
            explorers=_explorers(results, "single-pixel", "Move the pixel: where does it land after each pooling?"),
        ),
        Section(
            "translation",
            "A true translation: the object moved to the other side",
            "The article compares a photo with one in which the object sits on the other side of the frame. Here "
            f"that pair is exact: the cat on a flat gray canvas, once on the left and once {SCENE_SHIFT} pixels "
            "further right, so the second image is precisely a translation of the first. "
            "That makes the equivariance of convolution measurable directly, and shows what pooling does and does "
            "not do with a translation. In the explorer below, move the cat yourself: the edge map follows it pixel "
            "for pixel, each pooled map lines up only when the shift is a multiple of its stride and changes in "
            f"between; the last shift, {SCENE_SHIFT} pixels, is the pair.",
            figures=[
                (
                    f"The two images: the second is the first moved {SCENE_SHIFT} pixels to the right.",
                    show_feature_map(
                        translation.images[0],
                        translation.images[1],
                        titles=("chelsea_left", "chelsea_right"),
                        cmap="gray",
                    ),
                ),
                ("Edge map of the left image, pooled six times.", show_pyramid(translation.pyramids[0])),
                ("Edge map of the right image, pooled six times.", show_pyramid(translation.pyramids[1])),
                (
                    "Where the strongest edge of each image lands, level by level.",
                    show_convergence(*translation.pyramids, labels=("left", "right")),
                ),
            ],
            tables=[_pair_table(translation)],
            findings=translation.findings,
            data=translation.to_dict(),
            explorers=_explorers(results, "translation", "Move the cat across the canvas"),
        ),
        Section(
            "mirror",
            "A mirror image is a reflection, not a translation",
            "The article also compares a photo with its mirror image. A mirror image is not a translated image: "
            "every left-to-right gradient becomes right-to-left. "
            "The article's filter is antisymmetric left-right, so its response to the mirror is exactly the mirrored "
            "response to the photo with the sign flipped, and ReLU then keeps the other half of the edges. The "
            "numbers below show this exactly.",
            figures=[
                ("The mirror image's edge map, pooled six times.", show_pyramid(mirror.pyramids[1])),
                (
                    "Strongest responses of photo and mirror, level by level.",
                    show_convergence(*mirror.pyramids, labels=("photo", "mirror")),
                ),
            ],
            tables=[_pair_table(mirror)],
            findings=mirror.findings,
            data=mirror.to_dict(),
        ),
        Section(
            "stride",
            "Which shifts survive pooling: multiples of the stride, and only those",
            "The photo is cut twice, the second window a few pixels further right: an exact translation. Both "
            "windows go through the Sobel filter and repeated 2x2 pooling. "
            "At level l a shift of t input pixels is t / 2^l pixels of the map. When that is a whole number the two "
            "pyramids line up exactly; when it is not, even the best whole-pixel alignment leaves an error. "
            "This aliasing is why real CNNs, full of stride-2 layers, change their output under a one-pixel shift. "
            "The explorer below moves the photo one pixel at a time (crop windows, so that every input pixel is real "
            "content); its numbers come from shiftlab's probe, which leaves out the pixels whose receptive field "
            "reaches the border, so they differ a little from the table's.",
            figures=[
                (
                    "Relative L2 error after the best whole-pixel alignment, per shift (rows) and pooling level "
                    "(columns). Exact zeros where the shift is a multiple of 2^level.",
                    show_shift_table(
                        stride.errors,
                        [f"shift {s}" for s in stride.shifts],
                        [f"level {level}" for level in range(stride.errors.shape[1])],
                        xlabel="pooling level (stride 2^level)",
                        ylabel="horizontal shift (input px)",
                    ),
                )
            ],
            findings=stride.findings,
            data=stride.to_dict(),
            explorers=_explorers(results, "stride", "Move the photo a few pixels: which pooled maps follow?"),
        ),
    ]
