"""HeteroFL (Diao et al., ICLR 2021): static nested widths per device tier.

Each client trains the sub-network made of the first ``ceil(r * n)`` neurons of every group (the
first channels of every layer), with ``r`` the largest of ``ratios`` whose compact model is
predicted to train at ``train.batch-size`` within the client's budget, then smaller still while the
trainer's own fit (the budget as the process's resident memory counts it) finds no room for that
batch; a client that not even the smallest ratio fits skips the round. Its reply's mask is that
sub-network, so the masked FedAvg averages each coordinate over the clients whose width includes
it. Not reproduced: the paper's static BatchNorm (running statistics are averaged like any tensor)
and its output scaler.
"""

from __future__ import annotations

from fedprune.methods.base import Method, RoundPlan
from fedprune.methods.submodel import largest_fitting_ratio, parse_ratios, window_mask


class WidthTier(Method):
    """A width sub-network chosen per client from ``cfg.ratios``; the window starts at :meth:`offset`."""

    name = "width_tier"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ratio: float | None = None
        self.ratios: tuple[float, ...] = ()

    def offset(self, ctx) -> int:
        """Index of the window's first neuron in every group (0: the first channels)."""
        return 0

    def plan_round(self, ctx) -> RoundPlan:
        """The largest fitting width's window at a fixed batch, or a skip when none fits."""
        self.ratios = parse_ratios(self.cfg.ratios, f"methods.{self.name}.ratios")
        b, off = ctx.cfg.batch_size, self.offset(ctx)
        self.ratio = largest_fitting_ratio(ctx.graph, ctx.mask, self.ratios, ctx.budget_bytes, ctx.input_shape,
                                           ctx.cfg.optimizer, b, off)
        if self.ratio is None:
            return RoundPlan(skip=f"{self.name}: width {min(self.ratios)} does not fit "
                                  f"budget_bytes={ctx.budget_bytes} at batch {b}")
        return RoundPlan(mask=window_mask(ctx.graph, ctx.mask, self.ratio, off), fixed_batch=True)

    def smaller_plan(self, ctx):
        """The next smaller width's window, when the chosen one does not fit as the trainer measures
        the budget (the process's resident memory); ``None`` below the smallest width."""
        smaller = [r for r in self.ratios if self.ratio is not None and r < self.ratio]  # largest first
        if not smaller:
            self.ratio = None
            return None
        self.ratio = smaller[0]
        return window_mask(ctx.graph, ctx.mask, self.ratio, self.offset(ctx))

    def handles_budget(self) -> bool:
        """The width follows the budget; a client no width fits skips the round."""
        return True

    def metrics(self, ctx) -> dict:
        """``<name>_width``: the ratio this client trained (0 when it skipped)."""
        return {f"{self.name}_width": float(self.ratio or 0.0)}


class HeteroFL(WidthTier):
    """HeteroFL: the first channels of every layer, width by budget."""

    name = "heterofl"
