"""Centralized mode: the local trainer and its methods on one device over a whole data set.

:func:`run_centralized` trains one model from its name and trainer settings (the benchmarks call it);
:func:`run_centralized_experiment` does the same from an experiment config (``fedprune train
CONFIG``) and writes a results folder like a federated run's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fedprune.config import ExperimentConfig, dumps_toml, to_dict
from fedprune.data import dataset_info, load_dataset, train_val_split
from fedprune.memory import make_budget_schedule
from fedprune.methods import parse_methods
from fedprune.models import build_model, example_input
from fedprune.results import CONFIG_FILE, atomic_write_text, write_json, write_metrics
from fedprune.model_file import ModelArch, export_final_model
from fedprune.surgery import NeuronGraph, NeuronMask, count_params, format_neurons, neurons_per_layer
from fedprune.train.context import ClientData, TrainConfig, TrainContext, TrainResult
from fedprune.train.evaluation import evaluate
from fedprune.train.local import train_local
from fedprune.train.metrics import nonzero_params, params


def split_data(dataset: str, data_dir: str | None, seed: int, val_fraction: float, max_train: int,
               max_test: int, train=None, test=None):
    """(train, validation, test) subsets: seeded cap of the training set, then a seeded split.

    ``train``/``test`` are the full sets (loaded through the cache when either is None). The
    subsets are copies: the full training set is not needed afterwards."""
    if train is None or test is None:
        train, test = load_dataset(dataset, data_dir)
    idx = np.arange(len(train))
    if max_train and max_train < len(idx):
        idx = np.random.default_rng(seed).permutation(idx)[:max_train]
    tr_idx, va_idx = train_val_split(idx, val_fraction, seed=seed)
    if max_test and max_test < len(test):
        test = test.subset(np.arange(max_test))
    return train.subset(tr_idx), train.subset(va_idx), test


def _epoch_recorder(history: list, test, eval_test: bool, t0: float, log: Callable[[str], None] | None):
    """The ``epoch_callback`` that appends one row per epoch to ``history`` (and logs it)."""
    def on_epoch(epoch: int, ctx: TrainContext, m: dict) -> None:
        row = {"epoch": epoch + 1, **m, "batch": ctx.batch_size, "params_alive": params(ctx.model),
               "nonzero_params": nonzero_params(ctx.model),
               "neurons": format_neurons(neurons_per_layer(ctx.graph, ctx.mask)),
               "wall_seconds": time.perf_counter() - t0}
        if ctx.frozen_fraction:
            row["frozen_fraction"] = {k: round(v, 4) for k, v in ctx.frozen_fraction.items()}
        row["val_loss"], row["val_accuracy"] = evaluate(ctx.model, ctx.val_x, ctx.val_y, ctx.eval_batch)
        if eval_test:  # in chunks the budget holds: this pass runs inside the round
            row["test_loss"], row["test_accuracy"] = evaluate(ctx.model, test.x, test.y, ctx.eval_batch)
        history.append(row)
        if log is not None:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return on_epoch


def run_centralized(model_name: str, cfg: TrainConfig, methods: list[str] | str = "none",
                    method_cfgs: Mapping[str, Any] | None = None, budget_bytes: int | None = None,
                    epochs: int | None = None, *, dataset: str = "fashion-mnist", data_dir: str | None = None,
                    val_fraction: float = 0.1, max_train_samples: int = 0, max_test_samples: int = 0,
                    eval_test_every_epoch: bool = True, train=None, test=None, split=None,
                    log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], TrainResult]:
    """Train ``model_name`` centrally: one :func:`train_local` round over the whole training set.

    Splits the training set of ``dataset`` (capped at ``max_train_samples`` when > 0;
    ``val_fraction`` held out for validation, seeded by ``cfg.seed``), builds the model dense, trains
    ``epochs`` (default ``cfg.epochs``) epochs and evaluates on the test set (capped at
    ``max_test_samples``). ``train``/``test`` are pre-loaded TensorPairs, ``split`` a ready
    (train, validation, test) triple from :func:`split_data`; ``log`` receives one line per epoch.
    ``budget_bytes`` may be a callable: it is then called once the data, the model and its graph are
    resident, right before training (an ``auto`` budget measured then leaves them out). Returns a JSON-able dict (test loss/accuracy, neuron counts, parameter counts and
    compression, per-epoch ``history``, the trainer's ``metrics``) and the :class:`TrainResult`.
    """
    t0 = time.perf_counter()
    names = parse_methods(methods if isinstance(methods, str) else "+".join(methods) or "none")
    if epochs is not None:
        cfg = TrainConfig(**{**cfg.__dict__, "epochs": int(epochs)})
    cfg.validate()
    info = dataset_info(dataset)
    tr, va, test = split or split_data(dataset, data_dir, cfg.seed, val_fraction, max_train_samples,
                                       max_test_samples, train, test)
    dense = build_model(model_name, info.channels, info.num_classes, info.image_size, seed=cfg.seed)
    graph = NeuronGraph.from_model(dense, example_input(info.channels, info.image_size))
    mask = NeuronMask.full(graph)
    model, params_dense, neurons_dense = graph.compact(dense, mask), params(dense), neurons_per_layer(graph)
    del dense  # the compact copy is what trains
    if callable(budget_bytes):
        budget_bytes = budget_bytes()
    history: list[dict[str, Any]] = []
    res = train_local(model, mask, graph, ClientData(tr.x, tr.y, va.x, va.y), cfg, names,
                      method_cfgs, budget_bytes, None, 0, 1,
                      epoch_callback=_epoch_recorder(history, test, eval_test_every_epoch, t0, log))
    if eval_test_every_epoch and len(history) == cfg.epochs:  # the last row scored this very model
        test_loss, test_acc = history[-1]["test_loss"], history[-1]["test_accuracy"]
    else:
        test_loss, test_acc = evaluate(res.model, test.x, test.y)
    out = {
        "model": model_name, "dataset": dataset, "methods": "+".join(names) or "none",
        "epochs": cfg.epochs, "budget_bytes": int(budget_bytes or 0),
        "train_samples": len(tr), "val_samples": len(va), "test_samples": len(test),
        "test_loss": float(test_loss), "test_accuracy": float(test_acc),
        "neurons_dense": format_neurons(neurons_dense),
        "neurons": format_neurons(neurons_per_layer(graph, res.mask)),
        "params_dense": params_dense, "params_alive": params(res.model),
        "nonzero_params": nonzero_params(res.model),
        "compression": params_dense / max(1, params(res.model)),
        "nonzero_compression": params_dense / max(1, nonzero_params(res.model)),
        "does_not_fit": int(res.metrics.get("does_not_fit", 0)),
        "history": history, "metrics": res.metrics, "wall_seconds": time.perf_counter() - t0,
        "train_config": {**{k: v for k, v in cfg.__dict__.items() if k != "optimizer"},
                         "optimizer": dict(cfg.optimizer.__dict__)},
    }
    return out, res


def run_centralized_experiment(cfg: ExperimentConfig, out_dir: str | Path,
                               epochs: int | None = None) -> dict[str, Any]:
    """``fedprune train CONFIG``: :func:`run_centralized` for an experiment config, into a folder.

    Trains on the whole training set (``data.val-fraction`` held out, ``data.max-samples-per-client``
    caps the training samples when > 0) for ``epochs`` epochs (default: rounds x local epochs, the
    passes one federated client makes), under the config's budget at round 1 (``auto`` measures
    this machine). Writes ``config.toml``, ``metrics.jsonl`` (one row per epoch), the simplified
    model (``final_model.json``/``.safetensors``/``.onnx``) and ``summary.json``. Guarantee: ``summary["final_accuracy"]`` is
    the test accuracy of the exported (simplified) model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, dumps_toml(to_dict(cfg)))
    t0 = time.perf_counter()
    full = load_dataset(cfg.data.dataset, cfg.data.data_dir or None, cfg.data.download)
    split = split_data(cfg.data.dataset, None, cfg.run.seed, cfg.data.val_fraction,
                       cfg.data.max_samples_per_client, 0, *full)
    del full
    load_dataset.cache_clear()  # the split holds copies: the full training set is released
    test = split[2]
    spec = cfg.memory.schedule_spec()
    # measured once the data, the model and its graph are resident (``auto``: they are the baseline)
    budget = ((lambda: int(make_budget_schedule(spec, seed=cfg.run.seed, client_id=0).budget_bytes(1)))
              if spec else None)
    n_epochs = epochs if epochs is not None else cfg.run.num_rounds * cfg.train.local_epochs
    result, res = run_centralized(cfg.model.name, TrainConfig.from_section(cfg.train, cfg.run.seed),
                                  cfg.methods.names, cfg.methods.method_configs(), budget, n_epochs,
                                  dataset=cfg.data.dataset, split=split)
    del split
    budget = result["budget_bytes"] or None
    write_metrics(out, [{"round": h["epoch"], **h} for h in result["history"]])  # one row per epoch
    if result["does_not_fit"]:  # nothing trained: no model to export
        summary = {"name": cfg.run.name, "mode": "centralized", "model": cfg.model.name, "does_not_fit": 1,
                   "budget_bytes": int(budget or 0), "reason": res.metrics.get("does_not_fit_reason", "does not fit")}
        write_json(out / "summary.json", summary)
        return summary
    info = dataset_info(cfg.data.dataset)
    arch = ModelArch(cfg.model.name, info.channels, info.num_classes, info.image_size)
    final, _, _ = export_final_model(res.model.eval(), arch, out, base_mask=res.mask)
    # in chunks of the last training batch: an inference pass at a batch that trained within budget
    loss, acc = evaluate(final, test.x, test.y, int(res.metrics.get("batch_final") or 512))
    final_params = count_params(final)
    summary = {
        "name": cfg.run.name, "mode": "centralized", "model": cfg.model.name, "dataset": cfg.data.dataset,
        "methods": cfg.methods.enabled, "epochs": n_epochs, "budget_bytes": int(budget or 0),
        "final_accuracy": acc, "final_loss": loss, "trained_accuracy": result["test_accuracy"],
        "dense_params": result["params_dense"], "final_params": final_params,
        "nonzero_params": result["nonzero_params"],
        "compression": result["params_dense"] / max(1, final_params),
        "neurons_per_layer": result["neurons"], "dense_neurons_per_layer": result["neurons_dense"],
        "train_samples": result["train_samples"], "budget_violations": int(result["metrics"].get("violations", 0)),
        "does_not_fit": result["does_not_fit"], "wall_seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
        **{k: v for k, v in result["metrics"].items() if k.startswith(("physical_", "batch_"))},
    }
    write_json(out / "summary.json", summary)
    return summary
