"""SeReNe: Sensitivity-based Regularization of Neurons, with neurons physically removed.

Neuron sensitivity (eq. 2 of the paper) is the mean absolute derivative of the network outputs
``y_k`` (logits, ``C`` of them) w.r.t. the neuron's activity ``a_n``. It is measured at the output of
the module that produces the neuron (conv/linear, or the BatchNorm after it), i.e. before a
functional ReLU, exactly where the reference code hooks; for ReLU this equals the post-activation
derivative gated by the neuron being on, so a neuron that never fires has zero sensitivity.

* ``lower_bound`` (default; one extra backward of the summed outputs):
  ``S_n = scale / C * mean_{b, positions} |d(sum_k y_{b,k}) / d a_{n,b,pos}|``
* ``full`` (``C`` extra backwards): ``S_n = scale / C * sum_k mean_{b, positions} |dy_{b,k} / d a_n|``

The mean runs over the batch and the spatial positions **of each channel separately** (the public
reference averages channel 0 for every channel, a known bug). After the optimizer step, every
parameter slice of neuron ``n`` (weight row, bias, BatchNorm affine) is updated as
``w <- w - lmbda * w * max(0, 1 - S_n)``. At the end of each epoch the PWE/TWT scheduler may zero
weights under a global magnitude threshold (with the chance-level guard of
:mod:`~fedprune.methods.thresholding`: a model no better than the constant predictor is not
thresholded, and thresholding never brings it down to that level); a neuron whose incoming weights
are then all zero (constant output, folded into the consumers by the surgery) or whose outgoing
weights are all zero (output never used) is removed physically (returned mask -> ``graph.prune``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fedprune.methods.base import Method
from fedprune.methods.config import SeReNeConfig
from fedprune.methods.serene_memory import SensitivityPassMemory
from fedprune.methods.thresholding import MagnitudePruner, mask_bytes


class SensitivityProbe:
    """Per-channel output sensitivity of chosen module outputs, from one extra backward.

    ``outputs`` maps a module name of ``model`` to the group names whose neurons are that module's
    output channels (dim 1). While armed, the probe keeps the first hooked output of the forward pass
    (the input of the extra ``autograd.grad``) and reduces every hooked gradient to a per-channel
    mean of absolute values as it flows by, so no activation-sized gradient is kept.
    """

    def __init__(self, model: nn.Module, outputs: Mapping[str, list[tuple[str, torch.Tensor | None]]]):
        self.armed = False
        self._collect = False
        self._first: torch.Tensor | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._cnt: dict[str, int] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[m].register_forward_hook(self._hook(list(entries)))
                         for m, entries in outputs.items()]

    def _hook(self, entries: list[tuple[str, torch.Tensor | None]]):
        def fn(mod, inp, out):
            if not (self.armed and isinstance(out, torch.Tensor) and out.requires_grad):
                return
            if self._first is None:
                self._first = out

            def grad_hook(g: torch.Tensor):
                if self._collect:
                    dims = [d for d in range(g.dim()) if d != 1]
                    red = g.detach().abs().mean(dim=dims)  # per channel: mean over batch, positions
                    for name, pos in entries:
                        r = red if pos is None else red.index_select(0, pos)
                        self._acc[name] = self._acc[name] + r if name in self._acc else r
                        self._cnt[name] = self._cnt.get(name, 0) + 1
                return None

            out.register_hook(grad_hook)
        return fn

    def compute(self, outputs: torch.Tensor, mode: str = "lower_bound",
                scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Sensitivity per group (1-D tensor over its channels) for the armed forward's ``outputs``.

        Uses ``retain_graph=True``, so the training loss can still be backpropagated afterwards.
        Disarms the probe. Returns ``{}`` when nothing was hooked.
        """
        first, self._first = self._first, None
        self.armed = False
        if first is None:
            return {}
        c = outputs.shape[1]
        self._acc, self._cnt = {}, {}
        self._collect = True
        try:
            if mode == "lower_bound":
                torch.autograd.grad(outputs.sum(), first, retain_graph=True)
            elif mode == "full":
                for k in range(c):
                    torch.autograd.grad(outputs[:, k].sum(), first, retain_graph=True)
            else:
                raise ValueError(f"unknown sensitivity mode {mode!r}")
        finally:
            self._collect = False
        acc, cnt = self._acc, self._cnt
        self._acc, self._cnt = {}, {}
        per_pass = c if mode == "full" else 1
        # ``full`` sums over the C passes (sum_k); several output modules of a group are averaged.
        return {g: (scale / c) * v * per_pass / cnt[g] for g, v in acc.items()}

    def remove(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._first = None


def neuron_sensitivity(model: nn.Module, x: torch.Tensor,
                       outputs: Mapping[str, list[tuple[str, torch.Tensor | None]]],
                       mode: str = "lower_bound", scale: float = 1.0) -> dict[str, torch.Tensor]:
    """SeReNe sensitivity of the given module outputs' channels on input batch ``x`` (one forward).

    ``outputs`` maps a module name to ``[(group, positions or None for all channels), ...]``.

    See the module docstring for the formula. Guarantee: entry ``c`` of a group's tensor only
    depends on channel ``c``'s gradient (per-channel mean over batch and positions).
    """
    probe = SensitivityProbe(model, outputs)
    try:
        probe.armed = True
        with torch.enable_grad():
            y = model(x)
            return probe.compute(y, mode, scale)
    finally:
        probe.remove()


class SeReNe(Method):
    """Sensitivity-driven neuron shrinking + PWE/TWT thresholding + physical neuron removal."""

    name = "serene"

    def __init__(self, cfg: SeReNeConfig):
        super().__init__(cfg)
        self.pruner = MagnitudePruner(cfg.pwe, cfg.twt, cfg.threshold_samples)
        self.probe: SensitivityProbe | None = None
        self.sens: dict[str, torch.Tensor] = {}
        self._sites = {}
        self._step = 0
        self._sens_sum = 0.0
        self._sens_n = 0
        self.removed = 0

    def attach(self, ctx) -> None:
        """Hook the sites' output modules; weight masks become ``w != 0``."""
        self.pruner.attach(ctx.model)
        self._sites = ctx.sites
        outputs: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for g, site in ctx.sites.items():
            for mname, pos in site.outputs:
                outputs.setdefault(mname, []).append((g, pos))
        self.probe = SensitivityProbe(ctx.model, outputs)
        self.sens = {}

    def detach(self, ctx) -> None:
        """Remove the hooks."""
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
        self.sens = {}

    def step_memory(self, ctx) -> SensitivityPassMemory:
        """The extra backward of an armed step, on exactly the outputs the probe hooks."""
        hooked = None
        if ctx.sites:
            hooked = tuple(sorted({mod for site in ctx.sites.values() for mod, _ in site.outputs}))
        return SensitivityPassMemory(hooked)

    def kept_tensor_bytes(self, ctx) -> int:
        """The weight masks: one bool per conv/linear weight."""
        return mask_bytes(ctx.model)

    def kept_tensors(self) -> list:
        """The weight masks of the bound model."""
        return list(self.pruner.masks.values())

    def before_forward(self, ctx) -> None:
        """Arm the probe on every ``sensitivity_every``-th step."""
        if self.probe is not None and self.cfg.lmbda > 0 and self._step % self.cfg.sensitivity_every == 0:
            self.probe.armed = True
        self._step += 1

    def after_forward(self, ctx, outputs, loss) -> None:
        """The extra backward(s) for the sensitivity (only on armed steps)."""
        if self.probe is None or not self.probe.armed:
            return
        self.sens = self.probe.compute(outputs, self.cfg.sensitivity, self.cfg.sensitivity_scale)
        for v in self.sens.values():
            self._sens_sum += float(v.sum())
            self._sens_n += int(v.numel())

    def after_backward(self, ctx) -> None:
        """Pruned weights get no gradient."""
        self.pruner.mask_grads()

    @torch.no_grad()
    def after_step(self, ctx) -> None:
        """``w <- w - lmbda * w * max(0, 1 - S_n)`` on every slice of neuron ``n``; re-zero pruned."""
        lm = self.cfg.lmbda
        if lm > 0 and self.sens:
            for g, s in self.sens.items():
                site = self._sites.get(g)
                if site is None:
                    continue
                ins = torch.clamp(1.0 - s, min=0.0)
                for ps in site.params:
                    p = ps.param
                    if ins.numel() != len(ps.pos):
                        continue
                    factor = torch.ones(p.shape[ps.dim], dtype=p.dtype, device=p.device)
                    factor[ps.pos] = 1.0 - lm * ins.to(p.dtype)
                    shape = [1] * p.dim()
                    shape[ps.dim] = -1
                    p.mul_(factor.view(shape))  # w <- w - lmbda * w * max(0, 1 - S), in place
        self.pruner.enforce()

    def epoch_end(self, ctx):
        """PWE/TWT thresholding, then a mask without the neurons whose weights are all zero."""
        self.pruner.maybe_prune(ctx)
        if not self.cfg.remove_neurons:
            return None
        arrays = ctx.mask.to_arrays()
        changed = False
        for g, site in ctx.sites.items():
            dead = dead_neurons(site)
            if dead is None or not dead.any():
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
        """Weight sparsity, thresholding events, removed neurons, mean sensitivity."""
        nz, total = self.pruner.counts()
        return {
            "serene_nonzero_weights": int(nz),
            "serene_sparsity": float(1.0 - nz / max(1, total)),
            "serene_prune_events": int(self.pruner.prune_events),
            "serene_threshold": float(self.pruner.last_threshold),
            "serene_neurons_removed": int(self.removed),
            "serene_sensitivity_mean": float(self._sens_sum / self._sens_n) if self._sens_n else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """The plateau trigger's scalars (weight masks are re-derived from the weights)."""
        return {f"trigger/{k}": v for k, v in self.pruner.trigger.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the plateau trigger."""
        self.pruner.trigger.load_state_dict(
            {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("trigger/")})


def dead_neurons(site) -> np.ndarray | None:
    """Boolean (alive,) vector of neurons that no longer compute anything useful.

    Dead: all incoming weight slices (ndim >= 2) are zero (the output is a constant, which the
    surgery folds into the consumers), or all outgoing weights (the consumers' columns of the
    neuron) are zero (the output is never used).
    """
    rows = [ps.rows() for ps in site.params if ps.is_weight]
    if not rows:
        return None
    dead_in = torch.ones(rows[0].shape[0], dtype=torch.bool)
    for r in rows:
        dead_in &= (r == 0).all(dim=1)
    dead_out = torch.zeros_like(dead_in)
    if site.consumers:
        dead_out = torch.ones_like(dead_in)
        for p, dim, cols in site.consumers:
            w = p.detach()
            for i, c in enumerate(cols):
                if dead_out[i] and bool((w.index_select(dim, c) != 0).any()):
                    dead_out[i] = False
    return (dead_in | dead_out).numpy()


def site_norms(site) -> np.ndarray:
    """L2 norm of all of each neuron's parameter slices, (alive,)."""
    tot = torch.zeros(len(site.alive), dtype=torch.float64)
    for ps in site.params:
        tot += ps.rows().double().pow(2).sum(dim=1)
    return np.sqrt(tot.numpy())
