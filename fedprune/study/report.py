"""``fedprune report RUN_OR_SWEEP_DIR``: tables (CSV, Markdown) and figures (PNG) of runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprune.results import atomic_write_text
from fedprune.study.figures import FIGURES, RUN_FIGURES
from fedprune.study.markdown import markdown_report
from fedprune.study.runs import collect_runs
from fedprune.study.tables import csv_text, grouped_rows, round_rows, run_row


@dataclass
class Report:
    kind: str
    out_dir: Path
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    figures: list[str]


def make_report(path: str | Path, out: str | Path | None = None, figures: bool = True) -> Report:
    """Read the runs under ``path`` and write ``report.csv``, ``rounds.csv``, ``report.md`` and figures."""
    kind, records = collect_runs(path)
    src = Path(path).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else src
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r) for r in records]
    groups = grouped_rows(records, rows)
    made: list[str] = []
    if figures:
        for name, fn in (RUN_FIGURES if len(records) == 1 else FIGURES):
            if fn(records, out_dir / name):
                made.append(name)
    atomic_write_text(out_dir / "report.csv", csv_text(rows))
    atomic_write_text(out_dir / "rounds.csv", csv_text(round_rows(records)))
    if groups and kind != "run":
        atomic_write_text(out_dir / "report_grouped.csv", csv_text(groups))
    atomic_write_text(out_dir / "report.md", markdown_report(kind, src, records, rows, groups, made))
    return Report(kind, out_dir, rows, groups, made)
