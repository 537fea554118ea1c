"""The comparison's figures: accuracy vs per-client peak memory (Pareto) and participation per tier.

Both read :func:`fedprune.study.comparison.comparison_rows`; one panel per setting without its
budget (e.g. one per partitioner). Each ``fig_*`` returns False when it has nothing to draw.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from fedprune.study.comparison import PEAKS, comparison_rows
from fedprune.study.runs import RunRecord

MARKERS = "osD^v<>Pp*hX"


def _panel(setting: str) -> str:
    rest = setting.split(", ", 1)
    return rest[1] if len(rest) > 1 else "all runs"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both less memory and more accuracy, by memory ascending."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _pareto_panel(ax: Any, rows: list[dict[str, Any]], colours: dict[str, Any], budgets: list[float],
                  field: str) -> None:
    pts = []
    for r in rows:
        x, y = r.get(f"{field}_mean"), r.get("accuracy_mean")
        if x is None or y is None:
            continue
        err = 100 * (r.get("accuracy_std") or 0)
        ax.errorbar(x, 100 * y, yerr=err, color=colours[r["method"]], ms=6, capsize=2,
                    marker=MARKERS[budgets.index(r["budget_mb"]) % len(MARKERS)], ls="none")
        pts.append((x, 100 * y))
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot(*zip(*front), color="0.5", lw=1, ls="--", zorder=0)
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)


def fig_accuracy_vs_peak(records: Sequence[RunRecord], path: Path) -> bool:
    """Final accuracy (%) vs the run's largest per-client peak (MB, log): one row of panels per peak
    the metrics have (physical first, then the training tensors'), one panel per setting without its
    budget. Colour: method; marker: budget; error bars: the seeds' std; dashed: the Pareto front."""
    rows = comparison_rows(records)
    kinds = [(f, name) for f, _, name in PEAKS if any(r.get(f"{f}_mean") is not None for r in rows)]
    if not kinds:
        return False
    from fedprune.study.figures import _plt, series_colour

    plt = _plt()
    panels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        panels[_panel(r["setting"])].append(r)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: series_colour(plt, i) for i, m in enumerate(methods)}
    budgets = sorted({r["budget_mb"] for r in rows})
    size = (max(7.0, 4.6 * len(panels) + 0.6), 3.6 * len(kinds) + 1)
    fig, axes = plt.subplots(len(kinds), len(panels), figsize=size, squeeze=False, sharey=True)
    for i, (field, name) in enumerate(kinds):
        for ax, (title, members) in zip(axes[i], panels.items()):
            _pareto_panel(ax, members, colours, budgets, field)
            ax.set_title(title)
            ax.set_xlabel(f"largest per-client {name} (MB)")
        axes[i][0].set_ylabel("final test accuracy (%)")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ls="none") for m in methods]
    handles += [plt.Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="none")
                for i in range(len(budgets))]
    labels = methods + [f"budget {b:.4g} MB" for b in budgets]
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=4, frameon=False)
    fig.suptitle("Accuracy vs memory (mean over seeds; dashed: Pareto front)", fontsize=9)
    legend_share = (0.05 + 0.045 * ((len(labels) + 3) // 4)) / len(kinds)
    fig.tight_layout(rect=(0, legend_share, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def fig_participation(records: Sequence[RunRecord], path: Path) -> bool:
    """Share (%) of sampled client-rounds that trained, per device tier, one bar per method; one
    panel per setting."""
    rows = comparison_rows(records)
    tiers = list(dict.fromkeys(k.split(":", 1)[1] for r in rows for k in r if k.startswith("participation:")))
    if not tiers:
        return False
    from fedprune.study.figures import _bottom_legend, _plt, series_colour

    plt = _plt()
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = [series_colour(plt, i) for i in range(len(methods))]
    fig, axes = plt.subplots(1, len(settings), figsize=(3.4 * len(settings) + 1, 3.6), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, setting in zip(axes[0], settings):
        for i, m in enumerate(methods):
            r = next((x for x in rows if x["setting"] == setting and x["method"] == m), None)
            if r is not None:
                vals = [100 * (r.get(f"participation:{t}") or 0) for t in tiers]
                ax.bar([j + i * width for j in range(len(tiers))], vals, width, label=m,
                       color=colours[i])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tiers))], tiers, rotation=30, fontsize=7)
        ax.set_title(setting, fontsize=8)
    axes[0][0].set_ylabel("client-rounds that trained (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle("Participation per device tier (mean over seeds)", fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True
