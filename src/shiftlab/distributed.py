"""Several processes, one evaluation: the process group from torchrun's environment, and sharding without padding.

``torchrun --nproc_per_node N -m shiftlab evaluate ...`` starts ``N`` processes
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each; :func:`process_group` joins them (gloo on the CPU,
NCCL on CUDA devices, one device per local rank). Work is split by
:func:`shard`: every item goes to exactly one process, none is repeated to even
out the shards (unlike torch's ``DistributedSampler``, which pads by repeating
samples and so counts some twice).

When one process fails (bad input it alone sees, a model that runs out of memory) or is
killed, the others learn it in their next collective operation, as a broken connection:
:func:`peer_failures` turns that into one line that says so, rather than a backend's
traceback that reads like a bug in shiftlab.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from shiftlab.errors import fail, first_line

__all__ = ["Processes", "gather_objects", "peer_failures", "process_group", "shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of an evaluation, and the device it uses."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items of process ``rank`` of ``world``: every ``world``-th, starting at ``rank``; never padded.

    Example:
        >>> [shard(range(5), rank, 2) for rank in range(2)]
        [[0, 2, 4], [1, 3]]
    """
    return list(items[rank::world])


def _environment_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        fail("WORLD_SIZE", f"must be an integer, got {os.environ.get('WORLD_SIZE')!r}")


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Processes]:
    """Join the process group described by the environment (torchrun), or run alone.

    An existing ``torch.distributed`` group is used as it is (and left open). A
    group that this function creates is destroyed on exit. With CUDA, each
    process takes the device ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield Processes(dist.get_rank(), dist.get_world_size(), _local_device(device))
        return
    world = _environment_world()
    if world <= 1:
        yield Processes(0, 1, device)
        return
    if not dist.is_available():
        fail("torchrun", "this torch build has no torch.distributed support")
    local = _local_device(device)
    backend = "nccl" if local.type == "cuda" else "gloo"
    if local.type == "cuda":
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, device_id=local if local.type == "cuda" else None)
    except (RuntimeError, ValueError) as error:
        fail("torchrun", f"cannot join the process group ({backend}): {first_line(error)}")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), local)
    finally:
        dist.destroy_process_group()


def _local_device(device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local_rank >= count:
        fail("torchrun", f"local rank {local_rank} has no CUDA device (torch sees {count})")
    return torch.device("cuda", local_rank)


def gather_objects(value: Any, world: int) -> list[Any]:
    """Every process's ``value``, in rank order (just ``[value]`` alone)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    with peer_failures():
        dist.all_gather_object(gathered, value)
    return gathered


@contextlib.contextmanager
def peer_failures() -> Iterator[None]:
    """Around a collective operation of several processes: its failure is another process's.

    A collective fails when a peer has exited (failed on its own, or killed) or the network
    between them broke; the backend says so in its own words (gloo: "Connection closed by peer").
    This process then stops with :class:`~shiftlab.errors.ShiftlabError`, one line that names it
    and sends the reader to the other process's message.
    """
    try:
        yield
    except RuntimeError:  # torch.distributed's errors (DistError and the backends' own) are RuntimeErrors
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise  # no group, no peers: not another process's failure (and so not one to name here)
        fail(
            "torchrun",
            f"process {dist.get_rank()} of {dist.get_world_size()} stops: another process of the group failed or was "
            "killed (see its own message), and the connection to it broke",
        )
