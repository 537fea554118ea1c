"""Masked federated averaging and the global mask policy (pure numpy, no Flower).

Invariants:
- ``masked_mean``: each coordinate is the example-weighted mean over the updates whose coordinate
  mask keeps it; a coordinate no update kept keeps its previous value. With every mask full it is
  exactly FedAvg's weighted mean.
- ``update_global_mask``: global pruning is monotone (a neuron pruned globally never comes back) and
  never empties a group; every policy keeps each neuron that some client of the round kept, except
  ``quorum``, which prunes by example weight, and ``consensus``, which keeps as many neurons as the
  median client kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MASK_POLICIES = ("unanimous", "quorum", "consensus", "keep")
#: The policies that can prune a neuron some client of the round kept (the others never do).
PRUNES_KEPT_NEURONS = ("quorum", "consensus")


@dataclass(frozen=True)
class MaskedUpdate:
    """One client's dense-shaped tensors, which coordinates it really holds, and its weight."""

    arrays: Mapping[str, np.ndarray]
    coords: Mapping[str, np.ndarray]  # bool, same shape as arrays[key]; a missing key = all kept
    weight: float  # number of training examples


def masked_mean(previous: Mapping[str, np.ndarray],
                updates: Sequence[MaskedUpdate]) -> dict[str, np.ndarray]:
    """Coordinate-wise weighted mean over the updates that keep each coordinate.

    Floating tensors are averaged; integer tensors (e.g. BatchNorm's ``num_batches_tracked``) take
    the maximum over updates. Keys and shapes are those of ``previous``.
    """
    if not updates:
        return {k: v.copy() for k, v in previous.items()}
    out: dict[str, np.ndarray] = {}
    for key, prev in previous.items():
        if not np.issubdtype(prev.dtype, np.floating):
            out[key] = np.max(np.stack([np.asarray(u.arrays[key]) for u in updates]), axis=0).astype(prev.dtype)
            continue
        num = np.zeros(prev.shape, dtype=np.float64)
        den = np.zeros(prev.shape, dtype=np.float64)
        for u in updates:
            kept = u.coords.get(key)
            w = float(u.weight) if kept is None else float(u.weight) * kept
            num += w * np.asarray(u.arrays[key], dtype=np.float64)
            den += w
        mean = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        out[key] = np.where(den > 0, mean, prev).astype(prev.dtype)
    return out


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The lower weighted median: the smallest value at which the cumulative weight reaches half."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    return float(v[order][int(np.searchsorted(cum, 0.5 * cum[-1] - 1e-12))])


def _consensus(cur: np.ndarray, kept_weight: np.ndarray, counts: Sequence[int],
               weights: np.ndarray) -> np.ndarray:
    """``cur`` reduced to the weighted-median client's neuron count, most-kept neurons first."""
    n = max(1, min(int(cur.sum()), int(weighted_median(counts, weights))))
    alive_idx = np.flatnonzero(cur)
    # most weight first; equal weight: the lower index (a stable sort of the negated weights)
    ranked = alive_idx[np.argsort(-kept_weight[alive_idx], kind="stable")]
    out = np.zeros_like(cur)
    out[ranked[:n]] = True
    return out


def update_global_mask(current: Mapping[str, np.ndarray], client_masks: Sequence[Mapping[str, np.ndarray]],
                       weights: Sequence[float], policy: str = "unanimous",
                       quorum: float = 0.5) -> dict[str, np.ndarray]:
    """The next global neuron mask from the clients' masks.

    ``unanimous``: a neuron is pruned when every client pruned it (the union of the clients' masks:
    what HeteroFL's widest tier trains survives). ``quorum``: when clients holding at least
    ``quorum`` of the examples' weight pruned it. ``consensus``: each group keeps as many neurons
    as the example-weighted median client kept in it, the neurons that most weight kept (so every
    client of the next round receives one sub-network of the size most of them train, instead of a
    union that each of them prunes differently). ``keep``: never (the mask stays ``current``;
    FedRolex's rolling windows need every neuron). The result is a subset of ``current``; if a
    rule would empty a group, the alive neuron that most weight kept survives.
    """
    if policy not in MASK_POLICIES:
        raise ValueError(f"unknown mask policy {policy!r}; expected one of {', '.join(MASK_POLICIES)}")
    if not client_masks or policy == "keep":
        return {k: v.copy() for k, v in current.items()}
    w = np.asarray(weights, dtype=np.float64)
    w_sum = float(w.sum())
    total = w_sum if w_sum > 0 else 1.0
    median_weights = w if w_sum > 0 else np.ones_like(w)
    out: dict[str, np.ndarray] = {}
    for name, cur in current.items():
        kept_weight = sum(wk * np.asarray(m[name], dtype=np.float64) for wk, m in zip(w, client_masks))
        if policy == "unanimous":
            alive = cur & (kept_weight > 0)
        elif policy == "consensus":
            counts = [int(np.count_nonzero(np.asarray(m[name]) & cur)) for m in client_masks]
            alive = _consensus(cur, kept_weight, counts, median_weights)
        else:
            pruned_frac = 1.0 - kept_weight / total
            alive = cur & (pruned_frac < quorum - 1e-12)
        if not alive.any():
            candidates = np.where(cur, kept_weight, -1.0)
            alive = np.zeros_like(cur)
            alive[int(np.argmax(candidates))] = True
        out[name] = alive
    return out
