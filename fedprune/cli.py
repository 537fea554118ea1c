"""The ``fedprune`` command: ``simulate``, ``train``, ``sweep``, ``report``, ``deploy-local``, ``config``.

Each subcommand lives in ``fedprune/commands/``. Every command validates its input before anything
heavy starts (no Ray, no data loading), and prints a single ``error: ...`` line with exit code 2 on
bad input; SIGTERM and Ctrl-C end every process the command started before it returns.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

from fedprune.commands import COMMANDS
from fedprune.config import ConfigError
from fedprune.data import DatasetNotFound
from fedprune.errors import EXIT_BAD_INPUT, UsageError
from fedprune.launch import LaunchError
from fedprune.run_lock import RunFolderBusy


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``fedprune.commands``."""
    p = argparse.ArgumentParser(prog="fedprune",
                                description="Federated edge training under memory budgets (Flower + PyTorch).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _terminate_gracefully(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # unwinds `finally` blocks: every process of the run is ended first


def _interrupted_message(args: argparse.Namespace) -> str:
    run_dir = getattr(args, "run_dir", None)
    if args.command == "simulate" and run_dir is not None:
        return ("interrupted: every process of the run has ended; completed rounds are "
                f"checkpointed; continue with `fedprune simulate --resume {run_dir}`")
    if run_dir is not None:
        return f"interrupted: every process of the run has ended; partial results in {run_dir}"
    return "interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedprune`` console script."""
    signal.signal(signal.SIGTERM, _terminate_gracefully)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError, DatasetNotFound, RunFolderBusy, LaunchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
