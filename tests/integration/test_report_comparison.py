"""The report's method comparison: peak memory, size, upload, participation per tier, conclusion.

Synthetic sweep folders (config.toml + metrics.jsonl + summary.json) with known numbers: the
figures must be the ones computed here by hand, and the conclusion must name them.
"""

import csv
import json
from pathlib import Path

import pytest

from fedprune.config import config_from_dict, dumps_toml, to_dict
from fedprune.results import write_json, write_metrics
from fedprune.study.comparison import comparison_rows, participation
from fedprune.study.pareto import pareto_front
from fedprune.study.report import make_report
from fedprune.study.runs import collect_runs

FLEET = {"num-clients": 4, "devices": "pi-zero-2w:2, pi4-2gb:2"}
MB = 2**20
# method -> (accuracy at seed 0 and 1, per-client tensor peak MB, final params, Pi Zeros train?)
PLAN = {
    "fedavg": ((0.90, 0.92), 9.0, 1000, True),
    "fedavg-drop": ((0.80, 0.80), 6.0, 1000, False),
    "heterofl": ((0.86, 0.88), 3.0, 1000, True),
    "dynhp": ((0.84, 0.85), 2.0, 150, True),
}


def fake_run(root: Path, method: str, seed: int, scale: float, rss: bool) -> None:
    accs, peak, final, small_trains = PLAN[method]
    rid = f"seed={seed}_scale={scale}_m={method}"
    cfg = config_from_dict({"run": {"seed": seed, "num-rounds": 2}, "methods": {"enabled": method},
                            "fleet": {**FLEET, "budget-scale": scale},
                            "memory": {"budget": "constant", "budget-mb": 1.0}})
    d = root / "runs" / rid
    d.mkdir(parents=True)
    (d / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    rows = []
    for rnd in (1, 2):
        clients, failures = [], {}
        for pid in range(4):
            fits = small_trains or pid >= 2
            c = {"client": str(pid), "partition_id": pid, "does_not_fit": int(not fits),
                 "measured_peak_bytes": int(peak * MB * (0.5 + pid / 8)) if fits else 0}
            if rss and fits:
                c["rss_peak_bytes"] = c["measured_peak_bytes"] + 100 * MB
            clients.append(c)
            if not fits:
                failures[str(pid)] = "does not fit its memory budget"
        rows.append({"round": rnd, "accuracy": accs[seed] - 0.1 / rnd, "clients": clients, "failures": failures})
    write_metrics(d, rows)
    write_json(d / "summary.json", {"final_accuracy": accs[seed] * (1 if scale < 1 else 1.01),
                                    "dense_params": 1000, "final_params": final,
                                    "upload_bytes_total": 4 * MB, "rounds": 2})
    return rid, {"run.seed": seed, "fleet.budget-scale": scale, "methods.enabled": method}


def make_sweep(root: Path, rss: bool = False) -> Path:
    runs = []
    for scale in (0.5, 2.0):
        for seed in (0, 1):
            for method in PLAN:
                rid, over = fake_run(root, method, seed, scale, rss)
                runs.append({"id": rid, "overrides": over, "dir": f"runs/{rid}"})
    (root / "sweep.json").write_text(json.dumps({"runs": runs}))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_sweep(tmp_path_factory.mktemp("cmp"))
    return make_report(root)


def test_rows_per_setting_and_method_with_seed_statistics(report):
    rows = report.comparison
    assert len(rows) == 2 * len(PLAN)
    assert [r["budget_mb"] for r in rows] == sorted(r["budget_mb"] for r in rows)
    low = min(r["budget_mb"] for r in rows)
    het = next(r for r in rows if r["method"] == "heterofl" and r["budget_mb"] == low)
    assert het["seeds"] == 2 and het["baseline"] is True
    assert het["accuracy_mean"] == pytest.approx(0.87) and het["accuracy_std"] == pytest.approx(0.01414, abs=1e-4)
    assert (het["accuracy_min"], het["accuracy_max"]) == (0.86, 0.88)
    assert het["tensor_peak_mb_mean"] == pytest.approx(3.0 * (0.5 + 3 / 8), rel=1e-6)  # the largest client
    assert het["rss_peak_mb_mean"] is None  # no physical peak in these metrics
    dyn = next(r for r in rows if r["method"] == "dynhp")
    assert dyn["baseline"] is False and dyn["smaller_mean"] == pytest.approx(1000 / 150)
    assert dyn["upload_mb_mean"] == pytest.approx(4.0)
    drop = next(r for r in rows if r["method"] == "fedavg_drop")  # "fedavg-drop" normalised
    assert drop["participation:pi-zero-2w"] == 0.0 and drop["participation:pi4-2gb"] == 1.0
    assert dyn["participation:pi-zero-2w"] == 1.0
    with open(report.out_dir / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_physical_peak_reported_beside_the_tensor_peak_when_present(tmp_path):
    kind, records = collect_runs(make_sweep(tmp_path, rss=True))
    rows = comparison_rows(records)
    het = next(r for r in rows if r["method"] == "heterofl")
    assert het["rss_peak_mb_mean"] == pytest.approx(3.0 * (0.5 + 3 / 8) + 100, rel=1e-6)
    assert het["tensor_peak_mb_mean"] == pytest.approx(3.0 * (0.5 + 3 / 8), rel=1e-6)


def test_participation_counts_failed_clients_as_sampled(tmp_path):
    kind, records = collect_runs(make_sweep(tmp_path))
    rec = next(r for r in records if "fedavg-drop" in r.id)
    assert participation(rec) == {"pi-zero-2w": 0.0, "pi4-2gb": 1.0}


def test_conclusion_names_winner_margin_spread_and_where_fedprune_loses(report):
    text = (report.out_dir / "conclusion.md").read_text()
    assert text.count("winner `fedavg` 91.00% (± 1.41 over 2 seeds)") == 1  # budget-scale 0.5
    assert "1.00 points ahead of `heterofl` 87.00%" not in text  # margin is 91 - 87 = 4
    assert "4.00 points ahead of `heterofl` 87.00% (± 1.41 over 2 seeds) (more than the seeds' spread)" in text
    assert "fedprune's best, `dynhp` 84.50% (± 0.71 over 2 seeds), **loses** to the baseline `heterofl`" in text
    assert "by 2.50 points (more than the seeds' spread)" in text
    assert "6.50 points below unconstrained FedAvg" in text
    tight = text.split("Goal at the tightest budget", 1)[1]
    assert "NOT met: at least as accurate as every baseline" in tight
    assert "difference -2.50 points, more than the seeds' spread" in tight
    assert "NOT met: within 1.5 points of unconstrained FedAvg (gap 6.50)" in tight
    assert "met: final model >= 5x smaller than dense (6.7x)" in tight
    md = (report.out_dir / "report.md").read_text()
    assert "## Conclusion" in md and "## Methods compared" in md and "heterofl (baseline)" in md


def test_pareto_figure_drawn_and_front_is_non_dominated(report):
    assert report.figures[:2] == ["accuracy_vs_peak_memory.png", "participation_per_tier.png"]
    assert (report.out_dir / "accuracy_vs_peak_memory.png").read_bytes()[:4] == b"\x89PNG"
    assert pareto_front([(1, 80), (2, 70), (3, 90), (4, 85), (0.5, 60)]) == [(0.5, 60), (1, 80), (3, 90)]


def test_folder_of_sweeps_is_one_comparison_with_grid_values(tmp_path):
    make_sweep(tmp_path / "iid")
    make_sweep(tmp_path / "dirichlet")
    for sub, part in (("iid", "iid"), ("dirichlet", "dirichlet")):  # the partitioner is a grid key
        manifest = tmp_path / sub / "sweep.json"
        data = json.loads(manifest.read_text())
        for run in data["runs"]:
            run["overrides"]["data.partitioner"] = part
        manifest.write_text(json.dumps(data))
    kind, records = collect_runs(tmp_path)
    assert kind == "sweep" and len(records) == 2 * 16
    assert records[0].id.startswith("dirichlet/") and records[-1].id.startswith("iid/")
    settings = {r["setting"] for r in comparison_rows(records)}
    assert len(settings) == 4 and any("partitioner=dirichlet" in s for s in settings)


def test_strategy_grid_key_is_a_method_variant_not_a_setting(tmp_path):
    make_sweep(tmp_path)
    manifest = tmp_path / "sweep.json"
    data = json.loads(manifest.read_text())
    for run in data["runs"]:
        if run["overrides"]["methods.enabled"] == "dynhp":
            run["overrides"]["strategy.mask-policy"] = "quorum"
    manifest.write_text(json.dumps(data))
    rows = comparison_rows(collect_runs(tmp_path)[1])
    assert len({r["setting"] for r in rows}) == 2  # the two budgets, as without the key
    assert {r["method"] for r in rows} == {"fedavg", "fedavg_drop", "heterofl", "dynhp [mask-policy=quorum]"}
    assert next(r for r in rows if r["method"].startswith("dynhp"))["baseline"] is False


def test_trainer_and_method_grid_keys_are_method_variants_not_settings(tmp_path):
    """A fedprune configuration tuned with a trainer or method key is compared with the baselines of
    its setting, under its own name."""
    make_sweep(tmp_path)
    manifest = tmp_path / "sweep.json"
    data = json.loads(manifest.read_text())
    for run in data["runs"]:
        if run["overrides"]["methods.enabled"] == "dynhp":
            run["overrides"].update({"train.lr-warmup": 0.1, "methods.dynhp.target-compression": 0.85})
    manifest.write_text(json.dumps(data))
    rows = comparison_rows(collect_runs(tmp_path)[1])
    assert len({r["setting"] for r in rows}) == 2
    assert "dynhp [target-compression=0.85, lr-warmup=0.1]" in {r["method"] for r in rows}
    assert all(len([r for r in rows if r["setting"] == s]) == 4 for s in {r["setting"] for r in rows})


def test_plateau_criterion():
    from fedprune.study.comparison import plateau_round

    rising = [0.5 + 0.02 * i for i in range(10)]
    assert plateau_round(rising) is None
    flat_from_6 = [0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.881, 0.882, 0.882, 0.883, 0.883, 0.883]
    assert plateau_round(flat_from_6) == 11  # rounds 9-11 vs 6-8: +0.17 points < 0.3
    assert plateau_round(flat_from_6[:10]) is None


def test_conclusion_says_when_fedavg_has_not_converged(report):
    text = (report.out_dir / "conclusion.md").read_text()
    assert "**not reached** by unconstrained FedAvg in 4 run(s) of 2 rounds (" in text  # names the settings
    assert "the accuracies there are not final" in text


def test_unconstrained_fedavg_run_at_one_budget_serves_every_budget(tmp_path):
    from fedprune.study.conclusion import conclusion_markdown

    make_sweep(tmp_path)
    kind, records = collect_runs(tmp_path)
    low = min(r.config.fleet.budget_scale for r in records)
    kept = [r for r in records if not ("m=fedavg" in r.id and "m=fedavg-" not in r.id
                                       and r.config.fleet.budget_scale != low)]
    assert len(kept) == len(records) - 2
    text = conclusion_markdown(comparison_rows(kept))
    assert text.count("points below unconstrained FedAvg") == 2  # both budgets


def test_readme_block_is_the_generated_conclusion_and_figure(tmp_path):
    from fedprune.cli import main

    make_sweep(tmp_path / "sweep")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- study:start -->\nold\n<!-- study:end -->\nrest\n")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "docs"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    conclusion = (tmp_path / "docs" / "conclusion.md").read_text().strip()
    assert conclusion in text and "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "(docs/accuracy_vs_peak_memory.png)" in text
    readme.write_text("no markers\n")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "docs"), "--readme", str(readme)]) == 2


def test_a_margin_no_larger_than_the_seed_spread_is_called_a_tie():
    from fedprune.study.conclusion import margin_verdict

    def row(acc, std, seeds=2):
        return {"accuracy_mean": acc, "accuracy_std": std, "seeds": seeds}

    assert margin_verdict(row(0.8920, 0.0021), row(0.8915, 0.0001)) == "within the seeds' spread: a tie"
    assert margin_verdict(row(0.8915, 0.0001), row(0.8920, 0.0021)) == "within the seeds' spread: a tie"
    assert margin_verdict(row(0.8959, 0.0004), row(0.8920, 0.0021)) == "more than the seeds' spread"
    assert margin_verdict(row(0.90, 0.0), row(0.80, 0.0, seeds=1)) == "one seed: no spread known"


def test_goal_names_the_fedprune_configurations_that_meet_all_three_conditions():
    from fedprune.study.conclusion import goal_check

    def row(method, acc, baseline, smaller=1.0):
        return {"method": method, "accuracy_mean": acc, "accuracy_std": 0.002, "seeds": 2,
                "baseline": baseline, "smaller_mean": smaller}

    ranked = [row("fedavg", 0.877, True), row("dynhp [a]", 0.866, False, 4.5),
              row("dynhp [b]", 0.862, False, 5.3), row("heterofl", 0.858, True), row("dynhp [c]", 0.85, False, 6.0)]
    lines = goal_check(ranked)
    assert lines[0].startswith("met: at least as accurate as every baseline") and "+0.80 points" in lines[0]
    assert lines[2] == "NOT met: final model >= 5x smaller than dense (4.5x)"  # the most accurate one
    assert lines[3] == ("of the 3 fedprune configurations here, all three hold for `dynhp [b]` 86.20% "
                        "(± 0.20 over 2 seeds), 5.3x smaller")
    ranked[2]["smaller_mean"] = 4.9
    assert goal_check(ranked)[3].endswith("all three hold for none")


def test_figures_give_up_to_twenty_series_distinct_colours():
    """A study with more than ten methods (the converged study has eleven) must not draw two of them
    in one colour; the default cycle of every report figure is the same twenty colours."""
    from fedprune.study.figures import _plt, series_colour, series_colours

    plt = _plt()
    colours = [tuple(c) for c in series_colours(plt)]
    assert len(set(colours)) == 20
    assert [series_colour(plt, i) for i in range(20)] == series_colours(plt)
    cycle = [tuple(plt.matplotlib.colors.to_rgba(c)) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    assert cycle == colours
