"""Eq. 2 of SeReNe: the sensitivity of the network outputs to a neuron's activity.

For a neuron ``n`` with activity ``a_n`` and outputs ``y_k`` (the ``C`` logits),
``S_n = (1/C) * sum_k |dy_k / da_n|``, averaged over the batch (and a channel's spatial positions).
All ``C`` derivatives come from one batched backward (``autograd.grad(..., is_grads_batched=True)``
with the ``C`` one-hot output directions). :class:`SensitivityProbe` hooks chosen module outputs and
computes it for a training step's forward; the trainer's memory estimate runs the same probe.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fedprune.methods.partial_grad import activation_grads_only


def eq2_sensitivity(y: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``(1/C) sum_k mean_{batch, positions} |dy_k / da|`` per channel (dim 1) of every tensor in ``acts``.

    ``y`` is ``(B, C)``; every ``acts[i]`` is ``(B, channels, ...)`` and part of ``y``'s graph. One
    batched backward over the ``C`` output directions; the graph is retained. An activity ``y`` does
    not depend on gets zeros.
    """
    c = int(y.shape[1])
    eye = torch.eye(c, dtype=y.dtype, device=y.device)
    directions = eye.unsqueeze(1).expand(c, *y.shape).contiguous()  # (C, B, C): one-hot output k
    with activation_grads_only():  # NEq's partial-gradient layers: no weight gradients in this pass
        grads = torch.autograd.grad(y, acts, grad_outputs=directions, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True)
    out = []
    for a, g in zip(acts, grads):
        if g is None:
            out.append(torch.zeros(a.shape[1], dtype=a.dtype, device=a.device))
            continue
        dims = [1] + list(range(3, g.dim()))  # batch and positions; g is (C, B, channels, ...)
        out.append(g.abs().mean(dim=dims).sum(dim=0) / c)
    return out


class SensitivityProbe:
    """Eq. 2 sensitivity of chosen module outputs, from one batched backward.

    ``outputs`` maps a module name of ``model`` to ``[(group, positions or None), ...]``: the group
    whose neurons are that module's output channels (dim 1) at those positions. While armed, the
    probe keeps the hooked outputs of the forward pass (they are in the graph anyway).
    """

    def __init__(self, model: nn.Module, outputs: Mapping[str, list[tuple[str, torch.Tensor | None]]]):
        self.armed = False
        self._acts: list[tuple[torch.Tensor, list[tuple[str, torch.Tensor | None]]]] = []
        modules = dict(model.named_modules())
        self._handles = [modules[m].register_forward_hook(self._hook(list(entries)))
                         for m, entries in outputs.items()]

    def _hook(self, entries: list[tuple[str, torch.Tensor | None]]):
        def fn(mod, inp, out):
            if self.armed and isinstance(out, torch.Tensor) and out.requires_grad:
                self._acts.append((out, entries))
        return fn

    def compute(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw eq. 2 sensitivity per group (1-D over its channels) for the armed forward's ``outputs``.

        Several output modules of one group are averaged. Disarms the probe; ``{}`` when nothing was
        hooked. The graph is retained, so the training loss can still be backpropagated.
        """
        acts, self._acts = self._acts, []
        self.armed = False
        acts = [(a, e) for a, e in acts if a is not outputs]  # the logits carry no neurons
        if not acts:
            return {}
        sens = eq2_sensitivity(outputs, [a for a, _ in acts])
        acc: dict[str, torch.Tensor] = {}
        cnt: dict[str, int] = {}
        for s, (_, entries) in zip(sens, acts):
            for name, pos in entries:
                r = s.detach() if pos is None else s.detach().index_select(0, pos)
                acc[name] = acc[name] + r if name in acc else r
                cnt[name] = cnt.get(name, 0) + 1
        return {g: v / cnt[g] for g, v in acc.items()}

    def unhook(self) -> None:
        """Remove the forward hooks; outputs already kept stay for :meth:`compute`."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def remove(self) -> None:
        """Remove the forward hooks and drop the kept outputs."""
        self.unhook()
        self._acts = []


def neuron_sensitivity(model: nn.Module, x: torch.Tensor,
                       outputs: Mapping[str, list[tuple[str, torch.Tensor | None]]]) -> dict[str, torch.Tensor]:
    """Raw eq. 2 sensitivity of the given module outputs' channels on input batch ``x`` (one forward).

    ``outputs`` maps a module name to ``[(group, positions or None for all channels), ...]``.
    Guarantee: entry ``c`` of a group's tensor is ``(1/C) sum_k mean |dy_k/da_c|`` for channel ``c``.
    """
    probe = SensitivityProbe(model, outputs)
    try:
        probe.armed = True
        with torch.enable_grad():
            y = model(x)
            return probe.compute(y)
    finally:
        probe.remove()
