"""Can every client train at all? Checked from the config, before Ray or any data is touched.

A client can train when the smallest model it may reach fits its smallest budget at batch 1:
the dense model when none of its methods may prune to fit, else the model pruned down to the
methods' floor (``Method.prune_to_fit_floor``: DynHP's ``min-neurons``) per group. Clients running
a baseline that decides itself what to train under its budget (``Method.handles_budget``) are not
checked: they train a sub-model, skip the round, or have no limit.
``check_budgets`` raises ``ConfigError`` naming the client, its budget and what it would need.
"""

from __future__ import annotations

import numpy as np

from fedprune.config import ConfigError, ExperimentConfig
from fedprune.data import dataset_info
from fedprune.memory import OptimizerSpec, estimate_training_memory, make_budget_schedule
from fedprune.methods import build_methods, prune_to_fit_floor
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask

MB = 1024 * 1024


def minimal_mask(graph: NeuronGraph, keep: int) -> NeuronMask:
    """Every group cut to its first ``keep`` neurons (at least one)."""
    arrays = {}
    for g in graph.groups:
        alive = np.zeros(g.size, dtype=bool)
        alive[: max(1, min(keep, g.size))] = True
        arrays[g.name] = alive
    return NeuronMask.from_arrays(graph, arrays)


def smallest_training_need(cfg: ExperimentConfig, floor: int | None) -> int:
    """Predicted peak bytes of one training step at batch 1 of the smallest reachable model: the
    dense one (``floor`` None) or the one with ``floor`` neurons per group."""
    info = dataset_info(cfg.data.dataset)
    dense = build_model(cfg.model.name, info.channels, info.num_classes, info.image_size, seed=0)
    model = dense
    if floor is not None:
        graph = NeuronGraph.from_model(dense, example_input(info.channels, info.image_size))
        model = graph.build_compact(minimal_mask(graph, floor))
    spec = OptimizerSpec(name=cfg.train.optimizer, momentum=cfg.train.momentum,
                         weight_decay=cfg.train.weight_decay)
    return int(estimate_training_memory(model, 1, info.input_shape, spec).total_bytes)


def check_budgets(cfg: ExperimentConfig) -> None:
    """Raise ``ConfigError`` if some client's lowest budget cannot train even at batch 1."""
    from fedprune.fleet import client_profile

    needs: dict[int | None, int] = {}
    for pid in range(cfg.fleet.num_clients):
        profile = client_profile(cfg, pid)
        spec = profile.budget_spec
        if spec is None or spec.kind == "auto":
            continue
        schedule = make_budget_schedule(spec, seed=cfg.run.seed, client_id=pid)
        lowest = min(schedule.budget_bytes(r) for r in range(1, cfg.run.num_rounds + 1))
        built = build_methods(profile.methods, cfg.methods.method_configs())
        if any(m.handles_budget() for m in built):  # a baseline: sub-model, skip or no limit
            continue
        floor = prune_to_fit_floor(built)
        if floor not in needs:
            needs[floor] = smallest_training_need(cfg, floor)
        need = needs[floor]
        if lowest * (1 - cfg.memory.margin) < need:
            how = (f"pruned to {floor} neurons per layer" if floor is not None
                   else "dense; enable a method that may prune to fit, e.g. dynhp")
            raise ConfigError(
                f"memory budget of client {pid} ({profile.device}) falls to {lowest / MB:.2f} MB, but "
                f"{cfg.model.name} needs {need / MB:.2f} MB to train at batch 1 ({how}, margin "
                f"{cfg.memory.margin:.0%}); raise memory.budget-mb / fleet budgets")
