"""The model file: data only (safetensors + JSON), exact round trip, one-line errors naming the file."""

import hashlib
import json
import os
import pickle
import random
import warnings

import pytest
import torch

from fedprune.model_file import (ModelArch, ModelFileError, export_final_model, load_model,
                                 model_file_paths, save_model_file)
from fedprune.models import build_model
from fedprune.surgery import NeuronMask
from fedprune.surgery.testing import randomize_constants

ARCH = ModelArch("resnet8", 1, 10, 28)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pruned resnet8 (border-fold kernels included) exported as the server does."""
    torch.set_num_threads(1)
    graph = ARCH.graph()
    dense = randomize_constants(build_model("resnet8", seed=2), seed=5).eval()
    masked = graph.zero_pruned(dense, NeuronMask.random(graph, 0.5, rng=4)).eval()
    out = tmp_path_factory.mktemp("model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final, mask, _ = export_final_model(masked, ARCH, out, graph=graph)
    return out, final, masked, mask


def _copy(saved, tmp_path):
    out = saved[0]
    for name in ("final_model.json", "final_model.safetensors"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    return tmp_path / "final_model.json", tmp_path / "final_model.safetensors"


def _one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_round_trip_gives_identical_outputs(saved):
    out, final, masked, mask = saved
    loaded = load_model(out / "final_model.json")
    assert any(type(m).__name__ == "FoldedConv2d" for m in loaded.modules())  # fold kernels restored
    assert not loaded.training
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), final(x))
        assert float((loaded(x) - masked(x)).abs().max()) < 1e-4
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in final.parameters())
    doc = json.loads((out / "final_model.json").read_text())
    groups = {g["name"]: g["alive"] for g in doc["architecture"]["groups"]}
    assert groups == {n: [int(i) for i in torch.nonzero(torch.from_numpy(mask[n].copy())).flatten()]
                      for n in mask.names}


def test_either_path_of_the_pair_loads(saved):
    out = saved[0]
    assert model_file_paths(out / "final_model.safetensors") == model_file_paths(out / "final_model.json")
    load_model(out / "final_model.safetensors")


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model loader unpickled something")
    for target, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    load_model(saved[0] / "final_model.json")


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ExecsSource:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from torch.fx.graph_module import _exec_with_source
        return (_exec_with_source, (f"open({self.marker!r}, 'w').close()", {}))


@pytest.mark.parametrize("payload", [_WritesMarker, _ExecsSource])
def test_a_crafted_pickle_is_never_executed(saved, tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(payload(marker))
    json_path, tensor_path = _copy(saved, tmp_path)
    tensor_path.write_bytes(evil)  # a pickle in place of the tensors, with a matching checksum
    doc = json.loads(json_path.read_text())
    doc["tensors"]["sha256"] = hashlib.sha256(evil).hexdigest()
    json_path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError) as err:
        load_model(json_path)
    _one_line_naming(err, tensor_path)
    (tmp_path / "final_model.pt").write_bytes(evil)  # an old-style pickled model file
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "final_model.pt")
    assert not marker.exists()


def test_truncated_tensor_file_is_one_line_naming_it(saved, tmp_path):
    _, tensor_path = _copy(saved, tmp_path)
    data = tensor_path.read_bytes()
    tensor_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="SHA-256") as err:
        load_model(tmp_path / "final_model.json")
    _one_line_naming(err, tensor_path)


def test_garbage_files_are_one_line_naming_them(saved, tmp_path):
    json_path, tensor_path = _copy(saved, tmp_path)
    tensor_path.write_bytes(os.urandom(5000))
    with pytest.raises(ModelFileError) as err:
        load_model(json_path)
    _one_line_naming(err, tensor_path)
    json_path.write_bytes(os.urandom(300))
    with pytest.raises(ModelFileError, match="not a fedprune model file") as err:
        load_model(json_path)
    _one_line_naming(err, json_path)


def test_200_flipped_bytes_are_caught(saved, tmp_path):
    _, tensor_path = _copy(saved, tmp_path)
    data = bytearray(tensor_path.read_bytes())
    rng = random.Random(0)
    for i in rng.sample(range(len(data) // 2, len(data)), 200):  # inside the tensor data
        data[i] ^= 0xFF
    tensor_path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256") as err:
        load_model(tmp_path / "final_model.json")
    _one_line_naming(err, tensor_path)


def test_an_edited_architecture_is_refused(saved, tmp_path):
    json_path, _ = _copy(saved, tmp_path)
    doc = json.loads(json_path.read_text())
    doc["architecture"]["groups"][0]["alive"] = doc["architecture"]["groups"][0]["alive"][1:]
    json_path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="architecture does not match") as err:
        load_model(json_path)
    _one_line_naming(err, json_path)


def test_missing_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file") as err:
        load_model(tmp_path / "final_model.json")
    _one_line_naming(err, tmp_path / "final_model.json")


def test_saving_a_model_that_is_not_the_masks_compact_module_writes_nothing(tmp_path):
    graph = ARCH.graph()
    dense = build_model("resnet8", seed=0)
    half = NeuronMask.random(graph, 0.5, rng=1)
    with pytest.raises(ValueError, match="architecture"):
        save_model_file(dense, ARCH, half, tmp_path / "m.json", graph=graph)
    assert not list(tmp_path.iterdir())
