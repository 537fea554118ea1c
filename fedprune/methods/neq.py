"""NEq (Neurons at Equilibrium): stop updating neurons whose function stopped changing.

Per neuron ``i`` and evaluation ``t`` (the start of every local epoch):

* ``phi_i^t`` = cosine similarity between the neuron's outputs on a fixed validation subset at ``t``
  and at the previous evaluation (outputs flattened over samples and spatial positions);
* velocity ``v_i^t = (phi_i^t - phi_i^{t-1}) - mu_eq * v_i^{t-1}`` with ``phi^{-1} = v^{-1} = 0``,
  which unrolls exactly to eq. 3 of the paper (``v^t = phi^t + sum_a (-1)^a (mu^{a-1} + mu^a)
  phi^{t-a}``; for ``mu_eq = 0`` it is ``phi^t - phi^{t-1}``);
* the neuron is frozen for the coming epoch iff ``|v_i^t| < eps`` and ``v_i^t`` is a real velocity,
  i.e. the neuron has at least two measured similarities (``phi^t`` and ``phi^{t-1}``). The first
  similarity alone gives ``v = phi^t - 0``, which is below ``eps`` only when the outputs turned
  (near-)orthogonal -- maximal change, not equilibrium -- so no neuron freezes before the third
  evaluation it takes part in. The flags are recomputed at every evaluation: a frozen neuron whose
  velocity rises again (its inputs keep changing) thaws.

A frozen neuron gets no optimizer update, and its gradient is not computed:

* a parameter whose slices are all frozen gets ``requires_grad=False`` (``skip_layer_grad``); when
  the leading layers are wholly frozen their outputs need no gradient, so autograd never enters them;
* a Conv2d/Linear layer with some frozen output neurons computes its weight gradient for the active
  rows only (:mod:`~fedprune.methods.partial_grad`) when that spares the kernel at least one block of
  rows (``partial_grad.saves_a_block``); the frozen rows get ``-weight_decay * w``, which cancels the
  optimizer's decay term (SGD, Adam), so their update is exactly zero;
* any other frozen slice (BatchNorm affine, depthwise rows, a layer whose frozen rows fill no kernel
  block) gets the same value from a gradient hook: its gradient is computed, then replaced.

``ctx.frozen_fraction`` (the backprop-FLOPs accounting) counts only the weight-gradient rows that are
not computed: the frozen rows of partial-path layers and whole layers without ``requires_grad``. Rows
frozen through a hook are frozen, but their gradient was computed, so they save nothing.

Momentum rows of frozen neurons (``momentum_buffer``, Adam's ``exp_avg``) are zeroed once when they
freeze, so they stay zero and nothing carries over when the neuron thaws. Nothing is copied per step.
Other methods' own weight edits (SeReNe's decay) still apply to frozen neurons.

Stochastic control (``mode = "stochastic"``, the paper's Table 5): at every epoch each neuron is
frozen with probability ``stochastic_p``, independently of its velocity.

State (dense-relative, so it survives rounds and structural changes) is plain numpy: previous outputs
(float16), previous ``phi``, velocity, frozen flags and the number of measured similarities per
group, and the evaluation count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.methods.base import Method
from fedprune.methods import partial_grad
from fedprune.methods.config import NEqConfig

MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def neutral_decay(optimizer) -> float:
    """The weight decay a frozen row's gradient must cancel (``-wd * w``) so its update is zero.

    SGD and Adam add ``wd * w`` to the gradient; AdamW decays the weights directly, which no
    gradient can cancel (frozen rows then still decay): 0.
    """
    if optimizer is None or isinstance(optimizer, torch.optim.AdamW):
        return 0.0
    return float(optimizer.param_groups[0].get("weight_decay", 0.0) or 0.0)


def _frozen_rows_hook(param: torch.nn.Parameter, dim: int, idx: torch.Tensor, decay: float):
    """A gradient hook giving rows ``idx`` of ``param`` the gradient ``-decay * w`` (zero update)."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        rows = param.detach().index_select(dim, idx) * (-decay) if decay else 0.0
        return grad.index_fill(dim, idx, 0.0) if not decay else grad.index_copy(dim, idx, rows)
    return hook


def velocity_step(phi: np.ndarray, phi_prev: np.ndarray, v_prev: np.ndarray, mu_eq: float) -> np.ndarray:
    """One velocity update ``v = (phi - phi_prev) - mu_eq * v_prev`` (elementwise)."""
    return (np.asarray(phi, np.float64) - phi_prev) - mu_eq * np.asarray(v_prev, np.float64)


def velocity_eq3(phis: list[float], mu_eq: float) -> float:
    """Eq. 3 of NEq evaluated literally on the history ``phis = [phi^0, ..., phi^t]`` (for tests).

    ``mu_eq != 0``: ``phi^t + sum_{a=1..t} (-1)^a (mu^{a-1} + mu^a) phi^{t-a}``;
    ``mu_eq == 0``: ``phi^t - phi^{t-1}`` (``phi^{-1} = 0``).
    """
    t = len(phis) - 1
    if mu_eq == 0:
        return float(phis[t] - (phis[t - 1] if t >= 1 else 0.0))
    v = phis[t]
    for a in range(1, t + 1):
        v += (-1) ** a * (mu_eq ** (a - 1) + mu_eq ** a) * phis[t - a]
    return float(v)


def neuron_outputs(out: torch.Tensor, max_spatial: int) -> torch.Tensor:
    """Per-neuron outputs ``(C, B * positions)`` of a ``(B, C, ...)`` tensor, spatially pooled.

    Spatial maps larger than ``max_spatial`` per side are adaptive-average-pooled down to it.
    """
    if out.dim() == 4 and max(out.shape[2], out.shape[3]) > max_spatial:
        out = F.adaptive_avg_pool2d(out, (min(out.shape[2], max_spatial), min(out.shape[3], max_spatial)))
    c = out.shape[1]
    return out.transpose(0, 1).reshape(c, -1)


def cosine_from_sums(dot: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Cosine similarity from per-row sums ``a.b``, ``|a|^2`` and ``|b|^2``; 1 when both rows are
    zero, 0 when exactly one is."""
    na, nb = np.sqrt(np.asarray(sq_a, np.float64)), np.sqrt(np.asarray(sq_b, np.float64))
    out = np.where((na > 0) & (nb > 0), np.asarray(dot, np.float64) / np.maximum(na * nb, 1e-300), 0.0)
    out = np.where((na == 0) & (nb == 0), 1.0, out)
    return np.clip(out, -1.0, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; 1 when both rows are zero, 0 when exactly one is."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return cosine_from_sums((a * b).sum(axis=1), (a * a).sum(axis=1), (b * b).sum(axis=1))


class OutputComparison:
    """One group's outputs on the validation subset, compared with the stored ones chunk by chunk.

    ``stored`` is the group's ``(dense_size, D)`` float16 record of the last evaluation (``D`` =
    samples x pooled positions, module by module), or ``None`` when there is none of that shape; it
    is overwritten in place, column block by column block, as each chunk's outputs arrive, so an
    evaluation holds the record plus one chunk's outputs and never a second copy of the record.
    """

    def __init__(self, alive: np.ndarray, stored: np.ndarray | None, dense_size: int, width: int):
        self.alive = np.asarray(alive)
        self.comparable = stored is not None and stored.shape == (dense_size, width)
        self.record = stored if self.comparable else np.zeros((dense_size, width), dtype=np.float16)
        self.sums = np.zeros((3, len(self.alive)))  # a.b, |a|^2, |b|^2 per alive neuron

    def add(self, cur: torch.Tensor, start: int) -> None:
        """Columns ``start ..`` of the alive neurons' outputs: ``cur`` is ``(alive, columns)``."""
        cols = np.arange(start, start + cur.shape[1])
        block = np.ix_(self.alive, cols)
        a = cur.double().numpy()
        if self.comparable:
            b = self.record[block].astype(np.float64)
            self.sums += np.stack([(a * b).sum(axis=1), (a * a).sum(axis=1), (b * b).sum(axis=1)])
        self.record[block] = cur.numpy().astype(np.float16)

    def similarity(self) -> np.ndarray | None:
        """Per alive neuron the cosine similarity with the stored outputs (``None``: nothing stored)."""
        return cosine_from_sums(*self.sums) if self.comparable else None


class NEq(Method):
    """Freeze neurons at equilibrium (see module docstring); never changes the structure."""

    name = "neq"

    def __init__(self, cfg: NEqConfig):
        super().__init__(cfg)
        self.evals = 0
        self.prev: dict[str, np.ndarray] = {}   # group -> (dense_size, D) float16
        self.phi: dict[str, np.ndarray] = {}    # group -> (dense_size,) float64
        self.vel: dict[str, np.ndarray] = {}
        self.frozen: dict[str, np.ndarray] = {}  # group -> (dense_size,) bool
        self.nphi: dict[str, np.ndarray] = {}   # group -> (dense_size,) int: similarities measured
        self._nograd: list[torch.nn.Parameter] = []
        self._partial: dict[str, torch.nn.Module] = {}
        self._hooks: list = []
        self._frozen_hist: list[float] = []
        self._eval_seconds = 0.0
        self._path_epochs = {"partial": 0, "nograd": 0}
        self._positions: dict[str, int] | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Flat dict: ``evals`` and per group ``prev/<g>``, ``phi/<g>``, ``vel/<g>``, ``frozen/<g>``,
        ``nphi/<g>``."""
        out: dict[str, Any] = {"evals": int(self.evals)}
        for g in self.prev:
            out[f"prev/{g}"] = self.prev[g]
        for g in self.phi:
            out[f"phi/{g}"] = self.phi[g].astype(np.float64)
            out[f"vel/{g}"] = self.vel[g].astype(np.float64)
            out[f"frozen/{g}"] = self.frozen[g].astype(bool)
            out[f"nphi/{g}"] = self._nphi(g).astype(np.int64)
        return out

    def _nphi(self, g: str) -> np.ndarray:
        """Similarities measured per neuron of ``g`` (state saved before this counter existed: assume
        every neuron with a phi has ``evals - 1`` of them)."""
        n = len(self.phi[g])
        if g not in self.nphi or self.nphi[g].shape != (n,):
            self.nphi[g] = np.full(n, max(0, self.evals - 1), dtype=np.int64)
        return self.nphi[g]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; unknown keys are ignored."""
        self.evals = int(state.get("evals", 0))
        for key, val in state.items():
            kind, _, g = key.partition("/")
            if not g:
                continue
            arr = np.asarray(val)
            if kind == "prev":
                self.prev[g] = arr.astype(np.float16)
            elif kind == "phi":
                self.phi[g] = arr.astype(np.float64)
            elif kind == "vel":
                self.vel[g] = arr.astype(np.float64)
            elif kind == "frozen":
                self.frozen[g] = arr.astype(bool)
            elif kind == "nphi":
                self.nphi[g] = arr.astype(np.int64)

    def extra_bytes(self, ctx) -> int:
        """Host bytes of the NEq state: the stored outputs (float16) and per-neuron vectors.

        An upper bound from the start: computed from the output shapes of one forward pass when no
        state exists yet.
        """
        actual = sum(a.nbytes for a in self.prev.values())
        actual += sum(a.nbytes + self.vel[g].nbytes + self.frozen[g].nbytes + self._nphi(g).nbytes
                      for g, a in self.phi.items())
        n = min(self.cfg.val_samples, len(ctx.val_x))
        if self._positions is None:
            self._positions = self._output_positions(ctx)
        expected = sum(site.dense_size * (n * self._positions.get(g, 1) * 2 + 25)
                       for g, site in ctx.sites.items())
        return int(max(actual, expected))

    def _module_groups(self, ctx) -> dict[str, list[tuple[str, torch.Tensor]]]:
        """Output module name -> ``[(group, positions), ...]`` of the groups whose neurons it outputs."""
        by_module: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for g, site in ctx.sites.items():
            for mname, pos in site.outputs:
                by_module.setdefault(mname, []).append((g, pos))
        return by_module

    @torch.no_grad()
    def _module_positions(self, ctx) -> dict[str, int]:
        """Pooled positions per neuron and sample of every output module (one eval forward of one sample)."""
        pos: dict[str, int] = {}
        modules = dict(ctx.model.named_modules())
        handles = []

        def hook(mname):
            def fn(mod, inp, out):
                pos[mname] = int(neuron_outputs(out.detach()[:1].float(), self.cfg.max_spatial).shape[1])
            return fn

        for mname in self._module_groups(ctx):
            handles.append(modules[mname].register_forward_hook(hook(mname)))
        was_training = ctx.model.training
        ctx.model.eval()
        try:
            ctx.model(ctx.val_x[:1])
        finally:
            for h in handles:
                h.remove()
            ctx.model.train(was_training)
        return pos

    def _output_positions(self, ctx) -> dict[str, int]:
        """Pooled positions per neuron and sample of every group (its output modules' summed)."""
        per_module = self._module_positions(ctx)
        pos: dict[str, int] = {}
        for mname, entries in self._module_groups(ctx).items():
            for g, _ in entries:
                pos[g] = pos.get(g, 0) + per_module.get(mname, 0)
        return pos

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _compare_outputs(self, ctx) -> dict[str, np.ndarray | None]:
        """One eval pass over the fixed validation subset, in chunks of ``ctx.eval_batch``: per group
        the alive neurons' cosine similarity with the stored outputs (``None`` where none of this
        layout are stored), and ``self.prev`` replaced by the current outputs (float16).

        A group's columns are its output modules in turn, each ``samples x positions`` wide (a
        group with several output modules -- residual stream, depthwise pairs -- concatenates them).
        """
        x = ctx.val_x[: self.cfg.val_samples]
        samples = len(x)
        by_module = self._module_groups(ctx)
        per_module = self._module_positions(ctx)
        offsets: dict[tuple[str, str], int] = {}
        width: dict[str, int] = {}
        for mname, entries in by_module.items():
            for g, _ in entries:
                offsets[(g, mname)] = width.get(g, 0)
                width[g] = width.get(g, 0) + samples * per_module[mname]
        comparisons = {g: OutputComparison(ctx.sites[g].alive, self.prev.get(g), ctx.sites[g].dense_size, w)
                       for g, w in width.items()}
        modules = dict(ctx.model.named_modules())
        chunk_start = [0]

        def hook(mname, entries):
            def fn(mod, inp, out):
                o = neuron_outputs(out.detach().float(), self.cfg.max_spatial)
                skip = chunk_start[0] * per_module[mname]  # columns of the chunks before this one
                for g, pos in entries:
                    comparisons[g].add(o.index_select(0, pos), offsets[(g, mname)] + skip)
            return fn

        handles = [modules[m].register_forward_hook(hook(m, e)) for m, e in by_module.items()]
        was_training = ctx.model.training
        ctx.model.eval()
        try:
            bs = max(1, int(ctx.eval_batch))
            for i in range(0, samples, bs):
                chunk_start[0] = i
                ctx.model(x[i: i + bs])
        finally:
            for h in handles:
                h.remove()
            ctx.model.train(was_training)
        for g, c in comparisons.items():
            self.prev[g] = c.record
        return {g: c.similarity() for g, c in comparisons.items()}

    def _evaluate(self, ctx) -> None:
        similarities = self._compare_outputs(ctx)
        self.evals += 1
        for g, phi in similarities.items():
            site = ctx.sites[g]
            n = site.dense_size
            alive = site.alive
            if g not in self.phi or self.phi[g].shape != (n,):
                self.phi[g] = np.zeros(n)
                self.vel[g] = np.zeros(n)
                self.frozen[g] = np.zeros(n, dtype=bool)
                self.nphi[g] = np.zeros(n, dtype=np.int64)
            nphi = self._nphi(g)
            if phi is not None:
                v = velocity_step(phi, self.phi[g][alive], self.vel[g][alive], self.cfg.mu_eq)
                self.phi[g][alive] = phi
                self.vel[g][alive] = v
                nphi[alive] += 1
                # a velocity needs two similarities: the first one alone (v = phi - 0) is no equilibrium
                self.frozen[g][alive] = (np.abs(v) < self.cfg.eps) & (nphi[alive] >= 2)
            else:  # first look at this group (or the validation subset changed): record only
                self.frozen[g][:] = False
                nphi[:] = 0
            dead = np.ones(n, dtype=bool)
            dead[alive] = False
            self.prev[g][dead] = 0  # a revived neuron starts over from zeros
            self.frozen[g][dead] = False
            nphi[dead] = 0

    def _draw(self, ctx) -> None:
        """Stochastic control: every alive neuron is frozen for the epoch with probability ``p``."""
        self.evals += 1
        rng = np.random.default_rng([int(self.cfg.seed), int(self.evals)])
        for g, site in ctx.sites.items():
            fr = np.zeros(site.dense_size, dtype=bool)
            fr[site.alive] = rng.random(len(site.alive)) < self.cfg.stochastic_p
            self.frozen[g] = fr
            self.phi.setdefault(g, np.zeros(site.dense_size))
            self.vel.setdefault(g, np.zeros(site.dense_size))

    # ------------------------------------------------------------------ freezing
    def _apply_freeze(self, ctx, record: bool = True) -> None:
        self._release(ctx)
        frozen_layers: dict[str, float] = {}
        decay = neutral_decay(ctx.optimizer)
        modules = dict(ctx.model.named_modules())
        for g, site in ctx.sites.items():
            fr = self.frozen.get(g)
            if fr is None or len(fr) != site.dense_size:
                continue
            local = fr[site.alive]
            if not local.any():
                continue
            frozen_layers.update(self._freeze_site(ctx, site, local, modules, decay))
        ctx.frozen_fraction = frozen_layers
        alive_total = sum(len(s.alive) for s in ctx.sites.values())
        frozen_total = sum(int(self.frozen[g][s.alive].sum()) for g, s in ctx.sites.items()
                           if g in self.frozen and len(self.frozen[g]) == s.dense_size)
        if record:
            self._frozen_hist.append(frozen_total / max(1, alive_total))
            self._path_epochs["partial"] += len(self._partial)
            self._path_epochs["nograd"] += len(self._nograd)
        ctx.costs_changed()

    def _freeze_site(self, ctx, site, local: np.ndarray, modules, decay: float) -> dict[str, float]:
        """Freeze the ``local`` (alive-order) neurons of ``site``: no update for their rows.

        A wholly frozen parameter loses ``requires_grad``; a conv/linear whose output rows are this
        site's neurons gets partial weight gradients where that spares a kernel block; any other
        slice gets a gradient hook. Returns, per conv/linear layer of the site, the fraction of its
        weight-gradient rows that are not computed (layers on the hook path are left out: 0).
        """
        which = torch.as_tensor(np.flatnonzero(local), dtype=torch.long)
        active = torch.as_tensor(np.flatnonzero(~local), dtype=torch.long)
        all_frozen = bool(local.all())
        partial_pays = not all_frozen and partial_grad.saves_a_block(len(active), len(local))
        skipped: dict[str, float] = {}
        for ps in site.params:
            idx = ps.pos.index_select(0, which)
            self._zero_momentum(ctx, ps.param, ps.dim, idx)
            whole = len(ps.pos) == ps.param.shape[ps.dim]
            mname, _, attr = ps.name.rpartition(".")
            if all_frozen and self.cfg.skip_layer_grad and whole:
                ps.param.requires_grad_(False)
                self._nograd.append(ps.param)
                if mname in site.layers:
                    skipped[mname] = 1.0
                continue
            mod = modules.get(mname)
            if (partial_pays and whole and ps.dim == 0 and attr in ("weight", "bias")
                    and mod is not None and partial_grad.supports(mod)):
                if mname not in self._partial:
                    partial_grad.install(mod, ps.pos.index_select(0, active), decay)
                    self._partial[mname] = mod
                if mname in site.layers:
                    skipped[mname] = float(local.mean())
                continue
            self._hooks.append(ps.param.register_hook(_frozen_rows_hook(ps.param, ps.dim, idx, decay)))
        return skipped

    @staticmethod
    def _zero_momentum(ctx, param, dim, idx) -> None:
        st = ctx.optimizer.state.get(param, {})
        for k in MOMENTUM_KEYS:
            buf = st.get(k)
            if isinstance(buf, torch.Tensor) and buf.shape == param.shape:
                buf.index_fill_(dim, idx, 0.0)

    def _release(self, ctx) -> None:
        for p in self._nograd:
            p.requires_grad_(True)
        for mod in self._partial.values():
            partial_grad.uninstall(mod)
        for h in self._hooks:
            h.remove()
        self._nograd, self._partial, self._hooks = [], {}, []
        ctx.frozen_fraction = {}

    # ------------------------------------------------------------------ hooks
    def attach(self, ctx) -> None:
        """Re-apply the current frozen set to the (possibly rebuilt) model."""
        if self.frozen:
            self._apply_freeze(ctx, record=False)

    def detach(self, ctx) -> None:
        """Give every parameter its gradient back and forget the slices of the old model."""
        self._release(ctx)

    def epoch_start(self, ctx):
        """Evaluate equilibrium on the validation subset and freeze for the coming epoch."""
        import time

        t0 = time.perf_counter()
        self._release(ctx)
        if self.cfg.mode == "stochastic":
            self._draw(ctx)
        else:
            self._evaluate(ctx)
        self._apply_freeze(ctx)
        self._eval_seconds += time.perf_counter() - t0
        return None

    def metrics(self, ctx) -> dict[str, Any]:
        """Frozen fraction at the last evaluation, its mean over epochs, evaluations and their cost."""
        return {
            "neq_evals": int(self.evals),
            "neq_frozen_frac": float(self._frozen_hist[-1]) if self._frozen_hist else 0.0,
            "neq_frozen_frac_mean": float(np.mean(self._frozen_hist)) if self._frozen_hist else 0.0,
            "neq_layers_skipped": int(len(self._nograd)),
            "neq_partial_grad_layer_epochs": int(self._path_epochs["partial"]),
            "neq_no_grad_param_epochs": int(self._path_epochs["nograd"]),
            "neq_eval_seconds": float(self._eval_seconds),
            "neq_state_bytes": int(sum(a.nbytes for a in self.prev.values())),
        }
