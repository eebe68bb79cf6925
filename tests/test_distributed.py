"""shiftlab.distributed: sharding without padding, the process group alone, inside an existing group and across two
gloo processes (ranks, gathering, all-reduced metric states, a peer that leaves), and peer failures in one line."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port, needs_loopback

from shiftlab.distributed import Processes, gather_objects, peer_failures, process_group, shard
from shiftlab.errors import ShiftlabError
from shiftlab.invariance.protocols import Consistency, ConsistencyMetric

CPU = torch.device("cpu")
PEER_MESSAGE = (
    "torchrun: process {rank} of {world} stops: another process of the group failed or was killed (see its own"
    " message), and the connection to it broke"
)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 4, 7])
def test_shards_cover_every_item_once_in_turn_without_padding(world, count):
    items = [f"item{index}" for index in range(count)]
    shards = [shard(items, rank, world) for rank in range(world)]
    for rank, part in enumerate(shards):
        assert part == [items[index] for index in range(rank, count, world)]  # every world-th, from rank
    assert sorted(item for part in shards for item in part) == sorted(items)  # each once: nothing repeated
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard(range(count), 0, world) == list(range(0, count, world))  # any sequence, a list back


def test_only_rank_zero_is_the_main_process():
    assert Processes(0, 3, CPU).main and not Processes(1, 3, CPU).main and not Processes(2, 3, CPU).main


# --------------------------------------------------------------------------- one process


@pytest.mark.parametrize("world", [None, "1"])
def test_alone_the_group_is_this_process(monkeypatch, world):
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    with process_group(CPU) as processes:
        assert processes == Processes(0, 1, CPU)
        assert not dist.is_initialized()
    assert gather_objects({"a": 1}, 1) == [{"a": 1}]


def test_a_world_size_that_is_not_a_number_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ShiftlabError) as error, process_group(CPU):
        pass
    assert str(error.value) == "WORLD_SIZE: must be an integer, got 'two'"


def test_without_a_group_no_error_is_blamed_on_peers():
    with pytest.raises(RuntimeError, match="Default process group"), peer_failures():  # no group: no peer to blame
        raise RuntimeError("Default process group has not been initialized")
    with pytest.raises(KeyError), peer_failures():  # only the backends' errors: anything else is not a peer's
        raise KeyError("x")


@needs_loopback
def test_an_existing_group_is_used_as_it_is_and_left_open():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with process_group(CPU) as processes:
            assert processes == Processes(0, 1, CPU)
        assert dist.is_initialized()  # not ours to close
        with pytest.raises(ShiftlabError) as error, peer_failures():
            raise RuntimeError("gloo: connection reset")
        assert str(error.value) == PEER_MESSAGE.format(rank=0, world=1)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- two gloo processes


def agreement_outputs() -> torch.Tensor:
    """Six images, three views each: their top-1 classes as one-hot logits (1, 3, 1, 0, 3, 1 agreeing pairs)."""
    top1 = torch.tensor([[0, 0, 1], [2, 2, 2], [1, 0, 0], [0, 1, 2], [3, 3, 3], [4, 4, 0]])
    return F.one_hot(top1, 5).double()


def consistency_state(images: list[int]) -> ConsistencyMetric:
    state = ConsistencyMetric(Consistency("circular", views=3, max_shift=2))
    infos = torch.tensor([[0, 0, 8, 8], [0, 1, 8, 8], [1, 0, 8, 8]]).expand(len(images), 3, 4)
    if images:
        state.update(agreement_outputs()[images], torch.full((len(images),), -1), infos)
    return state


def _member(rank: int, world: int, port: int, results: dict) -> None:
    """One process of a torchrun-like group: the environment torchrun sets, then shiftlab's own calls."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group(CPU) as processes:
        results[f"processes{rank}"] = (processes.rank, processes.world, processes.main)
        results[f"gathered{rank}"] = gather_objects({"rank": rank, "square": rank * rank}, processes.world)
        mine = shard(list(range(6)), processes.rank, processes.world)
        results[f"reduced{rank}"] = consistency_state(mine).all_reduce().compute()
        if rank == 1:
            os._exit(0)  # leaves the group without a word, as a killed process would
        try:
            gather_objects("still there?", processes.world)
        except ShiftlabError as error:
            results[f"error{rank}"] = str(error)
    results[f"closed{rank}"] = not dist.is_initialized()


@pytest.mark.slow
@needs_loopback
def test_two_gloo_processes_rank_gather_reduce_and_name_a_peer_that_left():
    with mp.Manager() as manager:
        results = manager.dict()
        context = mp.start_processes(
            _member, args=(2, free_port(), results), nprocs=2, start_method="spawn", join=False
        )
        deadline = time.monotonic() + 120
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"the two processes ran past 120 s: {dict(results)}")
        results = dict(results)
    assert results["processes0"] == (0, 2, True) and results["processes1"] == (1, 2, False)
    expected = [{"rank": 0, "square": 0}, {"rank": 1, "square": 1}]
    assert results["gathered0"] == results["gathered1"] == expected  # rank order, in every process
    whole = consistency_state(list(range(6))).compute()
    assert results["reduced0"] == results["reduced1"] == whole
    assert whole["agreeing_pairs"] == 9 and whole["pairs"] == 18
    assert results["error0"] == PEER_MESSAGE.format(rank=0, world=2)
    assert results["closed0"]  # the group this process joined is destroyed on the way out
