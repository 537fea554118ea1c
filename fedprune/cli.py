"""The ``fedprune`` command: ``simulate``, ``train``, ``sweep``, ``report``, ``config``.

Every command validates its config before anything heavy starts (no Ray, no data loading), and
prints a single ``error: ...`` line with exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fedprune.config import ConfigError, ExperimentConfig, dumps_toml, load_config, to_dict
from fedprune.data import DatasetNotFound, locate_dataset
from fedprune.results import CONFIG_FILE, SUMMARY_FILE, atomic_write_text, read_metrics

EXIT_BAD_INPUT = 2


def check_budgets(cfg: ExperimentConfig) -> None:
    """Every client can train its smallest reachable model at batch 1 (``ConfigError`` if not)."""
    from fedprune.feasibility import check_budgets as _check

    _check(cfg)


class UsageError(Exception):
    """Bad input detected by the CLI itself (message is one line)."""


def check_data_available(cfg: ExperimentConfig) -> None:
    """Fail before Ray starts when the dataset cannot be found and may not be downloaded."""
    if cfg.data.download:
        return
    if locate_dataset(cfg.data.dataset, cfg.data.data_dir or None) is None:
        try:  # torchvision's own folder layout (e.g. CIFAR-10) in data-dir
            from fedprune.data import load_dataset

            load_dataset(cfg.data.dataset, cfg.data.data_dir or None, False)
        except DatasetNotFound as err:
            raise UsageError(str(err)) from None


def prepare_run_dir(cfg: ExperimentConfig, out: str | None, resume: str | None) -> tuple[ExperimentConfig, Path]:
    """Pick the results folder and write the resolved config there; never overwrite a run."""
    from fedprune.config import config_from_dict
    import dataclasses

    if resume:
        run_dir = Path(resume).expanduser().resolve()
        if not (run_dir / CONFIG_FILE).is_file():
            raise UsageError(f"--resume {resume}: no {CONFIG_FILE} there (not a fedprune run folder)")
        if (run_dir / SUMMARY_FILE).is_file():
            raise UsageError(f"--resume {resume}: this run already finished ({SUMMARY_FILE} exists)")
        cfg = load_config(run_dir / CONFIG_FILE)
    else:
        base = Path(out) if out else Path(cfg.run.out_dir or Path("results") / cfg.run.name)
        run_dir = base.expanduser().resolve()
        if run_dir.exists() and any(p for p in run_dir.iterdir() if p.name != ".flwr"):
            raise UsageError(f"results folder {run_dir} is not empty; pass another --out "
                             f"(or --resume {run_dir} to continue an interrupted run)")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(run_dir)))
    cfg = config_from_dict(to_dict(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dumps_toml(to_dict(cfg)))
    return cfg, run_dir


def _progress(run_dir: Path, total: int):
    """A poll function that redraws a rich progress bar from ``metrics.jsonl``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=False, disable=not console.is_terminal)
    task = progress.add_task("starting Flower + Ray ...", total=total)
    seen = {"n": 0}

    def poll() -> None:
        rows = read_metrics(run_dir)
        if len(rows) != seen["n"]:
            seen["n"] = len(rows)
            r = rows[-1]
            desc = (f"acc {r.get('accuracy', 0):.4f}  params {r.get('params_alive', 0):,}  "
                    f"clients {r.get('aggregated', 0)}/{r.get('sampled', 0)}  "
                    f"failures {len(r.get('failures', {}))}")
            progress.update(task, completed=len(rows), description=desc)
            if not console.is_terminal:
                print(f"round {len(rows)}/{total}: {desc}", file=sys.stderr, flush=True)

    return progress, poll


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprune.launch import SimulationSpec, run_flower_simulation

    if args.resume and args.config:
        raise UsageError("give either CONFIG or --resume RUN_DIR, not both")
    if not args.resume and not args.config:
        raise UsageError("simulate needs a CONFIG file (or --resume RUN_DIR)")
    cfg = load_config(args.config) if args.config else None
    if cfg is not None:
        check_data_available(cfg)
        check_budgets(cfg)
    cfg, run_dir = prepare_run_dir(cfg or ExperimentConfig(), args.out, args.resume)
    check_data_available(cfg)
    spec = SimulationSpec(config_file=run_dir / CONFIG_FILE, out_dir=run_dir,
                          num_supernodes=cfg.fleet.num_clients, client_cpus=cfg.simulation.client_cpus,
                          client_gpus=cfg.simulation.client_gpus, ray_address=cfg.simulation.ray_address)
    print(f"fedprune: running {cfg.run.name!r} ({cfg.fleet.num_clients} clients, "
          f"{cfg.run.num_rounds} rounds, {cfg.model.name}, methods {cfg.methods.enabled}) -> {run_dir}",
          flush=True)
    t0 = time.perf_counter()
    progress, poll = _progress(run_dir, cfg.run.num_rounds)
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
    print(f"fedprune: done in {time.perf_counter() - t0:.1f} s: final accuracy {s['final_accuracy']:.4f}, "
          f"{s['final_params']:,} params ({s['compression']:.1f}x smaller), neurons {s['neurons_per_layer']}")
    print(f"fedprune: results in {run_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedprune.train.centralized import run_centralized_experiment

    cfg = load_config(args.config)
    check_data_available(cfg)
    check_budgets(cfg)
    out = Path(args.out or Path("results") / f"{cfg.run.name}-centralized").resolve()
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"results folder {out} is not empty; pass another --out")
    summary = run_centralized_experiment(cfg, out, epochs=args.epochs)
    print(json.dumps({k: summary[k] for k in ("final_accuracy", "final_params", "compression")
                      if k in summary}))
    print(f"fedprune: results in {out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.sync_pyproject:
        from fedprune.config import sync_pyproject
        changed = sync_pyproject(args.sync_pyproject)
        print(f"{args.sync_pyproject}: {'updated' if changed else 'already in sync'}")
        return 0
    if args.check:
        load_config(args.check)
        print(f"{args.check}: ok")
        return 0
    print(dumps_toml(to_dict(ExperimentConfig())), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedprune",
                                description="Federated edge training under memory budgets (Flower + PyTorch).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a federated simulation (Flower + Ray)")
    s.add_argument("config", nargs="?", help="experiment TOML file")
    s.add_argument("--out", help="results folder (default: results/<run.name>)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("train", help="centralized training with the same trainer (no federation)")
    t.add_argument("config")
    t.add_argument("--out", help="results folder")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default: rounds x local epochs)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print every config key with its default, or --check a file")
    c.add_argument("--check", metavar="FILE")
    c.add_argument("--sync-pyproject", metavar="PYPROJECT", nargs="?", const="pyproject.toml",
                   help="rewrite [tool.flwr.app.config] of PYPROJECT from the schema's defaults")
    c.set_defaults(func=cmd_config)

    _add_optional_commands(sub)
    return p


def _add_optional_commands(sub: Any) -> None:
    """Commands defined in their own modules (sweeps, reports)."""
    try:
        from fedprune.sweep import add_sweep_parser
        add_sweep_parser(sub)
    except ImportError:
        pass
    try:
        from fedprune.report import add_report_parser
        add_report_parser(sub)
    except ImportError:
        pass
    try:
        from fedprune.deploy import add_deploy_parser
        add_deploy_parser(sub)
    except ImportError:
        pass


def _terminate_gracefully(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # unwinds `finally` blocks: the SuperLink and Ray get stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedprune`` console script."""
    import signal

    signal.signal(signal.SIGTERM, _terminate_gracefully)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError, DatasetNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: completed rounds are checkpointed; continue with "
              "`fedprune simulate --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
