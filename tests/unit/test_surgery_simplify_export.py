"""simplify (server-side final simplification), export to ONNX, accounting."""

import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fedprune.models import build_model, example_input
from fedprune.surgery import (FoldedConv2d, NeuronGraph, NeuronMask, count_flops, count_params, export_onnx,
                              format_neurons, model_bytes, neurons_per_layer, simplify)
from fedprune.surgery.testing import outputs_close, randomize_constants


@functools.lru_cache(maxsize=None)
def setup(name: str):
    model = randomize_constants(build_model(name, seed=0), seed=3).eval()
    return model, NeuronGraph.from_model(model, example_input())


def x4() -> torch.Tensor:
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "vgg"])
def test_simplify_removes_exactly_the_zero_neurons(name):
    model, g = setup(name)
    mask = NeuronMask.random(g, 0.3, rng=1)
    masked = g.zero_pruned(model, mask)
    small, found, graph = simplify(masked, example_input(), graph=g if name != "vgg" else None)
    assert found == mask
    assert graph.mask_spec == g.mask_spec
    outputs_close(small, masked, x4())
    assert neurons_per_layer(small) == neurons_per_layer(masked, nonzero=True)


def test_simplify_uses_absolute_values_not_signed_sums():
    model, g = setup("lenet5")
    masked = g.zero_pruned(model, NeuronMask.random(g, 0.5, rng=2))
    with torch.no_grad():
        w = masked.conv1.weight
        w[0] = 0.0
        w[0, 0, 0, 0], w[0, 0, 0, 1] = 1.0, -1.0  # sums to zero, but it is not a dead neuron
    _, found, _ = simplify(masked, example_input(), graph=g)
    assert found["conv1"][0]


def test_simplify_drops_neurons_behind_a_zero_batchnorm_scale():
    model, g = setup("resnet8")
    with torch.no_grad():
        model = randomize_constants(model, seed=5)
        model.layers[0].bn1.weight[[1, 4]] = 0.0
    small, found, _ = simplify(model, example_input(), graph=g)
    assert found.num_alive("layers.0.conv1") == 14 and not found["layers.0.conv1"][[1, 4]].any()
    outputs_close(small, model, x4())


def test_simplify_keeps_one_neuron_of_a_dead_group():
    model, g = setup("lenet5")
    dead = g.zero_pruned(model, NeuronMask.full(g))
    with torch.no_grad():
        dead.conv2.weight.zero_()
    small, found, _ = simplify(dead, example_input(), graph=g)
    assert found.num_alive("conv2") == 1
    outputs_close(small, dead, x4())


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenet_v2"])
def test_onnx_export_matches_torch(tmp_path, name, exporter):
    model, g = setup(name)
    small, _, _ = simplify(g.zero_pruned(model, NeuronMask.random(g, 0.5, rng=4)),
                           example_input(), graph=g)
    assert any(isinstance(m, FoldedConv2d) for m in small.modules()) == (name == "resnet8")
    path = export_onnx(small, example_input(batch_size=2), tmp_path / f"{name}.onnx", exporter=exporter)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = example_input(batch_size=5)  # the batch axis is dynamic
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = small.eval()(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_export_rejects_unknown_exporter(tmp_path):
    model, _ = setup("lenet5")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, example_input(), tmp_path / "m.onnx", exporter="tf")


def test_accounting():
    model, g = setup("lenet5")
    assert count_params(model) == 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 5010
    assert model_bytes(model) == 4 * count_params(model)  # no buffers, float32
    flops = count_flops(model, example_input())
    convs = 2 * (24 * 24 * 20 * 25 + 8 * 8 * 50 * 20 * 25)
    fcs = 2 * (800 * 500 + 500 * 10)
    assert flops["forward"] == convs + fcs
    assert flops["forward"] < flops["backward"] <= 2 * flops["forward"]
    assert model.training is False and all(p.grad is None for p in model.parameters())
    assert format_neurons([11, 26, 113, 10]) == "[11]-[26]-[113]-[10]"
