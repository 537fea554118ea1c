"""``simplify``: remove every neuron whose output is already constant, exactly.

A neuron is *dead* when each layer producing it contributes a constant: its incoming
weight row is all zero (checked on absolute values, never a signed sum, so weights
that merely cancel are never mistaken for zeros) or the BatchNorm right after that
layer has a zero scale. Dead neurons are removed with :meth:`NeuronGraph.compact`,
which folds their constant outputs forward, so the function does not change.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .graph import NeuronGraph
from .mask import NeuronMask
from .modules import FoldedConv2d


def _row_is_live(model: nn.Module, graph: NeuronGraph, layer: str) -> np.ndarray:
    """Per output position of ``layer``: does it depend on the input at all?"""
    m = model.get_submodule(layer)
    live = m.weight.detach().abs().flatten(1).amax(dim=1) > 0
    if isinstance(m, FoldedConv2d):
        live |= m.fold_kernel.detach().abs().flatten(1).amax(dim=1) > 0
    bn_name = graph._trace.next_bn.get(layer)
    if bn_name is not None:
        bn = model.get_submodule(bn_name)
        if bn.weight is not None:
            live &= bn.weight.detach().abs() > 0
    return live.cpu().numpy()


def dead_neuron_mask(model: nn.Module, graph: NeuronGraph) -> NeuronMask:
    """The mask keeping exactly the neurons of ``model`` that are not constant.

    A group whose neurons are all constant keeps its first neuron (a mask never
    empties a group); that neuron's output is constant, so keeping it is harmless.
    """
    arrays = {}
    for group in graph.groups:
        alive = np.zeros(group.size, dtype=bool)
        for role in group.layers:
            if role.is_producer:
                live = _row_is_live(model, graph, role.module)
                np.logical_or.at(alive, role.neuron, live[role.index])
        if not alive.any():
            alive[0] = True
        arrays[group.name] = alive
    return NeuronMask(graph, arrays)


def simplify(model: nn.Module, example_input: torch.Tensor,
             graph: NeuronGraph | None = None) -> tuple[nn.Module, NeuronMask, NeuronGraph]:
    """Remove all dead neurons of ``model`` (untouched) and fold their constants forward.

    Returns ``(compact model, mask of kept neurons, graph of model's architecture)``;
    the compact model equals ``model`` in eval mode. Pass ``graph`` to skip tracing
    when it was built from this architecture.
    """
    graph = graph if graph is not None else NeuronGraph.from_model(model, example_input)
    mask = dead_neuron_mask(model, graph)
    return graph.compact(model, mask), mask, graph
