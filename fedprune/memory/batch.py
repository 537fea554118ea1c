"""Batch sizing under a memory budget, and learning-rate scaling with the batch.

``max_batch_size`` answers "how many samples fit"; ``decide_batch`` wraps it with
the client's data size and returns a ``BatchDecision`` the trainer acts on
(train at ``batch_size``, or -- when ``fits`` is False -- prune further or report
"does not fit" to the server).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fedprune.memory.estimate import memory_model
from fedprune.memory.optim import OptimizerSpec
from fedprune.memory.step import StepFn, Trainable

LR_RULES = ("none", "linear", "sqrt")


def _check_budget(budget_bytes: int, margin: float) -> int:
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or budget_bytes < 0:
        raise ValueError(f"budget_bytes={budget_bytes!r}; expected a number >= 0")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin={margin!r}; expected 0 <= margin < 1")
    return int(math.floor(budget_bytes * (1.0 - margin)))


def max_batch_size(model: nn.Module, budget_bytes: int, input_shape: tuple[int, ...],
                   optimizer: OptimizerSpec | str | None = None, min_batch: int = 1, max_batch: int = 1024,
                   margin: float = 0.05, *, trainable: Trainable = None, device: str = "cpu",
                   step_fn: StepFn | None = None, input_dtype: torch.dtype = torch.float32) -> int:
    """Largest batch in ``[min_batch, max_batch]`` whose predicted peak <= ``budget * (1 - margin)``.

    Returns 0 when even ``min_batch`` does not fit. Guarantees: monotone non-decreasing in
    ``budget_bytes``; ``estimate_training_memory(model, result, ...).total_bytes`` fits the
    margin-reduced budget; closed form from the cached structure model (microseconds after the
    first call for a structure).
    """
    limit = _check_budget(budget_bytes, margin)
    if int(min_batch) < 1 or int(max_batch) < int(min_batch):
        raise ValueError(f"need 1 <= min_batch <= max_batch, got min_batch={min_batch!r}, max_batch={max_batch!r}")
    mm = memory_model(model, input_shape, optimizer, trainable, device=device, step_fn=step_fn,
                      input_dtype=input_dtype)
    return mm.max_batch(limit, int(min_batch), int(max_batch))


@dataclass(frozen=True)
class BatchDecision:
    """Outcome of sizing a batch: train at ``batch_size`` if ``fits``, else prune or report."""

    batch_size: int  # 0 when nothing fits
    fits: bool
    budget_bytes: int
    limit_bytes: int  # budget after the safety margin
    predicted_bytes: int  # predicted peak at batch_size (at the minimum batch when not fitting)
    min_batch: int
    max_batch: int
    reason: str  # "ok" | "does_not_fit"

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


def decide_batch(model: nn.Module, budget_bytes: int, input_shape: tuple[int, ...],
                 optimizer: OptimizerSpec | str | None = None, min_batch: int = 1, max_batch: int = 1024,
                 margin: float = 0.05, *, num_samples: int | None = None, trainable: Trainable = None,
                 device: str = "cpu", step_fn: StepFn | None = None,
                 input_dtype: torch.dtype = torch.float32) -> BatchDecision:
    """Pick the batch for the next steps: ``max_batch_size`` clamped to the client's data size.

    ``num_samples`` (the client's training-set size) caps ``max_batch``; if it is below
    ``min_batch`` the minimum becomes ``num_samples``. ``fits=False`` (batch 0) means even the
    minimum batch exceeds the margin-reduced budget: prune further or report "does not fit".
    """
    lo, hi = int(min_batch), int(max_batch)
    if lo < 1 or hi < lo:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got min_batch={min_batch!r}, max_batch={max_batch!r}")
    if num_samples is not None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples={num_samples!r}; expected >= 1")
        hi = min(hi, int(num_samples))
        lo = min(lo, hi)
    limit = _check_budget(budget_bytes, margin)
    mm = memory_model(model, input_shape, optimizer, trainable, device=device, step_fn=step_fn,
                      input_dtype=input_dtype)
    b = mm.max_batch(limit, lo, hi)
    predicted = mm.peak_bytes(b if b else lo)
    return BatchDecision(b, b > 0, int(budget_bytes), limit, predicted, lo, hi, "ok" if b else "does_not_fit")


def scale_lr(base_lr: float, batch: int, base_batch: int, rule: str = "none") -> float:
    """Learning rate for ``batch`` given ``base_lr`` tuned at ``base_batch``.

    ``none``: unchanged; ``linear``: ``base_lr * batch / base_batch`` (Goyal et al.);
    ``sqrt``: ``base_lr * sqrt(batch / base_batch)`` (Krizhevsky; suited to Adam).
    """
    if rule not in LR_RULES:
        raise ValueError(f"rule={rule!r}; expected one of {', '.join(LR_RULES)}")
    if base_lr < 0:
        raise ValueError(f"base_lr={base_lr!r}; expected >= 0")
    if int(batch) < 1 or int(base_batch) < 1:
        raise ValueError(f"batch={batch!r}, base_batch={base_batch!r}; both must be >= 1")
    ratio = int(batch) / int(base_batch)
    if rule == "linear":
        return float(base_lr) * ratio
    if rule == "sqrt":
        return float(base_lr) * math.sqrt(ratio)
    return float(base_lr)
