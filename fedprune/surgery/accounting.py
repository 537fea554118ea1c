"""Size and cost accounting: parameters, bytes, FLOPs and neurons per layer.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts
as 2 FLOPs; only matmul/conv-like ops are counted, as in that module). Neuron counts
follow the SeReNe tables: the output size of every conv/linear layer in module order,
network output layer last, e.g. ``[11]-[26]-[113]-[10]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import NeuronGraph
from .mask import NeuronMask
from .modules import FoldedConv2d


def count_params(model: nn.Module) -> int:
    """Number of parameter scalars (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (persistent or not), counted once."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def count_flops(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Forward and backward FLOPs of one step on ``example_input`` (its batch size).

    Counted in eval mode (so BatchNorm statistics are not updated; the counted ops
    are the same in train mode) with the backward pass taken w.r.t. all parameters
    that require grad; ``.grad`` is not touched and the train/eval flag is restored.
    The border terms of :class:`FoldedConv2d` are computed once per input size and
    cached, so they are not counted (steady-state cost).
    """
    was_training = model.training
    model.eval()
    try:
        if any(isinstance(m, FoldedConv2d) for m in model.modules()):
            with torch.no_grad():
                model(example_input)  # fill the border-term caches outside the counter
        with torch.enable_grad():
            with FlopCounterMode(display=False) as fwd:
                out = model(example_input)
            params = [p for p in model.parameters() if p.requires_grad]
            backward = 0
            if params and out.requires_grad:
                with FlopCounterMode(display=False) as bwd:
                    torch.autograd.grad(out.float().sum(), params, allow_unused=True)
                backward = int(bwd.get_total_flops())
    finally:
        model.train(was_training)
    return {"forward": int(fwd.get_total_flops()), "backward": backward}


def neurons_per_layer(model_or_graph: nn.Module | NeuronGraph, mask: NeuronMask | None = None,
                      *, nonzero: bool = False) -> list[int]:
    """Output neurons of every conv/linear layer, in module order (output layer last).

    * ``neurons_per_layer(model)``: the layers' actual sizes (for a compact model,
      the alive counts); with ``nonzero=True`` only neurons with a non-zero incoming
      weight are counted (for masked dense models);
    * ``neurons_per_layer(graph, mask)``: the sizes a compact model for ``mask`` has.
    """
    if isinstance(model_or_graph, NeuronGraph):
        mask = mask if mask is not None else NeuronMask.full(model_or_graph)
        return [mask.num_alive(group) if group is not None else size
                for _, size, group in model_or_graph.layers]
    counts = []
    for m in model_or_graph.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if nonzero:
                counts.append(int((m.weight.detach().flatten(1).abs().amax(dim=1) > 0).sum()))
            else:
                counts.append(m.weight.shape[0])
    return counts


def format_neurons(counts: Sequence[int]) -> str:
    """``[11, 26, 113, 10]`` -> ``"[11]-[26]-[113]-[10]"``."""
    return "-".join(f"[{int(n)}]" for n in counts)
