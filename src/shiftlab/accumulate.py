"""The one accumulator type: measurements summed batch by batch, merged, and all-reduced across processes.

Modelled on torchmetrics' ``Metric``: an :class:`Accumulator` holds its state
as named tensors, each declared with the reduction that combines two partial
states (``"sum"``, ``"max"`` or ``"min"``). Then

* :meth:`~Accumulator.update` adds a batch (each subclass says what a batch is),
* :meth:`~Accumulator.merge` adds another accumulator's state (another data
  loader worker, another shard, a checkpoint),
* :meth:`~Accumulator.all_reduce` combines the states of every process of a
  ``torch.distributed`` group, one collective per state, and
* :meth:`~Accumulator.compute` turns the state into results,
* :meth:`~Accumulator.reset` restores every state's declared default, and
* :meth:`~Accumulator.to` moves the states (and their defaults) to a device.

A state is read and written as an attribute (``self.count += 1``), nothing else.

Because merging is the state's reduction and nothing else, a result never
depends on how the inputs were split: integer states (counts) are exact under
any batching and any number of processes; floating-point sums differ only in
the order of their float64 additions.

States may be declared lazily, on the first batch that needs them (the probe
learns its layers from the forward pass). Processes that all-reduce must then
have declared the same states, which :meth:`~Accumulator.all_reduce` checks.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, TypeVar

import torch

from shiftlab.distributed import peer_failures
from shiftlab.errors import check_choice, fail

__all__ = ["REDUCTIONS", "Accumulator", "Reduction"]

Reduction = Literal["sum", "max", "min"]
Self = TypeVar("Self", bound="Accumulator")  # (typing.Self needs Python 3.11)
REDUCTIONS: tuple[str, ...] = ("sum", "max", "min")


def _combine(reduction: str, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    if reduction == "sum":
        return first + second
    if reduction == "max":
        return torch.maximum(first, second)
    return torch.minimum(first, second)


class Accumulator:
    """Named tensor states with a reduction each; subclasses add ``update`` and ``compute``.

    A state is read and written as an attribute (``self.total += ...``), as in torchmetrics;
    :attr:`state_names` lists them. Each state keeps the default it was declared with:
    :meth:`reset` restores it, and :meth:`to` moves states and defaults together.

    Example:
        >>> class Mean(Accumulator):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.add_state("total", torch.zeros((), dtype=torch.float64))
        ...         self.add_state("count", torch.zeros((), dtype=torch.int64))
        ...     def update(self, values):
        ...         self.total += values.double().sum()
        ...         self.count += values.numel()
        ...     def compute(self):
        ...         return float(self.total / self.count)
        >>> first, second = Mean(), Mean()
        >>> first.update(torch.tensor([1.0, 2.0]))
        >>> second.update(torch.tensor([6.0]))
        >>> first.merge(second).compute()
        3.0
    """

    def __init__(self) -> None:
        self._reductions: dict[str, str] = {}
        self._defaults: dict[str, torch.Tensor] = {}
        self._states: dict[str, torch.Tensor] = {}
        # where states declared later go (set by .to(); None: where their default is)
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None

    # -- declaring and reading states

    def add_state(self, name: str, default: torch.Tensor, reduce: Reduction = "sum") -> None:
        """Declare a state: its default (copied; :meth:`reset` restores it) and how two partial values combine.

        After :meth:`to`, the default is first moved (and, if floating-point, cast) as the other states were.
        """
        check_choice(reduce, f"reduction of state {name!r}", REDUCTIONS)
        if name in self._states:
            fail(f"state {name!r}", "is already declared")
        if hasattr(type(self), name) or name in self.__dict__:
            fail(f"state {name!r}", f"would hide the attribute {name!r} of {type(self).__name__}")
        self._reductions[name] = reduce
        self._defaults[name] = self._placed(default.detach()).clone()
        self._states[name] = self._defaults[name].clone()

    @property
    def state_names(self) -> tuple[str, ...]:
        """The names of the states, in the order they were declared (read each as an attribute)."""
        return tuple(self._states)

    def has_state(self, name: str) -> bool:
        return name in self._states

    def __getattr__(self, name: str) -> torch.Tensor:
        states = self.__dict__.get("_states")
        if states is not None and name in states:
            return states[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute or state {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        states = self.__dict__.get("_states")
        if states is not None and name in states:
            states[name] = value
        else:
            super().__setattr__(name, value)

    # -- where the states live

    def to(
        self: Self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> Self:
        """Move every state and its default to ``device``; cast the floating-point ones to ``dtype``; returns ``self``.

        As ``nn.Module.to``: ``acc.to("cuda")``, ``acc.to(torch.float32)``, ``acc.to("cuda", torch.float64)``.
        Integer and boolean states (counts, bitmaps) keep their type. States declared later follow.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            fail("dtype", f"states can be cast to a floating-point type only, got {dtype}")
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = dtype
        self._defaults = {name: self._placed(value) for name, value in self._defaults.items()}
        self._states = {name: self._placed(value) for name, value in self._states.items()}
        return self

    @property
    def device(self) -> torch.device:
        """Where the states are (and where an ``update`` adds to them): the CPU unless :meth:`to` moved them."""
        for value in self._states.values():
            return value.device
        return self._device or torch.device("cpu")

    def _placed(self, value: torch.Tensor) -> torch.Tensor:
        dtype = self._dtype if self._dtype is not None and value.is_floating_point() else None
        return value.to(device=self._device, dtype=dtype)

    # -- the accumulator protocol

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        raise NotImplementedError

    def reset(self) -> None:
        """Every state back to the default it was declared with."""
        self._states = {name: default.clone() for name, default in self._defaults.items()}

    def merge(self: Self, other: Accumulator) -> Self:
        """Combine ``other``'s states into this one (each by its reduction); returns ``self``.

        A state that only ``other`` has declared is taken as it is (with ``other``'s default).
        """
        if type(other) is not type(self):
            fail("merge", f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, value in other._states.items():
            if name not in self._states:  # taken as it is
                self.add_state(name, other._defaults[name], other._reductions[name])  # type: ignore[arg-type]
                self._states[name] = self._placed(value).clone()
                continue
            mine = self._states[name]
            if mine.shape != value.shape or self._reductions[name] != other._reductions[name]:
                fail("merge", f"state {name!r} has shape {tuple(value.shape)} there and {tuple(mine.shape)} here")
            self._states[name] = _combine(self._reductions[name], mine, value.to(device=mine.device, dtype=mine.dtype))
        return self

    def all_reduce(self: Self, group: Any = None) -> Self:
        """Combine the states of every process of ``group`` (default: the world) in place; returns ``self``.

        A no-op when ``torch.distributed`` is not initialised or has one process. States travel on
        the device the backend needs (CUDA for NCCL) and come back to where they were.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        names = list(self._states)
        gathered: list[Any] = [None] * dist.get_world_size(group)
        with peer_failures():  # a peer that failed or was killed breaks the connection: one line, not a traceback
            dist.all_gather_object(gathered, [(name, tuple(self._states[name].shape)) for name in names], group=group)
        if any(item != gathered[0] for item in gathered):
            fail("all_reduce", "the processes hold different states (other layers or sizes): they cannot be combined")
        transport = _transport_device(dist.get_backend(group))
        operations = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        for name in names:
            value = self._states[name]
            moving = value.to(transport) if transport is not None else value.clone()
            with peer_failures():
                dist.all_reduce(moving, op=operations[self._reductions[name]], group=group)
            self._states[name] = moving.to(value.device)
        return self

    def clone(self: Self) -> Self:
        """A copy whose states can change (merge, all-reduce, reset, ``to``) without touching this one's."""
        duplicate = copy.copy(self)
        duplicate.__dict__["_states"] = {name: value.clone() for name, value in self._states.items()}
        duplicate.__dict__["_defaults"] = dict(self._defaults)  # never changed in place: shared
        duplicate.__dict__["_reductions"] = dict(self._reductions)
        return duplicate

    # -- checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The states as CPU tensors (for a checkpoint), named ``"<reduction>:<name>"``."""
        return {f"{self._reductions[name]}:{name}": value.detach().cpu() for name, value in self._states.items()}

    def load_state_dict(self: Self, state: dict[str, torch.Tensor]) -> Self:
        """Replace the states by those of :meth:`state_dict`; returns ``self``.

        A state this accumulator has not declared is declared with the identity of its reduction as its
        default (zero for a sum; -inf or the type's minimum for a maximum; +inf or the maximum for a minimum).
        """
        for key, value in state.items():
            reduction, _, name = key.partition(":")
            check_choice(reduction, f"checkpoint state {key!r}", REDUCTIONS)
            if name not in self._states:
                identity = torch.full_like(value, _identity(value.dtype, reduction), device="cpu")
                self.add_state(name, identity, reduction)  # type: ignore[arg-type]
            mine = self._states[name]
            self._states[name] = value.to(device=mine.device, dtype=mine.dtype)
        return self


def _identity(dtype: torch.dtype, reduction: str) -> float | int | bool:
    """The value that leaves every other unchanged under ``reduction``."""
    if reduction == "sum":
        return 0
    if dtype == torch.bool:
        return reduction == "min"
    if dtype.is_floating_point:
        return -math.inf if reduction == "max" else math.inf
    info = torch.iinfo(dtype)
    return info.min if reduction == "max" else info.max


def _transport_device(backend: str) -> torch.device | None:
    if str(backend).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None
