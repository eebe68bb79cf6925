"""Model surgery in two steps: plan every change on the untouched model, then apply them all.

Planning reads the model and raises on the first problem, so a failed conversion never leaves a model half
changed. Applying replaces modules by name, in a deep copy or in place, everywhere a module is referenced (a
module registered under two names is replaced under both).

The published recipes (:mod:`shiftlab.layers.recipes`) also need the authors' state_dict keys, which sometimes put
two layers where there was one, at the same level (Zhang's VGG: ``features.4`` becomes ``features.4`` and
``features.5``, and the later layers move up). A replacement that is a :class:`Spliced` group is therefore
flattened into its parent ``nn.Sequential`` by :func:`splice`, after the edits.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from shiftlab.errors import InternalError

__all__ = ["Edit", "Spliced", "apply_edits", "describe_module", "qualified", "rebuilt_conv", "splice"]


@dataclass
class Edit:
    """One planned change: ``build`` gets the module (in the model being changed) and returns its replacement.

    ``build`` may change and return the module it is given; it must not change anything else. The ``after``
    text is found by building from a shallow copy of the original, so planning changes nothing.
    """

    name: str
    change: str  # "downsampling", "padding", or "layout" (a recipe's other changes)
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


class Spliced(nn.Sequential):
    """Layers that take one layer's place *at its level* in the parent ``nn.Sequential`` (see :func:`splice`).

    Numbered children are renumbered in the parent; in a parent with named children (DenseNet's ``features``),
    give the group named children (an ``OrderedDict``). An empty group removes the layer.
    """


def splice(model: nn.Module) -> nn.Module:
    """Flatten every :class:`Spliced` group into its parent ``nn.Sequential``; returns the model.

    A parent whose children are numbered is renumbered (``0, 1, 2, ...``), so the layers after a group of two move
    up by one; other parents keep the names. The parent is rebuilt as a plain ``nn.Sequential`` in its own place.
    """
    if isinstance(model, Spliced):
        raise InternalError("splice: a Spliced group must have a parent nn.Sequential")
    for parent_name, parent in reversed(list(model.named_modules())):  # the deepest first: names still hold
        children = list(parent.named_children())
        if not any(isinstance(child, Spliced) for _, child in children):
            continue
        if type(parent) is not nn.Sequential:
            raise InternalError(f"splice: '{parent_name}' is a {type(parent).__name__}, not a plain nn.Sequential")
        numbered = all(name.isdigit() for name, _ in children)
        items: list[tuple[str, nn.Module]] = []
        for name, child in children:
            items.extend(child.named_children() if isinstance(child, Spliced) else [(name, child)])
        if numbered:
            items = [(str(index), child) for index, (_, child) in enumerate(items)]
        rebuilt = nn.Sequential(OrderedDict(items)).train(parent.training)
        if not parent_name:
            model = rebuilt
        else:
            owner, _, attribute = parent_name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, rebuilt)
    return model


def rebuilt_conv(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    """A new ``nn.Conv2d`` like ``conv`` with some settings changed (``stride``, ``padding``), sharing its
    Parameter objects; ``conv`` itself is not changed (planning describes edits on shallow copies)."""
    settings: dict[str, Any] = {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "padding_mode": conv.padding_mode,
    }
    settings.update(changes)
    kernel = cast(tuple[int, int], conv.kernel_size)
    layer = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel,
        **settings,
        bias=conv.bias is not None,
        device="meta",
        dtype=conv.weight.dtype,
    )
    layer.weight = conv.weight
    layer.bias = conv.bias
    return layer.train(conv.training)
