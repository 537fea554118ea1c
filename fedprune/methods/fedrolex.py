"""FedRolex (Alam et al., NeurIPS 2022): a rolling sub-model window.

As :mod:`fedprune.methods.heterofl` (the width follows the budget), but in round ``t`` (1-based)
a client's window in a group of ``n`` neurons is neurons ``t - 1, ..., t - 2 + k`` mod ``n``: it
shifts by one every round and wraps around, so over the rounds every neuron is trained by the
small clients too. The global model must keep every neuron (``strategy.mask-policy = "keep"``):
with another policy, neurons outside the first round's windows would be pruned for good.
"""

from __future__ import annotations

from fedprune.methods.heterofl import WidthTier


class FedRolex(WidthTier):
    """FedRolex: the width window starts at ``round_idx`` (0-based), modulo each group's size."""

    name = "fedrolex"

    def offset(self, ctx) -> int:
        """The 0-based round index (the window rolls by one neuron per round)."""
        return int(ctx.round_idx)
