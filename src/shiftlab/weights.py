"""Weights files, read safely: a ``state_dict`` from ``torch.save`` (``weights_only=True``) or ``.safetensors``.

Nothing but tensors is ever unpickled; a file that holds more is refused with a line that names what it references.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import check, fail, first_line

__all__ = ["load_weights", "read_state_dict"]


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
        text = str(error)
        if "Unsupported operand" in text:  # bytes that are not a pickle at all: a damaged or foreign file
            fail(subject, "is not a torch.save file (unreadable pickle data)")
        refused = re.search(
            r"GLOBAL (\S+) was not an allowed global|Unsupported class (\S+)|whose module (\S+) is blocked", text
        )
        detail = f"it references {next(group for group in refused.groups() if group)}" if refused else first_line(error)
        fail(
            subject,
            "holds more than plain tensors, and weights_only loading refuses arbitrary objects: save "
            f"model.state_dict() instead ({detail})",
        )
    except (
        Exception
    ) as error:  # a damaged file makes the unpickler raise almost anything (IndexError, EOFError, RuntimeError, ...)
        fail(subject, f"is not a torch.save file ({first_line(error)})")
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

    Raises:
        ShiftlabError: unreadable file, not a state_dict, missing or unexpected
            keys, or tensors of the wrong shape (the message names a few).
    """
    path = Path(path)
    state = read_state_dict(path)
    state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DataParallel
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
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
    check(not problems, f"weights '{path}'", "do not fit the model: " + ", ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
