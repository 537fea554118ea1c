"""``fedprune train`` with ``memory.budget = "auto"`` inside a 1 GB memory cgroup, for every zoo model.

Each model runs as its own ``fedprune train`` process (one epoch on a capped data set, its methods
as given) started inside a fresh memory cgroup with a hard limit (swap included): the whole process
counts -- interpreter, torch, the data set, the model and training. Per model the JSON records
whether the kernel killed it, whether it said in one line that the model cannot fit, the cgroup's
peak charge and its split at the end (anonymous memory, mapped files, page cache: cgroup v1 charges
page cache too, which the kernel reclaims before it kills), the auto budget the run chose and the
physical peak of its training. Writes ``bench/results/auto_cgroup.json``.

    python bench/bench_auto_cgroup.py                         # every zoo model, 1 GB, dynhp
    python bench/bench_auto_cgroup.py --models lenet5 --limit-mb 1024 --methods none
    python bench/bench_auto_cgroup.py --models resnet18 --merge bench/results/auto_cgroup.json  # redo one

Needs root and a writable memory cgroup controller (v1 or v2); otherwise it says so in one line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

MIB = 2**20
CONFIG = """
[run]
name = "auto-{model}"
seed = 0
num-rounds = 1
[data]
max-samples-per-client = {samples}
[model]
name = "{model}"
[train]
local-epochs = 1
[methods]
enabled = "{methods}"
[memory]
budget = "auto"
reserve-mb = {reserve}
"""


def _metrics(out: Path) -> dict:
    """The training figures of the run's results folder (empty when it has none)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if (out / "summary.json").is_file():
        rows.append(json.loads((out / "summary.json").read_text()))
    keys = ("budget_bytes", "batch_max", "does_not_fit", "physical_peak_bytes", "physical_violation",
            "physical_baseline_bytes", "violations")
    flat = {}
    for row in rows:
        for c in row.get("clients", [row]):
            flat.update({k: c[k] for k in keys if k in c})
    return flat


def run_model(model: str, limit_mb: float, methods: str, samples: int, reserve_mb: float, timeout: float) -> dict:
    """One ``fedprune train`` in a fresh cgroup of ``limit_mb``; its outcome as a row."""
    from fedprune.memory.cgroup import MemoryCgroup

    group = MemoryCgroup.create(f"fp-auto-{uuid.uuid4().hex[:8]}", int(limit_mb * MIB))
    row: dict = {"model": model, "limit_mb": limit_mb, "methods": methods, "samples": samples}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = Path(tmp) / "auto.toml", Path(tmp) / "out"
        cfg.write_text(CONFIG.format(model=model, samples=samples, methods=methods, reserve=reserve_mb))
        cmd = [sys.executable, "-m", "fedprune.cli", "train", str(cfg), "--out", str(out), "--epochs", "1"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=group.preexec())
            row.update(exit_code=proc.returncode, stderr_tail=proc.stderr.strip().splitlines()[-1:])
        except subprocess.TimeoutExpired:
            row.update(exit_code=None, error="timeout")
        row["seconds"] = time.perf_counter() - t0
        row.update(_metrics(out))
        row.update(oom_kills=group.oom_kills(), cgroup_peak_bytes=group.peak_bytes(), charge_at_end=group.charge())
    group.remove()
    row["killed"] = bool(row["oom_kills"]) or row.get("exit_code") == -9
    row["trained"] = row.get("exit_code") == 0 and not row.get("does_not_fit")
    row["said_does_not_fit"] = bool(row.get("does_not_fit")) or "does not fit" in " ".join(row.get("stderr_tail", []))
    return row


def main(argv=None) -> int:
    from fedprune.memory.cgroup import CgroupUnavailable, MemoryCgroup
    from fedprune.models import MODEL_NAMES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--limit-mb", type=float, default=1024.0)
    p.add_argument("--methods", default="dynhp")
    p.add_argument("--samples", type=int, default=2000, help="training samples (max-samples-per-client)")
    p.add_argument("--reserve-mb", type=float, default=256.0, help="auto reserve (the final export and evaluation need it)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="lenet300 only, 300 samples")
    p.add_argument("--merge", metavar="JSON", help="keep an earlier result's rows of the models not run now")
    a = p.parse_args(argv)
    if a.quick:
        a.models, a.samples = "lenet300", 300
    try:
        MemoryCgroup.create(f"fp-probe-{uuid.uuid4().hex[:8]}", 64 * MIB).remove()
    except CgroupUnavailable as e:
        print(f"bench_auto_cgroup: {e}", file=sys.stderr)
        return 2
    models = a.models.split(",")
    earlier = json.loads(Path(a.merge).read_text()).get("runs", []) if a.merge else []
    kept = [r for r in earlier if r["model"] not in models]
    rows: list[dict] = []
    for model in models:
        rows.append(run_model(model, a.limit_mb, a.methods, a.samples, a.reserve_mb, a.timeout))
        print(json.dumps(rows[-1]), flush=True)
        write_result("auto_cgroup", {"grid": vars(a), "summary": summarize(kept + rows),
                                     "complete": len(rows) == len(models), "runs": kept + rows}, a.out)
    return 0


def summarize(rows: list[dict]) -> dict:
    """Counts of the outcomes; ``ok`` when no model was killed and each trained or said it cannot fit."""
    return {"models": len(rows), "trained": sum(r["trained"] for r in rows),
            "killed": sum(r["killed"] for r in rows),
            "said_does_not_fit": sum(r["said_does_not_fit"] for r in rows),
            "ok": all(not r["killed"] and (r["trained"] or r["said_does_not_fit"]) for r in rows)}


if __name__ == "__main__":
    sys.exit(main())
