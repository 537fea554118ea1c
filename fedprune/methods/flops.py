"""Backpropagation FLOPs accounting per layer (for NEq's savings and the trainer's metrics).

Accounting (documented in ``docs/methods.md``): for every ``Conv2d``/``Linear`` layer ``l`` with
forward cost ``F_l`` FLOPs per sample (2 x multiply-accumulates, bias ignored), the backward pass costs

* ``F_l`` for the gradient w.r.t. its input, if autograd needs it (the input depends on a trainable
  parameter; never for the first layer), and
* ``F_l * (1 - frozen_l)`` for the gradient w.r.t. its weight, where ``frozen_l`` is the fraction of
  its output neurons that are frozen (0 when the layer is trainable and nothing is frozen; a layer with
  ``requires_grad=False`` counts as fully frozen).

BatchNorm/activation/pooling backward costs are a few FLOPs per activation and are ignored, as in the
NEq paper's accounting of convolution/linear FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerCost:
    """Forward FLOPs per sample of one conv/linear layer and whether its input needs a gradient."""

    name: str
    forward_flops: int
    input_needs_grad: bool


def layer_costs(model: nn.Module, example: torch.Tensor) -> list[LayerCost]:
    """Per-sample forward FLOPs of every Conv2d/Linear layer, in execution order.

    Runs one forward pass of ``example`` (any batch size >= 1) in eval mode with gradients enabled, so
    ``input_needs_grad`` reflects the model's current ``requires_grad`` flags exactly. The model's
    train/eval mode is restored.
    """
    costs: list[LayerCost] = []
    handles = []
    batch = int(example.shape[0])

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                k = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
                flops = 2 * k * out.numel() // batch
            else:
                flops = 2 * mod.in_features * out.numel() // batch
            costs.append(LayerCost(name, int(flops), bool(x.requires_grad)))
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return costs


def bprop_flops(costs: list[LayerCost], frozen: dict[str, float] | None = None,
                trainable: dict[str, bool] | None = None) -> int:
    """Backward FLOPs per sample given per-layer frozen fractions (see the module docstring).

    ``frozen`` maps a layer name to the fraction of its output neurons frozen (missing = 0);
    ``trainable`` maps a layer name to whether its weight requires grad (missing = True).
    """
    frozen = frozen or {}
    trainable = trainable or {}
    total = 0
    for c in costs:
        if c.input_needs_grad:
            total += c.forward_flops
        if trainable.get(c.name, True):
            total += int(round(c.forward_flops * (1.0 - min(1.0, max(0.0, frozen.get(c.name, 0.0))))))
    return total


def dense_bprop_flops(costs: list[LayerCost]) -> int:
    """Backward FLOPs per sample with nothing frozen (``costs`` measured with every parameter trainable)."""
    return bprop_flops(costs)
