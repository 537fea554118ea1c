"""One client's local round, without Flower: data partition, model rebuild, budget, training.

``ClientRuntime`` is built once per (config, partition) in a process and reused across rounds: it
holds the client's data split, the dense reference graph and the budget schedule. ``train_round``
takes what the server sent (compact tensors + global mask) and returns what the client sends back.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np

from fedprune.client_state import load_client_state, save_client_state
from fedprune.config import ExperimentConfig
from fedprune.faults import corrupt_reply, describe, draw_fault, fail_before_training
from fedprune.fleet_width import resolve_method_configs
from fedprune.data import dataset_info, load_dataset, partition_indices, train_val_split
from fedprune.global_model import numpy_to_state, state_to_numpy
from fedprune.memory import BudgetSpec, make_budget_schedule
from fedprune.methods import build_methods, prune_to_fit_floor
from fedprune.models import build_model, example_input
from fedprune.prune_to_fit import prune_to_fit
from fedprune.surgery import NeuronGraph, NeuronMask
from fedprune.train import ClientData, TrainConfig, train_local
from fedprune.train.budgeting import ReferenceStep


@dataclass
class ClientReply:
    """What goes back to the server after a local round."""

    arrays: dict[str, np.ndarray]  # compact tensors of the trained model
    mask: dict[str, np.ndarray]  # dense-relative neuron mask (subset of the one received)
    num_examples: int  # 0 when the client could not train (does not fit)
    metrics: dict[str, Any]
    method_state: dict[str, Any]


@lru_cache(maxsize=8)
def _partitions(dataset: str, data_dir: str, download: bool, n: int, kind: str, alpha: float,
                shards: int, seed: int) -> list[np.ndarray]:
    train, _ = load_dataset(dataset, data_dir or None, download)
    return partition_indices(train.y.numpy(), n, kind, alpha=alpha, shards_per_client=shards, seed=seed)


def client_data(cfg: ExperimentConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The client's own train/validation split of its partition (seeded, deterministic)."""
    d = cfg.data
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} out of range [0, {num_partitions})")
    parts = _partitions(d.dataset, d.data_dir, d.download, num_partitions, d.partitioner, d.alpha,
                        d.shards_per_client, cfg.run.seed)
    idx = parts[partition_id]
    if d.max_samples_per_client:
        idx = np.random.default_rng(cfg.run.seed + partition_id).permutation(idx)[: d.max_samples_per_client]
    tr, va = train_val_split(idx, d.val_fraction, seed=cfg.run.seed * 1000 + partition_id)
    train, _ = load_dataset(d.dataset, d.data_dir or None, d.download)
    a, b = train.subset(tr), train.subset(va)
    return ClientData(a.x, a.y, b.x, b.y)


class ClientRuntime:
    """A client's fixed parts: its data, the reference graph, its methods and its budget schedule."""

    def __init__(self, cfg: ExperimentConfig, partition_id: int, num_partitions: int,
                 budget_spec: BudgetSpec | None = None, methods: list[str] | None = None):
        self.cfg = cfg
        self.partition_id = partition_id
        info = dataset_info(cfg.data.dataset)
        self.input_shape = info.input_shape
        dense = build_model(cfg.model.name, info.channels, info.num_classes, info.image_size,
                            seed=cfg.run.seed)
        self.graph = NeuronGraph.from_model(dense, example_input(info.channels, info.image_size))
        self.data = client_data(cfg, partition_id, num_partitions)
        if budget_spec is None or methods is None:  # the client's device in the fleet decides the rest
            from fedprune.fleet import client_profile

            try:
                profile = client_profile(cfg, partition_id)
            except ValueError:  # a real device's partition outside the fleet, with its own budget
                if budget_spec is None:
                    raise
                profile = None
            if budget_spec is None:
                budget_spec = profile.budget_spec
            if methods is None:
                methods = profile.methods if profile is not None else cfg.methods.names
        spec = budget_spec if budget_spec is not None else cfg.memory.schedule_spec()
        self.schedule = (make_budget_schedule(spec, seed=cfg.run.seed, client_id=partition_id)
                         if spec else None)
        self.methods = methods if methods is not None else cfg.methods.names
        self.train_cfg = TrainConfig.from_section(cfg.train, cfg.run.seed)
        self.method_cfgs = resolve_method_configs(cfg)  # an auto small-model width resolved from the fleet
        methods_now = build_methods(self.methods, self.method_cfgs)
        self.prune_floor = prune_to_fit_floor(methods_now)
        self.step_memory = tuple(a for m in methods_now
                                 if (a := m.step_memory(SimpleNamespace(model=None, sites=None))) is not None)

    def budget_bytes(self, server_round: int) -> int | None:
        """This client's memory budget for a round (``None``: unbounded)."""
        return None if self.schedule is None else int(self.schedule.budget_bytes(server_round))

    def state_dir(self) -> Path | None:
        """The run folder, when it is on this machine (simulation): method state is kept there too."""
        out = self.cfg.run.out_dir
        if out and (Path(out) / "config.toml").is_file():
            return Path(out)
        return None

    def _train_fitting(self, model, mask, cfg, budget, method_state, server_round):
        """``train_local``; when the model does not fit and a method may prune to fit, prune it until
        its training step (with the methods' extra passes) fits a share of the budget (the methods'
        kept tensors need the rest) and try again, with less each time. Returns (result, neurons
        pruned to fit)."""
        pre_pruned, share = 0, 1.0
        for _ in range(8):
            result = train_local(model, mask, self.graph, self.data, cfg, self.methods,
                                 self.method_cfgs, budget, method_state,
                                 round_idx=server_round - 1, num_rounds=self.cfg.run.num_rounds)
            if not (result.metrics.get("does_not_fit") and budget is not None and self.prune_floor is not None):
                break
            fitted = prune_to_fit(model, mask, self.graph, int(budget * share), self.input_shape,
                                  cfg.optimizer, cfg.min_batch, self.cfg.memory.margin, self.prune_floor,
                                  step_fn=ReferenceStep(self.step_memory))
            share *= 0.8
            if fitted is None:
                break
            pre_pruned += int(mask.num_alive() - fitted[1].num_alive())
            model, mask = fitted
        return result, pre_pruned

    def train_round(self, arrays: Mapping[str, np.ndarray], mask_arrays: Mapping[str, np.ndarray],
                    server_round: int, method_state: dict[str, Any] | None) -> ClientReply:
        """Rebuild the compact model the server sent, train it locally, and package the reply.

        Injected faults (``[faults]``) strike here: before training (raise, oom, timeout) or in the
        reply (nan, bad-mask, mismatch). With the run folder on this machine, the method state of the
        client's previous round is read from and written to it, so a resumed run continues exactly.
        """
        t0 = time.perf_counter()
        fault = draw_fault(self.cfg, self.partition_id, server_round)
        fail_before_training(fault, self.cfg)
        state_dir = self.state_dir()
        if state_dir is not None:
            method_state = load_client_state(state_dir, self.partition_id, server_round) or method_state
        mask = NeuronMask.from_arrays(self.graph, dict(mask_arrays))
        model = self.graph.build_compact(mask)
        model.load_state_dict(numpy_to_state(arrays))
        budget = self.budget_bytes(server_round)
        # a seed per (run, client, round): a resumed run trains exactly like an uninterrupted one
        seed = (self.cfg.run.seed * 1_000_003 + self.partition_id * 1009 + server_round) % 2**31
        cfg = dataclasses.replace(self.train_cfg, seed=seed)
        result, pre_pruned = self._train_fitting(model, mask, cfg, budget, method_state, server_round)
        if state_dir is not None and result.method_state:
            save_client_state(state_dir, self.partition_id, server_round, result.method_state)
        metrics = dict(result.metrics)
        metrics["client_wall_seconds"] = time.perf_counter() - t0
        metrics["partition_id"] = self.partition_id
        metrics["neurons_pruned_to_fit"] = pre_pruned
        metrics.update(describe(fault))
        out_arrays, out_mask = corrupt_reply(fault, state_to_numpy(result.model.state_dict()),
                                             result.mask.to_arrays())
        return ClientReply(out_arrays, out_mask, int(result.num_examples), metrics, result.method_state)


@lru_cache(maxsize=4)
def _runtime_cached(cfg_key: str, partition_id: int, num_partitions: int,
                    budget_key: str = "null") -> ClientRuntime:
    from fedprune.config import config_from_dict
    import json

    spec = json.loads(budget_key)
    return ClientRuntime(config_from_dict(json.loads(cfg_key)), partition_id, num_partitions,
                         budget_spec=None if spec is None else BudgetSpec.from_dict(spec))


def get_runtime(cfg: ExperimentConfig, partition_id: int, num_partitions: int,
                budget_spec: BudgetSpec | None = None) -> ClientRuntime:
    """A process-wide cached ``ClientRuntime`` (data and graph are built once per client).

    ``budget_spec`` overrides the budget the run config/fleet gives this partition (a real device's
    ``budget-mb`` from its node config); ``None`` keeps the run config's.
    """
    import json

    from fedprune.config import to_dict

    return _runtime_cached(json.dumps(to_dict(cfg), sort_keys=True), partition_id, num_partitions,
                           json.dumps(None if budget_spec is None else budget_spec.to_dict(), sort_keys=True))
