"""What does probing cost? shiftlab.probe against a bare forward pass and against the naive way, in one run.

Compared, for one model, one image and a list of shifts (default: torchvision's
resnet18 at 224x224, random weights, horizontal shifts 1..8, circular mode):

* bare forward: the model on the batch that probing needs (the image and its
  8 shifted copies: 9 inputs), with no hooks: the floor;
* shiftlab.probe: hooks on every layer of --layers (default "all": convolutions,
  pooling, normalisation, activations, linear layers, residual blocks) computing
  every metric inside the hooks; timed as later calls on a kept engine
  (shiftlab.probing.layerwise.probe_engine + probe_with: the layout plan already made) and,
  apart, as a call of shiftlab.probe() (which plans the layouts on every call:
  one more single-image forward pass at another size);
* read once: the same hooks, each only reading its layer's output once, a floor
  for any probe that looks at every activation from a hook;
* the naive way: for each shift, two single-image forward passes (original and
  shifted), every activation of the same layers stored, then compared with the
  same metrics and the same alignments (16 single-image passes for 8 shifts).

Reported, as medians over rounds of the ratio within each round (one call of every variant, one after the other):
probe time / bare time (target <= 1.5 on a
CPU, stretch 1.3), naive time / probe time (target >= 1.7 at 8 shifts on a CPU),
and peak memory / peak memory of the bare forward (target <= 1.5). Peak memory is
measured in fresh processes (the median of three per variant): the rise of the
resident set (CPU) or of torch.cuda.max_memory_allocated (GPU) above what the
model and inputs hold. One-time costs (a first probe of a tiny network) are paid
first in every variant and reported on their own line.

Streaming: the probe reads its inputs as a stream, so its peak memory must not
grow with the number of images. Measured in fresh processes: a probe over a
generator of 8 images, then of 64 (made one at a time from a seed), one image
per batch, peak resident set above the baseline.

    python benchmarks/bench_probe.py                 # CPU, resnet18, 224, shifts 1..8
    python benchmarks/bench_probe.py --device cuda   # same on a GPU
    python benchmarks/bench_probe.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from shiftlab.probing._compare import alignment_candidates
from shiftlab.probing.equivariance import feature_stride
from shiftlab.probing.layerwise import ProbeOptions, probe, probe_engine, probe_with, select_layers
from shiftlab.shifts import ShiftMode


def build(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, list[tuple[int, int]]]:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(args.model, weights=None).eval().to(args.device)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, args.size, args.size, generator=generator).to(args.device)
    shifts = [
        (0, dx) for dx in range(1, args.shifts + 1)
    ]  # no zero shift: probe would skip its pass, the bare batch would not
    return model, image, shifts


def shifted_inputs(image: torch.Tensor, shifts: list[tuple[int, int]], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference input and the stack of its shifted copies, ``(len(shifts), *reference.shape)``."""
    shift_mode = ShiftMode.of(mode)
    reference, margin = shift_mode.reference(image, shifts)
    return reference, torch.stack([shift_mode.shifted(image, dy, dx, margin) for dy, dx in shifts])


def probe_batch(image: torch.Tensor, shifts: list[tuple[int, int]], mode: str) -> torch.Tensor:
    reference, moved = shifted_inputs(image, shifts, mode)
    return torch.cat([reference[None], moved]).flatten(0, 1)


def layer_spec(types: str | None, layers: str = "all") -> Any:
    """``layers`` (a probe layer spec: "all" by default, as the targets were set on it) or a predicate keeping the
    modules whose class name is listed."""
    if not types:
        return None if layers == "default" else layers
    names = {name.strip() for name in types.split(",")}
    return lambda name, module: type(module).__name__ in names


def _naive_error(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, max abs error) of ``output`` against ``reference``, in float64."""
    difference = (output - reference).double()
    norm = float(reference.double().square().sum().sqrt())
    error = float(difference.square().sum().sqrt())
    return (error / norm if norm > 0 else (0.0 if error == 0 else math.inf)), float(difference.abs().max())


def naive(
    model: nn.Module, image: torch.Tensor, shifts: list[tuple[int, int]], mode: str, layers_spec: Any = None
) -> dict[str, list[float]]:
    """The straightforward way: per shift, two passes, keep every activation, compare afterwards.

    Returns, per layer, the relative L2 error of each shift after the best floor/ceiling alignment.
    """
    layers = select_layers(model, layers_spec)
    results: dict[str, list[float]] = {}
    for dy, dx in shifts:
        reference_input, moved = shifted_inputs(image, [(dy, dx)], mode)
        stored: list[dict[str, torch.Tensor]] = []
        for batch in (reference_input, moved[0]):
            activations: dict[str, torch.Tensor] = {}

            def keep(
                module: nn.Module,
                inputs: Any,
                output: torch.Tensor,
                name: str,
                activations: dict[str, torch.Tensor] = activations,
            ) -> None:
                label = (
                    name
                    if name not in activations
                    else next(f"{name}:{k}" for k in range(2, 1000) if f"{name}:{k}" not in activations)
                )
                activations[label] = output.detach().clone()  # clone: in-place ReLUs would change it later

            handles = [
                module.register_forward_hook(lambda m, i, o, name=name: keep(m, i, o, name)) for name, module in layers
            ]
            try:
                with torch.no_grad():
                    activations["output"] = model(batch).detach().clone()
            finally:
                for handle in handles:
                    handle.remove()
            stored.append(activations)
        for name, reference in stored[0].items():
            output = stored[1][name]
            if reference.ndim == 4 and reference.shape[-1] * reference.shape[-2] > 1:
                stride = feature_stride(image.shape[-2:], reference.shape)
                best = min(
                    _naive_error(output, torch.roll(reference, shifts=offset, dims=(-2, -1)))[0]
                    for offset in alignment_candidates(dy, dx, stride)
                )
            else:
                best = _naive_error(output, reference)[0]
            results.setdefault(name, []).append(best)
    return results


def read_once(model: nn.Module, batch: torch.Tensor, layers_spec: Any = None) -> None:
    """A floor for any hook-based probe: the same hooks, each reading its layer's output once (one reduction)."""
    handles = [
        module.register_forward_hook(lambda m, i, o: None if torch.linalg.vector_norm(o) is None else None)
        for _, module in select_layers(model, layers_spec)
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(args: argparse.Namespace) -> None:
    """Child process: run one variant once and print its peak memory above the baseline."""
    model, image, shifts = build(args)
    batch = probe_batch(image, shifts, args.mode)

    def stream(count: int):
        for index in range(count):  # one image at a time, made from its own seed: never all of them at once
            yield torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(index)).to(args.device)

    variants = {
        "bare": lambda: model(batch),
        "probe": lambda: probe(
            model, image, shifts=shifts, mode=args.mode, layers=layer_spec(args.layer_types, args.layers)
        ),
        "naive": lambda: naive(model, image, shifts, args.mode, layer_spec(args.layer_types, args.layers)),
        "stream8": lambda: probe(
            model, stream(8), shifts=shifts, mode=args.mode, layers=layer_spec(args.layer_types, args.layers)
        ),
        "stream64": lambda: probe(
            model, stream(64), shifts=shifts, mode=args.mode, layers=layer_spec(args.layer_types, args.layers)
        ),
    }
    run = variants[args.memory_child]
    if args.device.startswith("cuda"):
        with torch.no_grad():
            run()  # warm up cuDNN
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        with torch.no_grad():
            run()
        torch.cuda.synchronize()
        print(json.dumps({"peak": torch.cuda.max_memory_allocated() - baseline}))
        return
    # On the CPU, the high-water mark of the resident set (VmHWM) above the resident set before the run.
    # One-time costs are paid first, in every variant alike, and reported apart (a probe of a tiny network:
    # lazy imports, first-call allocations). The mark is then reset (Linux: "5" into /proc/self/clear_refs)
    # so that it starts from the current resident set.
    before = rss_bytes()
    tiny = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.ReLU()).eval()
    probe(tiny, torch.rand(1, 1, 8, 8), shifts=[(0, 1)])
    probe(tiny, torch.rand(1, 1, 8, 8), shifts=[(0, 1)], mode="crop")
    one_time = rss_bytes() - before
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if args.memory_child.startswith("stream"):  # the first pass's one-time growth, paid for 8 and 64 alike
        probe(model, stream(2), shifts=shifts, mode=args.mode, layers=layer_spec(args.layer_types, args.layers))
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    baseline = rss_bytes()
    with torch.no_grad():
        run()
    print(json.dumps({"peak": peak_rss_bytes() - baseline, "one_time": one_time}))


def child_memory(args: argparse.Namespace, variant: str) -> dict[str, int]:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        variant,
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--shifts",
        str(args.shifts),
        "--mode",
        args.mode,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    command += ["--layers", args.layers]
    if args.layer_types:
        command += ["--layer-types", args.layer_types]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--shifts", type=int, default=8, help="horizontal shifts 1..N (default 8)")
    parser.add_argument("--mode", default="circular")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are taken over all of them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--layer-types",
        default=None,
        help="watch only modules of these class names (comma-separated, e.g. Conv2d,BasicBlock); default: probe's "
        "default layers",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--streaming", action="store_true", help="also measure peak memory of a probe over 8 and over 64 images"
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="the probe's layers: 'all' (default: every conv, pool, norm, activation, linear layer and residual "
        "block, 60 in resnet18, as the targets were set) or 'default' (the probe's default: blocks and the layers "
        "outside them)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory(args)
        return

    model, image, shifts = build(args)
    batch = probe_batch(image, shifts, args.mode)
    watched = layer_spec(args.layer_types, args.layers)
    times: dict[str, list[float]] = {"bare": [], "read_once": [], "probe": [], "probe_first": [], "naive": []}

    # Later calls: an engine kept, its layout plan made once; a call of probe() plans the layouts again, every time.
    engine = probe_engine(model, watched)
    options = ProbeOptions()
    variants: dict[str, Callable[[], Any]] = {
        "bare": lambda: model(batch),
        "read_once": lambda: read_once(model, batch, watched),
        "probe": lambda: probe_with(engine, image, shifts, args.mode, options=options, leave_out_folded=False),
        "probe_first": lambda: probe(model, image, shifts=shifts, mode=args.mode, layers=watched),
        "naive": lambda: naive(model, image, shifts, args.mode, watched),
    }
    with torch.no_grad():
        for run in variants.values():  # warm up
            run()
        # One call of each variant after the other, round after round: a noisy moment of this shared machine hits
        # neighbouring calls alike, so the ratios are taken within each round and their median reported.
        for _ in range(args.rounds * args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                synchronize(args.device)
                times[name].append(time.perf_counter() - start)
    ratios = {
        name: statistics.median(value / bare for value, bare in zip(times[name], times["bare"]))
        for name in ("read_once", "probe", "probe_first")
    }
    ratios["naive_over_probe"] = statistics.median(n / p for n, p in zip(times["naive"], times["probe"]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    # The resident set's high-water mark moves with the allocator's choices (heap or fresh pages) from one
    # process to the next: the median of three fresh processes per variant.
    names = ("bare", "probe", "naive") + (("stream8", "stream64") if args.streaming else ())
    measured = {name: [child_memory(args, name) for _ in range(3)] for name in names}
    memory = {name: int(statistics.median(values["peak"] for values in runs)) for name, runs in measured.items()}
    one_time = int(statistics.median(values.get("one_time", 0) for values in measured["probe"]))

    # The two ways must agree before their times mean anything.
    fast = probe(model, image, shifts=shifts, mode=args.mode, layers=watched)
    slow = naive(model, image, shifts, args.mode, watched)
    worst = math.nan  # the naive comparator moves maps circularly: a check only in circular mode
    for row in fast.rows if args.mode == "circular" else []:
        worst = 0.0 if math.isnan(worst) else worst
        expected = slow[row["layer"]][shifts.index((row["dy"], row["dx"]))]
        if math.isfinite(expected) and math.isfinite(row["rel_l2"]):
            worst = max(worst, abs(row["rel_l2"] - expected) / max(expected, 1e-6))

    result = {
        "machine": machine(args.device),
        "protocol": {
            "model": args.model,
            "size": args.size,
            "shifts": f"(0, 1)..(0, {args.shifts})",
            "mode": args.mode,
            "device": args.device,
            "layers_watched": fast.protocol["layers_watched"],
            "layer_types": args.layer_types or args.layers,
            "rows": len(fast.rows),
        },
        "median_seconds": medians,
        "probe_over_bare": ratios["probe"],
        "first_probe_over_bare": ratios["probe_first"],
        "read_once_over_bare": ratios["read_once"],
        "naive_over_probe": ratios["naive_over_probe"],
        "peak_memory_bytes": memory,
        "peak_memory_bytes_each_process": {
            name: [values["peak"] for values in runs] for name, runs in measured.items()
        },
        "probe_memory_over_bare": memory["probe"] / memory["bare"] if memory["bare"] > 0 else math.nan,
        "one_time_memory_bytes": one_time,
        "largest_relative_disagreement_probe_vs_naive": worst,
    }
    print(f"machine: {result['machine']}")
    print(f"protocol: {result['protocol']}")
    print(f"{'variant':<8} {'median s':>10} {'peak MiB':>10}")
    for name in ("bare", "probe", "naive"):
        print(f"{name:<8} {medians[name]:>10.4f} {memory[name] / 2**20:>10.1f}")
    print(f"read_once {medians['read_once']:>9.4f}          (floor: the same hooks, each reading its output once)")
    print(f"first    {medians['probe_first']:>10.4f}          (a call of probe(): plans layouts every time)")
    print(
        f"probe / bare time   {result['probe_over_bare']:.3f}   (target <= 1.5 on CPU, stretch 1.3;"
        f" floor read_once / bare {result['read_once_over_bare']:.3f})"
    )
    print(f"first probe / bare  {result['first_probe_over_bare']:.3f}   (one more single-image pass, at another size)")
    print(f"naive / probe time  {result['naive_over_probe']:.3f}   (target >= 1.7 at 8 shifts on CPU)")
    print(f"probe / bare memory {result['probe_memory_over_bare']:.3f}   (target <= 1.5)")
    print(
        f"once per process, before any of these: a first probe of a tiny network, {one_time / 2**20:.0f} MiB resident"
    )
    print(
        f"probe vs naive rel_l2, largest relative disagreement: {worst:.2e}"
        if not math.isnan(worst)
        else "probe vs naive: not compared (the naive comparator implements circular moves only)"
    )
    if args.streaming:
        grown = memory["stream64"] / memory["stream8"] if memory["stream8"] > 0 else math.nan
        result["stream_memory_64_over_8"] = grown
        print(
            f"streaming: peak {memory['stream8'] / 2**20:.1f} MiB for 8 images, {memory['stream64'] / 2**20:.1f} MiB"
            f" for 64 (ratio {grown:.3f}; flat means memory does not grow with the number of images)"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
