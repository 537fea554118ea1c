"""Masked aggregation math against hand-computed cases, and the global mask policy."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedprune.aggregation import MaskedUpdate, masked_mean, update_global_mask


def upd(values, kept, weight):
    return MaskedUpdate({"w": np.array(values, dtype=np.float32)}, {"w": np.array(kept, dtype=bool)}, weight)


PREV = {"w": np.array([10.0, 20.0, 30.0], dtype=np.float32)}


def test_overlapping_masks_weighted_by_examples():
    a = upd([1.0, 2.0, 0.0], [True, True, False], 100)
    b = upd([3.0, 0.0, 6.0], [True, False, True], 300)
    out = masked_mean(PREV, [a, b])["w"]
    # coord 0: both, (1*100 + 3*300)/400 = 2.5 ; coord 1: only a -> 2 ; coord 2: only b -> 6
    np.testing.assert_allclose(out, [2.5, 2.0, 6.0])


def test_disjoint_masks_take_each_owner():
    a = upd([1.0, 0.0, 0.0], [True, False, False], 5)
    b = upd([0.0, 7.0, 0.0], [False, True, False], 1)
    np.testing.assert_allclose(masked_mean(PREV, [a, b])["w"], [1.0, 7.0, 30.0])


def test_coordinate_no_one_kept_keeps_previous_value():
    a = upd([9.0, 9.0, 9.0], [False, False, False], 10)
    np.testing.assert_allclose(masked_mean(PREV, [a])["w"], PREV["w"])


def test_no_updates_returns_previous_copy():
    out = masked_mean(PREV, [])
    assert out["w"] is not PREV["w"]
    np.testing.assert_array_equal(out["w"], PREV["w"])


def test_integer_tensors_take_max():
    prev = {"n": np.array(3, dtype=np.int64)}
    ups = [MaskedUpdate({"n": np.array(5, dtype=np.int64)}, {}, 1),
           MaskedUpdate({"n": np.array(8, dtype=np.int64)}, {}, 9)]
    assert masked_mean(prev, ups)["n"] == 8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.randoms(use_true_random=False))
def test_full_masks_equal_fedavg(n_clients, size, rnd):
    rng = np.random.default_rng(rnd.randint(0, 2**31))
    arrays = [rng.normal(size=(size, 3)).astype(np.float32) for _ in range(n_clients)]
    weights = [int(rng.integers(1, 1000)) for _ in range(n_clients)]
    ups = [MaskedUpdate({"w": a}, {"w": np.ones_like(a, dtype=bool)}, w) for a, w in zip(arrays, weights)]
    fedavg = sum(w * a.astype(np.float64) for a, w in zip(arrays, weights)) / sum(weights)
    np.testing.assert_allclose(masked_mean({"w": np.zeros((size, 3), np.float32)}, ups)["w"], fedavg,
                               rtol=1e-5, atol=1e-6)


def test_unanimous_policy_prunes_only_what_all_pruned():
    cur = {"g": np.array([True, True, True, False])}
    masks = [{"g": np.array([True, False, False, False])}, {"g": np.array([False, True, False, False])}]
    out = update_global_mask(cur, masks, [1, 1], "unanimous")
    np.testing.assert_array_equal(out["g"], [True, True, False, False])


def test_quorum_policy_by_example_weight():
    cur = {"g": np.array([True, True, True])}
    masks = [{"g": np.array([True, False, True])}, {"g": np.array([False, False, True])}]
    # neuron 0 pruned by weight 3/4 >= 0.5 -> pruned; neuron 2 kept by all
    out = update_global_mask(cur, masks, [1, 3], "quorum", quorum=0.5)
    np.testing.assert_array_equal(out["g"], [False, False, True])
    # with quorum 0.8 neuron 0 (pruned by 0.75) survives
    out = update_global_mask(cur, masks, [1, 3], "quorum", quorum=0.8)
    np.testing.assert_array_equal(out["g"], [True, False, True])


def test_policy_is_monotone_and_never_empties_a_group():
    cur = {"g": np.array([False, True, True])}
    masks = [{"g": np.array([True, False, False])}]  # wants neuron 0 back, prunes 1 and 2
    out = update_global_mask(cur, masks, [1], "unanimous")
    assert not out["g"][0]  # monotone: never resurrected
    assert out["g"].sum() == 1  # never empty


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="mask policy"):
        update_global_mask({"g": np.array([True])}, [], [], "majority")


def test_consensus_keeps_the_median_count_of_the_most_kept_neurons():
    cur = {"g": np.array([True, True, True, True, True, False])}
    masks = [{"g": np.array([True, True, False, False, False, False])},  # keeps 2
             {"g": np.array([False, True, True, False, False, False])},  # keeps 2
             {"g": np.array([True, True, True, True, True, False])}]   # keeps 5 (a bigger device)
    out = update_global_mask(cur, masks, [1, 1, 1], "consensus")["g"]
    # the median client kept 2: neuron 1 (kept by all), then neuron 0 or 2 (kept by two; the lower index)
    np.testing.assert_array_equal(out, [True, True, False, False, False, False])
    # weight moves the median: the bigger device holding most examples keeps 5 of the 5 alive
    out = update_global_mask(cur, masks, [1, 1, 5], "consensus")["g"]
    np.testing.assert_array_equal(out, cur["g"])


def test_consensus_ranks_by_example_weight_not_by_count_of_clients():
    cur = {"g": np.ones(3, dtype=bool)}
    masks = [{"g": np.array([True, False, False])}, {"g": np.array([False, True, False])},
             {"g": np.array([False, True, False])}]
    out = update_global_mask(cur, masks, [10, 1, 1], "consensus")["g"]
    np.testing.assert_array_equal(out, [True, False, False])


def test_weighted_median_is_the_lower_median():
    from fedprune.aggregation import weighted_median

    assert weighted_median([3, 5], [1, 1]) == 3
    assert weighted_median([5, 3, 4], [1, 1, 1]) == 4
    assert weighted_median([3, 5], [1, 2]) == 5


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.randoms(use_true_random=False))
def test_consensus_is_a_subset_of_the_median_size(n_clients, size, rnd):
    rng = np.random.default_rng(rnd.randint(0, 2**31))
    cur = rng.random(size) < 0.8
    cur[rng.integers(size)] = True
    masks = [{"g": rng.random(size) < rng.random()} for _ in range(n_clients)]
    weights = [float(rng.integers(1, 100)) for _ in range(n_clients)]
    out = update_global_mask({"g": cur}, masks, weights, "consensus")["g"]
    assert not (out & ~cur).any()  # monotone
    counts = sorted(int((m["g"] & cur).sum()) for m in masks)
    assert max(1, counts[0]) <= out.sum() <= max(1, counts[-1])  # between the smallest and largest client
    kept = sum(w * m["g"] for w, m in zip(weights, masks))
    if out.sum() < cur.sum():  # nothing dropped was kept by more weight than something kept
        assert kept[out].min() >= kept[cur & ~out].max()
