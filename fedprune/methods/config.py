"""Hyper-parameters of the pruning/freezing methods, one dataclass per method.

Field names are the config keys (TOML ``[methods.dynhp]`` etc., hyphens become underscores). Only
``bool``/``int``/``float``/``str`` fields, so the experiment config can coerce them. Every class has
``validate()``, which raises ``ValueError("methods.<name>.<field>=<value>: <why>")`` on the first bad
field and returns ``self`` otherwise.

Defaults are chosen for LeNet-5 on Fashion-MNIST over a few federated rounds (or a few centralized
epochs); ``docs/methods.md`` explains each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _check(ok: bool, method: str, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"methods.{method}.{name}={value!r}: {why}")


def _in_open01(method: str, name: str, value: float) -> None:
    _check(0.0 < value < 1.0, method, name, value, "must be in (0, 1)")


def _choice(method: str, name: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, method, name, value, f"expected one of {', '.join(options)}")


@dataclass
class DynHPConfig:
    """Dynamic hard pruning: neurons are physically removed on a schedule of kept parameters.

    ``target_compression`` is the fraction of the dense model's parameters removed once the schedule
    ends (0.8 = 5x fewer parameters). The kept fraction follows ``schedule`` (cubic as in Zhu & Gupta,
    or linear) over the *total* training progress (rounds x local epochs), from ``start_progress`` to
    ``end_progress``; pruning events happen ``prunes_per_epoch`` times per local epoch. Neurons are
    ranked by ``score``: ``"taylor"`` (|mean activation x dLoss/dactivation| on ``score_samples``
    validation samples, layer-normalised) or ``"l2"`` (norm of the neuron's parameters, layer-
    normalised). ``allocation``: ``"uniform"`` (every group keeps the same fraction of its neurons,
    the best-scored ones; shrinks activations, hence memory) or ``"global"`` (one ranking over all
    groups). ``min_neurons`` neurons of every group always stay.
    """

    target_compression: float = 0.8
    schedule: str = "cubic"
    start_progress: float = 0.0
    end_progress: float = 0.75
    prunes_per_epoch: int = 2
    score: str = "taylor"
    score_samples: int = 512
    allocation: str = "uniform"
    min_neurons: int = 2

    def validate(self) -> "DynHPConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self`` when all are valid."""
        m = "dynhp"
        _in_open01(m, "target_compression", self.target_compression)
        _choice(m, "schedule", self.schedule, ("cubic", "linear"))
        _check(0.0 <= self.start_progress < 1.0, m, "start_progress", self.start_progress,
               "must be in [0, 1)")
        _check(self.start_progress < self.end_progress <= 1.0, m, "end_progress", self.end_progress,
               f"must be in (start_progress={self.start_progress}, 1]")
        _check(self.prunes_per_epoch >= 1, m, "prunes_per_epoch", self.prunes_per_epoch, "must be >= 1")
        _choice(m, "score", self.score, ("taylor", "l2"))
        _choice(m, "allocation", self.allocation, ("uniform", "global"))
        _check(self.score_samples >= 1, m, "score_samples", self.score_samples, "must be >= 1")
        _check(self.min_neurons >= 1, m, "min_neurons", self.min_neurons, "must be >= 1")
        return self


@dataclass
class SeReNeConfig:
    """SeReNe: sensitivity-driven shrinking of whole neurons, then neuron-norm thresholding.

    Per step (every ``sensitivity_every`` steps): ``S_n = (1/C) sum_k mean |dy_k/da_n|`` (eq. 2, one
    batched backward), normalised per layer to ``clamp(sensitivity_scale * S_n / max_layer S, 0, 1)``;
    every parameter of neuron ``n`` then becomes ``w <- w - lmbda * w * (1 - S_n)``.
    ``sensitivity = "none"`` is the "l2 + pruning" control (``S = 0``: uniform decay). After ``pwe``
    evaluations (epochs) without a validation-loss improvement, the neurons whose parameter norm
    relative to their layer's largest is under the largest global threshold that raises the
    validation loss on ``threshold_samples`` samples by at most ``twt`` (relative; and at most a
    ``twt`` fraction of the gain over the chance-level loss) are removed physically
    (``remove_neurons``).
    """

    lmbda: float = 1e-4
    sensitivity: str = "eq2"
    sensitivity_scale: float = 1.0
    sensitivity_every: int = 1
    pwe: int = 0
    twt: float = 0.05
    threshold_samples: int = 2048
    remove_neurons: bool = True

    def validate(self) -> "SeReNeConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self`` when all are valid."""
        m = "serene"
        _check(0.0 <= self.lmbda < 1.0, m, "lmbda", self.lmbda, "must be in [0, 1)")
        _choice(m, "sensitivity", self.sensitivity, ("eq2", "none"))
        _check(self.sensitivity_scale > 0, m, "sensitivity_scale", self.sensitivity_scale, "must be > 0")
        _check(self.sensitivity_every >= 1, m, "sensitivity_every", self.sensitivity_every, "must be >= 1")
        _check(self.pwe >= 0, m, "pwe", self.pwe, "must be >= 0")
        _check(self.twt >= 0, m, "twt", self.twt, "must be >= 0")
        _check(self.threshold_samples >= 1, m, "threshold_samples", self.threshold_samples, "must be >= 1")
        return self


@dataclass
class NEqConfig:
    """Neurons at equilibrium: freeze neurons whose output similarity stopped changing.

    At the start of every local epoch, each neuron's outputs on the first ``val_samples`` validation
    samples (spatially average-pooled to at most ``max_spatial`` x ``max_spatial``) are compared with
    the previous evaluation by cosine similarity ``phi``; the velocity ``v = (phi_t - phi_{t-1}) -
    mu_eq * v_{t-1}`` (eq. 3 of the paper, unrolled) decides: ``|v| < eps`` freezes the neuron for the
    epoch, once the neuron has two measured similarities (a velocity; so from its third evaluation on).
    Flags are recomputed every epoch: a neuron whose velocity rises again thaws. With ``skip_layer_grad`` a layer whose neurons are all frozen gets ``requires_grad=False``
    (its weight gradient is not computed at all). Defaults: ``mu_eq = 0`` because eq. 3 weighs the
    first similarity ``phi^0`` (about 1) by ``mu^t``, which keeps every neuron "moving" for the
    first ~log(eps)/log(mu) evaluations, i.e. for most of a run of a few epochs/rounds.
    ``mode = "stochastic"`` is the paper's control: each neuron is frozen for an epoch with
    probability ``stochastic_p`` (draws seeded by ``seed`` and the evaluation count).
    """

    eps: float = 0.02
    mu_eq: float = 0.0
    val_samples: int = 256
    max_spatial: int = 8
    skip_layer_grad: bool = True
    mode: str = "neq"
    stochastic_p: float = 0.5
    seed: int = 0

    def validate(self) -> "NEqConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self`` when all are valid."""
        m = "neq"
        _choice(m, "mode", self.mode, ("neq", "stochastic"))
        _check(0.0 <= self.stochastic_p <= 1.0, m, "stochastic_p", self.stochastic_p, "must be in [0, 1]")
        _check(self.eps >= 0, m, "eps", self.eps, "must be >= 0")
        _check(0.0 <= self.mu_eq < 1.0, m, "mu_eq", self.mu_eq, "must be in [0, 1)")
        _check(self.val_samples >= 1, m, "val_samples", self.val_samples, "must be >= 1")
        _check(self.max_spatial >= 1, m, "max_spatial", self.max_spatial, "must be >= 1")
        return self


@dataclass
class LobsterConfig:
    """LOBSTER: unstructured shrinking of parameters with low loss sensitivity ``|dL/dw|``.

    Per step: ``w <- w - lmbda * w * max(0, 1 - |dL/dw|)``; after ``pwe`` evaluations without a
    validation-loss improvement, the largest global magnitude threshold raising the validation loss by
    at most ``twt`` (relative; and at most a ``twt`` fraction of the gain over the chance-level loss,
    see SeReNe) zeroes weights for good. The zeros are unstructured: tensors keep their shape, so LOBSTER frees **no** training memory (reported as ``lobster_frees_memory = 0``).
    """

    lmbda: float = 1e-4
    pwe: int = 0
    twt: float = 0.05
    threshold_samples: int = 2048

    def validate(self) -> "LobsterConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self`` when all are valid."""
        m = "lobster"
        _check(0.0 <= self.lmbda < 1.0, m, "lmbda", self.lmbda, "must be in [0, 1)")
        _check(self.pwe >= 0, m, "pwe", self.pwe, "must be >= 0")
        _check(self.twt >= 0, m, "twt", self.twt, "must be >= 0")
        _check(self.threshold_samples >= 1, m, "threshold_samples", self.threshold_samples, "must be >= 1")
        return self

