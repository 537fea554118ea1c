"""The baselines: which coordinates each tier trains, how they are averaged, and their budget rules."""

import numpy as np
import pytest
from support import synthetic_client_data

from fedprune.aggregation import update_global_mask
from fedprune.config import config_from_dict
from fedprune.feasibility import check_budgets
from fedprune.fleet_width import small_model_width, weakest_budget_bytes
from fedprune.global_model import ClientUpdate, GlobalModel, effective_mask_policy, state_to_numpy
from fedprune.memory import estimate_training_memory
from fedprune.methods.submodel import trains_at_batch, window_mask
from fedprune.train import TrainConfig, train_local

CFG = TrainConfig(epochs=1, batch_size=16, min_batch=4, max_batch=64)


@pytest.fixture(scope="module")
def data():
    return synthetic_client_data(96)


def need(graph, ratio, batch=16):
    """Predicted training peak of the width-``ratio`` LeNet at ``batch`` (the budget rule's number)."""
    model = graph.build_compact(window_mask(graph, graph.full_mask(), ratio))
    return estimate_training_memory(model, batch, (1, 28, 28), CFG.optimizer).total_bytes


def budget_between(graph, fits_ratio, not_ratio):
    """A budget in which width ``fits_ratio`` trains at batch 16 and width ``not_ratio`` does not."""
    lo, hi = need(graph, fits_ratio) / 0.95, need(graph, not_ratio) / 0.95
    assert lo < hi
    return int((lo + hi) / 2)


def train(gm_or_graph, data, methods, budget, round_idx=0, method_cfgs=None):
    graph = gm_or_graph.graph if isinstance(gm_or_graph, GlobalModel) else gm_or_graph
    mask = gm_or_graph.mask if isinstance(gm_or_graph, GlobalModel) else graph.full_mask()
    model = graph.build_compact(mask)
    if isinstance(gm_or_graph, GlobalModel):
        model.load_state_dict(gm_or_graph.compact_model().state_dict())
    return train_local(model, mask, graph, data, CFG, methods, method_cfgs, budget,
                       round_idx=round_idx, num_rounds=30)


def test_window_mask_first_channels_and_rolling_wrap(lenet):
    _, graph = lenet
    full = graph.full_mask()
    half = window_mask(graph, full, 0.5)
    assert np.array_equal(np.flatnonzero(half["conv1"]), np.arange(10))  # conv1 has 20 channels
    assert np.array_equal(np.flatnonzero(half["fc1"]), np.arange(250))
    rolled = window_mask(graph, full, 0.25, offset=18)  # 5 of 20, from 18 wrapping to 0..2
    assert sorted(np.flatnonzero(rolled["conv1"])) == [0, 1, 2, 18, 19]


def test_heterofl_tier_is_largest_width_that_fits_and_trains_first_channels(lenet, data):
    _, graph = lenet
    assert trains_at_batch(graph, graph.full_mask(), None, (1, 28, 28), CFG.optimizer, 16)
    for fits, too_big in ((0.5, 1.0), (0.25, 0.5), (0.0625, 0.125)):
        res = train(graph, data, "heterofl", budget_between(graph, fits, too_big))
        assert res.metrics["heterofl_width"] == fits
        assert res.mask == window_mask(graph, graph.full_mask(), fits)
        assert res.metrics["batch_sizes"] == "16"  # a fixed batch, no fitting
    res = train(graph, data, "heterofl", int(need(graph, 0.0625) * 0.5))
    assert res.metrics["does_not_fit"] == 1 and res.num_examples == 0


@pytest.mark.parametrize("method, offset", [("heterofl", 0), ("fedrolex", 7)])
def test_width_tier_shrinks_when_the_trainers_own_fit_finds_no_room(lenet, data, monkeypatch, method, offset):
    """The tier is chosen by the tensor estimate; when the trainer's fit (the budget as resident
    memory counts it) has no room for the batch, the next smaller width is tried, not a skip."""
    from fedprune.surgery.accounting import count_params
    from fedprune.train.budgeting import BatchBudget

    _, graph = lenet
    quarter = count_params(graph.build_compact(window_mask(graph, graph.full_mask(), 0.25)))
    fit = BatchBudget.fit_batch
    tried = []

    def fit_at_quarter_or_less(self, share=1.0):  # a process whose resident memory leaves less room
        tried.append(count_params(self.ctx.model))
        return fit(self, share) if tried[-1] <= quarter else 0

    monkeypatch.setattr(BatchBudget, "fit_batch", fit_at_quarter_or_less)
    res = train(graph, data, method, budget_between(graph, 0.5, 1.0), round_idx=offset)
    assert res.metrics[f"{method}_width"] == 0.25 and res.metrics["does_not_fit"] == 0
    assert res.mask == window_mask(graph, graph.full_mask(), 0.25, offset)
    assert tried[0] > quarter >= tried[1]  # the 0.5 window, then the 0.25 one
    assert res.metrics["batch_sizes"] == "16" and res.num_examples > 0

    monkeypatch.setattr(BatchBudget, "fit_batch", lambda self, share=1.0: 0)  # nothing fits
    res = train(graph, data, method, budget_between(graph, 0.5, 1.0), round_idx=offset)
    assert res.metrics["does_not_fit"] == 1 and res.num_examples == 0


def test_heterofl_tiers_averaged_coordinatewise_and_union_kept(data):
    gm = GlobalModel(config_from_dict({"model": {"name": "lenet5"}}))
    graph = gm.graph
    big = train(gm, data, "heterofl", None)  # no budget: width 1
    small = train(gm, data, "heterofl", budget_between(graph, 0.5, 1.0))
    assert big.metrics["heterofl_width"] == 1.0 and small.metrics["heterofl_width"] == 0.5
    updates = [ClientUpdate(str(i), state_to_numpy(r.model.state_dict()), r.mask.to_arrays(), r.num_examples)
               for i, r in enumerate((big, small))]
    a = graph.expand(big.model.state_dict(), big.mask)["fc1.weight"].numpy()
    b = graph.expand(small.model.state_dict(), small.mask)["fc1.weight"].numpy()
    gm.aggregate(updates)
    w = gm.dense["fc1.weight"]
    # fc1 rows 0..249 x inputs of conv2 channels 0..24 (columns 0..399): both tiers, equal weights
    np.testing.assert_allclose(w[:250, :400], ((a + b) / 2)[:250, :400], rtol=1e-5, atol=1e-6)
    # outside the half width only the full-width tier trained: its values exactly
    np.testing.assert_allclose(w[250:], a[250:], rtol=1e-6)
    np.testing.assert_allclose(w[:250, 400:], a[:250, 400:], rtol=1e-6)
    assert gm.mask == graph.full_mask()  # union of the tiers' masks: nothing pruned


def test_heterofl_without_full_width_client_global_model_is_widest_tier(lenet):
    _, graph = lenet
    full = graph.full_mask()
    masks = [window_mask(graph, full, r).to_arrays() for r in (0.5, 0.25)]
    new = update_global_mask(full.to_arrays(), masks, [1, 1], "unanimous")
    assert all(np.array_equal(new[k], masks[0][k]) for k in new)


def test_fedrolex_window_rolls_each_round_and_global_mask_keeps_every_neuron(lenet, data):
    _, graph = lenet
    budget = budget_between(graph, 0.25, 0.5)
    for rnd in (0, 7, 19):
        res = train(graph, data, "fedrolex", budget, round_idx=rnd)
        assert res.metrics["fedrolex_width"] == 0.25
        want = sorted((rnd + np.arange(5)) % 20)
        assert sorted(np.flatnonzero(res.mask["conv1"])) == want
    cfg = config_from_dict({"model": {"name": "lenet5"}, "methods": {"enabled": "fedrolex"}})
    assert effective_mask_policy(cfg) == "keep"
    gm = GlobalModel(cfg)
    window = window_mask(graph, gm.mask, 0.25, offset=3)
    compact = state_to_numpy(graph.compact(gm.dense_model(), window).state_dict())
    before = gm.dense["conv1.weight"].copy()
    gm.aggregate([ClientUpdate("0", {k: v + 1 for k, v in compact.items()}, window.to_arrays(), 10)])
    assert gm.mask == graph.full_mask()
    changed = np.flatnonzero(np.any(gm.dense["conv1.weight"] != before, axis=(1, 2, 3)))
    assert list(changed) == [3, 4, 5, 6, 7]
    for policy in ("quorum", "consensus"):
        with pytest.raises(ValueError, match=policy):
            effective_mask_policy(config_from_dict({"methods": {"enabled": "fedrolex"},
                                                    "strategy": {"mask-policy": policy}}))


def test_fedavg_drop_skips_when_dense_does_not_fit_and_never_shrinks_batch(lenet, data):
    _, graph = lenet
    dense_need = need(graph, 1.0)
    tight = int((need(graph, 1.0, batch=4) + dense_need) / 2 / 0.95)  # batch 4 fits, 16 does not
    skipped = train(graph, data, "fedavg-drop", tight)
    assert skipped.metrics["does_not_fit"] == 1 and skipped.num_examples == 0
    plain = train(graph, data, "none", tight)  # fedprune's trainer shrinks the batch instead
    assert plain.num_examples > 0 and int(plain.metrics["batch_sizes"].split(",")[0]) < 16
    roomy = train(graph, data, "fedavg-drop", int(dense_need * 4))  # would fit batch 64: stays 16
    assert roomy.metrics["batch_sizes"] == "16" and roomy.mask == graph.full_mask()


def test_fedavg_ignores_the_budget(lenet, data):
    _, graph = lenet
    res = train(graph, data, "fedavg", 1000)
    assert res.num_examples > 0 and res.metrics["violations"] == 0
    assert res.metrics["batch_sizes"] == "16" and res.mask == graph.full_mask()


def fleet_cfg(methods, scale=0.03):
    return config_from_dict({
        "model": {"name": "lenet5"}, "methods": {"enabled": methods}, "memory": {"budget": "constant"},
        "train": {"batch-size": 16, "min-batch": 4, "max-batch": 64},
        "fleet": {"num-clients": 10, "devices": "pi-zero-2w:4, pi3b:3, pi4-2gb:2, pi4-4gb:1",
                  "budget-scale": scale}})


def test_small_model_width_is_the_largest_that_fits_the_weakest_budget():
    cfg = fleet_cfg("small-model", scale=0.003)
    width = small_model_width(cfg)
    assert 0 < width < 1
    gm = GlobalModel(cfg)
    budget = weakest_budget_bytes(cfg)
    fits = lambda w: trains_at_batch(gm.graph, window_mask(gm.graph, gm.mask, w), budget, (1, 28, 28),
                                     CFG.optimizer, 16)
    assert fits(width) and not fits(width + 1 / 256)
    # the run's auto width leaves the configured headroom of that budget to the client's process
    from fedprune.fleet_width import resolve_method_configs

    resolved = resolve_method_configs(cfg)["small_model"]
    assert resolved.headroom == 0.1 and resolved.width == small_model_width(cfg, 0.1) < width
    lower = int(budget * 0.9)
    assert trains_at_batch(gm.graph, window_mask(gm.graph, gm.mask, resolved.width), lower, (1, 28, 28),
                           CFG.optimizer, 16)
    assert not trains_at_batch(gm.graph, window_mask(gm.graph, gm.mask, resolved.width + 1 / 256), lower,
                               (1, 28, 28), CFG.optimizer, 16)
    with pytest.raises(ValueError, match="headroom"):
        resolved.__class__(headroom=1.0).validate()


def test_budget_check_accepts_baselines_whose_dense_model_does_not_fit():
    from fedprune.config import ConfigError

    with pytest.raises(ConfigError):
        check_budgets(fleet_cfg("none", scale=0.001))
    for name in ("fedavg", "fedavg-drop", "small-model", "heterofl", "fedrolex"):
        check_budgets(fleet_cfg(name, scale=0.001))


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "resnet8", "vgg"])
@pytest.mark.parametrize("width", [0.5, 0.3, 0.0625])
def test_first_channels_subnetwork_is_the_width_scaled_zoo_model(name, width):
    from fedprune.models import build_model, example_input
    from fedprune.surgery import NeuronGraph

    dense = build_model(name, seed=0)
    graph = NeuronGraph.from_model(dense, example_input())
    sub = graph.build_compact(window_mask(graph, graph.full_mask(), width))
    small = build_model(name, seed=0, width=width)
    assert {k: tuple(v.shape) for k, v in sub.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in small.state_dict().items()}


def test_width_multiplier_rejects_bad_values():
    from fedprune.models import build_model

    with pytest.raises(ValueError, match="width"):
        build_model("lenet5", width=0)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", in_channels=3, image_size=32, width=0.5)
