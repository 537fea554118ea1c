"""Carry optimizer state (momentum, Adam moments) of surviving neurons across a structural change.

The trainer rebuilds the optimizer after every physical removal, which would reset the momentum of
every neuron. :func:`save_rows` scatters each parameter's state tensors into dense-shaped tensors
(zeros at pruned coordinates, through ``graph.expand``); :func:`restore_rows` indexes them down to the
new mask (``graph.compact_state_dict``) and installs them into the new optimizer, so a surviving
neuron keeps exactly the state it had, and removed neurons' state disappears.
"""

from __future__ import annotations

from typing import Any

import torch


def save_rows(graph, mask, model: torch.nn.Module, optimizer) -> dict[str, dict[str, Any]]:
    """``{state key: {dense param key: tensor}}`` plus ``{"_scalars": {param key: {k: v}}}``.

    Only state tensors shaped like their parameter are carried (``momentum_buffer``, ``exp_avg``,
    ``exp_avg_sq``); scalars (Adam's ``step``) are kept as they are. Empty when the optimizer has no
    state yet.
    """
    if optimizer is None:
        return {}
    params = dict(model.named_parameters())
    by_key: dict[str, dict[str, torch.Tensor]] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, p in params.items():
        for k, v in optimizer.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                by_key.setdefault(k, {})[name] = v.detach()
            else:
                scalars.setdefault(name, {})[k] = v.clone() if isinstance(v, torch.Tensor) else v
    if not by_key:
        return {}
    base = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, dict[str, Any]] = {"_scalars": scalars}
    for k, tensors in by_key.items():
        full = {**{n: torch.zeros_like(t) for n, t in base.items()}, **tensors}
        out[k] = {n: t for n, t in graph.expand(full, mask).items() if n in tensors}
    return out


def restore_rows(graph, mask, model: torch.nn.Module, optimizer, saved: dict[str, dict[str, Any]]) -> int:
    """Install ``saved`` (from :func:`save_rows`) into ``optimizer`` for ``model`` (compact for ``mask``).

    Returns the number of parameters whose state was restored; shapes that do not match are skipped.
    """
    if not saved or optimizer is None:
        return 0
    params = dict(model.named_parameters())
    dense_shapes = graph.dense_shapes
    restored = set()
    for k, tensors in saved.items():
        if k == "_scalars":
            continue
        full = {n: tensors.get(n, torch.zeros(s)) for n, s in dense_shapes.items()}
        for n, t in graph.compact_state_dict(full, mask).items():
            p = params.get(n)
            if n in tensors and p is not None and t.shape == p.shape:
                optimizer.state[p][k] = t.to(p.dtype).clone()
                restored.add(n)
    for n in restored:
        for k, v in saved["_scalars"].get(n, {}).items():
            optimizer.state[params[n]][k] = v
    return len(restored)
