"""Whole pipeline: serene+neq+dynhp vs plain FedAvg on the same fleet, data and rounds.

Both runs use `sim_configs/pipeline.toml` (the quickstart fleet, DynHP aiming at 10x; clients, data,
rounds, budgets) and differ only in `methods.enabled`. Figures are ratios pruned / FedAvg: wall time, final parameters, upload bytes,
and the accuracy gap in points. Targets: >= 10x fewer final params, <= 1 point accuracy gap,
total upload <= 0.5x of dense FedAvg, wall time < 1.0x.

Usage: python bench/bench_pipeline.py [--quick] [--config FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fedprune.config import config_from_dict, dumps_toml, load_config, to_dict  # noqa: E402
from fedprune.launch import SimulationSpec, run_flower_simulation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(cfg, work: Path, label: str) -> dict:
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
    keys = ("final_accuracy", "final_params", "dense_params", "compression", "neurons_per_layer",
            "upload_bytes_total", "dense_upload_bytes_total", "download_bytes_total",
            "budget_violations", "client_failures", "final_flops")
    return {"wall_seconds": wall, **{k: s[k] for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 clients, 1 round, 300 samples each")
    ap.add_argument("--config", default=str(ROOT / "sim_configs" / "pipeline.toml"))
    ap.add_argument("--out")
    a = ap.parse_args()
    base = load_config(a.config)
    if a.quick:
        d = to_dict(base)
        d["run"]["num-rounds"] = 1
        d["data"]["max-samples-per-client"] = 300
        d["fleet"].update({"num-clients": 2, "min-clients": 2, "budgets-mb": "", "devices": ""})
        base = config_from_dict(d)
    pruned_cfg = dataclasses.replace(base, methods=dataclasses.replace(base.methods, enabled="serene+neq+dynhp"))
    fedavg_cfg = dataclasses.replace(base, methods=dataclasses.replace(base.methods, enabled="none"))
    with tempfile.TemporaryDirectory() as tmp:
        fedavg = run(fedavg_cfg, Path(tmp), "fedavg")
        pruned = run(pruned_cfg, Path(tmp), "serene-neq-dynhp")
    ratios = {
        "wall_time": pruned["wall_seconds"] / fedavg["wall_seconds"],
        "final_params": pruned["final_params"] / fedavg["final_params"],
        "params_reduction": fedavg["final_params"] / pruned["final_params"],
        "upload_bytes_vs_dense_fedavg": pruned["upload_bytes_total"] / fedavg["upload_bytes_total"],
        "accuracy_gap_points": 100 * (fedavg["final_accuracy"] - pruned["final_accuracy"]),
    }
    targets = {
        "params_reduction_ge_10x": ratios["params_reduction"] >= 10,
        "accuracy_gap_le_1_point": ratios["accuracy_gap_points"] <= 1.0,
        "upload_le_half": ratios["upload_bytes_vs_dense_fedavg"] <= 0.5,
        "wall_time_lt_1": ratios["wall_time"] < 1.0,
    }
    write_result("pipeline", {"config": str(Path(a.config).name), "quick": a.quick,
                              "rounds": base.run.num_rounds, "clients": base.fleet.num_clients,
                              "fedavg": fedavg, "pruned": pruned, "ratios": ratios,
                              "targets_met": targets}, a.out)
    print(json.dumps({"ratios": ratios, "targets_met": targets}, indent=2))


if __name__ == "__main__":
    main()
