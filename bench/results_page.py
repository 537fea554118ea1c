"""Turn the benchmark JSON files (``bench/results/*.json``) into ``bench/RESULTS.md``.

    python bench/results_page.py                  # bench/results -> bench/RESULTS.md + README table
    python bench/results_page.py --no-readme      # the page only


Each benchmark writes its own JSON; this module reads them, pulls out each one's headline figures and
targets, and writes one Markdown page: a headline table (figure, ours, target, met) plus a section per
benchmark. ``update_readme`` copies the headline table into README.md between the markers
``<!-- bench:start -->`` and ``<!-- bench:end -->``, so the README quotes generated numbers only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sections import _fmt, _pm  # noqa: E402

Row = tuple[str, str, str, str]  # figure, measured, target, met
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _g(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _met(flag: Any) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def _overhead(d: dict) -> list[Row]:
    return [("simulator overhead: fedprune (methods off) / plain Flower FedAvg, wall time",
             f"{_fmt(d.get('wall_ratio'), '{:.3f}')}x", "<= 1.10x", _met(d.get("target_met")))]


def _pipeline(d: dict) -> list[Row]:
    r, t = d.get("ratios", {}), d.get("targets_met", {})
    return [
        ("pipeline serene+neq+dynhp vs FedAvg: wall time", f"{_pm(r, 'wall_time')}x", "< 1.0x",
         _met(t.get("wall_time_lt_1"))),
        ("pipeline: final params reduction", f"{_pm(r, 'params_reduction', 1.0, '{:.1f}')}x", ">= 10x",
         _met(t.get("params_reduction_ge_10x"))),
        ("pipeline: accuracy gap", f"{_pm(r, 'accuracy_gap_points')} points", "<= 1 point",
         _met(t.get("accuracy_gap_le_1_point"))),
        ("pipeline: upload bytes vs dense FedAvg", f"{_pm(r, 'upload_bytes_vs_dense_fedavg')}x",
         "<= 0.5x", _met(t.get("upload_le_half"))),
    ]


def _memory_model(d: dict) -> list[Row]:
    s = d.get("summary", {})
    return [("memory model: max / median relative error (predicted vs measured peak)",
             f"{_pct(s.get('max_rel_error'))} / {_pct(s.get('median_rel_error'))} over {s.get('n')} configs",
             "<= 10% / <= 5%", _met(s.get("pass")))]


def _adherence(d: dict) -> list[Row]:
    t = d.get("targets_met", {})
    return [("budget adherence: violations (budgets 10-100% of dense need)", str(d.get("violations")), "0",
             _met(t.get("zero_violations"))),
            ("budget adherence: mean utilization after pruning", _pct(d.get("mean_utilization_after_round_1")),
             ">= 90%", _met(t.get("utilization_ge_90pct")))]


def _surgery(d: dict) -> list[Row]:
    rows = []
    for r in d.get("results", []):
        rows.append((f"compact vs masked-dense latency: {r.get('model')} {int(100 * r.get('neurons_pruned', 0))}% "
                     f"pruned, batch {r.get('batch')}",
                     f"{_fmt(r.get('speedup'))}x (FLOPs ratio {_fmt(r.get('flops_ratio'), '{:.1f}')})",
                     ">= 0.7 x FLOPs ratio", _met(r.get("meets_target", r.get("meets")))))
    return rows


def _serene(d: dict) -> list[Row]:
    a, t = d.get("arms", {}), d.get("targets", {})
    s, rm = a.get("SeReNe", {}), d.get("neurons_removed_mean", {})
    l2 = "; ".join(f"{k} {_fmt(rm.get(k), '{:.0f}')} ({_pm(v, 'test_accuracy', 100.0)}%)"
                   for k, v in a.items() if k.startswith("l2"))
    return [("SeReNe lenet5: parameters physically removed (compression)",
             f"{_pm(s, 'compression_structural', 1.0, '{:.1f}')}x", ">= 50x",
             _met(t.get("params_50x_fewer_structural"))),
            ("SeReNe lenet5: accuracy loss vs dense", f"{_fmt(d.get('accuracy_loss_points'))} points", "<= 1 point",
             _met(t.get("accuracy_loss_le_1_point"))),
            ("SeReNe lenet5: neurons removed (top-1) vs the l2+pruning controls",
             f"SeReNe {_fmt(rm.get('SeReNe'), '{:.0f}')} ({_pm(s, 'test_accuracy', 100.0)}%); {l2}",
             "more than every l2 arm at least as accurate",
             _met(t.get("more_neurons_removed_than_l2_at_equal_accuracy")))]


def _neq(d: dict) -> list[Row]:
    rows = []
    for r in d.get("results", []):
        m = r.get("model")
        t = _g(d, "targets", m, default={})
        matched = _g(r, "controls", "stochastic_matched", default={})
        rows.append((f"NEq {m}: backprop FLOPs saved (paper: -23% on ResNet-18/ImageNet)",
                     f"{_pm(r, 'bprop_flops_saved_frac', 100.0, '{:.1f}')}%", ">= 25%",
                     _met(t.get("bprop_flops_25pct_fewer"))))
        rows.append((f"NEq {m}: accuracy loss", f"{_pm(r, 'accuracy_loss_points')} points", "<= 0.5 point",
                     _met(t.get("accuracy_loss_le_0_5_point"))))
        rows.append((f"NEq {m}: top-1 vs stochastic freezing at the same saving",
                     f"{_fmt(100 * _g(r, 'on', 'test_accuracy', default=0))}% vs "
                     f"{_fmt(100 * matched.get('test_accuracy', 0))}%", ">=",
                     _met(t.get("as_accurate_as_matched_stochastic"))))
        rows.append((f"NEq {m}: measured step-time saving (shared machine)",
                     f"{_pct(r.get('step_time_saved_frac'))}", ">= 0.7 x FLOPs saving",
                     _met(t.get("step_time_saving_ge_0_7_flops_saving"))))
        for e in r.get("eps_sweep", []):
            ok = e["bprop_flops_saved_frac"] >= 0.25 and e["accuracy_loss_points"] <= 0.5
            rows.append((f"NEq {m} at eps {e['eps']:g}: backprop FLOPs saved / accuracy loss",
                         f"{_pm(e, 'bprop_flops_saved_frac', 100.0, '{:.1f}')}% / "
                         f"{_pm(e, 'accuracy_loss_points')} points", ">= 25% / <= 0.5 point", _met(ok)))
        for p in r.get("paired_step_timing", []):
            ok = 1.0 - p["step_time_ratio"] >= 0.7 * p["bprop_flops_saved_frac"]
            rows.append((f"NEq {m}: frozen step vs dense step, {100 * p['frozen_fraction']:.0f}% of every group frozen "
                         f"(paired timing)", f"{_fmt(p['step_time_ratio'], '{:.3f}')}x at "
                         f"{_pct(p['bprop_flops_saved_frac'])} backprop FLOPs saved", ">= 0.7 x FLOPs saving", _met(ok)))
    return rows


def _dynhp(d: dict) -> list[Row]:
    t, h = d.get("targets", {}), d.get("dynhp", {})
    return [("DynHP lenet5: parameter reduction", f"{_pm(h, 'compression', 1.0, '{:.1f}')}x",
             ">= 5x (paper: up to 10x)", _met(t.get("params_5x_fewer"))),
            ("DynHP lenet5: training memory saved at the run's own batch",
             f"{_pm(h, 'memory_saved_at_own_batch', 100.0, '{:.1f}')}%",
             ">= 50% (paper: up to 80%)", _met(t.get("memory_50pct_lower_at_own_batch"))),
            ("DynHP lenet5: accuracy loss", f"{_pm(h, 'accuracy_loss_points')} points", "<= 2 points (paper: <= 3.5)",
             _met(t.get("accuracy_loss_le_2_points"))),
            (f"DynHP lenet5: lr-scaling default ({d.get('headline_rule')}) is the measured best",
             f"best: {d.get('lr_rule_winner')}", "default = best", _met(t.get("headline_rule_is_winner")))]


def _scale(d: dict) -> list[Row]:
    return [("scale: 100 clients (10 per round), peak host memory",
             f"{_fmt((d.get('peak_host_memory_bytes') or 0) / 2**30)} GiB", "fits 24 GiB", _met(d.get("fits"))),
            ("scale: seconds per round", _fmt(d.get("seconds_per_round"), "{:.1f}"), "-", "n/a")]


def _rss(d: dict) -> list[Row]:
    s = d.get("summary", {})
    t = s.get("targets_met", {})
    return [("physical budget: worst RSS peak / training budget (zoo x 10-200 MB x none/dynhp)",
             f"{_fmt(s.get('worst_ratio'), '{:.3f}')} over {s.get('trained')} points", "<= 1.00",
             _met(t.get("worst_ratio_le_1"))),
            ("physical budget: mean utilization (points where the budget chose the batch)",
             _pct(s.get("mean_utilization")), ">= 85%", _met(t.get("mean_utilization_ge_85pct")))]


def _auto_cgroup(d: dict) -> list[Row]:
    s, g = d.get("summary", {}), d.get("grid", {})
    return [(f"auto budget in a {_fmt(g.get('limit_mb'), '{:g}')} MB cgroup: models trained / said does-not-fit / killed",
             f"{s.get('trained')} / {s.get('said_does_not_fit')} / {s.get('killed')} of {s.get('models')}",
             "none killed", _met(s.get("ok")))]


def _client_rounds(d: dict) -> list[Row]:
    s = d.get("summary", {})
    return [("tight client (Pi Zero 2 W, 5.4 MB): worst physical peak / budget, all rounds / after round 1",
             f"{_fmt(s.get('worst_ratio'), '{:.2f}')} / {_fmt(s.get('worst_ratio_after_round_1'), '{:.2f}')}",
             "<= 1.00", _met(s.get("worst_ratio") is not None and s["worst_ratio"] <= 1.0))]


RENDERERS: dict[str, Callable[[dict], list[Row]]] = {
    "overhead": _overhead, "pipeline": _pipeline, "memory_model": _memory_model, "adherence": _adherence,
    "surgery": _surgery, "serene": _serene, "neq": _neq, "dynhp": _dynhp, "scale": _scale, "rss": _rss,
    "auto_cgroup": _auto_cgroup, "client_rounds": _client_rounds,
}


def load_results(results_dir: str | Path) -> dict[str, dict]:
    """Every ``<name>.json`` in the folder, by name (unknown names included, rendered generically)."""
    out = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
    return out


def headline_rows(results: dict[str, dict]) -> list[Row]:
    """The headline table rows, benchmark by benchmark, in a fixed order."""
    rows: list[Row] = []
    for name, render in RENDERERS.items():
        if name in results:
            try:
                rows += render(results[name])
            except (TypeError, ValueError, KeyError) as err:
                rows.append((f"{name}: could not read ({err})", "n/a", "n/a", "n/a"))
    return rows


def table(rows: list[Row]) -> str:
    """Rows as a Markdown table."""
    from sections import md_table

    return md_table(["figure", "measured", "target", "met"], rows)


def write_results_md(results_dir: str | Path, out: str | Path) -> list[Row]:
    """Write the benchmark page (headline, papers, a section per benchmark with its table and
    figure; figures go to ``figures/`` beside ``out``); returns the headline rows."""
    from sections import SECTIONS, papers_table

    results = load_results(results_dir)
    rows = headline_rows(results)
    fig_dir = Path(out).parent / "figures"
    first = next((n for n, r in results.items() if r.get("machine")), None)
    machine = results[first]["machine"] if first else {}
    parts = ["# Benchmark results\n",
             "Generated by `python bench/results_page.py` (the last step of `make bench`) from the JSON files the benchmarks write; "
             "do not edit by hand. Each benchmark's JSON also records its own machine and settings.\n",
             f"Machine ({first}.json; every JSON states its own): {json.dumps(machine, sort_keys=True)}\n",
             "## Headline\n", table(rows)]
    papers = papers_table(results)
    if papers:
        parts += ["## Methods beside the papers\n",
                  "The papers' figures are from their own datasets and much longer training; ours are "
                  "from the benchmark runs below (Fashion-MNIST, minutes of CPU training).\n", papers]
    for name, data in results.items():
        parts.append(f"## {name}\n")
        note = data.get("note") or data.get("notes")
        if note:
            parts.append(f"{note}\n")
        section = SECTIONS.get(name)
        if section is not None:
            try:
                parts.append(section(data, fig_dir))
            except (TypeError, ValueError, KeyError, ZeroDivisionError) as err:
                parts.append(f"(section could not be rendered from this JSON: {type(err).__name__}: {err})\n")
        parts.append(f"Source: `bench/results/{name}.json`.\n")
    Path(out).write_text("\n".join(parts))
    return rows


def update_readme(readme: str | Path, rows: list[Row]) -> bool:
    """Replace the README's headline table between the bench markers; True if it changed."""
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table(rows)}{END}{tail}"
    if new != text:
        path.write_text(new)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Write RESULTS.md from a results folder; refresh README.md's headline table unless told not to."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(here / "results"), help="folder of benchmark JSON files")
    ap.add_argument("--out", default=str(here / "RESULTS.md"), help="the page to write")
    ap.add_argument("--readme", default=str(here.parent / "README.md"), help="README whose table to refresh")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = ap.parse_args(argv)
    rows = write_results_md(args.results, args.out)
    changed = not args.no_readme and update_readme(args.readme, rows)
    print(f"benchmark results -> {args.out}" + ("; README headline table updated" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
