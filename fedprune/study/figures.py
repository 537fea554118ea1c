"""The report's PNG figures (matplotlib, Agg backend); each ``fig_*`` returns False when it has
nothing to draw."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from fedprune.study.numbers import client_rows, client_value, num
from fedprune.study.runs import RunRecord
from fedprune.study.tables import group_key_fields, method_label, run_budget_mb


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9,
                         "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 8, "axes.prop_cycle": plt.cycler(color=series_colours(plt))})
    return plt


def series_colours(plt) -> list:
    """20 distinct colours, the ``tab10`` ones first, then ``tab20``'s light shades of them: a study
    with more than ten methods does not give two of them one colour."""
    tab20 = plt.get_cmap("tab20")
    return [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]


def series_colour(plt, i: int):
    """The colour of the ``i``-th series (the cycle of :func:`series_colours`)."""
    colours = series_colours(plt)
    return colours[i % len(colours)]


def _int_rounds(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in getattr(axes, "flat", [axes]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _bottom_legend(fig: Any, handles: list, labels: list) -> None:
    fig.legend(handles, labels, loc="lower center", title="methods", fontsize=8, title_fontsize=8,
               ncol=min(len(labels), 5) or 1, frameon=False)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _setting_title(records: Sequence[RunRecord]) -> str:
    first = next((r for r in records if r.config is not None), None)
    if first is None:
        return ""
    c = first.config
    seeds = sorted({r.config.run.seed for r in records if r.config is not None})
    fleet = c.fleet.devices.replace(" ", "") if c.fleet.devices else f"{c.fleet.num_clients} clients"
    return (f"{c.data.dataset}, {c.model.name}, {fleet}, {c.run.num_rounds} rounds, "
            f"seeds {','.join(map(str, seeds))}")


def _series(records: Sequence[RunRecord]) -> list[str]:
    seen: list[str] = []
    for r in records:
        label = _series_label(r, records)
        if label not in seen:
            seen.append(label)
    return seen


def _series_label(rec: RunRecord, records: Sequence[RunRecord]) -> str:
    """Method, plus any grid value that is neither the seed, the method nor a budget key."""
    extra = [f"{k.split('.')[-1]}={rec.overrides[k]}" for k in group_key_fields(records)
             if k in rec.overrides and k != "methods.enabled" and not _is_budget_key(k)]
    return method_label(rec) + (f" [{', '.join(extra)}]" if extra else "")


def _is_budget_key(key: str) -> bool:
    return key in ("fleet.budget-scale", "fleet.budgets-mb", "memory.budget-mb", "memory.schedule-mb",
                   "fleet.devices")


def fig_accuracy_vs_budget(records: Sequence[RunRecord], path: Path) -> bool:
    """Final accuracy (%) vs mean client budget (MB), one line per method, mean and range over seeds."""
    pts: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        b = run_budget_mb(r)
        if r.done and b is not None and num(r.summary.get("final_accuracy")) is not None:
            pts[_series_label(r, records)][round(b, 6)].append(100 * r.summary["final_accuracy"])
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    xs_all = []
    for label in [s for s in _series(records) if s in pts]:
        xs = sorted(pts[label])
        xs_all += xs
        ys = [sum(pts[label][x]) / len(pts[label][x]) for x in xs]
        lo = [y - min(pts[label][x]) for x, y in zip(xs, ys)]
        hi = [max(pts[label][x]) - y for x, y in zip(xs, ys)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    if xs_all and max(xs_all) / max(min(xs_all), 1e-12) > 4:
        ax.set_xscale("log")
    ticks = sorted(set(xs_all))
    if len(ticks) <= 8:  # label the budgets themselves, in plain MB
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_xlabel("memory budget per client (MB, mean over the fleet)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs. memory budget (points: mean over seeds; bars: min-max)\n"
                 + _setting_title(records))
    ax.legend(title="methods", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def fig_accuracy_vs_params(records: Sequence[RunRecord], path: Path) -> bool:
    """Final accuracy (%) vs parameters of the final simplified model, per method (and budget)."""
    done = [r for r in records if r.done and num(r.summary.get("final_params")) is not None
            and num(r.summary.get("final_accuracy")) is not None]
    if not done:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    budgets = sorted({round(b, 6) for b in (run_budget_mb(r) for r in done) if b is not None})
    markers = "osD^vP*Xh<>"
    series = [s for s in _series(records) if any(_series_label(r, records) == s for r in done)]
    for i, label in enumerate(series):
        colour = series_colour(plt, i)
        for r in (r for r in done if _series_label(r, records) == label):
            b = run_budget_mb(r)
            m = markers[budgets.index(round(b, 6)) % len(markers)] if b is not None and budgets else "o"
            ax.scatter(r.summary["final_params"], 100 * r.summary["final_accuracy"], marker=m,
                       color=colour, s=36, alpha=0.85, edgecolors="none")
        ax.scatter([], [], color=colour, marker="o", label=label)
    for j, b in enumerate(budgets if len(budgets) > 1 else []):
        ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=f"budget {b:.3g} MB")
    dense = num(done[0].summary.get("dense_params"))
    if dense:
        ax.axvline(dense, color="gray", ls="--", lw=1)
        ax.annotate("dense model", (dense, ax.get_ylim()[0]), rotation=90, va="bottom", ha="right",
                    fontsize=8, color="gray")
    params = [r.summary["final_params"] for r in done] + ([dense] if dense else [])
    if max(params) / max(min(params), 1) > 4:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("parameters of the final simplified model")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs. final model size (one point per run)\n" + _setting_title(records))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def _per_round(rec: RunRecord, what: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for rnd, c in client_rows(rec.rows):
        v = client_value(c, what)
        if v is not None:
            out[rnd].append(100 * v if what in ("utilization", "flops_saved") else v)
    return out


def _sweep_panels(records: Sequence[RunRecord]) -> list[float | None]:
    budgets = sorted({round(b, 6) for b in (run_budget_mb(r) for r in records) if b is not None})
    return budgets or [None]


def fig_clients_over_rounds(records: Sequence[RunRecord], path: Path) -> bool:
    """Per-client memory utilization (%) and batch size over rounds."""
    have = [r for r in records if any(_per_round(r, "utilization")) or any(_per_round(r, "batch"))]
    if not have:
        return False
    if len(have) == 1:
        _clients_of_one_run(have[0], path)
    else:
        _clients_per_budget(have, path)
    return True


def _clients_of_one_run(rec: RunRecord, path: Path) -> None:
    """One run: every client's utilization and batch per round (mean and range when there are many)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    by_client: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for rnd, c in client_rows(rec.rows):
        by_client[str(c.get("client", c.get("partition_id", "?")))][rnd] = c
    for ax, what, ylabel in ((axes[0], "utilization", "memory utilization (% of budget)"),
                             (axes[1], "batch", "batch size (samples)")):
        if len(by_client) <= 12:
            for cid, per in sorted(by_client.items(), key=lambda kv: kv[0]):
                pts = sorted((r, client_value(c, what)) for r, c in per.items())
                pts = [(r, (100 * v if what == "utilization" else v)) for r, v in pts if v is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=f"client {cid}")
        else:
            per = _per_round(rec, what)
            rounds = sorted(per)
            ax.plot(rounds, [sum(per[r]) / len(per[r]) for r in rounds], marker="o", label="mean")
            ax.fill_between(rounds, [min(per[r]) for r in rounds], [max(per[r]) for r in rounds],
                            alpha=0.25, label="min-max over sampled clients")
        if what == "utilization":
            ax.axhline(100, color="red", ls="--", lw=1, label="budget")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
    axes[0].set_title("Measured peak memory / budget, per client")
    axes[1].set_title("Batch size chosen by the batch sizer")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles, labels, fontsize=7, ncol=2 if len(labels) > 6 else 1, loc="best")
    fig.suptitle(f"Clients over rounds: {rec.id} ({method_label(rec)})", fontsize=10)
    _int_rounds(axes)
    _save(fig, path)


def _clients_per_budget(have: Sequence[RunRecord], path: Path) -> None:
    """A sweep: one column per budget level, lines per method, mean over clients and seeds."""
    plt = _plt()
    budgets = _sweep_panels(have)
    fig, axes = plt.subplots(2, len(budgets), figsize=(3.2 * len(budgets) + 1.5, 5.6), squeeze=False,
                             sharey="row")
    for j, b in enumerate(budgets):
        for i, (what, ylabel) in enumerate((("utilization", "memory utilization (% of budget)"),
                                            ("batch", "batch size (samples)"))):
            ax = axes[i][j]
            for label in _series(have):
                means = _round_means(have, label, b, lambda r, w=what: _per_round(r, w))
                if means:
                    ax.plot(list(means), list(means.values()), marker="o", ms=3, lw=1.2, label=label)
            if what == "utilization":
                ax.axhline(100, color="red", ls="--", lw=1)
            if i == 0:
                ax.set_title("budget " + (f"{b:.3g} MB" if b is not None else "n/a"))
            if i == 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle("Client memory utilization (peak/budget; red: the budget) and batch size over rounds\n"
                 "mean over sampled clients and seeds; " + _setting_title(have), fontsize=9)
    _int_rounds(axes)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _round_means(have: Sequence[RunRecord], label: str, budget: float | None,
                 per_round: Callable[[RunRecord], dict[int, list[float]]]) -> dict[int, float]:
    """Mean per round over the runs of one series (and one budget panel, when given)."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in have:
        rb = run_budget_mb(r)
        if _series_label(r, have) == label and (budget is None or (rb is not None and round(rb, 6) == budget)):
            for rnd, vals in per_round(r).items():
                acc[rnd] += vals
    return {rnd: sum(v) / len(v) for rnd, v in sorted(acc.items())}


def _accuracy_per_round(r: RunRecord) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for i, row in enumerate(r.rows):
        if num(row.get("accuracy")) is not None:
            out[int(row.get("round", i + 1))].append(100 * row["accuracy"])
    return out


def _lines_per_budget(have: Sequence[RunRecord], path: Path, per_round: Callable[[RunRecord], dict[int, list[float]]],
                      ylabel: str, title: str) -> None:
    """One panel per budget level (one panel for a single run), one line per method: the per-round
    mean of ``per_round`` over the panel's runs."""
    plt = _plt()
    budgets = _sweep_panels(have) if len(have) > 1 else [None]
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.2 * len(budgets) + 1.5, 3.8), squeeze=False,
                             sharey=True)
    for j, b in enumerate(budgets):
        ax = axes[0][j]
        for label in _series(have):
            means = _round_means(have, label, b, per_round)
            if means:
                ax.plot(list(means), list(means.values()), marker="o", ms=3, lw=1.2, label=label)
        ax.set_xlabel("round")
        if j == 0:
            ax.set_ylabel(ylabel)
        if len(budgets) > 1:
            ax.set_title("budget " + (f"{b:.3g} MB" if b is not None else "n/a"))
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle(title + "\n" + _setting_title(have), fontsize=9)
    _int_rounds(axes)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def fig_flops_saved(records: Sequence[RunRecord], path: Path) -> bool:
    """Share of backprop FLOPs saved (%) over rounds (NEq freezing + pruning), per method."""
    have = [r for r in records if any(_per_round(r, "flops_saved"))]
    if not have:
        return False
    _lines_per_budget(have, path, lambda r: _per_round(r, "flops_saved"), "backprop FLOPs saved (% of dense)",
                      "Backprop FLOPs saved per client round (mean over sampled clients and seeds)")
    return True


def fig_accuracy_over_rounds(records: Sequence[RunRecord], path: Path) -> bool:
    """Test accuracy (%) of the global model after each round, per method (mean over seeds)."""
    have = [r for r in records if any(num(row.get("accuracy")) is not None for row in r.rows)]
    if not have:
        return False
    _lines_per_budget(have, path, _accuracy_per_round, "test accuracy of the global model (%)",
                      "Global model accuracy after each round (mean over seeds)")
    return True


RUN_FIGURES = (("accuracy_over_rounds.png", fig_accuracy_over_rounds),
               ("clients_over_rounds.png", fig_clients_over_rounds),
               ("flops_saved_over_rounds.png", fig_flops_saved))


FIGURES = (("accuracy_vs_budget.png", fig_accuracy_vs_budget),
           ("accuracy_vs_params.png", fig_accuracy_vs_params),
           ("clients_over_rounds.png", fig_clients_over_rounds),
           ("flops_saved_over_rounds.png", fig_flops_saved),
           ("accuracy_over_rounds.png", fig_accuracy_over_rounds))
