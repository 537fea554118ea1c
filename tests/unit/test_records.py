"""Flower record conversions keep keys, shapes, dtypes and nesting."""

import numpy as np

from flower_io.records import (from_array_record, join_metrics, records_to_state, split_metrics,
                             state_to_records, to_array_record)


def test_arrays_roundtrip_keeps_order_and_dtype():
    arrays = {"b.weight": np.ones((2, 3), np.float32), "a.mask": np.array([True, False]),
              "n": np.array(7, np.int64)}
    back = from_array_record(to_array_record(arrays))
    assert list(back) == list(arrays)
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype and (back[k] == arrays[k]).all()


def test_metrics_split_numbers_and_text():
    m, info = split_metrics({"acc": 0.5, "n": 3, "flag": True, "sizes": "8,16", "hist": [1, 2.5]})
    joined = join_metrics(m, info)
    assert joined == {"acc": 0.5, "n": 3, "flag": 1, "sizes": "8,16", "hist": [1.0, 2.5]}


def test_method_state_roundtrip_with_slashes_in_keys():
    state = {"neq": {"evals": 3, "prev/layers.0.conv1": np.arange(4, dtype=np.float16),
                     "frozen/fc1": np.array([True, False])}, "serene": {"best": 0.25}}
    back = records_to_state(*state_to_records(state))
    assert back["neq"]["evals"] == 3 and back["serene"]["best"] == 0.25
    np.testing.assert_array_equal(back["neq"]["prev/layers.0.conv1"], state["neq"]["prev/layers.0.conv1"])
    np.testing.assert_array_equal(back["neq"]["frozen/fc1"], [True, False])
