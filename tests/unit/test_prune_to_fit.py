"""Methods that may prune to fit: the client runtime prunes before training, the feasibility check
counts on it; both ask the methods (``Method.prune_to_fit_floor``), not a method name."""

from __future__ import annotations

import pytest

from fedprune.client_runtime import ClientRuntime
from fedprune.config import ConfigError, config_from_dict
from fedprune.feasibility import check_budgets
from fedprune.global_model import state_to_numpy
from fedprune.memory import BudgetSpec
from fedprune.methods import build_methods, prune_to_fit_floor


def small_cfg(methods: str, budget_mb: float, min_neurons: int = 2):
    return config_from_dict({
        "run": {"num-rounds": 2}, "methods": {"enabled": methods, "dynhp": {"min-neurons": min_neurons}},
        "memory": {"budget": "constant", "budget-mb": budget_mb},
        "data": {"max-samples-per-client": 96}, "fleet": {"num-clients": 2, "min-clients": 1},
    })


def test_only_methods_that_say_so_may_prune_to_fit():
    assert prune_to_fit_floor(build_methods("dynhp", {"dynhp": {"min_neurons": 3}})) == 3
    assert prune_to_fit_floor(build_methods("serene+neq+lobster")) is None
    assert prune_to_fit_floor([]) is None


def test_feasibility_counts_on_pruning_only_when_a_method_may_prune():
    with pytest.raises(ConfigError, match="dense; enable a method that may prune to fit"):
        check_budgets(small_cfg("neq", 1.0))
    check_budgets(small_cfg("dynhp+neq", 1.0))  # pruned to 2 neurons per layer, LeNet-5 fits 1 MB
    with pytest.raises(ConfigError, match="pruned to 2 neurons per layer"):
        check_budgets(small_cfg("dynhp", 0.005))


def test_client_prunes_to_fit_before_training():
    cfg = small_cfg("dynhp", 3.0)
    runtime = ClientRuntime(cfg, 0, 2)
    mask = runtime.graph.full_mask()
    arrays = state_to_numpy(runtime.graph.build_compact(mask).state_dict())
    reply = runtime.train_round(arrays, mask.to_arrays(), 1, None)
    m = reply.metrics
    assert m["does_not_fit"] == 0 and m["neurons_pruned_to_fit"] > 0 and reply.num_examples > 0
    plain = ClientRuntime(cfg, 0, 2, budget_spec=BudgetSpec("constant", mb=3.0), methods=["neq"])
    reply = plain.train_round(arrays, mask.to_arrays(), 1, None)
    assert reply.metrics["does_not_fit"] == 1 and reply.metrics["neurons_pruned_to_fit"] == 0


def test_pruning_to_fit_counts_the_methods_extra_passes():
    """SeReNe's eq. 2 pass needs about twice a plain step's memory: pruned to fit a plain step only,
    the client would still not fit; pruned to fit the step it really runs, it trains."""
    cfg = small_cfg("serene+dynhp", 3.0)
    runtime = ClientRuntime(cfg, 0, 2)
    mask = runtime.graph.full_mask()
    arrays = state_to_numpy(runtime.graph.build_compact(mask).state_dict())
    reply = runtime.train_round(arrays, mask.to_arrays(), 1, None)
    assert reply.metrics["does_not_fit"] == 0 and reply.metrics["neurons_pruned_to_fit"] > 0
    assert reply.metrics["measured_peak_bytes"] <= 3 * 2**20
