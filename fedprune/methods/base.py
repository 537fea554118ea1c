"""The protocol between the local trainer and the methods.

The trainer (``fedprune.train``) owns the model, optimizer, batch size and memory budget; it calls
the hooks of every enabled :class:`Method` in ``HOOK_ORDER`` at fixed points of the loop::

    plan_round(ctx) -> RoundPlan?    once, before the batch is fitted: the sub-network this client
                                     trains this round and how it treats its budget (baselines)
    begin(ctx)                       once, after load_state_dict
    attach(ctx)                      after begin and after every structural change (new compact model)
    for each epoch:
        epoch_start(ctx) -> mask?    a returned mask (subset of ctx.mask) removes neurons now
        for each step:
            before_forward(ctx)
            after_forward(ctx, out, loss)   before loss.backward (SeReNe's extra backward lives here)
            after_backward(ctx)             gradients are in .grad; edit them here
            after_step(ctx)                 after optimizer.step; edit weights here
            step_end(ctx) -> mask?          structural change between steps (DynHP)
        epoch_end(ctx) -> mask?      (SeReNe / LOBSTER thresholding)
    detach(ctx)                      before a structural change and at the end: remove hooks, restore
                                     requires_grad
    metrics(ctx) -> dict             flat JSON-able numbers, keys prefixed with the method name
    state_dict() -> dict             plain numpy arrays / Python scalars, survives federated rounds

Memory hooks, read by the trainer's budgeting (batch fit, prediction, measurement) and by the
client runtime / feasibility check::

    step_memory(ctx) -> StepMemory?  what the method adds to one training step (extra passes, temporaries)
    kept_tensor_bytes(ctx) -> int    torch tensors kept between steps (an upper bound from the start)
    kept_tensors() -> [Tensor]       those tensors, named to the memory tracker
    extra_bytes(ctx) -> int          host (numpy) state the tensor tracker cannot see
    prune_to_fit_floor() -> int?     neurons per group the method may prune down to so that a model
                                     fits its budget before training (None: it never does)

A hook that returns a mask never edits the model itself: the trainer applies it through
``graph.prune`` (physical removal), rebuilds the optimizer and recomputes the batch size, then calls
``detach``/``attach`` on every method so per-neuron state can be re-indexed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RoundPlan:
    """What a method decides before a client's round, applied by the trainer before the batch fit.

    ``mask``: the sub-network to train (intersected with the received mask; ``None``: all of it).
    ``fixed_batch``: train at ``cfg.batch_size`` only (no batch fitting; a model that does not fit
    at that batch does not train). ``unbounded``: ignore the memory budget (the peak is still
    measured). ``skip``: a non-empty reason makes the client skip the round ("does not fit").
    """

    mask: Any = None
    fixed_batch: bool = False
    unbounded: bool = False
    skip: str = ""


class Method:
    """Base class: every hook is a no-op; subclasses override what they need."""

    name: str = "base"

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # ------------------------------------------------------------------ lifecycle
    def begin(self, ctx) -> None:
        """Called once per ``train_local`` call, after ``load_state_dict``."""

    def attach(self, ctx) -> None:
        """(Re)bind to ``ctx.model`` (hooks, per-neuron indices); called after every rebuild."""

    def detach(self, ctx) -> None:
        """Remove hooks and undo any reversible model edits (e.g. ``requires_grad``)."""

    def plan_round(self, ctx) -> RoundPlan | None:
        """Before the batch is fitted: the sub-network and budget rule of this round (``None``: none)."""
        return None

    def smaller_plan(self, ctx) -> "NeuronMask | None":
        """After the plan was applied, when the trainer finds that not even its batch fits the budget
        as the process's resident memory counts it: a smaller mask (a subset of ``ctx.mask``) to try
        instead, or ``None`` (the default) to skip the round."""
        return None

    def handles_budget(self) -> bool:
        """Whether the method itself decides what the client trains under its budget (a sub-model,
        skipping the round, or no limit), so the config check must not require the dense model to fit."""
        return False

    # ------------------------------------------------------------------ loop hooks
    def epoch_start(self, ctx):
        """Start of a local epoch; may return a new (smaller) NeuronMask."""
        return None

    def before_forward(self, ctx) -> None:
        """Before the forward pass of a step."""

    def after_forward(self, ctx, outputs, loss) -> None:
        """After the forward pass of a step, before ``loss.backward()``."""

    def after_backward(self, ctx) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``."""

    def after_step(self, ctx) -> None:
        """After ``optimizer.step()``."""

    def step_end(self, ctx):
        """End of a step; may return a new (smaller) NeuronMask."""
        return None

    def epoch_end(self, ctx):
        """End of a local epoch; may return a new (smaller) NeuronMask."""
        return None

    # ------------------------------------------------------------------ memory
    def step_memory(self, ctx) -> "StepMemory | None":
        """What this method adds to the memory of one training step (``None``: nothing).

        Called with the context of the current model (``ctx.model``, ``ctx.sites``); the result is
        part of the memory estimate's cache key, so it must be hashable and compare by value.
        """
        return None

    def kept_tensor_bytes(self, ctx) -> int:
        """Bytes of torch tensors the method keeps alive between steps for ``ctx.model``.

        Must be an upper bound valid from the start of training (before ``attach``): the batch is
        fitted before the method binds to the model.
        """
        return 0

    def kept_tensors(self) -> list:
        """The torch tensors counted by :meth:`kept_tensor_bytes` that exist now (after ``attach``)."""
        return []

    def prune_to_fit_floor(self) -> int | None:
        """Neurons per group this method may prune the model down to before training when even the
        minimum batch does not fit the budget; ``None`` when it never prunes to fit."""
        return None

    def extra_bytes(self, ctx) -> int:
        """Bytes of host (numpy) state the method keeps alive during training (budget accounting).

        Torch tensors kept between steps are reported by the trainer itself; this is for state the
        tensor tracker cannot see. Must be an upper bound valid from the start of training.
        """
        return 0

    # ------------------------------------------------------------------ reporting / state
    def metrics(self, ctx) -> dict[str, Any]:
        """Flat JSON-able metrics of this call, keys prefixed with ``<name>_``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State that must survive federated rounds (plain numpy arrays / scalars only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` of a previous round (ignores unknown keys)."""


class StepMemory:
    """A method's additions to one training step, replayed by the memory estimate and measurement.

    The trainer's reference step (``fedprune.train.budgeting.ReferenceStep``) runs ``zero_grad``,
    the forward pass, the loss, ``backward`` and ``optimizer.step`` and calls these hooks around
    them, so that the predicted peak includes the method's extra passes and temporaries. Subclasses
    are frozen dataclasses (hashable, compared by value: they are part of the estimate's cache key).
    """

    def before_forward(self, model) -> Any:
        """Before the forward pass; returns this step's private state (hooks to remove, ...)."""
        return None

    def after_forward(self, state: Any) -> None:
        """Right after the forward pass (also when it raised): remove forward hooks here."""

    def before_backward(self, state: Any, outputs, loss) -> Any:
        """After the loss, before ``loss.backward()``; returns what stays alive until the step ends."""
        return None

    def after_step(self, model) -> None:
        """After ``optimizer.step()``."""
