"""Prune a model until it can train within a memory budget (for clients whose methods may prune).

When even the minimum batch does not fit the budget, a client whose methods may prune to fit
(``Method.prune_to_fit_floor``, e.g. DynHP) prunes further before training instead of giving up: every group keeps the same fraction ``k`` of its alive neurons (the
largest L2 norms of their producing weights, never fewer than ``min_neurons``, the methods' floor), with ``k`` the largest
value (bisection) whose compact model's predicted training peak at ``min_batch`` fits the budget.
Scores are computed on the dense-shaped tensors, so they are comparable across groups' layers.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedprune.memory import OptimizerSpec, max_batch_size
from fedprune.surgery import NeuronGraph, NeuronMask


def neuron_norms(graph: NeuronGraph, model: nn.Module, mask: NeuronMask) -> dict[str, np.ndarray]:
    """Per group, the L2 norm of each dense neuron's producing parameters (0 for pruned neurons)."""
    dense = graph.expand(model.state_dict(), mask)
    out: dict[str, np.ndarray] = {}
    for g in graph.groups:
        sq = np.zeros(g.size)
        for role in graph.group_layers(g.name):
            if not role.is_producer:
                continue
            for key, dim in role.tensors:
                t = dense[key].detach().float().numpy()
                t = np.moveaxis(t, dim, 0).reshape(t.shape[dim], -1)
                np.add.at(sq, role.neuron, (t[role.index] ** 2).sum(axis=1))
        out[g.name] = np.sqrt(sq) * mask[g.name]
    return out


def shrink_mask(mask: NeuronMask, graph: NeuronGraph, norms: dict[str, np.ndarray], keep: float,
                min_neurons: int) -> NeuronMask:
    """Each group keeps ``ceil(keep * alive)`` (>= min_neurons) of its alive neurons, best norms first."""
    arrays = {}
    for g in graph.groups:
        alive = np.flatnonzero(mask[g.name])
        n = min(len(alive), max(min_neurons, int(np.ceil(keep * len(alive)))))
        best = alive[np.argsort(-norms[g.name][alive], kind="stable")[:n]]
        new = np.zeros(g.size, dtype=bool)
        new[best] = True
        arrays[g.name] = new
    return NeuronMask.from_arrays(graph, arrays)


def prune_to_fit(model: nn.Module, mask: NeuronMask, graph: NeuronGraph, budget_bytes: int,
                 input_shape: tuple[int, ...], optimizer: OptimizerSpec, min_batch: int,
                 margin: float, min_neurons: int, step_fn=None) -> tuple[nn.Module, NeuronMask] | None:
    """The least-pruned (model, mask) that trains at ``min_batch`` within the budget, or ``None``.

    ``step_fn`` is the training step whose memory is predicted (the trainer's reference step with
    the methods' extra passes; default: a plain step). Returns the inputs unchanged when they
    already fit; ``None`` when even ``min_neurons`` per group does not fit.
    """
    def fits(m: nn.Module) -> bool:
        return max_batch_size(m, budget_bytes, input_shape, optimizer, min_batch, min_batch, margin,
                              step_fn=step_fn) >= min_batch

    if fits(model):
        return model, mask
    norms = neuron_norms(graph, model, mask)
    smallest = shrink_mask(mask, graph, norms, 0.0, min_neurons)
    if not fits(graph.prune(model, mask, smallest)):
        return None
    lo, hi = 0.0, 1.0  # fits(lo) holds, fits(hi) does not
    for _ in range(12):
        mid = (lo + hi) / 2
        if fits(graph.prune(model, mask, shrink_mask(mask, graph, norms, mid, min_neurons))):
            lo = mid
        else:
            hi = mid
    new_mask = shrink_mask(mask, graph, norms, lo, min_neurons)
    return graph.prune(model, mask, new_mask), new_mask
