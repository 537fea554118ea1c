"""How a client builds its optimizer: a small, hashable, validated spec.

The same ``OptimizerSpec`` drives the trainer's real optimizer (``spec.build``)
and the memory estimate (which optimizer state and step transients to expect),
so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer recipe: ``name`` in {"sgd", "adam", "adamw"}.

    ``momentum`` is SGD's momentum, and Adam's ``beta1`` (0.9 = torch default).
    ``beta2`` and ``nesterov`` are used by Adam(W) and SGD respectively.
    ``foreach=None`` keeps torch's default (per-tensor loop on CPU, foreach on CUDA).
    Invariant: a spec is immutable and hashable (it is part of the estimate cache key).
    """

    name: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta2: float = 0.999
    nesterov: bool = False
    foreach: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZER_NAMES:
            raise ValueError(f"OptimizerSpec.name={self.name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"OptimizerSpec.momentum={self.momentum!r}; expected 0 <= momentum < 1")
        if self.weight_decay < 0.0:
            raise ValueError(f"OptimizerSpec.weight_decay={self.weight_decay!r}; expected >= 0")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"OptimizerSpec.beta2={self.beta2!r}; expected 0 <= beta2 < 1")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0.0):
            raise ValueError("OptimizerSpec.nesterov=True needs name='sgd' and momentum > 0")

    @classmethod
    def coerce(cls, spec: "OptimizerSpec | str | dict | None") -> "OptimizerSpec":
        """Accept a spec, a bare name ("sgd"), a dict of fields, or None (SGD, momentum 0.9)."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls(name=spec)
        if isinstance(spec, dict):
            unknown = set(spec) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown OptimizerSpec key(s): {', '.join(sorted(unknown))}")
            return cls(**spec)
        raise TypeError(f"cannot make an OptimizerSpec from {type(spec).__name__}")

    def build(self, params: Iterable[torch.Tensor], lr: float, foreach: bool | None = None
              ) -> torch.optim.Optimizer:
        """Return a fresh ``torch.optim`` optimizer over ``params`` with learning rate ``lr``."""
        fe = self.foreach if foreach is None else foreach
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                   nesterov=self.nesterov, foreach=fe)
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(self.momentum, self.beta2), weight_decay=self.weight_decay,
                   foreach=fe)
