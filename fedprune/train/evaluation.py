"""Evaluation of a model on a tensor set (loss and accuracy), as the trainer and the server use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode.

    The model's train/eval mode is restored. Returns ``(nan, nan)`` for an empty set.
    """
    n = 0 if x is None else int(len(x))
    if n == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        dev = model_device(model)
        for i in range(0, n, max(1, int(batch_size))):
            xb = x[i: i + batch_size].to(dev)
            yb = y[i: i + batch_size].to(dev)
            out = model(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss / n, correct / n
