"""Stop means stop: SIGTERM to a real ``fedprune simulate`` ends every process the run started, no
round is written after it, a second launcher on a live folder is refused, and ``--resume`` then
finishes with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT, small_run_config

from fedprune.process_tree import LAUNCH_ENV
from fedprune.results import read_metrics





@pytest.fixture(autouse=True)
def _tensor_only_batch_fit(monkeypatch):
    """Resuming must reproduce an uninterrupted run exactly, so batch sizes must not follow the
    measured resident memory of the client processes (tensor accounting only; still reported)."""
    monkeypatch.setenv("FEDPRUNE_PHYSICAL_BUDGET", "0")

def run_processes(run_dir: Path) -> list[str]:
    """Live processes whose environment marks them as launched for ``run_dir``."""
    needle = f"{LAUNCH_ENV}={run_dir}#".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:160]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in env.split(b"\0")):
            found.append(f"{pid}: {cmd.decode(errors='replace')}")
    return found


def fedprune(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedprune.cli", *args]


def wait_rounds(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(run_dir)) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be stopped"
    assert len(read_metrics(run_dir)) >= n, "no rounds in time"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigterm_stops_every_process_and_resume_matches_an_uninterrupted_run(tmp_path):
    rounds = 6
    cfg = tmp_path / "stop.toml"
    cfg.write_text(small_run_config("stop", rounds, 3, seed=5, samples=200))
    killed = (tmp_path / "killed").resolve()
    p = subprocess.Popen(fedprune("simulate", str(cfg), "--out", str(killed)), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_rounds(killed, 2, p)
        assert run_processes(killed), "the run's processes carry no launch mark"
        # a second launcher on the live folder is refused at once, and changes nothing
        second = subprocess.run(fedprune("simulate", "--resume", str(killed)), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "in use by another fedprune process" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        at_signal = len(read_metrics(killed))
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert f"--resume {killed}" in err
    stopped = len(read_metrics(killed))
    assert stopped <= at_signal + 1  # at most the round in flight when the signal came
    assert not run_processes(killed), run_processes(killed)  # gone when the command returns
    time.sleep(30)
    assert not run_processes(killed)
    assert len(read_metrics(killed)) == stopped < rounds  # nothing wrote a round after the stop
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run(fedprune("simulate", "--resume", str(killed)), cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    proc = subprocess.run(fedprune("simulate", str(cfg), "--out", str(straight)), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_metrics(straight), read_metrics(killed)
    assert [r["round"] for r in b] == list(range(1, rounds + 1))
    for ra, rb in zip(a, b):  # the same training: per-round test loss and accuracy are identical
        assert (ra["accuracy"], ra["loss"], ra["params_alive"]) == (rb["accuracy"], rb["loss"], rb["params_alive"])
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert (sa["final_accuracy"], sa["final_params"]) == (sb["final_accuracy"], sb["final_params"])
    assert not run_processes(killed) and not run_processes(straight.resolve())
