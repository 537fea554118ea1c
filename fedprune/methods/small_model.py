"""The small-model baseline: one width-scaled model that fits the weakest device, for every client.

Every client trains the first ``ceil(width * n)`` neurons of every group (the zoo model with every
layer ``width`` times as wide) at ``train.batch-size``. With ``width = 0`` the run resolves it once
from the fleet (:func:`fedprune.fleet_width.resolve_method_configs`): the largest width whose
model the memory estimate fits into the weakest client's lowest budget. Every client keeps the same
neurons, so the global model shrinks to exactly that small model after the first round.
"""

from __future__ import annotations

from fedprune.methods.base import Method, RoundPlan
from fedprune.methods.submodel import trains_at_batch, window_mask


class SmallModel(Method):
    """Train the width-``cfg.width`` model; skip when it does not fit this client's budget."""

    name = "small_model"

    def plan_round(self, ctx) -> RoundPlan:
        """The small model's mask at a fixed batch; ``ValueError`` if the width is still 0 (auto)."""
        width = float(self.cfg.width)
        if width <= 0:
            raise ValueError("methods.small_model.width=0 (auto) is resolved from the fleet by the client "
                             "runtime; give a width in (0, 1] to train without one")
        mask = window_mask(ctx.graph, ctx.mask, width)
        b = ctx.cfg.batch_size
        if not trains_at_batch(ctx.graph, mask, ctx.budget_bytes, ctx.input_shape, ctx.cfg.optimizer, b):
            return RoundPlan(skip=f"small-model: width {width:.3f} does not fit "
                                  f"budget_bytes={ctx.budget_bytes} at batch {b}")
        return RoundPlan(mask=mask, fixed_batch=True)

    def handles_budget(self) -> bool:
        """The width is chosen for the weakest budget."""
        return True

    def metrics(self, ctx) -> dict:
        """``small_model_width``: the width trained."""
        return {"small_model_width": float(self.cfg.width)}
