"""``fedprune train CONFIG``: the experiment's trainer and methods on one device, no federation.

Reads the same experiment config as a federated run and trains one model on the whole training set
(``data.val-fraction`` held out for the methods' validation data, ``data.max-samples-per-client``
caps the training samples when > 0), for ``epochs`` epochs (default: rounds x local epochs, the
number of passes one federated client makes). The memory budget is the config's budget at round 1
(``auto`` measures this machine). The results folder gets ``config.toml``, ``metrics.jsonl`` (one
row per epoch), the simplified model (``final_model.json``/``.safetensors``/``.onnx``) and ``summary.json``, as a federated run's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fedprune.client_runtime import train_config
from fedprune.config import ExperimentConfig, dumps_toml, to_dict
from fedprune.data import dataset_info, load_dataset
from fedprune.memory import make_budget_schedule
from fedprune.results import CONFIG_FILE, atomic_write_text, write_json, write_metrics
from fedprune.model_file import ModelArch, export_final_model
from fedprune.surgery import count_params
from fedprune.training import evaluate, run_centralized as _run


def run_centralized(cfg: ExperimentConfig, out_dir: str | Path, epochs: int | None = None) -> dict[str, Any]:
    """Train centrally as described in the module docstring; returns the written summary.

    Guarantee: ``summary["final_accuracy"]`` is the test accuracy of the exported (simplified)
    model, which computes the trained compact model's function.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, dumps_toml(to_dict(cfg)))
    t0 = time.perf_counter()
    spec = cfg.memory.schedule_spec()
    budget = (int(make_budget_schedule(spec, seed=cfg.run.seed, client_id=0).budget_bytes(1))
              if spec else None)
    n_epochs = epochs if epochs is not None else cfg.run.num_rounds * cfg.train.local_epochs
    result, res = _run(cfg.model.name, train_config(cfg), cfg.methods.names, cfg.methods.method_configs(),
                       budget, n_epochs, dataset=cfg.data.dataset, data_dir=cfg.data.data_dir or None,
                       val_fraction=cfg.data.val_fraction, max_train_samples=cfg.data.max_samples_per_client)
    write_metrics(out, [{"round": h["epoch"], **h} for h in result["history"]])  # one row per epoch
    info = dataset_info(cfg.data.dataset)
    arch = ModelArch(cfg.model.name, info.channels, info.num_classes, info.image_size)
    final, _, _ = export_final_model(res.model.eval(), arch, out, base_mask=res.mask)
    _, test = load_dataset(cfg.data.dataset, cfg.data.data_dir or None, cfg.data.download)
    loss, acc = evaluate(final, test.x, test.y)
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
    }
    write_json(out / "summary.json", summary)
    return summary
