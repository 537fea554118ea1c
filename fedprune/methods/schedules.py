"""Schedules shared by the methods: DynHP's kept-parameter fraction and LOBSTER's PWE/TWT pruning.

``kept_fraction`` maps training progress in [0, 1] to the fraction of dense parameters DynHP keeps.
``PlateauTrigger`` implements the plateau-waiting-epochs (PWE) rule and ``search_threshold`` the
thresholding-worsening-tolerance (TWT) search of LOBSTER/SeReNe's scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math


def kept_fraction(progress: float, target_compression: float, start: float = 0.0, end: float = 1.0,
                  kind: str = "cubic") -> float:
    """Fraction of the dense parameters to keep at ``progress`` (0 = start of training, 1 = end).

    Guarantees: 1.0 for ``progress <= start``; exactly ``1 - target_compression`` for
    ``progress >= end``; monotonically non-increasing in between. ``cubic`` is Zhu & Gupta's
    ``final + (1 - final) * (1 - t)^3`` (prunes fast early, gently late); ``linear`` is ``1 - c * t``.
    """
    final = 1.0 - target_compression
    if progress <= start:
        return 1.0
    if progress >= end:
        return final
    t = (progress - start) / (end - start)
    if kind == "cubic":
        return final + (1.0 - final) * (1.0 - t) ** 3
    if kind == "linear":
        return 1.0 - target_compression * t
    raise ValueError(f"unknown schedule {kind!r}; expected 'cubic' or 'linear'")


@dataclass
class PlateauTrigger:
    """PWE: fire after ``pwe`` consecutive evaluations whose validation loss did not improve.

    An evaluation improves when its loss is below the best seen since the last firing by more than
    ``rel_delta`` (relative). After firing, the best loss is forgotten, so the next evaluation (the
    first after pruning) becomes the new reference. ``pwe = 0`` fires at every evaluation. State is
    plain floats/ints (``state_dict``) so it survives federated rounds.
    """

    pwe: int
    rel_delta: float = 1e-3
    best: float = math.inf
    bad: int = 0
    fired: int = 0

    def update(self, val_loss: float) -> bool:
        """Record one evaluation; return True when pruning should happen now."""
        if val_loss < self.best * (1.0 - self.rel_delta) or not math.isfinite(self.best):
            self.best = val_loss
            self.bad = 0
            improved = True
        else:
            self.bad += 1
            improved = False
        if self.pwe == 0 or (not improved and self.bad >= self.pwe):
            self.best = math.inf
            self.bad = 0
            self.fired += 1
            return True
        return False

    def state_dict(self) -> dict[str, float]:
        """Plain scalars: best loss (inf when unset), consecutive bad evaluations, firings."""
        return {"best": float(self.best), "bad": int(self.bad), "fired": int(self.fired)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (missing keys keep their current value)."""
        self.best = float(state.get("best", self.best))
        self.bad = int(state.get("bad", self.bad))
        self.fired = int(state.get("fired", self.fired))


def search_threshold(magnitudes_sorted, loss_at: Callable[[float], float], base_loss: float,
                     twt: float, iters: int = 8) -> tuple[float, float, float]:
    """TWT: the largest magnitude threshold whose pruning keeps the loss within ``twt`` of the base.

    ``magnitudes_sorted`` is an ascending 1-D array of the magnitudes still prunable; ``loss_at(T)``
    returns the validation loss with every prunable weight ``|w| < T`` zeroed (the caller undoes it).
    Bisection over the pruned *fraction* ``q`` (``T`` = the q-quantile), assuming the loss grows with
    ``q``. Returns ``(threshold, fraction of magnitudes below it, loss)``; ``(0.0, 0.0, base_loss)``
    when even the smallest step exceeds the tolerance. Guarantee: the returned threshold satisfied
    ``loss <= base_loss * (1 + twt)`` when it was evaluated.
    """
    n = len(magnitudes_sorted)
    if n == 0:
        return 0.0, 0.0, base_loss
    bound = base_loss * (1.0 + twt)

    def thr(q: float) -> tuple[float, int]:
        k = min(n - 1, int(q * n))
        return (float(magnitudes_sorted[k]), k) if k > 0 else (0.0, 0)

    best = (0.0, 0.0, base_loss)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        t, k = thr(mid)
        if t <= 0.0:
            lo = mid
            continue
        loss = loss_at(t)
        if loss <= bound:
            best = (t, k / n, loss)
            lo = mid
        else:
            hi = mid
    return best
