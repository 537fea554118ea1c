"""``fedprune train CONFIG``: centralized training with the federated clients' trainer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedprune.train.centralized import run_centralized_experiment
from fedprune.errors import UsageError
from fedprune.memory.resident import client_process
from fedprune.run_folder import read_config, validate_for_run


def add_parser(sub: Any) -> None:
    """Register ``fedprune train``."""
    t = sub.add_parser("train", help="centralized training with the same trainer (no federation)")
    t.add_argument("config")
    t.add_argument("--out", help="results folder")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default: rounds x local epochs)")
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = read_config(args.config)
    validate_for_run(cfg, args.config, epochs=args.epochs)
    out = Path(args.out or Path("results") / f"{cfg.run.name}-centralized").resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"results folder {out} is a file, not a folder; pass another --out")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"results folder {out} is not empty; pass another --out")
    with client_process():  # this process is the device: its resident memory is what the budget bounds
        summary = run_centralized_experiment(cfg, out, epochs=args.epochs)
    if summary.get("does_not_fit"):
        print(f"fedprune: {cfg.model.name} does not fit its training budget of "
              f"{summary['budget_bytes'] / 2**20:.1f} MB here ({summary['reason']})", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("final_accuracy", "final_params", "compression")
                      if k in summary}))
    print(f"fedprune: results in {out}")
    return 0


