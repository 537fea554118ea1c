"""Exporting (compact) models to ONNX.

:func:`export_onnx` exports in eval mode with a dynamic batch axis; the file runs in
onnxruntime and matches torch outputs. It uses the TorchScript-based exporter (about 0.3 s for
LeNet-5, against about 5 s for the ``torch.export``/onnxscript one, most of it that exporter's
first-use warm-up, which every server run would pay) and falls back to the ``torch.export``
exporter for a model the TorchScript tracer cannot handle (``exporter="dynamo"`` forces it).
The torch-side model file (tensors + architecture, no pickle) is :mod:`fedprune.model_file`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import torch
from torch import nn


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

