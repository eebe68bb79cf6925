"""Weights files, read safely: a ``state_dict`` from ``torch.save`` (``weights_only=True``) or ``.safetensors``.

Nothing but tensors is ever unpickled; a file that holds more is refused with a line that names what it references.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from shiftlab._io import torch_load_problem
from shiftlab.errors import check, fail, first_line

__all__ = ["fits", "load_state", "load_weights", "read_state_dict"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name: a ``state_dict`` saved with ``torch.save`` (read with
    ``weights_only=True``: no arbitrary object is ever unpickled; a checkpoint holding it under ``state_dict``,
    ``model_state_dict`` or ``model`` too) or a ``.safetensors`` file.

    Raises:
        ShiftlabError: no such file, unreadable, not a state_dict, or objects other than tensors (named).
    """
    path = Path(path)
    subject = f"weights '{path}'"
    check(path.exists(), subject, "no such file")
    check(path.is_file(), subject, "is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            fail(subject, f"is not a readable .safetensors file ({first_line(error)})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = torch_load_problem(error)  # never torch's advice to load with weights_only=False
        if detail == "unreadable pickle data":  # bytes that are not a pickle at all: a damaged or foreign file
            fail(subject, "is not a torch.save file (unreadable pickle data)")
        fail(
            subject,
            "holds more than plain tensors, and weights_only loading refuses arbitrary objects: save "
            f"model.state_dict() instead ({detail})",
        )
    except (
        Exception
    ) as error:  # a damaged file makes the unpickler raise almost anything (IndexError, EOFError, RuntimeError, ...)
        fail(subject, f"is not a torch.save file ({torch_load_problem(error)})")
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    check(
        isinstance(loaded, dict)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()),
        subject,
        "is not a state_dict (a dict of names to tensors); save model.state_dict()",
    )
    return loaded


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict into ``model``, refusing anything but plain tensors; every key must match.

    Keys saved from ``nn.DataParallel`` (``module.`` in front) and the old keys of torchvision's DenseNet layers
    (``denselayer1.norm.1.weight`` for ``denselayer1.norm1.weight``, as in the DenseNet checkpoints torchvision and
    antialiased-cnns published) are renamed, as torchvision does; a batch norm's ``num_batches_tracked`` may be
    absent where its statistics are there (files saved before PyTorch 0.4.1; the model keeps its own count).

    Raises:
        ShiftlabError: unreadable file, not a state_dict, missing or unexpected
            keys, or tensors of the wrong shape (the message names a few).
    """
    path = Path(path)
    return load_state(model, read_state_dict(path), f"weights '{path}'")


def fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether :func:`load_state` would load ``state`` into ``model``."""
    return not _matched(model, state)[1]


def load_state(model: nn.Module, state: dict[str, torch.Tensor], subject: str) -> nn.Module:
    """Load the tensors ``state`` into ``model`` as :func:`load_weights` does; ``subject`` names them in messages."""
    renamed, problems = _matched(model, state)
    check(not problems, subject, "do not fit the model: " + ", ".join(problems))
    model.load_state_dict(renamed, strict=True)
    return model


#: A key of torchvision's DenseNet layers before its modules lost their dots (``norm.1`` is now ``norm1``).
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _matched(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with its keys renamed to the model's (see :func:`load_weights`), and what still does not fit."""
    own = model.state_dict()
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        legacy = _DENSENET_LEGACY_KEY.match(key)
        if key not in own and legacy and legacy.group(1) + legacy.group(2) in own:
            key = legacy.group(1) + legacy.group(2)
        renamed[key] = value
    missing = [key for key in own if key not in renamed and not _count_before_pytorch_041(key, renamed)]
    unexpected = [key for key in renamed if key not in own]
    wrong = [
        f"{key} {tuple(renamed[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in renamed and renamed[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape ({'; '.join(wrong[:2])}{'; ...' if len(wrong) > 2 else ''})")
    return renamed, problems


def _count_before_pytorch_041(key: str, state: dict[str, torch.Tensor]) -> bool:
    """A batch norm's ``num_batches_tracked`` absent from a file that has the norm's statistics (an old file)."""
    prefix, _, name = key.rpartition(".")
    return name == "num_batches_tracked" and f"{prefix}.running_mean" in state
