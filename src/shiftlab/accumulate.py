"""The one accumulator type: measurements summed batch by batch, merged, and all-reduced across processes.

Modelled on torchmetrics' ``Metric``: an :class:`Accumulator` holds its state
as named tensors, each declared with the reduction that combines two partial
states (``"sum"``, ``"max"`` or ``"min"``). Then

* :meth:`~Accumulator.update` adds a batch (each subclass says what a batch is),
* :meth:`~Accumulator.merge` adds another accumulator's state (another data
  loader worker, another shard, a checkpoint),
* :meth:`~Accumulator.all_reduce` combines the states of every process of a
  ``torch.distributed`` group, one collective per state, and
* :meth:`~Accumulator.compute` turns the state into results.

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
from collections.abc import Iterator
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
        self._states: dict[str, torch.Tensor] = {}

    # -- declaring and reading states

    def add_state(self, name: str, default: torch.Tensor, reduce: Reduction = "sum") -> None:
        """Declare a state: its initial value (copied) and how two partial values combine."""
        check_choice(reduce, f"reduction of state {name!r}", REDUCTIONS)
        if name in self._states:
            fail(f"state {name!r}", "is already declared")
        self._reductions[name] = reduce
        self._states[name] = default.detach().clone()

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

    def state(self, name: str) -> torch.Tensor:
        return self._states[name]

    def set_state(self, name: str, value: torch.Tensor) -> None:
        self._states[name] = value

    def states(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every state, in the order they were declared."""
        return iter(list(self._states.items()))

    # -- the accumulator protocol

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        raise NotImplementedError

    def merge(self: Self, other: Accumulator) -> Self:
        """Combine ``other``'s states into this one (each by its reduction); returns ``self``.

        A state that only one side has declared is taken as it is.
        """
        if type(other) is not type(self):
            fail("merge", f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, value in other.states():
            if name not in self._states:
                self.add_state(name, value, other._reductions[name])  # type: ignore[arg-type]
                continue
            mine = self._states[name]
            if mine.shape != value.shape or self._reductions[name] != other._reductions[name]:
                fail("merge", f"state {name!r} has shape {tuple(value.shape)} there and {tuple(mine.shape)} here")
            self._states[name] = _combine(self._reductions[name], mine, value.to(mine.device))
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
        """A copy whose states can change (merge, all-reduce) without touching this one's."""
        duplicate = copy.copy(self)
        duplicate.__dict__["_states"] = {name: value.clone() for name, value in self.states()}
        duplicate.__dict__["_reductions"] = dict(self._reductions)
        return duplicate

    def reset(self) -> None:
        """Every state back to zero (sums), or its identity (max, min)."""
        for name, value in self.states():
            if self._reductions[name] == "sum":
                self._states[name] = torch.zeros_like(value)
            else:
                identity = _identity(value.dtype, self._reductions[name])
                self._states[name] = torch.full_like(value, identity)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The states as CPU tensors (for a checkpoint), named ``"<reduction>:<name>"``."""
        return {f"{self._reductions[name]}:{name}": value.detach().cpu() for name, value in self.states()}

    def load_state_dict(self: Self, state: dict[str, torch.Tensor]) -> Self:
        """Replace the states by those of :meth:`state_dict` (declaring any that are missing); returns ``self``."""
        for key, value in state.items():
            reduction, _, name = key.partition(":")
            check_choice(reduction, f"checkpoint state {key!r}", REDUCTIONS)
            if name in self._states:
                device = self._states[name].device
                self._states[name] = value.to(device)
            else:
                self.add_state(name, value, reduction)  # type: ignore[arg-type]
        return self


def _identity(dtype: torch.dtype, reduction: str) -> float | int | bool:
    if dtype == torch.bool:
        return reduction == "min"
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    return info.min if reduction == "max" else info.max


def _transport_device(backend: str) -> torch.device | None:
    if str(backend).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None
