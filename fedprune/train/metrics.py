"""The flat metrics of one ``train_local`` call, built in one place for trained and not-fit results.

Every result has the run's identity (methods, budget, dense size), the memory and batch figures and
the neuron counts; a trained result adds losses, accuracies, backprop FLOPs and the methods' own
metrics; a result that does not fit adds the reason instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedprune.surgery import count_params


def dense_params(graph) -> int:
    """Parameters of the dense reference model (built on the meta device: no allocation)."""
    try:
        model = graph.build_compact(graph.full_mask(), device="meta")
    except Exception:  # pragma: no cover - a module that cannot be built on meta
        model = graph.build_compact(graph.full_mask())
    return int(count_params(model))


def nonzero_params(model: nn.Module) -> int:
    """Parameter scalars that are not exactly zero. ``torch.count_nonzero`` allocates nothing of the
    parameter's size (``(p != 0).sum()`` peaks at ~30 bytes per element: megabytes in a round)."""
    return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))


def params(model: nn.Module) -> int:
    """Parameter scalars of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))


def _flops(st: dict[str, Any]) -> dict[str, float]:
    samples = max(1, st["samples"])
    return {
        "bprop_flops_dense": float(st["flops_dense"] / samples),
        "bprop_flops_unfrozen": float(st["flops_unfrozen"] / samples),
        "bprop_flops": float(st["flops"] / samples),
        "bprop_flops_saved_frac": float(1.0 - st["flops"] / st["flops_dense"]) if st["flops_dense"] else 0.0,
        "bprop_flops_frozen_saved_frac": (float(1.0 - st["flops"] / st["flops_unfrozen"])
                                          if st["flops_unfrozen"] else 0.0),
        "bprop_flops_saved_per_step": float((st["flops_dense"] - st["flops"]) / max(1, st["steps"])),
    }


def _trained(trainer, losses: dict[str, float], neurons_before: int) -> dict[str, Any]:
    ctx, budget, st = trainer.ctx, trainer.budget, trainer.stats
    return {
        **{k: float(v) for k, v in losses.items()},
        "measured_peak_last_bytes": int(budget.counts["last_measured_peak_bytes"]),
        "memory_measurements": int(budget.counts["measurements"]),
        "memory_calibration": float(budget.calibration),
        "max_violation_bytes": int(budget.counts["max_violation_bytes"]),
        "oom_stopped": int(trainer.out_of_memory),
        "lr_final": float(ctx.optimizer.param_groups[0]["lr"]),
        "steps": int(st["steps"]), "samples_seen": int(st["samples"]),
        **_flops(st),
        "backward_seconds": float(st["backward_seconds"]),
        "step_seconds": float(st["step_seconds"]),
        "structural_changes": int(st["structural_changes"]),
        "neurons_pruned": int(neurons_before - ctx.mask.num_alive()),
        "nonzero_params": nonzero_params(ctx.model),
    }


def build_metrics(base: dict[str, Any], trainer, model: nn.Module, mask, *, wall_seconds: float,
                  num_examples: int = 0, reason: str | None = None, predicted_peak: int = 0,
                  losses: dict[str, float] | None = None, neurons_before: int = 0) -> dict[str, Any]:
    """The flat JSON-able metrics of a ``train_local`` result.

    ``reason`` set: the client did not fit (``does_not_fit = 1``, no training figures,
    ``predicted_peak`` is the prediction at the minimum batch). Otherwise ``losses`` holds the
    train/validation loss and accuracy, ``neurons_before`` the alive neurons before training, and
    the methods' metrics are appended. ``model``/``mask`` are the result's.
    """
    budget, rep = trainer.budget, trainer.budget.report
    batches = budget.batches if reason is None else []
    budget_bytes = base["budget_bytes"]
    measured = int(rep.measured_peak_bytes or 0) if reason is None else 0
    out: dict[str, Any] = {
        **base, "does_not_fit": int(reason is not None), "num_examples": int(num_examples),
        "predicted_peak_bytes": int(rep.predicted_peak_bytes or 0) if reason is None else int(predicted_peak),
        "measured_peak_bytes": measured,
        "utilization": float(measured / budget_bytes) if budget_bytes else 0.0,
        "violations": int(budget.counts["violations"]) if reason is None else 0,
        "oom_events": int(budget.counts["oom_events"]),
        "batch_sizes": ",".join(str(b) for b in batches),
        "batch_min": int(min(batches)) if batches else 0, "batch_max": int(max(batches)) if batches else 0,
        "batch_final": int(trainer.ctx.batch_size) if reason is None else 0,
        "neurons_pruned": 0, "neurons_alive": int(mask.num_alive()), "params_alive": params(model),
    }
    if reason is not None:
        out["does_not_fit_reason"] = reason
    else:
        out.update(_trained(trainer, losses or {}, neurons_before))
        out["compression"] = float(out["params_dense"] / max(1, out["params_alive"]))
    out.update(rep.to_metrics())
    if reason is None:
        for m in trainer.methods:
            out.update(m.metrics(trainer.ctx))
    out["wall_seconds"] = float(wall_seconds)
    return out
