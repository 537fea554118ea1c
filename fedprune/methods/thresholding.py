"""Magnitude thresholding with LOBSTER's scheduler (PWE + TWT), shared by SeReNe and LOBSTER.

``MagnitudePruner`` keeps, for the current compact model, a 0/1 mask per weight tensor (``ndim >= 2``:
conv and linear weights, the classifier included). Masked weights get a zero gradient and are zeroed
again after every optimizer step, so pruned weights stay pruned. At the end of an epoch,
``maybe_prune`` records the validation loss; when the plateau trigger (PWE) fires it finds the largest
global magnitude threshold whose pruning raises the validation loss by at most ``twt`` (relative) and
zeroes every weight below it.

Chance-level guard: the relative TWT alone is unsafe on a barely trained model. With a validation
loss of 2.2 on 10 classes, zeroing *every* weight gives the constant predictor's ~2.30 (= ln 10),
within 5 %, so the whole network used to be thresholded away (seen in federated runs: 1 neuron per
layer, 10 % accuracy). The accepted loss is therefore also bounded by
``base + twt * (chance - base)``, where ``chance`` is the entropy of the validation labels (the loss
of the best constant predictor, which a network with all weights zero cannot beat), and must stay
strictly below ``chance``: the tolerance applies to the model's improvement over the trivial
predictor too (:func:`~fedprune.methods.schedules.loss_bound`). A model no better than chance is not
thresholded; a well-trained one (0.3 vs 2.3) is unaffected, since ``base * (1 + twt)`` is smaller.

Masks are derived from the weights themselves (``w != 0``) whenever the model is (re)built, so no
mask needs to travel between rounds: an aggregated zero is a pruned weight.
"""

from __future__ import annotations

import numpy as np
import torch

from fedprune.methods.schedules import PlateauTrigger, label_entropy, search_threshold


def prunable_weights(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Conv/linear weight tensors (``ndim >= 2``) of ``model`` in ``named_parameters`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]


def mask_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weight masks a :class:`MagnitudePruner` keeps for ``model`` (one bool per weight)."""
    return sum(p.numel() for _, p in prunable_weights(model))


class MagnitudePruner:
    """Weight masks + plateau-triggered global magnitude thresholding (see module docstring)."""

    def __init__(self, pwe: int, twt: float, samples: int):
        self.trigger = PlateauTrigger(pwe)
        self.twt = float(twt)
        self.samples = int(samples)
        self.masks: dict[str, torch.Tensor] = {}
        self._params: list[tuple[str, torch.nn.Parameter]] = []
        self.last_threshold = 0.0
        self.prune_events = 0

    def attach(self, model: torch.nn.Module) -> None:
        """Bind to ``model``: masks become ``w != 0`` for every prunable weight."""
        self._params = prunable_weights(model)
        self.masks = {n: (p.detach() != 0) for n, p in self._params}

    def mask_grads(self) -> None:
        """Zero the gradient of every pruned weight (call after backward)."""
        for n, p in self._params:
            if p.grad is not None:
                p.grad.mul_(self.masks[n])

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero every pruned weight again (call after the optimizer step)."""
        for n, p in self._params:
            p.mul_(self.masks[n])

    def counts(self) -> tuple[int, int]:
        """``(nonzero prunable weights, all prunable weights)`` of the bound model."""
        nz = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return nz, total

    def chance_loss(self, ctx) -> float | None:
        """Loss of the best constant predictor on the samples ``ctx.val_loss(samples)`` uses.

        The entropy of ``ctx.val_y[:samples]``; ``None`` (no chance-level guard) when the context
        has no validation labels.
        """
        y = getattr(ctx, "val_y", None)
        if y is None:
            return None
        y = y[: self.samples]
        return label_entropy(y.cpu().numpy() if isinstance(y, torch.Tensor) else y)

    @torch.no_grad()
    def maybe_prune(self, ctx) -> bool:
        """Record an epoch's validation loss; on a plateau, threshold. Returns True if it pruned.

        Guarantee: when it prunes, the validation loss (on ``samples`` validation samples) after
        thresholding is at most ``(1 + twt)`` times the loss before, at most the loss before plus
        ``twt`` times its gap to the chance-level loss (label entropy of those samples), and strictly
        below the chance-level loss; a model whose loss is not below chance level is not pruned.
        """
        base = ctx.val_loss(self.samples)
        if not self.trigger.update(base):
            return False
        mags = torch.cat([p.detach().abs()[self.masks[n]].flatten() for n, p in self._params])
        if mags.numel() == 0:
            return False
        mags_sorted = np.sort(mags.numpy())
        backup = {n: p.detach().clone() for n, p in self._params}

        def loss_at(t: float) -> float:
            for n, p in self._params:
                p.copy_(backup[n] * (backup[n].abs() >= t))
            loss = ctx.val_loss(self.samples)
            for n, p in self._params:
                p.copy_(backup[n])
            return loss

        chance = self.chance_loss(ctx)
        t, frac, _ = search_threshold(mags_sorted, loss_at, base, self.twt, chance_loss=chance)
        if t <= 0.0 or frac <= 0.0:
            return False
        for n, p in self._params:
            keep = p.detach().abs() >= t
            self.masks[n] = self.masks[n] & keep
            p.mul_(self.masks[n])
        self.last_threshold = t
        self.prune_events += 1
        return True
