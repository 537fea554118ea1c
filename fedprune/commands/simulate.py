"""``fedprune simulate CONFIG`` / ``--resume RUN_DIR``: a federated run on Flower's simulation engine."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fedprune.config import ExperimentConfig
from fedprune.errors import UsageError
from fedprune.launch import SimulationSpec, run_flower_simulation
from fedprune.progress import round_progress
from fedprune.results import SUMMARY_FILE
from fedprune.run_folder import new_run_dir, prepare_run_dir, read_config, resume_target, validate_for_run
from fedprune.run_lock import LAUNCH_LOCK, RunLock


def add_parser(sub: Any) -> None:
    """Register ``fedprune simulate``."""
    s = sub.add_parser("simulate", help="run a federated simulation (Flower + Ray)")
    s.add_argument("config", nargs="?", help="experiment TOML file")
    s.add_argument("--out", help="results folder (default: results/<run.name>)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    s.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        raise UsageError("give either CONFIG or --resume RUN_DIR, not both")
    if not args.resume and not args.config:
        raise UsageError("simulate needs a CONFIG file (or --resume RUN_DIR)")
    if args.resume:
        run_dir, cfg = resume_target(args.resume)
    else:
        cfg = read_config(args.config)
        validate_for_run(cfg, args.config)
        run_dir = None
    with RunLock(run_dir or new_run_dir(cfg, args.out), LAUNCH_LOCK):
        cfg, run_dir = prepare_run_dir(cfg, args.out, args.resume)
        args.run_dir = run_dir  # named by the interruption message
        return _simulate(cfg, run_dir)


def _simulate(cfg: ExperimentConfig, run_dir: Path) -> int:
    """Launch the simulation in ``run_dir`` (whose launch lock the caller holds); report its end."""
    spec = SimulationSpec.for_run(cfg, run_dir)
    print(f"fedprune: running {cfg.run.name!r} ({cfg.fleet.num_clients} clients, "
          f"{cfg.run.num_rounds} rounds, {cfg.model.name}, methods {cfg.methods.enabled}) -> {run_dir}",
          flush=True)
    t0 = time.perf_counter()
    progress, poll = round_progress(run_dir, cfg.run.num_rounds)
    with progress:
        code = run_flower_simulation(spec, on_poll=poll)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        tail = (run_dir / "flwr.log").read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        print(f"error: the simulation ended (flwr exit code {code}) without a summary; "
              f"see {run_dir / 'flwr.log'}; resume with: fedprune simulate --resume {run_dir}",
              file=sys.stderr)
        return 1
    s = json.loads(summary_path.read_text())
    if s.get("rounds_aggregated") == 0:
        print(f"error: no client trained in any of the {s.get('rounds')} rounds (the model is the initial "
              f"one); see failures in {run_dir / 'metrics.jsonl'}", file=sys.stderr)
        return 1
    print(f"fedprune: done in {time.perf_counter() - t0:.1f} s: final accuracy {s['final_accuracy']:.4f}, "
          f"{s['final_params']:,} params ({s['compression']:.1f}x smaller), neurons {s['neurons_per_layer']}")
    print(f"fedprune: results in {run_dir}")
    return 0


