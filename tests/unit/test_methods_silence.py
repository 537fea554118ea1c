"""Silencing neurons by forward hooks is the forward pass with their incoming weights zeroed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from fedprune.memory.tracker import StorageTracker
from fedprune.methods.config import SeReNeConfig
from fedprune.methods.serene import SeReNe
from fedprune.methods.silence import NeuronsSilenced
from fedprune.methods.sites import NeuronSite, ParamSlice, build_sites
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask


def _zeroed_copy(model, sites, drops):
    """The reference: a copy of ``model`` with the dropped neurons' incoming weight rows zeroed."""
    import copy

    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for g, idx in drops.items():
            for ps in sites[g].params:
                if ps.is_weight and idx.numel():
                    params[ps.name].index_fill_(ps.dim, ps.pos.index_select(0, idx), 0.0)
    return ref


def _setup(name, seed):
    dense = build_model(name, seed=seed)
    graph = NeuronGraph.from_model(dense, example_input())
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask).eval()
    with torch.no_grad():  # non-zero BatchNorm statistics and biases, so a silenced channel is not 0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model, build_sites(graph, model, mask)


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "vgg"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), share=st.floats(0.0, 0.95))
def test_silenced_outputs_equal_zeroed_weights_and_leave_every_parameter_as_it_was(name, seed, share):
    model, sites = _setup(name, seed % 3)
    rng = np.random.default_rng(seed)
    drops = {g: torch.as_tensor(np.flatnonzero(rng.random(len(s)) < share), dtype=torch.long)
             for g, s in sites.items()}
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = _zeroed_copy(model, sites, drops)(x)
        original = model(x)
        with NeuronsSilenced(dict(model.named_modules()), sites, drops):
            got = model(x)
        after = model(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(after, original)  # the hooks are gone: the model computes what it did before


class Scaled(nn.Module):
    """A layer the hooks do not know: its neurons' weights are zeroed and restored instead."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return x @ self.weight.t()


def test_unknown_layers_are_zeroed_and_restored_even_when_the_block_raises():
    model = nn.Sequential(Scaled())
    p = model[0].weight
    site = NeuronSite("g", 4, np.arange(4), params=[ParamSlice("0.weight", p, 0, torch.arange(4))])
    w0 = p.detach().clone()
    drops = {"g": torch.tensor([1, 3])}
    x = torch.randn(2, 3)
    with torch.no_grad(), NeuronsSilenced(dict(model.named_modules()), {"g": site}, drops):
        y = model(x)
    assert torch.equal(y[:, [1, 3]], torch.zeros(2, 2)) and torch.equal(p.detach(), w0)
    with pytest.raises(RuntimeError, match="inside"):
        with NeuronsSilenced(dict(model.named_modules()), {"g": site}, drops):
            raise RuntimeError("inside")
    assert torch.equal(p.detach(), w0)


def test_threshold_search_allocates_no_copy_of_the_weights(lenet):
    """The search's trials run on a few samples: what it allocates is far below the weight bytes
    (zeroing and restoring would hold a copy of every weight it zeroes)."""
    from fedprune.train import evaluate

    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask).eval()
    with torch.no_grad():
        model.fc1.weight[::2] *= 1e-3  # half of the largest layer's neurons are candidates
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    ctx = SimpleNamespace(model=model, mask=mask, graph=graph, sites=build_sites(graph, model, mask),
                          val_y=None, val_loss=lambda n: evaluate(model, x[:n], y[:n], 4)[0])
    method = SeReNe(SeReNeConfig(pwe=0, twt=10.0, threshold_samples=4))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() >= 2)
    with torch.no_grad(), StorageTracker() as tracker:
        for t in list(model.parameters()) + list(model.buffers()):
            tracker.register(t)  # what exists already (views of it are not new memory)
        held = tracker.current
        method.threshold.select(ctx)
    assert method.threshold.events == 1  # the search ran its trials
    assert tracker.peak - held < 0.25 * weight_bytes
