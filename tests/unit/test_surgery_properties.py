"""Property tests (hypothesis): random masks at 10-95 % pruning, random non-zero biases.

For every drawn mask: the compact model equals the masked dense one in eval mode,
runs in train mode with the right output shape, and expand/compact round-trips
exactly; a further random prune of the compact model stays exact as well.
"""

import functools

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprune.models import build_model, example_input
from fedprune.surgery import NeuronGraph, NeuronMask
from fedprune.surgery.testing import outputs_close, randomize_constants


SMALL = ["lenet5", "lenet300", "resnet8", "vgg"]
SIZE = {"mobilenet_v2": 12}
PROPS = settings(max_examples=6, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@functools.lru_cache(maxsize=None)
def graph(name: str) -> NeuronGraph:
    size = SIZE.get(name, 28)
    return NeuronGraph.from_model(build_model(name, image_size=size, seed=0), example_input(1, size))


@st.composite
def masks(draw, name: str):
    """A mask pruning a random 10-95 % of every group (at least one neuron kept)."""
    g = graph(name)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    arrays = {}
    for grp in g.groups:
        pruned = draw(st.floats(0.10, 0.95))
        alive = np.zeros(grp.size, dtype=bool)
        alive[rng.choice(grp.size, max(1, round((1 - pruned) * grp.size)), replace=False)] = True
        arrays[grp.name] = alive
    return NeuronMask.from_arrays(g, arrays), seed


def check_mask(name: str, mask: NeuronMask, seed: int) -> None:
    g, size = graph(name), SIZE.get(name, 28)
    model = randomize_constants(build_model(name, image_size=size, seed=seed % 97), seed=seed)
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(seed))
    small = g.compact(model, mask)
    outputs_close(small, g.zero_pruned(model, mask), x, atol=1e-5)
    small.train()
    assert small(x).shape == (3, 10)
    small.eval()
    sd = small.state_dict()
    back = g.compact_state_dict(g.expand(sd, mask), mask)
    assert all(torch.equal(sd[k], back[k]) for k in sd)
    rng = np.random.default_rng(seed)
    new = NeuronMask.from_arrays(g, {n: a & (rng.random(a.size) < 0.7) | (a & (np.cumsum(a) == 1))
                                     for n, a in mask.to_arrays().items()})
    outputs_close(g.prune(small, mask, new), g.zero_pruned(small, new, current=mask), x, atol=1e-5)


@PROPS
@given(data=st.data())
def test_random_masks_small_models(data):
    for name in SMALL:
        mask, seed = data.draw(masks(name), label=name)
        check_mask(name, mask, seed)


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_masks_mobilenet_v2(data):
    mask, seed = data.draw(masks("mobilenet_v2"), label="mobilenet_v2")
    check_mask("mobilenet_v2", mask, seed)
