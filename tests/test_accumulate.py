"""Tests for shiftlab.accumulate: update, merge, reset, checkpoints and all-reduce across real processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shiftlab.accumulate import Accumulator
from shiftlab.errors import ShiftlabError


class Stats(Accumulator):
    """Sum, count, max and min of the values seen: every reduction once."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.int64))
        self.add_state("largest", torch.full((), -torch.inf, dtype=torch.float64), reduce="max")
        self.add_state("smallest", torch.full((), torch.inf, dtype=torch.float64), reduce="min")

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        self.total += values.sum()
        self.count += values.numel()
        self.largest = torch.maximum(self.largest, values.max())
        self.smallest = torch.minimum(self.smallest, values.min())

    def compute(self) -> tuple[float, int, float, float]:
        return float(self.total), int(self.count), float(self.largest), float(self.smallest)


VALUES = torch.arange(12, dtype=torch.float64) * 0.25 - 1.0


def test_any_batching_gives_the_same_result():
    whole = Stats()
    whole.update(VALUES)
    for size in (1, 3, 5, 12):
        parts = [Stats() for _ in range(0, 12, size)]
        for part, start in zip(parts, range(0, 12, size)):
            part.update(VALUES[start : start + size])
        merged = parts[0]
        for part in parts[1:]:
            merged.merge(part)
        assert merged.compute() == whole.compute()


def test_merge_takes_states_only_the_other_side_has():
    first, second = Stats(), Stats()
    second.add_state("extra", torch.ones(2, dtype=torch.int64))
    assert first.merge(second).extra.tolist() == [1, 1]


def test_merge_refuses_another_type_and_mismatched_shapes():
    class Other(Stats):
        pass

    with pytest.raises(ShiftlabError, match="cannot merge a Other into a Stats"):
        Stats().merge(Other())
    first, second = Stats(), Stats()
    first.add_state("extra", torch.zeros(2))
    second.add_state("extra", torch.zeros(3))
    with pytest.raises(ShiftlabError, match=r"state 'extra' has shape \(3,\) there and \(2,\) here"):
        first.merge(second)


def test_bad_declarations():
    stats = Stats()
    with pytest.raises(ShiftlabError, match="state 'total': is already declared"):
        stats.add_state("total", torch.zeros(()))
    with pytest.raises(ShiftlabError, match="must be one of sum, max, min, got 'mean'"):
        stats.add_state("other", torch.zeros(()), reduce="mean")  # type: ignore[arg-type]


def test_reset_and_checkpoint_round_trip():
    stats = Stats()
    stats.update(VALUES)
    saved = stats.state_dict()
    assert set(saved) == {"sum:total", "sum:count", "max:largest", "min:smallest"}
    restored = Stats().load_state_dict(saved)
    assert restored.compute() == stats.compute()
    stats.reset()
    assert stats.compute() == (0.0, 0, float(torch.finfo(torch.float64).min), float(torch.finfo(torch.float64).max))
    with pytest.raises(ShiftlabError, match="checkpoint state 'mean:x'"):
        Stats().load_state_dict({"mean:x": torch.zeros(())})


def test_all_reduce_is_a_no_op_without_a_process_group():
    stats = Stats()
    stats.update(VALUES)
    assert stats.all_reduce().compute() == (float(VALUES.sum()), 12, 1.75, -1.0)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        stats = Stats()
        stats.update(VALUES[rank::world])  # shards: every value once
        results[rank] = stats.all_reduce().compute()
        mismatched = Stats()
        if rank == 1:
            mismatched.add_state("extra", torch.zeros(()))
        try:
            mismatched.all_reduce()
        except ShiftlabError as error:
            results[f"error{rank}"] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_across_two_gloo_processes_equals_one_process():
    whole = Stats()
    whole.update(VALUES)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, start_method="spawn")
        results = dict(results)
    assert results[0] == results[1] == whole.compute()
    assert results["error0"] == results["error1"]
    assert "the processes hold different states" in results["error0"]


def test_clone_is_independent():
    stats = Stats()
    stats.update(VALUES)
    copy = stats.clone()
    copy.update(VALUES)
    assert stats.compute()[1] == 12 and copy.compute()[1] == 24
    assert type(copy) is Stats
