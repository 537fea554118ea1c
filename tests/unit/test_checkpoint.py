"""Checkpoints and client state: atomic, pickle-free, clear errors when corrupted."""

import numpy as np
import pytest

from fedprune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedprune.client_state import load_client_state, save_client_state


def test_checkpoint_roundtrip(tmp_path):
    dense = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(4, np.int64)}
    mask = {"a": np.array([True, False])}
    save_checkpoint(tmp_path, 7, dense, mask)
    ck = load_checkpoint(tmp_path)
    assert ck.round == 7 and set(ck.dense) == set(dense) and (ck.mask["a"] == mask["a"]).all()
    assert load_checkpoint(tmp_path / "nothing") is None


def test_truncated_checkpoint_is_a_clear_error_and_a_rewrite_is_atomic(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": np.ones(1000, np.float32)}, {"g": np.ones(3, bool)})
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(tmp_path)
    assert not list(tmp_path.glob(".checkpoint.npz.*"))  # no temporary file left behind


def test_client_state_picks_the_newest_earlier_round(tmp_path):
    for r in (1, 2, 3):
        save_client_state(tmp_path, 0, r, {"neq": {"evals": r, "vel/fc1": np.full(3, r, np.float64)}})
    files = sorted(p.name for p in (tmp_path / "client_state" / "client-0").iterdir())
    assert files == ["round-2.npz", "round-3.npz"]  # only the two newest are kept
    st = load_client_state(tmp_path, 0, before_round=3)
    assert st["neq"]["evals"] == 2 and (st["neq"]["vel/fc1"] == 2).all()
    assert load_client_state(tmp_path, 0, before_round=2) is None


def test_client_state_flat_keys_roundtrip(tmp_path):
    """The trainer's method state is flat ("neq/evals"); it comes back exactly as saved."""
    state = {"neq/evals": 3, "neq/vel/fc1": np.arange(3.0), "serene/best": 0.5}
    save_client_state(tmp_path, 1, 1, state)
    back = load_client_state(tmp_path, 1, before_round=2)
    assert back["neq/evals"] == 3 and back["serene/best"] == 0.5
    np.testing.assert_array_equal(back["neq/vel/fc1"], np.arange(3.0))
