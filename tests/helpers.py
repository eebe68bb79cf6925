"""Small helpers shared by the tests: state_dicts, the scripts, subprocesses and torchrun groups."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# A CPU other than the one that recorded an accuracy may sum in another order and flip a borderline image or two;
# 3 of the 1,000 test images (0.3 percentage points) is the allowance.
ACCURACY_TOLERANCE = 0.003


def states_equal(first: dict, second: dict) -> bool:
    """Two state_dicts with the same keys and bit-identical tensors."""
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (the scripts are not part of the package), once per session."""
    module_name = f"_shiftlab_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def loopback_works(timeout: float = 2.0) -> bool:
    """Whether TCP connections to 127.0.0.1 get through (torchrun's rendezvous, gloo and Jupyter need them): a bare
    ``unshare -n`` leaves the loopback interface down, and then they would wait minutes for their timeouts."""
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=timeout):
                return True
    except OSError:
        return False


needs_loopback = pytest.mark.skipif(
    not loopback_works(),
    reason="needs TCP on 127.0.0.1 (torchrun, gloo, a Jupyter kernel), and the loopback interface is down (a bare "
    "`unshare -n`: `ip link set lo up` inside it brings it up)",
)


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_group(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group, and end the whole group if it overruns (torchrun's workers too)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[:6]} ran past {timeout} s: {stderr[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def kill_when(command: list[str], env: dict[str, str], partial: Path, key: str, at_least: int, timeout: float) -> dict:
    """Start ``command``; once its checkpoint ``partial`` records ``key >= at_least``, kill it with SIGKILL (as a
    machine that goes down would). Returns what the checkpoint recorded last."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (partial.exists() and json.loads(partial.read_text())[key] >= at_least):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return json.loads(partial.read_text())


def splitmix64(state: int) -> int:
    """SplitMix64's output for ``state`` (Steele, Lea & Flood 2014; Vigna's reference ``splitmix64.c``), written out
    from its published constants."""
    mask = (1 << 64) - 1
    z = (state + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def documented_generator(seed: int, metric_name: str, index: int) -> torch.Generator:
    """Image ``index``'s generator, from the documented protocol alone: seeded with
    ``splitmix64(splitmix64(splitmix64(seed) ^ crc32(metric name)) ^ index)`` kept to 63 bits."""
    stream = zlib.crc32(metric_name.encode("ascii"))
    mixed = splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ index)
    return torch.Generator().manual_seed(mixed & ((1 << 63) - 1))
