"""The server's global model: FedAvg equivalence, masked updates, invalid replies never aggregated."""

import numpy as np
import pytest
import torch

from fedprune.config import config_from_dict
from fedprune.faults import corrupt_reply
from fedprune.global_model import ClientUpdate, GlobalModel, state_to_numpy
from fedprune.surgery import NeuronMask


@pytest.fixture
def gm():
    return GlobalModel(config_from_dict({"model": {"name": "lenet5"}}))


def perturbed(arrays, seed):
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
            for k, v in arrays.items()}


def test_full_masks_equal_fedavg(gm):
    arrays, mask = gm.payload()
    a, b = perturbed(arrays, 1), perturbed(arrays, 2)
    gm.aggregate([ClientUpdate("0", a, mask, 100), ClientUpdate("1", b, mask, 300)])
    for k in arrays:
        if arrays[k].dtype.kind == "f":
            np.testing.assert_allclose(gm.dense[k], (100 * a[k] + 300 * b[k]) / 400, rtol=1e-5, atol=1e-6)
    assert gm.mask == NeuronMask.full(gm.graph)


def test_pruned_neuron_averaged_only_over_clients_that_kept_it(gm):
    arrays, mask = gm.payload()
    full = NeuronMask.full(gm.graph)
    sub = full.to_arrays()
    sub["fc1"][:250] = False  # client 1 pruned half of fc1
    sub_mask = NeuronMask.from_arrays(gm.graph, sub)
    model = gm.graph.build_compact(full)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in perturbed(arrays, 3).items()})
    small = gm.graph.prune(model, full, sub_mask)
    a = perturbed(arrays, 4)
    gm.aggregate([ClientUpdate("0", a, mask, 100),
                  ClientUpdate("1", state_to_numpy(small.state_dict()), sub, 300)])
    # fc1 rows 0..249 were kept only by client 0: they equal client 0's values exactly
    np.testing.assert_allclose(gm.dense["fc1.weight"][:250], a["fc1.weight"][:250], rtol=1e-6)
    # unanimous policy: client 0 still has them, so the global mask keeps every neuron
    assert gm.mask == full


def test_consensus_sends_every_client_the_sub_network_most_weight_trained():
    gm = GlobalModel(config_from_dict({"model": {"name": "lenet5"}, "strategy": {"mask-policy": "consensus"}}))
    full = NeuronMask.full(gm.graph)
    replies = []
    for client, (lo, weight) in enumerate([(0, 100), (100, 300), (150, 300)]):  # fc1 rows [lo, lo+250)
        sub = full.to_arrays()
        sub["fc1"][:] = False
        sub["fc1"][lo: lo + 250] = True
        sub_mask = NeuronMask.from_arrays(gm.graph, sub)
        compact = state_to_numpy(gm.graph.compact(gm.dense_model(), sub_mask).state_dict())
        replies.append(ClientUpdate(str(client), perturbed(compact, client), sub, weight))
    gm.aggregate(replies)
    alive = gm.mask.to_arrays()["fc1"]
    # every client kept 250 of fc1, so the global model keeps 250: by kept weight, rows 150..249
    # (700), 250..349 (600), 100..149 (400); not 350..399 (300) or 0..99 (100). Unanimous keeps 400.
    assert alive.sum() == 250
    assert alive[100:350].all() and not alive[:100].any() and not alive[350:].any()
    assert gm.mask.num_alive("conv2") == 50  # groups no client pruned stay whole
    assert np.all(gm.dense["fc1.weight"][:100] == 0)


def test_neuron_pruned_by_every_client_is_pruned_globally_and_zeroed(gm):
    arrays, mask = gm.payload()
    sub = NeuronMask.full(gm.graph).to_arrays()
    sub["conv2"][:10] = False
    sub_mask = NeuronMask.from_arrays(gm.graph, sub)
    compact = state_to_numpy(gm.graph.compact(gm.dense_model(), sub_mask).state_dict())
    gm.aggregate([ClientUpdate("0", compact, sub, 10), ClientUpdate("1", compact, sub, 20)])
    assert gm.mask.num_alive("conv2") == 40
    assert np.all(gm.dense["conv2.weight"][:10] == 0)
    sent, sent_mask = gm.payload()
    assert sent["conv2.weight"].shape[0] == 40 and sent_mask["conv2"].sum() == 40


@pytest.mark.parametrize("kind", ["nan", "bad-mask", "mismatch"])
def test_invalid_replies_are_rejected_and_never_poison(gm, kind):
    before = {k: v.copy() for k, v in gm.dense.items()}
    arrays, mask = gm.payload()
    bad_arrays, bad_mask = corrupt_reply(kind, perturbed(arrays, 5), mask)
    out = gm.aggregate([ClientUpdate("bad", bad_arrays, bad_mask, 50)])
    assert out["accepted"] == [] and "bad" in out["rejected"]
    for k in before:
        np.testing.assert_array_equal(gm.dense[k], before[k])


def test_zero_examples_rejected(gm):
    arrays, mask = gm.payload()
    out = gm.aggregate([ClientUpdate("z", arrays, mask, 0)])
    assert "num-examples" in out["rejected"]["z"]


def test_compact_global_matches_masked_global(gm):
    sub = NeuronMask.full(gm.graph).to_arrays()
    sub["fc1"][::2] = False
    gm.mask = NeuronMask.from_arrays(gm.graph, sub)
    x = torch.randn(16, 1, 28, 28)
    masked = gm.graph.zero_pruned(gm.dense_model(), gm.mask).eval()
    torch.testing.assert_close(gm.compact_model()(x), masked(x), atol=1e-5, rtol=1e-5)
