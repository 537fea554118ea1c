"""The deployment engine on loopback: a real ``flower-superlink`` and two ``flower-supernode``
processes with different memory budgets (``--node-config``), the app run for 2 rounds with pruning
through ``flwr run``, then the final compact model and the per-client reports checked. Every process
started here is stopped, and checked gone, whatever happens."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from fedprune.deploy import LocalDeployment
from fedprune.results import read_metrics
from fedprune.model_file import load_model

MIB = 2**20

CONFIG = """
[run]
name = "deploy"
seed = 2
num-rounds = 2
out-dir = "{out}"
[data]
max-samples-per-client = 200
[model]
name = "lenet5"
[methods]
enabled = "dynhp+neq"
[memory]
budget = "constant"
budget-mb = 64.0
[fleet]
num-clients = 2
min-clients = 2
"""

# node 0: a fixed 8 MB budget (the run config says 64 MB: the node's wins); node 1: "auto",
# psutil's available memory minus 256 MB, which on a test machine is far above 8 MB
NODES = [
    {"partition-id": 0, "num-partitions": 2, "budget-mb": 8},
    {"partition-id": 1, "num-partitions": 2, "budget-mb": "auto", "reserve-mb": 256},
]


def _processes_using(ports: list[int]) -> list[str]:
    """Command lines of live processes that name one of ``ports`` (ours: Flower passes them on)."""
    if not ports:
        return []
    alternatives = "|".join(str(p) for p in ports)
    pattern = re.compile(rf"(?::|--port )(?:{alternatives})(?![0-9])")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and pattern.search(cmd):
            found.append(f"{pid}: {cmd[:200]}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_superlink_and_two_supernodes_on_loopback(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(CONFIG.format(out=out))
    dep = LocalDeployment(tmp_path / "deployment", NODES)
    t0 = time.monotonic()
    try:
        dep.start()
        code = dep.run(cfg, timeout=400)
    finally:
        dep.stop()
        deadline = time.monotonic() + 15  # Flower's children exit once their parents are gone
        while _processes_using(dep.ports) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_using(dep.ports), _processes_using(dep.ports)
    print(f"deployment run: {time.monotonic() - t0:.1f} s")
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(dep.work_dir.glob("*.log")))
    assert code == 0, logs
    assert all(proc.poll() is not None for proc in dep.procs.values())

    # the final compact model: pruned, exported, and it scores what the summary says
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2, summary
    assert summary["final_params"] < summary["dense_params"], summary
    assert summary["budget_violations"] == 0
    model = load_model(out / "final_model.json")
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (out / "final_model.onnx").is_file()

    # per-client reports: both nodes trained both rounds, each under its own node-config budget
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["aggregated"] == 2 and not row["failures"], row["failures"]
        clients = {int(c["partition_id"]): c for c in row["clients"]}
        assert sorted(clients) == [0, 1]
        fixed, auto = clients[0], clients[1]
        assert fixed["budget_bytes"] == 8 * MIB and fixed["budget_source"] == "node-config"
        assert auto["budget_source"] == "node-config:auto" and auto["budget_bytes"] > 8 * MIB
        # the batch sizer kept the 8 MB node within its budget (measured, not just predicted)
        assert 0 < fixed["measured_peak_bytes"] <= fixed["budget_bytes"] and fixed["violations"] == 0
        assert fixed["predicted_peak_bytes"] <= fixed["budget_bytes"]
        assert fixed["batch_max"] <= auto["batch_max"]  # the tighter budget trains smaller batches
        for c in (fixed, auto):
            assert c["num-examples"] > 0 and not c["does_not_fit"]
            # the process's RSS (psutil) is reported beside the training-memory figures
            assert c["rss_bytes"] > fixed["budget_bytes"] and c["rss_peak_bytes"] >= c["rss_bytes"]
            assert "ray_node_id" not in c  # a real SuperNode, not a simulation actor


def _fedprune(*args: str, timeout: float = 300):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fedprune.cli", *args], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=timeout)


def test_deploy_local_refuses_fewer_nodes_than_min_clients_before_starting(tmp_path):
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(CONFIG.format(out=tmp_path / "run").replace("min-clients = 2", "min-clients = 4")
                   .replace("num-clients = 2", "num-clients = 4"))
    proc = _fedprune("deploy-local", str(cfg), "--node", "partition-id=0 num-partitions=2",
                     "--node", "partition-id=1 num-partitions=2", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 --node(s) given" in lines[0] and "needs 4" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was started or written


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_nodes_that_do_not_connect_end_in_a_startup_timeout(tmp_path):
    from fedprune.deploy import DeployError

    dep = LocalDeployment(tmp_path / "deployment", NODES[:1])
    try:
        dep.start()
        t0 = time.monotonic()
        with pytest.raises(DeployError, match="only 1 of 2 SuperNodes connected within 20 s"):
            dep.wait_for_nodes(2, timeout=20)
        assert time.monotonic() - t0 < 60
    finally:
        dep.stop()
    assert not _processes_using(dep.ports)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deploy_local_prints_every_round(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(CONFIG.format(out=out))
    proc = _fedprune("deploy-local", str(cfg), "--nodes", "2", "--startup-timeout", "120", timeout=550)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1/2:" in proc.stderr and "round 2/2:" in proc.stderr, proc.stderr[-3000:]
    assert (out / "summary.json").is_file()
