"""Tests for shiftlab.accumulate: update, merge, reset, checkpoints and all-reduce across real processes."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, needs_loopback

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
    assert stats.compute() == (0.0, 0, -math.inf, math.inf)  # the declared defaults, -inf included
    with pytest.raises(ShiftlabError, match="checkpoint state 'mean:x'"):
        Stats().load_state_dict({"mean:x": torch.zeros(())})


def test_all_reduce_is_a_no_op_without_a_process_group():
    stats = Stats()
    stats.update(VALUES)
    assert stats.all_reduce().compute() == (float(VALUES.sum()), 12, 1.75, -1.0)


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
@needs_loopback
def test_all_reduce_across_two_gloo_processes_equals_one_process():
    whole = Stats()
    whole.update(VALUES)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, free_port(), results), nprocs=2, start_method="spawn")
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


def test_reset_restores_declared_defaults_not_zeros():
    stats = Stats()
    stats.add_state("offset", torch.tensor([2.5, -1.0], dtype=torch.float64))
    stats.add_state("floor", torch.full((), 7, dtype=torch.int64), reduce="max")
    stats.update(VALUES)
    stats.offset += 1.0
    stats.floor = torch.maximum(stats.floor, torch.tensor(9))
    stats.reset()
    assert stats.offset.tolist() == [2.5, -1.0] and int(stats.floor) == 7
    stats.offset += 1.0  # the default is a copy: changing a state in place never changes it
    stats.reset()
    assert stats.offset.tolist() == [2.5, -1.0]


def test_a_state_is_read_as_an_attribute_and_listed_by_name():
    stats = Stats()
    stats.update(VALUES)
    assert stats.state_names == ("total", "count", "largest", "smallest")
    assert [float(getattr(stats, name)) for name in stats.state_names] == [float(VALUES.sum()), 12.0, 1.75, -1.0]
    assert not hasattr(stats, "state") and not hasattr(stats, "set_state") and not hasattr(stats, "states")
    with pytest.raises(AttributeError, match="'Stats' has no attribute or state 'missing'"):
        _ = stats.missing


def test_a_state_cannot_hide_a_method():
    with pytest.raises(ShiftlabError, match="state 'compute': would hide the attribute 'compute' of Stats"):
        Stats().add_state("compute", torch.zeros(()))


def test_loaded_states_that_were_not_declared_reset_to_their_reductions_identity():
    saved = {
        "sum:added": torch.tensor([3, 4]),
        "max:high": torch.tensor([2.0]),
        "min:low": torch.tensor([5], dtype=torch.int32),
        "max:seen": torch.tensor([True]),
    }
    stats = Stats().load_state_dict(saved)
    assert stats.added.tolist() == [3, 4] and stats.high.tolist() == [2.0]
    stats.reset()
    assert stats.added.tolist() == [0, 0] and stats.high.tolist() == [-math.inf]
    assert stats.low.tolist() == [torch.iinfo(torch.int32).max] and stats.seen.tolist() == [False]


def test_merge_declares_the_other_sides_state_with_its_default():
    first, second = Stats(), Stats()
    second.add_state("peak", torch.full((2,), -math.inf), reduce="max")
    second.peak = torch.tensor([1.0, 2.0])
    first.merge(second)
    assert first.peak.tolist() == [1.0, 2.0]
    first.reset()
    assert first.peak.tolist() == [-math.inf, -math.inf]


def test_to_casts_floating_states_and_their_defaults_only():
    stats = Stats().to(torch.float32)
    assert [getattr(stats, name).dtype for name in stats.state_names] == [
        torch.float32,
        torch.int64,
        torch.float32,
        torch.float32,
    ]
    stats.update(VALUES)
    assert stats.total.dtype == torch.float32 and stats.compute() == (float(VALUES.sum()), 12, 1.75, -1.0)
    stats.reset()
    assert stats.largest.dtype == torch.float32 and float(stats.largest) == -math.inf
    stats.add_state("later", torch.zeros(2, dtype=torch.float64))  # declared after .to(): follows
    assert stats.later.dtype == torch.float32
    merged = Stats().merge(stats)  # a float64 accumulator takes float32 partial states at its own type
    assert merged.total.dtype == torch.float64
    with pytest.raises(ShiftlabError, match="dtype: states can be cast to a floating-point type only, got torch.int32"):
        stats.to(torch.int32)


def test_to_moves_states_defaults_and_later_states():
    stats = Stats()
    stats.update(VALUES)
    assert stats.device.type == "cpu"
    assert stats.to("meta") is stats
    assert {getattr(stats, name).device.type for name in stats.state_names} == {"meta"} == {stats.device.type}
    stats.reset()  # the defaults moved too
    assert {getattr(stats, name).device.type for name in stats.state_names} == {"meta"}
    assert stats.largest.dtype == torch.float64 and stats.count.dtype == torch.int64
    stats.add_state("later", torch.zeros(3))
    other = Stats()
    other.add_state("extra", torch.ones(2))
    stats.merge(other)  # a CPU accumulator merged into a meta one: its states come over
    assert stats.later.device.type == stats.extra.device.type == stats.total.device.type == "meta"
    on_cpu = Stats()
    on_cpu.clone().to("meta").reset()  # a clone moves alone
    assert on_cpu.total.device.type == "cpu"
    on_cpu.reset()
    assert on_cpu.total.device.type == "cpu"
    restored = stats.load_state_dict(Stats().state_dict())  # a checkpoint loads where the states are
    assert restored.total.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_states_on_cuda_give_the_cpu_result():
    on_cpu, on_gpu = Stats(), Stats().to("cuda")
    on_cpu.update(VALUES)
    on_gpu.update(VALUES[:5].cuda())
    part = Stats()
    part.update(VALUES[5:])
    on_gpu.merge(part)
    assert on_gpu.total.device.type == "cuda" and on_gpu.compute() == on_cpu.compute()
    on_gpu.reset()
    assert on_gpu.largest.device.type == "cuda" and float(on_gpu.largest) == -math.inf
    assert Stats().load_state_dict(on_gpu.to("cpu").state_dict()).compute() == (0.0, 0, -math.inf, math.inf)
