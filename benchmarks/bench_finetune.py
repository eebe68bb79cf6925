"""How fast does shiftlab.finetune train? Against a plain training loop on the same model and data; 2 processes vs 1.

1. **Per epoch, against a plain loop.** The trained ``digits_cnn`` converted (default: APS with circular padding,
   the most expensive conversion) is trained for one epoch on the first ``--images`` bundled training digits, batch
   64, SGD with Nesterov momentum:

   * a plain loop: images indexed from a tensor, forward, cross-entropy with the labels, backward, step;
   * :func:`shiftlab.finetune.finetune`: every image loaded through the evaluation's dataset, shifted (a circular roll
     or a crop window per image, from its own seeded generator), the teacher's output (computed once, before the
     epoch) as the target, the distillation loss plus the cross-entropy, backward, step.

   The figure is the plain loop's time divided by fine-tuning's time for the epoch's steps (target >= 0.8), the
   median over ``--rounds`` rounds, the two interleaved in every round, each going first in every other round (on
   a loaded machine the second of a pair was often the slower, whichever it was: an even number of rounds
   balances the order). The one-off teacher pass (one forward pass of
   the teacher over the images, before the first epoch) is reported beside it, as a share of an epoch.

2. **Two processes against one.** The same fine-tuning (``--epochs``, default 1) under ``torchrun --nproc_per_node
   2`` with one thread per process, against one process with one thread and with two threads. Reported: the
   two-process time over each one-process time, for the training steps, medians of per-round ratios.

Threads: one by default (``--threads``). On a machine shared with other jobs two OpenMP threads that wait for each
other at every operation can run many times slower than one (measured here: 13 times), which says nothing about
either loop; one thread per process is the configuration that measures the code.

    python benchmarks/bench_finetune.py                     # both parts, CPU
    python benchmarks/bench_finetune.py --part epoch --rounds 7 --variant circular_blurpool
    python benchmarks/bench_finetune.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shiftlab.digits import load_digits
from shiftlab.finetune import FinetuneSettings, finetune
from shiftlab.layers.spec import split_model_spec
from shiftlab.models import DIGITS_CNN_VARIANTS, load_model

ROOT = Path(__file__).resolve().parent.parent


def models(variant: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The trained ``digits_cnn`` (teacher) and its copy converted to ``variant`` (student)."""
    teacher, _ = load_model("digits_cnn")
    conversion = split_model_spec(f"digits_cnn{DIGITS_CNN_VARIANTS[variant]}")[1]
    assert conversion is not None
    return teacher, conversion.apply(copy.deepcopy(teacher))[0]


def plain_epoch(
    student: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: FinetuneSettings
) -> float:
    """One epoch of a plain training loop; returns its wall time."""
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    steps = math.ceil(len(labels) / settings.batch_size)
    student.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(student(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def finetune_epoch(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: FinetuneSettings,
) -> dict[str, float]:
    """One epoch of shiftlab.finetune (a 10-digit held-out set: its evaluation is left out of the figures)."""
    holdout = load_digits("test")
    started = time.perf_counter()
    result = finetune(teacher, student, (images, labels), settings, holdout=(holdout[0][:10], holdout[1][:10]))
    total = time.perf_counter() - started
    return {"steps": result.seconds["training"], "evaluation": result.seconds["evaluation"], "total": total}


def epoch_part(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    images, labels = load_digits("train")
    images, labels = images[: args.images], labels[: args.images]
    settings = FinetuneSettings(epochs=1, shift_mode="auto")
    teacher, student = models(args.variant)
    finetune_epoch(teacher, copy.deepcopy(student), images[:128], labels[:128], settings)  # warm-up: imports, caches
    plain_epoch(copy.deepcopy(student), images[:128], labels[:128], settings)
    rounds = []
    for number in range(args.rounds):
        order = ("plain", "finetune") if number % 2 == 0 else ("finetune", "plain")
        times: dict[str, Any] = {}
        for name in order:
            if name == "plain":
                times["plain"] = plain_epoch(copy.deepcopy(student), images, labels, settings)
            else:
                times["finetune"] = finetune_epoch(teacher, copy.deepcopy(student), images, labels, settings)
        steps = times["finetune"]["steps"]
        # the one-off teacher pass and setup: what the run cost beyond its steps and its (tiny) evaluation
        setup = times["finetune"]["total"] - steps - times["finetune"]["evaluation"]
        rounds.append(
            {
                "plain_seconds": times["plain"],
                "finetune_step_seconds": steps,
                "finetune_setup_seconds": setup,
                "speed_ratio": times["plain"] / steps,
                "setup_share_of_epoch": setup / steps,
            }
        )
        print(
            f"round {number + 1}: plain {times['plain']:.2f} s, fine-tune steps {steps:.2f} s (ratio "
            f"{times['plain'] / steps:.3f}), setup {setup:.2f} s",
            flush=True,
        )
    return {
        "variant": args.variant,
        "images": args.images,
        "threads": args.threads,
        "rounds": rounds,
        "median_speed_ratio": statistics.median(item["speed_ratio"] for item in rounds),
        "median_setup_share_of_epoch": statistics.median(item["setup_share_of_epoch"] for item in rounds),
        "median_plain_seconds": statistics.median(item["plain_seconds"] for item in rounds),
        "median_finetune_step_seconds": statistics.median(item["finetune_step_seconds"] for item in rounds),
    }


def worker(args: argparse.Namespace) -> None:
    """One fine-tuning run (in a torchrun process or alone); the main process writes its step time to --out."""
    torch.set_num_threads(args.threads)
    images, labels = load_digits("train")
    teacher, student = models(args.variant)
    holdout = load_digits("test")
    result = finetune(
        teacher,
        student,
        (images[: args.images], labels[: args.images]),
        FinetuneSettings(epochs=args.epochs),
        holdout=(holdout[0][:10], holdout[1][:10]),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(
            json.dumps({"steps": result.seconds["training"], "processes": result.protocol["processes"]})
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_part(args: argparse.Namespace) -> dict[str, Any]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    common = ["--worker", "--variant", args.variant, "--images", str(args.images), "--epochs", str(args.epochs)]
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "seconds.json"
        for number in range(args.rounds):
            order = ["one", "one_two_threads", "two"]
            order = order[number % 3 :] + order[: number % 3]  # each first in a third of the rounds
            seconds = {}
            for name in order:
                if name == "two":
                    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
                    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
                    command += [__file__, *common, "--threads", "1", "--out", str(out)]
                    threads = "1"
                else:
                    threads = "2" if name == "one_two_threads" else "1"
                    command = [sys.executable, __file__, *common, "--threads", threads, "--out", str(out)]
                subprocess.run(
                    command, env={**environment, "OMP_NUM_THREADS": threads}, check=True, capture_output=True
                )
                record = json.loads(out.read_text())
                assert record["processes"] == (2 if name == "two" else 1)
                seconds[name] = record["steps"]
            rounds.append(
                {
                    **seconds,
                    "two_over_one": seconds["two"] / seconds["one"],
                    "two_over_one_two_threads": seconds["two"] / seconds["one_two_threads"],
                }
            )
            print(
                f"round {number + 1}: 1 process, 1 thread {seconds['one']:.2f} s; 1 process, 2 threads "
                f"{seconds['one_two_threads']:.2f} s; 2 processes {seconds['two']:.2f} s",
                flush=True,
            )
    return {
        "variant": args.variant,
        "images": args.images,
        "epochs": args.epochs,
        "rounds": rounds,
        "median_two_over_one": statistics.median(item["two_over_one"] for item in rounds),
        "median_two_over_one_two_threads": statistics.median(item["two_over_one_two_threads"] for item in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("epoch", "processes", "both"), default="both")
    parser.add_argument("--variant", choices=sorted(DIGITS_CNN_VARIANTS), default="circular_aps")
    parser.add_argument("--images", type=int, default=1024, help="training digits (default: 1024, 16 steps)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each order in half of them (default: 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the epoch part (default: 1)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the processes part (default: 1)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if args.part in ("epoch", "both"):
        report["epoch"] = epoch_part(args)
        print(f"epoch: plain / fine-tune speed ratio, median {report['epoch']['median_speed_ratio']:.3f}")
    if args.part in ("processes", "both"):
        report["processes"] = processes_part(args)
        print(
            f"processes: 2 processes / 1 process time, median {report['processes']['median_two_over_one']:.3f} "
            f"(1 thread), {report['processes']['median_two_over_one_two_threads']:.3f} (2 threads)"
        )
    report["machine"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
