"""Circular padding everywhere: the condition under which a CNN can be exactly equivariant to circular shifts.

A layer at stride 1 commutes with circular shifts when it pads circularly and keeps the map's size (its window
extent minus one pixels of padding in all, per axis). :func:`make_circular` turns every padding it can see into
circular padding:

* ``nn.Conv2d`` with padding gets ``padding_mode="circular"`` (the same amounts, so the output size is unchanged);
* ``nn.MaxPool2d`` and ``nn.AvgPool2d`` with padding get an explicit ``nn.CircularPad2d`` and no padding of their
  own (pooling pads with -inf or zeros internally);
* ``ZeroPad2d``, ``ConstantPad2d``, ``ReflectionPad2d`` and ``ReplicationPad2d`` become ``CircularPad2d``;
  a padding module directly before a layer in an ``nn.Sequential`` counts as that layer's padding;
* shiftlab's :class:`~shiftlab.ops.Convolve` with ``padding="same"`` gets ``padding="circular"``.

What cannot be made circular raises, naming the layer: a layer at stride 1 that shrinks or grows the map (a
"valid" convolution), a strided "valid" convolution whose window is wider than its stride (see
:func:`check_strided_convolution`; :func:`shiftlab.layers.make_shift_invariant` checks it), a
``ConvTranspose2d`` with a window larger than one pixel (torch pads it with zeros only), a padding module that
crops. 1-D and 3-D layers are left alone (in 2-D networks they work on channels, as in
channel attention), and so is padding written inside a ``forward`` method (``F.pad``), which cannot be seen.
Strided layers are not changed here: :func:`shiftlab.layers.make_shift_invariant` replaces them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftlab.errors import InternalError, check, fail
from shiftlab.layers._edits import Edit, apply_edits
from shiftlab.layers.discovery import Geometry, geometry, is_shiftlab_layer
from shiftlab.ops import Convolve, MaxPool

__all__ = ["PAD_MODULES", "make_circular"]

#: Padding modules that :func:`make_circular` turns into ``nn.CircularPad2d``.
PAD_MODULES: tuple[type[nn.Module], ...] = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_ANY_PAD = PAD_MODULES + (nn.CircularPad2d,)

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), as F.pad orders them


def layer_subject(name: str, module: nn.Module) -> str:
    return f"layer '{name or type(module).__name__}' ({type(module).__name__})"


def external_padding(model: nn.Module) -> dict[int, tuple[str, Pads]]:
    """For each layer directly after a padding module in an ``nn.Sequential``: that module's name and padding."""
    found: dict[int, tuple[str, Pads]] = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (pad_name, pad), (_, layer) in zip(children, children[1:]):
            if isinstance(pad, _ANY_PAD) and not isinstance(layer, _ANY_PAD):
                found[id(layer)] = (f"{parent_name}.{pad_name}" if parent_name else pad_name, tuple(pad.padding))  # type: ignore[arg-type]
    return found


def circular_pads(name: str, module: nn.Module, shape: Geometry, external: Pads | None, stride: int = 1) -> Pads:
    """The circular padding ``(left, right, top, bottom)`` a layer needs at stride 1 to keep the map's size.

    Its own padding stays before the map (so its windows stay where they were) and the rest goes after; a padding
    module right before it counts. Raises when that is impossible (more padding than ``extent - 1``).
    """
    left, right, top, bottom = external or (0, 0, 0, 0)
    own = shape.padding if shape.padding is not None else ((shape.extent[0] - 1) // 2, (shape.extent[1] - 1) // 2)
    before = (own[0], own[1])
    after = (shape.extent[0] - 1 - own[0] - top - bottom, shape.extent[1] - 1 - own[1] - left - right)
    if min(after) < 0:
        own_total = shape.total_padding()
        total = (own_total[0] + top + bottom, own_total[1] + left + right)
        fail(layer_subject(name, module), _size_message(shape, total, stride))
    return before[1], after[1], before[0], after[0]


def check_strided_convolution(name: str, module: nn.Module, shape: Geometry, external: Pads | None) -> None:
    """Refuse a strided "valid" convolution: no padding at all, and a window wider than its stride on some axis.

    Such a layer shrinks the map beyond its subsampling (``floor((X - e) / s) + 1`` outputs); with circular padding
    it would give ``ceil(X / s)``, so whatever follows (a ``Flatten`` and a ``Linear``) would no longer fit. A
    window no wider than the stride (a 1x1 or a patchify convolution) needs no padding and passes.
    """
    own = shape.total_padding()
    if any(own) or (external is not None and any(external)):
        return
    axes = [
        f"{symbol}: floor(({symbol} - {shape.extent[axis]}) / {shape.stride[axis]}) + 1 would become "
        f"ceil({symbol} / {shape.stride[axis]})"
        for axis, symbol in enumerate("HW")
        if shape.extent[axis] > shape.stride[axis]
    ]
    if axes:
        window, stride = shape.extent, shape.stride
        step = stride[0] if stride[0] == stride[1] else stride
        fail(
            layer_subject(name, module),
            f'cannot be made circular: it is a "valid" convolution (a {window[0]}x{window[1]} window at stride '
            f"{step}, no padding), and circular padding would change its output size ({'; '.join(axes)}); only "
            "layers that keep the size commute with circular shifts",
        )


def _size_message(shape: Geometry, total: tuple[int, int], stride: int = 1) -> str:
    change = (total[0] - shape.extent[0] + 1, total[1] - shape.extent[1] + 1)
    where = "" if stride == 1 else " (before subsampling)"
    return (
        f"cannot be made circular: its window is {shape.extent[0]}x{shape.extent[1]} and its padding "
        f"{total[0]}x{total[1]} pixels in all, so it changes the map's size by ({change[0]:+d}, {change[1]:+d})"
        f"{where}; only layers that keep the size commute with circular shifts"
    )


def _plan_layer(name: str, module: nn.Module, external: Pads | None) -> Edit | None:
    """The circular-padding edit of one layer (``None``: nothing to change).

    A layer at stride 1 must keep the map's size; a strided layer (left strided by :func:`make_circular`) only has
    its padding made circular.
    """
    subject = layer_subject(name, module)
    if isinstance(module, PAD_MODULES):
        pads = tuple(module.padding)  # type: ignore[arg-type]
        check(min(pads) >= 0, subject, f"cannot be made circular: negative padding {pads} crops the map")
        return Edit(name, "padding", _circular_pad_module)
    if isinstance(module, nn.ConvTranspose2d) and (module.kernel_size != (1, 1) or module.padding != (0, 0)):
        fail(subject, "cannot be made circular: torch pads a ConvTranspose2d with zeros only")
    if isinstance(module, Convolve):
        kernel: torch.Tensor = module.kernel
        rows, columns = kernel.shape
        if module.padding == "valid" and (rows, columns) != (1, 1):
            fail(subject, _size_message(Geometry((rows, columns), (1, 1), (0, 0), (rows, columns)), (0, 0)))
        return Edit(name, "padding", _set(padding="circular")) if module.padding == "same" else None
    shape = geometry(module)
    if shape is None:
        return None
    if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward and shape.extent != (1, 1):
        fail(subject, "cannot be made circular: it has its own forward, which may pad in its own way")
    left, right, top, bottom = external or (0, 0, 0, 0)
    total = shape.total_padding()
    total = (total[0] + top + bottom, total[1] + left + right)
    if shape.stride == (1, 1) and total != (shape.extent[0] - 1, shape.extent[1] - 1):
        fail(subject, _size_message(shape, total))
    if shape.padding == (0, 0):
        return None
    if isinstance(module, nn.Conv2d):
        return None if module.padding_mode == "circular" else Edit(name, "padding", _set(padding_mode="circular"))
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        pads = (shape.padding[1], shape.padding[1], shape.padding[0], shape.padding[0])  # type: ignore[index]
        stride = shape.stride
        return Edit(name, "padding", lambda old: nn.Sequential(nn.CircularPad2d(pads), unpadded_pool(old, stride)))
    return None  # shiftlab's MaxPool has no padding


def _circular_pad_module(pad: nn.Module) -> nn.Module:
    padding: tuple[int, int, int, int] = pad.padding  # type: ignore[assignment]
    return nn.CircularPad2d(padding)


def _set(**attributes: Any):
    def build(module: nn.Module) -> nn.Module:
        for key, value in attributes.items():
            setattr(module, key, value)
        return module

    return build


def unpadded_pool(pool: nn.Module, stride: tuple[int, int]) -> nn.Module:
    """A copy of a pooling layer at ``stride`` with no padding of its own (the circular padding comes before it)."""
    ceil_mode = bool(getattr(pool, "ceil_mode", False)) and stride != (1, 1)
    step = stride[0] if stride[0] == stride[1] else stride
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool2d(pool.kernel_size, stride=step, padding=0, dilation=pool.dilation, ceil_mode=ceil_mode)
    if isinstance(pool, nn.AvgPool2d):
        return nn.AvgPool2d(
            pool.kernel_size, stride=step, padding=0, ceil_mode=ceil_mode, divisor_override=pool.divisor_override
        )
    if isinstance(pool, MaxPool):
        return MaxPool(pool.kernel_size, stride=stride[0])
    raise InternalError(f"unpadded_pool got {type(pool).__name__}, not a pooling layer")


def plan_circular(model: nn.Module, skip: set[int]) -> list[Edit]:
    """The edits that make every padding of ``model`` circular; layers in ``skip`` (by ``id``) are left to others."""
    external = external_padding(model)
    edits = []
    for name, module in model.named_modules():
        if id(module) in skip or is_shiftlab_layer(module):
            continue
        edit = _plan_layer(name, module, external.get(id(module), (None, None))[1])
        if edit is not None:
            edits.append(edit.describe(module))
    return edits


def make_circular(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, list[dict[str, str]]]:
    """Make every padding of ``model`` circular (see the module docstring); strided layers keep their stride.

    With circular padding and no strided layer, a CNN commutes exactly with circular shifts; add
    :func:`shiftlab.layers.make_shift_invariant` (``method="aps", padding="circular"``) for the strided ones.
    Parameters are kept (the same values, under the same state_dict keys).

    Args:
        model: any ``nn.Module``.
        inplace: change ``model`` itself; by default a deep copy is changed and ``model`` is left as it was.

    Returns:
        ``(model, changes)``: the changed model and one row per changed layer, ``{"layer", "change", "before",
        "after", "note"}``.

    Raises:
        ShiftlabError: a layer whose padding cannot be made circular (the message names it); nothing is changed.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1))
        >>> circular, changes = make_circular(net)
        >>> for row in changes:
        ...     print(row["layer"], row["after"].replace(" + ", chr(10) + "  + "))
        0 Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), padding_mode=circular)
        2 CircularPad2d((1, 1, 1, 1))
          + MaxPool2d(kernel_size=3, stride=1, padding=0, dilation=1, ceil_mode=False)
        >>> net[0].padding_mode
        'zeros'
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    edits = plan_circular(model, skip=set())
    target = apply_edits(model, edits, inplace=inplace)
    return target, [edit.row() for edit in edits]
