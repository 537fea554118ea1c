"""Where each neuron group lives in a *compact* model: its parameter slices and output tensors.

Built from the surgery's :class:`~fedprune.surgery.NeuronGroup` roles (``graph.group_layers``):

* ``params``: every parameter slice that belongs to neuron ``i`` of the group, i.e. the tensors of
  the producer layers (conv/linear ``weight`` rows and ``bias``, depthwise conv) and of the group's
  BatchNorms (``weight``/``bias``), each with the dim and the compact positions of the alive neurons;
* ``outputs``: the modules whose forward output carries the neurons on dim 1 (the group's
  BatchNorms if it has any, otherwise its producer layers), with the same positions;
* ``layers``: the conv/linear layers producing the neurons (for FLOPs accounting);
* ``consumers``: the weight columns of the layers that read the neurons (SeReNe removes a neuron
  whose outgoing weights are all zero).

Everything is in the order of ``site.alive`` (dense indices of the alive neurons, ascending), which
is also the order of the compact model, so index ``i`` of any per-neuron vector of a method is
neuron ``site.alive[i]`` of the dense reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class ParamSlice:
    """``param`` indexed along ``dim`` at ``pos`` (one position per alive neuron, site order)."""

    name: str
    param: nn.Parameter
    dim: int
    pos: torch.Tensor

    def rows(self) -> torch.Tensor:
        """The neurons' slices as a ``(neurons, -1)`` tensor (detached view/copy)."""
        p = self.param.detach().index_select(self.dim, self.pos)
        return p.movedim(self.dim, 0).reshape(len(self.pos), -1)

    @property
    def is_weight(self) -> bool:
        """True for conv/linear weights (``ndim >= 2``): the neuron's incoming connections."""
        return self.param.dim() >= 2


@dataclass
class NeuronSite:
    """One neuron group in the current compact model (see module docstring)."""

    group: str
    dense_size: int
    alive: np.ndarray
    params: list[ParamSlice] = field(default_factory=list)
    outputs: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    #: consumer weights: ``(param, dim, positions of neuron i)`` per consumer layer, site order
    consumers: list[tuple[nn.Parameter, int, list[torch.Tensor]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.alive)


def _axis_alive(graph, mask, inputs: bool = False) -> dict[str, np.ndarray]:
    """Dense alive vector of every grouped layer's output (or input) axis under ``mask``."""
    out: dict[str, np.ndarray] = {}
    for g in graph.groups:
        vec = np.asarray(mask[g.name])
        for r in g.layers:
            if (r.role == "in") != inputs:
                continue
            if r.module not in out:
                key = f"{r.module}.weight" if f"{r.module}.weight" in graph.dense_shapes else \
                    f"{r.module}.running_mean"
                out[r.module] = np.ones(graph.dense_shapes[key][1 if inputs else 0], dtype=bool)
            out[r.module][np.asarray(r.index)] = vec[np.asarray(r.neuron)]
    return out


def build_sites(graph, model: nn.Module, mask) -> dict[str, NeuronSite]:
    """Sites of every prunable group of ``graph`` in ``model`` (compact for ``mask``).

    Guarantee: every ``ParamSlice.pos`` has one entry per alive neuron and indexes ``param`` along
    ``dim`` within bounds; roles whose neurons do not map one-to-one onto positions are skipped.
    """
    params = dict(model.named_parameters())
    axes = _axis_alive(graph, mask)
    in_axes = _axis_alive(graph, mask, inputs=True)
    sites: dict[str, NeuronSite] = {}
    for g in graph.groups:
        alive = np.flatnonzero(np.asarray(mask[g.name]))
        site = NeuronSite(g.name, int(g.size), alive)
        norms = [r for r in g.layers if r.role == "norm"]
        producers = [r for r in g.layers if r.role in ("out", "depthwise")]
        for r in g.layers:
            if r.role == "in":
                _add_consumer(site, r, params, in_axes)
                continue
            neuron = np.asarray(r.neuron)
            index = np.asarray(r.index)
            if len(np.unique(neuron)) != len(neuron):
                continue  # one neuron at several positions of a producing axis: not a slice
            pos_of = np.full(g.size, -1, dtype=np.int64)
            pos_of[neuron] = index
            dense_pos = pos_of[alive]
            if (dense_pos < 0).any():
                continue
            rank = np.cumsum(axes[r.module]) - 1
            pos = torch.as_tensor(rank[dense_pos], dtype=torch.long)
            for key, dim in r.tensors:
                p = params.get(key)
                if p is None or (len(pos) and p.shape[dim] <= int(pos.max())):
                    continue
                site.params.append(ParamSlice(key, p, dim, pos))
            if (r in norms) or (not norms and r in producers):
                site.outputs.append((r.module, pos))
            if r in producers and r.kind in ("conv", "linear", "depthwise"):
                site.layers.append(r.module)
        sites[g.name] = site
    return sites


def _add_consumer(site: NeuronSite, r, params, in_axes) -> None:
    """Record the consumer weight columns (compact positions) of every alive neuron of ``site``."""
    p = params.get(f"{r.module}.weight")
    if p is None or r.module not in in_axes:
        return
    rank = np.cumsum(in_axes[r.module]) - 1
    neuron, index = np.asarray(r.neuron), np.asarray(r.index)
    cols = [torch.as_tensor(rank[index[neuron == j]], dtype=torch.long) for j in site.alive]
    if any(len(c) == 0 or int(c.max()) >= p.shape[1] for c in cols):
        return
    site.consumers.append((p, 1, cols))
