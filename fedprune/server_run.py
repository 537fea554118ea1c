"""A federated run's server-side bookkeeping, without Flower: results folder, rounds, final model.

``ServerRun`` owns the results folder of one run. It writes the resolved config at the start, one
metrics row per completed round, and at the end performs the final simplification of the global
model (every dead neuron removed, constants folded), checks that the compact model scores what the
masked global model scores, exports the model file ``final_model.json``/``.safetensors`` and ``final_model.onnx`` and writes ``summary.json``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fedprune.config import ExperimentConfig, dumps_toml, to_dict
from fedprune.data import load_dataset
from fedprune.global_model import GlobalModel
from fedprune.results import CONFIG_FILE, atomic_write_text, read_metrics, write_json, write_metrics
from fedprune.model_file import ModelArch, export_final_model
from fedprune.run_lock import WRITER_LOCK, RunLock
from fedprune.surgery import count_flops, count_params, format_neurons, neurons_per_layer
from fedprune.train import evaluate

# client metrics averaged over the clients of a round (when present)
MEAN_KEYS = ("train_loss", "train_accuracy", "val_accuracy", "budget_bytes", "predicted_peak_bytes",
             "measured_peak_bytes", "utilization", "bprop_flops_saved_frac", "params_alive",
             "batch_final")
SUM_KEYS = ("violations", "oom_events", "does_not_fit")


def resolve_out_dir(cfg: ExperimentConfig) -> Path:
    """The run's results folder: ``run.out-dir`` if set, else ``results/<run.name>``."""
    return Path(cfg.run.out_dir or Path("results") / cfg.run.name).expanduser().resolve()


def summarize_clients(clients: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Round-level aggregates of the per-client metrics (means and sums, by key)."""
    out: dict[str, float] = {}
    for key in MEAN_KEYS:
        vals = [float(c[key]) for c in clients if isinstance(c.get(key), (int, float))]
        if vals:
            out[f"clients_mean_{key}"] = float(np.mean(vals))
    for key in SUM_KEYS:
        vals = [float(c[key]) for c in clients if isinstance(c.get(key), (int, float))]
        if vals:
            out[f"clients_total_{key}"] = float(np.sum(vals))
    return out


def rounds_aggregated(rows: Sequence[Mapping[str, Any]]) -> int:
    """How many rounds changed the global model (at least one client's update was aggregated)."""
    return int(sum(1 for r in rows if float(r.get("aggregated") or 0) > 0))


class ServerRun:
    """Results folder + evaluation + final simplification for one federated run.

    Holds the folder's writer lock from construction until the process exits (``RunFolderBusy``
    if another process writes to the same folder).
    """

    def __init__(self, cfg: ExperimentConfig, out_dir: str | Path | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir else resolve_out_dir(cfg)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.out_dir, WRITER_LOCK).acquire()  # one writer; held until exit
        _, self.test = load_dataset(cfg.data.dataset, cfg.data.data_dir or None, cfg.data.download)
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self._last_eval: tuple[Any, float, float] | None = None  # (compact model, loss, accuracy)

    def start(self, resume_rows: Sequence[Mapping[str, Any]] = ()) -> None:
        """Write the resolved config; on resume keep the rounds already recorded."""
        atomic_write_text(self.out_dir / CONFIG_FILE, dumps_toml(to_dict(self.cfg)))
        self.rows = [dict(r) for r in resume_rows]
        write_metrics(self.out_dir, self.rows)

    def previous_rows(self) -> list[dict[str, Any]]:
        """Rounds already in this folder's ``metrics.jsonl``."""
        return read_metrics(self.out_dir)

    def evaluate(self, gm: GlobalModel) -> tuple[float, float]:
        """Test loss and accuracy of the global (masked = compact) model.

        Remembered for the model it scored, so ``finalize`` does not score the same global again.
        """
        model = gm.compact_model()
        last = self._last_eval
        if last is not None and last[0] is model:
            return last[1], last[2]
        loss, acc = evaluate(model, self.test.x, self.test.y)
        self._last_eval = (model, loss, acc)
        return loss, acc

    def record_round(self, row: dict[str, Any]) -> None:
        """Append one completed round to ``metrics.jsonl`` (atomic rewrite)."""
        row = dict(row)
        row.setdefault("wall_seconds", time.perf_counter() - self.t0)
        self.rows.append(row)
        write_metrics(self.out_dir, self.rows)

    def finalize(self, gm: GlobalModel, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Final simplification, export, and ``summary.json``; returns the summary."""
        masked = gm.graph.zero_pruned(gm.dense_model(), gm.mask).eval()
        masked_loss, masked_acc = self.evaluate(gm)  # the compact global computes the masked model
        arch = ModelArch(self.cfg.model.name, gm.info.channels, gm.info.num_classes, gm.info.image_size)
        final, final_mask, final_graph = export_final_model(masked, arch, self.out_dir, graph=gm.graph)
        loss, acc = evaluate(final, self.test.x, self.test.y)
        with torch.no_grad():
            x = self.test.x[:256]
            max_diff = float((final(x) - masked(x)).abs().max())
        dense_params = gm.dense_params()
        final_params = count_params(final)
        rows = self.rows
        summary: dict[str, Any] = {
            "name": self.cfg.run.name,
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.dataset,
            "methods": self.cfg.methods.enabled,
            "rounds": len(rows),
            "num_clients": self.cfg.fleet.num_clients,
            "final_accuracy": acc,
            "final_loss": loss,
            "masked_accuracy": masked_acc,
            "masked_loss": masked_loss,
            "simplify_max_abs_diff": max_diff,
            "dense_params": dense_params,
            "final_params": final_params,
            "compression": dense_params / max(final_params, 1),
            "final_flops": count_flops(final, gm.example)["forward"],
            "dense_flops": count_flops(gm.dense_model(), gm.example)["forward"],
            "neurons_per_layer": format_neurons(neurons_per_layer(final_graph, final_mask)),
            "dense_neurons_per_layer": format_neurons(neurons_per_layer(gm.graph, type(gm.mask).full(gm.graph))),
            "upload_bytes_total": int(sum(r.get("upload_bytes", 0) for r in rows)),
            "dense_upload_bytes_total": int(sum(r.get("dense_upload_bytes", 0) for r in rows)),
            "download_bytes_total": int(sum(r.get("download_bytes", 0) for r in rows)),
            "dense_download_bytes_total": int(sum(r.get("dense_download_bytes", 0) for r in rows)),
            "budget_violations": int(sum(r.get("clients_total_violations", 0) for r in rows)),
            "client_failures": int(sum(len(r.get("failures", {})) for r in rows)),
            "rounds_aggregated": rounds_aggregated(rows),
            "wall_seconds": time.perf_counter() - self.t0 + float(extra.get("previous_wall_seconds", 0.0) if extra else 0.0),
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        if extra:
            summary.update({k: v for k, v in extra.items() if k != "previous_wall_seconds"})
        write_json(self.out_dir / "summary.json", summary)
        return summary
