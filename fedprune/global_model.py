"""The server's side of the round trip, without Flower: the global model, its mask, and aggregation.

The global model is kept *dense-shaped and canonical*: the coordinates of globally pruned neurons are
zero and their constant outputs are already folded into their consumers, so compacting it never
changes its function. Clients receive the compact model (``payload``) and reply with compact tensors
plus their own mask (``ClientUpdate``); ``aggregate`` validates each reply, expands it to dense shape,
averages coordinate-wise over the clients that kept each coordinate, and updates the global mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedprune.aggregation import PRUNES_KEPT_NEURONS, MaskedUpdate, masked_mean, update_global_mask
from fedprune.config import ExperimentConfig
from fedprune.data import dataset_info
from fedprune.models import build_model, example_input
from fedprune.surgery import MaskError, NeuronGraph, NeuronMask


def effective_mask_policy(cfg: ExperimentConfig) -> str:
    """The global mask policy a run uses: ``strategy.mask-policy``, except ``keep`` when some client
    runs ``fedrolex`` (its rolling windows need every neuron); ``ValueError`` for fedrolex with a
    policy that prunes neurons some client kept (``PRUNES_KEPT_NEURONS``), which would prune
    neurons that later windows train."""
    methods = "+".join(cfg.methods.names) + "," + cfg.fleet.methods
    if "fedrolex" not in methods:
        return cfg.strategy.mask_policy
    if cfg.strategy.mask_policy in PRUNES_KEPT_NEURONS:
        raise ValueError(f"strategy.mask-policy = {cfg.strategy.mask_policy!r} cannot run with fedrolex: "
                         "its rolling windows need every neuron; use 'keep' (or 'unanimous', which "
                         "becomes 'keep')")
    return "keep"


class InvalidUpdate(ValueError):
    """A client's reply cannot be aggregated (bad mask, tensors that do not match it, NaN/Inf)."""


@dataclass
class ClientUpdate:
    """What a client sends back: compact tensors, its dense-relative neuron mask, its example count."""

    client: str
    arrays: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


def array_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of a dict of arrays as they travel (raw tensor data)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torch state_dict as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def numpy_to_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Numpy arrays as a torch state_dict (copies)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


class GlobalModel:
    """Dense reference architecture + global neuron mask + canonical dense weights."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.mask_policy = effective_mask_policy(cfg)
        info = dataset_info(cfg.data.dataset)
        self.info = info
        self.example = example_input(info.channels, info.image_size)
        dense = build_model(cfg.model.name, info.channels, info.num_classes, info.image_size,
                            seed=cfg.run.seed)
        self.graph = NeuronGraph.from_model(dense, self.example)
        self.mask = NeuronMask.full(self.graph)
        self._template = dense
        self._compact_cache: tuple[dict, NeuronMask, nn.Module] | None = None
        self.dense: dict[str, np.ndarray] = state_to_numpy(dense.state_dict())
        self.dense_param_bytes = array_bytes(self.dense)

    # ------------------------------------------------------------------ models

    def dense_model(self) -> nn.Module:
        """The dense reference module loaded with the current (canonical) global weights."""
        self._template.load_state_dict(numpy_to_state(self.dense))
        return self._template

    def compact_model(self) -> nn.Module:
        """The global model with every globally pruned neuron physically removed (eval mode).

        Built once per (dense weights, mask) and reused: a round asks for it several times (payload,
        reply, evaluation, parameter count). Callers must not modify it.
        """
        cached = self._compact_cache
        if cached is None or cached[0] is not self.dense or cached[1] is not self.mask:
            model = self.graph.compact(self.dense_model(), self.mask).eval()
            cached = self._compact_cache = (self.dense, self.mask, model)
        return cached[2]

    def payload(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """What the server sends: the compact global tensors and the global mask."""
        return state_to_numpy(self.compact_model().state_dict()), self.mask.to_arrays()

    def load_state(self, dense: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray]) -> None:
        """Restore from a checkpoint (dense canonical tensors + mask arrays); validates both."""
        restored = NeuronMask.from_arrays(self.graph, dict(mask))
        missing = set(self.dense) ^ set(dense)
        if missing:
            raise InvalidUpdate(f"checkpoint tensors do not match the model: {sorted(missing)[:5]}")
        for k, v in dense.items():
            if tuple(v.shape) != tuple(self.dense[k].shape):
                raise InvalidUpdate(f"checkpoint tensor {k!r} has shape {tuple(v.shape)}, "
                                    f"expected {tuple(self.dense[k].shape)}")
        self.dense = {k: np.array(v, copy=True) for k, v in dense.items()}
        self.mask = restored

    # ------------------------------------------------------------------ aggregation

    def expand_update(self, update: ClientUpdate) -> MaskedUpdate:
        """Validate one reply and return it dense-shaped with its coordinate masks.

        Raises ``InvalidUpdate`` naming the client and the problem: a mask of the wrong shape or one
        that empties a group, tensors whose keys or shapes do not match that mask, NaN/Inf values,
        a non-positive example count.
        """
        who = f"client {update.client}"
        if update.num_examples <= 0:
            raise InvalidUpdate(f"{who}: num-examples = {update.num_examples}, expected > 0")
        try:
            mask = NeuronMask.from_arrays(self.graph, dict(update.mask))
        except MaskError as err:
            raise InvalidUpdate(f"{who}: bad mask: {err}") from None
        expected = self.graph.compact_shapes(mask)
        if set(expected) != set(update.arrays):
            diff = sorted(set(expected) ^ set(update.arrays))[:5]
            raise InvalidUpdate(f"{who}: tensors do not match its mask (keys differ: {diff})")
        for key, shape in expected.items():
            got = np.asarray(update.arrays[key])
            if tuple(got.shape) != tuple(shape):
                raise InvalidUpdate(f"{who}: tensor {key!r} has shape {tuple(got.shape)}, its mask "
                                    f"implies {tuple(shape)}")
            if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
                raise InvalidUpdate(f"{who}: tensor {key!r} contains NaN or Inf")
        dense = state_to_numpy(self.graph.expand(numpy_to_state(update.arrays), mask))
        return MaskedUpdate(dense, self.graph.coordinate_masks(mask), float(update.num_examples))

    def aggregate(self, updates: Sequence[ClientUpdate], min_accepted: int = 1) -> dict[str, Any]:
        """Fold valid replies into the global model; returns ``{"accepted", "rejected", "applied"}``.

        Every reply is validated first; invalid ones are skipped (never poison the global model) and
        reported with their reason. The global model changes only when at least ``min_accepted``
        replies are valid (``applied``): the quorum counts valid replies only.
        """
        accepted: list[tuple[ClientUpdate, MaskedUpdate]] = []
        rejected: dict[str, str] = {}
        # a fixed order (by client) makes the floating-point sums independent of reply order
        for u in sorted(updates, key=lambda u: (len(u.client), u.client)):
            try:
                accepted.append((u, self.expand_update(u)))
            except InvalidUpdate as err:
                rejected[u.client] = str(err)
        applied = len(accepted) >= max(1, min_accepted)
        if applied:
            self.dense = masked_mean(self.dense, [m for _, m in accepted])
            new_mask = update_global_mask(
                self.mask.to_arrays(), [u.mask for u, _ in accepted],
                [u.num_examples for u, _ in accepted],
                self.mask_policy, self.cfg.strategy.quorum)
            self.mask = NeuronMask.from_arrays(self.graph, new_mask)
            self._canonicalize()
        return {"accepted": [u.client for u, _ in accepted], "rejected": rejected, "applied": applied}

    def _canonicalize(self) -> None:
        """Fold the constants of globally pruned neurons forward and zero their coordinates."""
        compact = self.graph.compact(self.dense_model(), self.mask)
        self.dense = state_to_numpy(self.graph.expand(compact.state_dict(), self.mask))

    # ------------------------------------------------------------------ facts

    def params_alive(self) -> int:
        """Parameters of the compact global model."""
        return int(sum(p.numel() for p in self.compact_model().parameters()))

    def dense_params(self) -> int:
        """Parameters of the dense reference model."""
        return int(sum(p.numel() for p in self._template.parameters()))
