"""Fold the constant outputs of removed neurons into the layers that read them.

A neuron whose incoming weights are zero emits an input-independent value (its bias
or BatchNorm shift, through activations, pooling, residual adds, flatten). Removing
it must not change the function, so before the channel is cut its contribution is
moved into the consumer, the way the Simplify library does:

* ``nn.Linear`` consumer: ``bias += W[:, removed] @ c`` (exact);
* ``nn.Conv2d`` consumer: ``K[o] = sum_j c_j * W[o, j]``; the interior value
  ``K[o].sum()`` goes to the conv's ``bias``; a conv without bias hands it to the
  ``running_mean`` of the BatchNorms that read its output (directly or through
  concatenations/adds: ``running_mean -= K.sum()``, exact in eval *and* train mode);
  only when neither exists a bias is added to the conv; for zero-padded convs ``K``
  is kept in :class:`FoldedConv2d` to reproduce the borders exactly.

The constants are *measured*, not derived: the model (with removed neurons' incoming
weights already zeroed) runs once in eval mode on a probe input, and each consumer's
removed input channels are read with forward pre-hooks. A channel that is not
constant over batch and space (e.g. zero-padded average pooling) is folded by its
mean and reported with a :class:`FoldWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .errors import FoldWarning
from .modules import FoldedConv2d, needs_border_fold
from .sinks import Sink

REL_TOL = 1e-6


def _removed_channel_stats(x: torch.Tensor, dim: int,
                           pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per selected channel of ``x``: its mean and its largest relative deviation from it."""
    sel = x.detach().index_select(dim, torch.as_tensor(pos, device=x.device)).double()
    sel = sel.movedim(dim, -1).reshape(-1, len(pos))
    c = sel.mean(dim=0)
    dev = ((sel - c).abs() / (1.0 + c.abs())).amax(dim=0)
    return c, dev


def probe_constants(model: nn.Module, removed_inputs: Mapping[str, np.ndarray],
                    probe: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{consumer: (constant of each removed input position, its max relative deviation)}``.

    Runs ``model`` once in eval mode under ``no_grad`` (its train/eval flag is restored).
    """
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, pos in removed_inputs.items():
        module = model.get_submodule(name)
        dim = 1 if isinstance(module, nn.Conv2d) else -1

        def hook(mod, args, name=name, pos=pos, dim=dim):
            if name not in found:
                found[name] = _removed_channel_stats(args[0], dim, pos)
        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def fold_into_consumers(model: nn.Module, removed_inputs: Mapping[str, np.ndarray],
                        probe: torch.Tensor, sinks: Mapping[str, Sink]) -> dict[str, np.ndarray]:
    """Fold each consumer's removed constant inputs into its bias / BN / border term (in place).

    ``removed_inputs[layer]`` are positions along the layer's input axis (current
    coordinates) that are about to be cut. ``sinks[layer]`` says where the interior
    constant goes: ``("bias", [])``, ``("bn", [(bn name, bn position of each output
    channel), ...])`` or ``("extra", [])`` (add a bias to the layer).
    Returns ``{layer: positions}`` of removed inputs that were *not* constant (their
    mean was folded, which is inexact); empty when the fold is exact.
    """
    removed_inputs = {k: v for k, v in removed_inputs.items() if len(v)}
    inexact: dict[str, np.ndarray] = {}
    if not removed_inputs:
        return inexact
    constants = probe_constants(model, removed_inputs, probe)
    for name, pos in removed_inputs.items():
        if name not in constants:
            continue  # layer not reached by the forward pass
        c, dev = constants[name]
        bad = (dev > REL_TOL).cpu().numpy()
        if bad.any():
            inexact[name] = np.asarray(pos)[bad]
        module = model.get_submodule(name)
        idx = torch.as_tensor(pos, device=module.weight.device)
        w = module.weight.detach().index_select(1, idx).double()
        c = c.to(w.device)
        if isinstance(module, nn.Conv2d):
            kernel = torch.einsum("oikl,i->okl", w, c)
            interior = kernel.sum(dim=(1, 2))
            if needs_border_fold(module) and kernel.abs().max() > 0:
                conv = FoldedConv2d.from_conv(module)
                conv.fold_kernel += kernel.unsqueeze(1).to(conv.fold_kernel.dtype)
        else:
            interior = w @ c
        _add_interior(model, module, interior, sinks.get(name, ("extra", [])))
    return inexact


def warn_inexact(inexact: Mapping[str, np.ndarray]) -> None:
    """Emit one :class:`FoldWarning` per consumer whose removed inputs were not constant."""
    for name, pos in inexact.items():
        warnings.warn(f"layer {name!r}: {len(pos)} removed input channel(s) are not constant "
                      "(e.g. zero-padded average pooling); their mean was folded, so the compact "
                      "model differs from the masked dense one", FoldWarning, stacklevel=3)


def _add_interior(model: nn.Module, module: nn.Module, delta: torch.Tensor, sink: Sink) -> None:
    kind, targets = sink
    if kind == "bn" and module.bias is None:
        for bn_name, positions in targets:
            bn = model.get_submodule(bn_name)
            if bn.running_mean is not None:  # without running stats BN removes the shift itself
                idx = torch.as_tensor(positions, device=bn.running_mean.device)
                bn.running_mean.index_add_(0, idx, -delta.to(bn.running_mean.dtype))
        return
    if module.bias is None:
        module.bias = nn.Parameter(module.weight.new_zeros(module.weight.shape[0]),
                                   requires_grad=module.weight.requires_grad)
    with torch.no_grad():
        module.bias += delta.to(module.bias.dtype)
