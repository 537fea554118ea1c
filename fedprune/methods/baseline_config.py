"""Settings of the baselines (``[methods.<name>]`` tables), one dataclass per baseline.

Same conventions as :mod:`fedprune.methods.config`: fields are the config keys, ``validate()``
raises ``ValueError("methods.<name>.<field>=<value>: <why>")`` and returns ``self``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedprune.methods.submodel import DEFAULT_RATIOS, parse_ratios


@dataclass
class FedAvgConfig:
    """``fedavg``: the dense model at ``train.batch-size`` with no memory limit (the upper bound)."""

    def validate(self) -> "FedAvgConfig":
        """Nothing to check; returns ``self``."""
        return self


@dataclass
class FedAvgDropConfig:
    """``fedavg-drop``: the dense model at ``train.batch-size``; a client it does not fit skips the round."""

    def validate(self) -> "FedAvgDropConfig":
        """Nothing to check; returns ``self``."""
        return self


@dataclass
class SmallModelConfig:
    """``small-model``: every client trains the same width-``width`` model (first channels of every
    layer) at ``train.batch-size``. ``width = 0`` (auto): the largest width the memory estimate
    fits into the weakest client's lowest budget less ``headroom`` (a fraction of it), resolved
    once per run from the fleet. The headroom is what a client's process holds besides the step's
    tensors (the received model's buffers, the allocator's fixed costs), which the server cannot
    measure but the client's physical fit counts; without it the weakest client skips its rounds."""

    width: float = 0.0
    headroom: float = 0.1

    def validate(self) -> "SmallModelConfig":
        """Raise ``ValueError`` unless ``0 <= width <= 1`` and ``0 <= headroom < 1``; returns ``self``."""
        if not 0.0 <= self.width <= 1.0:
            raise ValueError(f"methods.small_model.width={self.width!r}: must be in [0, 1] (0: auto)")
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"methods.small_model.headroom={self.headroom!r}: must be in [0, 1)")
        return self


@dataclass
class HeteroFLConfig:
    """``heterofl``: each client trains the first ``ratio`` of every layer's channels, the largest of
    ``ratios`` that fits its budget at ``train.batch-size``."""

    ratios: str = DEFAULT_RATIOS

    def validate(self) -> "HeteroFLConfig":
        """Raise ``ValueError`` unless ``ratios`` lists numbers in (0, 1]; returns ``self``."""
        parse_ratios(self.ratios, "methods.heterofl.ratios")
        return self


@dataclass
class FedRolexConfig:
    """``fedrolex``: like ``heterofl``, but the window of ``ratio`` x channels starts at channel
    ``round - 1`` (mod the layer's width) and rolls by one every round."""

    ratios: str = DEFAULT_RATIOS

    def validate(self) -> "FedRolexConfig":
        """Raise ``ValueError`` unless ``ratios`` lists numbers in (0, 1]; returns ``self``."""
        parse_ratios(self.ratios, "methods.fedrolex.ratios")
        return self
