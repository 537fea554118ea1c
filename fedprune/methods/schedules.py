"""Schedules shared by the methods: DynHP's kept-parameter fraction and LOBSTER's PWE/TWT pruning.

``kept_fraction`` maps training progress in [0, 1] to the fraction of dense parameters DynHP keeps.
``PlateauTrigger`` implements the plateau-waiting-epochs (PWE) rule and ``search_threshold`` the
thresholding-worsening-tolerance (TWT) search of LOBSTER/SeReNe's scheduler, with the chance-level
guard of ``loss_bound`` (the tolerance also applies to the improvement over the best constant
predictor, so a barely trained model is not thresholded to nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import numpy as np


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
                     twt: float, iters: int = 8,
                     chance_loss: float | None = None) -> tuple[float, float, float]:
    """TWT: the largest magnitude threshold whose pruning keeps the loss within ``twt`` of the base.

    ``magnitudes_sorted`` is an ascending 1-D array of the magnitudes still prunable; ``loss_at(T)``
    returns the validation loss with every prunable weight ``|w| < T`` zeroed (the caller undoes it).
    Bisection over the pruned *fraction* ``q`` (``T`` = the q-quantile), assuming the loss grows with
    ``q``. Returns ``(threshold, fraction of magnitudes below it, loss)``; ``(0.0, 0.0, base_loss)``
    when even the smallest step exceeds the tolerance.

    ``chance_loss`` is the loss of the best *constant* predictor on the same samples (the entropy of
    their labels; see :func:`label_entropy`), i.e. what a network whose weights are all zero can at
    best achieve. When given, the tolerance applies to the model's improvement over that trivial
    predictor as well (see :func:`loss_bound`): a model no better than chance is never thresholded,
    and thresholding never makes the model as bad as chance, so the relative TWT cannot accept
    zeroing every weight of a barely trained model (whose loss is within ``twt`` of chance anyway).

    Guarantee: the returned threshold satisfied ``loss <= loss_bound(base_loss, twt, chance_loss)``
    (in particular ``loss <= base_loss * (1 + twt)``, and ``loss < chance_loss`` when given) when it
    was evaluated.
    """
    n = len(magnitudes_sorted)
    if n == 0:
        return 0.0, 0.0, base_loss
    bound = loss_bound(base_loss, twt, chance_loss)
    if not math.isfinite(bound):
        return 0.0, 0.0, base_loss

    def ok(loss: float) -> bool:
        return loss <= bound and (chance_loss is None or loss < chance_loss)

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
        if ok(loss):
            best = (t, k / n, loss)
            lo = mid
        else:
            hi = mid
    return best


def loss_bound(base_loss: float, twt: float, chance_loss: float | None = None) -> float:
    """The largest validation loss TWT accepts after thresholding a model whose loss is ``base_loss``.

    ``base_loss * (1 + twt)`` (LOBSTER/SeReNe's relative tolerance). With ``chance_loss`` (the loss
    of the best constant predictor), also at most ``base_loss + twt * (chance_loss - base_loss)``:
    thresholding may give back at most a ``twt`` fraction of what the model gained over the trivial
    predictor. For a trained model (``base_loss << chance_loss``, e.g. 0.3 vs ln 10 = 2.3) the first
    term is the smaller one and nothing changes; for a barely trained model (2.2 vs 2.3) the second
    one is, and only a tiny loss increase is accepted. Returns ``-inf`` (nothing may be pruned) when
    ``base_loss >= chance_loss`` or is not finite.
    """
    if not math.isfinite(base_loss):
        return -math.inf
    bound = base_loss * (1.0 + twt)
    if chance_loss is not None:
        gap = chance_loss - base_loss
        if gap <= 0.0:
            return -math.inf
        bound = min(bound, base_loss + twt * gap)
    return bound


def label_entropy(labels) -> float:
    """Cross-entropy (nats) of the best constant predictor on ``labels``: their empirical entropy.

    A network whose weights are all zero outputs a constant (its biases), and no constant
    distribution has a lower mean cross-entropy on ``labels`` than their empirical frequencies, so
    this is a lower bound of such a network's loss (``inf`` for no labels: no bound).
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if y.size == 0:
        return math.inf
    counts = np.bincount(y)
    p = counts[counts > 0] / y.size
    return float(-(p * np.log(p)).sum())
