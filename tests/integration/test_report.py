"""``fedprune report``: the numbers in report.csv / report.md are the runs' summary.json figures.

Runs are synthetic results folders written here (config.toml + metrics.jsonl + summary.json with
the keys the server app writes), so the tests need neither Flower nor the dataset.
"""

import csv
import json
import math
import random
from pathlib import Path

import pytest

from fedprune.config import config_from_dict, dumps_toml, to_dict
from fedprune.fleet import client_profile
from fedprune.study.report import make_report
from fedprune.study.runs import collect_runs, load_config_lenient
from fedprune.study.tables import SUMMARY_FIELDS
from fedprune.results import write_json, write_metrics

FLEET = {"num-clients": 6, "clients-per-round": 4, "devices": "pi-zero-2w:2, pi3b:2, pi4-2gb:2"}


def fake_run(run_dir: Path, seed: int, method: str, scale: float, rounds: int = 3, finished: bool = True):
    tree = {"run": {"seed": seed, "num-rounds": rounds}, "methods": {"enabled": method},
            "fleet": {**FLEET, "budget-scale": scale}, "memory": {"budget": "constant", "budget-mb": 1.0}}
    cfg = config_from_dict(tree)
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    rng = random.Random(f"{run_dir.name}")
    rows = []
    for rnd in range(1, rounds + 1):
        clients = []
        for pid in sorted(rng.sample(range(6), 4)):
            budget = int(client_profile(cfg, pid).budget_mb * 2**20)
            peak = int(budget * rng.uniform(0.5, 0.99))
            fits = not (pid == 0 and rnd == 1)
            clients.append({"client": str(pid), "partition_id": pid, "budget_bytes": budget,
                            "measured_peak_bytes": peak if fits else 0,
                            "predicted_peak_bytes": peak, "utilization": peak / budget if fits else 0.0,
                            "batch_final": rng.choice([16, 32, 48]) if fits else 0,
                            "batch_sizes": "16,32", "does_not_fit": 0 if fits else 1,
                            "bprop_flops_saved_frac": rng.uniform(0, 0.1 * rnd) if fits else 0.0})
        rows.append({"round": rnd, "accuracy": rng.uniform(0.5, 0.9), "loss": 1.0,
                     "params_alive": 60000 - rnd * 1000, "clients": clients, "failures": {},
                     "round_seconds": rng.uniform(1, 2), "upload_bytes": 1000})
    write_metrics(run_dir, rows)
    if finished:
        final = rng.randint(5000, 61706)
        write_json(run_dir / "summary.json", {
            "name": run_dir.name, "methods": method, "rounds": rounds, "num_clients": 6,
            "final_accuracy": rng.uniform(0.6, 0.9), "final_loss": rng.uniform(0.3, 1.0),
            "dense_params": 61706, "final_params": final, "compression": 61706 / final,
            "final_flops": rng.randint(10**5, 10**6), "dense_flops": 10**6,
            "neurons_per_layer": "6-16-120-84-10", "upload_bytes_total": rng.randint(10**5, 10**7),
            "dense_upload_bytes_total": 10**7, "budget_violations": rng.randint(0, 2),
            "client_failures": 1, "wall_seconds": rng.uniform(5, 50)})
    return cfg


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    runs = []
    for seed in (0, 1):
        for scale in (0.004, 0.016):
            for method in ("none", "dynhp+neq"):
                rid = f"seed={seed}_budget-scale={scale:g}_enabled={method}"
                fake_run(root / "runs" / rid, seed, method, scale, finished=(rid != "seed=1_budget-scale=0.016_enabled=none"))
                runs.append({"id": rid, "dir": f"runs/{rid}", "status": "done",
                             "overrides": {"run.seed": seed, "fleet.budget-scale": scale, "methods.enabled": method}})
    runs.append({"id": "not-started", "dir": "runs/not-started", "overrides": {}, "status": "pending"})
    (root / "sweep.json").write_text(json.dumps({"name": "t", "runs": runs}))
    return root


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report(sweep_dir, out)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_numbers_equal_summary_json(sweep_dir, report):
    rows = {r["run"]: r for r in _csv(report.out_dir / "report.csv")}
    assert len(rows) == 8  # the never-started run has no folder and is not listed
    checked = 0
    for rid, row in rows.items():
        sfile = sweep_dir / "runs" / rid / "summary.json"
        if not sfile.exists():
            assert row["status"].startswith("unfinished") and row["final_accuracy"] == ""
            continue
        summary = json.loads(sfile.read_text())
        assert row["status"] == "done"
        for key in SUMMARY_FIELDS:
            if key not in summary:
                continue
            value = summary[key]
            if isinstance(value, str):
                assert row[key] == value
            elif isinstance(value, int):
                assert int(row[key]) == value, key
            else:
                assert float(row[key]) == value, key  # exact: full precision, not rounded
            checked += 1
    assert checked >= 7 * 14


def test_markdown_shows_each_runs_summary_figures(sweep_dir, report):
    md = (report.out_dir / "report.md").read_text()
    for sfile in sweep_dir.glob("runs/*/summary.json"):
        s = json.loads(sfile.read_text())
        line = next(l for l in md.splitlines() if l.startswith(f"| {sfile.parent.name} |"))
        assert f"| {100 * s['final_accuracy']:.2f} |" in line
        assert f"| {s['final_params']:,} |" in line
        assert f"| {s['compression']:.2f}x |" in line
    assert "| pi-zero-2w | 2 | constant |" in md  # the fleet table


def test_grouped_means_are_means_of_the_summaries(sweep_dir, report):
    groups = {(g["method"], g["grid:fleet.budget-scale"]): g for g in report.groups}
    assert len(groups) == 4
    for (method, scale), g in groups.items():
        accs = []
        for seed in (0, 1):
            f = sweep_dir / "runs" / f"seed={seed}_budget-scale={scale:g}_enabled={method}" / "summary.json"
            if f.exists():
                accs.append(json.loads(f.read_text())["final_accuracy"])
        assert g["n"] == len(accs)
        assert math.isclose(g["final_accuracy_mean"], sum(accs) / len(accs), rel_tol=0, abs_tol=1e-15)
    grouped = _csv(report.out_dir / "report_grouped.csv")
    assert len(grouped) == 4


def test_budget_column_is_the_mean_client_budget(report):
    for row in report.rows:
        scale = row["budget_scale"]
        expect = (2 * 512 * 0.35 + 2 * 1024 * 0.45 + 2 * 2048 * 0.55) / 6 * scale
        assert math.isclose(row["budget_mb"], expect, rel_tol=1e-12)
        assert 0.5 <= row["mean_utilization"] <= 0.99  # clients that did not fit are left out
        assert row["does_not_fit"] in (0, 1)
        per_device = {k: v for k, v in row.items() if k.startswith("did_not_fit:")}
        assert set(per_device) == {"did_not_fit:pi-zero-2w", "did_not_fit:pi3b", "did_not_fit:pi4-2gb"}
        assert per_device["did_not_fit:pi-zero-2w"] == row["does_not_fit"]  # only client 0 failed
        assert sum(per_device.values()) == row["does_not_fit"]


def test_figures_exist_and_are_small(report):
    assert set(report.figures) == {"accuracy_vs_peak_memory.png", "participation_per_tier.png",
                                   "accuracy_vs_budget.png", "accuracy_vs_params.png",
                                   "clients_over_rounds.png", "flops_saved_over_rounds.png",
                                   "accuracy_over_rounds.png"}
    for name in report.figures:
        data = (report.out_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000


def test_single_run_folder(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 0, "serene", 0.01, rounds=2)
    rep = make_report(run, figures=False)
    assert rep.kind == "run" and len(rep.rows) == 1
    summary = json.loads((run / "summary.json").read_text())
    row = _csv(run / "report.csv")[0]
    assert float(row["final_accuracy"]) == summary["final_accuracy"]
    assert int(row["final_params"]) == summary["final_params"]
    assert len(_csv(run / "rounds.csv")) == 2


def test_tree_of_runs_and_cli(tmp_path, capsys):
    from fedprune.cli import main

    fake_run(tmp_path / "a" / "r1", 0, "none", 0.01)
    fake_run(tmp_path / "b" / "r2", 1, "neq", 0.01)
    kind, runs = collect_runs(tmp_path)
    assert kind == "tree" and [r.id for r in runs] == ["a/r1", "b/r2"]
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_runs_from_an_older_schema_are_still_read(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text('[run]\nseed = 3\n[simulation]\nclient-cpus = 1.0\n[train]\nold-key = 1\nlr = 0.1\n')
    cfg, notes = load_config_lenient(f)
    assert cfg is not None and cfg.run.seed == 3 and cfg.train.lr == 0.1
    assert cfg.simulation.client_cpus == 1
    assert any(n.startswith("train.old-key: ignored") for n in notes)


def test_client_errors_and_dropped_rounds_are_flagged(tmp_path):
    from fedprune.results import read_metrics

    run = tmp_path / "run"
    fake_run(run, 0, "neq", 0.01, rounds=2)
    rows = read_metrics(run)
    rows[1]["failures"] = {"node-7": "error: TypeError boom", "3": "does not fit its memory budget",
                           "round": "only 0 valid replies (min 3)"}
    write_metrics(run, rows)
    rep = make_report(run, figures=False)
    assert rep.rows[0]["client_errors"] == 1 and rep.rows[0]["rounds_dropped"] == 1
    assert "Warning: 1 run(s) had client errors or dropped rounds" in (run / "report.md").read_text()
