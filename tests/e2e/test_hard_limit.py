"""Hard-limit mode: two SuperNodes, each in its own memory cgroup with a real kernel limit, the same
client (LeNet-5, the same small training budget) once with DynHP and once with methods ``none``.

The DynHP client prunes to fit and trains every round without the kernel killing it; the ``none``
client cannot fit its budget and either says so (``does_not_fit``) or is killed by the kernel; the
run finishes either way. Skipped where this machine cannot create memory cgroups (not root, no
controller, read-only)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from fedprune.deploy import DeployError, LocalDeployment
from fedprune.memory.cgroup import CgroupUnavailable, MemoryCgroup
from fedprune.results import read_metrics

MIB = 2**20
#: each node's limit: a SuperNode and its ClientApp (Python, torch, Flower, the data set) are charged
#: about 1.2 GB on this machine kind; the training budget is a few MB on top
LIMIT_BYTES = 1600 * MIB
BUDGET_MB = 5

CONFIG = """
[run]
name = "hard-limit"
seed = 3
num-rounds = 2
out-dir = "{out}"
[data]
max-samples-per-client = 200
[model]
name = "lenet5"
[methods]
enabled = "dynhp"
[memory]
budget = "constant"
budget-mb = {budget}
[fleet]
devices = "pi3b:1, pi4-2gb:1"
methods = "pi3b=dynhp; pi4-2gb=none"
num-clients = 2
clients-per-round = 2
min-clients = 1
"""


def _cgroup_skip() -> str | None:
    if os.geteuid() != 0:
        return "not root: memory cgroups cannot be created"
    try:
        MemoryCgroup.create(f"fp-probe-{uuid.uuid4().hex[:8]}", 64 * MIB).remove()
    except CgroupUnavailable as e:
        return str(e)
    return None


_SKIP = _cgroup_skip()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_dynhp_trains_under_a_kernel_limit_and_none_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "hard.toml"
    cfg.write_text(CONFIG.format(out=out, budget=BUDGET_MB))
    nodes = [{"partition-id": i, "num-partitions": 2, "budget-mb": BUDGET_MB} for i in range(2)]
    dep = LocalDeployment(tmp_path / "deployment", nodes, memory_limits=[LIMIT_BYTES, LIMIT_BYTES])
    try:
        dep.start()
        cgroups = {name: g.path for name, g in dep.cgroups.items()}
        dep.wait_for_nodes(2, 120)
        code = dep.run(cfg, timeout=500)
    finally:
        dep.stop()
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(dep.work_dir.glob("*.log")))
    assert code == 0, logs
    assert not any(Path(p).exists() for p in cgroups.values())  # removed at stop
    memory = json.loads((dep.work_dir / "memory_cgroups.json").read_text())
    assert {m["limit_bytes"] for m in memory.values()} == {LIMIT_BYTES}
    assert memory["supernode-0"]["oom_kills"] == 0, memory  # the DynHP node was never killed
    assert (out / "summary.json").is_file()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_params"] < summary["dense_params"]  # the DynHP client's updates were aggregated
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    none_killed = memory["supernode-1"]["oom_kills"] > 0
    for row in rows:
        clients = {int(c["partition_id"]): c for c in row["clients"]}
        dynhp = clients[0]
        assert dynhp["methods"] == "dynhp" and dynhp["num-examples"] > 0 and not dynhp["does_not_fit"]
        assert dynhp["physical_peak_bytes"] > 0 and "physical_violation" in dynhp  # measured every round
    first = {int(c["partition_id"]): c for c in rows[0]["clients"]}
    assert first[0]["neurons_pruned_to_fit"] > 0  # DynHP pruned the dense model to fit its budget
    if not none_killed:  # the none client said, in its own report, that the dense model does not fit
        assert first[1]["methods"] == "none" and first[1]["does_not_fit"] == 1, first[1]


def test_a_node_limit_that_cannot_be_created_stops_before_anything_starts(tmp_path):
    dep = LocalDeployment(tmp_path / "deployment", [{"partition-id": 0, "num-partitions": 1}],
                          memory_limits=[1])  # under the 1 MiB a cgroup limit needs
    with pytest.raises(DeployError, match="hard limit for node 0"):
        dep.start()
    assert not dep.procs and not dep.cgroups
