"""LOBSTER (LOss-Based SensiTivity rEgularization): unstructured pruning, for comparison.

Per step, after the optimizer update, every conv/linear weight ``w`` is shrunk by
``lmbda * w * max(0, 1 - |dL/dw|)`` (parameter sensitivity ``S = |dL/dw|`` of the current batch,
eq. 1 of the paper). At the end of each epoch the PWE/TWT scheduler may zero every weight below a
global magnitude threshold (:class:`~fedprune.methods.thresholding.MagnitudePruner`, whose chance-level
guard keeps a barely trained model from being thresholded to nothing).

Memory: LOBSTER's zeros are *unstructured*: every tensor keeps its dense shape, its gradient and its
optimizer state, so it frees **no training memory** and the batch size is never recomputed for it.
The metrics say so explicitly (``lobster_frees_memory = 0``).
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import torch

from fedprune.methods.base import Method, StepMemory
from fedprune.methods.config import LobsterConfig
from fedprune.methods.thresholding import MagnitudePruner, mask_bytes

MEMORY_NOTE = ("LOBSTER zeros are unstructured: tensors keep their dense shapes, gradients and "
               "optimizer state, so no training memory is freed")


@dataclass(frozen=True)
class WeightUpdateMemory(StepMemory):
    """The one weight-sized temporary of LOBSTER's in-place update, freed at once, in the reference step."""

    def after_step(self, model) -> None:
        """Allocate and drop one ``|grad|`` per conv/linear weight, as the update does."""
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2 and p.grad is not None:
                    p.grad.abs()


class Lobster(Method):
    """Unstructured sensitivity regularization + magnitude thresholding (never changes structure)."""

    name = "lobster"

    def __init__(self, cfg: LobsterConfig):
        super().__init__(cfg)
        self.pruner = MagnitudePruner(cfg.pwe, cfg.twt, cfg.threshold_samples)

    def attach(self, ctx) -> None:
        """Derive weight masks (``w != 0``) from the current model."""
        self.pruner.attach(ctx.model)

    def step_memory(self, ctx) -> WeightUpdateMemory:
        """The weight-sized temporary of the update after each optimizer step."""
        return WeightUpdateMemory()

    def kept_tensor_bytes(self, ctx) -> int:
        """The weight masks: one bool per conv/linear weight."""
        return mask_bytes(ctx.model)

    def kept_tensors(self) -> list:
        """The weight masks of the bound model."""
        return list(self.pruner.masks.values())

    def after_backward(self, ctx) -> None:
        """Pruned weights get no gradient."""
        self.pruner.mask_grads()

    @torch.no_grad()
    def after_step(self, ctx) -> None:
        """``w <- w - lmbda * w * max(0, 1 - |dL/dw|)``, then re-zero pruned weights."""
        lm = self.cfg.lmbda
        if lm > 0:
            for _, p in self.pruner._params:
                if p.grad is None:
                    continue
                # in place, one temporary: p *= 1 - lmbda * max(0, 1 - |g|)
                factor = p.grad.abs().neg_().add_(1.0).clamp_(min=0.0).mul_(-lm).add_(1.0)
                p.mul_(factor)
        self.pruner.enforce()

    def epoch_end(self, ctx):
        """PWE/TWT thresholding; never returns a mask (zeros stay inside dense tensors)."""
        self.pruner.maybe_prune(ctx)
        return None

    def metrics(self, ctx) -> dict[str, Any]:
        """Sparsity of the weights, and an explicit statement that no memory was freed."""
        nz, total = self.pruner.counts()
        return {
            "lobster_nonzero_weights": int(nz),
            "lobster_zeros": int(total - nz),
            "lobster_sparsity": float(1.0 - nz / max(1, total)),
            "lobster_prune_events": int(self.pruner.prune_events),
            "lobster_threshold": float(self.pruner.last_threshold),
            "lobster_frees_memory": 0,
            "lobster_memory_note": MEMORY_NOTE,
        }

    def state_dict(self) -> dict[str, Any]:
        """The plateau trigger's scalars (masks are re-derived from the weights)."""
        return {f"trigger/{k}": v for k, v in self.pruner.trigger.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the plateau trigger."""
        self.pruner.trigger.load_state_dict(
            {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("trigger/")})
