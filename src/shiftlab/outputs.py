"""A model's output of any structure: its main tensor (the logits), found by one documented rule, and its named parts.

Models return a tensor, a tuple or list, a dict (torchvision's segmentation models: ``{"out": ..., "aux": ...}``),
a named tuple (torchvision's Inception in training mode: ``(logits, aux_logits)``) or a Hugging Face
``ModelOutput`` (an ordered dict whose unset fields are left out: ``logits``, ``hidden_states``, ...).

**The rule.** :func:`main_output` picks, in this order:

1. the entry named ``key`` when one is given (``--output KEY`` on the command line): a name of
   :func:`named_tensors` (``out``, ``logits``, ``aux``, ``1``, ``hidden_states.0``);
2. the output itself, when it is a tensor;
3. its top-level entry ``logits`` (Hugging Face, torchvision's named tuples), then ``out`` (torchvision's
   segmentation models), when it is a tensor;
4. otherwise the first tensor, depth first, in the structure's own order.

**Names.** :func:`named_tensors` lists every tensor of a structure under a dotted path: dict keys and named-tuple
fields by name, sequence items by position (``out``, ``aux``, ``0``, ``hidden_states.3``). A plain tensor has the
name ``""``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.errors import check, fail

__all__ = [
    "MAIN_KEYS",
    "MainOutput",
    "describe_output",
    "main_output",
    "main_output_key",
    "named_tensors",
    "output_parts",
]

#: The top-level names that mark the main tensor, in order of preference: Hugging Face's and torchvision's.
MAIN_KEYS: tuple[str, ...] = ("logits", "out")


def _items(output: Any) -> list[tuple[str, Any]] | None:
    """The named entries of one level of a structure, or None for a leaf."""
    if isinstance(output, Mapping):
        return [(str(name), value) for name, value in output.items()]
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a named tuple: its fields by name
        return [(str(name), value) for name, value in zip(output._fields, output)]
    if isinstance(output, (tuple, list)):
        return [(str(position), value) for position, value in enumerate(output)]
    return None


def named_tensors(output: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of an output, depth first, under its dotted path; a plain tensor is ``[("", tensor)]``.

    Entries that are not tensors (None, numbers, strings) are left out.

    Example:
        >>> out = {"out": torch.zeros(1, 3, 4, 4), "aux": (torch.zeros(1, 2), None, torch.zeros(1))}
        >>> [(name, tuple(tensor.shape)) for name, tensor in named_tensors(out)]
        [('out', (1, 3, 4, 4)), ('aux.0', (1, 2)), ('aux.2', (1,))]
    """
    if isinstance(output, torch.Tensor):
        return [("", output)]
    found: list[tuple[str, torch.Tensor]] = []
    stack: list[tuple[str, Any]] = [("", output)]
    while stack:
        prefix, value = stack.pop()
        if isinstance(value, torch.Tensor):
            found.append((prefix, value))
            continue
        items = _items(value)
        if items:
            stack.extend((f"{prefix}.{name}" if prefix else name, item) for name, item in reversed(items))
    return found


def _a(output: Any) -> str:
    """``a dict``, ``an OrderedDict``: the output's type with its article."""
    name = type(output).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _describe_structure(output: Any, names: Sequence[str]) -> str:
    listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{_a(output)} with tensors {listed}" if names else f"{_a(output)} with no tensor"


def main_output_key(output: Any, key: str | None = None) -> str:
    """The name (see :func:`named_tensors`) of the tensor the rule picks; ``""`` for a plain tensor.

    Raises:
        ShiftlabError: ``key`` names no tensor of the output, or the output holds no tensor.

    Example:
        >>> main_output_key({"aux": torch.zeros(1), "out": torch.zeros(1)})
        'out'
        >>> main_output_key((torch.zeros(1), torch.zeros(2)))
        '0'
        >>> main_output_key({"out": torch.zeros(1), "aux": torch.zeros(1)}, key="aux")
        'aux'
    """
    tensors = named_tensors(output)
    names = [name for name, _ in tensors]
    if key is not None:
        check(isinstance(key, str) and key != "", "output", f"expected the name of a tensor, got {key!r}")
        if isinstance(output, torch.Tensor):
            fail("output", f"{key!r} was asked for, but the model returns a plain tensor (no keys)")
        check(key in names, "output", f"{key!r} is not in the model's output, {_describe_structure(output, names)}")
        return key
    check(tensors, "model output", f"is {_describe_structure(output, names)}: nothing to measure")
    if isinstance(output, torch.Tensor):
        return ""
    for preferred in MAIN_KEYS:
        if preferred in names:
            return preferred
    return names[0]


def main_output(output: Any, key: str | None = None) -> torch.Tensor:
    """The main tensor of a model's output (the logits, or the map of a dense model), by the module's rule.

    Args:
        output: whatever the model's forward returned.
        key: the name of the tensor to take (see :func:`named_tensors`), overriding the rule.

    Returns:
        The tensor itself (not a copy).

    Raises:
        ShiftlabError: ``key`` names no tensor of the output, or the output holds no tensor.

    Example:
        >>> logits = torch.zeros(2, 10)
        >>> main_output({"loss": None, "logits": logits, "hidden_states": (torch.ones(2, 4),)}) is logits
        True
        >>> main_output(logits) is logits
        True
    """
    name = main_output_key(output, key)
    return dict(named_tensors(output))[name]


def output_parts(output: Any, key: str | None = None) -> list[tuple[str, torch.Tensor]]:
    """The main tensor first (named ``""``), then every other tensor of the output under its name.

    This is how the probe watches a model's output: the main tensor as the row ``output``, every other one as
    ``output.NAME``. A tensor found under two names (the same object) is listed once.

    Example:
        >>> out = {"out": torch.zeros(1, 3, 4, 4), "aux": torch.zeros(1, 3, 4, 4)}
        >>> [name for name, _ in output_parts(out)]
        ['', 'aux']
        >>> [name for name, _ in output_parts(out, key="aux")]
        ['', 'out']
    """
    main = main_output_key(output, key)
    tensors = named_tensors(output)
    chosen = dict(tensors)[main]
    parts: list[tuple[str, torch.Tensor]] = [("", chosen)]
    seen = {id(chosen)}
    for name, tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            parts.append((name, tensor))
    return parts


def describe_output(output: Any, key: str | None = None) -> str:
    """How the main tensor was found, in words, for a result's protocol.

    Example:
        >>> describe_output(torch.zeros(1, 10))
        'a tensor'
        >>> describe_output({"out": torch.zeros(1), "aux": torch.zeros(1)})
        "'out' of a dict (the rule: logits, out, else the first tensor; other tensors: aux)"
        >>> describe_output((torch.zeros(1), torch.zeros(1)), key="1")
        "'1' of a tuple (given; other tensors: 0)"
    """
    name = main_output_key(output, key)
    if isinstance(output, torch.Tensor):
        return "a tensor"
    how = "given" if key is not None else f"the rule: {', '.join(MAIN_KEYS)}, else the first tensor"
    others = [other for other, _ in output_parts(output, key)[1:]]
    also = f"; other tensors: {', '.join(others)}" if others else ""
    return f"{name!r} of {_a(output)} ({how}{also})"


class MainOutput(nn.Module):
    """A model whose forward returns only the main tensor of the wrapped model's output (see :func:`main_output`).

    For code that needs a tensor-valued model (``torch.jit.trace``, a plain training loop). The wrapped model is
    ``self.model``, so its layers' names gain the prefix ``model.``; the probe does not need this wrapper.

    Shape:
        - input: whatever the wrapped model takes
        - output: the main tensor of its output

    Example:
        >>> class Segmenter(nn.Module):
        ...     def forward(self, x):
        ...         return {"out": x * 2, "aux": x}
        >>> MainOutput(Segmenter())(torch.ones(1, 1, 2, 2)).sum().item()
        8.0
    """

    def __init__(self, model: nn.Module, key: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return main_output(self.model(*args, **kwargs), self.key)
