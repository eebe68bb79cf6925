"""An independent, brute-force reference for every row of :func:`shiftlab.probe`.

Nothing of shiftlab's comparison code is used here. For each shift the model
runs once more, on its own, on the shifted input (built with numpy: ``np.roll``,
zero-filled moves, crop windows, an FFT for sub-pixel shifts); forward hooks
of this file keep every layer's output; and ``f(T_t x)`` is compared with
``f(x)`` moved by ``t / s`` (``np.roll`` for circular and fourier shifts, a
zero-filled move for zero and crop shifts), in float64 numpy, summed over all
images together. For shifts that are not multiples of a layer's stride every
floor/ceil alignment is tried, and separately every alignment within one
pixel of them, so that the test can say whether floor/ceil hold the best one.

The border core of the zero and crop modes (output pixels whose receptive
field stays clear of the band of width ``max |t|`` along the frame) is found
by perturbation, not NaN propagation: the model runs on copies of the
reference image that differ only inside the band (zeros, then random values
of several scales), and every output pixel that changes in any channel is
left out.

Only the public API is used: ``probe``, ``select_layers`` (which layers are
watched by default), ``load_model``, and ``shift``, itself checked against numpy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.models import load_model
from shiftlab.probing.layerwise import ProbeResult, probe, select_layers
from shiftlab.shifts import shift

slow = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these maps are small, and on a busy 2-core machine two threads run up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: Integer shifts: multiples and non-multiples of strides 2 to 32, negative shifts, and a 2-D grid {-2, 1} x {-1, 4}.
INTEGER_SHIFTS = [(0, 0), (0, 1), (0, 2), (-3, 0), (4, -8), (8, 8)] + [(dy, dx) for dy in (-2, 1) for dx in (-1, 4)]
#: Sub-pixel shifts for the fourier mode, with an integer one and the identity.
FRACTIONAL_SHIFTS = [(0.0, 0.0), (0.0, 0.5), (-1.5, 0.25), (0.5, -2.0), (2.5, 2.5), (0.0, 1.0)]

#: Each case: a shift mode and its shifts. The fractional case runs on odd-sized images, where a band-limited
#: sub-pixel shift is unambiguous (an even size has a Nyquist row and column, whose fractional move is a convention).
CASES = {
    "circular": ("circular", INTEGER_SHIFTS),
    "zero": ("zero", INTEGER_SHIFTS),
    "crop": ("crop", INTEGER_SHIFTS),
    "fourier": ("fourier", INTEGER_SHIFTS),
    "fourier_fractional": ("fourier", FRACTIONAL_SHIFTS),
}

#: Each network: (channels, even size, odd size). Small, so that the whole file stays fast.
NETWORKS = {
    "resnet18": (3, 64, 63),
    "simple_cnn": (3, 48, 47),
    "circular_cnn": (3, 32, 31),
    "article": (1, 64, 63),
}

REL_TOLERANCE = 1e-5
ABS_TOLERANCE = 1e-6

NOT_MULTIPLE_WORDS = "not a multiple of the stride"
WHOLE_MAP_WORDS = "whole map compared"
GLOBAL_WORDS = "not a spatial map"


# --------------------------------------------------------------------------- networks and images


@functools.cache
def network(name: str) -> nn.Module:
    if name == "resnet18":
        torchvision = pytest.importorskip("torchvision")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchvision.models.resnet18(weights=None).eval()
    return load_model(name)[0].eval()


def images_for(name: str, case: str) -> np.ndarray:
    """Two random ``(C, H, W)`` images as one float32 array; odd-sized for the sub-pixel case."""
    channels, even, odd = NETWORKS[name]
    size = odd if case == "fourier_fractional" else even
    generator = torch.Generator().manual_seed(7)
    return torch.rand(2, channels, size, size, generator=generator).numpy()


# --------------------------------------------------------------------------- shifted inputs, in numpy


def margin_of(shifts: list[tuple[float, float]]) -> tuple[int, int]:
    """The crop margin and border band: the largest ``|dy|`` and ``|dx|``."""
    return max(abs(int(dy)) for dy, _ in shifts), max(abs(int(dx)) for _, dx in shifts)


def zero_move(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[..., y, x] = array[..., y - dy, x - dx]`` inside the frame, else 0: a roll, the wrapped band cleared."""
    height, width = array.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        return np.zeros_like(array)
    out = np.roll(array, (dy, dx), axis=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


def fourier_move(array: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Band-limited circular shift of odd-sized maps: spectrum times ``exp(-2 pi i (fy dy + fx dx))``, in float64."""
    height, width = array.shape[-2:]
    if float(dy).is_integer() and float(dx).is_integer():
        return np.roll(array, (int(dy), int(dx)), axis=(-2, -1))
    assert height % 2 and width % 2, "sub-pixel shifts of the reference need odd sizes (no Nyquist frequency)"
    freq_y = np.fft.fftfreq(height)[:, None]
    freq_x = np.fft.fftfreq(width)[None, :]
    phase = np.exp(-2j * np.pi * (freq_y * dy + freq_x * dx))
    return np.fft.ifft2(np.fft.fft2(array.astype(np.float64)) * phase).real


def reference_input(images: np.ndarray, mode: str, margin: tuple[int, int]) -> np.ndarray:
    """The unshifted input: the images, or for ``crop`` their centre window, ``margin`` smaller on every side."""
    if mode != "crop":
        return images
    height, width = images.shape[-2:]
    my, mx = margin
    return images[..., my : height - my, mx : width - mx]


def shifted_input(images: np.ndarray, dy: float, dx: float, mode: str, margin: tuple[int, int]) -> np.ndarray:
    """``images`` shifted by ``(dy, dx)`` (down, right), shaped like :func:`reference_input`."""
    if mode == "circular":
        moved = np.roll(images, (int(dy), int(dx)), axis=(-2, -1))
    elif mode == "zero":
        moved = zero_move(images, int(dy), int(dx))
    elif mode == "crop":
        # The window at (my - dy, mx - dx): its pixel p shows images[p + margin - t], the centre window moved by t.
        height, width = images.shape[-2:]
        my, mx = margin
        top, left = my - int(dy), mx - int(dx)
        moved = images[..., top : top + height - 2 * my, left : left + width - 2 * mx]
    else:
        moved = fourier_move(images, dy, dx)
    return np.ascontiguousarray(moved, dtype=np.float32)


# --------------------------------------------------------------------------- every layer's output


@dataclass
class Pass:
    """One forward pass: every module's output in call order (float64), by label (``name``, ``name:k`` for call k)."""

    maps: dict[str, np.ndarray]
    names: dict[str, str]  # label -> module name ("" for the model)
    types: dict[str, str]  # label -> type name of the module


def forward(model: nn.Module, batch: np.ndarray) -> Pass:
    maps: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    types: dict[str, str] = {}
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            base = name or "output"
            label = base if calls[name] == 1 else f"{base}:{calls[name]}"
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                maps[label] = output.detach().double().numpy().copy()  # a copy: an in-place ReLU comes next
                names[label], types[label] = name, type(module).__name__

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules()]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()
    return Pass(maps, names, types)


def watched_labels(model: nn.Module, run: Pass) -> list[str]:
    """The labels the probe should report, in forward order: calls of the default layers, then the model's output."""
    watched = {name for name, _ in select_layers(model)} | {""}
    return [label for label in run.maps if run.names[label] in watched]


# --------------------------------------------------------------------------- strides, border core


GROWTH = 64  # the documented second input size: 64 pixels taller and wider


def grown_lengths(model: nn.Module, base_input: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Every output's shape for the first image grown by GROWTH pixels (edge values repeated), by label."""
    grown = np.pad(base_input[:1], ((0, 0), (0, 0), (0, GROWTH), (0, GROWTH)), mode="edge")
    return {label: output.shape for label, output in forward(model, grown).maps.items()}


def two_size_stride(size_in: int, length: int, grown_length: int) -> int:
    """The documented stride: GROWTH / (growth of the length), when that is a stride to the pixel; else the guess."""
    growth = grown_length - length
    if growth > 0:
        stride = max(1, round(GROWTH / growth))
        if abs(GROWTH / stride - growth) <= 1:
            return stride
    return axis_stride(size_in, length)


def axis_stride(size_in: int, size_out: int) -> int:
    """The documented stride guess, for one input size: 1 when more than half the pixels are left, else a power of
    two ``p`` with ``|H / p - h| < 1``, else ``round(H / h)``."""
    if size_out > size_in / 2 + 0.5:
        return 1
    power = 2
    while power <= size_in:
        if abs(size_in / power - size_out) < 1:
            return power
        power *= 2
    return max(1, round(size_in / size_out))


def band_mask(height: int, width: int, band: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    by, bx = band
    mask[:by, :] = mask[height - by :, :] = True
    mask[:, :bx] = mask[:, width - bx :] = True
    return mask


def perturbation_core(model: nn.Module, image: np.ndarray, band: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per label, the ``(h, w)`` output pixels that no change inside the border band of ``image`` reaches.

    The band is zeroed in one copy and filled with random normal values in the others, each draw also with its
    sign flipped (so that a ReLU or a max pooling cannot hide a change in both), at scales 1 to 1000. A pixel that
    differs from the zeroed copy's in any channel of any draw sees the band.
    """
    mask = band_mask(*image.shape[-2:], band)
    rng = np.random.default_rng(2024)
    draws = [rng.normal(0.0, scale, size=(image.shape[0], int(mask.sum()))) for scale in (1.0, 10.0, 100.0, 1000.0)]
    copies = np.repeat(image[None].astype(np.float32), 1 + 2 * len(draws), axis=0)
    copies[0][:, mask] = 0
    for index, values in enumerate(draws):
        copies[1 + 2 * index][:, mask] = values
        copies[2 + 2 * index][:, mask] = -values
    run = forward(model, copies)
    cores = {}
    for label, maps in run.maps.items():
        if maps.ndim == 4:
            changed = (maps[1:] != maps[:1]).any(axis=(0, 1))
            cores[label] = ~changed
    return cores


# --------------------------------------------------------------------------- sums and metrics


@dataclass
class Sums:
    """Float64 sums of one comparison over all images, and the definitions of rel_l2, cosine and valid_fraction."""

    squared_difference: float
    squared_reference: float
    squared_output: float
    dot: float
    max_abs: float
    compared: int
    total: int

    @classmethod
    def of(cls, output: np.ndarray, reference: np.ndarray, total: int) -> Sums:
        difference = output - reference
        return cls(
            float(np.sum(difference * difference)),
            float(np.sum(reference * reference)),
            float(np.sum(output * output)),
            float(np.sum(output * reference)),
            float(np.max(np.abs(difference))) if difference.size else math.nan,
            int(output.size),
            total,
        )

    @property
    def rel_l2(self) -> float:
        if self.compared == 0:
            return math.nan
        if self.squared_reference > 0:
            return math.sqrt(self.squared_difference / self.squared_reference)
        return 0.0 if self.squared_difference == 0 else math.inf

    @property
    def cosine(self) -> float:
        if self.compared == 0:
            return math.nan
        norms = math.sqrt(self.squared_output * self.squared_reference)
        if norms > 0:
            return max(-1.0, min(1.0, self.dot / norms))
        return 1.0 if self.squared_output == self.squared_reference else 0.0

    @property
    def valid_fraction(self) -> float:
        return self.compared / self.total if self.total else 0.0


def compare_moved(
    output: np.ndarray, reference: np.ndarray, offset: tuple[int, int], circular: bool, core: np.ndarray | None
) -> Sums:
    """``output`` (``(N, C, h, w)``) against ``reference`` moved by ``offset`` map pixels.

    Circular: ``np.roll``, every pixel. Otherwise a zero-filled move: a pixel counts where its source is inside the
    frame and, with a ``core``, where both it and its source are in the core.
    """
    oy, ox = offset
    if circular:
        moved = np.roll(reference, (oy, ox), axis=(-2, -1))
        keep = np.ones(reference.shape[-2:], dtype=bool)
    else:
        moved = zero_move(reference, oy, ox)
        keep = zero_move(np.ones(reference.shape[-2:]), oy, ox) > 0
        if core is not None:
            keep &= core & (zero_move(core.astype(float), oy, ox) > 0)
    return Sums.of(output[..., keep], moved[..., keep], output.size)


def floor_ceil(value: float) -> list[int]:
    low, high = math.floor(value), math.ceil(value)
    return [low] if low == high else [low, high]


def rank(sums: Sums) -> float:
    return math.inf if math.isnan(sums.rel_l2) else sums.rel_l2


# --------------------------------------------------------------------------- the reference rows


@dataclass
class ReferenceRow:
    layer: str
    type: str
    depth: int
    shape: list[int]
    stride: tuple[int, int] | None
    feature: tuple[float, float]
    multiple: bool
    whole_map: bool
    candidates: dict[tuple[int, int], Sums]  # floor/ceil alignments: floor first, dy then dx
    neighbours: dict[tuple[int, int], Sums] = field(default_factory=dict)  # every alignment within 1 of them
    top1_agreement: float | None = None
    scale: float = 0.0  # max |f(x)| of the layer: what max_abs tolerances are relative to

    @property
    def best(self) -> tuple[int, int]:
        """The alignment the definition picks: the lowest rel_l2, on a tie the nearest to ``t / s``."""
        fy, fx = self.feature
        return min(self.candidates, key=lambda o: (rank(self.candidates[o]), abs(o[0] - fy) + abs(o[1] - fx)))

    @property
    def global_best(self) -> tuple[int, int]:
        """The best of every alignment within one pixel of floor/ceil."""
        pool = self.neighbours or self.candidates
        return min(pool, key=lambda o: rank(pool[o]))

    def floor_ceil_hold_the_best(self) -> bool:
        best = rank(self.candidates[self.best])
        return best <= rank(self.neighbours[self.global_best]) * (1 + REL_TOLERANCE) + ABS_TOLERANCE


@dataclass
class Reference:
    rows: dict[tuple[str, float, float], ReferenceRow]
    layers: list[str]
    cores: dict[str, np.ndarray]


def reference_rows(model: nn.Module, images: np.ndarray, shifts: list[tuple[float, float]], mode: str) -> Reference:
    margin = margin_of(shifts)
    base_input = reference_input(images, mode, margin)
    input_size = base_input.shape[-2:]
    base = forward(model, base_input)
    grown = grown_lengths(model, base_input)
    layers = watched_labels(model, base)
    circular = mode in ("circular", "fourier")
    cores = {} if circular else perturbation_core(model, base_input[0], margin)
    rows = {}
    for dy, dx in shifts:
        moved = forward(model, shifted_input(images, dy, dx, mode, margin))
        for depth, label in enumerate(layers, start=1):
            reference, output = base.maps[label], moved.maps[label]
            common = dict(
                layer=label,
                type=base.types[label],
                depth=depth,
                shape=list(reference.shape[1:]),
                scale=float(np.max(np.abs(reference))),
            )
            if output.ndim == 2:
                agreeing = np.argmax(output, axis=1) == np.argmax(reference, axis=1)
                common["top1_agreement"] = float(np.mean(agreeing))
            if not (reference.ndim == 4 and reference.shape[-2] * reference.shape[-1] > 1):
                whole = Sums.of(output.ravel(), reference.ravel(), output.size)
                rows[label, dy, dx] = ReferenceRow(
                    stride=None,
                    feature=(0.0, 0.0),
                    multiple=False,
                    whole_map=False,
                    candidates={(0, 0): whole},
                    **common,
                )
                continue
            stride = (
                two_size_stride(input_size[0], reference.shape[-2], grown[label][-2]),
                two_size_stride(input_size[1], reference.shape[-1], grown[label][-1]),
            )
            fy, fx = dy / stride[0], dx / stride[1]
            multiple = float(fy).is_integer() and float(fx).is_integer()
            core = cores.get(label)
            whole_map = core is not None and not core.any()
            core = None if whole_map else core
            ys, xs = floor_ceil(fy), floor_ceil(fx)
            candidates = {
                (oy, ox): compare_moved(output, reference, (oy, ox), circular, core) for oy in ys for ox in xs
            }
            neighbours = {}
            if not multiple:
                for oy in range(ys[0] - 1, ys[-1] + 2):
                    for ox in range(xs[0] - 1, xs[-1] + 2):
                        found = candidates.get((oy, ox))
                        neighbours[oy, ox] = (
                            found if found else compare_moved(output, reference, (oy, ox), circular, core)
                        )
            rows[label, dy, dx] = ReferenceRow(
                stride=stride,
                feature=(fy, fx),
                multiple=multiple,
                whole_map=whole_map,
                candidates=candidates,
                neighbours=neighbours,
                **common,
            )
    return Reference(rows, layers, cores)


# --------------------------------------------------------------------------- probe against reference


@functools.cache
def measured(name: str, case: str) -> tuple[ProbeResult, Reference]:
    """The probe's result and the reference for one network and case, computed once per test session."""
    mode, shifts = CASES[case]
    images = images_for(name, case)
    model = network(name)
    result = probe(model, torch.from_numpy(images), shifts=shifts, mode=mode)
    return result, reference_rows(model, images, shifts, mode)


def close(found: float, expected: float, absolute: float = ABS_TOLERANCE) -> bool:
    if math.isnan(expected) or math.isnan(found):
        return math.isnan(expected) and math.isnan(found)
    return abs(found - expected) <= REL_TOLERANCE * abs(expected) + absolute


def disagreements(result: ProbeResult, reference: Reference) -> list[str]:
    """Every way in which the probe's rows differ from the reference, one line each."""
    found = {(row["layer"], row["dy"], row["dx"]): row for row in result.rows}
    problems = []
    if set(found) != set(reference.rows):
        missing, extra = sorted(set(reference.rows) - set(found)), sorted(set(found) - set(reference.rows))
        problems.append(f"rows: missing {missing[:5]}, extra {extra[:5]}")
    for key in sorted(set(found) & set(reference.rows), key=lambda key: (reference.rows[key].depth, key[1:])):
        problems += [
            f"{key}: {what} {got!r}, reference {want!r}"
            for what, got, want in row_disagreements(found[key], reference.rows[key])
        ]
    return problems


def row_disagreements(row: dict, expected: ReferenceRow) -> list[tuple[str, object, object]]:
    """``(what, probe's value, reference's value)`` for every column of one row that disagrees."""
    problems: list[tuple[str, object, object]] = []
    for column in ("type", "depth", "shape"):
        if row[column] != getattr(expected, column):
            problems.append((column, row[column], getattr(expected, column)))
    stride = list(expected.stride) if expected.stride else None
    if row["stride"] != stride:
        return problems + [("stride", row["stride"], stride)]
    if row["multiple"] != expected.multiple:
        problems.append(("multiple", row["multiple"], expected.multiple))
    feature = (row["feature_dy"], row["feature_dx"])
    if not (close(feature[0], expected.feature[0], 1e-12) and close(feature[1], expected.feature[1], 1e-12)):
        problems.append(("feature shift", feature, expected.feature))
    # The probe's alignment must be the best floor/ceil one, or one as good within rounding; its metrics are then
    # compared with the reference's at that same alignment.
    aligned = (row["aligned_dy"], row["aligned_dx"])
    if aligned not in expected.candidates:
        return problems + [("alignment (not a floor/ceil candidate)", aligned, expected.best)]
    sums, best = expected.candidates[aligned], expected.candidates[expected.best]
    if aligned != expected.best and not close(sums.rel_l2, best.rel_l2):
        problems.append((f"alignment (rel_l2 {sums.rel_l2:.9g} against {best.rel_l2:.9g})", aligned, expected.best))
    if not close(row["rel_l2"], sums.rel_l2):
        problems.append(("rel_l2", row["rel_l2"], sums.rel_l2))
    if not close(row["max_abs"], sums.max_abs, REL_TOLERANCE * expected.scale + ABS_TOLERANCE):
        problems.append(("max_abs", row["max_abs"], sums.max_abs))
    if not close(row["cosine"], sums.cosine):
        problems.append(("cosine", row["cosine"], sums.cosine))
    if not close(row["valid_fraction"], sums.valid_fraction, 1e-12):
        problems.append(("valid_fraction", row["valid_fraction"], sums.valid_fraction))
    if row["top1_agreement"] != expected.top1_agreement:
        problems.append(("top1_agreement", row["top1_agreement"], expected.top1_agreement))
    spatial = expected.stride is not None
    wants = {
        NOT_MULTIPLE_WORDS: spatial and not expected.multiple,
        WHOLE_MAP_WORDS: expected.whole_map,
        GLOBAL_WORDS: not spatial,
    }
    note = row["note"]
    if any((words in note) != want for words, want in wants.items()) or (note == "") != (not any(wants.values())):
        problems.append(("note", note, sorted(words for words, want in wants.items() if want)))
    return problems


def network_cases(names=tuple(NETWORKS), cases=tuple(CASES), slow_networks=("resnet18",)):
    return [
        pytest.param(name, case, marks=[slow] if name in slow_networks else [], id=f"{name}-{case}")
        for name in names
        for case in cases
    ]


@pytest.mark.parametrize("name, case", network_cases())
def test_rows_match_the_brute_force_reference(name, case):
    result, reference = measured(name, case)
    assert result.layers == reference.layers
    problems = disagreements(result, reference)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:40])


#: Where trying every alignment within one pixel of floor/ceil finds nothing better, for these images: the stride-1
#: circular network and the article's Sobel + max pooling pipeline. It does not hold for the zero-padded random
#: networks (simple_cnn in every mode, resnet18 with integer shifts): deep maps are smooth, and after a half-pixel
#: misalignment on one axis, not moving at all (outside floor/ceil) can fit better, e.g. simple_cnn's features.7 under
#: a circular (-2, 4) shift: rel_l2 0.515 at the floor/ceil best (0, 1), 0.398 at (0, 0). Nor in crop mode for the
#: article, where the stride guess of the last pooling is 10 (48 / 5) and its core is a few pixels.
FLOOR_CEIL_HOLD = [
    *network_cases(names=("circular_cnn",), cases=("fourier_fractional",)),
    *network_cases(names=("article",), cases=("circular", "zero", "fourier", "fourier_fractional")),
    *network_cases(names=("resnet18",), cases=("fourier_fractional",)),
]


@pytest.mark.parametrize("name, case", FLOOR_CEIL_HOLD)
def test_floor_and_ceil_hold_the_best_alignment(name, case):
    _, reference = measured(name, case)
    searched = [row for row in reference.rows.values() if row.neighbours]
    assert searched, "no row with a shift that is not a multiple of the stride"
    worse = [
        f"{row.layer}: floor/ceil best {row.best} rel_l2 {row.candidates[row.best].rel_l2:.6g}, "
        f"{row.global_best} gives {row.neighbours[row.global_best].rel_l2:.6g}"
        for row in searched
        if not row.floor_ceil_hold_the_best()
    ]
    assert not worse, "\n".join(worse)


# --------------------------------------------------------------------------- batching and input forms


BATCHING = network_cases(
    names=("simple_cnn", "article", "resnet18"), cases=("circular", "zero", "crop", "fourier_fractional")
)


def row_key(row: dict) -> tuple:
    return row["layer"], row["dy"], row["dx"]


@pytest.mark.parametrize("name, case", BATCHING)
def test_batch_size_two_and_a_list_of_images_give_the_same_rows(name, case):
    """Rows are the same whatever the batching, the alignment of rows that compare no pixel included."""
    mode, shifts = CASES[case]
    images = torch.from_numpy(images_for(name, case))
    default, _ = measured(name, case)
    small = probe(network(name), images, shifts=shifts, mode=mode, batch_size=2)
    listed = probe(network(name), list(images), shifts=shifts, mode=mode)
    for other in (small, listed):
        assert [row_key(row) for row in other.rows] == [row_key(row) for row in default.rows]
        for row, expected in zip(other.rows, default.rows):
            columns = ["stride", "multiple", "valid_fraction", "top1_agreement", "note", "aligned_dy", "aligned_dx"]
            for column in columns:
                assert row[column] == expected[column], (*row_key(row), column, row[column], expected[column])
            for column in ("rel_l2", "max_abs", "cosine"):
                absolute = 1e-5 if column == "max_abs" else ABS_TOLERANCE
                assert close(row[column], expected[column], absolute), (
                    *row_key(row),
                    column,
                    row[column],
                    expected[column],
                )


def test_alignment_of_a_row_comparing_nothing_does_not_depend_on_batching():
    # Both candidates NaN and as near t / s: the fixed tie-break (floor first) decides, whatever else is probed.
    model = network("simple_cnn")
    images = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    # In crop mode with margin 8, features.7 (stride 4, 8x8) has a core that no move by (-1, 1) or (0, 1) keeps.
    alone = probe(model, images, shifts=[(-2, 4), (8, 8)], mode="crop", layers="features.7")
    together = probe(model, images, shifts=[(0, 2), (-2, 4), (8, 8)], mode="crop", layers="features.7")
    one_per_pass = probe(
        model, images, shifts=[(0, 2), (-2, 4), (8, 8)], mode="crop", layers="features.7", batch_size=2
    )
    found = [
        next(
            (row["aligned_dy"], row["aligned_dx"], row["valid_fraction"])
            for row in result.rows
            if row_key(row) == ("features.7", -2, 4)
        )
        for result in (alone, together, one_per_pass)
    ]
    assert found[0][2] == 0.0  # nothing compared: the situation this test is about
    assert found[0] == found[1] == found[2]


# --------------------------------------------------------------------------- the reference itself


class TestReferenceInputs:
    """The numpy shifts used above agree with the definitions and with ``shiftlab.shift``."""

    @pytest.mark.parametrize("mode", ["circular", "zero", "crop", "fourier"])
    @pytest.mark.parametrize("dy, dx", [(0, 0), (0, 1), (-3, 2), (4, -4)])
    def test_integer_shifts_agree_with_shiftlab(self, mode, dy, dx):
        images = images_for("simple_cnn", "circular")[:, :, :20, :21]
        margin = (4, 4)
        ours = shifted_input(images, dy, dx, mode, margin)
        theirs = shift(torch.from_numpy(images), dy, dx, mode=mode, margin=margin if mode == "crop" else None).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 if mode == "fourier" else 0)

    @pytest.mark.parametrize("dy, dx", [(0.5, 0.0), (-1.5, 0.25), (2.5, -2.5)])
    def test_sub_pixel_shifts_agree_with_shiftlab_on_odd_sizes(self, dy, dx):
        images = images_for("simple_cnn", "fourier_fractional")[:, :, :21, :19]
        ours = shifted_input(images, dy, dx, "fourier", (0, 0))
        theirs = shift(torch.from_numpy(images), dy, dx, mode="fourier").numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)

    def test_sub_pixel_shifts_compose(self):
        image = np.random.default_rng(0).normal(size=(2, 9, 11))
        np.testing.assert_allclose(
            fourier_move(fourier_move(image, 0.5, -0.25), 0.5, -0.75), np.roll(image, (1, -1), (-2, -1)), atol=1e-12
        )

    def test_zero_move_and_crop_window_by_hand(self):
        row = np.arange(1.0, 6.0)[None, None, None, :]  # 1 2 3 4 5
        assert zero_move(row, 0, 2).ravel().tolist() == [0, 0, 1, 2, 3]
        assert zero_move(row, 0, -1).ravel().tolist() == [2, 3, 4, 5, 0]
        assert zero_move(row, 0, 5).ravel().tolist() == [0] * 5
        assert reference_input(row, "crop", (0, 1)).ravel().tolist() == [2, 3, 4]  # the centre window
        assert shifted_input(row, 0, 1, "crop", (0, 1)).ravel().tolist() == [1, 2, 3]  # its content moved right


class TestReferenceParts:
    def test_two_size_stride(self):
        # the article's net at 64: (64 - 2) // 8 = 7 pixels, at 128: 15; the growth of 8 is a stride of 8, where the
        # one-size guess says 9
        assert two_size_stride(64, 7, 15) == 8 and axis_stride(64, 7) == 9
        assert two_size_stride(64, 21, 42) == 3  # 64 / 3 is no whole growth: within a pixel
        assert two_size_stride(224, 7, 7) == 32  # a length that does not grow: the guess

    def test_stride_guess(self):
        assert [axis_stride(64, size) for size in (64, 62, 32, 31, 16, 15, 8, 7, 2)] == [1, 1, 2, 2, 4, 4, 8, 9, 32]
        assert axis_stride(48, 2) == 32 and axis_stride(114, 8) == 16 and axis_stride(90, 30) == 3

    def test_compare_moved_by_hand(self):
        reference = np.arange(1.0, 7.0).reshape(1, 1, 1, 6)  # 1 2 3 4 5 6
        output = np.array([[[[0.0, 1, 2, 3, 4, 9]]]])
        circular = compare_moved(output, reference, (0, 1), True, None)
        assert circular.compared == 6 and circular.squared_difference == 36 + 16 and circular.max_abs == 6
        zero = compare_moved(output, reference, (0, 1), False, None)  # pixel 0 has no source
        assert zero.compared == 5 and zero.squared_difference == 16 and zero.valid_fraction == 5 / 6
        core = np.array([[False, True, True, True, True, False]])
        cored = compare_moved(output, reference, (0, 1), False, core)  # pixels 2..4: in the core, their sources too
        assert cored.compared == 3 and cored.squared_difference == 0 and cored.rel_l2 == 0 and cored.cosine == 1

    def test_perturbation_core_is_the_receptive_field(self):
        """circular_cnn: 3x3 convolutions without stride, so a map after k of them sees k pixels around it."""
        model = network("circular_cnn")
        image = images_for("circular_cnn", "circular")[0]
        band = (3, 2)
        cores = perturbation_core(model, image, band)
        convolutions = 0
        for name, module in model.named_modules():
            if not name.startswith("features."):
                continue
            convolutions += isinstance(module, nn.Conv2d)
            expected = np.zeros((32, 32), dtype=bool)
            reach_y, reach_x = band[0] + convolutions, band[1] + convolutions
            expected[reach_y : 32 - reach_y, reach_x : 32 - reach_x] = True
            np.testing.assert_array_equal(cores[name], expected, err_msg=name)
