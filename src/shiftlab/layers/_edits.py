"""Model surgery in two steps: plan every change on the untouched model, then apply them all.

Planning reads the model and raises on the first problem, so a failed conversion never leaves a model half
changed. Applying replaces modules by name, in a deep copy or in place, everywhere a module is referenced (a
module registered under two names is replaced under both).
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Edit", "apply_edits", "describe_module", "qualified"]


@dataclass
class Edit:
    """One planned change: ``build`` gets the module (in the model being changed) and returns its replacement.

    ``build`` may change and return the module it is given; it must not change anything else. The ``after``
    text is found by building from a shallow copy of the original, so planning changes nothing.
    """

    name: str
    change: str  # "downsampling" or "padding"
    build: Callable[[nn.Module], nn.Module]
    before: str = ""
    after: str = ""
    note: str = ""

    def describe(self, module: nn.Module) -> Edit:
        self.before = describe_module(module)
        self.after = describe_module(self.build(copy.copy(module)))
        return self

    def row(self) -> dict[str, str]:
        return {
            "layer": self.name,
            "change": self.change,
            "before": self.before,
            "after": self.after,
            "note": self.note,
        }


def qualified(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def describe_module(module: nn.Module) -> str:
    """A module on one line: its type and settings, and its parts joined by ``+`` for the composite layers."""
    from shiftlab.layers.aps import APSPool2d
    from shiftlab.layers.subsampled_conv import APSConv2d, BlurConv2d

    if isinstance(module, nn.Sequential):
        return " + ".join(describe_module(child) for child in module.children())
    head = f"{type(module).__name__}({' '.join(module.extra_repr().split())})"
    if isinstance(module, BlurConv2d):
        return f"{head} + {describe_module(module.blur)}"
    if isinstance(module, APSConv2d):
        return f"{head} + {describe_module(module.aps)}"
    if isinstance(module, APSPool2d) and module.blur is not None:
        return f"{describe_module(module.blur)} + {head}"
    return head


def apply_edits(model: nn.Module, edits: Iterable[Edit], *, inplace: bool) -> nn.Module:
    """Apply planned edits to ``model`` (``inplace``) or to a deep copy; returns the changed model."""
    target = model if inplace else copy.deepcopy(model)
    # New layers' filters go where the model is (a parameter-free layer does not know).
    anchor = next(itertools.chain(target.parameters(), target.buffers()), None)
    modules = dict(target.named_modules())
    references: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for parent in target.modules():
        for child_name, child in parent._modules.items():  # named_children() would skip a repeated child
            if child is not None:
                references[id(child)].append((parent, child_name))
    for edit in edits:
        old = modules[edit.name]
        new = edit.build(old)
        if new is old:
            continue
        new.train(old.training)  # new modules start in training mode; keep the model's eval() where it was
        if anchor is not None:
            new.to(anchor.device)
        if edit.name == "":
            target = new
        for parent, child_name in references[id(old)]:
            setattr(parent, child_name, new)
    return target
