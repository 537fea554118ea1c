"""Neuron groups: the data model (no torch-pruning here).

A *neuron group* is a set of channels that must be removed together. Neuron ``j`` of
a group appears in several layers at once; each appearance is one
:class:`LayerRole`: the layer, the *role* the group plays for it, and the exact
positions along that layer's neuron axis (with the group neuron each position
belongs to). Positions and neurons are over the dense reference architecture.

Roles (what removing neuron ``j`` does to the layer):

``"out"``        the layer *produces* the neuron (conv/linear output channel):
                 rows of ``weight`` and entries of ``bias`` along dim 0.
``"depthwise"``  a depthwise conv carries the neuron through (in == out == groups):
                 it also produces it, from its own incoming ``weight[j]``.
``"norm"``       per-channel normalisation (BatchNorm): every tensor along dim 0.
``"in"``         the layer *consumes* the neuron (input channel / input feature):
                 ``weight`` along dim 1. One neuron may map to several positions
                 (a conv channel flattened into ``H*W`` linear features), and one
                 layer may consume several groups (concatenations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PRODUCER_ROLES = ("out", "depthwise")

# (layer kind, role) -> tensors indexed by the role, as (tensor name, dim).
ROLE_TENSORS: dict[tuple[str, str], tuple[tuple[str, int], ...]] = {
    ("conv", "out"): (("weight", 0), ("bias", 0), ("fold_kernel", 0)),
    ("conv", "in"): (("weight", 1),),
    ("linear", "out"): (("weight", 0), ("bias", 0)),
    ("linear", "in"): (("weight", 1),),
    ("depthwise", "depthwise"): (("weight", 0), ("bias", 0)),
    ("batchnorm", "norm"): (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
}


@dataclass(frozen=True, eq=False)
class LayerRole:
    """One layer's share of a neuron group.

    ``index[k]`` is a position along the layer's neuron axis (dim 0 for ``out``,
    ``depthwise`` and ``norm``; dim 1 of ``weight`` for ``in``) and ``neuron[k]`` the
    group neuron it belongs to. ``tensors`` lists the ``(state_dict key, dim)`` pairs
    that the group indexes in this layer.
    """

    module: str
    kind: str
    role: str
    index: np.ndarray
    neuron: np.ndarray
    tensors: tuple[tuple[str, int], ...]

    @property
    def is_producer(self) -> bool:
        return self.role in PRODUCER_ROLES


@dataclass(frozen=True, eq=False)
class NeuronGroup:
    """A set of channels removed together; ``size`` neurons in the dense reference.

    ``name`` is the first producing layer in ``model.named_modules()`` order, so it is
    stable across processes and unique (a layer's output belongs to one group).
    """

    name: str
    size: int
    layers: tuple[LayerRole, ...] = field(repr=False)

    @property
    def producers(self) -> list[str]:
        """Layers whose incoming weights create the neurons (conv/linear outputs, depthwise)."""
        return [r.module for r in self.layers if r.is_producer]

    @property
    def consumers(self) -> list[str]:
        """Layers that read the neurons as input channels/features."""
        return [r.module for r in self.layers if r.role == "in"]

    @property
    def norms(self) -> list[str]:
        """Per-channel normalisation layers (BatchNorm) that carry the neurons."""
        return [r.module for r in self.layers if r.role == "norm"]


@dataclass(frozen=True, eq=False)
class Segment:
    """Positions ``pos`` of one tensor axis owned by group number ``group``."""

    group: int
    pos: np.ndarray
    neuron: np.ndarray


@dataclass(eq=False)
class AxisMap:
    """Ownership of one neuron axis of one layer (dense length ``length``).

    Positions not covered by any segment are never pruned (network inputs/outputs,
    layers of unsupported groups).
    """

    length: int
    segments: list[Segment] = field(default_factory=list)

    def add(self, seg: Segment) -> None:
        taken = np.zeros(self.length, dtype=bool)
        for s in self.segments:
            taken[s.pos] = True
        if taken[seg.pos].any():
            raise ValueError("two neuron groups claim the same channel")
        self.segments.append(seg)

    def alive(self, masks: list[np.ndarray]) -> np.ndarray:
        """Dense boolean vector of alive positions under per-group alive vectors ``masks``."""
        out = np.ones(self.length, dtype=bool)
        for s in self.segments:
            out[s.pos] = masks[s.group][s.neuron]
        return out


@dataclass(eq=False)
class LayerAxes:
    """The neuron axes of one layer: ``out`` (dim 0 tensors) and ``inp`` (weight dim 1)."""

    kind: str
    out: AxisMap | None = None
    inp: AxisMap | None = None

    def tensor_axes(self, tensor: str) -> list[tuple[int, AxisMap]]:
        """``(dim, axis)`` pairs along which ``tensor`` of this layer is indexed."""
        dims: list[tuple[int, AxisMap]] = []
        if tensor == "weight" and self.kind in ("conv", "linear"):
            if self.out is not None:
                dims.append((0, self.out))
            if self.inp is not None:
                dims.append((1, self.inp))
        elif tensor in ("weight", "bias", "running_mean", "running_var", "fold_kernel"):
            if self.out is not None:
                dims.append((0, self.out))
        return dims
