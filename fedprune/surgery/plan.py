"""Index plan: from neuron masks to the exact positions kept in every tensor.

The plan maps each layer that a group touches to its :class:`LayerAxes`. From a
mask it derives, per layer axis, the alive positions of the dense reference; from
two nested masks (``target`` within ``current``) it derives the positions to keep
*in the current (compact) coordinates*. All state-dict level operations (compact
indexing, expand, coordinate masks) are pure functions of this plan.

Invariant: for every dense key ``k`` and mask ``m``,
``compact_tensor(expand_tensor(t, m), m) == t`` bit for bit, and
``expand_tensor(compact_tensor(d, m), m) == d * coordinate_mask(m)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .errors import SurgeryError
from .groups import AxisMap, LayerAxes, NeuronGroup, Segment
from .mask import NeuronMask


def split_key(key: str) -> tuple[str, str]:
    """``"layer1.0.conv1.weight"`` -> ``("layer1.0.conv1", "weight")``."""
    module, _, tensor = key.rpartition(".")
    return module, tensor


class IndexPlan:
    """Per-layer axis ownership for a list of neuron groups (over the dense reference)."""

    def __init__(self, groups: list[NeuronGroup], axis_lengths: Mapping[tuple[str, str], int]):
        """``axis_lengths[(layer, "out"|"inp")]`` is the dense length of that layer axis."""
        self.group_ids = {g.name: i for i, g in enumerate(groups)}
        self.layers: dict[str, LayerAxes] = {}
        for gid, group in enumerate(groups):
            for role in group.layers:
                axes = self.layers.setdefault(role.module, LayerAxes(kind=role.kind))
                attr = "inp" if role.role == "in" else "out"
                if getattr(axes, attr) is None:
                    setattr(axes, attr, AxisMap(length=int(axis_lengths[(role.module, attr)])))
                try:
                    getattr(axes, attr).add(Segment(gid, role.index, role.neuron))
                except ValueError as exc:
                    raise SurgeryError(f"layer {role.module!r}: {exc} ({group.name!r})") from None

    # -- masks -> positions ---------------------------------------------------------------
    def _vectors(self, mask: NeuronMask) -> list[np.ndarray]:
        return [mask[name] for name in self.group_ids]

    def alive(self, mask: NeuronMask) -> dict[tuple[str, str], np.ndarray]:
        """``{(layer, "out"|"inp"): dense alive vector}`` for every planned axis."""
        vecs = self._vectors(mask)
        return {(layer, attr): axis.alive(vecs)
                for layer, axes in self.layers.items()
                for attr, axis in (("out", axes.out), ("inp", axes.inp)) if axis is not None}

    def keep(self, current: NeuronMask, target: NeuronMask) -> dict[tuple[str, str], np.ndarray]:
        """Positions to keep along each axis, in the coordinates of a model shaped by ``current``."""
        cur, tgt = self.alive(current), self.alive(target)
        return {k: np.flatnonzero(tgt[k][cur[k]]) for k in cur}

    # -- tensors --------------------------------------------------------------------------
    def tensor_dims(self, key: str) -> list[tuple[int, str]]:
        """``[(dim, "out"|"inp")]`` along which the tensor under ``key`` is indexed."""
        module, tensor = split_key(key)
        axes = self.layers.get(module)
        if axes is None:
            return []
        return [(d, "out" if ax is axes.out else "inp") for d, ax in axes.tensor_axes(tensor)]

    def index_tensor(self, key: str, t: torch.Tensor,
                     positions: Mapping[tuple[str, str], np.ndarray]) -> torch.Tensor:
        """``t`` restricted to ``positions`` along each planned dim (a new tensor)."""
        module, _ = split_key(key)
        for dim, attr in self.tensor_dims(key):
            idx = torch.as_tensor(positions[(module, attr)], dtype=torch.long, device=t.device)
            t = t.index_select(dim, idx)
        return t

    def expand_tensor(self, key: str, t: torch.Tensor, dense_shape: tuple[int, ...],
                      alive: Mapping[tuple[str, str], np.ndarray]) -> torch.Tensor:
        """Scatter a compact tensor into zeros of ``dense_shape`` at the alive positions."""
        dims = self.tensor_dims(key)
        if not dims:
            return t.clone()
        module, _ = split_key(key)
        out = t.new_zeros(dense_shape)
        index: list = [slice(None)] * len(dense_shape)
        idx = [torch.as_tensor(np.flatnonzero(alive[(module, a)]), device=t.device) for _, a in dims]
        if len(dims) == 1:
            index[dims[0][0]] = idx[0]
        else:  # weight of a conv/linear: rows x columns
            index[0], index[1] = idx[0][:, None], idx[1][None, :]
        out[tuple(index)] = t
        return out

    def coordinate_mask(self, key: str, dense_shape: tuple[int, ...],
                        alive: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:
        """Boolean array of ``dense_shape``: which coordinates of the tensor are alive."""
        out = np.ones(dense_shape, dtype=bool)
        module, _ = split_key(key)
        for dim, attr in self.tensor_dims(key):
            shape = [1] * len(dense_shape)
            shape[dim] = dense_shape[dim]
            out &= alive[(module, attr)].reshape(shape)
        return out

    def compact_shape(self, key: str, dense_shape: tuple[int, ...],
                      alive: Mapping[tuple[str, str], np.ndarray]) -> tuple[int, ...]:
        shape = list(dense_shape)
        module, _ = split_key(key)
        for dim, attr in self.tensor_dims(key):
            shape[dim] = int(alive[(module, attr)].sum())
        return tuple(shape)
