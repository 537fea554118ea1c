"""``fedprune report RUN_OR_SWEEP_DIR``: tables and figures of a run or a sweep (``fedprune.study``)."""

from __future__ import annotations

import argparse
from typing import Any

from fedprune.errors import UsageError
from fedprune.study.readme_block import update_readme
from fedprune.study.report import make_report
from fedprune.study.runs import ReportError


def cmd_report(args: argparse.Namespace) -> int:
    try:
        rep = make_report(args.path, args.out, figures=not args.no_figures)
    except ReportError as err:
        raise UsageError(str(err)) from None
    if args.readme:
        try:
            update_readme(rep.out_dir, args.readme)
        except (OSError, ValueError) as err:
            raise UsageError(f"--readme: {err}") from None
    done = sum(1 for r in rep.rows if r["status"] == "done")
    print(f"fedprune report: {len(rep.rows)} run(s) ({done} finished) -> {rep.out_dir}/report.md, "
          f"report.csv{', ' + ', '.join(rep.figures) if rep.figures else ''}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``fedprune report`` on the CLI's subparsers."""
    r = sub.add_parser("report", help="tables and figures of a run or a sweep",
                       description="Write report.csv, report.md and PNG figures for a run or sweep folder.")
    r.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    r.add_argument("--out", help="folder for the report (default: RUN_OR_SWEEP_DIR)")
    r.add_argument("--no-figures", action="store_true", help="tables only")
    r.add_argument("--readme", metavar="README", help="also write the conclusion and the Pareto figure "
                   "between the README's <!-- study:start --> and <!-- study:end --> markers")
    r.set_defaults(func=cmd_report)
