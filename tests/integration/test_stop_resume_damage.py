"""``--resume`` on a damaged run folder: one line naming the file, exit 2, every file as it was.

The folders are built without a simulation: the resolved config, a checkpoint of the config's own
global model and a ``metrics.jsonl`` of consecutive rounds, then damaged one way per test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

from fedprune.checkpoint import save_checkpoint
from fedprune.config import config_from_dict, dumps_toml, to_dict
from fedprune.global_model import GlobalModel
from fedprune.resume import ResumeError, resume_state
from fedprune.results import write_metrics

ROUNDS_DONE = 3


def make_run(run_dir: Path, rounds_done: int = ROUNDS_DONE, model: str = "lenet300"):
    cfg = config_from_dict({"run": {"name": "damaged", "num-rounds": 6, "out-dir": str(run_dir)},
                            "model": {"name": model}, "fleet": {"num-clients": 2, "min-clients": 2}})
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    gm = GlobalModel(cfg)
    save_checkpoint(run_dir, rounds_done, gm.dense, gm.mask.to_arrays())
    write_metrics(run_dir, [{"round": r, "accuracy": 0.5 + r / 100, "loss": 1.0 / r}
                            for r in range(1, rounds_done + 1)])
    return cfg


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedprune.cli", "simulate", "--resume", str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_refused(run_dir: Path, before: dict[str, bytes], names: str) -> None:
    proc = resume(run_dir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert snapshot(run_dir) == before  # byte for byte, and no file added or removed


def test_corrupt_checkpoint_is_refused_before_anything_starts(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    ck = run / "checkpoint.npz"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    assert_refused(run, snapshot(run), "checkpoint.npz")


def test_missing_checkpoint_on_an_unfinished_run_keeps_the_metrics(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    (run / "checkpoint.npz").unlink()
    before = snapshot(run)
    assert_refused(run, before, "checkpoint.npz")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == ROUNDS_DONE


def test_partly_cut_metrics_is_refused_not_emptied(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    m = run / "metrics.jsonl"
    text = m.read_bytes()
    m.write_bytes(text[: text.index(b"\n") + 12])  # round 1 whole, round 2 cut mid-line
    assert_refused(run, snapshot(run), "metrics.jsonl")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    make_run(run)
    make_run(other, model="lenet5")
    (run / "checkpoint.npz").write_bytes((other / "checkpoint.npz").read_bytes())
    assert_refused(run, snapshot(run), "checkpoint.npz")


def test_resume_state_keeps_every_round_of_a_healthy_folder(tmp_path):
    run = tmp_path / "run"
    cfg = make_run(run)
    state = resume_state(run, cfg)
    assert state.first_round == ROUNDS_DONE + 1 and [r["round"] for r in state.rows] == [1, 2, 3]
    # killed between the round's metrics row and its checkpoint: the extra row is recomputed
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 4, "accuracy": 0.6}) + "\n")
    state = resume_state(run, cfg)
    assert state.first_round == 4 and len(state.rows) == 3


@pytest.mark.parametrize("rows", [[1, 3], [2], [1, 2, 3, 4, 5]])
def test_resume_state_refuses_rounds_that_do_not_match(tmp_path, rows):
    run = tmp_path / "run"
    cfg = make_run(run)
    write_metrics(run, [{"round": r} for r in rows])
    with pytest.raises(ResumeError, match="metrics.jsonl|checkpoint.npz"):
        resume_state(run, cfg)


def test_a_fresh_folder_without_rounds_resumes_from_round_one(tmp_path):
    run = tmp_path / "run"
    cfg = make_run(run)
    (run / "checkpoint.npz").unlink()
    (run / "metrics.jsonl").unlink()
    state = resume_state(run, cfg)
    assert state.first_round == 1 and state.checkpoint is None and state.rows == []
