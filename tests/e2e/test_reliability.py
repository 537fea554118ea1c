"""Reliability in real simulations: injected client faults, and what ``--resume`` refuses (stop and
resume of a live run: test_stop_resume.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from support import ROOT, small_run_config

from fedprune.config import FAULT_KINDS, config_from_dict
from fedprune.faults import draw_fault
from fedprune.results import read_metrics


@pytest.fixture(autouse=True)
def _tensor_only_batch_fit(monkeypatch):
    """Resuming must reproduce an uninterrupted run exactly, so batch sizes must not follow the
    measured resident memory of the client processes (tensor accounting only; still reported)."""
    monkeypatch.setenv("FEDPRUNE_PHYSICAL_BUDGET", "0")


def simulate(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "fedprune.cli", "simulate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def fault_seed(clients: int, rounds: int, kinds: list[str], rate: float) -> int:
    """A faults.seed under which every kind strikes and each round keeps >= 2 healthy clients."""
    for seed in range(5000):
        cfg = config_from_dict({"run": {"seed": 3}, "faults": {"rate": rate, "kinds": ",".join(kinds),
                                                               "seed": seed}})
        draws = [[draw_fault(cfg, c, r) for c in range(clients)] for r in range(1, rounds + 1)]
        seen = {k for row in draws for k in row if k}
        healthy = [sum(k is None for k in row) for row in draws]
        timeouts = sum(k == "timeout" for row in draws for k in row)
        if seen == set(kinds) and min(healthy) >= 2 and timeouts == 1:
            return seed
    raise AssertionError("no seed found")


@pytest.mark.slow
def test_every_fault_kind_is_a_counted_failure_and_never_poisons(tmp_path):
    kinds = list(FAULT_KINDS)
    clients, rounds = 6, 2
    seed = fault_seed(clients, rounds, kinds, rate=0.5)
    cfg = tmp_path / "faults.toml"
    cfg.write_text(small_run_config("faults", rounds, clients, seed=3, samples=240)
                   + f'[faults]\nrate = 0.5\nkinds = "{",".join(kinds)}"\nseed = {seed}\n'
                   + "[simulation]\nround-timeout = 45.0\n")
    out = tmp_path / "run"
    proc = simulate(str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr + (out / "flwr.log").read_text()[-3000:]
    rows = read_metrics(out)
    assert len(rows) == rounds
    cfg_obj = config_from_dict({"run": {"seed": 3}, "faults": {"rate": 0.5, "kinds": ",".join(kinds),
                                                               "seed": seed}})
    for row in rows:
        expected = {c: draw_fault(cfg_obj, c, row["round"]) for c in range(clients)}
        n_faulty = sum(k is not None for k in expected.values())
        # every faulty client is a failure; every healthy one was aggregated
        assert row["aggregated"] == clients - n_faulty, row["failures"]
        assert len(row["failures"]) == n_faulty, row["failures"]
        for c, kind in expected.items():
            if kind in ("nan", "bad-mask", "mismatch", "raise", "oom"):
                assert str(c) in row["failures"], (kind, row["failures"])  # keyed by partition id
        for reason in row["failures"].values():  # one short line, no terminal colour codes
            assert "\n" not in reason and "\x1b" not in reason and len(reason) <= 200, reason
        # twice chance (10 classes): a model poisoned by a NaN or a foreign mask scores at chance
        assert np.isfinite(row["accuracy"]) and row["accuracy"] > 0.2, row["accuracy"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["client_failures"] == sum(len(r["failures"]) for r in rows)


def test_resume_refuses_a_finished_or_foreign_folder(tmp_path):
    proc = simulate("--resume", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "not a fedprune run folder" in proc.stderr
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "summary.json").write_text("{}")
    proc = simulate("--resume", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "already finished" in proc.stderr
