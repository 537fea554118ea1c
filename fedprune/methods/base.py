"""The protocol between the local trainer and the methods.

The trainer (``fedprune.training``) owns the model, optimizer, batch size and memory budget; it calls
the hooks of every enabled :class:`Method` in ``HOOK_ORDER`` at fixed points of the loop::

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

A hook that returns a mask never edits the model itself: the trainer applies it through
``graph.prune`` (physical removal), rebuilds the optimizer and recomputes the batch size, then calls
``detach``/``attach`` on every method so per-neuron state can be re-indexed.
"""

from __future__ import annotations

from typing import Any


class Method:
    """Base class: every hook is a no-op; subclasses override what they need."""

    name: str = "base"
    #: True when the method may remove neurons (the trainer then re-measures memory after changes).
    structural: bool = False

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # ------------------------------------------------------------------ lifecycle
    def begin(self, ctx) -> None:
        """Called once per ``train_local`` call, after ``load_state_dict``."""

    def attach(self, ctx) -> None:
        """(Re)bind to ``ctx.model`` (hooks, per-neuron indices); called after every rebuild."""

    def detach(self, ctx) -> None:
        """Remove hooks and undo any reversible model edits (e.g. ``requires_grad``)."""

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

    # ------------------------------------------------------------------ reporting / state
    def extra_bytes(self, ctx) -> int:
        """Bytes of host (numpy) state the method keeps alive during training (budget accounting).

        Torch tensors kept between steps are reported by the trainer itself; this is for state the
        tensor tracker cannot see. Must be an upper bound valid from the start of training.
        """
        return 0

    def metrics(self, ctx) -> dict[str, Any]:
        """Flat JSON-able metrics of this call, keys prefixed with ``<name>_``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State that must survive federated rounds (plain numpy arrays / scalars only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` of a previous round (ignores unknown keys)."""
