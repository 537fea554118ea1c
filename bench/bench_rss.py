"""Physical peak vs budget: every zoo model x training budgets x methods none/dynhp, one fresh process each.

Each point runs ``bench/rss_probe.py`` (allocator set, per-process warm-up, then one ``train_local``
round) and records the RSS growth the kernel saw over the round's baseline. Writes
``bench/results/rss.json``: per point the physical peak / budget and the utilization, plus the worst
ratio and mean utilization over the points that trained.

    python bench/bench_rss.py                      # full grid
    python bench/bench_rss.py --models resnet8 --budgets 10,40 --methods none --samples 1500
    python bench/bench_rss.py --merge bench/results/rss.json --models vgg --samples 900 --no-table

``--merge`` keeps the points (and the table) of an earlier result and measures only the points it
lacks, so a grid can be completed over several sittings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

BUDGETS_MB = (10, 20, 40, 80, 200)
#: the issue's table (model, training budget MB, methods), re-measured on 2,700 samples
TABLE = (("resnet8", 10, "none"), ("resnet8", 20, "none"), ("resnet8", 80, "none"), ("lenet5", 12, "neq+dynhp"))
TABLE_SAMPLES = 2700
MAX_BATCH = 1024  # rss_probe.py's max_batch


def run_point(model: str, budget_mb: float, methods: str, samples: int, timeout: float) -> dict:
    """One probe subprocess; its JSON line, or the failure (killed, timed out) as a row."""
    cmd = [sys.executable, str(Path(__file__).with_name("rss_probe.py")), "--model", model,
           "--budget-mb", str(budget_mb), "--methods", methods, "--samples", str(samples)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"model": model, "budget_mb": budget_mb, "methods": methods, "error": "timeout"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"model": model, "budget_mb": budget_mb, "methods": methods,
                "error": f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"}
    row = json.loads(lines[-1])
    if not row["does_not_fit"]:
        row["physical_ratio"] = row["rss_growth_bytes"] / row["budget_bytes"]
    return row


def point_key(row: dict) -> tuple:
    """(model, budget MB, methods, samples): what identifies a grid point."""
    return row["model"], float(row["budget_mb"]), row["methods"], int(row.get("samples", 0))


def budget_bound(row: dict) -> bool:
    """Whether the budget chose the batch: not held at the data set's size or at max_batch."""
    train = int(0.9 * row.get("samples", 0))
    return 0 < row.get("batch_max", 0) < min(MAX_BATCH, train)


def summarize(rows: list[dict]) -> dict:
    """Worst physical peak / budget over the points that trained, and mean utilization over those
    where the budget chose the batch (elsewhere the data or max_batch capped it below the budget)."""
    trained = [r for r in rows if "physical_ratio" in r]
    if not trained:
        return {"points": len(rows), "trained": 0}
    worst = max(trained, key=lambda r: r["physical_ratio"])
    bound = [r for r in trained if budget_bound(r)]
    return {"points": len(rows), "trained": len(trained), "budget_bound": len(bound),
            "worst_ratio": worst["physical_ratio"],
            "worst_point": {k: worst[k] for k in ("model", "budget_mb", "methods")},
            "mean_utilization": sum(r["physical_ratio"] for r in bound) / len(bound) if bound else None,
            "mean_utilization_all_trained": sum(r["physical_ratio"] for r in trained) / len(trained),
            "over_budget": sum(1 for r in trained if r["physical_ratio"] > 1.0),
            "does_not_fit": sum(1 for r in rows if r.get("does_not_fit")),
            "errors": sum(1 for r in rows if "error" in r),
            "targets_met": {"worst_ratio_le_1": worst["physical_ratio"] <= 1.0,
                            "mean_utilization_ge_85pct": bool(bound) and
                            sum(r["physical_ratio"] for r in bound) / len(bound) >= 0.85}}


def main(argv=None) -> int:
    from fedprune.models import MODEL_NAMES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS_MB), help="training budgets in MB")
    p.add_argument("--methods", default="none,dynhp")
    p.add_argument("--samples", type=int, default=2700)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default=None)
    p.add_argument("--no-table", action="store_true", help="skip re-measuring the issue's table")
    p.add_argument("--resummarize", metavar="JSON", help="only recompute the summary of an existing result")
    p.add_argument("--quick", action="store_true", help="one point: lenet300, 20 MB, none, 300 samples, no table")
    p.add_argument("--merge", metavar="JSON", help="keep an earlier result's points; measure only the missing ones")
    a = p.parse_args(argv)
    if a.quick:
        a.models, a.budgets, a.methods, a.samples, a.no_table = "lenet300", "20", "none", 300, True
    if a.resummarize:
        d = json.loads(Path(a.resummarize).read_text())
        d["summary"] = summarize(d["points"])
        write_result("rss", d, a.resummarize)
        return 0
    earlier = json.loads(Path(a.merge).read_text()) if a.merge else {}
    rows = [r for r in earlier.get("points", []) if "error" not in r]
    done = {point_key(r) for r in rows}
    table = earlier.get("table", []) if a.no_table else [run_point(m, b, meth, TABLE_SAMPLES, a.timeout)
                                                         for m, b, meth in TABLE]
    for model in a.models.split(","):
        for budget in (float(b) for b in a.budgets.split(",")):
            for methods in a.methods.split(","):
                if (model, budget, methods, a.samples) in done:
                    continue
                rows.append(run_point(model, budget, methods, a.samples, a.timeout))
                print(json.dumps(rows[-1]), flush=True)
                write_result("rss", {"grid": vars(a), "summary": summarize(rows), "points": rows,
                                     "table": table, "complete": False}, a.out)  # partial, kept if stopped
    write_result("rss", {"grid": vars(a), "summary": summarize(rows), "points": rows, "table": table,
                         "complete": True}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
