"""How fast does shiftlab.evaluate measure consistency? Two comparisons, each in one run, same model and data.

``--compare published`` (default): pairs per second against the published loop.
Both measure Zhang (2019)'s crop consistency: the image resized to a shorter side
of 256 and centre-cropped to 256x256, two 224x224 windows at random offsets in
[0, 32) per axis, agreement of the two top-1 classes.

* the published loop (reimplemented, as in adobe/antialiased-cnns' validation):
  for each batch of images, one random pair of offsets, two forward passes of
  the batch, one pair per image;
* shiftlab.evaluate with ``K`` views per image (default 8): the ``K`` windows of
  every image go through the model together and all ``K (K - 1) / 2`` pairs are
  compared: 28 pairs for 8 forward passes per image, against 1 pair for 2.

Both load the same images with the same loader (shiftlab's ``EvaluationDataset``,
``--workers`` processes) and run the same model (default: torchvision's
resnet18, random weights: speed does not depend on the weights). The figure
is pairs evaluated per second, the median over ``--repeats`` runs of each,
interleaved; reported: shiftlab / published (target >= 3 at K = 8).

``--compare forward``: is evaluation model-bound? Images per second of the whole
``evaluate`` call (crop-consistency, ``K`` views per image: decoding, resizing,
cutting views, start-up of loader processes, counting) against the bare forward
pass of the same model on the same number of views in passes of the same sizes,
from one tensor made beforehand (no decoding, no views). Variants: ``--workers``
values (default ``0 2 auto``). Each round runs the bare forward and every variant,
in an order rotated from round to round; the figure is the median over rounds of
each round's ratio variant / bare (target >= 0.85).

    python benchmarks/bench_evaluate.py                   # CPU, resnet18, 48 images, against the published loop
    python benchmarks/bench_evaluate.py --compare forward --images 32 --workers 0 2 auto
    python benchmarks/bench_evaluate.py --device cuda --images 512 --batch-size 256
    python benchmarks/bench_evaluate.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from shiftlab.data import Preprocess
from shiftlab.invariance.datasets import EvaluationDataset, make_loader, open_images
from shiftlab.invariance.evaluate import EvaluateOptions, evaluate
from shiftlab.invariance.protocols import Consistency
from shiftlab.invariance.views import Geometry, build_view

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def make_images(folder: Path, count: int) -> None:
    """Smooth random photos of 256x320 to 320x256 (JPEG), seeded: decoding and resizing cost what photos cost."""
    rng = np.random.default_rng(0)
    for index in range(count):
        height, width = (256, 320) if index % 2 else (320, 256)
        coarse = rng.random((height // 16, width // 16, 3))
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        image.save(folder / f"{index:04d}.jpg", quality=90)


def published_loop(model: nn.Module, folder: Path, args: argparse.Namespace) -> int:
    """One random pair of offsets per batch, two forward passes; returns the number of pairs compared."""
    dataset = EvaluationDataset(open_images(folder), channels=3, resize=256)
    indices = list(range(len(dataset)))
    batches = [indices[start : start + args.batch_size] for start in range(0, len(indices), args.batch_size)]
    rng = np.random.default_rng(0)
    pairs = agreeing = 0
    for items in make_loader(dataset, batches, workers=int(args.workers[0])):
        canvases = torch.stack(
            [build_view(item.image, ("identity",), Geometry.of(*item.image.shape[-2:], 256)) for item in items]
        )
        canvases = ((canvases - MEAN) / STD).to(args.device)
        first, second = rng.integers(0, 32, size=2), rng.integers(0, 32, size=2)
        with torch.inference_mode():
            out0 = model(canvases[:, :, first[0] : first[0] + 224, first[1] : first[1] + 224])
            out1 = model(canvases[:, :, second[0] : second[0] + 224, second[1] : second[1] + 224])
        agreeing += int((out0.argmax(1) == out1.argmax(1)).sum())
        pairs += len(items)
    return pairs


def shiftlab_run(model: nn.Module, folder: Path, args: argparse.Namespace, workers: int | str | None = None) -> int:
    result = evaluate(
        model,
        folder,
        metrics=Consistency("crop", views=args.views, max_shift=32),
        preprocess=Preprocess.make(resize=256, crop=224, normalize="imagenet"),
        options=EvaluateOptions(
            batch_size=args.batch_size,
            workers=_workers(args.workers[0]) if workers is None else workers,
            device=args.device,
        ),
    )
    return result.results[result.models[0]]["crop-consistency"]["pairs"]


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


def pass_sizes(images: int, views: int, batch_size: int) -> list[int]:
    """The sizes of evaluate's forward passes: packs of ``batch_size // views`` images, at most ``batch_size`` each."""
    per_pack = max(1, batch_size // views)
    sizes = []
    for start in range(0, images, per_pack):
        inputs = views * (min(images, start + per_pack) - start)
        sizes += [min(batch_size, inputs - offset) for offset in range(0, inputs, batch_size)]
    return sizes


def bare_forward(model: nn.Module, batch: torch.Tensor, sizes: list[int]) -> int:
    """The model alone on the same number of views, in passes of the same sizes; returns the inputs run."""
    with torch.inference_mode():
        for size in sizes:
            model(batch[:size])
    return sum(sizes)


def decode_seconds(folder: Path) -> float:
    """Seconds to decode and resize every image once in this process (what the loader does per image)."""
    dataset = EvaluationDataset(open_images(folder), channels=3, resize=256)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def compare_forward(model: nn.Module, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Images per second of evaluate (each --workers value) against the bare forward pass, round by round."""
    sizes = pass_sizes(args.images, args.views, args.batch_size)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(max(sizes), 3, 224, 224, generator=generator).to(args.device)
    variants = {"bare forward": lambda: bare_forward(model, batch, sizes)}
    for text in args.workers:
        variants[f"evaluate, workers={text}"] = lambda text=text: shiftlab_run(model, folder, args, _workers(text))
    for function in variants.values():  # warm-up: allocator, kernels, file cache
        function()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    load = [os.getloadavg()[0]]
    for round_number in range(args.repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, _ = timed(variants[name])
            seconds[name].append(elapsed)
        load.append(os.getloadavg()[0])
    bare = seconds["bare forward"]
    ratios = {name: [b / t for b, t in zip(bare, values)] for name, values in seconds.items() if name != "bare forward"}
    decoding = decode_seconds(folder)
    return {
        "passes": sizes,
        "seconds": seconds,
        "images_per_second": {name: [args.images / t for t in values] for name, values in seconds.items()},
        "median_images_per_second": {
            name: statistics.median(args.images / t for t in values) for name, values in seconds.items()
        },
        "ratio_per_round": ratios,
        "median_ratio": {name: statistics.median(values) for name, values in ratios.items()},
        "decode_ms_per_image": 1000 * decoding / args.images,
        "forward_ms_per_image": 1000 * statistics.median(bare) / args.images,
        "load_average_1min": load,
    }


def timed(function: Any, *arguments: Any) -> tuple[float, int]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    pairs = function(*arguments)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("published", "forward"), default="published")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per batch of the published loop; inputs per forward pass of shiftlab",
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        default=None,
        help="loader processes (published: one value, default 0; forward: the variants, default 0 2 auto)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.workers = args.workers or (["0"] if args.compare == "published" else ["0", "2", "auto"])

    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(args.model, weights=None).eval().to(args.device)
    machine = {
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        make_images(folder, args.images)
        if args.compare == "forward":
            report = {"model": args.model, "images": args.images, "views": args.views, "batch_size": args.batch_size}
            report |= {"device": args.device, **machine, **compare_forward(model, folder, args)}
            print_forward(report)
        else:
            report = compare_published(model, folder, args, machine)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def print_forward(report: dict[str, Any]) -> None:
    print(
        f"{report['model']}, {report['images']} images, K = {report['views']}, batch {report['batch_size']},"
        f" {report['device']}, {report['threads']} threads, {report['cpus']} CPUs;"
        f" load average {', '.join(f'{value:.1f}' for value in report['load_average_1min'])}"
    )
    print(
        f"  decoding and resizing: {report['decode_ms_per_image']:.1f} ms per image;"
        f" bare forward: {report['forward_ms_per_image']:.0f} ms per image ({report['views']} views)"
    )
    for name, rates in report["images_per_second"].items():
        runs = ", ".join(f"{value:.2f}" for value in rates)
        line = f"  {name:<22} {report['median_images_per_second'][name]:6.2f} img/s (median; rounds: {runs})"
        if name in report["median_ratio"]:
            ratios = ", ".join(f"{value:.2f}" for value in report["ratio_per_round"][name])
            line += f"; / bare: {report['median_ratio'][name]:.2f} (rounds: {ratios})"
        print(line)
    print("  target: evaluate >= 0.85 of the bare forward")


def compare_published(model: nn.Module, folder: Path, args: argparse.Namespace, machine: dict) -> dict[str, Any]:
    published_loop(model, folder, args)  # warm-up: allocator, kernels, file cache
    shiftlab_run(model, folder, args)
    rates: dict[str, list[float]] = {"published": [], "shiftlab": []}
    seconds: dict[str, list[float]] = {"published": [], "shiftlab": []}
    for _ in range(args.repeats):
        for name, function in (("published", published_loop), ("shiftlab", shiftlab_run)):
            elapsed, pairs = timed(function, model, folder, args)
            rates[name].append(pairs / elapsed)
            seconds[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in rates.items()}
    report = {
        "model": args.model,
        "images": args.images,
        "views": args.views,
        "pairs_per_image": {"published": 1, "shiftlab": args.views * (args.views - 1) // 2},
        "batch_size": args.batch_size,
        "workers": args.workers[0],
        "device": args.device,
        "seconds": seconds,
        "pairs_per_second": rates,
        "median_pairs_per_second": median,
        "ratio": median["shiftlab"] / median["published"],
        **machine,
    }
    print(
        f"{args.model}, {args.images} images, K = {args.views}, batch {args.batch_size}, {args.device},"
        f" {machine['threads']} threads"
    )
    for name in ("published", "shiftlab"):
        runs = ", ".join(f"{value:.1f}" for value in rates[name])
        times = ", ".join(f"{value:.2f}" for value in seconds[name])
        print(f"  {name:<10} {median[name]:8.1f} pairs/s (median; runs: {runs}; seconds: {times})")
    print(f"  shiftlab / published: {report['ratio']:.2f}x (target >= 3 at K = 8)")
    return report


if __name__ == "__main__":
    sys.exit(main())
