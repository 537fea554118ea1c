"""``fedprune report RUN_OR_SWEEP_DIR``: tables (CSV, Markdown) and figures (PNG) of runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprune.results import atomic_write_text
from fedprune.study.comparison import comparison_rows
from fedprune.study.conclusion import comparison_markdown, conclusion_markdown
from fedprune.study.figures import FIGURES, RUN_FIGURES
from fedprune.study.markdown import markdown_report
from fedprune.study.pareto import fig_accuracy_vs_peak, fig_participation
from fedprune.study.runs import collect_runs
from fedprune.study.tables import csv_text, grouped_rows, round_rows, run_row


@dataclass
class Report:
    kind: str
    out_dir: Path
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    figures: list[str]
    comparison: list[dict[str, Any]]


#: Figures of a sweep's method comparison, the Pareto figure first (the README's main figure).
COMPARISON_FIGURES = (("accuracy_vs_peak_memory.png", fig_accuracy_vs_peak),
                      ("participation_per_tier.png", fig_participation))


def _comparison_section(kind: str, compared: list[dict[str, Any]], conclusion: str) -> str:
    if kind == "run" or not compared:
        return ""
    return "\n".join(["## Conclusion", "", conclusion, "## Methods compared (mean over seeds)", "",
                      "Peak: the largest over the client-rounds that trained. *x smaller*: dense / final "
                      "parameters. *trained*: share of sampled client-rounds of that device that trained.",
                      "", comparison_markdown(compared)])


def make_report(path: str | Path, out: str | Path | None = None, figures: bool = True) -> Report:
    """Read the runs under ``path`` and write ``report.csv``, ``rounds.csv``, ``report.md`` and figures;
    for several runs also ``comparison.csv`` (per setting and method), ``conclusion.md`` (the closing
    note, also in ``report.md``), the Pareto and participation figures."""
    kind, records = collect_runs(path)
    src = Path(path).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else src
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r) for r in records]
    groups = grouped_rows(records, rows)
    compared = comparison_rows(records) if kind != "run" else []
    made: list[str] = []
    if figures:
        for name, fn in (RUN_FIGURES if len(records) == 1 else COMPARISON_FIGURES + FIGURES):
            if fn(records, out_dir / name):
                made.append(name)
    atomic_write_text(out_dir / "report.csv", csv_text(rows))
    atomic_write_text(out_dir / "rounds.csv", csv_text(round_rows(records)))
    if groups and kind != "run":
        atomic_write_text(out_dir / "report_grouped.csv", csv_text(groups))
    conclusion = conclusion_markdown(compared)
    if compared:
        atomic_write_text(out_dir / "comparison.csv", csv_text(compared))
        atomic_write_text(out_dir / "conclusion.md", conclusion)
    text = markdown_report(kind, src, records, rows, groups, made)
    atomic_write_text(out_dir / "report.md", text + _comparison_section(kind, compared, conclusion))
    return Report(kind, out_dir, rows, groups, made, compared)
