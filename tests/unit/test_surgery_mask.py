"""NeuronMask: construction, validation (MaskError naming the group), algebra."""

import functools

import numpy as np
import pytest

from fedprune.models import build_model, example_input
from fedprune.surgery import MaskError, NeuronGraph, NeuronMask


@functools.lru_cache(maxsize=None)
def lenet5_graph() -> NeuronGraph:
    return NeuronGraph.from_model(build_model("lenet5", seed=0), example_input())


def test_full_mask_matches_groups():
    g = lenet5_graph()
    m = NeuronMask.full(g)
    assert m.names == ["conv1", "conv2", "fc1"]
    assert [m[n].size for n in m] == [20, 50, 500]
    assert m.num_alive() == m.num_total() == 570 and m.alive_fraction() == 1.0


def test_arrays_round_trip_and_equality():
    g = lenet5_graph()
    m = NeuronMask.random(g, 0.3, rng=0)
    arrays = m.to_arrays()
    assert all(a.dtype == np.bool_ for a in arrays.values())
    back = NeuronMask.from_arrays(g, arrays)
    assert back == m and back.copy() == m
    arrays["conv1"][np.flatnonzero(arrays["conv1"])[0]] = False
    assert NeuronMask.from_arrays(g, arrays) != m  # to_arrays returned copies
    assert m == back


def test_mask_vectors_are_read_only():
    m = NeuronMask.full(lenet5_graph())
    with pytest.raises(ValueError):
        m["conv1"][0] = False


@pytest.mark.parametrize("mutate, fragment", [
    (lambda a: a.pop("conv2"), "missing neuron group 'conv2'"),
    (lambda a: a.update(bogus=np.ones(3, bool)), "unknown neuron group"),
    (lambda a: a.update(conv1=np.ones(19, bool)), "'conv1': mask shape must be (20,)"),
    (lambda a: a.update(conv1=np.ones((20, 1), bool)), "'conv1': mask shape"),
    (lambda a: a.update(fc1=np.ones(500, np.float32)), "'fc1': mask dtype must be bool"),
    (lambda a: a.update(conv2=np.zeros(50, bool)), "'conv2': mask prunes all 50 neurons"),
])
def test_invalid_arrays_raise_mask_error_naming_the_group(mutate, fragment):
    g = lenet5_graph()
    arrays = NeuronMask.full(g).to_arrays()
    mutate(arrays)
    with pytest.raises(MaskError, match=None) as info:
        NeuronMask.from_arrays(g, arrays)
    assert fragment in str(info.value)


def test_intersection_subset_and_counts():
    g = lenet5_graph()
    a, b = NeuronMask.random(g, 0.6, rng=1), NeuronMask.random(g, 0.6, rng=2)
    both = a & b
    assert both.issubset(a) and both <= b and not (a | b).issubset(both)
    for n in g.names:
        np.testing.assert_array_equal(both[n], a[n] & b[n])
    assert both.num_alive() == sum(int((a[n] & b[n]).sum()) for n in g.names)
    assert 0 < both.alive_fraction() < 1


def test_intersection_that_empties_a_group_is_rejected():
    g = lenet5_graph()
    arrays = NeuronMask.full(g).to_arrays()
    left, right = dict(arrays), dict(arrays)
    left["conv1"] = np.arange(20) < 10
    right["conv1"] = np.arange(20) >= 10
    with pytest.raises(MaskError, match="conv1"):
        NeuronMask.from_arrays(g, left) & NeuronMask.from_arrays(g, right)


def test_masks_of_different_graphs_do_not_mix():
    g5 = lenet5_graph()
    g3 = NeuronGraph.from_model(build_model("lenet300", seed=0), example_input())
    with pytest.raises(MaskError):
        NeuronMask.full(g5) & NeuronMask.full(g3)
    with pytest.raises(MaskError):
        g5.compact(build_model("lenet5"), NeuronMask.full(g3))


def test_random_mask_keeps_at_least_one_neuron():
    m = NeuronMask.random(lenet5_graph(), 0.01, rng=0)
    assert all(m.num_alive(n) >= 1 for n in m)
