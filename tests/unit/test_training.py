"""The local trainer: contract, does-not-fit path, method combinations, centralized mode."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.data import TensorPair
from fedprune.memory import OptimizerSpec
from fedprune.methods import MethodEntry, register, unregister
from fedprune.methods.base import Method
from fedprune.methods.serene_memory import SensitivityPassMemory
from fedprune.surgery import NeuronMask
from fedprune.train import ClientData, ReferenceStep, TrainConfig, evaluate, train_local
from fedprune.train.centralized import run_centralized


def tensors(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    return t[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g), y


def client(n: int = 128, seed: int = 0) -> ClientData:
    x, y = tensors(n, seed)
    k = n * 3 // 4
    return ClientData(x[:k], y[:k], x[k:], y[k:])


def test_evaluate_known_model():
    class Const(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 10.0]]).expand(len(x), 2)

    x = torch.zeros(4, 1)
    y = torch.tensor([1, 1, 0, 1])
    loss, acc = evaluate(Const(), x, y, batch_size=3)
    assert acc == 0.75
    assert loss == pytest.approx((3 * 4.54e-5 + 10.0000454) / 4, rel=1e-3)
    assert all(np.isnan(v) for v in evaluate(Const(), x[:0], y[:0]))


def test_does_not_fit_returns_cleanly(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {"neq/evals": 3}
    res = train_local(model, mask, graph, client(), TrainConfig(), "dynhp+neq", None, 10_000, state, 0, 1)
    assert res.metrics["does_not_fit"] == 1 and res.num_examples == 0
    assert res.model is model and res.mask == mask and res.method_state == state
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.metrics["predicted_peak_bytes"] > 10_000
    json.dumps(res.metrics)


@pytest.mark.parametrize("methods", ["none", "dynhp+neq", "serene+neq", "serene+dynhp", "lobster+neq",
                                     "dynhp+serene+neq"])
def test_method_combinations_run(lenet, methods):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    cfgs = {"dynhp": {"score_samples": 32}, "neq": {"val_samples": 16, "eps": 0.05},
            "serene": {"pwe": 0, "twt": 0.5, "threshold_samples": 64},
            "lobster": {"pwe": 0, "twt": 0.5, "threshold_samples": 64}}
    cfg = TrainConfig(epochs=2, lr=0.02, batch_size=32,
                      optimizer=OptimizerSpec("sgd", momentum=0.9, weight_decay=1e-4))
    res = train_local(graph.compact(dense, mask), mask, graph, client(), cfg, methods, cfgs, None, None, 0, 2)
    m = res.metrics
    json.dumps(m)
    assert m["does_not_fit"] == 0 and res.num_examples == 96
    assert res.mask.issubset(mask)
    graph.check_model(res.model, res.mask)
    assert all(p.requires_grad for p in res.model.parameters())
    assert np.isfinite(m["train_loss"]) and 0 <= m["val_accuracy"] <= 1
    assert m["bprop_flops"] <= m["bprop_flops_dense"]
    for key in ("budget_bytes", "predicted_peak_bytes", "measured_peak_bytes", "utilization",
                "batch_sizes", "violations", "bprop_flops_saved_frac", "neurons_pruned", "params_alive",
                "oom_events", "wall_seconds"):
        assert key in m
    for v in res.method_state.values():
        assert isinstance(v, (np.ndarray, int, float))
    if "dynhp" in methods:
        assert m["params_alive"] < m["params_dense"]


def test_budget_is_respected_or_reported(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    budget = 8_000_000
    res = train_local(model, mask, graph, client(160), TrainConfig(epochs=1, batch_size=32, min_batch=1, max_batch=64),
                      "serene+neq", {"serene": {"pwe": 100}}, budget, None, 0, 1)
    m = res.metrics
    assert m["does_not_fit"] == 0 and m["memory_measurements"] >= 1
    assert m["predicted_peak_bytes"] <= budget
    assert m["violations"] == 0
    assert 0 < m["measured_peak_bytes"] <= budget
    assert 0 < m["utilization"] <= 1.0


def test_reference_step_is_hashable_and_counts_the_extra_backward(lenet):
    from fedprune.memory import estimate_training_memory

    dense, graph = lenet
    model = graph.compact(dense, NeuronMask.full(graph))
    with_pass = ReferenceStep((SensitivityPassMemory(),))
    plain = estimate_training_memory(model, 32, (1, 28, 28), "sgd", step_fn=ReferenceStep())
    sens = estimate_training_memory(model, 32, (1, 28, 28), "sgd", step_fn=with_pass)
    assert hash(with_pass) == hash(ReferenceStep((SensitivityPassMemory(),)))
    assert sens.total_bytes > plain.total_bytes


def test_bad_round_index_and_methods_raise(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    with pytest.raises(ValueError, match="round_idx"):
        train_local(graph.compact(dense, mask), mask, graph, client(), TrainConfig(), "none", None, None,
                    None, 3, 3)
    with pytest.raises(ValueError, match="foo"):
        train_local(graph.compact(dense, mask), mask, graph, client(), TrainConfig(), "foo", None, None)


def test_run_centralized_quick():
    x, y = tensors(400, seed=3)
    xt, yt = tensors(100, seed=4)
    out, res = run_centralized("lenet5", TrainConfig(epochs=1, lr=0.02, batch_size=32), "dynhp",
                               {"dynhp": {"score_samples": 16}}, None, epochs=2,
                               train=TensorPair(x, y), test=TensorPair(xt, yt), val_fraction=0.1)
    json.dumps(out)
    assert res.metrics == out["metrics"] and res.mask.num_alive() < res.mask.num_total()
    assert out["epochs"] == 2 and len(out["history"]) == 2
    assert out["train_samples"] == 360 and out["val_samples"] == 40 and out["test_samples"] == 100
    assert 0 <= out["test_accuracy"] <= 1
    assert out["neurons"].startswith("[") and out["neurons"].endswith("[10]")
    assert out["compression"] >= 5.0  # end_progress 0.75 < 1: the target is reached in one run


def test_cosine_schedule_and_linear_scaling(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=16, lr_schedule="cosine")
    res = train_local(graph.compact(dense, mask), mask, graph, client(96), cfg, "none", None, None,
                      None, 1, 2)
    assert res.metrics["lr_final"] < 0.1 * 0.01  # end of the last round: cosine is ~0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step").validate()


def test_lr_warmup_ramps_only_a_batch_scaled_rate_above_lr():
    from types import SimpleNamespace

    from fedprune.train.budgeting import BatchBudget

    cfg = TrainConfig(lr=0.05, batch_size=32, max_batch=128, lr_scaling="linear", lr_warmup=0.1).validate()
    ctx = SimpleNamespace(cfg=cfg, batch_size=128, progress=0.0, budget_bytes=None, round_idx=0)
    budget = BatchBudget(ctx, [])
    assert budget.current_lr() == pytest.approx(0.05)  # start: the rate tuned at batch-size
    ctx.progress = 0.05
    assert budget.current_lr() == pytest.approx(0.05 + (0.2 - 0.05) * 0.5)
    ctx.progress = 0.1
    assert budget.current_lr() == pytest.approx(0.2)  # warm-up over: the scaled rate
    ctx.batch_size, ctx.progress = 16, 0.0
    assert budget.current_lr() == pytest.approx(0.025)  # a smaller batch is never raised to lr
    no_warmup = BatchBudget(SimpleNamespace(cfg=TrainConfig(lr=0.05, batch_size=32, max_batch=128,
                                                            lr_scaling="linear"),
                                            batch_size=128, progress=0.0, budget_bytes=None, round_idx=0), [])
    assert no_warmup.current_lr() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lr_warmup"):
        TrainConfig(lr_warmup=1.0).validate()


def test_lr_warmup_steps_the_budget_grown_batch_below_its_scaled_rate(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    finals = {}
    for warmup in (0.0, 0.9):
        cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, min_batch=8, max_batch=64, lr_scaling="linear",
                          lr_warmup=warmup)
        res = train_local(graph.compact(dense, mask), mask, graph, client(160), cfg, "none", None, 200 * 2**20,
                          None, 0, 2)
        assert res.metrics["batch_final"] == 64  # the budget buys the largest batch
        finals[warmup] = res.metrics["lr_final"]
    assert finals[0.0] == pytest.approx(0.2)
    assert 0.05 < finals[0.9] < 0.05 + 0.15 * 0.5 / 0.9 + 1e-9  # progress <= 0.5 at the end of round 1 of 2


@dataclass
class FreezerConfig:
    """A method config: its fields are its ``[methods.<name>]`` keys."""

    odd_epochs_only: bool = True

    def validate(self) -> "FreezerConfig":
        return self


class FreezeConvsEveryOtherEpoch(Method):
    """A stand-in for NEq freezing whole layers: the conv weights have no gradient in odd epochs."""

    name = "freezer"

    def epoch_start(self, ctx):
        frozen = ctx.epoch % 2 == 1
        for m in ctx.model.modules():
            if isinstance(m, nn.Conv2d):
                for p in m.parameters():
                    p.requires_grad_(not frozen)
        ctx.costs_changed()
        return None

    def metrics(self, ctx):
        return {"freezer_epochs": ctx.epoch + 1}


@pytest.fixture
def freezer():
    """The toy method, registered for one test (one registry entry: no trainer edit, no patch)."""
    register(MethodEntry("freezer", FreezeConvsEveryOtherEpoch, FreezerConfig, hook_rank=50))
    yield "freezer"
    unregister("freezer")


def test_a_registered_method_trains_through_train_local(lenet, freezer):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    cfg = TrainConfig(epochs=2, batch_size=32)
    res = train_local(graph.compact(dense, mask), mask, graph, client(256), cfg, f"{freezer}+neq",
                      {freezer: {"odd-epochs-only": True}}, None, None, 0, 1)
    assert res.metrics["methods"] == "freezer+neq" and res.metrics["freezer_epochs"] == 2
    assert all(p.requires_grad for p in res.model.parameters())  # the trainer restored the flags
    with pytest.raises(ValueError, match="freezer"):
        train_local(graph.compact(dense, mask), mask, graph, client(64), cfg, freezer,
                    {freezer: {"unknown_key": 1}}, None)


def test_batch_follows_the_trainable_set_within_the_budget(lenet, freezer):
    """Freezing frees memory (bigger batch); thawing needs it back (batch refitted, no violation)."""
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    budget = 9_000_000
    cfg = TrainConfig(epochs=3, batch_size=8, min_batch=8, max_batch=256, measure_every=1)
    res = train_local(model, mask, graph, client(1024), cfg, freezer, None, budget, None, 0, 1)
    m = res.metrics
    sizes = [int(b) for b in m["batch_sizes"].split(",")]
    assert m["violations"] == 0 and m["measured_peak_bytes"] <= budget
    assert len(sizes) >= 3 and sizes[1] > sizes[0] and sizes[2] < sizes[1]  # up while frozen, back down
