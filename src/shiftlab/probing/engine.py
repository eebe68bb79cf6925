"""The shifted forward pass: one engine under the probe, the explorer, the assertions and ``equivariance_error``.

A measurement of equivariance runs each image together with its shifted copies through a model and compares the
outputs. :class:`ShiftedForward` does the running, once for all its users:

* the **mode** (:class:`~shiftlab.shifts.ShiftMode`) builds the reference input and the shifted copies;
* **batching**: images of one shape grouped so that an image and its copies share a pass (:class:`Pass`), the
  shifts split into chunks when ``1 + len(shifts)`` exceeds the batch size, the zero shifts riding along for free;
* the **train/eval flags** of every module saved and restored (:func:`eval_mode`), also when the model raises;
* the forward **hooks** on the watched layers (:class:`Hooks`), removed on exit (torchcam style); a failure of the
  model is bad input, a failure inside a hook is shiftlab's own;
* the **layout plan** of the watched outputs (:mod:`shiftlab.probing.layouts`), one per input size, held by the engine:
keep
  the engine to probe the same model again without planning again (no module-level cache);
* the **border core** (``zero`` and ``crop`` modes): which pixels of each map stay clear of the border, found by one
  pass of an input whose border band is NaN (:func:`border_core`), once per input size.

For every watched output of every pass it calls back with a :class:`Seen`: the output split by its layout, the pass
it belongs to, and its border core. What is compared, and how it is kept, is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import nn

from shiftlab.errors import InternalError, ShiftlabError, check, describe, fail, first_line
from shiftlab.models import eval_mode  # re-exported: the engine runs every model under it
from shiftlab.outputs import describe_output, output_parts
from shiftlab.probing.layouts import Layout, LayoutPlan, plan_layouts, record_outputs
from shiftlab.shifts import Shift, ShiftMode, check_shifts_fit, crop_margin

__all__ = [
    "OUTPUT",
    "Hooks",
    "Pass",
    "RunInfo",
    "Seen",
    "ShiftedForward",
    "border_core",
    "eval_mode",
    "model_device_dtype",
]

#: The row of the model's final output (always watched; "output:2" if the model calls itself again).
OUTPUT = "output"


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype of the model's first floating-point parameter or buffer (None, None: it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def border_core(reference_input: torch.Tensor, band: tuple[int, int], run: Callable[[torch.Tensor], Any]) -> None:
    """Run one input whose outer ``band`` is NaN through ``run``; the caller reads which outputs stayed finite.

    ``reference_input`` is one ``(C, H, W)`` (or ``(H, W)``) input; ``run`` receives it with a batch axis added.
    NaN spreads exactly along the receptive field, so the finite pixels of an output are those whose receptive
    field stays clear of the band.
    """
    tainted = reference_input.clone()
    band_y, band_x = band
    if band_y:
        tainted[..., :band_y, :] = math.nan
        tainted[..., -band_y:, :] = math.nan
    if band_x:
        tainted[..., :, :band_x] = math.nan
        tainted[..., :, -band_x:] = math.nan
    run(tainted[None])


class Hooks:
    """Forward hooks on the watched layers; removed on exit, even after an exception (torchcam style).

    A hook that fails records which layer and why in :attr:`failure`, so that the caller can tell
    shiftlab's own errors apart from the model's.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        on_output: Callable[[str, nn.Module, torch.Tensor], None],
        output_key: str | None = None,
        *,
        hint: str = "",
    ) -> None:
        self.model = model
        self.layers = layers
        self.on_output = on_output
        self.output_key = output_key
        self.output_found: str | None = None  # how the model's output was read (see describe_output)
        self.hint = hint  # added to the message when the model rejects an input
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.calls: dict[str, int] = {}
        self.failure: tuple[str, BaseException] | None = None

    def __enter__(self) -> Hooks:
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._hook(name)))
        self.handles.append(self.model.register_forward_hook(self._hook("")))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count = self.calls.get(name, 0) + 1
            self.calls[name] = count
            # The model's own output: its main tensor as "output", every other tensor as "output.KEY".
            parts = [("", output)]
            if module is self.model:
                parts = output_parts(output, self.output_key)
                self.output_found = describe_output(output, self.output_key)
            for part, tensor in parts:
                base = (name or OUTPUT) + (f".{part}" if part else "")
                label = base if count == 1 else f"{base}:{count}"
                if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                    continue
                try:
                    self.on_output(label, module, tensor)
                except ShiftlabError:
                    raise
                except Exception as error:
                    self.failure = (label, error)
                    raise

        return hook

    def run(self, batch: torch.Tensor) -> Any:
        """The model on ``batch``, with the hooks measuring.

        Raises:
            ShiftlabError: the model rejected the input (its own error, quoted).
            InternalError: one of shiftlab's hooks failed (a bug in shiftlab).
        """
        self.calls, self.failure = {}, None
        try:
            return self.model(batch)
        except ShiftlabError:
            raise
        except Exception as error:
            if self.failure is not None:
                label, cause = self.failure
                raise InternalError(
                    f"the probe's hook on layer {label!r} failed: {type(cause).__name__}: {first_line(cause)}"
                ) from cause
            _rejected(self.model, batch, error, self.hint)

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _as_image_batch(item: Any, where: str) -> torch.Tensor:
    """One item of the input stream as an ``(N, C, H, W)`` floating tensor."""
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]  # (images, labels) from a DataLoader: the images
    tensor = item if isinstance(item, torch.Tensor) else None
    if tensor is None:
        try:
            tensor = torch.as_tensor(item)
        except (TypeError, ValueError, RuntimeError):
            fail(where, f"expected an image tensor (C, H, W) or a batch (N, C, H, W), got {describe(item)}")
    check(tensor.ndim in (3, 4), where, f"expected (C, H, W) or (N, C, H, W), got {describe(item)}")
    check(tensor.numel() > 0, where, f"is empty: {describe(tensor)}")
    check(tensor.is_floating_point(), where, f"expected floating-point images, got {describe(tensor)}")
    return tensor if tensor.ndim == 4 else tensor[None]


def _image_stream(inputs: Any) -> Iterator[torch.Tensor]:
    """The inputs as a stream of ``(N, C, H, W)`` batches, read one at a time (never all at once)."""
    if isinstance(inputs, torch.Tensor):
        yield _as_image_batch(inputs, "inputs")
        return
    check(
        isinstance(inputs, Iterable),
        "inputs",
        f"expected a tensor, a list of them or an iterable of batches, got {describe(inputs)}",
    )
    empty = True
    for position, item in enumerate(inputs):
        empty = False
        yield _as_image_batch(item, f"inputs[{position}]")
    check(not empty, "inputs", "is empty")


def _groups(stream: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive images of one shape, ``size`` at a time: passes never mix shapes, and single images share them."""
    pending: list[torch.Tensor] = []
    count = 0
    for batch in stream:
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            yield torch.cat(pending) if len(pending) > 1 else pending[0]
            pending, count = [], 0
        start = 0
        while start < batch.shape[0]:
            take = min(size - count, batch.shape[0] - start)
            pending.append(batch[start : start + take])
            count += take
            start += take
            if count == size:
                yield torch.cat(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if pending:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


def _handed_over(head: list[torch.Tensor], rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``head``'s item, then ``rest``, holding no reference to the item once it is handed over
    (``itertools.chain`` would keep it until the end)."""
    yield head.pop()
    yield from rest


def _known_shapes(inputs: Any) -> list[tuple[int, ...]] | None:
    """The shape of every image of a tensor or a list of tensors, in order (None for other streams: not known)."""
    if isinstance(inputs, torch.Tensor):
        return [tuple(inputs.shape[-3:])] * (inputs.shape[0] if inputs.ndim == 4 else 1)
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(item, torch.Tensor) for item in inputs):
        return None
    return [tuple(item.shape[-3:]) for item in inputs for _ in range(item.shape[0] if item.ndim == 4 else 1)]


def _count_passes(shapes: list[tuple[int, ...]] | None, images_per_pass: int, chunks: int) -> int | None:
    """How many forward passes images of these shapes need, in this order (None: not known in advance)."""
    if shapes is None:
        return None
    total, run = 0, 0
    for position, shape in enumerate(shapes):
        run += 1
        if position + 1 == len(shapes) or shapes[position + 1] != shape:
            total += math.ceil(run / images_per_pass) * chunks
            run = 0
    return total


def _check_finite(subject: str, output: Any, count: int, first: int, shifts: Sequence[tuple[float, float]]) -> None:
    """Refuse a model whose output holds NaN or infinity: every comparison with it would be meaningless.

    ``output`` is the model's for a pass of ``count`` images (numbered from ``first``) under each of
    ``shifts``, the first unshifted. (The border pass of the zero and crop modes, which feeds NaN on
    purpose, does not come here.)
    """
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or bool(torch.isfinite(output).all()):
        return
    where = ""
    if output.ndim >= 1 and output.shape[0] == len(shifts) * count:  # one output per input: name the first
        finite = torch.isfinite(output.reshape(len(shifts), count, -1)).all(dim=-1)
        variant, image = (int(value) for value in torch.nonzero(~finite)[0])
        dy, dx = shifts[variant]
        where = f" for input image {first + image} ({'unshifted' if variant == 0 else f'shifted by ({dy:g}, {dx:g})'})"
    fail(
        subject,
        f"outputs NaN or infinity{where}: no equivariance can be measured from that "
        f"(check {'the model and its weights' if subject.startswith('model ') else subject})",
    )


def _rejected(model: nn.Module, batch: torch.Tensor, error: BaseException, hint: str = "") -> NoReturn:
    fail(
        f"model {type(model).__name__}",
        f"rejected an input of shape {tuple(batch.shape)}: {type(error).__name__}: {first_line(error)}{hint}",
    )


def _crop_hint(pairs: Sequence[Shift], mode: ShiftMode) -> str:
    """What to do when a model rejects the crop windows: they are the input less the largest shift on each side."""
    margin_y, margin_x = crop_margin(pairs)
    chosen = " (chosen by mode auto)" if mode.chosen_by_auto else ""
    return (
        f"; crop shifts{chosen} show the model the input less the largest shift on each side ({margin_y} rows, "
        f"{margin_x} columns): a model that takes one input size needs images that much larger on each side, or "
        "another mode"
    )


def _recorded(
    model: nn.Module,
    watched: Sequence[tuple[str, nn.Module]],
    batch: torch.Tensor,
    output_key: str | None = None,
    hint: str = "",
) -> list[Any]:
    """:func:`shiftlab.probing.layouts.record_outputs`, a model's failure reported as bad input."""
    try:
        return record_outputs(model, watched, batch, output_key)
    except ShiftlabError:
        raise
    except Exception as error:
        _rejected(model, batch, error, hint)


@dataclass(frozen=True)
class Pass:
    """One forward pass: ``images`` originals (numbered from ``first`` among all inputs) followed by their copies for
    the shifts ``indices``.

    The zero shifts in ``identity`` compare ``f(x)`` with itself: they ride along with the first pass of every image
    group and cost no forward pass of their own.
    """

    images: int
    first: int
    indices: tuple[int, ...]
    identity: tuple[int, ...]

    @property
    def variants(self) -> int:
        """How many inputs per image the pass holds: the reference and one per shift of ``indices``."""
        return 1 + len(self.indices)


@dataclass
class Seen:
    """One watched output of one pass, as the engine hands it to its callbacks.

    Attributes:
        label: the row name (``conv1``, ``layer1.0.relu:2`` for a second call, ``output``, ``output.aux``).
        module: the module that gave it (the model itself for its output).
        output: the raw output, ``(variants * images * folded, ...)``.
        folded: outputs per input (MobileViT folds 4 patches into the batch axis).
        layout: its layout, from the engine's plan.
        spatial: the ``(N, C, h, w)`` map :meth:`~shiftlab.probing.layouts.Layout.split` reads from it (the whole output
        for
            a global layout), None when the layout does not read it.
        prefix: the prefix tokens of a token map, else None.
        step: the pass it belongs to (None in the border pass).
        core: ``(core, whole_map)`` for its map in ``zero`` and ``crop`` modes, else None: the ``(h, w)`` pixels
            whose receptive field stays clear of the border, and whether no pixel does.
    """

    label: str
    module: nn.Module
    output: torch.Tensor
    folded: int
    layout: Layout
    spatial: torch.Tensor | None
    prefix: torch.Tensor | None
    step: Pass
    core: tuple[torch.Tensor, bool] | None

    @property
    def fits(self) -> bool:
        """Whether the output is one map per input of the pass, as a comparison needs."""
        return self.spatial is not None and self.output.shape[0] == self.step.variants * self.step.images


@dataclass
class RunInfo:
    """What a run did: how many images, of which shapes, as which dtype and device, with which plan."""

    images: int = 0
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    plan: LayoutPlan | None = None
    watched: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    output_found: str | None = None
    passes: int = 0


class ShiftedForward:
    """The shifted forward pass of one model over a stream of images (see the module docstring).

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images.
        watched: the ``(name, module)`` pairs whose outputs are handed to the callbacks (the model's own output
            always is, as ``output``).
        layouts, strides: resolved overrides (:func:`shiftlab.probing.layouts.resolve_overrides`).
        output_key: the main tensor of a structured model output (see :mod:`shiftlab.outputs`).
        subject: what a message about the model's output names (default ``model NAME``, its class name).

    The engine keeps its layout plans (one per input size): a second run at the same size plans nothing.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.ReLU())
        >>> engine = ShiftedForward(net, [("0", net[0])])
        >>> seen = []
        >>> info = engine.run(torch.rand(3, 1, 8, 8), [(0, 1), (2, 0)], ShiftMode.of("circular"),
        ...                   lambda item: seen.append((item.label, tuple(item.spatial.shape))), batch_size=4)
        >>> info.images, info.passes, seen[:2]
        (3, 3, [('0', (3, 2, 8, 8)), ('output', (3, 2, 8, 8))])
    """

    def __init__(
        self,
        model: nn.Module,
        watched: Sequence[tuple[str, nn.Module]],
        *,
        layouts: Sequence[tuple[str, str]] = (),
        strides: Sequence[tuple[str, tuple[int, int]]] = (),
        output_key: str | None = None,
        subject: str | None = None,
    ) -> None:
        check(isinstance(model, nn.Module), "model", f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.subject = subject or f"model {type(model).__name__}"
        self.watched = list(watched)
        self.layouts = tuple(layouts)
        self.strides = tuple(strides)
        self.output_key = output_key
        self.plans: dict[tuple[Any, ...], LayoutPlan] = {}

    def plan(self, example: torch.Tensor, hint: str = "") -> LayoutPlan:
        """The layout plan for inputs like ``example`` (one image, as it will be run), made once per size.

        Planning costs one single-image forward pass (:func:`shiftlab.probing.layouts.plan_layouts`). The key holds
        every module's name, identity and type, so a module replaced since is a new plan.
        """
        structure = tuple((name, id(module), type(module)) for name, module in self.model.named_modules())
        key = (tuple(example.shape[1:]), structure)
        plan = self.plans.get(key)
        if plan is None:
            with torch.no_grad(), eval_mode(self.model):
                plan = plan_layouts(
                    self.model,
                    self.watched,
                    example,
                    layouts=self.layouts,
                    strides=self.strides,
                    run=lambda batch: _recorded(self.model, self.watched, batch, self.output_key, hint),
                    output_key=self.output_key,
                )
            self.plans[key] = plan
        return plan

    def run(
        self,
        inputs: Any,
        shifts: Sequence[Shift],
        mode: ShiftMode,
        on_output: Callable[[Seen], None] | Sequence[Callable[[Seen], None]],
        *,
        batch_size: int = 64,
        progress: Callable[[int, int | None], None] | None = None,
        leave_out_folded: bool = False,
    ) -> RunInfo:
        """Run every image of ``inputs`` with its copies under ``shifts``, calling ``on_output`` for every watched
        output of every pass.

        Args:
            inputs: a tensor, a list of them, or any iterable of batches (see :func:`shiftlab.probe`), read once,
                one batch at a time; moved to the model's device and dtype.
            shifts: validated ``(dy, dx)`` pairs.
            mode: the shift mode.
            on_output: one callback, or several, each called in turn with every :class:`Seen`.
            batch_size: the most inputs in one forward pass (at least 2).
            progress: ``progress(0, total)`` before the first pass, ``progress(done, total)`` after each.
            leave_out_folded: unhook the watched modules whose output folds patches into the batch axis (no layout
                reads them); :attr:`RunInfo.left_out` names them.

        Raises:
            ShiftlabError: shifts that do not fit an input, a model that rejects the input or outputs NaN.
            InternalError: a callback failed with anything but a ShiftlabError.
        """
        callbacks = [on_output] if callable(on_output) else list(on_output)
        pairs = list(shifts)
        model = self.model
        device, dtype = model_device_dtype(model)
        # The zero shift is the identity: its row compares f(x) with itself, and costs no forward pass.
        identity = tuple(index for index, (dy, dx) in enumerate(pairs) if dy == 0 and dx == 0)
        active = [index for index in range(len(pairs)) if index not in identity]
        chunk = max(1, min(len(active), batch_size - 1))
        chunks = [tuple(active[start : start + chunk]) for start in range(0, len(active), chunk)] or [()]
        images_per_pass = max(1, batch_size // (1 + chunk))
        shapes_known = _known_shapes(inputs)
        for size in dict.fromkeys(shape[-2:] for shape in shapes_known or [] if len(shape) >= 2):
            check_shifts_fit(pairs, mode, *size)  # every size known in advance: refused before any pass, not midway
        total = _count_passes(shapes_known, images_per_pass, len(chunks))
        hint = _crop_hint(pairs, mode) if mode.mode == "crop" else ""
        info = RunInfo()
        state = _State(callbacks)
        with eval_mode(model):
            groups: Iterator[torch.Tensor] = (
                group.to(device=device or group.device, dtype=dtype or group.dtype)
                for group in _groups(_image_stream(inputs), images_per_pass)
            )
            first = next(groups)
            # The layouts, from the first image (as it will be run: the reference input), before the hooks go on.
            plan = self.plan(mode.reference(first[:1], pairs)[0], hint)
            state.plan = info.plan = plan
            watched = self.watched
            if leave_out_folded:  # outputs that fold patches into the batch axis: no layout reads them
                info.left_out = {name: plan.folded[name] for name, _ in watched if name in plan.folded}
                watched = [(name, module) for name, module in watched if name not in info.left_out]
            info.watched = len(watched)
            groups = _handed_over([first], groups)
            del first  # the stream's first batch is freed once measured, as every other one
            if progress is not None:
                progress(0, total)  # what is ahead, before the first pass (the command line announces long runs)
            cores_by_size: dict[tuple[int, ...], dict[str, tuple[torch.Tensor, bool]]] = {}
            with Hooks(model, watched, state.on_output, self.output_key, hint=hint) as hooks, torch.no_grad():
                for group in groups:
                    info.dtype, info.device = info.dtype or group.dtype, info.device or group.device
                    reference, margin = mode.reference(group, pairs)
                    state.input_size = (reference.shape[-2], reference.shape[-1])
                    size = tuple(group.shape[1:])
                    if size not in info.shapes:
                        info.shapes.append(size)
                    if mode.needs_core:
                        if size not in cores_by_size:  # one border pass per input size
                            state.cores, state.recording_cores = {}, True
                            border_core(reference[0], crop_margin(pairs), hooks.run)
                            state.recording_cores = False
                            cores_by_size[size] = state.cores
                        state.cores = cores_by_size[size]
                    for position, indices in enumerate(chunks):
                        # Built pass by pass: the shifted copies of all shifts never coexist.
                        batch = reference.new_empty((1 + len(indices), *reference.shape))
                        batch[0] = reference
                        for slot, index in enumerate(indices, start=1):
                            batch[slot] = mode.shifted(group, *pairs[index], margin)
                        state.step = Pass(group.shape[0], info.images, indices, identity if position == 0 else ())
                        output = hooks.run(batch.flatten(0, 1))
                        ran = [(0.0, 0.0)] + [pairs[index] for index in indices]
                        _check_finite(self.subject, output, group.shape[0], info.images, ran)
                        info.passes += 1
                        if progress is not None:
                            progress(info.passes, total)
                    info.images += group.shape[0]
            info.output_found = hooks.output_found
        return info


class _State:
    """The engine's side of the hooks during a run: the pass, the input size, the plan and the border cores."""

    def __init__(self, callbacks: list[Callable[[Seen], None]]) -> None:
        self.callbacks = callbacks
        self.plan: LayoutPlan | None = None
        self.step: Pass | None = None
        self.input_size: tuple[int, int] = (0, 0)
        self.cores: dict[str, tuple[torch.Tensor, bool]] = {}  # label -> (core, whole map), for the current size
        self.recording_cores = False

    def on_output(self, label: str, module: nn.Module, output: torch.Tensor) -> None:
        assert self.plan is not None
        inputs = 1 if self.recording_cores or self.step is None else self.step.variants * self.step.images
        folded = output.shape[0] // inputs if output.shape[0] % inputs == 0 else 1  # outputs per input (MobileViT: 4)
        layout = self.plan.layout(label, module, (folded, *output.shape[1:]))
        spatial, prefix = layout.split(output, self.input_size)
        if self.recording_cores:
            if layout.spatial and spatial is not None:
                core = torch.isfinite(spatial[0]).all(dim=0)
                self.cores[label] = (core, not bool(core.any()))
            return
        assert self.step is not None
        seen = Seen(label, module, output, folded, layout, spatial, prefix, self.step, self.cores.get(label))
        for callback in self.callbacks:
            callback(seen)
