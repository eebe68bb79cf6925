"""How big is an explorer in the report? resnet18, 8x8 shifts, 4 layers, 4 channels: the budget is 5 MB.

Builds the explorer of `shiftlab probe --explore` for torchvision's resnet18 (random weights, seeded) on the bundled
photo at 224x224 (ImageNet normalisation), every (dy, dx) in 0..7 (64 shifts, crop windows), the outputs of conv1,
layer1, layer2 and layer3 (strides 2, 4, 8, 16), the 4 strongest channels of each; then measures:

* frame values: float32 values captured (layers x channels x (shifts + 1) x pixels);
* raw bytes: the 8-bit frames, input and border cores before deflate;
* packed bytes: after prediction and deflate, as base64 in the page;
* payload bytes: the explorer's whole JSON in the page (frames, probe rows, per-image errors);
* page bytes: a report holding this one explorer section (stylesheet, script, colour maps; no figures), as written;
* times: the probe plus the capture (explorer_data), the packing, and the whole page.

    PYTHONPATH=src python benchmarks/bench_explorer.py
    PYTHONPATH=src python benchmarks/bench_explorer.py --shifts 0:4 --channels 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from shiftlab.data import NORMALIZATIONS, prepare_images
from shiftlab.probing.explore import Screen, explorer_data
from shiftlab.probing.frames import explorer_payload
from shiftlab.report.html import write_report
from shiftlab.report.sections import Section
from shiftlab.shifts import shift_grid

BUDGET = 5_000_000


def payload_bytes(payload: dict[str, Any]) -> int:
    """The payload's size in the page, in bytes (its JSON text, as the report writes it)."""
    return len(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shifts", default="0:8", help="dy and dx range (default 0:8: 64 shifts)")
    parser.add_argument("--layers", default="conv1,layer1,layer2,layer3")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", default=None, help="also write the measurements here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = prepare_images(["chelsea"], channels=3, size=args.size, normalize="imagenet")
    layers = [name.strip() for name in args.layers.split(",")]
    shifts = shift_grid(args.shifts)

    start = time.perf_counter()
    data = explorer_data(
        model, images, shifts, mode="crop", layers=layers, channels=args.channels,
        screen=Screen(normalization=NORMALIZATIONS["imagenet"], names=["chelsea"]),
    )  # fmt: skip
    captured = time.perf_counter() - start
    start = time.perf_counter()
    payload = explorer_payload(data, title="resnet18", key="bench")
    packed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        html, _ = write_report(
            [Section("explorer", "resnet18", "", explorers=[("Move the input through resnet18", data)])],
            folder,
            title="bench",
        )
        page = Path(html).stat().st_size
    page_seconds = time.perf_counter() - start

    found = {
        "model": "resnet18 (random weights, seed 0)",
        "input": f"chelsea, {args.size}x{args.size}, ImageNet normalisation",
        "shifts": len(shifts),
        "layers": {layer.label: list(layer.reference.shape) for layer in data.layers},
        "channels": args.channels,
        "frame_values": sum(layer.reference.size + layer.shifted.size for layer in data.layers),
        "raw_bytes": payload["rawBytes"],
        "packed_bytes": len(payload["data"]),
        "payload_bytes": payload_bytes(payload),
        "page_bytes": page,
        "budget_bytes": BUDGET,
        "within_budget": page <= BUDGET,
        "seconds": {"probe_and_capture": captured, "pack": packed_seconds, "page": page_seconds},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
    }
    for key, value in found.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
