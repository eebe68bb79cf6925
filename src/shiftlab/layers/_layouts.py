"""What the published recipes share: an architecture they cover, the plan that converts it, and its checks.

A recipe (:mod:`shiftlab.layers.recipes`) covers a few torchvision architectures, each as a :class:`Layout`. A
layout's plan reads the untouched model, checks that it is built the way torchvision builds that architecture
(:func:`expect`, :func:`check_covered`), and returns the edits that turn it into the authors' network, with the
names of the APS layers whose polyphase choice must be shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from shiftlab.errors import fail
from shiftlab.layers._edits import Edit, describe_module
from shiftlab.layers.discovery import find_downsampling_layers

__all__ = ["Layout", "Plan", "check_covered", "expect", "expect_shortcut", "is_pool", "planned"]


@dataclass
class Plan:
    """The edits of a recipe, and the pairs of APS layers (names after splicing) that share one polyphase choice."""

    edits: list[Edit]
    links: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """An architecture a recipe covers: torchvision's class, how the README names it, and its plan."""

    kind: type[nn.Module]
    label: str
    plan: Callable[[nn.Module, int, str], Plan]  # (model, filter size, APS norm) -> plan


def expect(condition: object, recipe: str, model: nn.Module, name: str, expected: str) -> None:
    """Refuse a model that is not built the way the layout expects, naming the layer and what was expected."""
    if not condition:
        module = model.get_submodule(name) if name else model
        fail(
            f"model {type(model).__name__}",
            f"recipe '{recipe}' follows torchvision's {type(model).__name__}, and '{name}' is "
            f"{describe_module(module)} where it expects {expected}; use recipe 'shiftlab' for a changed network",
        )


def expect_shortcut(recipe: str, model: nn.Module, block: str, stride: tuple[int, int]) -> None:
    """Refuse a residual block that subsamples without torchvision's shortcut: a strided 1x1 convolution, a norm."""
    shortcut = getattr(model.get_submodule(block), "downsample", None)
    expect(
        isinstance(shortcut, nn.Sequential)
        and len(shortcut) == 2
        and isinstance(shortcut[0], nn.Conv2d)
        and shortcut[0].kernel_size == (1, 1)
        and shortcut[0].stride == stride,
        recipe,
        model,
        f"{block}.downsample" if isinstance(shortcut, nn.Module) else block,
        f"a shortcut downsample = Sequential(Conv2d 1x1 at stride {stride[0]}, BatchNorm2d)",
    )


def check_covered(recipe: str, model: nn.Module, edits: list[Edit], kept: tuple[str, ...] = ()) -> None:
    """Refuse a model with a downsampling layer that the layout neither converts nor keeps on purpose."""
    for name, _ in find_downsampling_layers(model):
        if name in kept or any(name == edit.name or name.startswith(edit.name + ".") for edit in edits):
            continue
        fail(
            f"model {type(model).__name__}",
            f"recipe '{recipe}' follows torchvision's {type(model).__name__}, and its layer '{name}' subsamples "
            "where that network does not; use recipe 'shiftlab' for a changed network",
        )


def planned(model: nn.Module, name: str, change: str, build: Callable[[Any], nn.Module], note: str) -> Edit:
    """The edit of layer ``name``, described on the untouched model, with its note."""
    edit = Edit(name, change, build).describe(model.get_submodule(name))
    edit.note = note
    return edit


def is_pool(module: object, kind: type[nn.Module], window: int, stride: int, padding: int) -> bool:
    """Whether ``module`` is exactly a ``kind`` pooling layer of that square window, stride and padding."""
    settings = {"kernel_size": window, "stride": stride, "padding": padding}
    return type(module) is kind and all(getattr(module, key) in (v, (v, v)) for key, v in settings.items())
