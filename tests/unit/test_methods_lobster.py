"""LOBSTER: unstructured zeros, reported as freeing no training memory."""

from __future__ import annotations

import torch

from fedprune.memory import estimate_training_memory
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask
from fedprune.train import ClientData, TrainConfig, train_local


def test_lobster_zeros_do_not_free_memory():
    dense = build_model("lenet5", seed=0)
    graph = NeuronGraph.from_model(dense, example_input())
    mask = NeuronMask.full(graph)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (192,), generator=g)
    x = t[y] + 0.5 * torch.randn(192, 1, 28, 28, generator=g)
    data = ClientData(x[:128], y[:128], x[128:], y[128:])
    model = graph.compact(dense, mask)
    budget = estimate_training_memory(model, 32, (1, 28, 28), "sgd").total_bytes * 2
    # lr high enough to learn: a model at chance level is not thresholded (chance-level guard)
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=32, max_batch=512)
    res = train_local(model, mask, graph, data, cfg, "lobster",
                      {"lobster": {"pwe": 0, "twt": 0.5, "lmbda": 1e-3}}, budget)
    m = res.metrics
    assert m["lobster_prune_events"] >= 1 and m["lobster_sparsity"] > 0.3
    assert m["nonzero_params"] < m["params_dense"] * 0.7
    # ... yet nothing structural happened and no memory was freed for a bigger batch
    assert m["lobster_frees_memory"] == 0 and "no training memory" in m["lobster_memory_note"]
    assert res.mask == mask and m["params_alive"] == m["params_dense"] and m["structural_changes"] == 0
    assert len(m["batch_sizes"].split(",")) == 1
    assert res.method_state["lobster/trigger/fired"] >= 1
