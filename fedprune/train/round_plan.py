"""The methods' round plans (:class:`~fedprune.methods.base.RoundPlan`), applied before the batch fit.

Baselines decide per round what a client trains: a sub-network (HeteroFL's nested width, FedRolex's
rolling window, one small model for all), a fixed batch (no batch fitting), no budget at all, or
skipping the round. The plans of all enabled methods combine: masks intersect, flags are or-ed and
the first skip reason wins. When the trainer then finds no batch that fits, a method may offer a
smaller sub-network (``Method.smaller_plan``: the next HeteroFL/FedRolex width) before the client
skips (:func:`fit_batch_or_shrink`).
"""

from __future__ import annotations

import dataclasses

from fedprune.methods.base import RoundPlan
from fedprune.methods.sites import build_sites


def combined_plan(methods: list, ctx) -> RoundPlan:
    """One plan from every method's ``plan_round(ctx)`` (masks intersected, flags or-ed)."""
    mask, fixed, unbounded, skip = None, False, False, ""
    for m in methods:
        plan = m.plan_round(ctx)
        if plan is None:
            continue
        if plan.mask is not None:
            mask = plan.mask if mask is None else mask & plan.mask
        fixed, unbounded = fixed or plan.fixed_batch, unbounded or plan.unbounded
        skip = skip or plan.skip
    return RoundPlan(mask, fixed, unbounded, skip)


def apply_round_plan(trainer) -> str:
    """Apply the methods' combined plan to ``trainer.ctx``; returns a skip reason ("" to train).

    Guarantees: afterwards ``ctx.model`` is compact for ``ctx.mask`` (a subset of the received
    mask) and ``ctx.sites`` match it; with ``fixed_batch`` the batch can only be ``cfg.batch_size``;
    with ``unbounded`` the context has no budget.
    """
    ctx = trainer.ctx
    plan = combined_plan(trainer.methods, ctx)
    if plan.skip:
        return plan.skip
    if plan.mask is not None:
        _restrict(ctx, plan.mask)
    if plan.unbounded:
        ctx.budget_bytes = None
    if plan.fixed_batch:
        b = ctx.cfg.batch_size
        ctx.cfg = dataclasses.replace(ctx.cfg, min_batch=b, max_batch=b)
    return ""


def _restrict(ctx, mask) -> None:
    """Prune ``ctx.model`` to ``mask & ctx.mask`` (a no-op when that is ``ctx.mask``)."""
    new_mask = mask & ctx.mask
    if new_mask != ctx.mask:
        ctx.model = ctx.graph.prune(ctx.model, ctx.mask, new_mask)
        ctx.mask = new_mask
        ctx.model.train()
        ctx.sites = build_sites(ctx.graph, ctx.model, ctx.mask)


def fit_batch_or_shrink(trainer) -> int:
    """The trainer's fitted batch (0: none fits); while none fits, the methods' ``smaller_plan``
    masks are applied one after the other and the batch is fitted again.

    The fit is the trainer's own (the budget as the process's resident memory counts it), so a
    sub-network chosen by the tensor estimate alone shrinks further instead of skipping the round.
    """
    ctx = trainer.ctx
    batch = trainer.budget.fit_batch()
    while batch == 0:
        smaller = next((m for m in (meth.smaller_plan(ctx) for meth in trainer.methods) if m is not None), None)
        if smaller is None or (smaller & ctx.mask) == ctx.mask:
            return 0
        _restrict(ctx, smaller)
        batch = trainer.budget.fit_batch()
    return batch
