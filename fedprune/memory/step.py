"""The training step whose memory is estimated and measured, and model-copy helpers.

``train_step`` is the reference step: ``zero_grad(set_to_none=True)``, forward,
cross-entropy loss, backward, ``optimizer.step()``. The estimate simulates
exactly this (or a caller-supplied ``step_fn`` with the same signature), so a
trainer that wants its budget honoured should run the same sequence.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: ``step_fn(model, optimizer, x, y) -> loss`` -- one local training step.
StepFn = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``trainable``: None (use ``requires_grad``), a set of parameter names, or ``f(name, param) -> bool``.
Trainable = Callable[[str, nn.Parameter], bool] | set | frozenset | None

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """One SGD step on ``(x, y)`` with cross-entropy; returns the (graph-free) loss tensor."""
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_batch(batch_size: int, input_shape: tuple[int, ...], device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """An input batch ``(x, y)``: ``x`` of shape ``(B, *input_shape)``, ``y`` int64 labels (all 0).

    On ``meta`` nothing is allocated; elsewhere ``x`` is standard normal.
    """
    dev = torch.device(device)
    shape = (int(batch_size), *input_shape)
    if dev.type == "meta":
        x = torch.empty(shape, dtype=dtype, device=dev)
    else:
        x = torch.randn(shape, dtype=dtype, device=dev)
    y = torch.zeros(int(batch_size), dtype=torch.long, device=dev)
    return x, y


def trainable_predicate(trainable: Trainable) -> Callable[[str, nn.Parameter], bool]:
    """Normalise ``trainable`` into ``f(name, param) -> bool``."""
    if trainable is None:
        return lambda _name, p: p.requires_grad
    if callable(trainable):
        return trainable
    if isinstance(trainable, (set, frozenset, list, tuple)):
        names = frozenset(trainable)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError("trainable must be a set of parameter names (str)")
        return lambda name, _p: name in names
    raise TypeError(f"trainable must be None, a set of names or a callable, not {type(trainable).__name__}")


def _hookless_memo(model: nn.Module) -> dict[int, object]:
    """A deepcopy memo that maps every hook dict to an empty one (hooks are not copied)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        for attr in _HOOK_DICTS:
            d = m.__dict__.get(attr)
            if d is not None:
                memo[id(d)] = OrderedDict()
    return memo


def clean_copy(model: nn.Module, device: str | torch.device | None = None,
               trainable: Trainable = None) -> nn.Module:
    """Deep copy of ``model`` without module hooks, in train mode, with ``trainable`` applied.

    With ``device="meta"`` parameters and buffers are replaced by meta tensors during the copy
    (no weight data is copied). The original model is never modified.
    """
    memo = _hookless_memo(model)
    if device is not None and torch.device(device).type == "meta":
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
    clone = copy.deepcopy(model, memo)
    if device is not None and torch.device(device).type != "meta":
        clone = clone.to(device)
    pred = trainable_predicate(trainable)
    orig = dict(model.named_parameters())
    for name, p in clone.named_parameters():
        p.requires_grad_(bool(pred(name, orig.get(name, p))))
    for p in clone.parameters():
        p.grad = None
    return clone.train()


def trainable_params(model: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters that receive gradients (``requires_grad``), in module order."""
    return [p for p in model.parameters() if p.requires_grad]
