"""Width sub-networks of the dense model, and whether one trains within a budget at a fixed batch.

A width sub-network at ratio ``r`` keeps, in every prunable neuron group of ``n`` neurons,
``k = max(1, ceil(r * n))`` neurons: the first ``k`` (HeteroFL's nested widths, the small model)
or the ``k`` consecutive ones from ``offset``, wrapping around (FedRolex's rolling window). Its
compact model is the zoo model with every layer ``r`` times as wide (``build_model(..., width=r)``).
These helpers serve the baselines of :mod:`fedprune.methods.heterofl`, :mod:`fedprune.methods.fedrolex` and
:mod:`fedprune.methods.small_model`.
"""

from __future__ import annotations

import numpy as np

from fedprune.memory import max_batch_size
from fedprune.models import scaled_width
from fedprune.surgery import NeuronMask

DEFAULT_RATIOS = "1, 0.5, 0.25, 0.125, 0.0625"


def parse_ratios(text: str, where: str) -> tuple[float, ...]:
    """Width ratios from ``"1, 0.5, 0.25"``, largest first; ``ValueError`` naming ``where`` if one
    is not a number in (0, 1] or the list is empty."""
    try:
        values = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{where}={text!r}: expected comma-separated numbers in (0, 1]") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError(f"{where}={text!r}: expected comma-separated numbers in (0, 1]")
    return tuple(sorted(set(values), reverse=True))


def window_mask(graph, current: NeuronMask, ratio: float, offset: int = 0) -> NeuronMask:
    """Per group the ``ceil(ratio * n)`` neurons from ``offset`` (mod n), intersected with ``current``.

    A group the intersection would empty keeps its first alive neuron of ``current``.
    """
    arrays = {}
    for g in graph.groups:
        k = scaled_width(g.size, ratio)
        keep = np.zeros(g.size, dtype=bool)
        keep[(int(offset) + np.arange(k)) % g.size] = True
        keep &= current[g.name]
        if not keep.any():
            keep[int(np.flatnonzero(current[g.name])[0])] = True
        arrays[g.name] = keep
    return NeuronMask.from_arrays(graph, arrays)


def trains_at_batch(graph, mask: NeuronMask, budget_bytes: int | None, input_shape, optimizer,
                    batch: int) -> bool:
    """Whether the compact model for ``mask`` is predicted to train at ``batch`` within the budget
    (the trainer's estimate and margin); always true without a budget. The candidate model is
    built on the meta device: asking costs no host memory (which the round's budget would count)."""
    if budget_bytes is None:
        return True
    model = graph.build_compact(mask, device="meta")
    return max_batch_size(model, int(budget_bytes), tuple(input_shape), optimizer,
                          min_batch=batch, max_batch=batch) >= batch


def largest_fitting_ratio(graph, current: NeuronMask, ratios, budget_bytes: int | None, input_shape,
                          optimizer, batch: int, offset: int = 0) -> float | None:
    """The largest of ``ratios`` whose window (from ``offset``) trains at ``batch`` within the budget;
    ``None`` when even the smallest does not."""
    for r in sorted(ratios, reverse=True):
        if trains_at_batch(graph, window_mask(graph, current, r, offset), budget_bytes, input_shape,
                           optimizer, batch):
            return r
    return None
