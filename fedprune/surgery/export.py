"""Saving and exporting (compact) models.

* :func:`save_model` writes the whole module with ``torch.save`` (compact models
  have no fixed class of their own: their shapes *are* the architecture), including
  non-persistent border-fold buffers.
* :func:`load_model` reads it back with ``torch.load(weights_only=True)``: the classes
  the file needs are listed with ``torch.serialization.get_unsafe_globals_in_checkpoint``
  and allow-listed only when they come from ``torch``, ``torchvision`` or ``fedprune``;
  anything else raises unless ``trusted=True`` (which falls back to full unpickling).
* :func:`export_onnx` exports in eval mode with a dynamic batch axis; the file runs in
  onnxruntime and matches torch outputs. It uses the TorchScript-based exporter (about 0.3 s for
  LeNet-5, against about 5 s for the ``torch.export``/onnxscript one, most of it that exporter's
  first-use warm-up, which every server run would pay) and falls back to the ``torch.export``
  exporter for a model the TorchScript tracer cannot handle (``exporter="dynamo"`` forces it).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import warnings

import torch
from torch import nn

TRUSTED_PREFIXES = ("torch.", "torchvision.", "fedprune.", "collections.OrderedDict",
                    "builtins.set", "functools.partial")


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the whole module (architecture + tensors) to ``path``; see :func:`load_model`."""
    torch.save(model, path)


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               trusted: bool = False) -> nn.Module:
    """Load a module written by :func:`save_model` with ``weights_only=True`` loading.

    Only classes from torch, torchvision and fedprune are allow-listed; a file that
    needs anything else raises ``pickle.UnpicklingError`` unless ``trusted=True``.
    """
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False)
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    refused = [n for n in needed if not n.startswith(TRUSTED_PREFIXES)]
    if refused:
        import pickle
        raise pickle.UnpicklingError(f"{path}: refusing to load untrusted classes {refused}; "
                                     "pass trusted=True if you trust this file")
    with torch.serialization.safe_globals([_resolve(n) for n in needed]):
        return torch.load(path, map_location=map_location, weights_only=True)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *,
                opset_version: int | None = None, exporter: str = "auto") -> str:
    """Export ``model`` (eval mode; flag restored) to ONNX at ``path`` and return the path.

    The graph has the static per-sample shape of ``example_input`` and a dynamic batch axis;
    weights are embedded. ``exporter``: ``"torchscript"``, ``"dynamo"``, or ``"auto"`` (TorchScript,
    then ``torch.export`` if that raises).
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter={exporter!r}: expected 'auto', 'torchscript' or 'dynamo'")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter != "dynamo":
                try:
                    torch.onnx.export(model, (example_input,), str(path), dynamo=False,
                                      opset_version=opset_version or 17,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                    return str(path)
                except Exception:
                    if exporter == "torchscript":
                        raise
            torch.onnx.export(model, (example_input,), str(path), dynamo=True,
                              external_data=False, opset_version=opset_version,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    finally:
        model.train(was_training)
    return str(path)


def export_final_model(model: nn.Module, example_input: torch.Tensor, out_dir: str | os.PathLike):
    """Simplify ``model`` and write it as ``final_model.pt`` and ``final_model.onnx`` in ``out_dir``.

    Every dead neuron is removed and constants are folded (:func:`~fedprune.surgery.simplify`), so the
    files need no special runtime. Returns simplify's ``(final model in eval mode, mask, graph)``.
    """
    from .simplify import simplify

    final, mask, graph = simplify(model, example_input)
    final.eval()
    save_model(final, os.path.join(out_dir, "final_model.pt"))
    export_onnx(final, example_input, os.path.join(out_dir, "final_model.onnx"))
    return final, mask, graph

