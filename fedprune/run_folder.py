"""A run's results folder before the run: reading and checking its config, choosing the folder,
writing the resolved config, and the read-only checks that ``--resume`` makes.

Every function here raises a one-line error (``UsageError``, ``ConfigError``, ``DatasetNotFound``,
``RunFolderBusy``) and writes nothing before all checks have passed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedprune.config import ConfigError, ExperimentConfig, config_from_dict, dumps_toml, load_config, to_dict
from fedprune.data import DatasetNotFound
from fedprune.errors import UsageError
from fedprune.preflight import preflight
from fedprune.results import CONFIG_FILE, SUMMARY_FILE, atomic_write_text
from fedprune.run_lock import LAUNCH_LOCK, WRITER_LOCK, ensure_unlocked

NOT_RESULTS = {".flwr", LAUNCH_LOCK, WRITER_LOCK}  # may be in a results folder that holds no run


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


def prepare_run_dir(cfg: ExperimentConfig, out: str | None, resume: str | None) -> tuple[ExperimentConfig, Path]:
    """Pick the results folder and write the resolved config there; never overwrite a run."""
    if resume:
        run_dir = Path(resume).expanduser().resolve()
        if not (run_dir / CONFIG_FILE).is_file():
            raise UsageError(f"--resume {resume}: no {CONFIG_FILE} there (not a fedprune run folder)")
        if (run_dir / SUMMARY_FILE).is_file():
            raise UsageError(f"--resume {resume}: this run already finished ({SUMMARY_FILE} exists)")
        cfg = load_config(run_dir / CONFIG_FILE)
    else:
        run_dir = new_run_dir(cfg, out)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(run_dir)))
    cfg = config_from_dict(to_dict(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dumps_toml(to_dict(cfg)))
    return cfg, run_dir


def new_run_dir(cfg: ExperimentConfig, out: str | None) -> Path:
    """The results folder a new run will use (checked free by ``prepare_run_dir``, created here)."""
    base = Path(out) if out else Path(cfg.run.out_dir or Path("results") / cfg.run.name)
    run_dir = base.expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"results folder {run_dir} is a file, not a folder; pass another --out")
    if run_dir.exists() and any(p for p in run_dir.iterdir() if p.name not in NOT_RESULTS):
        raise UsageError(f"results folder {run_dir} is not empty; pass another --out "
                         f"(or --resume {run_dir} to continue an interrupted run)")
    return run_dir


def resume_target(resume: str) -> tuple[Path, ExperimentConfig]:
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


