"""How long the server waits for a round's replies.

A fixed number of seconds, or *auto* (``simulation.round-timeout = 0``): the first round waits
``AUTO_FIRST_ROUND_S`` (it includes worker start-up and data loading), later rounds wait
``max(AUTO_FLOOR_S, AUTO_FACTOR x the slowest round completed so far)``, so a hung client stalls a
round for a few round-lengths instead of ten minutes.
"""

from __future__ import annotations

import math

AUTO_FIRST_ROUND_S = 600.0
AUTO_FLOOR_S = 60.0
AUTO_FACTOR = 5.0


class RoundTimeout:
    """Per-round reply deadline: ``fixed`` seconds when > 0, else auto (see module docstring)."""

    def __init__(self, fixed: float = 0.0):
        if not math.isfinite(fixed) or fixed < 0:
            raise ValueError(f"round-timeout = {fixed}: expected a finite number >= 0 (0 = auto)")
        self.fixed = float(fixed)
        self.slowest = 0.0

    @property
    def auto(self) -> bool:
        """True when the deadline follows the measured round times."""
        return self.fixed == 0

    def seconds(self) -> float:
        """The deadline for the next round (always > 0)."""
        if not self.auto:
            return self.fixed
        if self.slowest <= 0:
            return AUTO_FIRST_ROUND_S
        return max(AUTO_FLOOR_S, AUTO_FACTOR * self.slowest)

    def observe(self, round_seconds: float) -> None:
        """Record how long a completed round's replies took to arrive."""
        if math.isfinite(round_seconds) and round_seconds > 0:
            self.slowest = max(self.slowest, float(round_seconds))

    def longest(self) -> float:
        """An upper bound of any deadline this policy has given so far (for fault injection)."""
        return self.fixed if not self.auto else max(AUTO_FIRST_ROUND_S, self.seconds())
