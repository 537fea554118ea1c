"""The local trainer: epochs over one client's data, under a memory budget, with pruning methods.

``train_local`` is what a federated client (or the centralized mode) runs. It owns the compact model,
the optimizer, the batch size and the memory accounting; the enabled methods
(:mod:`fedprune.methods`) act through hooks (see :mod:`fedprune.methods.base`).

Batch size. Without a budget the batch is ``cfg.batch_size``. With a budget it is the largest batch
whose *predicted* step peak fits (``fedprune.memory.max_batch_size``, clamped to
``[cfg.min_batch, cfg.max_batch]``), recomputed at the start and after every structural change, so
memory freed by removed neurons is reinvested at once (DynHP's dynamic batch sizing). The learning
rate follows ``cfg.lr_scaling`` relative to ``cfg.batch_size`` (the batch ``cfg.lr`` is tuned for).
If not even ``cfg.min_batch`` fits, nothing is trained and the result says ``does_not_fit = 1``.

Memory. One step after every change of structure, batch size or frozen set (and every
``cfg.measure_every`` steps if > 0) runs under ``PeakMemoryTracker``: the second step after an
optimizer rebuild, so that its state (momentum) is live, as in every later step. Steps in between
have the same shapes, hence the same peak. A measured peak above the budget is a *violation*: it is
recorded and the batch is shrunk proportionally before the next step. Tensors that methods keep between steps
(LOBSTER/SeReNe weight masks) are counted in both the prediction and the measurement.

No Flower import here: the Flower client app wraps this function.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedprune.memory import (MemoryReport, OptimizerSpec, PeakMemoryTracker, estimate_training_memory,
                             max_batch_size, run_with_oom_guard, scale_lr)
from fedprune.methods import build_methods, parse_methods
from fedprune.methods.flops import bprop_flops, dense_bprop_flops, layer_costs
from fedprune.methods.sites import build_sites

LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass
class TrainConfig:
    """Local training settings.

    ``batch_size`` is the batch without a budget and the reference batch of ``lr`` for
    ``lr_scaling``; with a budget the batch is whatever fits in ``[min_batch, max_batch]``.
    ``measure_every`` > 0 also measures the memory peak every that many steps (costly on CPU).
    ``eval_batch`` is the chunk size of no-budget evaluations. ``lr_schedule``: ``"constant"`` or
    ``"cosine"`` (``lr * (1 + cos(pi * progress)) / 2`` over the *total* progress, all rounds).
    """

    epochs: int = 1
    lr: float = 0.05
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_size: int = 32
    min_batch: int = 1
    max_batch: int = 1024
    lr_scaling: str = "sqrt"
    seed: int = 0
    device: str = "cpu"
    measure_every: int = 0
    eval_batch: int = 512
    lr_schedule: str = "constant"

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs}: must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr={self.lr}: must be > 0")
        if self.min_batch < 1 or self.max_batch < self.min_batch:
            raise ValueError(f"train.min_batch={self.min_batch}, max_batch={self.max_batch}: "
                             "need 1 <= min_batch <= max_batch")
        if not self.min_batch <= self.batch_size <= self.max_batch:
            raise ValueError(f"train.batch_size={self.batch_size}: must be in [min_batch, max_batch]")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule={self.lr_schedule!r}: expected 'constant' or 'cosine'")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"train.lr_scaling={self.lr_scaling!r}: expected one of "
                             f"{', '.join(LR_SCALINGS)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"train.device={self.device!r}: expected 'cpu' or 'cuda[:N]'")
        return self


@dataclass
class ClientData:
    """One client's tensors: float32 normalised images ``(N, C, H, W)`` and int64 labels.

    ``val_x``/``val_y`` may be empty (or None); the methods then use the first 1024 training
    samples as their validation data.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass
class TrainResult:
    """What ``train_local`` returns (see its docstring)."""

    model: nn.Module
    mask: Any
    num_examples: int
    metrics: dict[str, Any]
    method_state: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode.

    The model's train/eval mode is restored. Returns ``(nan, nan)`` for an empty set.
    """
    n = 0 if x is None else int(len(x))
    if n == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        dev = _model_device(model)
        for i in range(0, n, max(1, int(batch_size))):
            xb = x[i: i + batch_size].to(dev)
            yb = y[i: i + batch_size].to(dev)
            out = model(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss / n, correct / n


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@dataclass(frozen=True)
class MethodStep:
    """The reference training step plus the memory pattern of the enabled methods.

    Passed as ``step_fn`` to the memory estimate so that the predicted peak includes SeReNe's extra
    backward (``sensitivity``) and the one weight-sized temporary of LOBSTER's in-place update
    (``weight_update``). Hashable (part of the estimate's cache key).

    The extra backward is SeReNe's own :class:`~fedprune.methods.serene.SensitivityProbe` (its
    batched eq. 2 backward over the ``C`` outputs), so the trace is the real one. The hooked modules
    are ``sensitivity_modules`` when given (the names SeReNe hooks: its sites' output modules);
    otherwise the same choice as the sites': every BatchNorm, and every conv/linear not directly
    followed (in module order) by a BatchNorm of its width (the probe ignores the logits).
    """

    sensitivity: bool = False
    weight_update: bool = False
    sensitivity_modules: tuple[str, ...] | None = None

    def _sensitivity_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        named = list(model.named_modules())
        if self.sensitivity_modules is not None:
            want = set(self.sensitivity_modules)
            return [(n, m) for n, m in named if n in want]
        bn = nn.modules.batchnorm._BatchNorm
        chosen = []
        layers = [(n, m) for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear, bn))]
        for i, (n, m) in enumerate(layers):
            if isinstance(m, bn):
                chosen.append((n, m))
                continue
            width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            nxt = layers[i + 1][1] if i + 1 < len(layers) else None
            if isinstance(nxt, bn) and nxt.num_features == width:
                continue  # its BatchNorm carries the neurons
            chosen.append((n, m))
        return chosen

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        probe = None
        if self.sensitivity:  # SeReNe's probe itself: its batched eq. 2 backward is in the trace
            from fedprune.methods.serene import SensitivityProbe

            probe = SensitivityProbe(model, {n: [(n, None)] for n, _ in self._sensitivity_modules(model)})
            probe.armed = True
        try:
            out = model(x)
            loss = F.cross_entropy(out, y)
            sens = probe.compute(out) if probe is not None else {}  # kept until the update, as SeReNe does
        finally:
            if probe is not None:
                probe.remove()
        loss.backward()
        optimizer.step()
        if self.weight_update:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() >= 2 and p.grad is not None:
                        p.grad.abs()  # LOBSTER's one weight-sized temporary, freed at once
        del sens
        return loss.detach()


# ---------------------------------------------------------------------------------------------
# the context the methods see


class TrainContext:
    """Mutable state of one ``train_local`` call, shared with the methods' hooks.

    Methods read: ``model``, ``mask``, ``graph``, ``sites``, ``optimizer``, ``val_x``/``val_y``,
    ``eval_batch``, ``batch_size``, ``progress`` (total training progress in [0, 1] across rounds),
    ``epoch_fraction`` (of the current epoch), ``epoch``; they call ``val_loss(n)`` and
    ``costs_changed()``; NEq writes ``frozen_fraction`` (layer -> fraction of output neurons frozen).
    """

    def __init__(self, model, mask, graph, data: ClientData, cfg: TrainConfig, round_idx: int,
                 num_rounds: int, budget_bytes: int | None):
        self.model = model
        self.mask = mask
        self.graph = graph
        self.cfg = cfg
        self.round_idx = round_idx
        self.num_rounds = num_rounds
        self.budget_bytes = budget_bytes
        self.train_x, self.train_y = data.train_x, data.train_y
        if data.val_x is not None and len(data.val_x) > 0:
            self.val_x, self.val_y = data.val_x, data.val_y
        else:
            self.val_x, self.val_y = data.train_x[:1024], data.train_y[:1024]
        self.input_shape = tuple(int(s) for s in data.train_x.shape[1:])
        self.sites: dict = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.batch_size = cfg.batch_size
        self.epoch = 0
        self.epoch_fraction = 0.0
        self.frozen_fraction: dict[str, float] = {}
        self._costs_dirty = True
        self.need_measure = True
        self.refit_batch = False  # trainable set changed: the batch must be refitted to the budget

    @property
    def progress(self) -> float:
        """``(round_idx * epochs + epoch + epoch_fraction) / (num_rounds * epochs)``, in [0, 1]."""
        e = self.cfg.epochs
        p = (self.round_idx * e + self.epoch + self.epoch_fraction) / (self.num_rounds * e)
        return min(1.0, max(0.0, p))

    @property
    def eval_batch(self) -> int:
        """Chunk size for the methods' evaluation passes (the training batch under a budget)."""
        return self.batch_size if self.budget_bytes is not None else max(self.batch_size, self.cfg.eval_batch)

    def val_loss(self, samples: int) -> float:
        """Validation loss on the first ``samples`` validation samples (eval mode, no grad)."""
        return evaluate(self.model, self.val_x[:samples], self.val_y[:samples], self.eval_batch)[0]

    def costs_changed(self) -> None:
        """Tell the trainer that ``requires_grad`` flags or frozen sets changed.

        The step's memory changes with them (a layer without weight gradient needs no gradient
        buffer and may not keep its input), so under a budget the batch is refitted before the
        next step: it grows while layers are frozen and shrinks back before they train again.
        """
        self._costs_dirty = True
        self.need_measure = True
        self.refit_batch = True


# ---------------------------------------------------------------------------------------------
# the trainer


class _Trainer:
    """One ``train_local`` call (split into methods for readability)."""

    def __init__(self, ctx: TrainContext, methods: list, epoch_callback=None):
        self.ctx = ctx
        self.methods = methods
        self.epoch_callback = epoch_callback
        self.stats: dict[str, Any] = {
            "violations": 0, "max_violation_bytes": 0, "oom_events": 0, "structural_changes": 0,
            "measurements": 0,
            "steps": 0, "samples": 0, "backward_seconds": 0.0, "step_seconds": 0.0,
            "flops_dense": 0.0, "flops_unfrozen": 0.0, "flops": 0.0,
        }
        self.batches: list[int] = []
        self.report = MemoryReport(budget_bytes=ctx.budget_bytes, round=ctx.round_idx)
        self.calibration = 1.0
        self._predicted = 0
        self._costs = None
        self._dense_costs = None
        self._ref_flops = 0
        self.out_of_memory = False
        self._fresh_optimizer = True

    # -- memory / batch -------------------------------------------------------------------
    def _extra_bytes(self) -> int:
        """Bytes methods keep between steps: one bool mask per conv/linear weight per pruner
        (torch, also named to the tracker) plus their host state (``Method.extra_bytes``)."""
        pruners = sum(1 for m in self.methods if getattr(m, "pruner", None) is not None)
        masks = pruners * sum(p.numel() for p in self.ctx.model.parameters() if p.dim() >= 2)
        return masks + self._host_bytes()

    def _host_bytes(self) -> int:
        return sum(int(m.extra_bytes(self.ctx)) for m in self.methods)

    def _extra_tensors(self) -> list[torch.Tensor]:
        out = []
        for m in self.methods:
            pruner = getattr(m, "pruner", None)
            if pruner is not None:
                out += list(pruner.masks.values())
        return out

    def _step_fn(self) -> MethodStep:
        names = {m.name for m in self.methods}
        hooked = None
        if "serene" in names and self.ctx.sites:  # exactly the outputs SeReNe's probe hooks
            hooked = tuple(sorted({mod for site in self.ctx.sites.values() for mod, _ in site.outputs}))
        sens = any(getattr(m, "uses_sensitivity", False) for m in self.methods)
        return MethodStep(sensitivity=sens, weight_update="lobster" in names,
                          sensitivity_modules=hooked)

    def fit_batch(self) -> int:
        """Largest batch that fits the budget (0 if none), or ``cfg.batch_size`` without one.

        The budget is reduced by the methods' persistent tensors and divided by the calibration
        factor (measured / predicted peak, >= 1) learnt from earlier measurements; the batch is
        capped at the number of training samples.
        """
        ctx, cfg = self.ctx, self.ctx.cfg
        if ctx.budget_bytes is None:
            return cfg.batch_size
        budget = int((int(ctx.budget_bytes) - self._extra_bytes()) / self.calibration)
        if budget <= 0:
            return 0
        n = max(1, len(ctx.train_x))  # a batch larger than the data set buys nothing
        hi = min(cfg.max_batch, n)
        lo = min(cfg.min_batch, hi)
        b = max_batch_size(ctx.model, budget, ctx.input_shape, cfg.optimizer, min_batch=lo,
                           max_batch=hi, step_fn=self._step_fn())
        return int(b) if b and b >= lo else 0

    def predicted_peak(self, batch: int) -> int:
        """Predicted step peak at ``batch`` (estimate of the method step + persistent extras)."""
        ctx = self.ctx
        est = estimate_training_memory(ctx.model, batch, ctx.input_shape, ctx.cfg.optimizer,
                                       step_fn=self._step_fn())
        return int(est.total_bytes) + self._extra_bytes()

    def current_lr(self) -> float:
        """``cfg.lr`` scaled for the batch (``lr_scaling``) and the progress (``lr_schedule``)."""
        ctx = self.ctx
        lr = scale_lr(ctx.cfg.lr, ctx.batch_size, ctx.cfg.batch_size, ctx.cfg.lr_scaling)
        if ctx.cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * ctx.progress))
        return lr

    def update_lr(self) -> None:
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
        if not self.batches or self.batches[-1] != ctx.batch_size:
            self.batches.append(ctx.batch_size)
        self.report.record_batch(ctx.batch_size)
        self.update_lr()
        self._predicted = self.predicted_peak(ctx.batch_size)
        self.report.record_prediction(self._predicted, ctx.batch_size)

    def build_optimizer(self) -> None:
        ctx = self.ctx
        ctx.optimizer = ctx.cfg.optimizer.build(ctx.model.parameters(), self.current_lr())
        self._fresh_optimizer = True  # its state appears in the first step: measure the second

    # -- structure ------------------------------------------------------------------------
    def bind(self) -> None:
        """(Re)build sites and dense FLOPs costs for the current model, then attach methods."""
        ctx = self.ctx
        ctx.sites = build_sites(ctx.graph, ctx.model, ctx.mask)
        self._dense_costs = layer_costs(ctx.model, self._example())
        ctx.frozen_fraction = {}
        ctx.costs_changed()
        for m in self.methods:
            m.attach(ctx)

    def apply_mask(self, new_mask) -> None:
        """Physically remove ``ctx.mask & ~new_mask``, rebuild optimizer/sites, recompute the batch."""
        ctx = self.ctx
        if new_mask is None:
            return
        new_mask = new_mask & ctx.mask
        if new_mask == ctx.mask:
            return
        for m in self.methods:
            m.detach(ctx)
        ctx.model = ctx.graph.prune(ctx.model, ctx.mask, new_mask)
        ctx.mask = new_mask
        ctx.model.train()
        self.build_optimizer()
        self.stats["structural_changes"] += 1
        self.bind()
        self.refit()

    def refit(self) -> None:
        """Refit the batch to the budget for the current model and trainable set (no budget: keep)."""
        ctx = self.ctx
        ctx.refit_batch = False
        if ctx.budget_bytes is not None:
            b = self.fit_batch()
            self.set_batch(b if b else ctx.cfg.min_batch)
        else:
            self.set_batch(ctx.batch_size)

    def _example(self) -> torch.Tensor:
        return self.ctx.train_x[:2].to(_model_device(self.ctx.model))

    # -- one step -------------------------------------------------------------------------
    def _costs_now(self):
        ctx = self.ctx
        if ctx._costs_dirty or self._costs is None:
            self._costs = layer_costs(ctx.model, self._example())
            self._trainable = {n: bool(m.weight.requires_grad) for n, m in ctx.model.named_modules()
                               if isinstance(m, (nn.Conv2d, nn.Linear))}
            ctx._costs_dirty = False
        return self._costs

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, int]:
        ctx = self.ctx
        model, opt = ctx.model, ctx.optimizer
        t_step = time.perf_counter()
        for m in self.methods:
            m.before_forward(ctx)
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        for m in self.methods:
            m.after_forward(ctx, out, loss)
        t0 = time.perf_counter()
        loss.backward()
        self.stats["backward_seconds"] += time.perf_counter() - t0
        for m in self.methods:
            m.after_backward(ctx)
        opt.step()
        for m in self.methods:
            m.after_step(ctx)
        self.stats["step_seconds"] += time.perf_counter() - t_step  # forward to the methods' last hook
        correct = int((out.detach().argmax(1) == yb).sum())
        return float(loss.detach()), correct

    def measured_step(self, xb, yb) -> tuple[float, int]:
        """``step`` under ``PeakMemoryTracker``; over-budget peaks are violations (batch shrinks)."""
        ctx = self.ctx
        tracker = PeakMemoryTracker(ctx.cfg.device, model=ctx.model, optimizer=ctx.optimizer,
                                    tensors=[xb, yb, *self._extra_tensors()])
        with tracker:
            res = self.step(xb, yb)
        peak = int(tracker.peak_bytes) + self._host_bytes()  # host state the tracker cannot see
        self.stats["measurements"] += 1
        self.stats["last_measured_peak_bytes"] = peak
        self.report.record_measurement(peak, tracker.rss_bytes, batch_size=len(xb), step=self.stats["steps"])
        ctx.need_measure = False
        if self._predicted and len(xb) == ctx.batch_size and peak > self._predicted:
            self.calibration = max(self.calibration, peak / self._predicted)
        if ctx.budget_bytes is not None and peak > ctx.budget_bytes:
            self.stats["violations"] += 1
            self.stats["max_violation_bytes"] = max(self.stats["max_violation_bytes"],
                                                    peak - int(ctx.budget_bytes))
            refit = self.fit_batch()
            shrunk = min(refit or ctx.cfg.min_batch,
                         max(ctx.cfg.min_batch, int(len(xb) * ctx.budget_bytes / peak)))
            if shrunk < ctx.batch_size:
                self.set_batch(shrunk)
        return res

    def account(self, batch: int) -> None:
        costs = self._costs_now()
        ctx = self.ctx
        self.stats["flops_dense"] += self._ref_flops * batch
        self.stats["flops_unfrozen"] += dense_bprop_flops(self._dense_costs) * batch
        self.stats["flops"] += bprop_flops(costs, ctx.frozen_fraction, self._trainable) * batch
        self.stats["steps"] += 1
        self.stats["samples"] += batch

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> tuple[float, float]:
        ctx = self.ctx
        n = len(ctx.train_x)
        gen = torch.Generator().manual_seed(int(ctx.cfg.seed) * 1_000_003 + int(ctx.round_idx))
        dev = _model_device(ctx.model)
        last_loss, last_acc = float("nan"), float("nan")
        for epoch in range(ctx.cfg.epochs):
            ctx.epoch, ctx.epoch_fraction = epoch, 0.0
            for m in self.methods:
                self.apply_mask(m.epoch_start(ctx))
            if ctx.refit_batch:
                self.refit()
            perm = torch.randperm(n, generator=gen)
            pos, loss_sum, correct, seen = 0, 0.0, 0, 0
            while pos < n:
                b = min(ctx.batch_size, n - pos)
                if b < 2 and pos > 0:  # a trailing batch of one (BatchNorm cannot train on it)
                    break
                idx = perm[pos: pos + b]
                if ctx.cfg.lr_schedule != "constant":
                    self.update_lr()
                measure = (ctx.need_measure and not self._fresh_optimizer and b == ctx.batch_size) or (
                    ctx.cfg.measure_every > 0 and self.stats["steps"] % ctx.cfg.measure_every == 0)

                def run_step(bb: int, idx=idx, measure=measure):
                    xb, yb = ctx.train_x[idx[:bb]].to(dev), ctx.train_y[idx[:bb]].to(dev)
                    return self.measured_step(xb, yb) if measure else self.step(xb, yb)

                result, used, events = run_with_oom_guard(run_step, b, min(ctx.cfg.min_batch, b))
                if events:
                    self.stats["oom_events"] += len(events)
                    self.report.record_oom(events)
                if used == 0:  # even the minimum batch ran out of memory: stop here
                    self.out_of_memory = True
                    return last_loss, last_acc
                if used < b:
                    self.set_batch(used)
                    b = used
                loss, corr = result
                self._fresh_optimizer = False
                self.account(b)
                loss_sum += loss * b
                correct += corr
                seen += b
                pos += b
                ctx.epoch_fraction = pos / n
                for m in self.methods:
                    self.apply_mask(m.step_end(ctx))
                if ctx.refit_batch:
                    self.refit()
            ctx.epoch_fraction = 1.0
            for m in self.methods:
                self.apply_mask(m.epoch_end(ctx))
            last_loss, last_acc = loss_sum / max(1, seen), correct / max(1, seen)
            if self.epoch_callback is not None:
                self.epoch_callback(epoch, ctx, {"train_loss": last_loss, "train_accuracy": last_acc})
        return last_loss, last_acc


def _dense_reference_flops(graph, example: torch.Tensor) -> int:
    """Backward FLOPs per sample of the dense reference architecture (shapes only, on meta)."""
    try:
        ref = graph.build_compact(graph.full_mask(), device="meta")
        return dense_bprop_flops(layer_costs(ref, example.to("meta")))
    except Exception:  # pragma: no cover - a module that cannot run on meta
        return dense_bprop_flops(layer_costs(graph.build_compact(graph.full_mask()), example))


def _split_state(state: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    prefix = f"{name}/"
    return {k[len(prefix):]: v for k, v in (state or {}).items() if k.startswith(prefix)}


def _params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _nonzero_params(model: nn.Module) -> int:
    return int(sum(int((p.detach() != 0).sum()) for p in model.parameters()))


def train_local(model: nn.Module, mask, graph, data: ClientData, cfg: TrainConfig, methods: list[str] | str,
                method_cfgs: Mapping[str, Any] | None, budget_bytes: int | None,
                method_state: Mapping[str, Any] | None = None, round_idx: int = 0, num_rounds: int = 1, *,
                epoch_callback: Callable[[int, TrainContext, dict], None] | None = None) -> TrainResult:
    """Train ``model`` (compact for ``mask``) on ``data`` for ``cfg.epochs`` with the enabled methods.

    ``round_idx`` is 0-based (``0 <= round_idx < num_rounds``); schedules use the total progress
    over all rounds. ``method_state`` is the ``method_state`` of this client's previous result (flat
    ``"<method>/<key>"`` -> numpy array or scalar), or None.

    Guarantees:

    * never raises because the model does not fit: then ``metrics["does_not_fit"] == 1``,
      ``num_examples == 0`` and the model, mask and method state are returned unchanged;
    * the returned model is compact for the returned mask, which is a subset of ``mask``; the
      input ``model`` object may have been trained in place when no neuron was removed;
    * every measured step peak is <= ``budget_bytes`` or counted in ``metrics["violations"]``;
    * the batch size is recomputed (``max_batch_size``) at the start and after every structural
      change; methods' hooks run every step/epoch; all ``requires_grad`` flags are restored;
    * ``metrics`` is flat and JSON-able; ``method_state`` holds only numpy arrays and scalars.

    Raises ``ValueError`` for an invalid config, method name or round index.
    """
    t_start = time.perf_counter()
    cfg.validate()
    names = parse_methods(methods if isinstance(methods, str) else "+".join(methods) or "none")
    if not 0 <= round_idx < num_rounds:
        raise ValueError(f"round_idx={round_idx} must be in [0, num_rounds={num_rounds})")
    if budget_bytes is not None:
        budget_bytes = max(0, int(budget_bytes))
    objs = build_methods(names, method_cfgs)
    ctx = TrainContext(model, mask, graph, data, cfg, round_idx, num_rounds, budget_bytes)
    model.train()
    trainer = _Trainer(ctx, objs, epoch_callback)
    from fedprune.methods.dynhp import count_params_for

    base: dict[str, Any] = {
        "methods": "+".join(names) if names else "none",
        "budget_bytes": int(budget_bytes) if budget_bytes is not None else 0,
        "params_dense": count_params_for(graph, graph.full_mask()),
        "neurons_dense": int(mask.num_total()),
    }

    def not_fit(reason: str) -> TrainResult:
        trainer.report.mark_does_not_fit(reason)
        try:
            pred = trainer.predicted_peak(cfg.min_batch)
        except Exception:  # pragma: no cover - the estimate itself failed
            pred = 0
        metrics = {**base, "does_not_fit": 1, "does_not_fit_reason": reason, "num_examples": 0,
                   "predicted_peak_bytes": int(pred), "measured_peak_bytes": 0, "utilization": 0.0,
                   "batch_sizes": "", "batch_min": 0, "batch_max": 0, "batch_final": 0,
                   "violations": 0, "oom_events": int(trainer.stats["oom_events"]),
                   "neurons_pruned": 0, "neurons_alive": int(mask.num_alive()),
                   "params_alive": _params(model), "wall_seconds": time.perf_counter() - t_start}
        metrics.update(trainer.report.to_metrics())
        return TrainResult(model, mask, 0, metrics, dict(method_state or {}))

    for m in objs:
        m.load_state_dict(_split_state(method_state, m.name))
    ctx.sites = build_sites(graph, model, mask)  # methods' state sizes depend on them
    batch = trainer.fit_batch()
    if batch == 0:
        return not_fit(f"min_batch={cfg.min_batch} does not fit budget_bytes={budget_bytes}")

    ctx.batch_size = batch
    trainer.build_optimizer()
    trainer.set_batch(batch)
    for m in objs:
        m.begin(ctx)
    trainer._ref_flops = _dense_reference_flops(graph, trainer._example())
    trainer.bind()
    neurons_before = mask.num_alive()
    try:
        train_loss, train_acc = trainer.run()
    finally:
        for m in objs:
            m.detach(ctx)
        for p in ctx.model.parameters():
            p.requires_grad_(True)
    st = trainer.stats
    if trainer.out_of_memory and st["steps"] == 0:
        return not_fit("out of memory at min_batch")
    ctx.model.train()
    val_loss, val_acc = evaluate(ctx.model, ctx.val_x, ctx.val_y, ctx.eval_batch)
    samples = max(1, st["samples"])
    rep = trainer.report
    metrics = {
        **base,
        "does_not_fit": 0,
        "num_examples": int(len(data.train_x)),
        "train_loss": float(train_loss), "train_accuracy": float(train_acc),
        "val_loss": float(val_loss), "val_accuracy": float(val_acc),
        "predicted_peak_bytes": int(rep.predicted_peak_bytes or 0),
        "measured_peak_bytes": int(rep.measured_peak_bytes or 0),
        "measured_peak_last_bytes": int(st.get("last_measured_peak_bytes", 0)),
        "utilization": float((rep.measured_peak_bytes or 0) / budget_bytes) if budget_bytes else 0.0,
        "memory_measurements": int(st["measurements"]),
        "memory_calibration": float(trainer.calibration),
        "violations": int(st["violations"]),
        "max_violation_bytes": int(st["max_violation_bytes"]),
        "oom_events": int(st["oom_events"]),
        "oom_stopped": int(trainer.out_of_memory),
        "batch_sizes": ",".join(str(b) for b in trainer.batches),
        "batch_min": int(min(trainer.batches)), "batch_max": int(max(trainer.batches)),
        "batch_final": int(ctx.batch_size),
        "lr_final": float(ctx.optimizer.param_groups[0]["lr"]),
        "steps": int(st["steps"]), "samples_seen": int(st["samples"]),
        "bprop_flops_dense": float(st["flops_dense"] / samples),
        "bprop_flops_unfrozen": float(st["flops_unfrozen"] / samples),
        "bprop_flops": float(st["flops"] / samples),
        "bprop_flops_saved_frac": float(1.0 - st["flops"] / st["flops_dense"]) if st["flops_dense"] else 0.0,
        "bprop_flops_frozen_saved_frac": (float(1.0 - st["flops"] / st["flops_unfrozen"])
                                          if st["flops_unfrozen"] else 0.0),
        "bprop_flops_saved_per_step": float((st["flops_dense"] - st["flops"]) / max(1, st["steps"])),
        "backward_seconds": float(st["backward_seconds"]),
        "step_seconds": float(st["step_seconds"]),
        "structural_changes": int(st["structural_changes"]),
        "neurons_pruned": int(neurons_before - ctx.mask.num_alive()),
        "neurons_alive": int(ctx.mask.num_alive()),
        "params_alive": _params(ctx.model),
        "nonzero_params": _nonzero_params(ctx.model),
    }
    metrics["compression"] = float(metrics["params_dense"] / max(1, metrics["params_alive"]))
    metrics.update(rep.to_metrics())
    for m in objs:
        metrics.update(m.metrics(ctx))
    metrics["wall_seconds"] = float(time.perf_counter() - t_start)
    state: dict[str, Any] = {}
    for m in objs:
        state.update({f"{m.name}/{k}": v for k, v in m.state_dict().items()})
    return TrainResult(ctx.model, ctx.mask, int(len(data.train_x)), metrics, state)


# ---------------------------------------------------------------------------------------------
# centralized mode


def machine_info() -> dict[str, Any]:
    """Where a run happened: platform, CPU model and count, RAM, torch version and threads, load,
    UTC date. Every benchmark JSON states this."""
    import datetime

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import psutil

        ram = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        ram = 0
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(), "cpu_model": cpu,
        "cores": os.cpu_count(), "cpu_count": os.cpu_count(), "ram_bytes": ram,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_centralized(model_name: str, cfg: TrainConfig, methods: list[str] | str = "none",
                    method_cfgs: Mapping[str, Any] | None = None, budget_bytes: int | None = None,
                    epochs: int | None = None, *, dataset: str = "fashion-mnist", data_dir: str | None = None,
                    val_fraction: float = 0.1, max_train_samples: int = 0, max_test_samples: int = 0,
                    eval_test_every_epoch: bool = True, train=None, test=None,
                    log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], TrainResult]:
    """Like :func:`train_centralized` but also returns the :class:`TrainResult` (model, mask)."""
    from fedprune.data import dataset_info, load_dataset, train_val_split
    from fedprune.models import build_model, example_input
    from fedprune.surgery import NeuronGraph, NeuronMask, format_neurons, neurons_per_layer

    t0 = time.perf_counter()
    names = parse_methods(methods if isinstance(methods, str) else "+".join(methods) or "none")
    if epochs is not None:
        cfg = TrainConfig(**{**cfg.__dict__, "epochs": int(epochs)})
    cfg.validate()
    info = dataset_info(dataset)
    if train is None or test is None:
        train, test = load_dataset(dataset, data_dir)
    idx = np.arange(len(train))
    if max_train_samples and max_train_samples < len(idx):
        idx = np.random.default_rng(cfg.seed).permutation(idx)[:max_train_samples]
    tr_idx, va_idx = train_val_split(idx, val_fraction, seed=cfg.seed)
    tr, va = train.subset(tr_idx), train.subset(va_idx)
    if max_test_samples and max_test_samples < len(test):
        test = test.subset(np.arange(max_test_samples))
    data = ClientData(tr.x, tr.y, va.x, va.y)
    dense = build_model(model_name, info.channels, info.num_classes, info.image_size, seed=cfg.seed)
    graph = NeuronGraph.from_model(dense, example_input(info.channels, info.image_size))
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    history: list[dict[str, Any]] = []

    def on_epoch(epoch: int, ctx: TrainContext, m: dict) -> None:
        row = {"epoch": epoch + 1, **m, "batch": ctx.batch_size, "params_alive": _params(ctx.model),
               "nonzero_params": _nonzero_params(ctx.model),
               "neurons": format_neurons(neurons_per_layer(ctx.graph, ctx.mask)),
               "wall_seconds": time.perf_counter() - t0}
        if ctx.frozen_fraction:
            row["frozen_fraction"] = {k: round(v, 4) for k, v in ctx.frozen_fraction.items()}
        row["val_loss"], row["val_accuracy"] = evaluate(ctx.model, ctx.val_x, ctx.val_y)
        if eval_test_every_epoch:
            row["test_loss"], row["test_accuracy"] = evaluate(ctx.model, test.x, test.y)
        history.append(row)
        if log is not None:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    res = train_local(model, mask, graph, data, cfg, names, method_cfgs, budget_bytes, None, 0, 1,
                      epoch_callback=on_epoch)
    if eval_test_every_epoch and len(history) == cfg.epochs:  # the last row scored this very model
        test_loss, test_acc = history[-1]["test_loss"], history[-1]["test_accuracy"]
    else:
        test_loss, test_acc = evaluate(res.model, test.x, test.y)
    out = {
        "model": model_name, "dataset": dataset, "methods": "+".join(names) if names else "none",
        "epochs": cfg.epochs, "budget_bytes": int(budget_bytes or 0),
        "train_samples": len(tr), "val_samples": len(va), "test_samples": len(test),
        "test_loss": float(test_loss), "test_accuracy": float(test_acc),
        "neurons_dense": format_neurons(neurons_per_layer(graph)),
        "neurons": format_neurons(neurons_per_layer(graph, res.mask)),
        "params_dense": _params(dense), "params_alive": _params(res.model),
        "nonzero_params": _nonzero_params(res.model),
        "compression": _params(dense) / max(1, _params(res.model)),
        "nonzero_compression": _params(dense) / max(1, _nonzero_params(res.model)),
        "does_not_fit": int(res.metrics.get("does_not_fit", 0)),
        "history": history, "metrics": res.metrics, "machine": machine_info(),
        "wall_seconds": time.perf_counter() - t0,
        "train_config": {**{k: v for k, v in cfg.__dict__.items() if k != "optimizer"},
                         "optimizer": dict(cfg.optimizer.__dict__)},
    }
    return out, res


def train_centralized(model_name: str, cfg: TrainConfig, methods: list[str] | str = "none",
                      method_cfgs: Mapping[str, Any] | None = None, budget_bytes: int | None = None,
                      epochs: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Centralized mode (``fedprune train CONFIG``): the same trainer on one device, no federation.

    Splits the full training set of ``dataset`` (``val_fraction`` held out for validation, seeded
    by ``cfg.seed``), builds ``model_name`` dense, runs :func:`train_local` for ``epochs`` (default
    ``cfg.epochs``) epochs as a single round, and evaluates on the test set. Keyword options:
    ``dataset``, ``data_dir``, ``val_fraction``, ``max_train_samples``, ``max_test_samples``,
    ``eval_test_every_epoch``, ``train``/``test`` (pre-loaded TensorPairs), ``log`` (a callable
    receiving one line per epoch).

    Returns a JSON-able dict: test loss/accuracy, neuron counts (SeReNe-table form), parameter
    counts and compression, per-epoch ``history``, the trainer's ``metrics`` and ``machine`` info.
    """
    return run_centralized(model_name, cfg, methods, method_cfgs, budget_bytes, epochs, **kwargs)[0]
