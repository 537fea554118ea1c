"""The memory of SeReNe's sensitivity pass, replayed by the trainer's memory estimate.

:class:`SensitivityPassMemory` runs, inside the reference training step, the very
:class:`~fedprune.methods.sensitivity.SensitivityProbe` that SeReNe arms on a training step: forward
hooks keep the hooked neuron-carrying outputs of the forward pass, and after the loss the batched
eq. 2 backward over the ``C`` outputs runs with the graph retained. SeReNe keeps one small
per-neuron sensitivity vector per group until its weight update after the optimizer step.

The hooked modules are ``modules`` when given (the names SeReNe hooks: its sites' output modules);
otherwise the same choice as the sites': every BatchNorm, and every conv/linear not directly followed
(in module order) by a BatchNorm of its width (the probe ignores the logits).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from fedprune.methods.base import StepMemory
from fedprune.methods.sensitivity import SensitivityProbe


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

    def before_forward(self, model: nn.Module) -> SensitivityProbe:
        """Hook and arm SeReNe's probe on the neuron-carrying outputs."""
        probe = SensitivityProbe(model, {n: [(n, None)] for n, _ in self._hooked(model)})
        probe.armed = True
        return probe

    def after_forward(self, state: SensitivityProbe) -> None:
        """Remove the probe's forward hooks (the outputs it kept stay for the backward)."""
        state.unhook()

    def before_backward(self, state: SensitivityProbe, outputs: torch.Tensor, loss) -> dict[str, torch.Tensor]:
        """The batched eq. 2 backward; returns the per-neuron sensitivity vectors SeReNe keeps."""
        return state.compute(outputs)
