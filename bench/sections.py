"""Per-benchmark sections of ``bench/RESULTS.md``: a table (and a figure where one helps) each.

Every renderer takes one benchmark's JSON (as written by its script in ``bench/``) and the folder for
figures, and returns Markdown. Renderers only read what the scripts measured; a key a JSON lacks is
shown as ``n/a``, never invented. ``papers_table`` sets our method figures beside the source papers'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from fedprune.study import markdown
from fedprune.surgery.accounting import format_neurons

Section = Callable[[dict, Path], str]


def _fmt(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "n/a"
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (cells converted with ``str``), ending with a newline: the report's writer."""
    return markdown.md_table(header, rows) + "\n"


def _figure(fig_dir: Path, name: str, draw: Callable[[Any], None], ncols: int = 1) -> str:
    """Draw a figure with ``draw(axes)`` into ``fig_dir/name.png``; returns the Markdown image link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
    try:
        draw(axes[0] if ncols > 1 else axes[0][0])
        fig.tight_layout()
        fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(fig_dir / f"{name}.png", dpi=110)
    finally:
        plt.close(fig)
    return f"![{name}]({fig_dir.name}/{name}.png)\n"


# ---------------------------------------------------------------------------------------------


def _pm(d: dict, key: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """``mean +- std`` of ``d[key]`` and ``d[key + "_std"]`` (times ``scale``); ``n/a`` when absent."""
    m, s = d.get(key), d.get(key + "_std")
    if m is None:
        return "n/a"
    return fmt.format(scale * m) + ("" if s is None else " ± " + fmt.format(scale * s))


def _load_note(d: dict) -> str:
    """One line naming the machine's load average during the run (timings on a shared machine)."""
    m = d.get("machine", {})
    la = m.get("loadavg_end") or m.get("loadavg")
    if not la:
        return ""
    return (f"Timed on a shared machine ({m.get('cores')} cores; load average at the end "
            f"{', '.join(_fmt(x, '{:.2f}') for x in la)}).\n\n")


def overhead_section(d: dict, fig_dir: Path) -> str:
    """Wall time of every repeat, both apps side by side."""
    s = d.get("setup", {})
    runs = d.get("runs", {})
    a, b = runs.get("fedprune", []), runs.get("plain_flower", [])
    rows = [(i + 1, _fmt(x.get("wall_seconds"), "{:.1f}"), _fmt(y.get("wall_seconds"), "{:.1f}"),
             _fmt(x.get("final_accuracy"), "{:.4f}"), _fmt(y.get("final_accuracy"), "{:.4f}"))
            for i, (x, y) in enumerate(zip(a, b))]
    med = d.get("median_wall_seconds", {})
    rows.append(("median", _fmt(med.get("fedprune"), "{:.1f}"), _fmt(med.get("plain_flower"), "{:.1f}"), "", ""))
    return (f"{s.get('model')} on {s.get('dataset')}, {s.get('clients')} clients, {s.get('rounds')} rounds, "
            f"runs alternated. Ratio of medians: **{_fmt(d.get('wall_ratio'), '{:.3f}')}x**.\n\n"
            + md_table(["repeat", "fedprune, methods off (s)", "plain Flower FedAvg (s)",
                        "fedprune accuracy", "plain accuracy"], rows))


def pipeline_section(d: dict, fig_dir: Path) -> str:
    """FedAvg vs the full pipeline, mean +- std over seeds: one row per measured quantity."""
    s = d.get("summary") or {"fedavg": d.get("fedavg", {}), "pruned": d.get("pruned", {})}
    f, p = s.get("fedavg", {}), s.get("pruned", {})
    keys = [("final accuracy (%)", "final_accuracy", 100.0, "{:.2f}"), ("final params", "final_params", 1.0, "{:,.0f}"),
            ("final forward FLOPs / sample", "final_flops", 1.0, "{:,.0f}"),
            ("final model ONNX file (bytes)", "onnx_bytes", 1.0, "{:,.0f}"),
            ("upload bytes (all rounds)", "upload_bytes_total", 1.0, "{:,.0f}"),
            ("wall seconds", "wall_seconds", 1.0, "{:.1f}"), ("budget violations", "budget_violations", 1.0, "{:.1f}"),
            ("worst physical peak / budget (kernel RSS, any client-round)", "physical_peak_over_budget_max", 1.0, "{:.3f}"),
            ("client-rounds over budget (kernel RSS)", "physical_violations", 1.0, "{:.1f}")]
    rows = [(label, _pm(f, k, sc, fmt), _pm(p, k, sc, fmt)) for label, k, sc, fmt in keys]
    rows.append(("neurons per layer (each seed)", ", ".join(str(r.get("fedavg", {}).get("neurons_per_layer"))
                                                           for r in d.get("runs", [])[:1]) or "n/a",
                 ", ".join(str(r.get("pruned", {}).get("neurons_per_layer")) for r in d.get("runs", [])) or "n/a"))
    r = s.get("ratios", d.get("ratios", {}))
    return (f"Config `{d.get('config')}`, {d.get('clients')} clients, {d.get('rounds')} rounds, seeds "
            f"{d.get('seeds', [0])}; mean ± std over seeds. Smaller final model: "
            f"**{_pm(r, 'params_reduction', 1.0, '{:.1f}')}x**, accuracy gap "
            f"**{_pm(r, 'accuracy_gap_points')} points**.\n\n" + _load_note(d)
            + md_table(["quantity", "plain FedAvg", "serene+neq+dynhp"], rows))


def memory_model_section(d: dict, fig_dir: Path) -> str:
    """Error per model, and predicted vs measured peak for every configuration."""
    per = d.get("summary", {}).get("per_model", {})
    rows_in = d.get("rows", [])
    gaps: dict[str, list[float]] = {}
    for r in rows_in:
        if r.get("allocator_gap") is not None:
            gaps.setdefault(r.get("model"), []).append(r["allocator_gap"])
    rows = []
    for m, s in per.items():
        g = sorted(gaps.get(m, []))
        rows.append((m, s.get("n"), _fmt(100 * s.get("max", 0), "{:.2f}%"), _fmt(100 * s.get("median", 0), "{:.2f}%"),
                     _fmt(100 * g[len(g) // 2], "{:+.1f}%") if g else "n/a"))
    out = md_table(["model", "configs", "max rel. error", "median rel. error", "median allocator gap"], rows)

    def draw(ax):
        for m in per:
            pts = [(r["measured_bytes"] / 2**20, r["predicted_bytes"] / 2**20) for r in rows_in
                   if r.get("model") == m and r.get("measured_bytes")]
            if pts:
                ax.scatter(*zip(*pts), s=12, label=m)
        lim = [min((r.get("measured_bytes") or 1) for r in rows_in) / 2**20,
               max((r.get("measured_bytes") or 1) for r in rows_in) / 2**20]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="measured peak (MiB)", ylabel="predicted peak (MiB)",
               title="memory model: predicted vs measured")
        ax.legend(fontsize=7)

    if rows_in:
        out += "\n" + _figure(fig_dir, "memory_model", draw)
    return out


def adherence_section(d: dict, fig_dir: Path) -> str:
    """Per budget level: utilization, violations, did-not-fit; measured peak vs budget."""
    by: dict[float, list[dict]] = {}
    for r in d.get("rows", []):
        by.setdefault(r.get("budget_fraction"), []).append(r)
    rows = []
    for frac, rs in sorted(by.items()):
        utils = [r["utilization"] for r in rs if r.get("utilization") is not None and r.get("round", 1) > 1]
        rows.append((f"{100 * frac:.0f}%", _fmt(rs[0].get("budget_bytes", 0) / 2**20),
                     _fmt(100 * sum(utils) / len(utils), "{:.1f}%") if utils else "n/a",
                     sum(int(r.get("violations", 0)) for r in rs), sum(int(r.get("does_not_fit", 0)) for r in rs),
                     _fmt(min(r.get("params_alive", 0) for r in rs), "{:,}")))
    s = d.get("setup", {})
    out = (f"{s.get('model')} on {s.get('dataset')}, methods `{s.get('methods')}`, {s.get('rounds')} rounds; "
           f"budgets as a fraction of the dense model's need ({_fmt((s.get('dense_need_bytes') or 0) / 2**20)} MiB).\n\n"
           + md_table(["budget", "budget (MiB)", "utilization (rounds > 1)", "violations", "did not fit",
                       "smallest model (params)"], rows))

    def draw(ax):
        pts = [(r["budget_bytes"] / 2**20, r["measured_peak_bytes"] / 2**20) for r in d.get("rows", [])
               if r.get("measured_peak_bytes")]
        ax.scatter(*zip(*pts), s=14)
        hi = max(max(p) for p in pts)
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="budget")
        ax.set(xlabel="budget (MiB)", ylabel="measured step peak (MiB)", title="budget adherence")
        ax.legend(fontsize=7)

    if any(r.get("measured_peak_bytes") for r in d.get("rows", [])):
        out += "\n" + _figure(fig_dir, "adherence", draw)
    return out


def surgery_section(d: dict, fig_dir: Path) -> str:
    """Compact vs masked-dense forward latency per (model, pruning, batch)."""
    res = d.get("results", [])
    rows = [(r.get("model"), f"{100 * r.get('neurons_pruned', 0):.0f}%", r.get("batch"),
             _fmt(r.get("latency_ms", {}).get("masked_dense", {}).get("median_ms"), "{:.3f}"),
             _fmt(r.get("latency_ms", {}).get("compact", {}).get("median_ms"), "{:.3f}"),
             _fmt(r.get("speedup")), _fmt(r.get("flops_ratio"), "{:.1f}"), _fmt(r.get("speedup_over_flops_ratio")))
            for r in res]
    out = (f"{d.get('speedup_definition', '')}\n\n"
           + md_table(["model", "neurons pruned", "batch", "masked dense (ms)", "compact (ms)", "speedup",
                       "FLOPs ratio", "speedup / FLOPs ratio"], rows))

    def draw(ax):
        labels = [f"{r['model']}\n{100 * r['neurons_pruned']:.0f}% b{r['batch']}" for r in res]
        xs = range(len(res))
        ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in res], 0.4, label="measured speedup")
        ax.bar([x + 0.2 for x in xs], [r["flops_ratio"] for r in res], 0.4, label="FLOPs ratio")
        ax.set_xticks(list(xs), labels, fontsize=6)
        ax.set(yscale="log", ylabel="x", title="compact vs masked-dense inference")
        ax.legend(fontsize=7)

    if res:
        out += "\n" + _figure(fig_dir, "surgery", draw)
    return out


SERENE_PAPER_NEURONS = (11, 26, 113, 10)  # LeNet-5 on MNIST, the paper's Table 1
SERENE_PAPER = {"remaining": [33.75, 3.25, 0.27, 10.22], "compression": 177.05,
                "neurons": format_neurons(SERENE_PAPER_NEURONS), "error": 0.8}


def _paper_physical_compression() -> float:
    """What the SeReNe paper's LeNet-5 neuron counts remove physically: computed by compacting our
    LeNet-5 to those counts (the paper's 177x counts non-zero weights inside the kept neurons)."""
    from bench_serene import physical_compression_at

    return physical_compression_at("lenet5", list(SERENE_PAPER_NEURONS[:-1]))  # the output layer is kept


def serene_section(d: dict, fig_dir: Path) -> str:
    """The SeReNe paper's Table 1 form, mean +- std over seeds: remaining params per layer of the
    physically compact model, neurons per layer, compression, ONNX size, top-1; the paper's row; history."""
    arms = d.get("arms", {})
    layers = [r.get("layer") for r in d.get("table", [])]
    head = ["approach", "dataset"] + layers + ["neurons", "compression (physical)", "ONNX kB", "top-1 (%)"]
    rows = []
    for name, a in arms.items():
        pct = [f"{m:.2f} ± {s:.2f}%" for m, s in zip(a.get("layer_remaining_pct", []),
                                                     a.get("layer_remaining_pct_std", []))]
        neurons = "-".join(f"[{m:.0f}]" for m in a.get("layer_neurons", []))
        rows.append([f"{name} (ours)", "Fashion-MNIST"] + pct + [neurons, _pm(a, "compression_structural", 1.0, "{:.1f}") + "x",
                     _pm(a, "onnx_bytes", 1e-3, "{:.0f}"), _pm(a, "test_accuracy", 100.0)])
    if len(SERENE_PAPER["remaining"]) == len(layers):
        rows.append(["SeReNe (paper, non-zero)", "MNIST"] + [f"{p}%" for p in SERENE_PAPER["remaining"]]
                    + [SERENE_PAPER["neurons"], f"{SERENE_PAPER['compression']}x", "-",
                       f"{100 - SERENE_PAPER['error']:.2f}"])
    removed = d.get("neurons_removed_mean", {})
    removed_txt = ", ".join(f"{k} {_fmt(v, '{:.0f}')}" for k, v in removed.items())
    out = (f"LeNet-5, {d.get('epochs')} epochs per run, seeds {d.get('seeds')}; mean ± std over seeds. Remaining "
           f"parameters are those of the physically compact model (the paper's row counts non-zero weights). "
           f"Accuracy loss of SeReNe vs the dense model: {_fmt(d.get('accuracy_loss_points'))} points; neurons "
           f"removed (mean): {removed_txt}.\n\n" + md_table(head, rows))
    runs = d.get("runs", {})
    hist = (runs.get("SeReNe") or [{}])[0].get("history", [])
    hist_l2 = (runs.get("l2+pruning") or [{}])[0].get("history", [])

    def draw(axes):
        for h, lab in ((hist, "SeReNe"), (hist_l2, "l2+pruning")):
            ep = [x["epoch"] for x in h]
            axes[0].plot(ep, [x["params_alive"] for x in h], "o-", label=lab)
            axes[1].plot(ep, [100 * x["test_accuracy"] for x in h], "o-", label=lab)
        axes[0].set(yscale="log", xlabel="epoch", ylabel="parameters (compact model)", title="SeReNe: model size")
        axes[1].axhline(100 * arms.get("Baseline", {}).get("test_accuracy", 0), color="k", ls="--", lw=0.8,
                        label="dense, final")
        axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="SeReNe: accuracy (seed 0)")
        for ax in axes:
            ax.legend(fontsize=7)

    if hist and all("params_alive" in h and "test_accuracy" in h for h in hist + hist_l2):
        out += "\n" + _figure(fig_dir, "serene", draw, ncols=2)
    return out


def neq_section(d: dict, fig_dir: Path) -> str:
    """The NEq paper's Table 5 form per model, mean +- std over seeds: backprop FLOPs saved, measured
    whole-step time per step (on / off), top-1, beside the stochastic-freezing and constant-lr controls."""
    res = d.get("results", [])
    rows = []
    for r in res:
        off, on = r.get("off", {}), r.get("on", {})
        rows.append((r.get("model"), "baseline (NEq off)", "0", "1.00", _pm({"a": 100 * off.get("test_accuracy", 0),
                                                                             "a_std": off.get("test_accuracy_std_points")}, "a")))
        rows.append((r.get("model"), "NEq", _pm(r, "bprop_flops_saved_frac", 100.0, "{:.1f}") + "%",
                     _fmt(r.get("step_time_per_step_ratio")),
                     _pm({"a": 100 * on.get("test_accuracy", 0), "a_std": on.get("test_accuracy_std_points")}, "a")))
        for name, c in r.get("controls", {}).items():
            rows.append((r.get("model"), name + (f" (p={c['p']:.2f})" if "p" in c else ""),
                         _pm(c, "bprop_flops_saved_frac", 100.0, "{:.1f}") + "%",
                         _fmt((c.get("step_seconds_per_step") or 0) / max(off.get("step_seconds_per_step") or 1e-12, 1e-12)),
                         _pm({"a": 100 * c.get("test_accuracy", 0), "a_std": c.get("test_accuracy_std_points")}, "a")))
    out = (_load_note(d) + "Step time: the whole training step (forward, backward, optimizer, the methods' hooks) "
           "plus NEq's per-epoch evaluations, per step, relative to the same seeds with NEq off.\n\n"
           + md_table(["model", "approach", "backprop FLOPs saved", "step time / baseline", "top-1 (%)"], rows))
    paired = [(r.get("model"), f"{100 * p['frozen_fraction']:.0f}%", str(p.get("partial_grad_layers", "-")),
               _fmt(100 * p["bprop_flops_saved_frac"], "{:.1f}%"), _fmt(100 * p.get("train_flops_saved_frac", 0), "{:.1f}%"),
               _fmt(p.get("backward_time_ratio"), "{:.3f}"), _fmt(p["step_time_ratio"], "{:.3f}"))
              for r in res for p in r.get("paired_step_timing", []) if "train_flops_saved_frac" in p]
    if paired:
        out += ("\nNEq's freezing path alone (partial weight gradients where they spare a kernel block of rows, "
                "hooks elsewhere), timed against the dense step in alternating blocks of steps (so machine load "
                "hits both alike), with the given fraction of every group's neurons frozen.\n\n"
                + md_table(["model", "frozen", "partial-gradient layers", "backprop FLOPs saved",
                            "training FLOPs saved", "backward time / dense", "step time / dense"], paired))
    sweep = [(r.get("model"), f"{e['eps']:g}", str(len(e.get("seeds", []))),
              _pm(e, "bprop_flops_saved_frac", 100.0, "{:.1f}") + "%", _pm(e, "accuracy_loss_points"))
             for r in res for e in r.get("eps_sweep", [])]
    if sweep:
        main = [(r.get("model"), f"{d.get('neq_config', {}).get('eps', 0):g} (above)", str(len(r.get("seeds", []))),
                 _pm(r, "bprop_flops_saved_frac", 100.0, "{:.1f}") + "%", _pm(r, "accuracy_loss_points"))
                for r in res if r.get("eps_sweep")]
        out += ("\nNEq's threshold `eps` against its saving and its cost, each seed against its own NEq-off run "
                "(mean +- std over seeds).\n\n"
                + md_table(["model", "eps", "seeds", "backprop FLOPs saved", "accuracy loss (points)"], main + sweep))
    curve = d.get("row_block_curve") or []
    if curve:
        shapes = dict.fromkeys((c["in_channels"], c["out_channels"], c["side"]) for c in curve)
        lines = [(f"{ci}->{co} @{sd}x{sd}", " ".join(f"{c['rows']}:{1e3 * c['seconds']:.2f}"
                                                     for c in curve if (c["in_channels"], c["out_channels"], c["side"]) == (ci, co, sd)))
                 for ci, co, sd in shapes]
        out += ("\nWeight-gradient kernel time (ms) against the output rows computed (rows:ms), batch 64: the "
                "time steps at blocks of rows, the measurement behind `partial_grad.row_block()`.\n\n"
                + md_table(["convolution", "rows:ms"], lines))

    def mean_frozen(h: dict) -> float:
        ff = h.get("frozen_fraction") or {}
        return 100 * sum(ff.values()) / len(ff) if ff else 0.0

    def on_history(r: dict) -> list[dict]:  # the first seed's NEq-on run
        seeds = r.get("per_seed") or [r]
        return seeds[0].get("on", {}).get("history", [])

    def draw(ax):
        for r in res:
            hist = on_history(r)
            ax.plot([h["epoch"] for h in hist], [mean_frozen(h) for h in hist], "o-",
                    label=f"{r.get('model')} (seed {(r.get('seeds') or [0])[0]})")
        ax.set(xlabel="epoch", ylabel="weight-gradient rows not computed,\nmean over layers (%)",
               title="NEq: neurons at equilibrium")
        ax.legend(fontsize=7)

    if any(on_history(r) for r in res):
        out += "\n" + _figure(fig_dir, "neq", draw)
    return out


def dynhp_section(d: dict, fig_dir: Path) -> str:
    """DynHP per learning-rate rule, mean +- std over seeds, beside the dense model; batch trajectory."""
    b, rules = d.get("baseline", {}), d.get("lr_rules", {})
    rows = [("dense (no budget)", "-", _pm({"a": 100 * b.get("test_accuracy", 0),
                                            "a_std": 100 * (b.get("test_accuracy_std") or 0)}, "a"),
             "1.0x", str(d.get("starting_batch")), "-", "-", "-")]
    for rule, s in rules.items():
        rows.append((f"DynHP, lr-scaling {rule}" + (" (default)" if rule == d.get("headline_rule") else ""), rule,
                     _pm(s, "test_accuracy", 100.0), _pm(s, "compression", 1.0, "{:.1f}") + "x",
                     _pm(s, "batch_final", 1.0, "{:.0f}"), _pm(s, "memory_saved_at_own_batch", 100.0, "{:.1f}") + "%",
                     _pm(s, "memory_saved_at_start_batch", 100.0, "{:.1f}") + "%", _pm(s, "violations", 1.0, "{:.0f}")))
    out = (f"LeNet-5, {d.get('epochs')} epochs on {d.get('max_train_samples') or 'all'} training samples, seeds "
           f"{d.get('seeds')}, starting batch {d.get('starting_batch')} (the budget fits the dense model there). "
           f"Mean ± std over seeds. Memory saved at the run's own batch: the dense model's estimated step peak at "
           f"the final batch against the pruned model's. Measured best learning-rate rule: "
           f"**{d.get('lr_rule_winner')}**.\n\n"
           + md_table(["run", "lr rule", "top-1 (%)", "compression", "final batch", "memory saved at own batch",
                       f"memory saved at batch {d.get('starting_batch')}", "budget violations"], rows))
    runs = d.get("runs", {})

    def draw(axes):
        for rule, rs in runs.items():
            h = rs[0].get("history", []) if rs else []
            ep = [x["epoch"] for x in h]
            axes[0].plot(ep, [x["batch"] for x in h], "o-", label=rule)
            axes[1].plot(ep, [100 * x["test_accuracy"] for x in h], "o-", label=rule)
        axes[0].set(xlabel="epoch", ylabel="batch size", title="DynHP: batch grows as the model shrinks")
        axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="DynHP: accuracy per lr rule (seed 0)")
        for ax in axes:
            ax.legend(fontsize=7)

    if runs and all("batch" in x and "test_accuracy" in x for rs in runs.values() for x in (rs[0].get("history", []) if rs else [])):
        out += "\n" + _figure(fig_dir, "dynhp", draw, ncols=2)
    return out


def scale_section(d: dict, fig_dir: Path) -> str:
    """Setting, round times and the host-memory timeline."""
    s = d.get("setting", {})
    rows = [("clients / per round", f"{s.get('clients')} / {s.get('clients_per_round')}"),
            ("rounds", s.get("rounds")), ("methods", s.get("methods")),
            ("startup (s)", _fmt(d.get("startup_seconds"), "{:.1f}")),
            ("round seconds", ", ".join(_fmt(x, "{:.1f}") for x in d.get("round_seconds", []))),
            ("peak RSS sum / PSS (GiB)", f"{_fmt(d.get('peak_rss_gib'))} / {_fmt(d.get('peak_pss_gib'))}"),
            ("final accuracy", _fmt(d.get("final_accuracy"), "{:.4f}")),
            ("client-rounds without an update (did not fit the budget, or failed)", d.get("client_failures"))]
    out = md_table(["quantity", "value"], rows)
    tl = d.get("rss_timeline", [])

    def draw(ax):
        ax.plot([t for t, _ in tl], [v / 2**30 if v > 1e6 else v for _, v in tl])
        ax.set(xlabel="seconds", ylabel="host memory, RSS sum (GiB)", title="scale: host memory over the run")

    if tl and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in tl):
        out += "\n" + _figure(fig_dir, "scale", draw)
    return out


def rss_section(d: dict, fig_dir: Path) -> str:
    """Physical peak / budget per model, budget and methods; the issue's table re-measured."""
    s = d.get("summary", {})
    pts = [r for r in d.get("points", []) if "model" in r]
    rows = [(r["model"], _fmt(r.get("budget_mb"), "{:g}"), r.get("methods"),
             "error" if "error" in r else ("does not fit" if r.get("does_not_fit") else r.get("batch_max")),
             _fmt((r.get("tensor_peak_bytes") or 0) / 2**20, "{:.1f}"),
             _fmt((r.get("rss_growth_bytes") or 0) / 2**20, "{:.1f}"),
             _fmt(r.get("physical_ratio"), "{:.3f}") if "physical_ratio" in r else "-") for r in pts]
    out = (f"One fresh process per point ({_fmt(d.get('grid', {}).get('samples'), '{}')} samples, 1 epoch): "
           "allocator and kernel caches set, warm-up, then one `train_local` round. Physical peak = "
           "the kernel's RSS high-water mark over the round minus the RSS when it started. "
           f"Worst ratio {_fmt(s.get('worst_ratio'), '{:.3f}')} ({s.get('worst_point')}); mean "
           f"utilization {_fmt(s.get('mean_utilization'), '{:.3f}')} over the {s.get('budget_bound')} points "
           f"where the budget chose the batch ({_fmt(s.get('mean_utilization_all_trained'), '{:.3f}')} over "
           f"all {s.get('trained')} that trained).\n\n"
           + md_table(["model", "budget MB", "methods", "batch", "tensor peak MiB", "physical peak MiB",
                       "physical / budget"], rows))
    table = [r for r in d.get("table", []) if "model" in r]
    if table:
        trows = [(r["model"], r.get("methods"), _fmt(r.get("budget_mb"), "{:g}"), r.get("batch_max"),
                  _fmt((r.get("tensor_peak_bytes") or 0) / 2**20, "{:.1f}"),
                  _fmt((r.get("rss_growth_bytes") or 0) / 2**20, "{:.1f}"),
                  _fmt((r.get("rss_growth_bytes") or 0) / max(1, r.get("budget_bytes") or 1), "{:.2f}"))
                 for r in table]
        out += ("\n\nThe issue's table, re-measured (2,700 samples):\n\n"
                + md_table(["model", "methods", "budget MB", "batch", "tensor peak MiB", "RSS growth MiB",
                            "growth / budget"], trows))
    return out


def auto_cgroup_section(d: dict, fig_dir: Path) -> str:
    """``fedprune train`` with an auto budget inside a memory cgroup, per model."""
    g = d.get("grid", {})
    rows = [(r["model"], "killed" if r.get("killed") else ("trained" if r.get("trained") else
             ("does not fit" if r.get("said_does_not_fit") else f"exit {r.get('exit_code')}")),
             _fmt((r.get("budget_bytes") or 0) / 2**20, "{:.0f}"), r.get("batch_max", "-"),
             _fmt((r.get("cgroup_peak_bytes") or 0) / 2**20, "{:.0f}"),
             _fmt((r.get("charge_at_end", {}).get("anon") or 0) / 2**20, "{:.0f}"),
             _fmt((r.get("physical_peak_bytes") or 0) / 2**20, "{:.1f}"), _fmt(r.get("seconds"), "{:.0f}"))
            for r in d.get("runs", [])]
    return (f"`fedprune train`, `memory.budget = \"auto\"` (reserve {g.get('reserve_mb')} MB), methods "
            f"{g.get('methods')}, {g.get('samples')} samples, in a {g.get('limit_mb')} MB memory cgroup. "
            "cgroup peak counts page cache too (cgroup v1); anon is what the process could not give back.\n\n"
            + md_table(["model", "outcome", "auto budget MiB", "batch", "cgroup peak MiB", "anon at end MiB",
                        "training physical peak MiB", "seconds"], rows))


def client_rounds_section(d: dict, fig_dir: Path) -> str:
    """A tight client's rounds: physical peak over the round's baseline against the budget."""
    g = d.get("grid", {})
    rows = [(seed, r["round"], _fmt((r.get("budget_bytes") or 0) / 2**20, "{:.2f}"),
             _fmt((r.get("measured_peak_bytes") or 0) / 2**20, "{:.2f}"),
             _fmt((r.get("physical_peak_bytes") or 0) / 2**20, "{:.2f}"), _fmt(r.get("physical_ratio"), "{:.2f}"),
             r.get("batch_sizes", ""), r.get("neurons_pruned_to_fit", 0))
            for seed, rs in d.get("runs", {}).items() for r in rs]
    return (f"The study's Pi Zero 2 W client (partition {g.get('partition')}, LeNet-5 + DynHP, "
            f"{g.get('samples')} samples), {g.get('rounds')} rounds per seed in one client process.\n\n"
            + md_table(["seed", "round", "budget MiB", "tensor peak MiB", "physical peak MiB", "physical / budget",
                        "batches", "pruned to fit"], rows))


SECTIONS: dict[str, Section] = {
    "overhead": overhead_section, "pipeline": pipeline_section, "memory_model": memory_model_section,
    "adherence": adherence_section, "surgery": surgery_section, "serene": serene_section,
    "neq": neq_section, "dynhp": dynhp_section, "scale": scale_section, "rss": rss_section,
    "auto_cgroup": auto_cgroup_section, "client_rounds": client_rounds_section,
}


def papers_table(results: dict[str, dict]) -> str:
    """Our method figures beside the source papers' (datasets and models named), mean +- std over seeds."""
    s, n, h = results.get("serene", {}), results.get("neq", {}), results.get("dynhp", {})
    rows = []
    if s:
        ss = s.get("arms", {}).get("SeReNe", {})
        base = s.get("arms", {}).get("Baseline", {})
        rows.append(("SeReNe compression", "LeNet-5 / MNIST (non-zero params)", f"{SERENE_PAPER['compression']}x",
                     "LeNet-5 / Fashion-MNIST (physically removed)", _pm(ss, "compression_structural", 1.0, "{:.1f}") + "x"))
        rows.append(("SeReNe compression, physically (the paper's neurons kept in our LeNet-5)",
                     f"LeNet-5 {SERENE_PAPER['neurons']}", f"{_paper_physical_compression():.1f}x",
                     "LeNet-5 / Fashion-MNIST (physically removed)",
                     _pm(ss, "compression_structural", 1.0, "{:.1f}") + "x"))
        rows.append(("SeReNe neurons", "LeNet-5 / MNIST", SERENE_PAPER["neurons"], "LeNet-5 / Fashion-MNIST",
                     "-".join(f"[{m:.0f}]" for m in ss.get("layer_neurons", []))))
        rows.append(("SeReNe top-1", "LeNet-5 / MNIST", f"{100 - SERENE_PAPER['error']:.2f}%", "LeNet-5 / Fashion-MNIST",
                     _pm(ss, "test_accuracy", 100.0) + f"% (dense {_pm(base, 'test_accuracy', 100.0)}%)"))
    for r in n.get("results", []):
        rows.append(("NEq backprop FLOPs saved / accuracy change", "ResNet-18 / ImageNet", "-23.08% / -0.28 points",
                     f"{r.get('model')} / Fashion-MNIST",
                     f"-{_pm(r, 'bprop_flops_saved_frac', 100.0, '{:.1f}')}% / "
                     f"{_fmt(-(r.get('accuracy_loss_points') or 0), '{:+.2f}')} ± "
                     f"{_fmt(r.get('accuracy_loss_points_std'))} points"))
    if h:
        hh = h.get("dynhp", {})
        rows.append(("DynHP compression", "two public datasets (report)", "up to 10x", "LeNet-5 / Fashion-MNIST",
                     _pm(hh, "compression", 1.0, "{:.1f}") + "x"))
        rows.append(("DynHP training memory saved (at the run's own batch)", "two public datasets (report)",
                     "up to 80%", "LeNet-5 / Fashion-MNIST", _pm(hh, "memory_saved_at_own_batch", 100.0, "{:.1f}") + "%"))
        rows.append(("DynHP accuracy loss", "two public datasets (report)", "<= 3.5 points",
                     "LeNet-5 / Fashion-MNIST", _pm(hh, "accuracy_loss_points") + " points"))
    if not rows:
        return ""
    return md_table(["figure", "paper: model / dataset", "paper", "ours: model / dataset", "ours"], rows)
