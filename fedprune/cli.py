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
from fedprune.data import DatasetNotFound
from fedprune.launch import LaunchError
from fedprune.preflight import preflight
from fedprune.results import CONFIG_FILE, SUMMARY_FILE, atomic_write_text, read_metrics
from fedprune.run_lock import LAUNCH_LOCK, WRITER_LOCK, RunFolderBusy, RunLock, ensure_unlocked

EXIT_BAD_INPUT = 2
NOT_RESULTS = {".flwr", LAUNCH_LOCK, WRITER_LOCK}  # may be in a results folder that holds no run


class UsageError(Exception):
    """Bad input detected by the CLI itself (message is one line)."""


def read_config(path: str | Path) -> ExperimentConfig:
    """The config in ``path``; ``UsageError`` naming the file when it is not readable TOML text."""
    try:
        return load_config(path)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text (UTF-8 TOML) file") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot be read ({err.strerror or err})") from None


def validate_for_run(cfg: ExperimentConfig, source: str | Path, epochs: int | None = None) -> None:
    """Everything a run checks before it starts (``fedprune.preflight``): ranges, data, budgets.

    Any other invalid value (``ValueError``, e.g. a budget of ``inf``) becomes a ``UsageError``
    naming ``source``.
    """
    try:
        preflight(cfg, epochs=epochs)
    except (ConfigError, DatasetNotFound):
        raise
    except (ValueError, OverflowError) as err:
        raise UsageError(f"{source}: {err}") from None


def check_data_available(cfg: ExperimentConfig) -> None:
    """Fail before Ray starts when the dataset cannot be found and may not be downloaded."""
    from fedprune.preflight import check_data_available as _check

    _check(cfg)


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
        run_dir = _new_run_dir(cfg, out)
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


def _resume_target(resume: str) -> tuple[Path, ExperimentConfig]:
    """The run folder to resume and its config, checked read-only (files, lock, checkpoint, metrics).

    Raises ``UsageError``/``ConfigError``/``RunFolderBusy`` with one line naming the file; nothing
    in the folder is written or removed.
    """
    from fedprune.resume import ResumeError, resume_state

    run_dir = Path(resume).expanduser().resolve()
    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"--resume {resume}: no {CONFIG_FILE} there (not a fedprune run folder)")
    if (run_dir / SUMMARY_FILE).is_file():
        raise UsageError(f"--resume {resume}: this run already finished ({SUMMARY_FILE} exists)")
    ensure_unlocked(run_dir)
    cfg = read_config(run_dir / CONFIG_FILE)
    validate_for_run(cfg, run_dir / CONFIG_FILE)
    try:
        resume_state(run_dir, cfg)
    except ResumeError as err:
        raise UsageError(f"cannot resume: {err}") from None
    return run_dir, cfg


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        raise UsageError("give either CONFIG or --resume RUN_DIR, not both")
    if not args.resume and not args.config:
        raise UsageError("simulate needs a CONFIG file (or --resume RUN_DIR)")
    if args.resume:
        run_dir, cfg = _resume_target(args.resume)
    else:
        cfg = read_config(args.config)
        validate_for_run(cfg, args.config)
        run_dir = None
    with RunLock(run_dir or _new_run_dir(cfg, args.out), LAUNCH_LOCK):
        cfg, run_dir = prepare_run_dir(cfg, args.out, args.resume)
        args.run_dir = run_dir  # named by the interruption message
        return _simulate(cfg, run_dir)


def _new_run_dir(cfg: ExperimentConfig, out: str | None) -> Path:
    """The results folder a new run will use (checked free by ``prepare_run_dir``, created here)."""
    base = Path(out) if out else Path(cfg.run.out_dir or Path("results") / cfg.run.name)
    run_dir = base.expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"results folder {run_dir} is a file, not a folder; pass another --out")
    if run_dir.exists() and any(p for p in run_dir.iterdir() if p.name not in NOT_RESULTS):
        raise UsageError(f"results folder {run_dir} is not empty; pass another --out "
                         f"(or --resume {run_dir} to continue an interrupted run)")
    return run_dir


def _simulate(cfg: ExperimentConfig, run_dir: Path) -> int:
    """Launch the simulation in ``run_dir`` (whose launch lock the caller holds); report its end."""
    from fedprune.launch import SimulationSpec, run_flower_simulation

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
    if s.get("rounds_aggregated") == 0:
        print(f"error: no client trained in any of the {s.get('rounds')} rounds (the model is the initial "
              f"one); see failures in {run_dir / 'metrics.jsonl'}", file=sys.stderr)
        return 1
    print(f"fedprune: done in {time.perf_counter() - t0:.1f} s: final accuracy {s['final_accuracy']:.4f}, "
          f"{s['final_params']:,} params ({s['compression']:.1f}x smaller), neurons {s['neurons_per_layer']}")
    print(f"fedprune: results in {run_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedprune.centralized import run_centralized

    cfg = read_config(args.config)
    validate_for_run(cfg, args.config, epochs=args.epochs)
    out = Path(args.out or Path("results") / f"{cfg.run.name}-centralized").resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"results folder {out} is a file, not a folder; pass another --out")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"results folder {out} is not empty; pass another --out")
    summary = run_centralized(cfg, out, epochs=args.epochs)
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
        validate_for_run(read_config(args.check), args.check)  # exactly what simulate and train check
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
        from fedprune.study.report import add_report_parser
        add_report_parser(sub)
    except ImportError:
        pass
    try:
        from fedprune.deploy import add_deploy_parser
        add_deploy_parser(sub)
    except ImportError:
        pass


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
    import signal

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


if __name__ == "__main__":  # run as fedprune.cli, so the errors other modules raise are ours
    from fedprune.cli import main as _main

    sys.exit(_main())
