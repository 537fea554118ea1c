"""What a resumed run continues from, checked before anything starts and before any file is written.

``resume_state`` reads a run folder's ``checkpoint.npz`` and ``metrics.jsonl`` and returns the
checkpoint and the rounds to keep, or raises ``ResumeError`` (one line naming the file) when they
cannot be continued from: a corrupt checkpoint, tensors that do not fit the config's model, a metrics
line that does not parse, rounds that are not 1, 2, ..., or rounds recorded with no checkpoint.
It only reads: a refused resume leaves every file as it was.

The server writes a round's metrics row before its checkpoint, so a run killed between the two
writes has one more row than its checkpoint; that row is dropped on resume and the round recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprune.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointError, load_checkpoint
from fedprune.config import ExperimentConfig
from fedprune.results import METRICS_FILE


class ResumeError(ValueError):
    """A run folder cannot be resumed as it is (message is one line naming the file)."""


@dataclass
class ResumeState:
    """The checkpoint to continue from (``None``: start at round 1) and the rounds to keep."""

    checkpoint: Checkpoint | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_round(self) -> int:
        return 1 if self.checkpoint is None else self.checkpoint.round + 1


def read_metrics_strict(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of ``metrics.jsonl``; ``ResumeError`` for a line that does not parse or a gap."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ResumeError(f"{path}: line {i} is not a JSON object (the file is damaged)") from None
        if not isinstance(row, dict) or row.get("round") != len(rows) + 1:
            got = row.get("round") if isinstance(row, dict) else None
            raise ResumeError(f"{path}: line {i} records round {got!r}, expected {len(rows) + 1}")
        rows.append(row)
    return rows


def _check_fits_model(ckpt: Checkpoint, cfg: ExperimentConfig, path: Path) -> None:
    from fedprune.global_model import GlobalModel

    try:
        GlobalModel(cfg).load_state(ckpt.dense, ckpt.mask)
    except ValueError as err:
        raise ResumeError(f"{path}: does not fit the config's model {cfg.model.name!r} ({err})") from None


def resume_state(run_dir: str | Path, cfg: ExperimentConfig) -> ResumeState:
    """The validated state to resume ``run_dir`` from; ``ResumeError`` if it cannot be continued."""
    run_dir = Path(run_dir)
    rows = read_metrics_strict(run_dir)
    ck_path = run_dir / CHECKPOINT_FILE
    try:
        ckpt = load_checkpoint(run_dir)
    except CheckpointError as err:
        raise ResumeError(str(err)) from None
    if ckpt is None:
        if rows:
            raise ResumeError(f"{ck_path}: missing, but {run_dir / METRICS_FILE} records {len(rows)} "
                              f"rounds; restore the checkpoint or start a new run")
        return ResumeState(None, [])
    if len(rows) not in (ckpt.round, ckpt.round + 1):
        raise ResumeError(f"{ck_path}: holds round {ckpt.round} but {run_dir / METRICS_FILE} records "
                          f"{len(rows)} rounds")
    if ckpt.round > cfg.run.num_rounds:
        raise ResumeError(f"{ck_path}: holds round {ckpt.round}, past the config's "
                          f"num-rounds = {cfg.run.num_rounds}")
    _check_fits_model(ckpt, cfg, ck_path)
    return ResumeState(ckpt, rows[: ckpt.round])
