"""Helpers shared by the tests (imported as ``support``; ``conftest.py`` puts this folder on the path)."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository


def synthetic_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable 28x28 images: one fixed template per class (10 classes) plus noise; labels."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g), y


def synthetic_client_data(n: int, seed: int = 0):
    """:func:`synthetic_images` as a client's data: the first 3/4 train, the rest validation."""
    from fedprune.train import ClientData

    x, y = synthetic_images(n, seed)
    k = n * 3 // 4
    return ClientData(x[:k], y[:k], x[k:], y[k:])


SMALL_RUN = """
[run]
name = "{name}"
seed = {seed}
num-rounds = {rounds}
[data]
max-samples-per-client = {samples}
[train]
batch-size = 32
min-batch = 8
[methods]
enabled = "neq+dynhp"
[memory]
budget = "constant"
budget-mb = 8.0
[fleet]
num-clients = {clients}
min-clients = 2
"""


def small_run_config(name: str, rounds: int, clients: int, seed: int, samples: int) -> str:
    """A small federated run (LeNet-5, neq+dynhp under 8 MB) as TOML text, for end-to-end tests."""
    return SMALL_RUN.format(name=name, rounds=rounds, clients=clients, seed=seed, samples=samples)
