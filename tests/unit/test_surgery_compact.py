"""compact / prune / expand / zero_pruned / build_compact on the model zoo."""

import functools

import pytest
import torch
from torch import nn

from fedprune.models import MODEL_NAMES, build_model, example_input
from fedprune.surgery import (FoldedConv2d, MaskError, NeuronGraph, NeuronMask, SurgeryError,
                              count_flops, count_params, format_neurons, model_bytes,
                              neurons_per_layer)
from fedprune.surgery.testing import outputs_close, randomize_constants


SIZE = {"resnet18": 16, "mobilenet_v2": 16}  # small inputs keep the big nets fast


@functools.lru_cache(maxsize=None)
def setup(name: str):
    model = randomize_constants(build_model(name, image_size=SIZE.get(name, 28), seed=0), seed=7)
    return model.eval(), NeuronGraph.from_model(model, example_input(1, SIZE.get(name, 28)))


def batch(n: int = 4, size: int = 28) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(n + size))


def batch_for(name: str, n: int = 4) -> torch.Tensor:
    return batch(n, SIZE.get(name, 28))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compact_equals_masked_dense_and_is_smaller(name):
    model, g = setup(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = NeuronMask.random(g, 0.5, rng=3)
    small = g.compact(model, mask)
    outputs_close(small, g.zero_pruned(model, mask), batch_for(name))
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k
    assert set(small.state_dict()) == set(model.state_dict())
    assert count_params(small) < 0.5 * count_params(model)
    assert model_bytes(small) < model_bytes(model)
    x = batch_for(name, 1)
    assert count_flops(small, x)["forward"] < 0.5 * count_flops(model, x)["forward"]
    assert neurons_per_layer(small) == neurons_per_layer(g, mask)


def test_removed_constants_are_folded_not_dropped():
    model, g = setup("vgg")
    mask = NeuronMask.random(g, 0.4, rng=0)
    masked = g.zero_pruned(model, mask)
    small = g.compact(model, mask)
    assert any(isinstance(m, FoldedConv2d) for m in small.modules())  # padded 3x3 consumers
    outputs_close(small, masked, batch())
    # cutting the channels *without* folding changes the function
    naive = g.build_compact(mask)
    naive.load_state_dict(g.compact_state_dict(masked.state_dict(), mask))
    with pytest.raises(AssertionError):
        outputs_close(naive, masked, batch(), atol=1e-3)


@pytest.mark.parametrize("size", [20, 28, 36])
def test_border_fold_is_exact_for_any_input_size(size):
    model, g = setup("resnet8")
    mask = NeuronMask.random(g, 0.5, rng=4)
    outputs_close(g.compact(model, mask), g.zero_pruned(model, mask), batch(2, size))


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenet_v2"])
def test_expand_compact_round_trip_is_exact(name):
    model, g = setup(name)
    mask = NeuronMask.random(g, 0.3, rng=5)
    sd = g.compact(model, mask).state_dict()
    dense = g.expand(sd, mask)
    assert {k: tuple(v.shape) for k, v in dense.items()} == g.dense_shapes
    back = g.compact_state_dict(dense, mask)
    assert sd.keys() == back.keys()
    for k in sd:
        assert torch.equal(sd[k], back[k]), k
    coords = g.coordinate_masks(mask)
    for k, v in dense.items():
        assert coords[k].shape == v.shape
        assert not v.numpy()[~coords[k]].any(), f"{k}: pruned coordinates must be zero"
    # the expanded dense model compacts again to the same tensors
    reloaded = build_model(name, image_size=SIZE.get(name, 28))
    reloaded.load_state_dict(dense)
    again = g.compact(reloaded, mask).state_dict()
    for k in sd:
        torch.testing.assert_close(again[k], sd[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenet_v2"])
def test_build_compact_loads_uploaded_tensors(name):
    model, g = setup(name)
    mask = NeuronMask.random(g, 0.4, rng=6)
    dense = g.expand(g.compact(model, mask).state_dict(), mask)  # what the server holds
    client = g.build_compact(mask)
    client.load_state_dict(g.compact_state_dict(dense, mask))
    server = build_model(name, image_size=SIZE.get(name, 28))
    server.load_state_dict(dense)
    # pruned neurons are all-zero in the dense copy, so nothing needs folding
    outputs_close(client, server, batch_for(name))


def test_coordinate_masks_follow_flatten():
    _, g = setup("lenet5")
    arrays = NeuronMask.full(g).to_arrays()
    arrays["conv2"][7] = False
    coords = g.coordinate_masks(NeuronMask.from_arrays(g, arrays))
    assert not coords["conv2.weight"][7].any() and coords["conv2.weight"][6].all()
    assert not coords["conv2.bias"][7]
    fc1 = coords["fc1.weight"]
    assert not fc1[:, 7 * 16:8 * 16].any() and fc1[:, :7 * 16].all() and fc1[:, 8 * 16:].all()


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenet_v2"])
def test_prune_an_already_compact_model(name):
    model, g = setup(name)
    old = NeuronMask.random(g, 0.6, rng=8)
    new = old & NeuronMask.random(g, 0.6, rng=9)
    small = g.compact(model, old)
    small.train()
    smaller = g.prune(small, old, new)
    assert smaller.training and small.training
    g.check_model(smaller, new)
    outputs_close(smaller, g.zero_pruned(small, new, current=old), batch_for(name))
    assert neurons_per_layer(smaller) == neurons_per_layer(g, new)


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenet_v2"])
def test_prune_in_place_cuts_the_model_itself_to_the_same_function(name):
    model, g = setup(name)
    old = NeuronMask.random(g, 0.6, rng=8)
    new = old & NeuronMask.random(g, 0.6, rng=9)
    small = g.compact(model, old).train()
    reference = g.prune(small, old, new)
    old_weights = {n: p for n, p in small.named_parameters()}
    cut = g.prune(small, old, new, in_place=True)
    assert cut is small and cut.training
    g.check_model(cut, new)
    outputs_close(cut, reference, batch_for(name))
    resized = [n for n, p in cut.named_parameters() if p.shape != old_weights[n].shape]
    assert resized and all(cut.get_parameter(n) is not old_weights[n] for n in resized)


def test_prune_in_place_frees_the_old_tensors():
    import weakref

    model, g = setup("lenet5")
    old = NeuronMask.random(g, 0.7, rng=1)
    new = old & NeuronMask.random(g, 0.7, rng=2)
    small = g.compact(model, old)
    refs = {n: weakref.ref(p) for n, p in small.named_parameters()}
    g.prune(small, old, new, in_place=True)
    gone = [n for n, r in refs.items() if r() is None]
    assert "conv1.weight" in gone and "fc1.weight" in gone  # resized, nothing kept the old ones


def test_prune_is_cheap_for_lenet5():
    import time
    model, g = setup("lenet5")
    old = NeuronMask.random(g, 0.7, rng=1)
    small = g.compact(model, old)
    new = old & NeuronMask.random(g, 0.7, rng=2)
    g.prune(small, old, new)
    start = time.perf_counter()
    for _ in range(5):
        g.prune(small, old, new)
    assert (time.perf_counter() - start) / 5 < 0.25  # ~10 ms unloaded; generous for shared CI


@pytest.mark.parametrize("name", ["lenet5", "resnet8"])
def test_train_mode_shapes_and_gradients(name):
    model, g = setup(name)
    mask = NeuronMask.random(g, 0.3, rng=10)
    small = g.compact(model, mask).train()
    out = small(batch(3))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in small.parameters())


def test_lenet5_neuron_table():
    model, g = setup("lenet5")
    arrays = NeuronMask.full(g).to_arrays()
    for name, keep in (("conv1", 11), ("conv2", 26), ("fc1", 113)):
        arrays[name][keep:] = False
    mask = NeuronMask.from_arrays(g, arrays)
    assert format_neurons(neurons_per_layer(g.compact(model, mask))) == "[11]-[26]-[113]-[10]"
    assert format_neurons(neurons_per_layer(g, mask)) == "[11]-[26]-[113]-[10]"
    assert format_neurons(neurons_per_layer(model)) == "[20]-[50]-[500]-[10]"


def test_errors_are_explicit():
    model, g = setup("lenet5")
    old = NeuronMask.random(g, 0.5, rng=0)
    small = g.compact(model, old)
    with pytest.raises(MaskError, match="subset"):
        g.prune(small, old, NeuronMask.full(g))
    with pytest.raises(SurgeryError, match="wrong mask"):
        g.prune(small, NeuronMask.full(g), old)
    with pytest.raises(SurgeryError):
        g.compact(small, old)  # compact() wants the dense model
    other = NeuronMask.random(g, 0.3, rng=1)  # a mask with the same counts is undetectable
    with pytest.raises(MaskError, match="conv1"):
        g.expand(small.state_dict(), other)


def test_extra_bias_keeps_keys_aligned():
    class Net(nn.Module):  # conv without bias and without a BatchNorm after it
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 6, 3)
            self.b = nn.Conv2d(6, 4, 3, bias=False)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean(dim=(2, 3)))

    net = randomize_constants(Net())
    net.a.bias.data.fill_(0.3)  # removed channels of ``a`` emit relu(0.3) != 0
    g = NeuronGraph.from_model(net, torch.randn(1, 1, 10, 10))
    assert g.extra_keys == ("b.bias",)
    mask = NeuronMask.random(g, 0.5, rng=0)
    small = g.compact(net, mask)
    outputs_close(small, g.zero_pruned(net, mask), torch.randn(2, 1, 10, 10))
    assert set(small.state_dict()) == set(net.state_dict()) | {"b.bias"}
    assert set(g.build_compact(mask).state_dict()) == set(small.state_dict())
    assert set(g.expand(small.state_dict(), mask)) == set(net.state_dict())
    assert float(small.b.bias.detach().abs().sum()) > 0  # the fold landed in the added bias


def test_compact_shapes_match_build_compact():
    _, g = setup("resnet8")
    mask = NeuronMask.random(g, 0.3, rng=11)
    built = g.build_compact(mask).state_dict()
    assert g.compact_shapes(mask) == {k: tuple(v.shape) for k, v in built.items()}
