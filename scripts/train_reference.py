"""Train shiftlab's reference digit classifier (``digits_cnn``) on the bundled MNIST 5k training split, reproducibly.

Run from the repository root (CPU only; 20-60 s per variant on 2 idle cores, several minutes when they are
shared)::

    PYTHONPATH=src python scripts/train_reference.py                      # the baseline, written into the package
    PYTHONPATH=src python scripts/train_reference.py --variant circular_aps   # a variant (see VARIANTS)
    PYTHONPATH=src python scripts/train_reference.py --out /tmp/digits    # somewhere else

It writes ``digits_cnn_<variant>.safetensors`` (the state_dict) and ``digits_cnn_<variant>.json`` (the protocol: seed,
epochs, optimizer, learning-rate schedule, batch size, versions, machine, wall time, and the accuracy on the 1,000
test images, which training never sees).

A variant is "build :class:`shiftlab.models.DigitsCNN`, initialise it from the seed, then convert it" (see
:data:`VARIANTS`: the conversion suffix of its model spec, such as ``+circular+aps``); everything after that, data
order included, is the same for every variant, so that variants differ only in their architecture. The
conversions keep every parameter under its name and add none, so every variant starts from the same weights. The
shipped variants are ``shiftlab.models.DIGITS_CNN_VARIANTS``: zero or circular padding, times strided, BlurPool or
APS downsampling; ``shiftlab.experiments.variants`` compares them.

There is no shift augmentation (no random crops or translations): the comparison between the baseline and its
anti-aliased and polyphase variants should show what each architecture does with shifts by itself, not what data
augmentation taught it. MNIST digits are centred by their centre of mass, so the training images barely move.

Determinism: explicit ``torch.Generator`` seeds for the initialisation and for the data order,
``torch.use_deterministic_algorithms(True)``, a fixed number of threads (2 by default, restored afterwards), no
DataLoader workers. The same seed, thread count and torch build give the same weights bit for bit, and the same
file byte for byte (see :func:`shiftlab._io.safetensors_bytes`).

Timing in the JSON: ``wall_seconds`` from loading the data to the last step, ``cpu_seconds`` the process's CPU time
over the same span (all threads), and ``load_average_before`` the 1-minute load average when training started: on
a shared machine the wall time says as much about the neighbours as about the training.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab._io import safetensors_bytes
from shiftlab.digits import DIGITS_SIZES, load_digits
from shiftlab.errors import check_choice, check_int, check_real
from shiftlab.layers.spec import split_model_spec
from shiftlab.models import DIGITS_CNN_VARIANTS, DigitsCNN

ASSETS = Path(__file__).resolve().parent.parent / "src" / "shiftlab" / "assets"


#: Variant name -> the conversion suffix of its model spec (``digits_cnn`` + suffix), applied to the freshly
#: initialised baseline before training: the shipped variants, ``shiftlab.models.DIGITS_CNN_VARIANTS``, whose
#: spec then loads the weights trained here (``blurpool``: ``make_shift_invariant(model, "blurpool")[0]``).
VARIANTS: dict[str, str] = dict(DIGITS_CNN_VARIANTS)


#: The protocol of the shipped weights.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "epochs": 12,
    "batch_size": 64,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "threads": 2,
}


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count inside the block; the caller's settings come back after it."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)


def environment(threads: int) -> dict[str, Any]:
    """The software and the machine of a run, for its record: the weights depend on them in the last bits."""
    return {
        "threads": threads,
        "deterministic_algorithms": True,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }


def initialise(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every weight from ``generator``: He-normal convolutions (fan-out, as torchvision's ResNets), unit batch
    norm, and the linear layer as PyTorch's default (uniform, bound ``1 / sqrt(fan_in)``)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


def build_model(variant: str = "baseline", *, seed: int = 0) -> nn.Module:
    """``DigitsCNN`` initialised from ``seed`` (the same weights for every variant), then converted to ``variant``."""
    variant = check_choice(variant, "variant", VARIANTS)
    # Layer constructors draw their default initialisation from the global generator: let them, in a forked state
    # that is seeded (so that a conversion adding parameters is reproducible) and then discarded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = initialise(DigitsCNN(), torch.Generator().manual_seed(seed))
        conversion = split_model_spec(f"digits_cnn{VARIANTS[variant]}")[1]
        return model if conversion is None else conversion.apply(model)[0]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> tuple[int, float]:
    """``(correct, fraction correct)`` of ``model`` in eval mode."""
    model.eval()
    correct = sum(
        int((model(images[start : start + batch_size]).argmax(1) == labels[start : start + batch_size]).sum())
        for start in range(0, len(labels), batch_size)
    )
    return correct, correct / len(labels)


def train(
    variant: str = "baseline",
    *,
    seed: int = DEFAULTS["seed"],
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    momentum: float = DEFAULTS["momentum"],
    weight_decay: float = DEFAULTS["weight_decay"],
    threads: int = DEFAULTS["threads"],
    max_steps: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one variant on the training split; return the model (eval mode) and its protocol with the test accuracy.

    SGD with Nesterov momentum; the learning rate rises linearly from 0 over the first epoch and then follows a
    cosine to 0 at the last step (per step). Cross-entropy loss, no augmentation. Each epoch visits the 4,000
    training images in an order drawn from a generator seeded with ``seed + 1``; the last, smaller batch is kept.

    Args:
        variant: a key of :data:`VARIANTS`.
        seed: seeds the initialisation (``seed``) and the data order (``seed + 1``).
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty on every parameter.
        threads: torch threads during training (the result depends on it).
        max_steps: stop after this many steps (a budget for tests); the schedule is still the full one's.
    """
    variant = check_choice(variant, "variant", VARIANTS)
    seed = check_int(seed, "seed", minimum=0)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    lr = check_real(lr, "lr", positive=True)
    momentum = check_real(momentum, "momentum", minimum=0)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0)
    threads = check_int(threads, "threads", minimum=1)
    if max_steps is not None:
        max_steps = check_int(max_steps, "max_steps", minimum=1)

    started, cpu_started = time.perf_counter(), time.process_time()
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    images, labels = load_digits("train")
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def schedule(step: int) -> float:  # multiplier of lr before step `step` (0-based)
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    with deterministic(threads):
        model = build_model(variant, seed=seed)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
        )
        order = torch.Generator().manual_seed(seed + 1)
        loss_fn = nn.CrossEntropyLoss()
        step = 0
        model.train()
        for _ in range(epochs):
            permutation = torch.randperm(len(labels), generator=order)
            for start in range(0, len(labels), batch_size):
                if max_steps is not None and step >= max_steps:
                    break
                batch = permutation[start : start + batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = lr * schedule(step)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(images[batch]), labels[batch]).backward()
                optimizer.step()
                step += 1
        wall_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        test_images, test_labels = load_digits("test")
        correct, fraction = accuracy(model, test_images, test_labels)

    protocol = {
        "model": "shiftlab.models.DigitsCNN()",
        "variant": variant,
        "spec": f"digits_cnn{VARIANTS[variant]}",
        "data": f"shiftlab.digits.load_digits('train'): MNIST 5k, {DIGITS_SIZES['train']} images, no augmentation",
        "seed": seed,
        "init": "generator seeded with seed: kaiming_normal_(fan_out, relu) convolutions, BN 1/0, linear uniform",
        "data_order": "torch.randperm per epoch, generator seeded with seed + 1",
        "epochs": epochs,
        "steps": step,
        "batch_size": batch_size,
        "optimizer": {
            "name": "SGD",
            "lr": lr,
            "momentum": momentum,
            "nesterov": momentum > 0,
            "weight_decay": weight_decay,
        },
        "lr_schedule": f"linear warm-up from 0 over {warmup} steps (one epoch), then cosine to 0 at step {total_steps}",
        "loss": "cross-entropy",
        **environment(threads),
        "wall_seconds": round(wall_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load_average_before": load_before,
        "test_correct": correct,
        "test_images": len(test_labels),
        "test_accuracy": fraction,
    }
    return model.eval(), protocol


def save(model: nn.Module, protocol: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``digits_cnn_<variant>.safetensors`` and ``.json`` into ``out``; the JSON records the weights' sha256.

    The same weights give the same file, byte for byte (see :func:`shiftlab._io.safetensors_bytes`).
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = f"digits_cnn_{protocol['variant']}"
    weights = out / f"{stem}.safetensors"
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    weights.write_bytes(safetensors_bytes(state, {"variant": protocol["variant"], "seed": str(protocol["seed"])}))
    record = dict(protocol, weights=weights.name, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    report = out / f"{stem}.json"
    report.write_text(json.dumps(record, indent=2) + "\n")
    return weights, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="baseline", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default: {ASSETS})")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (for quick checks)")
    args = parser.parse_args(argv)
    options = {name: getattr(args, name) for name in DEFAULTS}
    model, protocol = train(args.variant, max_steps=args.max_steps, **options)
    weights, report = save(model, protocol, args.out)
    print(
        f"{args.variant}: test accuracy {protocol['test_accuracy']:.4f} ({protocol['test_correct']}/"
        f"{protocol['test_images']}), {protocol['steps']} steps in {protocol['wall_seconds']} s -> {weights}, {report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
