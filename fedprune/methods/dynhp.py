"""DynHP (dynamic hard pruning): remove the least useful neurons on a schedule, physically.

Schedule. The fraction of the dense model's parameters to keep at total training progress ``p``
(``p = (round_idx * epochs + epoch + fraction of the epoch) / (num_rounds * epochs)``) is
``kept_fraction(p)`` (cubic by default, see :func:`~fedprune.methods.schedules.kept_fraction`); it
reaches ``1 - target_compression`` at ``end_progress`` and stays there. A pruning event happens
``prunes_per_epoch`` times per local epoch, at the middle of each of ``prunes_per_epoch`` equal
slices of the epoch, so every event is followed by training steps (a client never uploads a model
pruned after its last step). Optimizer state (momentum) of the surviving neurons is carried across
each removal (:mod:`~fedprune.methods.optim_carry`).

Memory at the run's own batch: the freed memory goes into the batch, so the saving that matters is
what the *dense* model would need at the batch the pruned model trained with; ``metrics`` reports
both estimated step peaks at the final batch (``dynhp_dense_peak_at_batch_bytes``,
``dynhp_peak_at_batch_bytes``) and the fraction saved.

Score (the brief leaves it open; this is the choice). ``taylor`` (default): the first-order Taylor
estimate of the loss change when the neuron's output is removed, measured on ``score_samples``
validation samples in eval mode, ``score_n = mean_samples |sum_{positions, output modules}
a_n * dL/da_n|`` (Molchanov et al., 2017), then divided by the L2 norm of the group's scores so
that layers of different scale compete in one global ranking. ``l2``: the L2 norm of the neuron's
parameter slices, normalised the same way (free, but blind to the data).

Selection (``allocation``). ``uniform`` (default): every group keeps the same fraction ``k`` of its
dense size, its best-scored neurons, with ``k`` the largest value (bisection on exact parameter
counts of the candidate compact models) meeting the schedule's parameter target. Shrinking every
layer shrinks the activations too, which dominate training memory in conv nets: a global ranking
prunes the cheap-to-keep, parameter-heavy fully connected neurons first and leaves the first
convolutions (and most of the memory) intact. ``global``: alive neurons in increasing normalised
score order (never leaving a group with fewer than ``min_neurons``), the smallest prefix meeting
the target. The mask is returned to the trainer, which removes the neurons with
``graph.prune`` (memory is freed at once) and recomputes the batch size for the budget.
"""

from __future__ import annotations

import math

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.methods.base import Method
from fedprune.methods.config import DynHPConfig
from fedprune.methods.optim_carry import restore_rows, save_rows
from fedprune.methods.schedules import kept_fraction
from fedprune.methods.serene import site_norms


def count_params_for(graph, mask) -> int:
    """Parameters of the compact model for ``mask`` (built on the meta device: no allocation)."""
    try:
        model = graph.build_compact(mask, device="meta")
    except Exception:  # pragma: no cover - fall back to a real (small) build
        model = graph.build_compact(mask)
    return int(sum(p.numel() for p in model.parameters()))


def taylor_scores(ctx, samples: int) -> dict[str, np.ndarray]:
    """Raw Taylor scores ``(alive,)`` per group on the first ``samples`` validation samples."""
    x = ctx.val_x[:samples]
    y = ctx.val_y[:samples]
    by_module: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for g, site in ctx.sites.items():
        for mname, pos in site.outputs:
            by_module.setdefault(mname, []).append((g, pos))
    modules = dict(ctx.model.named_modules())
    totals = {g: torch.zeros(len(s.alive), dtype=torch.float64) for g, s in ctx.sites.items()}
    state: dict[str, Any] = {"first": None, "chunk": {}}

    def hook(entries):
        def fn(mod, inp, out):
            if not out.requires_grad:
                return
            if state["first"] is None:
                state["first"] = out
            act = out.detach()

            def grad_hook(grad):
                contrib = act * grad
                per = contrib.sum(dim=tuple(range(2, contrib.dim()))) if contrib.dim() > 2 else contrib
                for g, pos in entries:
                    v = per.index_select(1, pos).double()
                    acc = state["chunk"]
                    acc[g] = acc[g] + v if g in acc else v
                return None

            out.register_hook(grad_hook)
        return fn

    handles = [modules[m].register_forward_hook(hook(e)) for m, e in by_module.items()]
    was_training = ctx.model.training
    flags = [(p, p.requires_grad) for p in ctx.model.parameters()]
    for p, _ in flags:  # NEq may have switched gradients off; scores need every path
        p.requires_grad_(True)
    ctx.model.eval()
    try:
        bs = max(1, int(ctx.eval_batch))
        for i in range(0, len(x), bs):
            state["first"], state["chunk"] = None, {}
            with torch.enable_grad():
                out = ctx.model(x[i: i + bs])
                loss = F.cross_entropy(out, y[i: i + bs], reduction="sum")
                if state["first"] is not None:
                    torch.autograd.grad(loss, state["first"])
            for g, v in state["chunk"].items():
                totals[g] += v.abs().sum(dim=0)
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        ctx.model.train(was_training)
        state["first"], state["chunk"] = None, {}
    n = max(1, len(x))
    return {g: (t / n).numpy() for g, t in totals.items()}


def peaks_at_batch(ctx) -> tuple[int, int]:
    """Estimated step peaks ``(dense model, current model)`` at the current batch (plain SGD step).

    The dense model is built on the ``meta`` device: the estimate needs its shapes only, and a
    client inside its budget has no room for a dense copy."""
    from fedprune.memory import estimate_training_memory

    dense = ctx.graph.build_compact(ctx.graph.full_mask(), device="meta")
    b, shape, opt = int(ctx.batch_size), ctx.input_shape, ctx.cfg.optimizer
    return (int(estimate_training_memory(dense, b, shape, opt).total_bytes),
            int(estimate_training_memory(ctx.model, b, shape, opt).total_bytes))


def normalize_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Divide each group's scores by their L2 norm (all-zero groups stay zero)."""
    out = {}
    for g, s in scores.items():
        s = np.asarray(s, np.float64)
        n = float(np.linalg.norm(s))
        out[g] = s / n if n > 0 else s
    return out


class DynHP(Method):
    """Scheduled, score-ranked physical neuron removal (see module docstring)."""

    name = "dynhp"

    def __init__(self, cfg: DynHPConfig):
        super().__init__(cfg)
        self.events = 0
        self.removed = 0
        self.last_target = 1.0
        self._cut = 1
        self._dense_params: int | None = None

    def prune_to_fit_floor(self) -> int:
        """DynHP prunes further when memory is short, down to ``min_neurons`` per group."""
        return int(self.cfg.min_neurons)

    def begin(self, ctx) -> None:
        """Count the dense model's parameters (the schedule's reference)."""
        from fedprune.surgery import NeuronMask

        self._dense_params = count_params_for(ctx.graph, NeuronMask.full(ctx.graph))

    def detach(self, ctx) -> None:
        """Keep the optimizer state of the current model (dense-indexed) for the next ``attach``."""
        self._carry = save_rows(ctx.mask, ctx.model, ctx.optimizer)

    def attach(self, ctx) -> None:
        """Give the surviving neurons of the new model their optimizer state back."""
        carry, self._carry = getattr(self, "_carry", {}), {}
        if carry:
            restore_rows(ctx.graph, ctx.mask, ctx.model, ctx.optimizer, carry)

    def epoch_start(self, ctx):
        """Reset the within-epoch pruning points; prune now when the epoch is a single step."""
        self._cut = 1
        return self.prune_now(ctx) if self._due(ctx) else None

    def step_end(self, ctx):
        """At the middle of each of the ``prunes_per_epoch`` slices of the epoch, prune toward the
        schedule (never after the epoch's last step)."""
        return self.prune_now(ctx) if self._due(ctx) else None

    def _due(self, ctx) -> bool:
        """Whether a pruning point has been reached at this step boundary (and consume it).

        Point ``c`` of ``k`` lies at epoch fraction ``(c - 0.5) / k``. A point that falls inside the
        epoch's last step is moved to the boundary before that step, so every event is followed by
        training (an epoch of one step prunes before it).
        """
        k, f = self.cfg.prunes_per_epoch, ctx.epoch_fraction
        if f >= 1.0:
            return False
        n, b = max(1, len(ctx.train_x)), max(1, int(ctx.batch_size))
        last_start = (math.ceil(n / b) - 1) * b / n  # where the epoch's final step begins
        reach = 1.0 if f >= last_start - 1e-9 else f  # before the last step: every point left
        fire = False
        while self._cut <= k and reach >= (self._cut - 0.5) / k - 1e-9:
            self._cut += 1
            fire = True
        return fire

    def target_params(self, progress: float) -> int:
        """Parameters allowed at ``progress`` by the schedule."""
        c = self.cfg
        keep = kept_fraction(progress, c.target_compression, c.start_progress, c.end_progress, c.schedule)
        self.last_target = keep
        return int(np.floor(keep * (self._dense_params or 0)))

    def prune_now(self, ctx):
        """One pruning event at the current progress; returns the new mask or None."""
        target = self.target_params(ctx.progress)
        current = count_params_for(ctx.graph, ctx.mask)
        if current <= target:
            return None
        if self.cfg.score == "taylor":
            raw = taylor_scores(ctx, self.cfg.score_samples)
        else:
            raw = {g: site_norms(s) for g, s in ctx.sites.items()}
        if self.cfg.allocation == "uniform":
            new = self._uniform(ctx, raw, target)
        else:
            new = self._global(ctx, normalize_scores(raw), target)
        if new is None:
            return None
        self.events += 1
        self.removed += ctx.mask.num_alive() - new.num_alive()
        return new

    def _mask(self, ctx, drop: dict[str, np.ndarray]):
        """The current mask without the alive-local indices ``drop[g]`` of each group."""
        from fedprune.surgery import NeuronMask

        arrays = ctx.mask.to_arrays()
        for g, local in drop.items():
            arrays[g][ctx.sites[g].alive[np.asarray(local, dtype=np.int64)]] = False
        return NeuronMask.from_arrays(ctx.graph, arrays)

    def _uniform(self, ctx, raw: dict[str, np.ndarray], target: int):
        """Every group keeps the same fraction ``k`` of its dense size (its best-scored neurons).

        ``k`` is the largest value (bisection) whose compact model has at most ``target`` params.
        """
        order = {g: np.argsort(np.asarray(raw[g]), kind="stable") for g in ctx.sites}  # worst first

        def drop_for(k: float) -> dict[str, np.ndarray]:
            drop = {}
            for g, site in ctx.sites.items():
                keep = max(min(self.cfg.min_neurons, len(site.alive)), int(np.ceil(k * site.dense_size)))
                n_drop = max(0, len(site.alive) - keep)
                drop[g] = order[g][:n_drop]
            return drop

        lo, hi = 0.0, 1.0  # invariant: params at k = lo meet the target
        if count_params_for(ctx.graph, self._mask(ctx, drop_for(0.0))) > target:
            k = 0.0  # even the minimum does not reach the target: go to the minimum
        else:
            for _ in range(20):
                mid = 0.5 * (lo + hi)
                if count_params_for(ctx.graph, self._mask(ctx, drop_for(mid))) <= target:
                    lo = mid
                else:
                    hi = mid
            k = lo
        drop = drop_for(k)
        if not any(len(v) for v in drop.values()):
            return None
        return self._mask(ctx, drop)

    def _global(self, ctx, scores: dict[str, np.ndarray], target: int):
        """Remove neurons in increasing normalised score until the params target is met."""
        order = sorted(((float(v), g, i) for g, s in scores.items() for i, v in enumerate(s)),
                       key=lambda t: (t[0], t[1], t[2]))
        left = {g: len(s.alive) for g, s in ctx.sites.items()}
        removable: list[tuple[str, int]] = []
        for _, g, i in order:
            floor = min(self.cfg.min_neurons, len(ctx.sites[g].alive))
            if left[g] - 1 >= max(1, floor):
                left[g] -= 1
                removable.append((g, i))
        if not removable:
            return None

        def mask_for(k: int):
            drop: dict[str, list[int]] = {}
            for g, i in removable[:k]:
                drop.setdefault(g, []).append(i)
            return self._mask(ctx, drop)

        lo, hi = 1, len(removable)
        if count_params_for(ctx.graph, mask_for(hi)) > target:
            lo = hi  # cannot reach the target this time: remove everything allowed
        while lo < hi:
            mid = (lo + hi) // 2
            if count_params_for(ctx.graph, mask_for(mid)) <= target:
                hi = mid
            else:
                lo = mid + 1
        return mask_for(lo)

    def metrics(self, ctx) -> dict[str, Any]:
        """Events, neurons removed, the schedule's last kept fraction and the compression reached."""
        alive = count_params_for(ctx.graph, ctx.mask)
        dense = self._dense_params or alive
        dense_peak, peak = peaks_at_batch(ctx)
        return {
            "dynhp_dense_peak_at_batch_bytes": int(dense_peak),
            "dynhp_peak_at_batch_bytes": int(peak),
            "dynhp_memory_saved_at_batch_frac": float(1.0 - peak / dense_peak) if dense_peak else 0.0,
            "dynhp_events": int(self.events),
            "dynhp_neurons_removed": int(self.removed),
            "dynhp_target_kept_frac": float(self.last_target),
            "dynhp_kept_params_frac": float(alive / max(1, dense)),
            "dynhp_compression": float(dense / max(1, alive)),
        }
