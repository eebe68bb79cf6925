"""Make a trained or untrained model more shift-invariant: every downsampling layer replaced by BlurPool or APS.

:func:`make_shift_invariant` finds every downsampling layer (see :mod:`shiftlab.layers.discovery`) and replaces
it by the papers' rules, applied to each layer where it is (shiftlab's recipe; the authors' own networks, layer for
layer, are ``recipe="zhang2019"`` and ``recipe="chaman2021"``):

* ``method="blurpool"`` (Zhang 2019): ``MaxPool(k, s)`` becomes ``MaxPool(k, stride=1)`` then ``BlurPool(s)``; a
  strided convolution becomes the same convolution at stride 1 then ``BlurPool(s)`` (a :class:`BlurConv2d`); an
  ``AvgPool`` becomes ``BlurPool(s)`` (the binomial filter takes the place of the box). Better consistency under
  shifts; **not** exact invariance.
* ``method="aps"`` (Chaman & Dokmanic 2021): the same layers at stride 1, then adaptive polyphase sampling in
  place of the subsampling (an :class:`APSConv2d` for convolutions). With ``padding="circular"`` as well, and
  sizes divisible by the strides, the model's output is *exactly* invariant to circular shifts of its input,
  before any training (see :mod:`shiftlab.layers.aps` for the conditions).

Parameters are kept: the same values under the same state_dict keys (the new filters are non-persistent
buffers), so weights saved before the conversion load into the converted model and the other way round, and a
trained model can be fine-tuned. This is shiftlab's recipe (``recipe="shiftlab"``, the default), for any model; it
is not the authors' networks layer for layer: the blur comes right after a strided convolution rather than after
the ReLU that follows it (:mod:`shiftlab.layers.subsampled_conv` explains), every downsampling layer is converted,
the stem included (Zhang's ResNets leave the 7x7 stem convolution strided, ``pool_only=True``), and every layer
keeps its own window (Zhang's ResNet swaps the stem's 3x3 max pool for a 2x2 one). ``recipe="zhang2019"`` and
``recipe="chaman2021"`` build the authors' own layouts, with their state_dict keys, for the architectures they
released (:mod:`shiftlab.layers.recipes`).

Residual shortcuts and APS. A residual block adds its main path to its shortcut; when both subsample, they must
keep the same polyphase component or the sum is no longer a shifted copy of the original sum. The rule: a child
module named ``downsample``, ``shortcut``, ``skip``, ``proj`` or ``projection`` holding exactly one downsampling
layer is a shortcut, and is linked (:class:`~shiftlab.layers.aps.PhaseLink`) to the one downsampling layer of its
parent outside it, when there is exactly one and the strides agree. That covers torchvision's ResNet family
(``downsample``), its RegNets (``proj``, which runs before the main path: whichever linked layer runs first
chooses) and the usual CIFAR ResNets (``shortcut``). Its limits: shortcuts under other names, blocks with several
downsampling layers on the main path, and shortcuts written inside ``forward`` (``F.avg_pool2d(x, 2)``) are not
linked; the change table says so where it sees a shortcut it could not link. A child of one of those names that
holds its parent's only downsampling (timm's ConvNeXt ``stages.N.downsample``, a ViT's ``patch_embed.proj``) is
the path itself, not a shortcut, and gets no note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from shiftlab.errors import check, check_choice, check_int, fail
from shiftlab.layers._edits import Edit, apply_edits, qualified
from shiftlab.layers.aps import APS_NORMS, APSPool2d, PhaseLink
from shiftlab.layers.blurpool import MAX_BLUR_KERNEL_SIZE, BlurPool2d
from shiftlab.layers.circular import (
    check_strided_convolution,
    circular_pads,
    external_padding,
    plan_circular,
    unpadded_pool,
)
from shiftlab.layers.discovery import Geometry, find_downsampling_layers, geometry, is_shiftlab_layer
from shiftlab.layers.recipes import METHODS, convert_with_recipe, recipe_arguments
from shiftlab.layers.subsampled_conv import APSConv2d, BlurConv2d
from shiftlab.ops import MaxPool

__all__ = ["DEFAULT_KERNEL_SIZE", "METHODS", "SHORTCUT_NAMES", "make_shift_invariant"]

#: The blur filter size when none is given: Zhang's recommended 4 for BlurPool; none (1) for APS, as in Chaman's
#: reference models (``filter_size=1``; 2-7 give their "APS + LPF" variants).
DEFAULT_KERNEL_SIZE: dict[str, int] = {"blurpool": 4, "aps": 1}
#: Names of child modules taken for residual shortcuts when linking APS layers.
SHORTCUT_NAMES: tuple[str, ...] = ("downsample", "shortcut", "skip", "proj", "projection")


@dataclass(frozen=True)
class _Options:
    method: str
    circular: bool
    kernel_size: int
    norm: str

    @property
    def blur_padding(self) -> str:
        return "circular" if self.circular else "reflect"

    def subsampler(self, stride: tuple[int, int]) -> nn.Module:
        kernel = (self.kernel_size if stride[0] > 1 else 1, self.kernel_size if stride[1] > 1 else 1)
        if self.method == "blurpool":
            return BlurPool2d(kernel, stride, self.blur_padding)
        return APSPool2d(stride, self.norm, kernel_size=kernel, padding=self.blur_padding)


def _stride_one_pool(pool: nn.Module) -> nn.Module:
    """The pooling layer at stride 1 with its own window and padding."""
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool2d(pool.kernel_size, stride=1, padding=pool.padding, dilation=pool.dilation)
    if isinstance(pool, nn.AvgPool2d):
        return nn.AvgPool2d(
            pool.kernel_size,
            stride=1,
            padding=pool.padding,
            count_include_pad=pool.count_include_pad,
            divisor_override=pool.divisor_override,
        )
    assert isinstance(pool, MaxPool)
    return MaxPool(pool.kernel_size, stride=1)


def _size_note(shape: Geometry, shrink: tuple[int, int], window: tuple[int, int] | None = None) -> str:
    """A note when the output size differs from the original layer's: the converted layer gives
    ``ceil((X - shrink) / s)``, the original ``floor((X + 2p - e) / s) + 1`` (``e`` the window: ``window`` or the
    layer's extent)."""
    parts = []
    padding = shape.padding or (0, 0)
    extent = window or shape.extent
    for axis, symbol in enumerate("HW"):
        p, e, s, m = padding[axis], extent[axis], shape.stride[axis], shrink[axis]
        if 2 * p - e + 1 == -m:
            continue
        after = f"ceil({symbol} / {s})" if m == 0 else f"ceil(({symbol} - {m}) / {s})"
        parts.append(f"{symbol}: {after} instead of floor(({symbol} + {2 * p} - {e}) / {s}) + 1")
    return f"output size {'; '.join(parts)}" if parts else ""


def _plan_downsampling(name: str, module: nn.Module, options: _Options, external: Any) -> Edit:
    shape = geometry(module)
    assert shape is not None  # find_downsampling_layers returns layers with a geometry
    stride = shape.stride
    notes = []
    replaced_by_blur = isinstance(module, nn.AvgPool2d) and options.method == "blurpool"  # the window goes
    pads = None
    if options.circular and not replaced_by_blur:
        if isinstance(module, nn.Conv2d):
            check_strided_convolution(name, module, shape, external)
        pads = circular_pads(name, module, shape, external, max(stride))
    # The stride-1 map is X - shrink pixels for an input of X: the original's own padding, or the circular one.
    padding = shape.padding or (0, 0)
    if pads is None:
        shrink = (shape.extent[0] - 1 - 2 * padding[0], shape.extent[1] - 1 - 2 * padding[1])
    else:
        shrink = (shape.extent[0] - 1 - pads[2] - pads[3], shape.extent[1] - 1 - pads[0] - pads[1])
    if isinstance(module, nn.Conv2d):
        build = _conv_builder(options, padding, pads)
        notes.append(_size_note(shape, shrink))
    elif replaced_by_blur:
        build = lambda old: options.subsampler(stride)
        notes.append(f"Zhang's recipe: the {shape.kernel[0]}x{shape.kernel[1]} average becomes the binomial blur")
        notes.append(_size_note(shape, (0, 0), shape.kernel))
    else:
        if pads is None:
            build = lambda old: nn.Sequential(_stride_one_pool(old), options.subsampler(stride))
        else:
            pad = [nn.CircularPad2d(pads)] if any(pads) else []
            build = lambda old: nn.Sequential(*pad, unpadded_pool(old, (1, 1)), options.subsampler(stride))
        notes.append(_size_note(shape, shrink))
    if getattr(module, "ceil_mode", False):  # the formulas above assume ceil_mode=False
        notes = ["ceil_mode=True is gone: on some sizes the output differs from before by one pixel"]
    edit = Edit(name, "downsampling", build).describe(module)
    edit.note = "; ".join(note for note in notes if note)
    return edit


def _conv_builder(options: _Options, padding: tuple[int, int], pads: tuple[int, int, int, int] | None):
    kwargs: dict[str, Any] = {}
    if pads is not None and pads == (padding[1], padding[1], padding[0], padding[0]):
        kwargs = {"padding_mode": "circular"} if any(pads) else {}
    elif pads is not None:  # the circular padding is not symmetric: applied before the convolution
        kwargs = {"padding": (0, 0), "padding_mode": "zeros", "pre_padding": pads}
    kernel = options.kernel_size

    def build(old: nn.Module) -> nn.Module:
        assert isinstance(old, nn.Conv2d)
        rows, columns = old.stride
        sizes = (kernel if rows > 1 else 1, kernel if columns > 1 else 1)
        if options.method == "blurpool":
            return BlurConv2d.from_conv(old, blur_kernel_size=sizes, blur_padding=options.blur_padding, **kwargs)
        return APSConv2d.from_conv(
            old, norm=options.norm, aps_kernel_size=sizes, aps_padding=options.blur_padding, **kwargs
        )

    return build


def _within(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _residual_links(
    model: nn.Module, layers: list[tuple[str, nn.Module]], edits: dict[str, Edit]
) -> list[tuple[str, str]]:
    """``(main path layer, shortcut layer)`` pairs to link (see the module docstring); notes on shortcuts left alone."""
    names = [name for name, _ in layers]
    strides = {name: geometry(module).stride for name, module in layers}  # type: ignore[union-attr]
    pairs: list[tuple[str, str]] = []
    linked: set[str] = set()
    for block_name, block in model.named_modules():
        for child_name, _ in block.named_children():
            if child_name.lower() not in SHORTCUT_NAMES:
                continue
            prefix = qualified(block_name, child_name)
            inside = [name for name in names if _within(name, prefix)]
            main = [name for name in names if _within(name, block_name) and not _within(name, prefix)]
            # A parent whose only downsampling is inside this child (timm's ConvNeXt stages.N.downsample, a ViT's
            # patch_embed.proj) has no main path beside it: the child is the path itself, not a shortcut.
            if not inside or not main or linked & set(inside):
                continue
            if len(inside) == 1 and len(main) == 1 and strides[main[0]] == strides[inside[0]] and main[0] not in linked:
                pairs.append((main[0], inside[0]))
                linked.update((main[0], inside[0]))
                continue
            where = f"'{block_name}'" if block_name else "the model"
            reason = (
                f"not linked to a main path: {len(inside)} downsampling layer(s) in '{prefix}' and {len(main)} "
                f"elsewhere in {where} (a shortcut is linked when each side has exactly one, at the same stride)"
            )
            for name in inside:
                edits[name].note = "; ".join(part for part in (edits[name].note, reason) if part)
    for main_name, shortcut_name in pairs:
        for here, there in ((main_name, shortcut_name), (shortcut_name, main_name)):
            note = f"polyphase choice shared with '{there}' (residual shortcut)"
            edits[here].note = "; ".join(part for part in (edits[here].note, note) if part)
    return pairs


def _aps_layer(module: nn.Module) -> APSPool2d:
    if isinstance(module, APSConv2d):
        return module.aps
    if isinstance(module, APSPool2d):
        return module
    return next(child for child in module.modules() if isinstance(child, APSPool2d))


def make_shift_invariant(
    model: nn.Module,
    method: str | None = None,
    *,
    recipe: str = "shiftlab",
    padding: str | None = None,
    kernel_size: int | None = None,
    norm: str = "l2",
    inplace: bool = False,
) -> tuple[nn.Module, list[dict[str, str]]]:
    """Replace every downsampling layer of ``model`` by its anti-aliased (BlurPool) or adaptive-polyphase form.

    See the module docstring for shiftlab's recipe, the residual-shortcut rule and what is exact, and
    :mod:`shiftlab.layers.recipes` for the authors' own layouts.

    Args:
        model: any ``nn.Module`` (torchvision's ResNet, VGG, MobileNet, EfficientNet, ConvNeXt, your own); with
            a published recipe, one of the torchvision architectures it covers.
        method: ``"blurpool"`` (Zhang 2019) or ``"aps"`` (Chaman & Dokmanic 2021); by default blurpool, or the
            recipe's own method.
        recipe: ``"shiftlab"`` (default: every downsampling layer of any model, where it is), ``"zhang2019"``
            (Zhang's released networks, layer for layer: :mod:`shiftlab.layers.zhang2019`) or ``"chaman2021"``
            (Chaman & Dokmanic's APS ResNets: :mod:`shiftlab.layers.chaman2021`). The published recipes give the
            authors' state_dict keys, so their checkpoints load into the converted model.
        padding: ``None`` keeps every padding as it is; ``"circular"`` also makes every padding circular (see
            :func:`shiftlab.layers.make_circular`), which exact invariance to circular shifts needs; blur filters
            then pad circularly too (else reflect, Zhang's default). ``chaman2021`` is circular in any case;
            ``zhang2019`` refuses it.
        kernel_size: binomial filter size, 1 to 7; by default 4 for BlurPool and 1 (no blur) for APS. With APS, a
            size above 1 blurs at stride 1 before the choice ("APS + LPF").
        norm: how APS measures a polyphase component: ``"l2"``, ``"l1"`` or ``"linf"``.
        inplace: change ``model`` itself; by default a deep copy is changed and ``model`` stays as it was.

    Returns:
        ``(model, changes)``: the converted model, and one row per changed layer, in model order:
        ``{"layer", "change" ("downsampling", "padding" or, for a recipe's other changes, "layout"), "before",
        "after", "note"}``, all strings.

    Raises:
        ShiftlabError: bad arguments; a model with no downsampling layer, or converted already; a layer that
            subsamples in a way no recipe covers, or whose padding cannot be made circular (the message names
            it); an architecture a published recipe does not cover (the message names those it does). Nothing
            is changed when it raises.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        >>> converted, changes = make_shift_invariant(net, "blurpool")
        >>> [(row["layer"], row["change"]) for row in changes]
        [('0', 'downsampling'), ('2', 'downsampling')]
        >>> print(changes[1]["after"].replace(" + ", chr(10) + "+ "))
        MaxPool2d(kernel_size=2, stride=1, padding=0, dilation=1, ceil_mode=False)
        + BlurPool2d(kernel_size=4, stride=2, padding='reflect')
        >>> converted(torch.zeros(1, 3, 32, 32)).shape == net(torch.zeros(1, 3, 32, 32)).shape
        True
        >>> converted[0].weight is net[0].weight, torch.equal(converted[0].weight, net[0].weight)
        (False, True)
    """
    check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
    recipe, method, padding = recipe_arguments(recipe, method, padding)
    if kernel_size is None:
        size = DEFAULT_KERNEL_SIZE[method]
    else:
        size = check_int(kernel_size, "kernel_size", minimum=1, maximum=MAX_BLUR_KERNEL_SIZE)
    norm = check_choice(norm, "norm", APS_NORMS)
    subject = f"model {type(model).__name__}"
    done = next(((name, module) for name, module in model.named_modules() if is_shiftlab_layer(module)), None)
    if done is not None:
        fail(subject, f"was converted already (layer '{done[0]}' is a {type(done[1]).__name__}); convert the original")
    if recipe != "shiftlab":
        return convert_with_recipe(model, recipe, kernel_size=size, norm=norm, inplace=inplace)
    layers = find_downsampling_layers(model)
    check(
        layers,
        subject,
        "has no downsampling layer (a strided Conv2d, MaxPool2d or AvgPool2d): nothing to make shift-invariant",
    )
    options = _Options(method, padding == "circular", size, norm)
    external = {key: pads for key, (_, pads) in external_padding(model).items()} if options.circular else {}
    edits = {name: _plan_downsampling(name, module, options, external.get(id(module))) for name, module in layers}
    if options.circular:
        edits.update((edit.name, edit) for edit in plan_circular(model, skip={id(module) for _, module in layers}))
    links = _residual_links(model, layers, edits) if method == "aps" else []
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    planned = sorted(edits.values(), key=lambda edit: order[edit.name])
    target = apply_edits(model, planned, inplace=inplace)
    modules = dict(target.named_modules())
    # A block returns main(x) + shortcut(x): if the two subsampled at different phases, a shifted input could make
    # them disagree, and the sum would not be a shifted copy of the original sum. Linked, they use one phase.
    for main_name, shortcut_name in links:
        PhaseLink.connect(
            {main_name: _aps_layer(modules[main_name]), shortcut_name: _aps_layer(modules[shortcut_name])}
        )
    return target, [edit.row() for edit in planned]
