"""Shared fixtures for every test tier (``unit/``, ``integration/``, ``e2e/``).

Tests run torch single-threaded: on a shared 2-core machine OpenMP spinning makes the in-process
training steps about 10x slower. Helpers that are not fixtures live in ``tests/support.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/support.py


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lenet():
    """A dense LeNet-5 (seed 0) and its neuron graph, shared by a test module."""
    from fedprune.models import build_model, example_input
    from fedprune.surgery import NeuronGraph

    dense = build_model("lenet5", seed=0)
    return dense, NeuronGraph.from_model(dense, example_input())


@pytest.fixture(autouse=True)
def _resident_model_per_test():
    """The resident-memory model is per process (a client process turns it on and learns its fixed
    costs); an in-process test that runs the ClientApp must not hand that state to the next test."""
    import copy

    from fedprune.memory.resident import RESIDENT

    saved = copy.deepcopy({k: v for k, v in vars(RESIDENT).items() if k != "window"})
    window = RESIDENT.window
    yield
    vars(RESIDENT).update(saved)
    RESIDENT.window = window
