"""Whole pipeline: serene+neq+dynhp vs plain FedAvg on the same fleet, data and rounds, over seeds.

Both runs use `sim_configs/pipeline.toml` (the quickstart fleet, DynHP aiming at 10x; clients, data,
rounds, budgets) and differ only in `methods.enabled`; every seed of ``--seeds`` (``run.seed``: model
init, partition, client sampling) runs both. Figures are ratios pruned / FedAvg per seed, then mean
and std over seeds: wall time, final parameters, final ONNX file size, upload bytes, and the accuracy
gap in points; per arm also the kernel's judgement of the budgets (the worst RSS peak of a
client-round over its training budget, and the client-rounds above it). Targets (means): >= 10x
fewer final params, <= 1 point accuracy gap, total upload <= 0.5x of dense FedAvg, wall time < 1.0x
(timed on a shared machine: the load average is recorded).

Usage: python bench/bench_pipeline.py [--quick] [--config FILE] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fedprune.config import config_from_dict, dumps_toml, load_config, to_dict  # noqa: E402
from fedprune.launch import SimulationSpec, run_flower_simulation  # noqa: E402
from fedprune.results import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("final_accuracy", "final_params", "dense_params", "compression", "neurons_per_layer",
        "upload_bytes_total", "dense_upload_bytes_total", "download_bytes_total",
        "budget_violations", "client_failures", "final_flops")
NUMERIC = ("final_accuracy", "final_params", "final_flops", "onnx_bytes", "upload_bytes_total",
           "download_bytes_total", "wall_seconds", "budget_violations", "client_failures",
           "physical_peak_over_budget_max", "physical_violations")


def physical_figures(run_dir: Path) -> dict:
    """The kernel's view of every budgeted client-round of a run (its ``metrics.jsonl``): the worst
    RSS peak over its training budget, and how many client-rounds' peaks exceeded the budget."""
    worst, violations = None, 0
    for row in read_metrics(run_dir):
        for c in row.get("clients", []):
            peak, budget = c.get("physical_peak_bytes"), c.get("budget_bytes")
            if peak is None or not budget:
                continue
            worst = max(worst or 0.0, peak / budget)
            violations += int(peak > budget)
    return {"physical_peak_over_budget_max": worst, "physical_violations": violations}


def run(cfg, work: Path, label: str) -> dict:
    """One simulation of ``cfg`` in ``work/label``; its summary figures, wall time and ONNX size."""
    out = work / label
    out.mkdir(parents=True)
    data = to_dict(cfg)
    data["run"]["out-dir"] = str(out)
    data["run"]["name"] = label
    cfg = config_from_dict(data)
    (out / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    t0 = time.perf_counter()
    run_flower_simulation(SimulationSpec(out / "config.toml", out, cfg.fleet.num_clients))
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    onnx = out / "final_model.onnx"
    return {"wall_seconds": wall, "onnx_bytes": onnx.stat().st_size if onnx.exists() else None,
            **physical_figures(out), **{k: s[k] for k in KEYS}}


def ratios(fedavg: dict, pruned: dict) -> dict:
    """Pruned / FedAvg figures of one seed."""
    out = {"wall_time": pruned["wall_seconds"] / fedavg["wall_seconds"],
           "final_params": pruned["final_params"] / fedavg["final_params"],
           "params_reduction": fedavg["final_params"] / pruned["final_params"],
           "upload_bytes_vs_dense_fedavg": pruned["upload_bytes_total"] / fedavg["upload_bytes_total"],
           "accuracy_gap_points": 100 * (fedavg["final_accuracy"] - pruned["final_accuracy"])}
    if fedavg.get("onnx_bytes") and pruned.get("onnx_bytes"):
        out["onnx_reduction"] = fedavg["onnx_bytes"] / pruned["onnx_bytes"]
    return out


def mean_std(rows: list[dict], keys) -> dict:
    """``{k: mean, k_std: sample std}`` over ``rows`` for every numeric ``k`` present in all of them."""
    out = {}
    for k in keys:
        xs = [float(r[k]) for r in rows if r.get(k) is not None]
        if len(xs) != len(rows):
            continue
        mu = sum(xs) / len(xs)
        out[k] = mu
        out[k + "_std"] = (sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return out


def quick_config(base):
    """2 clients, 1 round, 300 samples each, no budgets: a smoke test of the same config."""
    d = to_dict(base)
    d["run"]["num-rounds"] = 1
    d["data"]["max-samples-per-client"] = 300
    d["fleet"].update({"num-clients": 2, "min-clients": 2, "budgets-mb": "", "devices": ""})
    return config_from_dict(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 clients, 1 round, 300 samples each, one seed")
    ap.add_argument("--config", default=str(ROOT / "sim_configs" / "pipeline.toml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out")
    a = ap.parse_args()
    base = load_config(a.config)
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    if a.quick:
        base, seeds = quick_config(base), seeds[:1]
    load_start, t0 = os.getloadavg(), time.perf_counter()
    runs: list[dict] = []
    for seed in seeds:
        seeded = dataclasses.replace(base, run=dataclasses.replace(base.run, seed=seed))
        pruned_cfg = dataclasses.replace(seeded, methods=dataclasses.replace(seeded.methods, enabled="serene+neq+dynhp"))
        fedavg_cfg = dataclasses.replace(seeded, methods=dataclasses.replace(seeded.methods, enabled="none"))
        with tempfile.TemporaryDirectory() as tmp:
            fedavg = run(fedavg_cfg, Path(tmp), "fedavg")
            pruned = run(pruned_cfg, Path(tmp), "serene-neq-dynhp")
        runs.append({"seed": seed, "fedavg": fedavg, "pruned": pruned, "ratios": ratios(fedavg, pruned)})
        print(f"seed {seed}: {json.dumps(runs[-1]['ratios'])}", flush=True)
        result = summarize(runs, a, base, load_start, t0)  # written after every seed: nothing is lost
    print(json.dumps({"ratios": result["ratios"], "targets_met": result["targets_met"]}, indent=2))


def summarize(runs: list[dict], a, base, load_start, t0) -> dict:
    """Mean +- std over the seeds run so far, targets on the means; written to the result file."""
    summary = {arm: mean_std([r[arm] for r in runs], NUMERIC) for arm in ("fedavg", "pruned")}
    summary["ratios"] = mean_std([r["ratios"] for r in runs], runs[0]["ratios"].keys())
    r = summary["ratios"]
    targets = {
        "params_reduction_ge_10x": r["params_reduction"] >= 10,
        "accuracy_gap_le_1_point": r["accuracy_gap_points"] <= 1.0,
        "upload_le_half": r["upload_bytes_vs_dense_fedavg"] <= 0.5,
        "wall_time_lt_1": r["wall_time"] < 1.0,
    }
    note = ("quick smoke run; " if a.quick else "") + f"{len(runs)} seeds x 2 runs of the config as written"
    out = {"config": str(Path(a.config).name), "quick": a.quick, "note": note,
           "rounds": base.run.num_rounds, "clients": base.fleet.num_clients, "seeds": [x["seed"] for x in runs],
           "runs": runs, "summary": summary, "ratios": r, "targets_met": targets,
           "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "wall_seconds": time.perf_counter() - t0}
    write_result("pipeline", out, a.out)
    return out

if __name__ == "__main__":
    main()
