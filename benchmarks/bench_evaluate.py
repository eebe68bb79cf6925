"""How fast does shiftlab.evaluate measure consistency? Against the published loop, same model and data, one run.

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

    python benchmarks/bench_evaluate.py                   # CPU, resnet18, 48 images
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

from shiftlab.datasets import EvaluationDataset, make_loader, open_images
from shiftlab.evaluate import evaluate
from shiftlab.invariance import Consistency
from shiftlab.views import Geometry, build_view

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
    for items in make_loader(dataset, batches, workers=args.workers):
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


def shiftlab_run(model: nn.Module, folder: Path, args: argparse.Namespace) -> int:
    result = evaluate(
        model,
        folder,
        metrics=Consistency("crop", views=args.views, max_shift=32),
        resize=256,
        crop=224,
        normalize="imagenet",
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    return result.results[result.models[0]]["crop-consistency"]["pairs"]


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
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per batch of the published loop; inputs per forward pass of shiftlab",
    )
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(args.model, weights=None).eval().to(args.device)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        make_images(folder, args.images)
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
        "workers": args.workers,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "pairs_per_second": rates,
        "median_pairs_per_second": median,
        "ratio": median["shiftlab"] / median["published"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    threads = torch.get_num_threads()
    print(
        f"{args.model}, {args.images} images, K = {args.views}, batch {args.batch_size}, {args.device},"
        f" {threads} threads"
    )
    for name in ("published", "shiftlab"):
        runs = ", ".join(f"{value:.1f}" for value in rates[name])
        times = ", ".join(f"{value:.2f}" for value in seconds[name])
        print(f"  {name:<10} {median[name]:8.1f} pairs/s (median; runs: {runs}; seconds: {times})")
    print(f"  shiftlab / published: {report['ratio']:.2f}x (target >= 3 at K = 8)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
