"""The FedAvg baselines: ``fedavg`` (no memory limit, the upper bound) and ``fedavg-drop``.

Both train the whole received model at ``train.batch-size`` with plain SGD and no pruning; the
server averages them with the masked FedAvg, which with full masks is exactly FedAvg's weighted
mean. ``fedavg`` ignores the client's budget (its peak is still measured); ``fedavg-drop`` keeps
it and a client whose model is predicted not to fit at that batch skips the round.
"""

from __future__ import annotations

from fedprune.methods.base import Method, RoundPlan
from fedprune.methods.submodel import trains_at_batch


class FedAvgUnbounded(Method):
    """FedAvg with no memory limit: every client trains the dense model at the configured batch."""

    name = "fedavg"

    def plan_round(self, ctx) -> RoundPlan:
        """No budget, a fixed batch, the whole received model."""
        return RoundPlan(fixed_batch=True, unbounded=True)

    def handles_budget(self) -> bool:
        """It ignores the budget, so any budget is acceptable."""
        return True


class FedAvgDrop(Method):
    """FedAvg under the budget without batch shrinking: a client the model does not fit skips."""

    name = "fedavg_drop"

    def plan_round(self, ctx) -> RoundPlan:
        """A fixed batch; skip when the received model does not fit at ``cfg.batch_size``."""
        b = ctx.cfg.batch_size
        if not trains_at_batch(ctx.graph, ctx.mask, ctx.budget_bytes, ctx.input_shape, ctx.cfg.optimizer, b):
            return RoundPlan(skip=f"fedavg-drop: the model does not fit budget_bytes={ctx.budget_bytes} "
                                  f"at batch {b}")
        return RoundPlan(fixed_batch=True)

    def handles_budget(self) -> bool:
        """A client that does not fit skips the round by design."""
        return True
