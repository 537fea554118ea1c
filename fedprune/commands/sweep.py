"""``fedprune sweep SWEEP_FILE | SWEEP_DIR``: a resumable grid of simulations (``fedprune.study.sweep``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedprune.preflight import check_data_available
from fedprune.study.sweep import (BASE_FILE, SWEEP_FILE, Sweep, SweepError, default_sweep_dir, load_runner,
                                  load_sweep, run_status, trained_nothing)


def add_parser(sub: Any) -> None:
    """Register ``fedprune sweep`` on the CLI's subparsers."""
    s = sub.add_parser("sweep", help="run a grid of simulations (resumable)",
                       description="Run every point of a sweep file's grid; run it again to resume.")
    s.add_argument("sweep", metavar="SWEEP", help="sweep TOML file, or an existing sweep folder to resume")
    s.add_argument("--out", help="sweep folder (default: sweep.out-dir or results/sweeps/<name>)")
    s.add_argument("--parallel", type=int, default=None,
                   help="runs at a time (default: sweep.parallel; capped at the CPU cores)")
    s.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    s.add_argument("--quiet", action="store_true", help="no progress display")
    s.add_argument("--runner", help=argparse.SUPPRESS)  # module:function, for tests
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    target = Path(args.sweep)
    if target.is_dir():  # resume a sweep folder from its own copy of the sweep file
        if not (target / SWEEP_FILE).is_file():
            raise SweepError(f"{target}: not a sweep folder (no {SWEEP_FILE})")
        spec = load_sweep(target / SWEEP_FILE, base_override=target / BASE_FILE)
        sweep_dir = Path(args.out) if args.out else target
    else:
        spec = load_sweep(target)
        sweep_dir = default_sweep_dir(spec, args.out)
    runner = load_runner(args.runner) if args.runner else None
    sweep = Sweep(spec, sweep_dir, runner=runner, parallel=args.parallel, quiet=args.quiet)
    if args.dry_run:
        for plan in sweep.plans:
            print(f"{run_status(sweep.run_dir(plan.id)):9s} {plan.id}")
        print(f"{len(sweep.plans)} runs -> {sweep.dir}")
        return 0
    if runner is None:
        check_data_available(sweep.plans[0].config)
    res = sweep.run()
    print(f"fedprune sweep: {len(res.skipped)} already done, {len(res.done)} done now, "
          f"{len(res.failed)} failed{', interrupted' if res.interrupted else ''}; results in {res.sweep_dir}")
    if res.failed:
        print("failed: " + ", ".join(res.failed) + " (run the same command again to retry them)",
              file=sys.stderr)
    if res.interrupted:
        print(f"resume with: fedprune sweep {res.sweep_dir}", file=sys.stderr)
        return 130
    untrained = [p.id for p in sweep.plans if trained_nothing(sweep.run_dir(p.id))]
    if untrained:
        print(f"error: no client trained in any round of {len(untrained)} run(s) (their models are the "
              f"initial ones; see failures in metrics.jsonl): {', '.join(untrained)}", file=sys.stderr)
    return 1 if res.failed or untrained else 0


