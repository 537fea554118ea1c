"""The final model on disk as data only: tensors in safetensors, the architecture in plain JSON.

A model file is two files side by side:

* ``<stem>.safetensors``: every parameter and buffer of the compact model by name (non-persistent
  border-fold buffers included). Its metadata holds ``architecture_sha256``, the SHA-256 of the
  JSON's ``architecture`` object, so neither file can be swapped or edited without the other.
* ``<stem>.json``: ``{"format", "version", "architecture", "tensors"}``. ``architecture`` names the
  zoo model (:mod:`fedprune.models`), its input shape and class count, the alive neurons of every
  prunable group in dense coordinates, and the convolutions that carry a border-fold kernel;
  ``tensors`` names the tensor file and its SHA-256.

Loading rebuilds the module with the project's own code (``build_model`` + ``NeuronGraph``
compaction) and fills it with the tensors; nothing is ever unpickled, so a file cannot run code.
Any damage (truncation, garbage, flipped bytes, a file from another model) raises
:class:`ModelFileError`, a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from fedprune.models import MODEL_NAMES, build_model, example_input
from fedprune.results import atomic_write_bytes, atomic_write_text
from fedprune.surgery import FoldedConv2d, NeuronGraph, NeuronMask, export_onnx, simplify

FORMAT = "fedprune-model"
VERSION = 1
FINAL_MODEL_STEM = "final_model"
MAX_SIDE = 4096  # largest input side / channel / class count a model file may declare


class ModelFileError(ValueError):
    """A model file is missing, damaged or not a fedprune model; the message names the file."""


@dataclass(frozen=True)
class ModelArch:
    """A zoo architecture: model name, input channels, class count, square input side."""

    model: str
    in_channels: int
    num_classes: int
    image_size: int

    def example(self) -> torch.Tensor:
        """One example input batch (batch size 1) of this architecture's input shape."""
        return example_input(self.in_channels, self.image_size)

    def graph(self) -> NeuronGraph:
        """The neuron graph of the dense architecture (deterministic: same arch, same groups)."""
        dense = build_model(self.model, self.in_channels, self.num_classes, self.image_size, seed=0)
        return NeuronGraph.from_model(dense, self.example())


def model_file_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(json path, safetensors path)`` for a model file given by either of its two paths."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (non-persistent ones too) as contiguous CPU copies."""
    out = {name: p.detach() for name, p in model.named_parameters()}
    out.update({name: b.detach() for name, b in model.named_buffers()})
    return {k: v.cpu().contiguous().clone() for k, v in out.items()}


def _skeleton(arch: ModelArch, mask: NeuronMask, graph: NeuronGraph, folded: list[str]) -> nn.Module:
    """The compact module of ``mask`` with border-fold kernels on ``folded``; weights arbitrary."""
    model = graph.build_compact(mask)
    for name in folded:
        conv = model.get_submodule(name)
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"layer {name!r} is not a plain Conv2d, so it cannot carry a fold kernel")
        FoldedConv2d.from_conv(conv)
    return model


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``model``; ``ValueError`` unless names, shapes and dtypes match exactly."""
    want = {name: t for name, t in list(model.named_parameters()) + list(model.named_buffers())}
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"tensors do not match the architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    with torch.no_grad():
        for name, t in want.items():
            got = tensors[name]
            if got.shape != t.shape or got.dtype != t.dtype:
                raise ValueError(f"tensor {name!r} is {got.dtype} {tuple(got.shape)}, the architecture "
                                 f"needs {t.dtype} {tuple(t.shape)}")
            t.copy_(got)


def _architecture(arch: ModelArch, mask: NeuronMask, model: nn.Module) -> dict[str, Any]:
    groups = [{"name": n, "size": int(s), "alive": np.flatnonzero(mask[n]).tolist()}
              for n, s in mask.spec]
    folded = [n for n, m in model.named_modules() if isinstance(m, FoldedConv2d)]
    return {**asdict(arch), "input_shape": [arch.in_channels, arch.image_size, arch.image_size],
            "groups": groups, "folded_convs": folded}


def save_model_file(model: nn.Module, arch: ModelArch, mask: NeuronMask, path: str | os.PathLike,
                    graph: NeuronGraph | None = None) -> Path:
    """Write ``model`` (compact for the dense-relative ``mask``) as a model file; returns the JSON path.

    Guarantee: :func:`load_model` of the written file rebuilds a module with exactly ``model``'s
    tensors. Raises ``ValueError`` (nothing written) when ``model`` is not the compact module of
    ``mask`` for ``arch``. ``graph``: ``arch``'s dense graph when the caller already has it.
    """
    graph = graph if graph is not None else arch.graph()
    architecture = _architecture(arch, mask, model)
    tensors = named_tensors(model)
    _fill(_skeleton(arch, mask, graph, architecture["folded_convs"]), tensors)  # check it rebuilds
    json_path, tensor_path = model_file_paths(path)
    data = safetensors.torch.save(tensors, metadata={
        "format": FORMAT, "architecture_sha256": _sha256(_canonical(architecture))})
    atomic_write_bytes(tensor_path, data)
    doc = {"format": FORMAT, "version": VERSION, "architecture": architecture,
           "tensors": {"file": tensor_path.name, "sha256": _sha256(data)}}
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    return json_path


def _read_doc(json_path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(json_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a fedprune model file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a fedprune model file (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"model file version {doc.get('version')!r}; this fedprune reads {VERSION}")
    if not isinstance(doc.get("architecture"), dict) or not isinstance(doc.get("tensors"), dict):
        raise ValueError("model file lacks its 'architecture' or 'tensors' section")
    return doc


def _read_tensors(tensor_path: Path, doc: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The checksum-verified tensors and the architecture SHA-256 they were saved with."""
    data = tensor_path.read_bytes()
    if _sha256(data) != doc["tensors"].get("sha256"):
        raise ValueError("does not match its recorded SHA-256 (damaged or replaced)")
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    return safetensors.torch.load(data), str(metadata.get("architecture_sha256"))


def _arch_from(a: dict[str, Any]) -> tuple[ModelArch, list[dict[str, Any]], list[str]]:
    if a.get("model") not in MODEL_NAMES:
        raise ValueError(f"unknown model {a.get('model')!r}")
    sizes = [a.get(k) for k in ("in_channels", "num_classes", "image_size")]
    if not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in sizes):
        raise ValueError(f"bad input shape or class count {sizes}")
    groups, folded = a.get("groups"), a.get("folded_convs")
    if not isinstance(groups, list) or not isinstance(folded, list) \
            or not all(isinstance(f, str) for f in folded):
        raise ValueError("bad 'groups' or 'folded_convs'")
    return ModelArch(a["model"], *sizes), groups, folded


def _mask_from(graph: NeuronGraph, groups: list[dict[str, Any]]) -> NeuronMask:
    spec = [(g.get("name"), g.get("size")) for g in groups if isinstance(g, dict)]
    if tuple(spec) != graph.mask_spec:
        raise ValueError("its neuron groups are not those of the architecture it names")
    arrays = {}
    for g in groups:
        alive = np.zeros(g["size"], dtype=bool)
        alive[np.asarray(g.get("alive"), dtype=np.int64)] = True
        arrays[g["name"]] = alive
    return NeuronMask(graph, arrays)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save_model_file` (eval mode); never unpickles anything.

    ``path``: the ``.json`` or the ``.safetensors`` file (or their common stem). Raises
    :class:`ModelFileError` naming the file for a missing, damaged or foreign file.
    """
    json_path, tensor_path = model_file_paths(path)
    current = json_path
    try:
        doc = _read_doc(json_path)
        current = tensor_path
        tensors, saved_with = _read_tensors(tensor_path, doc)
        current = json_path
        if saved_with != _sha256(_canonical(doc["architecture"])):
            raise ValueError(f"the architecture does not match the one {tensor_path.name} was saved with")
        arch, groups, folded = _arch_from(doc["architecture"])
        graph = arch.graph()
        model = _skeleton(arch, _mask_from(graph, groups), graph, folded)
        current = tensor_path
        _fill(model, tensors)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{exc.filename}: no such model file") from None
    except Exception as exc:  # every failure is reported as one line naming the file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelFileError(f"{current}: {reason}") from None
    return model.to(map_location).eval()


def dense_relative_mask(graph: NeuronGraph, simplified: NeuronMask,
                        base: NeuronMask | None = None) -> NeuronMask:
    """``simplified`` (simplify's mask) in the dense coordinates of ``graph``.

    ``base``: the dense-relative mask of the model that was simplified when it was compact
    (``None`` when it was dense-shaped). ``ValueError`` when the groups do not correspond.
    """
    if base is None:
        return NeuronMask(graph, simplified.to_arrays())
    arrays = {}
    for name, _ in graph.mask_spec:
        alive = np.flatnonzero(base[name])
        inner = simplified[name] if name in simplified.names else np.ones(len(alive), dtype=bool)
        if len(inner) != len(alive):
            raise ValueError(f"group {name!r}: the simplified model does not match the base mask")
        out = np.zeros(len(base[name]), dtype=bool)
        out[alive[inner]] = True
        arrays[name] = out
    return NeuronMask(graph, arrays)


def export_final_model(model: nn.Module, arch: ModelArch, out_dir: str | os.PathLike, *,
                       graph: NeuronGraph | None = None, base_mask: NeuronMask | None = None):
    """Simplify ``model`` and write ``final_model.json``/``.safetensors`` and ``final_model.onnx``.

    ``model`` is dense-shaped, or compact for the dense-relative ``base_mask``. Every dead neuron is
    removed and constants are folded, so the files need no special runtime. Returns
    ``(final model in eval mode, dense-relative mask of its neurons, dense graph)``.
    """
    example = arch.example()
    graph = graph if graph is not None else arch.graph()
    final, simplified, _ = simplify(model, example)
    final.eval()
    mask = dense_relative_mask(graph, simplified, base_mask)
    save_model_file(final, arch, mask, Path(out_dir) / f"{FINAL_MODEL_STEM}.json", graph=graph)
    export_onnx(final, example, Path(out_dir) / f"{FINAL_MODEL_STEM}.onnx")
    return final, mask, graph
