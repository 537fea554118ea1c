"""The small-model baseline's width, resolved once per run from the fleet's weakest budget.

``methods.small_model.width = 0`` (auto) means: the largest width ``w`` (to 1/256) such that the
model made of the first ``ceil(w * n)`` neurons of every group is predicted to train at
``train.batch-size`` within the lowest budget of any client over the run's rounds, less
``methods.small_model.headroom`` of it (room for what the client's process holds besides the step).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedprune.config import ExperimentConfig
from fedprune.data import dataset_info
from fedprune.memory import OptimizerSpec, make_budget_schedule
from fedprune.methods.submodel import trains_at_batch, window_mask
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph


def weakest_budget_bytes(cfg: ExperimentConfig) -> int | None:
    """The lowest budget of any client of the fleet over rounds ``1..num_rounds`` (``None``: none)."""
    from fedprune.fleet import client_profile

    lowest = None
    for pid in range(cfg.fleet.num_clients):
        spec = client_profile(cfg, pid).budget_spec
        if spec is None or spec.kind == "auto":
            continue
        schedule = make_budget_schedule(spec, seed=cfg.run.seed, client_id=pid)
        low = min(schedule.budget_bytes(r) for r in range(1, cfg.run.num_rounds + 1))
        lowest = low if lowest is None else min(lowest, low)
    return None if lowest is None else int(lowest)


def small_model_width(cfg: ExperimentConfig, headroom: float = 0.0) -> float:
    """The largest width (multiple of 1/256, at least 1/256) that trains within the weakest budget
    less ``headroom`` of it at ``train.batch-size``; 1.0 without budgets."""
    budget = weakest_budget_bytes(cfg)
    if budget is None:
        return 1.0
    budget = int(budget * (1.0 - float(headroom)))
    info = dataset_info(cfg.data.dataset)
    dense = build_model(cfg.model.name, info.channels, info.num_classes, info.image_size, seed=0)
    graph = NeuronGraph.from_model(dense, example_input(info.channels, info.image_size))
    full = graph.full_mask()
    t = cfg.train
    opt = OptimizerSpec(name=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay)

    def fits(steps: int) -> bool:
        return trains_at_batch(graph, window_mask(graph, full, steps / 256), budget, info.input_shape,
                               opt, t.batch_size)

    if fits(256):
        return 1.0
    lo, hi = 1, 256  # the smallest width is the floor; hi does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo / 256


def resolve_method_configs(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg.methods.method_configs()`` with an auto (0) small-model width resolved from the fleet."""
    cfgs = dict(cfg.methods.method_configs())
    sm = cfgs.get("small_model")
    if sm is not None and sm.width == 0:
        cfgs["small_model"] = dataclasses.replace(sm, width=small_model_width(cfg, sm.headroom))
    return cfgs
