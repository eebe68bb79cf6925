"""Shared fixtures: deterministic random sources. The tests never use a network."""

from __future__ import annotations

import os

# Hugging Face's libraries read this once, when first imported (before any test module imports them): with it they
# never make a request, and a file that is not cached is an error. shiftlab reads it for every zoo (see shiftlab.zoo).
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy generator with a fixed seed: every test sees the same numbers on every run."""
    return np.random.default_rng(20240601)


@pytest.fixture
def generator() -> torch.Generator:
    """A torch CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(20240601)


@pytest.fixture
def single_thread():
    """Run torch on one thread: gradcheck on tiny tensors is many small conv2d calls, which an
    intra-op thread pool only slows down (by 100x on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
