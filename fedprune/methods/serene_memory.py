"""The memory pattern of SeReNe's sensitivity pass, replayed by the trainer's memory estimate.

:class:`SensitivityPassMemory` adds to the reference training step exactly what
:class:`~fedprune.methods.serene.SensitivityProbe` does on an armed step: forward hooks on the
neuron-carrying module outputs keep the *first* of them alive (the input of ``autograd.grad``) until
the extra backward ends, every hooked output gets a gradient hook that reduces its gradient with
``g.abs().mean(...)`` (an activation-sized temporary), and the extra backward is
``autograd.grad(outputs.sum(), first_output, retain_graph=True)``. SeReNe keeps one small
per-neuron sensitivity vector per group until its weight update after the optimizer step.

The hooked modules are ``modules`` when given (the names SeReNe hooks: its sites' output modules);
otherwise the same choice as the sites': every BatchNorm, and every conv/linear not directly followed
(in module order) by a BatchNorm of its width, except a module that produces the model's output
itself (the logits are no neurons; a hook on them computes nothing at their grad's size).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedprune.methods.base import StepMemory


def sensitivity_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs carry neurons (see module docstring), in module order."""
    bn = nn.modules.batchnorm._BatchNorm
    chosen = []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, bn))]
    for i, (n, m) in enumerate(layers):
        if isinstance(m, bn):
            chosen.append((n, m))
            continue
        width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        nxt = layers[i + 1][1] if i + 1 < len(layers) else None
        if isinstance(nxt, bn) and nxt.num_features == width:
            continue  # its BatchNorm carries the neurons
        chosen.append((n, m))
    return chosen


@dataclass(frozen=True)
class SensitivityPassMemory(StepMemory):
    """SeReNe's extra backward in the reference step (hashable; see module docstring)."""

    modules: tuple[str, ...] | None = None

    def _hooked(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if self.modules is None:
            return sensitivity_modules(model)
        want = set(self.modules)
        return [(n, m) for n, m in model.named_modules() if n in want]

    def before_forward(self, model: nn.Module) -> dict[str, Any]:
        """Hook the neuron-carrying outputs; the state collects the first one and the reductions."""
        state: dict[str, Any] = {"first": None, "collect": False, "acc": {}, "grad_hooks": []}

        def grad_hook(g: torch.Tensor, key: int) -> None:
            if state["collect"]:
                dims = [d for d in range(g.dim()) if d != 1]
                red = g.detach().abs().mean(dim=dims)  # the probe's per-channel reduction
                acc = state["acc"]
                acc[key] = acc[key] + red if key in acc else red

        def fwd_hook(mod, inp, o):
            if isinstance(o, torch.Tensor) and o.requires_grad:
                if state["first"] is None:
                    state["first"] = o
                h = o.register_hook(lambda g, key=id(mod): grad_hook(g, key))
                state["grad_hooks"].append((weakref.ref(o), h))  # weak: keeps no activation alive

        state["handles"] = [m.register_forward_hook(fwd_hook) for _, m in self._hooked(model)]
        return state

    def after_forward(self, state: dict[str, Any]) -> None:
        """Remove the forward hooks."""
        for h in state.pop("handles"):
            h.remove()

    def before_backward(self, state: dict[str, Any], outputs: torch.Tensor, loss) -> list[torch.Tensor]:
        """The extra backward; returns the per-neuron sensitivity vectors SeReNe keeps."""
        for ref, h in state.pop("grad_hooks"):
            if ref() is outputs:  # the logits carry no neurons: the probe never hooks them
                h.remove()
        first, state["first"] = state["first"], None
        sens: list[torch.Tensor] = []
        if first is not None and first is not outputs:
            state["collect"] = True
            torch.autograd.grad(outputs.sum(), first, retain_graph=True)
            state["collect"] = False
            sens = [v * 1.0 for v in state["acc"].values()]
        del first
        state["acc"] = {}
        return sens
