"""A simulation attached to an existing Ray cluster: a head and a worker node started with
``ray start`` on loopback, ``[simulation] ray-address`` pointing at the head, then both nodes stopped.

Two Ray nodes on one host, on 127.0.0.1 only, need two workarounds that a real multi-host cluster
does not: Ray rewrites the addresses ``127.0.0.1``/``localhost`` to the host's routable IP unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (which in turn makes ``ray start --address`` refuse to start a
worker node), so the head and the driver get that variable, and the worker node is ``ray start`` run
with that rewrite switched off in its own process (``_WORKER_SHIM``). Every Ray port is a free one
and each node has its own temp dir, so other Ray instances on the machine are never touched: the
nodes are stopped through their own process groups, never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import ROOT

from fedprune.launch import console_tool, free_port
from fedprune.results import read_metrics

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
_WORKER_SHIM = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h; "
                "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")

CONFIG = """
[run]
name = "ray-cluster"
seed = 3
num-rounds = 2
[data]
max-samples-per-client = 200
[model]
name = "lenet5"
[methods]
enabled = "dynhp+neq"
[memory]
budget = "constant"
budget-mb = 12.0
[fleet]
num-clients = 2
min-clients = 2
[simulation]
client-cpus = 1
ray-address = "127.0.0.1:{port}"
"""


def _node_ports() -> list[str]:
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _kill_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the node's process group (``ray start --block`` then stops its processes), then KILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()
            time.sleep(0.3)
        if not _group_alive(proc.pid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg; look for a live member
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _cluster_nodes(address: str, env: dict[str, str], want: int, timeout: float = 90) -> list[str]:
    """Alive node ids of the cluster (waits until ``want`` are alive), from a short-lived driver."""
    code = ("import json, time, ray\n"
            f"ray.init(address={address!r}, logging_level='error', log_to_driver=False)\n"
            f"deadline = time.time() + {timeout}\n"
            "while True:\n"
            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
            f"    if len(alive) >= {want} or time.time() > deadline: break\n"
            "    time.sleep(0.5)\n"
            "print('NODES', json.dumps([[n['NodeID'], n['NodeManagerAddress']] for n in alive]))\n"
            "ray.shutdown()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NODES ")]
    assert lines, proc.stdout + proc.stderr[-3000:]
    nodes = json.loads(lines[-1][len("NODES "):])
    assert all(ip == "127.0.0.1" for _, ip in nodes), nodes  # loopback only
    return [nid for nid, _ in nodes]


def _driver_logs(ray_tmp: Path) -> int:
    return len(list(ray_tmp.glob("*/session_*/logs/python-core-driver-*")))


@pytest.fixture
def ray_cluster(tmp_path):
    """A head (1 CPU) and a worker node (1 CPU) on 127.0.0.1; yields (address, env, Ray temp dir)."""
    env = dict(os.environ, **LOOPBACK_ENV)
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fpray-", dir="/tmp"))  # Ray's socket paths must be short
    head_tmp, worker_tmp = ray_tmp / "head", ray_tmp / "worker"
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_spawn(
            [console_tool("ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
             f"--temp-dir={head_tmp}", *_node_ports()], tmp_path / "ray-head.log", env))
        deadline = time.monotonic() + 90
        while True:
            assert nodes[0].poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not open its port"
            time.sleep(0.3)
        worker_env = dict(env)
        worker_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # `ray start --address` refuses it
        nodes.append(_spawn(
            [sys.executable, "-c", _WORKER_SHIM, "start", "--block", f"--address={address}",
             "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
             f"--temp-dir={worker_tmp}", *_node_ports()], tmp_path / "ray-worker.log", worker_env))
        yield address, env, ray_tmp
    finally:
        for proc in reversed(nodes):  # worker first, then the head
            _kill_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for proc in nodes:
            assert not _group_alive(proc.pid), f"Ray processes of group {proc.pid} survived"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_simulation_runs_on_an_existing_ray_cluster(tmp_path, ray_cluster):
    address, env, ray_tmp = ray_cluster
    node_ids = _cluster_nodes(address, env, want=2)
    assert len(node_ids) == 2, node_ids
    drivers_before = _driver_logs(ray_tmp)

    cfg = tmp_path / "cluster.toml"
    cfg.write_text(CONFIG.format(port=address.rsplit(":", 1)[1]))
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedprune.cli", "simulate", str(cfg), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    log = (out / "flwr.log").read_text(errors="replace") if (out / "flwr.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    print(f"simulation on the cluster: {time.monotonic() - t0:.1f} s")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2
    assert summary["final_params"] < summary["dense_params"]
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["aggregated"] == 2 and not r["failures"] for r in rows), rows
    used = {c["ray_node_id"] for r in rows for c in r["clients"]}
    # the clients ran in the cluster's actors: 2 actors of 1 CPU, one per 1-CPU node
    assert used <= set(node_ids) and len(used) == 2, (used, node_ids)
    assert all(c["rss_bytes"] > 0 for r in rows for c in r["clients"])
    # the simulation's driver attached to this cluster (its log lands in a session of the cluster),
    # it did not start a Ray of its own
    assert _driver_logs(ray_tmp) > drivers_before, "no driver attached to the cluster"
    assert "Started a local Ray instance" not in log
    # the cluster outlives the simulation
    assert len(_cluster_nodes(address, env, want=2, timeout=10)) == 2
