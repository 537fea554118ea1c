"""DynHP: the schedule reaches its target across rounds; the model shrinks and the batch grows."""

from __future__ import annotations

import pytest
import torch

from fedprune.memory import estimate_training_memory
from fedprune.methods.dynhp import count_params_for, normalize_scores
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask
from fedprune.train import ClientData, TrainConfig, train_local


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lenet():
    dense = build_model("lenet5", seed=0)
    return dense, NeuronGraph.from_model(dense, example_input())


def synthetic(n: int, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    x = t[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g)
    k = n * 3 // 4
    return ClientData(x[:k], y[:k], x[k:], y[k:])


def test_normalize_scores_unit_norm_per_group():
    s = normalize_scores({"a": [3.0, 4.0], "b": [0.0, 0.0]})
    assert s["a"].tolist() == pytest.approx([0.6, 0.8]) and s["b"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("score", ["taylor", "l2"])
def test_schedule_reaches_target_by_the_last_round(lenet, score):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    data = synthetic(128)
    cfg = TrainConfig(epochs=1, lr=0.02, batch_size=32)
    dcfg = {"target_compression": 0.8, "end_progress": 0.75, "score": score, "score_samples": 32}
    model, state, compressions = graph.compact(dense, mask), None, []
    for r in range(4):
        res = train_local(model, mask, graph, data, cfg, "dynhp", {"dynhp": dcfg}, None, state, r, 4)
        assert res.mask.issubset(mask)
        model, mask, state = res.model, res.mask, res.method_state
        compressions.append(res.metrics["compression"])
    assert compressions == sorted(compressions)
    assert compressions[2] >= 5.0 and compressions[-1] >= 5.0
    assert count_params_for(graph, mask) == sum(p.numel() for p in model.parameters())
    assert all(mask.num_alive(g) >= 2 for g in mask.names)


def test_model_shrinks_and_batch_grows_under_fixed_budget(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    budget = estimate_training_memory(model, 16, (1, 28, 28), "sgd").total_bytes + 1024
    data = synthetic(256, seed=2)
    cfg = TrainConfig(epochs=2, lr=0.02, batch_size=16, max_batch=256, lr_scaling="sqrt")
    res = train_local(model, mask, graph, data, cfg, "dynhp",
                      {"dynhp": {"target_compression": 0.8, "end_progress": 0.5, "score_samples": 32}},
                      budget)
    m = res.metrics
    batches = [int(b) for b in m["batch_sizes"].split(",")]
    assert batches[0] <= 16 and m["batch_final"] > 2 * batches[0]
    assert batches == sorted(batches)
    assert m["params_alive"] * 5 <= m["params_dense"]
    assert m["structural_changes"] >= 2 and m["neurons_pruned"] > 0
    assert m["measured_peak_bytes"] <= budget or m["violations"] > 0
    assert m["lr_final"] > cfg.lr
