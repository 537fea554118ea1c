"""NEq: eq. 3 velocity, cosine similarity, and frozen neurons that truly do not move."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import synthetic_images as synthetic

from fedprune.memory import OptimizerSpec
from fedprune.methods.config import NEqConfig
from fedprune.methods.neq import cosine_rows, neuron_outputs, velocity_eq3, velocity_step
from fedprune.surgery import NeuronMask
from fedprune.train import ClientData, TrainConfig, train_local


# ------------------------------------------------------------------ eq. 3

def test_velocity_recursion_matches_eq3_hand_computed():
    phis = [0.90, 0.97, 0.99, 0.995, 0.999]
    mu = 0.5
    # hand-computed eq. 3 for t = 2: phi2 - (1 + mu) phi1 + (mu + mu^2) phi0
    assert velocity_eq3(phis[:3], mu) == pytest.approx(0.99 - 1.5 * 0.97 + 0.75 * 0.90)
    # the recursion v = (phi_t - phi_{t-1}) - mu v_{t-1} (phi^-1 = v^-1 = 0) unrolls to eq. 3
    prev_phi, v = 0.0, 0.0
    for t, phi in enumerate(phis):
        v = float(velocity_step(np.array([phi]), np.array([prev_phi]), np.array([v]), mu)[0])
        assert v == pytest.approx(velocity_eq3(phis[: t + 1], mu), abs=1e-12)
        prev_phi = phi


def test_velocity_mu_zero_is_plain_difference():
    phis = [0.5, 0.8, 0.85]
    assert velocity_eq3(phis, 0.0) == pytest.approx(0.05)
    v = velocity_step(np.array([0.85]), np.array([0.8]), np.array([123.0]), 0.0)
    assert v[0] == pytest.approx(0.05)


def test_cosine_rows_and_outputs_layout():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert cosine_rows(a, b).tolist() == pytest.approx([1.0, 1.0, -1.0, 0.0])
    out = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rows = neuron_outputs(out, max_spatial=2)
    assert rows.shape == (3, 2 * 4)
    # channel 1 of sample 0, top-left 2x2 block averaged
    assert rows[1, 0] == pytest.approx(out[0, 1, :2, :2].mean())


# ------------------------------------------------------------------ freezing

def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("opt, skip", [
    (OptimizerSpec("sgd", momentum=0.9, weight_decay=0.05), False),
    (OptimizerSpec("adam", momentum=0.9, weight_decay=0.05), False),
    (OptimizerSpec("sgd", momentum=0.9, weight_decay=0.05), True),
])
def test_frozen_neurons_do_not_move(lenet, opt, skip):
    """eps huge: every neuron freezes at the 3rd evaluation (epoch 3) and then never moves."""
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    x, y = synthetic(160)
    data = ClientData(x[:128], y[:128], x[128:], y[128:])
    cfg = TrainConfig(epochs=4, lr=0.05, optimizer=opt, batch_size=32)
    snaps = {}

    def cb(epoch, ctx, _m):
        snaps[epoch] = (_snapshot(ctx.model), {id(p): dict(ctx.optimizer.state.get(p, {}))
                                               for p in ctx.model.parameters()},
                        dict(ctx.model.named_parameters()))

    res = train_local(graph.compact(dense, mask), mask, graph, data, cfg, ["neq"],
                      {"neq": {"eps": 1e9, "skip_layer_grad": skip, "val_samples": 16}}, None,
                      epoch_callback=cb)
    before, after = snaps[1][0], snaps[3][0]
    group_params = [k for k in before if k.split(".")[0] in ("conv1", "conv2", "fc1")
                    and k.endswith(("weight", "bias"))]
    assert group_params
    for k in group_params:
        # exact up to the rounding of the cancelled weight-decay term (-wd * w + wd * w)
        assert torch.allclose(before[k], after[k], rtol=0, atol=1e-7), f"{k} moved while frozen"
    assert not torch.equal(before["fc2.weight"], after["fc2.weight"])  # output layer still trains
    if not skip:  # no momentum carry-over: frozen rows of every momentum buffer are zero
        state, params = snaps[3][1], snaps[3][2]
        for k in group_params:
            st = state[id(params[k])]
            for key in ("momentum_buffer", "exp_avg"):
                if key in st:
                    assert float(st[key].abs().max()) < 1e-7
    m = res.metrics
    assert m["neq_frozen_frac"] == 1.0
    if skip:  # whole layers leave autograd: their weight (and earlier input) gradients are not computed
        assert 0.0 < m["bprop_flops_frozen_saved_frac"] < 1.0
    else:  # a hook replaces gradients that were computed: frozen, but nothing saved
        assert m["bprop_flops_frozen_saved_frac"] == 0.0
    assert m["neq_layers_skipped"] == 0  # flags are released at the end
    assert all(p.requires_grad for p in res.model.parameters())


def test_state_survives_rounds_as_plain_numpy(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    x, y = synthetic(96, seed=1)
    data = ClientData(x[:64], y[:64], x[64:], y[64:])
    cfg = TrainConfig(epochs=1, lr=0.02, batch_size=32)
    model, state = graph.compact(dense, mask), None
    for r in range(3):
        res = train_local(model, mask, graph, data, cfg, "neq", {"neq": {"eps": 1e9, "val_samples": 8}},
                          None, state, round_idx=r, num_rounds=3)
        model, mask, state = res.model, res.mask, res.method_state
        assert all(isinstance(v, (np.ndarray, int, float)) for v in state.values())
        assert res.metrics["neq_evals"] == r + 1
    # round 0 records, round 1 measures the first phi (no velocity yet), round 2 freezes (|v| < eps)
    assert res.metrics["neq_frozen_frac"] == 1.0
    assert state["neq/prev/fc1"].shape == (500, 8)


def test_host_state_is_counted_from_the_start(lenet):
    """NEq's numpy state is budgeted before it exists (an upper bound valid from step one)."""
    neq, ctx = _neq_ctx(lenet, NEqConfig.eps)
    before = neq.extra_bytes(ctx)
    neq.epoch_start(ctx)
    actual = sum(a.nbytes for a in neq.prev.values())
    assert actual > 0 and before >= actual
    # conv1: 20 neurons x 32 samples x 4x4 pooled positions, float16
    assert neq.prev["conv1"].shape == (20, 32 * 16) and neq.prev["conv1"].dtype == np.float16


def _neq_ctx(lenet, eps, samples=32):
    from types import SimpleNamespace

    from fedprune.methods.config import NEqConfig
    from fedprune.methods.neq import NEq
    from fedprune.methods.sites import build_sites

    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    x, _ = synthetic(samples)
    ctx = SimpleNamespace(model=model, sites=build_sites(graph, model, mask), val_x=x, eval_batch=16,
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.1), frozen_fraction={},
                          costs_changed=lambda: None)
    return NEq(NEqConfig(eps=eps, val_samples=samples, max_spatial=4)), ctx


def test_first_similarity_alone_never_freezes(lenet):
    """v = phi - 0 at the first similarity is no velocity: with any eps, freezing starts at eval 3."""
    neq, ctx = _neq_ctx(lenet, eps=1e9)
    neq.epoch_start(ctx)   # eval 1: record outputs
    assert not any(f.any() for f in neq.frozen.values())
    neq.epoch_start(ctx)   # eval 2: first phi, no velocity yet
    assert not any(f.any() for f in neq.frozen.values())
    assert all((n == 1).all() for n in neq.nphi.values())
    neq.epoch_start(ctx)   # eval 3: a real velocity
    assert all(f.all() for f in neq.frozen.values())
    neq.detach(ctx)
    # the counter survives the round trip through the flat state
    st = neq.state_dict()
    assert st["nphi/conv1"].tolist() == [2] * 20
    neq2, _ = _neq_ctx(lenet, eps=1e9)
    neq2.load_state_dict(st)
    assert (neq2.nphi["conv1"] == 2).all()
    legacy = {k: v for k, v in st.items() if not k.startswith("nphi/")}  # state saved before the counter
    neq3, _ = _neq_ctx(lenet, eps=1e9)
    neq3.load_state_dict(legacy)
    assert (neq3._nphi("conv1") == 2).all()


def test_frozen_neuron_thaws_when_its_output_moves_again(lenet):
    neq, ctx = _neq_ctx(lenet, eps=0.5)
    for _ in range(3):     # outputs unchanged: phi = 1, 1 -> v = 0 at eval 3
        neq.epoch_start(ctx)
    assert neq.frozen["conv1"].all()
    with torch.no_grad():  # negate conv1: its outputs flip, phi = -1, v = -2
        ctx.model.conv1.weight.neg_()
        ctx.model.conv1.bias.neg_()
    neq.epoch_start(ctx)
    assert not neq.frozen["conv1"].any()
    neq.detach(ctx)


def test_metrics_name_the_gradient_path_that_ran(lenet):
    """Partly frozen conv/linear layers run the partial-gradient path; wholly frozen ones skip autograd."""
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    x, y = synthetic(96)
    data = ClientData(x[:64], y[:64], x[64:], y[64:])
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32)
    half = train_local(graph.compact(dense, mask), mask, graph, data, cfg, ["neq"],
                       {"neq": {"mode": "stochastic", "stochastic_p": 0.5, "val_samples": 16}}, None).metrics
    assert half["neq_partial_grad_layer_epochs"] >= 2  # conv1, conv2, fc1 partly frozen each epoch
    assert half["neq_no_grad_param_epochs"] == 0
    whole = train_local(graph.compact(dense, mask), mask, graph, data, cfg, ["neq"],
                        {"neq": {"mode": "stochastic", "stochastic_p": 1.0, "val_samples": 16}}, None).metrics
    assert whole["neq_partial_grad_layer_epochs"] == 0
    assert whole["neq_no_grad_param_epochs"] > 0


def _full_outputs(ctx, neq):
    """Each group's outputs on the whole validation subset in one forward: the definition."""
    outs = {}
    modules = dict(ctx.model.named_modules())
    handles = []
    for g, site in ctx.sites.items():
        for mname, pos in site.outputs:
            def fn(mod, inp, out, g=g, pos=pos):
                outs.setdefault(g, []).append(neuron_outputs(out.detach().float(), neq.cfg.max_spatial).index_select(0, pos))
            handles.append(modules[mname].register_forward_hook(fn))
    ctx.model.eval()
    with torch.no_grad():
        ctx.model(ctx.val_x[: neq.cfg.val_samples])
    for h in handles:
        h.remove()
    return {g: torch.cat(v, dim=1).numpy() for g, v in outs.items()}


def test_chunked_evaluation_is_the_cosine_of_the_whole_outputs(lenet):
    """Chunks of 5 samples (not a divisor of 32) give phi = cos(outputs now, outputs before) of the
    whole validation subset, and the record is the float16 outputs."""
    neq, ctx = _neq_ctx(lenet, eps=1e-9)
    ctx.eval_batch = 5
    neq.epoch_start(ctx)
    before = _full_outputs(ctx, neq)
    for g, rec in neq.prev.items():
        # chunked and whole-batch kernels may round differently: equal to float16 precision
        assert np.allclose(rec.astype(np.float32), before[g], rtol=2e-3, atol=1e-4), g
    with torch.no_grad():  # move every layer a little
        for p in ctx.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = _full_outputs(ctx, neq)
    neq.epoch_start(ctx)
    for g, phi in neq.phi.items():
        want = cosine_rows(after[g], before[g].astype(np.float16).astype(np.float32))
        assert phi == pytest.approx(want, abs=1e-4), g
        assert np.allclose(neq.prev[g].astype(np.float32), after[g], rtol=2e-3, atol=1e-4), g
    neq.detach(ctx)


def test_an_evaluation_holds_the_record_and_one_chunk_not_copies_of_it(lenet):
    """The host memory an evaluation adds beyond NEq's budgeted state is one chunk's forward and
    outputs (numpy and torch CPU allocations are both seen by tracemalloc), not the whole subset's
    outputs in float32 and float64 beside the record."""
    import tracemalloc

    neq, ctx = _neq_ctx(lenet, eps=1e-9, samples=256)
    neq.cfg = NEqConfig(eps=1e-9, val_samples=256, max_spatial=8)
    ctx.eval_batch = 4
    neq.epoch_start(ctx)  # the record exists from here on
    record = sum(a.nbytes for a in neq.prev.values())
    tracemalloc.start()
    try:
        neq.epoch_start(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record > 2_000_000 and peak < 0.25 * record, (peak, record)
    neq.detach(ctx)


def test_serene_and_neq_train_together_once_neurons_freeze(lenet):
    """The pipeline's pair: once NEq freezes rows (epoch 3 on), SeReNe's eq. 2 pass goes through the
    partial-gradient layers every step, and training goes on."""
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    x, y = synthetic(96, seed=2)
    data = ClientData(x[:64], y[:64], x[64:], y[64:])
    cfg = TrainConfig(epochs=4, lr=0.02, batch_size=16)
    res = train_local(graph.compact(dense, mask), mask, graph, data, cfg, "serene+neq",
                      {"neq": {"eps": 0.05, "val_samples": 16, "mode": "stochastic", "stochastic_p": 0.5},
                       "serene": {"lmbda": 1e-3}}, None)
    m = res.metrics
    assert m["neq_partial_grad_layer_epochs"] > 0 and m["neq_frozen_frac"] > 0
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
