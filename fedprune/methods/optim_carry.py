"""Carry optimizer state (momentum, Adam moments) of surviving neurons across a structural change.

The trainer rebuilds the optimizer after every physical removal, which would reset the momentum of
every neuron. :func:`save_rows` keeps each parameter's state tensors as they are (compact for the
current mask, no copy); :func:`restore_rows` indexes them down to the new mask
(``NeuronGraph.reindex``: the surviving rows and columns only, nothing dense-sized, since a client
inside its memory budget has no room for a dense copy) and installs them into the new optimizer, so a
surviving neuron keeps exactly the state it had, and removed neurons' state disappears.
"""

from __future__ import annotations

from typing import Any

import torch


def save_rows(mask, model: torch.nn.Module, optimizer) -> dict[str, Any]:
    """``{state key: {param key: tensor}}`` for ``model`` (compact for ``mask``), plus ``"_mask"``
    and ``"_scalars"`` (``{param key: {k: v}}``).

    Only state tensors shaped like their parameter are carried (``momentum_buffer``, ``exp_avg``,
    ``exp_avg_sq``); scalars (Adam's ``step``) are kept as they are. Empty when the optimizer has no
    state yet. The tensors are the optimizer's own (detached, not copied).
    """
    if optimizer is None:
        return {}
    by_key: dict[str, dict[str, torch.Tensor]] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        for k, v in optimizer.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                by_key.setdefault(k, {})[name] = v.detach()
            else:
                scalars.setdefault(name, {})[k] = v.clone() if isinstance(v, torch.Tensor) else v
    if not by_key:
        return {}
    return {"_mask": mask, "_scalars": scalars, **by_key}


def restore_rows(graph, mask, model: torch.nn.Module, optimizer, saved: dict[str, Any]) -> int:
    """Install ``saved`` (from :func:`save_rows`) into ``optimizer`` for ``model`` (compact for
    ``mask``, a subset of the saved mask).

    Returns the number of parameters whose state was restored; shapes that do not match are skipped.
    """
    if not saved or optimizer is None:
        return 0
    params = dict(model.named_parameters())
    restored = set()
    for k, tensors in saved.items():
        if k.startswith("_"):
            continue
        for n, t in graph.reindex(tensors, saved["_mask"], mask).items():
            p = params.get(n)
            if p is not None and t.shape == p.shape:
                optimizer.state[p][k] = t.to(p.dtype)
                restored.add(n)
    for n in restored:
        for k, v in saved["_scalars"].get(n, {}).items():
            optimizer.state[params[n]][k] = v
    return len(restored)
