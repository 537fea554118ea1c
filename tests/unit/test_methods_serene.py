"""SeReNe: per-channel sensitivity on a toy net with a known derivative, the update rule, removal."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.methods.config import SeReNeConfig
from fedprune.methods.sensitivity import neuron_sensitivity
from fedprune.methods.serene import SeReNe, dead_neurons
from fedprune.methods.sites import NeuronSite, ParamSlice, build_sites
from fedprune.models import build_model
from fedprune.surgery import NeuronMask
from fedprune.train import ClientData, TrainConfig, train_local


class Toy(nn.Module):
    """conv 1x1 (3 channels on 2x2 images) -> relu -> flatten -> linear to 2 outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def toy() -> Toy:
    m = Toy()
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
        m.conv.bias.fill_(1.0)  # with positive inputs every unit is on: d relu = 1
        w = (torch.arange(24, dtype=torch.float32) ** 1.5 % 7.0).view(2, 12) - 3.0
        m.fc.weight.copy_(w)
    return m


def _brute_force_eq2(model, x, module):
    """(1/C) sum_k mean_{b, positions} |dy_k/da| from C separate backwards of single outputs."""
    acts = {}
    h = getattr(model, module).register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    y = model(x)
    h.remove()
    a = acts["a"]
    c = y.shape[1]
    per_k = []
    for k in range(c):
        (g,) = torch.autograd.grad(y[:, k].sum(), a, retain_graph=True)
        dims = [0] + list(range(2, g.dim()))
        per_k.append(g.abs().mean(dim=dims))
    return torch.stack(per_k).sum(0) / c


def test_eq2_sensitivity_equals_brute_force_jacobian():
    m = toy()
    x = torch.rand(5, 1, 2, 2) + 0.1
    s = neuron_sensitivity(m, x, {"conv": [("g", None)]})["g"]
    assert torch.allclose(s, _brute_force_eq2(m, x, "conv"), atol=1e-6)
    # the toy has a closed form: dy_k/dz[c, p] = W[k, 4c + p] (every unit on)
    w = m.fc.weight.detach()
    want = torch.stack([w[:, 4 * c: 4 * c + 4].abs().mean(1).sum() for c in range(3)]) / 2
    assert torch.allclose(s, want)
    assert len(set(np.round(s.numpy(), 6))) == 3  # not channel 0 copied everywhere


def test_eq2_sensitivity_on_lenet_matches_brute_force_for_every_layer():
    model = build_model("lenet5", seed=0)
    x = torch.randn(6, 1, 28, 28)
    outs = {n: [(n, None)] for n in ("conv1", "conv2", "fc1")}
    s = neuron_sensitivity(model, x, outs)
    for n in outs:
        assert torch.allclose(s[n], _brute_force_eq2(model, x, n), rtol=1e-4, atol=1e-7), n


def test_inactive_unit_has_zero_sensitivity():
    m = toy()
    with torch.no_grad():
        m.conv.bias[1] = -100.0  # channel 1 never fires
    s = neuron_sensitivity(m, torch.rand(3, 1, 2, 2), {"conv": [("g", None)]})["g"]
    assert s[1] == 0 and s[0] > 0 and s[2] > 0


def _toy_site(m):
    pos = torch.arange(3)
    return NeuronSite("g", 3, np.arange(3), [ParamSlice("conv.weight", m.conv.weight, 0, pos),
                                             ParamSlice("conv.bias", m.conv.bias, 0, pos)])


def test_update_is_normalised_per_layer_and_reaches_every_parameter():
    m = toy()
    method = SeReNe(SeReNeConfig(lmbda=0.1))
    method._sites = {"g": _toy_site(m)}
    raw = torch.tensor([0.0, 0.01, 0.04])  # raw eq. 2 values are this small
    method.sens = {"g": raw}
    w0, b0 = m.conv.weight.detach().clone(), m.conv.bias.detach().clone()
    method.after_step(None)
    ins = 1 - raw / raw.max()  # [1, 0.75, 0]
    assert torch.allclose(m.conv.weight.detach(), w0 - 0.1 * w0 * ins.view(3, 1, 1, 1))
    assert torch.allclose(m.conv.bias.detach(), b0 - 0.1 * b0 * ins)
    assert m.conv.weight[2].item() == w0[2].item()  # the layer's most sensitive neuron: untouched


def test_zero_sensitivity_neuron_decays_as_l2():
    m = toy()
    method = SeReNe(SeReNeConfig(lmbda=0.05))
    method._sites = {"g": _toy_site(m)}
    w0 = m.conv.weight.detach().clone()
    for _ in range(20):
        method.sens = {"g": torch.tensor([0.0, 0.02, 0.03])}
        method.after_step(None)
    # neuron 0 (S = 0) shrinks geometrically by (1 - lmbda) per step, exactly like weight decay
    assert torch.allclose(m.conv.weight[0].detach(), w0[0] * 0.95 ** 20)
    assert m.conv.weight[2].item() == w0[2].item()


def test_l2_control_decays_every_neuron_alike_without_a_probe():
    m = toy()
    method = SeReNe(SeReNeConfig(lmbda=0.1, sensitivity="none"))
    assert not method.uses_sensitivity
    method._sites = {"g": _toy_site(m)}
    w0 = m.conv.weight.detach().clone()
    method.after_step(None)
    assert torch.allclose(m.conv.weight.detach(), 0.9 * w0)


def test_neurons_with_zero_incoming_weights_are_removed(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    with torch.no_grad():
        model.conv2.weight[[3, 7]] = 0.0  # no input: constant output (folded by the surgery)
        model.fc2.weight[:, [11, 12]] = 0.0  # output never used
    ctx = SimpleNamespace(model=model, mask=mask, graph=graph, sites=build_sites(graph, model, mask),
                          val_loss=lambda n: 1.0)
    method = SeReNe(SeReNeConfig(pwe=100))
    method.attach(ctx)
    assert dead_neurons(ctx.sites["conv2"]).nonzero()[0].tolist() == [3, 7]
    new = method.epoch_end(ctx)
    method.detach(ctx)
    assert new["conv2"].sum() == 48 and not new["conv2"][3] and not new["conv2"][7]
    assert new["fc1"].sum() == 498 and not new["fc1"][11] and not new["fc1"][12]
    assert new["conv1"].all()
    # removing them does not change the function
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(graph.prune(model, mask, new).eval()(x), model.eval()(x), atol=1e-5)


def test_neuron_threshold_removes_whole_small_norm_neurons(lenet):
    from fedprune.train import evaluate

    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    xt, yt = _synthetic(256, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(16):  # a model at chance level is never thresholded
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[i * 16:][:16]), yt[i * 16:][:16]).backward()
        opt.step()
    model.eval()
    small = [5, 17, 99, 300]
    with torch.no_grad():  # what SeReNe's decay does to insensitive neurons: all parameters shrink
        model.fc1.weight[small] *= 1e-4
        model.fc1.bias[small] *= 1e-4
    x, y = _synthetic(64)
    ctx = SimpleNamespace(model=model, mask=mask, graph=graph, sites=build_sites(graph, model, mask),
                          val_y=y, val_loss=lambda n: evaluate(model, x[:n], y[:n], 64)[0])
    w0 = model.fc1.weight.detach().clone()
    method = SeReNe(SeReNeConfig(pwe=0, twt=0.01, threshold_samples=64))
    new = method.epoch_end(ctx)
    assert torch.equal(model.fc1.weight.detach(), w0)  # the search restored every weight
    removed = np.flatnonzero(~new["fc1"])
    assert set(small) <= set(removed.tolist())  # whole neurons, not single weights
    assert method.threshold.events == 1
    assert method.removed == sum(int((~np.asarray(new[g])).sum()) for g in new)
    # the pruned model's loss is the one the search accepted (within twt of the base)
    pruned = graph.prune(model, mask, new).eval()
    base = evaluate(model, x, y, 64)[0]
    assert evaluate(pruned, x, y, 64)[0] <= base * 1.01 + 1e-5


def test_serene_training_thresholds_and_shrinks_the_model(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (192,), generator=g)
    x = t[y] + 0.5 * torch.randn(192, 1, 28, 28, generator=g)
    data = ClientData(x[:128], y[:128], x[128:], y[128:])
    # lr high enough to learn something in 2 epochs: a model at chance level is not thresholded
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=32)
    res = train_local(graph.compact(dense, mask), mask, graph, data, cfg, "serene",
                      {"serene": {"pwe": 0, "twt": 0.5, "lmbda": 1e-3}}, None)
    m = res.metrics
    assert m["serene_prune_events"] >= 1
    assert m["serene_neurons_removed"] > 0 and res.mask.num_alive() < mask.num_alive()
    assert m["params_alive"] < m["params_dense"]  # physically smaller
    assert sum(p.numel() for p in res.model.parameters()) == m["params_alive"]
    assert m["serene_sensitivity_mean"] > 0


# -- thresholding guard (TWT near chance level) ------------------------------------------------


def _synthetic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    return t[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g), y


def _ctx(model, x, y):
    from fedprune.train import evaluate

    return SimpleNamespace(model=model, val_y=y,
                           val_loss=lambda n: evaluate(model, x[:n], y[:n], 256)[0])


def _trained(steps: int, lr: float):
    model = build_model("lenet300", seed=0)
    x, y = _synthetic(256 + 64)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(steps):
        xb, yb = x[(i * 32) % 256:][:32], y[(i * 32) % 256:][:32]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model, x[256:], y[256:]


def test_search_threshold_does_not_accept_the_trivial_predictor():
    from fedprune.methods.schedules import loss_bound, search_threshold

    mags = np.linspace(0.01, 1.0, 1000)
    base, chance = 2.2, float(np.log(10))
    # the loss rises smoothly to chance level when everything is zeroed: 2.3026 <= 1.05 * 2.2
    loss_at = lambda t: base + (chance - base) * (t ** 2)  # noqa: E731
    t_old, frac_old, _ = search_threshold(mags, loss_at, base, 0.05)
    assert frac_old > 0.99  # the relative tolerance alone thresholds (almost) everything
    t, frac, loss = search_threshold(mags, loss_at, base, 0.05, chance_loss=chance)
    assert 0 < frac < 0.3 and loss <= loss_bound(base, 0.05, chance) < base * 1.05
    assert loss <= base + 0.05 * (chance - base)
    # not better than chance: nothing is pruned; a huge tolerance still stays below chance
    assert search_threshold(mags, loss_at, chance, 0.05, chance_loss=chance)[:2] == (0.0, 0.0)
    assert search_threshold(mags, loss_at, base, 10.0, chance_loss=chance)[2] < chance


def test_near_chance_model_is_not_thresholded_to_nothing():
    from fedprune.methods.schedules import label_entropy
    from fedprune.methods.thresholding import MagnitudePruner

    model, xv, yv = _trained(steps=3, lr=0.01)
    ctx = _ctx(model, xv, yv)
    base = ctx.val_loss(64)
    chance = label_entropy(yv.numpy())
    assert base < chance < base * 1.05  # barely trained: zeroing everything is within a 5 % TWT
    pruner = MagnitudePruner(pwe=0, twt=0.05, samples=64)
    pruner.attach(model)
    nz0, total = pruner.counts()
    pruner.maybe_prune(ctx)
    nz, _ = pruner.counts()
    assert nz > 0.5 * nz0  # the old rule zeroed every weight (constant output at chance level)
    after = ctx.val_loss(64)
    assert after <= base * 1.05 + 1e-6 and after <= base + 0.05 * (chance - base) + 1e-6


def test_trained_model_keeps_the_relative_twt_guarantee():
    from fedprune.methods.schedules import label_entropy, loss_bound
    from fedprune.methods.thresholding import MagnitudePruner

    model, xv, yv = _trained(steps=24, lr=0.05)
    ctx = _ctx(model, xv, yv)
    base = ctx.val_loss(64)
    assert base < 1.0
    pruner = MagnitudePruner(pwe=0, twt=0.05, samples=64)
    pruner.attach(model)
    nz0, _ = pruner.counts()
    assert pruner.maybe_prune(ctx)
    nz, _ = pruner.counts()
    assert nz < 0.8 * nz0  # a trained model is still thresholded
    assert ctx.val_loss(64) <= base * 1.05 + 1e-6
    # below half the chance loss, the guard's bound is exactly the paper's relative TWT
    assert loss_bound(base, 0.05, label_entropy(yv.numpy())) == pytest.approx(base * 1.05)


# -- memory: the estimator traces the probe's extra backward -----------------------------------


def test_serene_predicted_peak_matches_measured_under_budget(lenet):
    from fedprune.memory import estimate_training_memory
    from fedprune.methods.serene_memory import SensitivityPassMemory
    from fedprune.train import ReferenceStep

    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    x, y = _synthetic(160)
    data = ClientData(x[:128], y[:128], x[128:], y[128:])
    pred = estimate_training_memory(model, 32, (1, 28, 28), "sgd",
                                    step_fn=ReferenceStep((SensitivityPassMemory(),))).total_bytes
    budget = int(pred * 1.10)  # room for the masks, not for an underestimated extra backward
    cfg = TrainConfig(epochs=1, batch_size=32, max_batch=32)
    res = train_local(model, mask, graph, data, cfg, "serene", {"serene": {"pwe": 100}}, budget)
    m = res.metrics
    assert m["batch_sizes"] == "32" and m["violations"] == 0
    assert m["measured_peak_bytes"] <= budget
    # one measured step (the first after the optimizer state exists): predicted == measured
    assert m["measured_peak_last_bytes"] == m["measured_peak_bytes"]
    assert m["measured_peak_bytes"] == pytest.approx(m["predicted_peak_bytes"], rel=1e-3)
