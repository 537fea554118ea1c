"""Exceptions raised by :mod:`fedprune.surgery`."""

from __future__ import annotations


class SurgeryError(RuntimeError):
    """A model cannot be traced, compacted or expanded as asked."""


class MaskError(ValueError):
    """A :class:`~fedprune.surgery.NeuronMask` (or the arrays behind one) is invalid.

    The message always names the offending group, so a bad mask that arrives in a
    Flower record can be traced back to the layer it belongs to.
    """


class FoldWarning(UserWarning):
    """A removed neuron's output was not constant, so folding it forward is inexact."""
