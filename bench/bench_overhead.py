"""Simulator overhead: fedprune with every method off vs a minimal plain Flower FedAvg app.

Both run through the same launcher (private local SuperLink, `flwr run`, Ray, same client resources)
on the same model (LeNet-5), data partitions, clients and rounds, with server-side test evaluation
every round. Runs alternate (A, B, A, B, ...) so both see the same machine load; the figure is the
ratio of median wall times. Target: <= 1.10x.

Usage: python bench/bench_overhead.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fedprune.config import config_from_dict, dumps_toml, to_dict  # noqa: E402
from fedprune.launch import SimulationSpec, run_flower_simulation  # noqa: E402

PLAIN_APP = Path(__file__).resolve().parent / "plain_flower"
TARGET = 1.10


def run_fedprune(work: Path, clients: int, rounds: int, samples: int) -> dict:
    out = work / f"fedprune-{time.monotonic_ns()}"
    cfg = config_from_dict({"run": {"name": "overhead", "num-rounds": rounds, "out-dir": str(out)},
                            "data": {"max-samples-per-client": samples},
                            "fleet": {"num-clients": clients, "min-clients": clients}})
    out.mkdir(parents=True)
    (out / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    t0 = time.perf_counter()
    run_flower_simulation(SimulationSpec(out / "config.toml", out, clients))
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_seconds": wall, "final_accuracy": summary["final_accuracy"]}


def run_plain(work: Path, clients: int, rounds: int, samples: int) -> dict:
    out = work / f"plain-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    cfg = out / "run.toml"
    cfg.write_text(f'num-rounds = {rounds}\nnum-clients = {clients}\nmax-samples-per-client = {samples}\n'
                   f'out-dir = "{out}"\n')
    t0 = time.perf_counter()
    run_flower_simulation(SimulationSpec(cfg, out, clients, app_dir=PLAIN_APP))
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_seconds": wall, "final_accuracy": summary["final_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 clients, 1 round, 200 samples, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    clients, rounds, samples, repeats = (2, 1, 200, 1) if a.quick else (8, 3, 0, a.repeats)
    runs = {"fedprune": [], "plain_flower": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            runs["fedprune"].append(run_fedprune(Path(tmp), clients, rounds, samples))
            runs["plain_flower"].append(run_plain(Path(tmp), clients, rounds, samples))
    med = {k: statistics.median(r["wall_seconds"] for r in v) for k, v in runs.items()}
    ratio = med["fedprune"] / med["plain_flower"]
    write_result("overhead", {
        "setup": {"model": "lenet5", "dataset": "fashion-mnist", "clients": clients, "rounds": rounds,
                  "max_samples_per_client": samples, "repeats": repeats, "quick": a.quick},
        "runs": runs, "median_wall_seconds": med, "wall_ratio": ratio, "target": TARGET,
        "target_met": ratio <= TARGET}, a.out)
    print(f"fedprune (methods off) / plain Flower FedAvg wall time: {ratio:.3f}x (target <= {TARGET}x)")


if __name__ == "__main__":
    main()
