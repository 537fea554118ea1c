"""Sites: each group's parameter slices and outputs in a compact model map to the right neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedprune.methods.flops import bprop_flops, dense_bprop_flops, layer_costs
from fedprune.methods.sites import build_sites
from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask


@pytest.mark.parametrize("name", ["lenet5", "resnet8"])
def test_slices_select_the_alive_neurons(name):
    dense = build_model(name, seed=0)
    with torch.no_grad():  # distinct values everywhere so a wrong index cannot match by chance
        for p in dense.parameters():
            p.copy_(torch.randn_like(p))
    graph = NeuronGraph.from_model(dense, example_input())
    dense_params = dict(dense.named_parameters())
    rng = np.random.default_rng(1)
    all_sites = []
    for g in graph.names:  # prune only group g, so its producers keep all their inputs
        arrays = NeuronMask.full(graph).to_arrays()
        arrays[g] = rng.random(len(arrays[g])) < 0.5
        arrays[g][0] = True
        mask = NeuronMask.from_arrays(graph, arrays)
        compact = graph.compact(dense, mask)
        sites = build_sites(graph, compact, mask)
        all_sites.append(sites)
        assert set(sites) == set(graph.names)
        site = sites[g]
        assert np.array_equal(site.alive, mask.alive_indices(g))
        assert site.params and site.outputs and site.layers
        for ps in site.params:  # compact slice at pos == dense slice at the alive neurons
            assert len(ps.pos) == len(site.alive)
            got = ps.param.detach().index_select(ps.dim, ps.pos)
            want = dense_params[ps.name].detach().index_select(ps.dim, torch.as_tensor(site.alive))
            assert torch.equal(got, want), ps.name
    sites = all_sites[-1]
    if name == "resnet8":  # a residual group: several producers and output modules
        multi = [s for s in sites.values() if len(s.outputs) > 1]
        assert multi and all(len(s.layers) > 1 for s in multi)


def test_flops_accounting():
    dense = build_model("lenet5", seed=0)
    x = torch.randn(2, 1, 28, 28)
    costs = layer_costs(dense, x)
    assert [c.name for c in costs] == ["conv1", "conv2", "fc1", "fc2"]
    assert costs[0].forward_flops == 2 * 25 * 20 * 24 * 24 and not costs[0].input_needs_grad
    dense_total = dense_bprop_flops(costs)
    assert dense_total == sum(c.forward_flops for c in costs) * 2 - costs[0].forward_flops
    half = bprop_flops(costs, {"conv2": 0.5})
    assert dense_total - half == costs[1].forward_flops // 2
    dense.conv1.weight.requires_grad_(False)
    dense.conv1.bias.requires_grad_(False)
    frozen = layer_costs(dense, x)  # conv2 no longer needs its input gradient
    assert not frozen[1].input_needs_grad
    assert bprop_flops(frozen, trainable={"conv1": False}) == dense_total - costs[0].forward_flops \
        - costs[1].forward_flops
