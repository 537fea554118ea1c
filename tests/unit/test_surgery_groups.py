"""Neuron groups found through torch-pruning's DependencyGraph."""

import functools

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.models import MODEL_NAMES, build_model, example_input
from fedprune.surgery import NeuronGraph


@functools.lru_cache(maxsize=None)
def graph(name: str) -> NeuronGraph:
    return NeuronGraph.from_model(build_model(name, seed=0), example_input())


def test_lenet5_groups_and_output_layer():
    g = graph("lenet5")
    assert [(grp.name, grp.size) for grp in g.groups] == [("conv1", 20), ("conv2", 50), ("fc1", 500)]
    assert g.output_layers == ["fc2"]
    fc1_in = next(r for r in g.group_layers("conv2") if r.module == "fc1")
    # flatten: conv2 channel c feeds fc1 features c*16 .. c*16+15
    assert fc1_in.role == "in" and len(fc1_in.index) == 800
    np.testing.assert_array_equal(np.sort(fc1_in.index[fc1_in.neuron == 3]), np.arange(48, 64))
    assert g.group("conv2").consumers == ["fc1"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_neurons_are_never_prunable(name):
    g = graph(name)
    out = g.output_layers
    assert out, "the classifier must be recognised"
    for grp in g.groups:
        assert not set(grp.producers) & set(out)
    assert g.layers[-1][0] in out and g.layers[-1][2] is None


def test_residual_add_couples_all_producers():
    g = graph("resnet8")
    stem = g.group("conv1")
    assert stem.producers == ["conv1", "layers.0.conv2"]  # identity shortcut of stage 0
    assert set(stem.norms) == {"bn1", "layers.0.bn2"}
    assert set(stem.consumers) == {"layers.0.conv1", "layers.1.conv1", "layers.1.shortcut.0"}
    stage2 = next(grp for grp in g.groups if "layers.2.conv2" in grp.producers)
    assert set(stage2.producers) == {"layers.2.conv2", "layers.2.shortcut.0"}
    assert stage2.consumers == ["fc"]


def test_depthwise_conv_stays_inside_its_group():
    g = graph("mobilenet_v2")
    for grp in g.groups:
        for role in grp.layers:
            if role.kind == "depthwise":
                assert role.role == "depthwise" and role.module in grp.producers
    first = g.group("features.0.0")  # stem -> depthwise conv of the first block
    assert "features.1.conv.0.0" in first.producers


def test_group_order_and_names_are_deterministic():
    a = NeuronGraph.from_model(build_model("resnet18", seed=1), example_input())
    b = NeuronGraph.from_model(build_model("resnet18", seed=2), example_input())
    assert a.mask_spec == b.mask_spec
    for ga, gb in zip(a.groups, b.groups):
        for ra, rb in zip(ga.layers, gb.layers):
            assert (ra.module, ra.role) == (rb.module, rb.role)
            np.testing.assert_array_equal(ra.index, rb.index)
            np.testing.assert_array_equal(ra.neuron, rb.neuron)


def test_every_channel_belongs_to_at_most_one_group():
    g = graph("resnet18")
    seen: dict[tuple[str, str], set] = {}
    for grp in g.groups:
        for r in grp.layers:
            key = (r.module, "in" if r.role == "in" else "out")
            pos = set(r.index.tolist())
            assert not seen.setdefault(key, set()) & pos
            seen[key] |= pos


def test_ignored_layers_are_not_pruned():
    g = NeuronGraph.from_model(build_model("lenet5"), example_input(), ignored_layers=["fc1"])
    assert g.names == ["conv1", "conv2"]


class _GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3)
        self.b = nn.Conv2d(8, 8, 3, groups=2)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_groups_with_unsupported_ops_stay_dense_with_a_reason():
    g = NeuronGraph.from_model(_GroupedNet(), torch.randn(1, 1, 12, 12))
    assert g.names == ["c"]
    assert set(g.unsupported) == {"a", "b"}
    assert all("grouped conv" in why for why in g.unsupported.values())
