"""The trainer's settings (``TrainConfig``), inputs (``ClientData``), output (``TrainResult``) and the
mutable state its methods see (``TrainContext``).

``TrainConfig``'s defaults are those of the experiment config's ``[train]`` section
(:class:`fedprune.config.TrainSection`): there is one source of defaults, and
:meth:`TrainConfig.from_section` turns a section into trainer settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedprune.config import TrainSection
from fedprune.memory import LR_RULES, OptimizerSpec
from fedprune.train.evaluation import evaluate

_DEFAULTS = TrainSection()
LR_SCHEDULES = ("constant", "cosine")


def _default_optimizer() -> OptimizerSpec:
    return OptimizerSpec(name=_DEFAULTS.optimizer, momentum=_DEFAULTS.momentum,
                         weight_decay=_DEFAULTS.weight_decay)


@dataclass
class TrainConfig:
    """Local training settings (defaults: the experiment config's ``[train]`` defaults).

    ``batch_size`` is the batch without a budget and the reference batch of ``lr`` for
    ``lr_scaling`` (one of ``fedprune.memory.LR_RULES``); with a budget the batch is whatever fits
    in ``[min_batch, max_batch]``. ``measure_every`` > 0 also measures the memory peak every that
    many steps (costly on CPU). ``eval_batch`` is the chunk size of no-budget evaluations.
    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (``lr * (1 + cos(pi * progress)) / 2`` over the
    *total* progress, all rounds). ``lr_warmup`` > 0: while the total progress is below it, a batch
    whose scaled learning rate is above ``lr`` steps at ``lr`` plus that excess times
    ``progress / lr_warmup`` (a batch at or below ``batch_size`` is unaffected).
    """

    epochs: int = _DEFAULTS.local_epochs
    lr: float = _DEFAULTS.lr
    optimizer: OptimizerSpec = field(default_factory=_default_optimizer)
    batch_size: int = _DEFAULTS.batch_size
    min_batch: int = _DEFAULTS.min_batch
    max_batch: int = _DEFAULTS.max_batch
    lr_scaling: str = _DEFAULTS.lr_scaling
    seed: int = 0
    device: str = "cpu"
    measure_every: int = 0
    eval_batch: int = 512
    lr_schedule: str = _DEFAULTS.lr_schedule
    lr_warmup: float = _DEFAULTS.lr_warmup

    @classmethod
    def from_section(cls, section: TrainSection, seed: int) -> "TrainConfig":
        """The trainer's settings for an experiment's ``[train]`` section and run seed (on CPU)."""
        return cls(epochs=section.local_epochs, lr=section.lr,
                   optimizer=OptimizerSpec(name=section.optimizer, momentum=section.momentum,
                                           weight_decay=section.weight_decay),
                   batch_size=section.batch_size, min_batch=section.min_batch,
                   max_batch=section.max_batch, lr_scaling=section.lr_scaling,
                   lr_schedule=section.lr_schedule, lr_warmup=section.lr_warmup, seed=seed, device="cpu")

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs}: must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr={self.lr}: must be > 0")
        if self.min_batch < 1 or self.max_batch < self.min_batch:
            raise ValueError(f"train.min_batch={self.min_batch}, max_batch={self.max_batch}: "
                             "need 1 <= min_batch <= max_batch")
        if not self.min_batch <= self.batch_size <= self.max_batch:
            raise ValueError(f"train.batch_size={self.batch_size}: must be in [min_batch, max_batch]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule={self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
        if self.lr_scaling not in LR_RULES:
            raise ValueError(f"train.lr_scaling={self.lr_scaling!r}: expected one of {', '.join(LR_RULES)}")
        if not 0.0 <= self.lr_warmup < 1.0:
            raise ValueError(f"train.lr_warmup={self.lr_warmup}: must be in [0, 1)")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"train.device={self.device!r}: expected 'cpu' or 'cuda[:N]'")
        return self


@dataclass
class ClientData:
    """One client's tensors: float32 normalised images ``(N, C, H, W)`` and int64 labels.

    ``val_x``/``val_y`` may be empty (or None); the methods then use the first 1024 training
    samples as their validation data.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass
class TrainResult:
    """What ``train_local`` returns (see its docstring)."""

    model: nn.Module
    mask: Any
    num_examples: int
    metrics: dict[str, Any]
    method_state: dict[str, Any]


class TrainContext:
    """Mutable state of one ``train_local`` call, shared with the methods' hooks.

    Methods read: ``model``, ``mask``, ``graph``, ``sites`` (group -> the group's neuron sites:
    where its neurons' parameters and outputs live in the compact model), ``optimizer``,
    ``val_x``/``val_y``, ``eval_batch``, ``batch_size``, ``progress`` (total training progress in
    [0, 1] across rounds), ``epoch_fraction`` (of the current epoch), ``epoch``; they call
    ``val_loss(n)`` and ``costs_changed()``; NEq writes ``frozen_fraction`` (layer -> fraction of
    output neurons frozen).
    """

    def __init__(self, model, mask, graph, data: ClientData, cfg: TrainConfig, round_idx: int,
                 num_rounds: int, budget_bytes: int | None):
        self.model = model
        self.mask = mask
        self.graph = graph
        self.cfg = cfg
        self.round_idx = round_idx
        self.num_rounds = num_rounds
        self.budget_bytes = budget_bytes
        self.train_x, self.train_y = data.train_x, data.train_y
        if data.val_x is not None and len(data.val_x) > 0:
            self.val_x, self.val_y = data.val_x, data.val_y
        else:
            self.val_x, self.val_y = data.train_x[:1024], data.train_y[:1024]
        self.input_shape = tuple(int(s) for s in data.train_x.shape[1:])
        self.sites: dict = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.batch_size = cfg.batch_size
        self.epoch = 0
        self.epoch_fraction = 0.0
        self.frozen_fraction: dict[str, float] = {}
        self._costs_dirty = True
        self.need_measure = True
        self.refit_batch = False  # trainable set changed: the batch must be refitted to the budget

    @property
    def progress(self) -> float:
        """``(round_idx * epochs + epoch + epoch_fraction) / (num_rounds * epochs)``, in [0, 1]."""
        e = self.cfg.epochs
        p = (self.round_idx * e + self.epoch + self.epoch_fraction) / (self.num_rounds * e)
        return min(1.0, max(0.0, p))

    @property
    def eval_batch(self) -> int:
        """Chunk size for evaluation and the methods' scoring passes: under a budget half the training
        batch (a gradient-based score keeps activations and their products with the gradients, more
        than a step per sample), else at least ``cfg.eval_batch``."""
        if self.budget_bytes is not None:
            return max(1, self.batch_size // 2)
        return max(self.batch_size, self.cfg.eval_batch)

    def val_loss(self, samples: int) -> float:
        """Validation loss on the first ``samples`` validation samples (eval mode, no grad)."""
        return evaluate(self.model, self.val_x[:samples], self.val_y[:samples], self.eval_batch)[0]

    def costs_changed(self) -> None:
        """Tell the trainer that ``requires_grad`` flags or frozen sets changed.

        The step's memory changes with them (a layer without weight gradient needs no gradient
        buffer and may not keep its input), so under a budget the batch is refitted before the
        next step: it grows while layers are frozen and shrinks back before they train again.
        """
        self._costs_dirty = True
        self.need_measure = True
        self.refit_batch = True
