"""Benchmark shiftlab's vectorised operators against the article's loops and against CPU peers.

What is compared, and why
-------------------------
shiftlab reimplements the reference tutorial article's three operations,
``convolve`` (3x3 Sobel, valid region, then ReLU; ``--kernel`` picks another
kernel, e.g. ``laplacian``: the Sobel is separable, so shiftlab applies it as a
row pass and a column pass, while a Laplacian takes the general shift-and-add
path), ``max_pool`` (2x2, stride 2)
and ``pool_pyramid`` (repeated 2x2 max pooling), without Python loops over pixels.
This script times, in one run and on the same seeded random float32 grayscale
images (512x512 and 2048x2048 by default):

1. shiftlab's ``convolve``, ``max_pool`` and ``pool_pyramid`` (6 poolings, fewer
   if the image does not allow 6);
2. the article's per-pixel Python loops, reimplemented faithfully below (our own
   code, off-by-one bugs fixed). These take minutes on large images, so when the
   full image would blow the loop budget (``--loop-budget``, 120 s by default)
   they are timed on a horizontal strip of ``--strip-rows`` rows and scaled
   linearly by the number of output rows; the table says so on every such row;
3. peers doing the same thing with established libraries: for ``convolve``
   ``scipy.ndimage.correlate``, ``cv2.filter2D`` and ``torch.nn.functional.conv2d``;
   for ``max_pool`` ``skimage.measure.block_reduce``, a numpy reshape-max and
   ``torch.nn.functional.max_pool2d``; for ``pool_pyramid`` the same three
   poolings repeated. Missing optional libraries are skipped with a note.

Before anything is timed, every peer's output (and the loops' output) is checked
against shiftlab's with ``np.testing.assert_allclose(rtol=1e-5, atol=1e-5)``, so
the figures compare like with like. Every implementation is given numpy in and
returns numpy out, as a user of each library would; peers are written the way a
careful user would (ReLU in place, then a zero-copy crop), not the slowest way.

Timing: one warm-up call, then ``timeit``'s autorange picks how many calls make
one repeat last at least 0.2 s; each measurement is ``--repeats`` such repeats
(at least 5) and the figure reported is the MEDIAN time per call (the best
repeat is kept too). The repeats of all implementations of one operator are
interleaved, round by round, so that load from other processes on a shared
machine falls on all of them alike. Ratios are taken between medians of the
same run. The machine is described at the top of the output (CPU, cores,
thread counts, library versions, load average) because the ratios depend on it.

``--baseline FILE`` adds another version of ``ops.py`` (e.g. ``git show
COMMIT:src/shiftlab/ops.py > /tmp/ops_before.py``) to the ``convolve`` rows as
"shiftlab baseline", timed in the same rounds: a before/after comparison on
the same machine at the same moment.

``--block-elements V ...`` instead sweeps ``shiftlab.ops._BLOCK_ELEMENTS`` (the
row-block size of the shift-and-add convolution), timing shiftlab's convolve
and cv2.filter2D in interleaved rounds; it is how that constant was chosen.

Usage (from the repository root, with shiftlab installed)::

    python benchmarks/bench_ops.py
    python benchmarks/bench_ops.py --sizes 512 2048 --repeats 7 --json out/bench_ops.json
    python benchmarks/bench_ops.py --kernel laplacian
    python benchmarks/bench_ops.py --baseline /tmp/ops_before.py
    python benchmarks/bench_ops.py --block-elements 16384 65536 262144
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import shiftlab
import shiftlab.ops as ops
from shiftlab import convolve, get_kernel, max_pool, max_pyramid_depth, pool_pyramid

try:
    import scipy
    import scipy.ndimage as ndimage
except ImportError:  # pragma: no cover - optional peer
    scipy = ndimage = None
try:
    import cv2
except ImportError:  # pragma: no cover - optional peer
    cv2 = None
try:
    import skimage
    from skimage.measure import block_reduce
except ImportError:  # pragma: no cover - optional peer
    skimage = block_reduce = None

SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
KERNEL = SOBEL  # the kernel ``convolve`` is timed with; ``--kernel`` replaces it
POOL = 2
PYRAMID_LEVELS = 6
RTOL = ATOL = 1e-5
LOOPS = "article loops"
SHIFTLAB = "shiftlab"
BASELINE = "shiftlab baseline"
baseline_convolve: Callable[..., Any] | None = None  # ``convolve`` of the --baseline file

Impl = Callable[[np.ndarray], Any]


# --------------------------------------------------------------------------
# The article's per-pixel loops (reimplemented; bugs fixed)
# --------------------------------------------------------------------------


def loop_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid cross-correlation, one ``np.sum`` per output pixel, then ReLU."""
    kh, kw = kernel.shape
    out = np.zeros((image.shape[0] - kh + 1, image.shape[1] - kw + 1), dtype=image.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(image[i : i + kh, j : j + kw] * kernel)
    return np.maximum(out, 0)


def loop_max_pool(image: np.ndarray, k: int = POOL) -> np.ndarray:
    """Non-overlapping ``k x k`` max pooling, one ``np.max`` per output pixel."""
    out = np.zeros((image.shape[0] // k, image.shape[1] // k), dtype=image.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.max(image[i * k : (i + 1) * k, j * k : (j + 1) * k])
    return out


def loop_pyramid(image: np.ndarray, iterations: int, k: int = POOL) -> list[np.ndarray]:
    """The article's pyramid: ``loop_max_pool`` applied again and again."""
    levels = [image]
    for _ in range(iterations):
        levels.append(loop_max_pool(levels[-1], k))
    return levels


# --------------------------------------------------------------------------
# Implementations under test: name -> callable(image), or name -> reason skipped
# --------------------------------------------------------------------------


def convolve_impls() -> tuple[dict[str, Impl], dict[str, str]]:
    kh, kw = KERNEL.shape
    crop = (slice(kh // 2, kh // 2 - kh + 1 or None), slice(kw // 2, kw // 2 - kw + 1 or None))
    impls: dict[str, Impl] = {SHIFTLAB: lambda x: convolve(x, KERNEL)}
    if baseline_convolve is not None:
        impls[BASELINE] = functools.partial(baseline_convolve, kernel=KERNEL)
    skipped: dict[str, str] = {}

    if ndimage is not None:

        def scipy_correlate(x: np.ndarray) -> np.ndarray:
            out = ndimage.correlate(x, KERNEL, mode="constant")
            np.maximum(out, 0, out=out)
            return out[crop]

        impls["scipy.ndimage.correlate"] = scipy_correlate
    else:
        skipped["scipy.ndimage.correlate"] = "scipy not installed"

    if cv2 is not None:

        def cv2_filter2d(x: np.ndarray) -> np.ndarray:
            out = cv2.filter2D(x, cv2.CV_32F, KERNEL, borderType=cv2.BORDER_CONSTANT)
            cv2.threshold(out, 0, 0, cv2.THRESH_TOZERO, dst=out)  # ReLU in place
            return out[crop]

        impls["cv2.filter2D"] = cv2_filter2d
    else:
        skipped["cv2.filter2D"] = "opencv-python(-headless) not installed"

    weight = torch.from_numpy(KERNEL)[None, None]

    def torch_conv2d(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.relu(F.conv2d(torch.from_numpy(x)[None, None], weight))[0, 0].numpy()

    impls["torch F.conv2d"] = torch_conv2d
    impls[LOOPS] = lambda x: loop_convolve(x, KERNEL)
    return impls, skipped


def _pool_impls() -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, str]]:
    """Single 2x2 max pooling by each peer (shiftlab and the loops excluded)."""
    impls: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    skipped: dict[str, str] = {}
    if block_reduce is not None:
        impls["skimage block_reduce"] = lambda x: block_reduce(
            x[: x.shape[0] // POOL * POOL, : x.shape[1] // POOL * POOL], (POOL, POOL), np.max
        )
    else:
        skipped["skimage block_reduce"] = "scikit-image not installed"

    def numpy_reshape_max(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[0] // POOL, x.shape[1] // POOL
        return x[: h * POOL, : w * POOL].reshape(h, POOL, w, POOL).max(axis=(1, 3))

    impls["numpy reshape-max"] = numpy_reshape_max

    def torch_max_pool2d(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return F.max_pool2d(torch.from_numpy(x)[None, None], POOL)[0, 0].numpy()

    impls["torch F.max_pool2d"] = torch_max_pool2d
    return impls, skipped


def max_pool_impls() -> tuple[dict[str, Impl], dict[str, str]]:
    peers, skipped = _pool_impls()
    impls: dict[str, Impl] = {SHIFTLAB: lambda x: max_pool(x, POOL), **peers, LOOPS: loop_max_pool}
    return impls, skipped


def pyramid_impls(iterations: int) -> tuple[dict[str, Impl], dict[str, str]]:
    peers, skipped = _pool_impls()

    def repeated(pool: Callable[[np.ndarray], np.ndarray]) -> Impl:
        def pyramid(x: np.ndarray) -> list[np.ndarray]:
            levels = [x]
            for _ in range(iterations):
                levels.append(pool(levels[-1]))
            return levels

        return pyramid

    impls: dict[str, Impl] = {SHIFTLAB: lambda x: pool_pyramid(x, iterations, POOL)}
    impls.update({f"{name} x{iterations}": repeated(pool) for name, pool in peers.items()})
    impls[LOOPS] = lambda x: loop_pyramid(x, iterations)
    return impls, {f"{name} x{iterations}": why for name, why in skipped.items()}


# --------------------------------------------------------------------------
# Checking and timing
# --------------------------------------------------------------------------


def assert_same(expected: Any, actual: Any, what: str) -> None:
    """Outputs (arrays, or lists of pyramid levels) must agree to rtol/atol 1e-5."""
    if isinstance(expected, list):
        assert len(expected) == len(actual), f"{what}: {len(actual)} levels, expected {len(expected)}"
        for level, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{what}, level {level}")
        return
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert expected.shape == actual.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def calibrate(fn: Callable[[], Any]) -> tuple[timeit.Timer, int]:
    """Warm ``fn`` up and pick how many calls make one repeat last at least 0.2 s."""
    fn()  # warm-up (allocator, caches, lazy imports)
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()  # smallest of 1, 2, 5, 10, 20, ... calls lasting >= 0.2 s
    return timer, number


def interleaved_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call, ``repeats`` samples each, taken in rounds that visit every function once.

    Interleaving spreads each function's repeats over the whole measurement, so a
    burst of load from another process on a shared machine hits some repeats of
    every function instead of all repeats of one, and the medians stay comparable.
    """
    timers = {name: calibrate(fn) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number) / number)
    return samples


@dataclass
class Result:
    size: int
    operator: str
    implementation: str
    median_ms: float
    min_ms: float
    repeats: int
    note: str = ""
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class LoopPlan:
    """How the article's loops are timed at one size: full image, or a strip scaled up."""

    strip_rows: int | None  # None: the whole image
    projected_full_s: float  # estimated time of timing the full image

    def describe(self, height: int) -> str:
        if self.strip_rows is None:
            return "full image"
        pool, conv = self.scale(height, "max_pool"), self.scale(height, "convolve")
        return f"{self.strip_rows}-row strip, scaled x{pool:.2f} (convolve x{conv:.2f})"

    def strip(self, image: np.ndarray, operator: str) -> np.ndarray:
        if self.strip_rows is None:
            return image
        extra = KERNEL.shape[0] - 1 if operator == "convolve" else 0
        return image[: self.strip_rows + extra]

    def scale(self, height: int, operator: str) -> float:
        """Full-image time / strip time, assuming time proportional to output rows."""
        if self.strip_rows is None:
            return 1.0
        if operator == "convolve":
            return (height - KERNEL.shape[0] + 1) / self.strip_rows
        return height / self.strip_rows  # every pyramid level shrinks by the same factor


def plan_loops(image: np.ndarray, iterations: int, repeats: int, strip_rows: int, budget_s: float) -> LoopPlan:
    """Time each loop once on a strip and decide whether the full image fits the budget."""
    probe = LoopPlan(strip_rows, 0.0)
    calls = repeats + 3  # warm-up, autorange (about one call when a call > 0.2 s), repeats
    projected = 0.0
    for operator, fn in (
        ("convolve", lambda x: loop_convolve(x, KERNEL)),
        ("max_pool", loop_max_pool),
        ("pool_pyramid", lambda x: loop_pyramid(x, iterations)),
    ):
        strip = probe.strip(image, operator)
        start = timeit.default_timer()
        fn(strip)
        projected += (timeit.default_timer() - start) * probe.scale(image.shape[0], operator) * calls
    full = image.shape[0] <= strip_rows or projected <= budget_s
    return LoopPlan(None if full else strip_rows, projected)


def bench_operator(
    size: int,
    operator: str,
    image: np.ndarray,
    impls: dict[str, Impl],
    skipped: dict[str, str],
    plan: LoopPlan,
    repeats: int,
) -> list[Result]:
    """Check every implementation against shiftlab, then time each one."""
    reference = impls[SHIFTLAB](image)
    loop_input = plan.strip(image, operator)
    for name, fn in impls.items():
        if name == LOOPS:
            expected = impls[SHIFTLAB](loop_input)
            assert_same(expected, fn(loop_input), f"{operator} {size}: {name}")
        elif name != SHIFTLAB:
            assert_same(reference, fn(image), f"{operator} {size}: {name}")

    calls = {name: functools.partial(fn, loop_input if name == LOOPS else image) for name, fn in impls.items()}
    results = []
    for name, seconds in interleaved_seconds(calls, repeats).items():
        note = ""
        if name == LOOPS and plan.strip_rows is not None:
            seconds = [t * plan.scale(size, operator) for t in seconds]
            note = f"scaled from a {plan.strip_rows}-row strip (x{plan.scale(size, operator):.2f})"
        ms = [t * 1e3 for t in seconds]
        results.append(Result(size, operator, name, statistics.median(ms), min(ms), repeats, note, ms))
        print(f"  {operator:<12} {name:<28} {statistics.median(ms):12.3f} ms  {note}", flush=True)
    for name, why in skipped.items():
        results.append(Result(size, operator, name, float("nan"), float("nan"), 0, f"skipped: {why}"))
        print(f"  {operator:<12} {name:<28} {'skipped':>12}     {why}", flush=True)
    return results


# --------------------------------------------------------------------------
# Machine description and report
# --------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str | None:
    """1/5/15-minute load averages: above the core count, other processes compete for the CPU."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "scipy": scipy.__version__ if scipy else None,
        "cv2": cv2.__version__ if cv2 else None,
        "cv2_threads": cv2.getNumThreads() if cv2 else None,
        "skimage": skimage.__version__ if skimage else None,
        "shiftlab": shiftlab.__version__,
        "block_elements": ops._BLOCK_ELEMENTS,
        "loadavg_at_start": _loadavg(),
    }
    return info


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """Per size and operator, the headline ratios between medians of this run."""
    table: dict[tuple[int, str], dict[str, float]] = {}
    for r in results:
        table.setdefault((r.size, r.operator), {})[r.implementation] = r.median_ms
    rows = []
    for (size, operator), times in table.items():
        ours = times[SHIFTLAB]
        row: dict[str, Any] = {"size": size, "operator": operator, "shiftlab_ms": ours}
        row["speedup_vs_loops"] = times.get(LOOPS, float("nan")) / ours
        if operator == "convolve":
            row["speedup_vs_scipy"] = times.get("scipy.ndimage.correlate", float("nan")) / ours
            row["shiftlab_over_cv2"] = ours / times.get("cv2.filter2D", float("nan"))
        peers = {n: t for n, t in times.items() if n not in (SHIFTLAB, LOOPS, BASELINE) and t == t}
        if BASELINE in times:
            row["shiftlab_over_baseline"] = ours / times[BASELINE]
        if peers:
            fastest = min(peers, key=peers.get)
            row["fastest_peer"] = fastest
            row["shiftlab_over_fastest_peer"] = ours / peers[fastest]
        rows.append(row)
    return rows


def print_report(results: list[Result], summary: list[dict[str, Any]]) -> None:
    print("\nMedian time per call (ms); 'x shiftlab' = this implementation's time / shiftlab's time")
    header = (
        f"{'size':>5}  {'operator':<12} {'implementation':<28} "
        f"{'median ms':>12} {'best ms':>10} {'x shiftlab':>11}  note"
    )
    print(header)
    print("-" * len(header))
    ours = {(r.size, r.operator): r.median_ms for r in results if r.implementation == SHIFTLAB}
    for r in results:
        rel = r.median_ms / ours[(r.size, r.operator)]
        median = f"{r.median_ms:12.3f}" if r.median_ms == r.median_ms else f"{'-':>12}"
        best = f"{r.min_ms:10.3f}" if r.min_ms == r.min_ms else f"{'-':>10}"
        relative = f"{rel:11.2f}" if rel == rel else f"{'-':>11}"
        print(f"{r.size:>5}  {r.operator:<12} {r.implementation:<28} {median} {best} {relative}  {r.note}")

    print("\nHeadline ratios (same run)")
    for row in summary:
        parts = [
            f"{row['size']:>5} {row['operator']:<12} shiftlab {row['shiftlab_ms']:.3f} ms",
            f"{row['speedup_vs_loops']:.0f}x faster than the article's loops",
        ]
        if "speedup_vs_scipy" in row:
            scipy_ratio, cv2_ratio = row["speedup_vs_scipy"], row["shiftlab_over_cv2"]
            parts.append(f"{scipy_ratio:.2f}x faster than scipy" if scipy_ratio == scipy_ratio else "no scipy")
            parts.append(f"shiftlab/cv2 = {cv2_ratio:.2f}" if cv2_ratio == cv2_ratio else "no cv2")
        if "shiftlab_over_baseline" in row:
            parts.append(f"shiftlab/baseline = {row['shiftlab_over_baseline']:.2f}")
        if "fastest_peer" in row:
            parts.append(f"shiftlab/fastest peer ({row['fastest_peer']}) = {row['shiftlab_over_fastest_peer']:.2f}")
        print("  " + "; ".join(parts))


# --------------------------------------------------------------------------
# Block-size sweep (tuning ops._BLOCK_ELEMENTS)
# --------------------------------------------------------------------------


def sweep_block_elements(images: dict[int, np.ndarray], values: list[int], repeats: int) -> list[dict[str, Any]]:
    """Time shiftlab's convolve per block size, in rounds interleaving all values (and cv2) to share noise."""
    original = ops._BLOCK_ELEMENTS
    convolve_peers, _ = convolve_impls()

    def with_block(value: int, image: np.ndarray) -> Callable[[], Any]:
        def run() -> Any:
            ops._BLOCK_ELEMENTS = value
            return convolve(image, KERNEL)

        return run

    samples: dict[tuple[int, str], list[float]] = {}
    try:
        for size, image in images.items():
            fns = {str(value): with_block(value, image) for value in values}
            if "cv2.filter2D" in convolve_peers:
                fns["cv2.filter2D"] = functools.partial(convolve_peers["cv2.filter2D"], image)
            for name, seconds in interleaved_seconds(fns, repeats).items():
                samples[(size, name)] = seconds
            print(f"  {size}x{size} done", flush=True)
    finally:
        ops._BLOCK_ELEMENTS = original
    rows = [
        {"size": s, "block_elements": v, "median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3}
        for (s, v), t in samples.items()
    ]
    print(f"\nmedian and best of {repeats} interleaved repeats")
    print(f"{'size':>5}  {'_BLOCK_ELEMENTS':>16}  {'median ms':>10}  {'min ms':>10}")
    for row in rows:
        print(f"{row['size']:>5}  {row['block_elements']:>16}  {row['median_ms']:10.3f}  {row['min_ms']:10.3f}")
    return rows


# --------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """NaN (a skipped peer) becomes null, so the JSON file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="square image sides")
    parser.add_argument("--repeats", type=int, default=7, help="repeats per measurement, >= 5 (default 7)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--strip-rows", type=int, default=64, help="strip height for the loops on big images")
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=120.0,
        help="seconds the loops may take at one size before a strip is used (default 120)",
    )
    parser.add_argument(
        "--threads", type=int, help="set torch's (and OpenCV's) thread count; default: leave the libraries' defaults"
    )
    parser.add_argument(
        "--kernel",
        default="sobel_y",
        help="shiftlab kernel name (odd size) that convolve is timed with, default sobel_y; "
        "e.g. laplacian for a kernel that is not separable",
    )
    parser.add_argument(
        "--baseline", type=Path, help="another version of shiftlab/ops.py whose convolve is timed alongside"
    )
    parser.add_argument(
        "--block-elements", type=int, nargs="+", help="instead: sweep shiftlab.ops._BLOCK_ELEMENTS over these values"
    )
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.strip_rows % POOL**PYRAMID_LEVELS:
        parser.error(f"--strip-rows must be a multiple of {POOL**PYRAMID_LEVELS} so every pyramid level scales")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        if cv2 is not None:
            cv2.setNumThreads(args.threads)
    global KERNEL, baseline_convolve
    KERNEL = get_kernel(args.kernel, dtype=torch.float32).numpy()
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_ops", args.baseline)
        if spec is None or spec.loader is None:
            raise SystemExit(f"--baseline {args.baseline}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        baseline_convolve = module.convolve
    if KERNEL.shape[0] % 2 == 0 or KERNEL.shape[1] % 2 == 0:
        raise SystemExit(f"--kernel {args.kernel}: the peers' crops assume an odd-sized kernel, got {KERNEL.shape}")
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine()
    info["kernel"] = f"{args.kernel} {KERNEL.tolist()}"
    info["baseline"] = str(args.baseline) if args.baseline else None
    print(f"shiftlab operator benchmark, {started:%Y-%m-%d %H:%M UTC}")
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    for key, value in info.items():
        print(f"  {key:<15} {value}")

    images = {n: np.random.default_rng(0).random((n, n), dtype=np.float32) for n in args.sizes}
    output: dict[str, Any] = {"date": started.isoformat(), "argv": sys.argv, "machine": info}

    if args.block_elements:
        output["block_sweep"] = sweep_block_elements(images, args.block_elements, args.repeats)
    else:
        results: list[Result] = []
        output["loop_plans"] = {}
        for size, image in images.items():
            iterations = min(PYRAMID_LEVELS, max_pyramid_depth(size, size, POOL))
            plan = plan_loops(image, iterations, args.repeats, args.strip_rows, args.loop_budget)
            output["loop_plans"][size] = asdict(plan)
            print(
                f"\n{size}x{size}: pyramid of {iterations} poolings; article loops on the "
                f"{plan.describe(size)} (projected full-image loop timing {plan.projected_full_s:.0f} s); "
                f"load average {_loadavg()}"
            )
            for operator, (impls, skipped) in (
                ("convolve", convolve_impls()),
                ("max_pool", max_pool_impls()),
                ("pool_pyramid", pyramid_impls(iterations)),
            ):
                results += bench_operator(size, operator, image, impls, skipped, plan, args.repeats)
        summary = ratios(results)
        print_report(results, summary)
        output["results"] = [asdict(r) for r in results]
        output["ratios"] = summary

    output["loadavg_at_end"] = _loadavg()
    print(
        f"\nload average at start {info['loadavg_at_start']}, at end {output['loadavg_at_end']} "
        f"({info['cores']} cores; this benchmark itself adds up to about {info['torch_threads']})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(output), indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
