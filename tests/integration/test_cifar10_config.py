"""The CIFAR-10 / ResNet-18 HeteroFL config: it loads, each device level trains its own width, and
one client round runs on a few synthetic CIFAR-shaped images (no download)."""

import numpy as np
import pytest
import torch
from support import ROOT

from fedprune.config import load_config
from fedprune.feasibility import check_budgets
from fedprune.fleet import client_profile
from fedprune.global_model import ClientUpdate, GlobalModel, state_to_numpy
from fedprune.memory import OptimizerSpec
from fedprune.methods.submodel import largest_fitting_ratio, parse_ratios, window_mask
from fedprune.train import ClientData, TrainConfig, train_local

LEVELS = {"heterofl-a": 1.0, "heterofl-b": 0.5, "heterofl-c": 0.25, "heterofl-d": 0.125, "heterofl-e": 0.0625}


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "sim_configs" / "cifar10_heterofl.toml")


@pytest.fixture(scope="module")
def gm(cfg):
    return GlobalModel(cfg)


def test_config_is_the_heterofl_setting(cfg):
    assert (cfg.data.dataset, cfg.model.name, cfg.data.download) == ("cifar10", "resnet18", True)
    assert cfg.fleet.num_clients == 100 and cfg.fleet.clients_per_round == 0
    assert (cfg.train.local_epochs, cfg.train.batch_size, cfg.train.lr) == (5, 10, 0.1)
    check_budgets(cfg)  # heterofl decides the width itself: no client is refused


def test_each_device_level_trains_its_own_width(cfg, gm):
    t = cfg.train
    opt = OptimizerSpec(name=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay)
    ratios = parse_ratios(cfg.methods.heterofl.ratios, "ratios")
    seen = {}
    for pid in range(0, 100, 20):
        p = client_profile(cfg, pid)
        budget = int(p.budget_spec.reference_mb * 2**20)
        seen[p.device] = largest_fitting_ratio(gm.graph, gm.mask, ratios, budget, (3, 32, 32), opt, t.batch_size)
    assert seen == LEVELS


def test_one_round_on_synthetic_cifar_images(cfg, gm):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, 32, 32, generator=g), torch.randint(0, 10, (30,), generator=g)
    data = ClientData(x[:20], y[:20], x[20:], y[20:])
    level_d = client_profile(cfg, 60)
    assert level_d.device == "heterofl-d"
    tc = TrainConfig.from_section(cfg.train, seed=0)
    tc.epochs = 1
    model = gm.graph.build_compact(gm.mask)
    model.load_state_dict(gm.compact_model().state_dict())
    res = train_local(model, gm.mask, gm.graph, data, tc, "heterofl", cfg.methods.method_configs(),
                      int(level_d.budget_spec.reference_mb * 2**20), round_idx=0, num_rounds=cfg.run.num_rounds)
    assert res.num_examples == 20 and res.metrics["heterofl_width"] == 0.125
    assert res.mask == window_mask(gm.graph, gm.mask, 0.125)
    assert res.metrics["batch_sizes"] == "10"
    before = {k: v.copy() for k, v in gm.dense.items()}
    out = gm.aggregate([ClientUpdate("60", state_to_numpy(res.model.state_dict()), res.mask.to_arrays(), 20)])
    assert out["accepted"] == ["60"]
    # conv1's first 8 filters are the client's; with only level d in the round the global model is
    # that width (the union of the round's masks): the other 56 filters are pruned and zeroed
    moved = np.flatnonzero(np.any(gm.dense["conv1.weight"][:8] != before["conv1.weight"][:8], axis=(1, 2, 3)))
    assert len(moved) > 0
    assert list(np.flatnonzero(gm.mask["conv1"])) == list(range(8))
    assert not gm.dense["conv1.weight"][8:].any()
