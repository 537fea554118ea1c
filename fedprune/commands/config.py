"""``fedprune config``: every key with its default, ``--check FILE``, ``--sync-pyproject``."""

from __future__ import annotations

import argparse
from typing import Any

from fedprune.config import ExperimentConfig, dumps_toml, sync_pyproject, to_dict
from fedprune.run_folder import read_config, validate_for_run


def add_parser(sub: Any) -> None:
    """Register ``fedprune config``."""
    c = sub.add_parser("config", help="print every config key with its default, or --check a file")
    c.add_argument("--check", metavar="FILE")
    c.add_argument("--sync-pyproject", metavar="PYPROJECT", nargs="?", const="pyproject.toml",
                   help="rewrite [tool.flwr.app.config] of PYPROJECT from the schema's defaults")
    c.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    if args.sync_pyproject:
        changed = sync_pyproject(args.sync_pyproject)
        print(f"{args.sync_pyproject}: {'updated' if changed else 'already in sync'}")
        return 0
    if args.check:
        validate_for_run(read_config(args.check), args.check)  # exactly what simulate and train check
        print(f"{args.check}: ok")
        return 0
    print(dumps_toml(to_dict(ExperimentConfig())), end="")
    return 0


