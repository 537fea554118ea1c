"""Helpers for testing surgery (used by fedprune's tests; handy for other modules' tests).

``randomize_constants`` gives a model the non-zero biases and BatchNorm statistics
that make folding matter (freshly built models have zero biases/BN shifts, for
which every removed neuron emits 0 and any fold looks exact).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def randomize_constants(model: nn.Module, seed: int = 1234, scale: float = 0.5) -> nn.Module:
    """A deep copy with random biases and BatchNorm affine/statistics (seeded)."""
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)

    def rnd(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(t)

    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.copy_(rnd(m.weight, 1 - scale, 1 + scale))
                    m.bias.copy_(rnd(m.bias, -scale, scale))
                if m.running_mean is not None:
                    m.running_mean.copy_(rnd(m.running_mean, -scale, scale))
                    m.running_var.copy_(rnd(m.running_var, 1 - scale, 1 + scale))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(rnd(m.bias, -0.4 * scale, 0.4 * scale))
    return ref


def outputs_close(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> float:
    """Max abs difference of ``a(x)`` and ``b(x)`` in eval mode (flags restored); asserts <= atol."""
    flags = a.training, b.training
    a.eval(), b.eval()
    try:
        with torch.no_grad():
            ya, yb = a(x), b(x)
    finally:
        a.train(flags[0]), b.train(flags[1])
    assert ya.shape == yb.shape, f"output shapes differ: {tuple(ya.shape)} vs {tuple(yb.shape)}"
    err = float((ya - yb).abs().max())
    assert err <= atol, f"outputs differ by {err:.3g} > {atol}"
    return err
