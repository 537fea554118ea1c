"""The local training loop: epochs of steps over one client's data, calling the methods' hooks.

The loop knows no method by name: at fixed points it calls every enabled method's hooks (see
:mod:`fedprune.methods.base`), applies the masks they return (physical neuron removal through
``graph.prune``, then the optimizer, the sites and the batch are rebuilt) and asks
:class:`~fedprune.train.budgeting.BatchBudget` for the batch size and memory accounting. Memory is
measured on one step after every change of structure, batch size or frozen set (the second step
after an optimizer rebuild, so that its state is live, as in every later step).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedprune.memory.process import trim_heap
from fedprune.methods.flops import bprop_flops, dense_bprop_flops, layer_costs
from fedprune.methods.sites import build_sites
from fedprune.train.budgeting import BatchBudget
from fedprune.train.context import TrainContext
from fedprune.train.evaluation import model_device


class LocalTrainer:
    """The state of one ``train_local`` call: the context, the methods, the budget and the counters
    (steps, samples, backward time, backprop FLOPs, structural changes)."""

    def __init__(self, ctx: TrainContext, methods: list, epoch_callback=None):
        self.ctx = ctx
        self.methods = methods
        self.epoch_callback = epoch_callback
        self.budget = BatchBudget(ctx, methods)
        self.stats: dict[str, Any] = {
            "structural_changes": 0, "steps": 0, "samples": 0, "backward_seconds": 0.0, "step_seconds": 0.0,
            "flops_dense": 0.0, "flops_unfrozen": 0.0, "flops": 0.0,
        }
        self.dense_reference_flops = 0
        self._costs = None
        self._dense_costs = None
        self._trainable: dict[str, bool] = {}
        self.out_of_memory = False

    # -- structure ------------------------------------------------------------------------
    def build_optimizer(self) -> None:
        """A fresh optimizer for the current model at the current learning rate."""
        ctx = self.ctx
        ctx.optimizer = ctx.cfg.optimizer.build(ctx.model.parameters(), self.budget.current_lr())
        self.budget.fresh_optimizer = True

    def bind(self) -> None:
        """(Re)build sites and dense FLOPs costs for the current model, then attach methods."""
        ctx = self.ctx
        ctx.sites = build_sites(ctx.graph, ctx.model, ctx.mask)
        self._dense_costs = layer_costs(ctx.model, self.example())
        ctx.frozen_fraction = {}
        ctx.costs_changed()
        for m in self.methods:
            m.attach(ctx)

    def apply_mask(self, new_mask) -> None:
        """Physically remove ``ctx.mask & ~new_mask``, rebuild optimizer/sites, return the freed heap
        to the kernel, recompute the batch."""
        ctx = self.ctx
        if new_mask is None:
            return
        new_mask = new_mask & ctx.mask
        if new_mask == ctx.mask:
            return
        for m in self.methods:
            m.detach(ctx)
        # The optimizer and the sites hold the old parameters: released here (a method that carries
        # optimizer state saved it on detach). The in-place cut drops the spent gradients before it
        # allocates anything and frees each old tensor as its layer is cut.
        ctx.optimizer, ctx.sites = None, {}
        ctx.model = ctx.graph.prune(ctx.model, ctx.mask, new_mask, in_place=True)
        ctx.mask = new_mask
        ctx.model.train()
        self.build_optimizer()
        self.stats["structural_changes"] += 1
        self.bind()
        trim_heap()  # the old model's and optimizer's freed blocks go back to the kernel before the refit
        self.budget.refit()

    def example(self) -> torch.Tensor:
        """Two training samples on the model's device (for shape-only passes)."""
        return self.ctx.train_x[:2].to(model_device(self.ctx.model))

    # -- one step -------------------------------------------------------------------------
    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, int]:
        """One optimizer step with every method's step hooks; returns (loss, correct predictions)."""
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

    def _costs_now(self):
        ctx = self.ctx
        if ctx._costs_dirty or self._costs is None:
            self._costs = layer_costs(ctx.model, self.example())
            self._trainable = {n: bool(m.weight.requires_grad) for n, m in ctx.model.named_modules()
                               if isinstance(m, (nn.Conv2d, nn.Linear))}
            ctx._costs_dirty = False
        return self._costs

    def account(self, batch: int) -> None:
        """Count a step of ``batch`` samples and its backprop FLOPs (dense, unfrozen, actual)."""
        costs = self._costs_now()
        self.stats["flops_dense"] += self.dense_reference_flops * batch
        self.stats["flops_unfrozen"] += dense_bprop_flops(self._dense_costs) * batch
        self.stats["flops"] += bprop_flops(costs, self.ctx.frozen_fraction, self._trainable) * batch
        self.stats["steps"] += 1
        self.stats["samples"] += batch

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> tuple[float, float]:
        """All local epochs; returns the last epoch's (train loss, train accuracy).

        Stops early, with ``out_of_memory`` set, when even the minimum batch runs out of memory.
        """
        ctx = self.ctx
        gen = torch.Generator().manual_seed(int(ctx.cfg.seed) * 1_000_003 + int(ctx.round_idx))
        last = (float("nan"), float("nan"))
        for epoch in range(ctx.cfg.epochs):
            ctx.epoch, ctx.epoch_fraction = epoch, 0.0
            for m in self.methods:
                self.apply_mask(m.epoch_start(ctx))
            if ctx.refit_batch:
                self.budget.refit()
            epoch_result = self._epoch(torch.randperm(len(ctx.train_x), generator=gen))
            if epoch_result is None:
                return last
            ctx.epoch_fraction = 1.0
            for m in self.methods:
                self.apply_mask(m.epoch_end(ctx))
            last = epoch_result
            if self.epoch_callback is not None:
                self.epoch_callback(epoch, ctx, {"train_loss": last[0], "train_accuracy": last[1]})
        return last

    def _epoch(self, perm: torch.Tensor) -> tuple[float, float] | None:
        """One pass over ``perm``; (loss, accuracy), or ``None`` when out of memory at min batch."""
        ctx, budget = self.ctx, self.budget
        n, dev = len(perm), model_device(ctx.model)
        pos, loss_sum, correct, seen = 0, 0.0, 0, 0
        while pos < n:
            budget.guard_held()
            b = min(ctx.batch_size, n - pos)
            if b < 2 and pos > 0:  # a trailing batch of one (BatchNorm cannot train on it)
                break
            idx = perm[pos: pos + b]
            if budget.lr_follows_progress():
                budget.update_lr()
            measure = budget.should_measure(b, self.stats["steps"])

            def run_step(bb: int, idx=idx, measure=measure):
                xb, yb = ctx.train_x[idx[:bb]].to(dev), ctx.train_y[idx[:bb]].to(dev)
                return budget.measured(self.step, xb, yb, self.stats["steps"]) if measure else self.step(xb, yb)

            result, b = budget.guarded(run_step, b)
            if b == 0:  # even the minimum batch ran out of memory: stop here
                self.out_of_memory = True
                return None
            loss, corr = result
            budget.fresh_optimizer = False
            self.account(b)
            loss_sum, correct, seen, pos = loss_sum + loss * b, correct + corr, seen + b, pos + b
            ctx.epoch_fraction = pos / n
            for m in self.methods:
                self.apply_mask(m.step_end(ctx))
            if ctx.refit_batch:
                budget.refit()
        return loss_sum / max(1, seen), correct / max(1, seen)
