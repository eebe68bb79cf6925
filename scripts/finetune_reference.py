"""The shipped fine-tuned weights: the trained ``digits_cnn``, converted, then fine-tuned by self-distillation.

Run from the repository root (CPU only)::

    PYTHONPATH=src python scripts/finetune_reference.py                          # all three, into the package
    PYTHONPATH=src python scripts/finetune_reference.py --variant circular_aps   # one of them
    PYTHONPATH=src python scripts/finetune_reference.py --out /tmp/digits        # somewhere else

For each conversion in :data:`VARIANTS` (BlurPool; BlurPool with circular padding; APS with circular padding), the
shipped ``digits_cnn`` (``assets/digits_cnn_baseline.safetensors``) is converted (the same layers as the variant
trained from scratch, ``digits_cnn+blurpool`` ...) and fine-tuned by :func:`shiftlab.finetune.finetune` with its
default settings and seed 0 on the 4,000 bundled training digits; the original model is the teacher. It writes

* ``digits_cnn_finetuned_<variant>.safetensors``: the fine-tuned state_dict, the same bytes for the same weights
  (:func:`shiftlab._io.safetensors_bytes`);
* ``digits_cnn_finetuned_<variant>.json``: the protocol, the training curve, accuracy and consistency before and
  after on the 1,000 test digits (never trained on), the times, the machine and the weights' sha256.

Determinism: as ``scripts/train_reference.py`` (``deterministic``: a fixed number of threads, 1 by default (see
:data:`THREADS`), and torch's deterministic algorithms); the same torch build and thread count give the same weights
bit for bit.

Timing in the JSON: ``training_seconds`` (wall) and ``training_cpu_seconds`` (the process's CPU time, all threads)
for the training steps alone, ``evaluation_seconds`` for the held-out measurements, and ``load_average_before``
(the 1-minute load average when the run started): on a shared machine the wall time says as much about the
neighbours as about the fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from shiftlab.errors import check_choice
from shiftlab.finetune import STAGES, FinetuneOptions, FinetuneResult, FinetuneSettings, finetune
from shiftlab.layers.spec import split_model_spec
from shiftlab.models import DIGITS_CNN_VARIANTS, DIGITS_CNN_WEIGHTS, load_model

SCRIPTS = Path(__file__).resolve().parent
ASSETS = SCRIPTS.parent / "src" / "shiftlab" / "assets"

#: The conversions fine-tuned: variant name (as in ``shiftlab.models.DIGITS_CNN_VARIANTS``) -> spec suffix.
VARIANTS: dict[str, str] = {
    name: DIGITS_CNN_VARIANTS[name] for name in ("blurpool", "circular_blurpool", "circular_aps")
}

#: Threads of the shipped runs (the weights depend on it, in the last bits). One: on a machine shared with other
#: jobs, two OpenMP threads that wait for each other at every operation ran 13 times slower than one (measured:
#: 8 steps in 14.4 s against 1.1 s at a load average of 8), and the digits' small convolutions gain little from two.
THREADS = 1


def _train_reference() -> Any:
    """scripts/train_reference.py as a module (its ``deterministic`` context)."""
    name = "_shiftlab_script_train_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / "train_reference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build(variant: str) -> tuple[nn.Module, nn.Module]:
    """``(teacher, student)``: the shipped ``digits_cnn`` and its copy converted to ``variant``."""
    variant = check_choice(variant, "variant", VARIANTS)
    teacher, _ = load_model("digits_cnn")
    conversion = split_model_spec(f"digits_cnn{VARIANTS[variant]}")[1]
    assert conversion is not None
    student, _ = conversion.apply(copy.deepcopy(teacher))
    return teacher, student


def run(
    variant: str, *, threads: int = THREADS, holdout: Any = None, max_steps: int | None = None
) -> tuple[FinetuneResult, dict[str, Any]]:
    """Fine-tune one conversion with the default settings; return the result and its record (the JSON).

    ``holdout`` and ``max_steps`` are for quick checks (the first steps of the shipped run, exactly): the shipped
    run holds out the 1,000 test digits and takes every step.
    """
    settings = FinetuneSettings(seed=0)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with _train_reference().deterministic(threads):
        teacher, student = build(variant)
        result = finetune(
            teacher, student, "digits", settings, holdout=holdout, options=FinetuneOptions(max_steps=max_steps)
        )
    record = {
        "variant": variant,
        "spec": f"digits_cnn{VARIANTS[variant]}",
        "teacher": f"digits_cnn ({DIGITS_CNN_WEIGHTS})",
        "data": "shiftlab.finetune.finetune(..., 'digits'): the 4,000 bundled training digits",
        "settings": settings.describe(),
        "protocol": result.protocol,
        "metrics": {stage: result.metrics(stage) for stage in STAGES},
        "epochs": result.epochs,
        "steps": result.steps,
        **_train_reference().environment(threads),
        "training_seconds": round(result.seconds["training"], 1),
        "training_cpu_seconds": round(result.seconds["training_cpu"], 1),
        "evaluation_seconds": round(result.seconds["evaluation"], 1),
        "load_average_before": load_before,
        "test_correct": result.metrics("fine-tuned")["correct"],
        "test_images": result.metrics("fine-tuned")["images"],
    }
    return result, record


def save(result: FinetuneResult, record: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``digits_cnn_finetuned_<variant>.safetensors`` and ``.json`` into ``out``; the JSON holds the sha256."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"digits_cnn_finetuned_{record['variant']}"
    weights = result.save_weights(
        out / f"{stem}.safetensors", {"variant": f"finetuned_{record['variant']}", "seed": "0"}
    )
    record = dict(record, weights=weights.name, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    report = out / f"{stem}.json"
    report.write_text(json.dumps(record, indent=2) + "\n")
    return weights, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all three")
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default: {ASSETS})")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default: {THREADS})")
    args = parser.parse_args(argv)
    for variant in args.variant or list(VARIANTS):
        result, record = run(variant, threads=args.threads)
        weights, report = save(result, record, args.out)
        before, after = result.metrics("converted"), result.metrics("fine-tuned")
        print(
            f"{variant}: test accuracy {before['correct']}/{before['images']} -> {after['correct']}/{after['images']}"
            f", circular consistency {before['circular_consistency']:.4f} -> {after['circular_consistency']:.4f}; "
            f"training {record['training_seconds']} s wall, {record['training_cpu_seconds']} s CPU -> {weights}, "
            f"{report}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
