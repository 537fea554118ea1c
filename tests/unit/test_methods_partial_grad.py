"""Partial weight gradients (NEq's frozen rows) and autograd not entering wholly frozen layers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedprune.methods import partial_grad
from fedprune.methods.config import NEqConfig
from fedprune.methods.neq import NEq
from fedprune.methods.sites import build_sites
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("layer", ["conv2", "fc1"])
def test_active_rows_get_the_dense_gradient_and_frozen_rows_none(layer):
    torch.manual_seed(0)
    model = build_model("lenet5", seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    dense = _grads(model, x, y)
    mod = getattr(model, layer)
    n = mod.weight.shape[0]
    active = torch.tensor([i for i in range(n) if i % 3 != 1])
    frozen = torch.tensor([i for i in range(n) if i % 3 == 1])
    partial_grad.install(mod, active)
    part = _grads(model, x, y)
    for name in dense:  # every other gradient (inputs of earlier layers included) is unchanged
        if name.startswith(layer + "."):
            continue
        assert torch.allclose(part[name], dense[name], rtol=1e-4, atol=1e-6), name
    for attr in ("weight", "bias"):
        g, d = part[f"{layer}.{attr}"], dense[f"{layer}.{attr}"]
        assert torch.allclose(g[active], d[active], rtol=1e-4, atol=1e-6)
        assert (g[frozen] == 0).all() and (d[frozen] != 0).any()
    partial_grad.uninstall(mod)
    assert "forward" not in mod.__dict__
    restored = _grads(model, x, y)
    assert torch.allclose(restored[f"{layer}.weight"], dense[f"{layer}.weight"])


def test_frozen_rows_cancel_weight_decay():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    partial_grad.install(lin, torch.tensor([0, 2]), weight_decay=0.1)
    w0 = lin.weight.detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    assert torch.allclose(lin.weight[1].detach(), w0[1], rtol=0, atol=1e-7)
    assert not torch.allclose(lin.weight[0].detach(), w0[0])


def test_install_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported"):
        partial_grad.install(nn.Conv2d(4, 4, 3, groups=4), torch.tensor([0]))
    with pytest.raises(ValueError, match="active rows"):
        partial_grad.install(nn.Linear(3, 2), torch.tensor([2]))


def _ctx(model, graph, mask, x):
    return SimpleNamespace(model=model, sites=build_sites(graph, model, mask), val_x=x, eval_batch=16,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), frozen_fraction={},
                           costs_changed=lambda: None)


def _lenet_frozen(frozen: dict[str, np.ndarray]):
    """A compact LeNet-5 with NEq's ``frozen`` flags applied; returns (model, x, ctx, neq)."""
    dense = build_model("lenet5", seed=0)
    graph = NeuronGraph.from_model(dense, example_input())
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    x = torch.randn(16, 1, 28, 28)
    ctx = _ctx(model, graph, mask, x)
    neq = NEq(NEqConfig())
    neq.frozen = frozen
    neq._apply_freeze(ctx)
    return model, x, ctx, neq


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_wholly_frozen_first_layer_is_never_entered_by_backward():
    model, x, ctx, neq = _lenet_frozen({"conv1": np.ones(20, dtype=bool), "conv2": np.arange(50) % 2 == 0})
    entered = []
    model.conv1.register_full_backward_hook(lambda *a: entered.append("conv1"))
    model.conv2.register_full_backward_hook(lambda *a: entered.append("conv2"))
    F.cross_entropy(model(x), torch.randint(0, 10, (16,))).backward()
    assert entered == ["conv2"]
    assert model.conv1.weight.grad is None and model.conv1.bias.grad is None
    assert (model.conv2.weight.grad[::2] == 0).all() and (model.conv2.weight.grad[1::2] != 0).any()
    assert "forward" in model.conv2.__dict__  # the partial-gradient layer
    neq.detach(ctx)
    assert all(p.requires_grad for p in model.parameters()) and "forward" not in model.conv2.__dict__


def test_stochastic_control_freezes_about_p_of_the_neurons():
    dense = build_model("lenet5", seed=0)
    graph = NeuronGraph.from_model(dense, example_input())
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    ctx = _ctx(model, graph, mask, torch.randn(16, 1, 28, 28))
    neq = NEq(NEqConfig(mode="stochastic", stochastic_p=0.2, seed=3))
    fracs = []
    for _ in range(5):
        neq.epoch_start(ctx)
        fracs.append(float(np.mean(np.concatenate([f for f in neq.frozen.values()]))))
    neq.detach(ctx)
    assert 0.15 < np.mean(fracs) < 0.25 and len(set(fracs)) > 1  # a fresh draw every epoch
    assert neq.metrics(ctx)["neq_frozen_frac_mean"] == pytest.approx(np.mean(fracs))


@pytest.mark.parametrize("n_active, n_rows, saves", [
    (8, 16, True), (9, 16, False), (12, 16, False), (16, 16, False), (0, 16, True),
    (48, 50, True), (49, 50, False), (1, 8, False), (7, 120, True), (112, 120, True), (113, 120, False),
])
def test_saves_a_block_counts_kernel_row_blocks(n_active, n_rows, saves):
    assert partial_grad.saves_a_block(n_active, n_rows, block=8) is saves


@pytest.mark.parametrize("capability, block", [("AVX512", 16), ("AVX2", 8), ("DEFAULT", 8)])
def test_row_block_follows_the_cpu_capability(monkeypatch, capability, block):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert partial_grad.row_block() == block
    assert partial_grad.saves_a_block(8, 16) is (block == 8)  # the default block is this machine's


def test_saves_a_block_rejects_impossible_counts():
    for bad in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="saves_a_block"):
            partial_grad.saves_a_block(*bad)


def test_frozen_rows_that_fill_no_block_use_a_hook_and_save_no_flops():
    """conv1 (20 rows) with 3 frozen: the active 17 need the same 3 blocks as all 20, so the
    gradient is computed and replaced (no partial path, no FLOPs counted); conv2 (50 rows) with 25
    frozen: 4 blocks instead of 7, the partial path, and its frozen fraction is counted."""
    model, x, ctx, neq = _lenet_frozen({"conv1": np.arange(20) < 3, "conv2": np.arange(50) % 2 == 0})
    assert "forward" not in model.conv1.__dict__ and "forward" in model.conv2.__dict__
    assert ctx.frozen_fraction == {"conv2": 0.5}
    F.cross_entropy(model(x), torch.randint(0, 10, (16,))).backward()
    assert (model.conv1.weight.grad[:3] == 0).all() and (model.conv1.weight.grad[3:] != 0).any()
    assert (model.conv2.weight.grad[::2] == 0).all()
    neq.detach(ctx)


def test_serene_eq2_pass_runs_through_partial_gradient_layers_unchanged():
    """SeReNe's batched eq. 2 backward (vmap over the C outputs) through NEq's partial-path layers
    gives the sensitivities of the plain layers, and a training backward after it still gets the
    partial weight gradients."""
    from fedprune.methods.sensitivity import neuron_sensitivity

    torch.manual_seed(0)
    model = build_model("lenet5", seed=0)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    outputs = {"conv1": [("conv1", None)], "conv2": [("conv2", None)], "fc1": [("fc1", None)]}
    plain = neuron_sensitivity(model, x, outputs)
    dense = _grads(model, x, y)
    active = {"conv2": torch.arange(0, 50, 2), "fc1": torch.arange(0, 500, 3)}
    for name, rows in active.items():
        partial_grad.install(getattr(model, name), rows)
    part = neuron_sensitivity(model, x, outputs)
    for g in plain:
        assert torch.allclose(part[g], plain[g], rtol=1e-5, atol=1e-8), g
    grads = _grads(model, x, y)
    for name, rows in active.items():
        g, d = grads[name + ".weight"], dense[name + ".weight"]
        assert torch.allclose(g.index_select(0, rows), d.index_select(0, rows), rtol=1e-4, atol=1e-6)
        frozen = torch.tensor(sorted(set(range(g.shape[0])) - set(rows.tolist())))
        assert float(g.index_select(0, frozen).abs().max()) == 0.0
