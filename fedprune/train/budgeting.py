"""The batch size under a memory budget: fit and refit, prediction, measurement, OOM fallback.

Without a budget the batch is ``cfg.batch_size``. With one it is the largest batch whose
*predicted* step peak fits (``fedprune.memory.max_batch_size``, clamped to ``[cfg.min_batch,
cfg.max_batch]`` and to the data set), recomputed at the start and after every structural change,
so memory freed by removed neurons is reinvested at once (DynHP's dynamic batch sizing). The
learning rate follows ``cfg.lr_scaling`` relative to ``cfg.batch_size``.

The prediction runs :class:`ReferenceStep`: a plain training step plus every enabled method's
:class:`~fedprune.methods.base.StepMemory` (SeReNe's extra backward, LOBSTER's temporaries). Tensors
methods keep between steps (``Method.kept_tensor_bytes``) and their host state
(``Method.extra_bytes``) are added to prediction and measurement alike.

A measured step runs under ``PeakMemoryTracker``. A measured peak above the budget is a
*violation*: it is recorded and the batch is shrunk proportionally before the next step. A measured
peak above the prediction raises the calibration factor (measured / predicted, >= 1) that divides
the budget of later fits. The RSS a measured step adds teaches the resident-memory model
(``RESIDENT.observe``); a model whose layer shapes have no measured step in this process yet (the
round's received model, or one that a structural change just cut) trains one measured step at a
batch known to fit before the batch may grow (:meth:`BatchBudget.probed`), because the kernels'
untracked workspace changes with the layer widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedprune.memory import (MemoryReport, PeakMemoryTracker, estimate_training_memory, max_batch_size,
                             run_with_oom_guard, scale_lr)
from fedprune.memory.resident import RESIDENT, held_bytes, step_physical_bytes, structure_key
from fedprune.methods.base import StepMemory

#: a round that starts on layer shapes with no measured step in this process first trains one
#: measured step at a batch fitted to this share of the budget
PROBE_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class ReferenceStep:
    """One training step (cross-entropy, ``zero_grad(set_to_none=True)``, backward, optimizer step)
    with the methods' additions, in hook order. Hashable: part of the memory estimate's cache key."""

    additions: tuple[StepMemory, ...] = ()

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        states = [a.before_forward(model) for a in self.additions]
        try:
            out = model(x)
        finally:
            for a, s in zip(self.additions, states):
                a.after_forward(s)
        loss = F.cross_entropy(out, y)
        kept = [a.before_backward(s, out, loss) for a, s in zip(self.additions, states)]
        loss.backward()
        optimizer.step()
        for a in self.additions:
            a.after_step(model)
        del kept
        return loss.detach()


class BatchBudget:
    """The batch size, learning rate and memory accounting of one ``train_local`` call."""

    def __init__(self, ctx, methods: list):
        self.ctx = ctx
        self.methods = methods
        self.report = MemoryReport(budget_bytes=ctx.budget_bytes, round=ctx.round_idx)
        self.calibration = 1.0
        self.predicted = 0
        self.batches: list[int] = []
        self.counts: dict[str, int] = {"violations": 0, "max_violation_bytes": 0, "oom_events": 0,
                                       "measurements": 0, "last_measured_peak_bytes": 0}
        self.fresh_optimizer = True  # its state appears in the first step: measure the second
        self.window = None  # the round's RSS window (fedprune.memory.resident.open_round)
        self.fit_state = (0, 0)  # (RSS held over the round's baseline, live tensor bytes) at the last fit
        self.probing = False  # the next full step is measured, then the batch is refitted

    # -- what the methods add ---------------------------------------------------------------
    def kept_bytes(self) -> int:
        """Bytes methods keep between steps: their torch tensors and their host state."""
        return sum(int(m.kept_tensor_bytes(self.ctx)) for m in self.methods) + self.host_bytes()

    def host_bytes(self) -> int:
        """Host (numpy) state of the methods, which the tensor tracker cannot see."""
        return sum(int(m.extra_bytes(self.ctx)) for m in self.methods)

    def live_bytes(self) -> int:
        """Tensor bytes alive now that every step's peak includes: parameters, gradients, optimizer state."""
        ctx, seen, total = self.ctx, set(), 0
        tensors = [t for p in ctx.model.parameters() for t in (p, p.grad) if t is not None]
        if ctx.optimizer is not None:
            tensors += [v for st in ctx.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.untyped_storage().nbytes()
        return total

    def reference_step(self) -> ReferenceStep:
        """The step the estimate traces for the current model and methods."""
        additions = (m.step_memory(self.ctx) for m in self.methods)
        return ReferenceStep(tuple(a for a in additions if a is not None))

    # -- batch and learning rate ------------------------------------------------------------
    def fit_batch(self, share: float = 1.0) -> int:
        """Largest batch that fits the budget (0 if none), or ``cfg.batch_size`` without one;
        ``share`` < 1 fits to that share of the budget.

        The budget is reduced by what the methods keep and turned into a tensor budget by the
        resident-memory model (``RESIDENT.tensor_budget``: fixed costs and allocator slope measured
        in this process, or the calibration factor alone where that model is off); the batch is
        capped at the number of training samples.
        """
        ctx, cfg = self.ctx, self.ctx.cfg
        if ctx.budget_bytes is None:
            return cfg.batch_size
        budget = RESIDENT.tensor_budget(int(share * int(ctx.budget_bytes)) - self.kept_bytes(), self.calibration,
                                        held_bytes(self.window), self.live_bytes(), structure_key(ctx.model))
        if budget <= 0:
            return 0
        n = max(1, len(ctx.train_x))  # a batch larger than the data set buys nothing
        hi = min(cfg.max_batch, n)
        lo = min(cfg.min_batch, hi)
        b = max_batch_size(ctx.model, budget, ctx.input_shape, cfg.optimizer, min_batch=lo,
                           max_batch=hi, step_fn=self.reference_step())
        return int(b) if b and b >= lo else 0

    def predicted_peak(self, batch: int) -> int:
        """Predicted step peak at ``batch`` (estimate of the reference step + what methods keep)."""
        ctx = self.ctx
        est = estimate_training_memory(ctx.model, batch, ctx.input_shape, ctx.cfg.optimizer,
                                       step_fn=self.reference_step())
        return int(est.total_bytes) + self.kept_bytes()

    def current_lr(self) -> float:
        """``cfg.lr`` scaled for the batch (``lr_scaling``), warmed up (``lr_warmup``) and scheduled
        over the progress (``lr_schedule``)."""
        ctx = self.ctx
        lr = scale_lr(ctx.cfg.lr, ctx.batch_size, ctx.cfg.batch_size, ctx.cfg.lr_scaling)
        if lr > ctx.cfg.lr and ctx.progress < ctx.cfg.lr_warmup:
            lr = ctx.cfg.lr + (lr - ctx.cfg.lr) * ctx.progress / ctx.cfg.lr_warmup
        if ctx.cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * ctx.progress))
        return lr

    def lr_follows_progress(self) -> bool:
        """Whether :meth:`current_lr` changes with the progress now: a schedule, or a warm-up not yet
        over (the trainer then updates the rate every step, not only when the batch changes)."""
        cfg = self.ctx.cfg
        return cfg.lr_schedule != "constant" or self.ctx.progress < cfg.lr_warmup

    def update_lr(self) -> None:
        """Set the optimizer's learning rate to :meth:`current_lr`."""
        if self.ctx.optimizer is not None:
            lr = self.current_lr()
            for g in self.ctx.optimizer.param_groups:
                g["lr"] = lr

    def set_batch(self, batch: int) -> None:
        """Use ``batch`` from the next step on (learning rate rescaled; prediction recorded)."""
        ctx = self.ctx
        if batch != ctx.batch_size or not self.batches:
            ctx.need_measure = True
        ctx.batch_size = int(batch)
        self.fit_state = (held_bytes(self.window), self.live_bytes())
        if not self.batches or self.batches[-1] != ctx.batch_size:
            self.batches.append(ctx.batch_size)
        self.report.record_batch(ctx.batch_size)
        self.update_lr()
        self.predicted = self.predicted_peak(ctx.batch_size)
        self.report.record_prediction(self.predicted, ctx.batch_size)

    def probed(self, batch: int) -> int:
        """``batch``, or the smaller batch of a probe: where the model's layer shapes have no
        measured step in this process (resident model on, with a budget), the next full step is
        measured at the batch that ran before them (it fitted a larger model) or, at the round's
        start, at one fitted to ``PROBE_BUDGET_SHARE`` of the budget; the batch is refitted after it."""
        ctx = self.ctx
        if (not RESIDENT.enabled or ctx.budget_bytes is None or self.window is None
                or RESIDENT.structure_measured(ctx.model)):
            return batch
        self.probing = True
        probe = ctx.batch_size if self.batches else self.fit_batch(PROBE_BUDGET_SHARE)
        return max(1, min(batch, max(int(ctx.cfg.min_batch), int(probe))))

    def refit(self) -> None:
        """Refit the batch to the budget for the current model and trainable set (no budget: keep),
        capped by a probe (:meth:`probed`) on unmeasured layer shapes."""
        ctx = self.ctx
        ctx.refit_batch = False
        if ctx.budget_bytes is not None:
            b = self.fit_batch()
            self.set_batch(self.probed(b if b else ctx.cfg.min_batch))
        else:
            self.set_batch(ctx.batch_size)

    def guard_held(self) -> None:
        """Before a step: refit to a smaller batch when the RSS the round holds now over its baseline,
        plus the step's predicted new tensors at the resident slope, would pass the budget (only
        where the resident model is on; one read of /proc per step)."""
        ctx = self.ctx
        if not RESIDENT.enabled or ctx.budget_bytes is None or self.window is None:
            return
        transient = max(0, self.predicted - self.live_bytes())
        slope = RESIDENT.slope_for(structure_key(ctx.model))
        if held_bytes(self.window) + RESIDENT.fixed_bytes + slope * transient > ctx.budget_bytes:
            b = self.fit_batch()
            if b < ctx.batch_size:
                self.set_batch(max(b, ctx.cfg.min_batch))

    # -- measurement and OOM ----------------------------------------------------------------
    def should_measure(self, batch: int, steps: int) -> bool:
        """Whether the next step (of ``batch`` samples, after ``steps`` steps) is measured."""
        ctx = self.ctx
        if self.probing:
            return batch == ctx.batch_size
        return (ctx.need_measure and not self.fresh_optimizer and batch == ctx.batch_size) or (
            ctx.cfg.measure_every > 0 and steps % ctx.cfg.measure_every == 0)

    def measured(self, step: Callable[[torch.Tensor, torch.Tensor], Any], xb: torch.Tensor,
                 yb: torch.Tensor, steps: int) -> Any:
        """``step(xb, yb)`` under ``PeakMemoryTracker``; an over-budget peak is a violation and
        shrinks the batch."""
        ctx = self.ctx
        tensors = [xb, yb, *(t for m in self.methods for t in m.kept_tensors())]
        tracker = PeakMemoryTracker(ctx.cfg.device, model=ctx.model, optimizer=ctx.optimizer, tensors=tensors)
        live = self.live_bytes()
        with tracker:
            if self.window is None:
                res, physical, held = step(xb, yb), 0, 0
            else:
                res, physical, held = step_physical_bytes(self.window, lambda: step(xb, yb))
        peak = int(tracker.peak_bytes) + self.host_bytes()  # host state the tracker cannot see
        self.counts["measurements"] += 1
        self.counts["last_measured_peak_bytes"] = peak
        self.report.record_measurement(peak, tracker.rss_bytes, batch_size=len(xb), step=steps)
        ctx.need_measure = False
        if self.predicted and len(xb) == ctx.batch_size:
            RESIDENT.observe(physical, self.predicted - live, held, structure_key(ctx.model))
            RESIDENT.observe_retained(held - self.fit_state[0], live - self.fit_state[1])
            if self.probing:
                self.probing, ctx.refit_batch = False, True
            if peak > self.predicted:
                self.calibration = max(self.calibration, peak / self.predicted)
        if ctx.budget_bytes is not None and peak > ctx.budget_bytes:
            self._violation(peak, len(xb))
        elif RESIDENT.enabled and ctx.budget_bytes is not None and physical > ctx.budget_bytes:
            self._shrink(physical, len(xb))  # over the budget as the kernel counts it
        return res

    def _violation(self, peak: int, batch: int) -> None:
        ctx = self.ctx
        self.counts["violations"] += 1
        self.counts["max_violation_bytes"] = max(self.counts["max_violation_bytes"], peak - int(ctx.budget_bytes))
        self._shrink(peak, batch)

    def _shrink(self, peak: int, batch: int) -> None:
        """A smaller batch after a step that peaked at ``peak`` > budget with ``batch`` samples."""
        ctx = self.ctx
        refit = self.fit_batch()
        shrunk = min(refit or ctx.cfg.min_batch, max(ctx.cfg.min_batch, int(batch * ctx.budget_bytes / peak)))
        if shrunk < ctx.batch_size:
            self.set_batch(shrunk)

    def guarded(self, run_step: Callable[[int], Any], batch: int) -> tuple[Any, int]:
        """``run_step(batch)``, retried with smaller batches on out-of-memory errors.

        Returns ``(result, batch used)``; a batch of 0 means even ``cfg.min_batch`` ran out of memory.
        A smaller batch that worked becomes the batch from now on.
        """
        result, used, events = run_with_oom_guard(run_step, batch, min(self.ctx.cfg.min_batch, batch))
        if events:
            self.counts["oom_events"] += len(events)
            self.report.record_oom(events)
        if 0 < used < batch:
            self.set_batch(used)
        return result, used
