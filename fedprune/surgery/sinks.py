"""Fold sinks: where a consumer layer puts the interior constant of removed inputs.

For each layer that reads neurons (``"in"`` role), decided once per architecture:

``("bias", [])``   the layer has a bias: add it there (exact in every mode);
``("bn", maps)``   no bias, but every path from the layer's output reaches BatchNorms
                   through shift-preserving ops only (concat, add, pooling): subtract
                   the constant from their ``running_mean`` (exact in eval and train
                   mode; running statistics stay consistent). ``maps`` holds, per
                   BatchNorm, the dense BN position of each dense output channel of the
                   layer (``None`` when the BatchNorm directly follows the layer);
``("extra", [])``  neither: compact models give the layer a bias (``extra_keys``).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .groups import NeuronGroup
from .trace import TraceResult

Sink = tuple[str, list]


def _bn_maps(layer: str, trace: TraceResult,
             groups: list[NeuronGroup]) -> list[tuple[str, np.ndarray | None]] | None:
    """Per BatchNorm absorbing ``layer``'s output shift: its dense channel map, or None."""
    bns = trace.shift_bns.get(layer)
    if bns is None:
        return None
    if bns == [trace.next_bn.get(layer)]:
        return [(bns[0], None)]
    group = next((g for g in groups if layer in g.producers), None)
    if group is None:  # output channels not in a prunable group: no channel map known
        return None
    out = next(r for r in group.layers if r.module == layer and r.is_producer)
    maps = []
    for bn in bns:
        role = next((r for r in group.layers if r.module == bn and r.role == "norm"), None)
        if role is None:
            return None
        pos_of_neuron = np.full(group.size, -1)
        pos_of_neuron[role.neuron] = role.index
        dense_map = np.full(int(out.index.max()) + 1, -1)
        dense_map[out.index] = pos_of_neuron[out.neuron]
        if (dense_map < 0).any():
            return None
        maps.append((bn, dense_map))
    return maps


class FoldSinks:
    """Static fold sinks of one architecture; :meth:`resolve` maps them to current coordinates."""

    def __init__(self, consumers: list[str], model: nn.Module, trace: TraceResult):
        """``consumers``: layers reading pruned neurons; ``model``: the dense architecture."""
        self._out_sizes = {n: model.get_submodule(n).weight.shape[0] for n in consumers}
        self.sinks: dict[str, Sink] = {}
        extra = []
        for layer in consumers:
            maps = _bn_maps(layer, trace, trace.groups)
            if model.get_submodule(layer).bias is not None:
                self.sinks[layer] = ("bias", [])
            elif maps is not None:
                self.sinks[layer] = ("bn", maps)
            else:
                self.sinks[layer] = ("extra", [])
                extra.append(f"{layer}.bias" if layer else "bias")
        self.extra_keys: tuple[str, ...] = tuple(extra)

    def resolve(self, alive: dict[tuple[str, str], np.ndarray]) -> dict[str, Sink]:
        """Sinks with BatchNorm positions in the coordinates of a model shaped by ``alive``."""
        resolved: dict[str, Sink] = {}
        for layer, (kind, maps) in self.sinks.items():
            if kind != "bn":
                resolved[layer] = (kind, maps)
                continue
            targets = []
            for bn, dense_map in maps:
                if dense_map is None:  # same channels as the layer's output
                    n = (int(alive[(layer, "out")].sum()) if (layer, "out") in alive
                         else self._out_sizes[layer])
                    targets.append((bn, np.arange(n)))
                else:
                    rank = np.cumsum(alive[(bn, "out")]) - 1
                    targets.append((bn, rank[dense_map[np.flatnonzero(alive[(layer, "out")])]]))
            resolved[layer] = ("bn", targets)
        return resolved
