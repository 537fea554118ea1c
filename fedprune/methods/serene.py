"""SeReNe: Sensitivity-based Regularization of Neurons, with whole neurons removed physically.

Sensitivity (eq. 2 of the paper). For a neuron ``n`` with activity ``a_n`` and network outputs
``y_k`` (the ``C`` logits), ``S_n = (1/C) * sum_k |dy_k / da_n|``. The activity is the output of the
module that produces the neuron (conv/linear, or the BatchNorm after it), i.e. before a functional
ReLU, where the reference code hooks. For a convolution the absolute derivative is averaged over the
batch and the channel's spatial positions, for a linear layer over the batch. All ``C`` derivatives
come from one batched backward (``autograd.grad(..., is_grads_batched=True)`` with the ``C`` one-hot
output directions), so the cost is one vectorised backward, not ``C`` of them.

Normalisation. Raw sensitivities are tiny (0.002-0.08 on LeNet-5), so ``1 - S`` would be ~1 for
every neuron and all would decay alike. Each layer's sensitivities are therefore divided by their
maximum (times ``sensitivity_scale``, clamped to [0, 1]): the most sensitive neuron of a layer is
not regularised, a neuron the outputs do not depend on decays at the full rate ``lmbda``.

Update. After the optimizer step every parameter of neuron ``n`` (weight row, bias, BatchNorm affine)
becomes ``w <- w - lmbda * w * (1 - S_n)``. ``sensitivity = "none"`` sets ``S = 0``: uniform weight
decay of every neuron followed by the same neuron pruning, the paper's "l2 + pruning" control.

Neuron pruning. At the end of an epoch the PWE trigger may fire; then each neuron's *relative norm*
(L2 norm of all its parameters over the largest such norm in its layer) is compared with one global
threshold ``T``: the largest ``T`` whose removal of every neuron below it raises the validation loss by
at most ``twt`` (relative, with the chance-level guard of
:func:`~fedprune.methods.schedules.loss_bound`) on ``threshold_samples`` validation samples. Removal
is simulated exactly: the neurons output what they would with their incoming weights zeroed (their
constant output is what the surgery folds into the consumers), by forward hooks that need no copy of
the weights; then the neurons go in the returned mask (``graph.prune``). The
largest neuron of each layer (relative norm 1) is never removed. Neurons whose incoming or outgoing
weights are all zero are removed too. There is no per-weight thresholding here (that is LOBSTER).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedprune.methods.base import Method
from fedprune.methods.config import SeReNeConfig
from fedprune.methods.schedules import PlateauTrigger, label_entropy, search_threshold
from fedprune.methods.sensitivity import SensitivityProbe
from fedprune.methods.serene_memory import SensitivityPassMemory
from fedprune.methods.silence import NeuronsSilenced


def normalized_sensitivity(raw: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``clamp(scale * raw / max(raw), 0, 1)`` (all zeros when ``raw`` is all zero)."""
    top = raw.max() if raw.numel() else raw.new_zeros(())
    if float(top) <= 0.0:
        return torch.zeros_like(raw)
    return torch.clamp(scale * raw / top, 0.0, 1.0)


@torch.no_grad()
def shrink_neurons(site, insensitivity: torch.Tensor, lmbda: float) -> None:
    """``w <- w - lmbda * w * insensitivity[n]`` on every parameter slice of every neuron of ``site``."""
    for ps in site.params:
        p = ps.param
        if insensitivity.numel() != len(ps.pos):
            continue
        factor = torch.ones(p.shape[ps.dim], dtype=p.dtype, device=p.device)
        factor[ps.pos] = 1.0 - lmbda * insensitivity.to(p.dtype)
        shape = [1] * p.dim()
        shape[ps.dim] = -1
        p.mul_(factor.view(shape))


def relative_norms(site) -> np.ndarray:
    """Each neuron's parameter L2 norm over the largest one of its layer, (alive,) in [0, 1]."""
    n = site_norms(site)
    top = float(n.max()) if n.size else 0.0
    return n / top if top > 0 else np.ones_like(n)


class NeuronThreshold:
    """PWE-triggered search of the global relative-norm threshold (see the module docstring)."""

    def __init__(self, pwe: int, twt: float, samples: int):
        self.trigger = PlateauTrigger(pwe)
        self.twt = float(twt)
        self.samples = int(samples)
        self.last_threshold = 0.0
        self.events = 0

    def select(self, ctx) -> dict[str, np.ndarray]:
        """On a plateau, per group the (alive,) bool vector of neurons to remove; ``{}`` otherwise.

        Guarantee: the validation loss with those neurons' incoming weights zeroed was within
        ``loss_bound(base, twt, chance)``. The trials silence the neurons with forward hooks
        (:class:`~fedprune.methods.silence.NeuronsSilenced`): no weight is copied or changed.
        """
        base = ctx.val_loss(self.samples)
        if not self.trigger.update(base):
            return {}
        rel = {g: relative_norms(s) for g, s in ctx.sites.items() if any(p.is_weight for p in s.params)}
        cand = np.sort(np.concatenate([r[r < 1.0] for r in rel.values()] or [np.zeros(0)]))
        if cand.size == 0:
            return {}
        modules = dict(ctx.model.named_modules())

        def loss_at(t: float) -> float:
            drops = {g: torch.as_tensor(np.flatnonzero(r < t), dtype=torch.long) for g, r in rel.items()}
            with NeuronsSilenced(modules, ctx.sites, drops):
                return ctx.val_loss(self.samples)

        y = getattr(ctx, "val_y", None)
        chance = None if y is None else label_entropy(np.asarray(y[: self.samples]))
        t, frac, _ = search_threshold(np.append(cand, 1.0), loss_at, base, self.twt, chance_loss=chance)
        if t <= 0.0 or frac <= 0.0:
            return {}
        self.last_threshold = t
        self.events += 1
        return {g: r < t for g, r in rel.items()}


class SeReNe(Method):
    """Eq. 2 sensitivity-driven neuron shrinking + neuron-norm thresholding + physical removal."""

    name = "serene"

    def __init__(self, cfg: SeReNeConfig):
        super().__init__(cfg)
        self.threshold = NeuronThreshold(cfg.pwe, cfg.twt, cfg.threshold_samples)
        self.probe: SensitivityProbe | None = None
        self.sens: dict[str, torch.Tensor] = {}
        self._sites = {}
        self._step = 0
        self._sens_sum = 0.0
        self._sens_n = 0
        self.removed = 0

    @property
    def uses_sensitivity(self) -> bool:
        """False for the ``l2 + pruning`` control (``sensitivity = "none"``: S = 0, no extra backward)."""
        return self.cfg.sensitivity != "none"

    def attach(self, ctx) -> None:
        """Hook the sites' output modules (not for the ``none`` control)."""
        self._sites = ctx.sites
        self.sens = {}
        if not self.uses_sensitivity:
            return
        outputs: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for g, site in ctx.sites.items():
            for mname, pos in site.outputs:
                outputs.setdefault(mname, []).append((g, pos))
        self.probe = SensitivityProbe(ctx.model, outputs)

    def detach(self, ctx) -> None:
        """Remove the hooks."""
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
        self.sens = {}

    def step_memory(self, ctx) -> SensitivityPassMemory | None:
        """The batched eq. 2 backward of an armed step, on exactly the outputs the probe hooks."""
        if not self.uses_sensitivity:
            return None
        hooked = None
        if ctx.sites:
            hooked = tuple(sorted({mod for site in ctx.sites.values() for mod, _ in site.outputs}))
        return SensitivityPassMemory(hooked)

    def before_forward(self, ctx) -> None:
        """Arm the probe on every ``sensitivity_every``-th step."""
        if self.probe is not None and self.cfg.lmbda > 0 and self._step % self.cfg.sensitivity_every == 0:
            self.probe.armed = True
        self._step += 1

    def after_forward(self, ctx, outputs, loss) -> None:
        """The batched extra backward for eq. 2 (only on armed steps)."""
        if self.probe is None or not self.probe.armed:
            return
        self.sens = self.probe.compute(outputs)
        for v in self.sens.values():
            self._sens_sum += float(v.sum())
            self._sens_n += int(v.numel())

    @torch.no_grad()
    def after_step(self, ctx) -> None:
        """``w <- w - lmbda * w * (1 - S_n / max_layer S)`` on every slice of neuron ``n``."""
        lm = self.cfg.lmbda
        if lm <= 0:
            return
        for g, site in self._sites.items():
            if self.uses_sensitivity:
                raw = self.sens.get(g)
                if raw is None:
                    continue
                ins = 1.0 - normalized_sensitivity(raw, self.cfg.sensitivity_scale)
            else:
                ins = torch.ones(len(site.alive))
            shrink_neurons(site, ins, lm)

    def epoch_end(self, ctx):
        """Neuron-norm thresholding on a plateau, plus neurons without inputs or outputs: a mask."""
        below = self.threshold.select(ctx)
        if not self.cfg.remove_neurons:
            return None
        arrays = ctx.mask.to_arrays()
        changed = False
        for g, site in ctx.sites.items():
            dead = dead_neurons(site)
            if dead is None:
                continue
            if g in below:
                dead = dead | below[g]
            if not dead.any():
                continue
            if dead.all():  # a group must keep one neuron: keep the one with the largest norm
                dead[int(np.argmax(site_norms(site)))] = False
            arrays[g][site.alive[dead]] = False
            self.removed += int(dead.sum())
            changed = True
        if not changed:
            return None
        from fedprune.surgery import NeuronMask

        return NeuronMask.from_arrays(ctx.graph, arrays)

    def metrics(self, ctx) -> dict[str, Any]:
        """Thresholding events, the last relative-norm threshold, removed neurons, mean raw eq. 2 S."""
        return {
            "serene_prune_events": int(self.threshold.events),
            "serene_threshold": float(self.threshold.last_threshold),
            "serene_neurons_removed": int(self.removed),
            "serene_sensitivity_mean": float(self._sens_sum / self._sens_n) if self._sens_n else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """The plateau trigger's scalars."""
        return {f"trigger/{k}": v for k, v in self.threshold.trigger.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the plateau trigger."""
        self.threshold.trigger.load_state_dict(
            {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("trigger/")})


def _per_neuron(p: torch.Tensor, dim: int, ord: float) -> torch.Tensor:
    """``ord``-norm of every slice of ``p`` along ``dim``, (p.shape[dim],), without copying ``p``."""
    p = p.detach()
    other = [d for d in range(p.dim()) if d != dim]
    return torch.linalg.vector_norm(p, ord=ord, dim=other) if other else p.abs()


def dead_neurons(site) -> np.ndarray | None:
    """Boolean (alive,) vector of neurons that no longer compute anything useful.

    Dead: all incoming weight slices (ndim >= 2) are zero (the output is a constant, which the
    surgery folds into the consumers), or all outgoing weights (the consumers' columns of the
    neuron) are zero (the output is never used). Reductions only: no weight is copied.
    """
    weights = [ps for ps in site.params if ps.is_weight]
    if not weights:
        return None
    dead_in = torch.ones(len(site.alive), dtype=torch.bool)
    for ps in weights:
        dead_in &= _per_neuron(ps.param, ps.dim, float("inf")).index_select(0, ps.pos) == 0
    dead_out = torch.zeros_like(dead_in)
    if site.consumers:
        dead_out = torch.ones_like(dead_in)
        for p, dim, cols in site.consumers:
            used = _per_neuron(p, dim, float("inf")) != 0
            for i, c in enumerate(cols):
                if dead_out[i] and bool(used.index_select(0, c).any()):
                    dead_out[i] = False
    return (dead_in | dead_out).numpy()


def site_norms(site) -> np.ndarray:
    """L2 norm of all of each neuron's parameter slices, (alive,); no weight is copied."""
    tot = torch.zeros(len(site.alive), dtype=torch.float64)
    for ps in site.params:
        tot += _per_neuron(ps.param, ps.dim, 2.0).index_select(0, ps.pos).double().pow(2)
    return np.sqrt(tot.numpy())
