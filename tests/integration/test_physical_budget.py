"""The budget is physical: in a fresh client process, the RSS a training round adds (the kernel's
high-water mark over the round minus the RSS at its start) stays within the training budget --
LeNet-5 with DynHP at 10 MB, the case where changing layer shapes used to grow RSS past it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _probe(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "rss_probe.py"), *args], capture_output=True,
                          text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.mark.timeout(300)
def test_dynhp_round_keeps_its_rss_growth_within_a_10_mb_budget():
    row = _probe("--model", "lenet5", "--budget-mb", "10", "--methods", "dynhp", "--samples", "900")
    assert not row["does_not_fit"] and row["batch_max"] > 8
    assert row["peak_method"] == "clear_refs"
    assert row["rss_growth_bytes"] <= row["budget_bytes"], row
    assert row["trainer_physical_violation"] in (0, 1)  # the trainer reports its own verdict too
    assert row["warm_up_seconds"] < 30  # a handful of steps, not training runs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_study_tightest_client_keeps_every_round_within_its_budget():
    """The study's Pi Zero 2 W client (LeNet-5 + DynHP, 5.4 MB, the dense model does not fit even at
    min-batch): every round, pruning events and batch refits included, stays under the budget as the
    kernel counts it, starting from the round the rehearsal prepared."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_client_rounds.py"), "--child", "1",
                           "--rounds", "3", "--samples", "600"], capture_output=True, text=True, timeout=280,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 3
    for row in rows:
        assert row["budget_bytes"] and row["params_alive"] < 431_080  # pruned to fit: not the dense model
        assert row["physical_peak_bytes"] <= row["budget_bytes"], row
