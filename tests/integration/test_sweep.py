"""``fedprune sweep``: grid expansion, resumability (kill -9 midway, restart), failures, locking.

The resume tests inject a fake runner (``fake_runner`` below: it writes rounds, a checkpoint marker
and ``summary.json`` like the real server app does, and logs each call), so they take seconds; one
real two-run sweep through Flower + Ray is marked ``slow``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support import ROOT

from fedprune.config import ConfigError
from fedprune.results import read_metrics, write_json, write_metrics
from fedprune.study.sweep import (CHECKPOINT_FILE, LOCK_FILE, MANIFEST_FILE, Sweep, SweepError, expand,
                            load_sweep, run_ids, run_status)

BASE = """
[run]
name = "base"
num-rounds = 3
[data]
max-samples-per-client = 32
[memory]
budget = "constant"
budget-mb = 4.0
[fleet]
num-clients = 2
min-clients = 1
"""
GRID = """
[sweep]
name = "t"
base = "base.toml"
[sweep.set]
"train.lr" = 0.01
[sweep.grid]
"run.seed" = [0, 1]
"methods.enabled" = ["none", "dynhp+neq"]
"memory.budget-mb" = [2.0, 8.5]
"""


def fake_runner(cfg, run_dir, on_poll):
    """Stand-in for Flower: resumes from metrics.jsonl when a checkpoint exists, like the server app."""
    rows = read_metrics(run_dir) if (run_dir / CHECKPOINT_FILE).is_file() else []
    log = os.environ.get("FAKE_SWEEP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{run_dir.name} start {len(rows)}\n")
    sleep = float(os.environ.get("FAKE_SWEEP_SLEEP", "0"))
    if os.environ.get("FAKE_SWEEP_FAIL") == run_dir.name:
        return 1
    for rnd in range(len(rows) + 1, cfg.run.num_rounds + 1):
        deadline = time.monotonic() + sleep
        while True:
            on_poll()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        rows.append({"round": rnd, "accuracy": 0.1 * rnd, "clients": []})
        write_metrics(run_dir, rows)
        (run_dir / CHECKPOINT_FILE).write_bytes(str(rnd).encode())
    write_json(run_dir / "summary.json", {"final_accuracy": 0.5 + cfg.run.seed / 100,
                                          "final_params": 100, "rounds": len(rows)})
    return 0


@pytest.fixture
def sweep_file(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    f = tmp_path / "grid.toml"
    f.write_text(GRID)
    return f


def _log_lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_grid_expands_to_validated_configs_with_readable_ids(sweep_file):
    spec = load_sweep(sweep_file)
    plans = expand(spec)
    assert len(plans) == 8
    assert plans[0].id == "seed=0_enabled=none_budget-mb=2"
    assert plans[-1].id == "seed=1_enabled=dynhp+neq_budget-mb=8.5"
    assert len({p.id for p in plans}) == 8
    for p in plans:
        assert p.config.train.lr == 0.01 and p.config.run.name == p.id
        assert p.config.memory.budget_mb == p.overrides["memory.budget-mb"]
        assert p.config.methods.enabled == p.overrides["methods.enabled"]
    assert [p.id for p in expand(load_sweep(sweep_file))] == [p.id for p in plans]  # stable


def test_ids_disambiguate_same_leaf_names():
    ids = run_ids(["methods.dynhp.lr", "train.lr"], [{"methods.dynhp.lr": 1, "train.lr": 0.5}])
    assert ids == ["methods-dynhp-lr=1_train-lr=0.5"]
    assert run_ids(["a.b"], [{"a.b": "x/y"}, {"a.b": "x y"}]) == ["b=x_y", "b=x_y-1"]


@pytest.mark.parametrize("grid, fragment", [
    ('"train.lrr" = [0.1]', "train.lrr: unknown key"),
    ('"train.lr" = []', "expected a non-empty list"),
    ('"train.lr" = [0.1, 0.1]', "values repeat"),
    ('"memory.budget-mb" = [-1.0]', "memory.budget-mb = -1.0"),
    ('"fleet.devices" = ["pi9:2"]', "unknown profile 'pi9'"),
])
def test_bad_grids_fail_before_anything_runs(tmp_path, grid, fragment):
    (tmp_path / "base.toml").write_text(BASE)
    f = tmp_path / "s.toml"
    f.write_text(f'[sweep]\nbase = "base.toml"\n[sweep.grid]\n{grid}\n')
    with pytest.raises(ConfigError) as err:
        expand(load_sweep(f))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_base_and_unknown_keys(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[sweep]\nbase = "nope.toml"\n')
    with pytest.raises(SweepError, match="sweep.base = 'nope.toml'"):
        load_sweep(f)
    f.write_text('[sweep]\nbase = "nope.toml"\nparalel = 2\n')
    with pytest.raises(SweepError, match="sweep.paralel: unknown key"):
        load_sweep(f)


def test_finished_runs_are_never_redone(sweep_file, tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    monkeypatch.setenv("FAKE_SWEEP_LOG", str(log))
    out = tmp_path / "out"
    res = Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    assert len(res.done) == 8 and not res.failed and not res.skipped
    assert len(_log_lines(log)) == 8
    res2 = Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    assert res2.done == [] and len(res2.skipped) == 8
    assert len(_log_lines(log)) == 8  # nothing ran again
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["counts"] == {"done": 8}
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in manifest["runs"])
    assert (out / "sweep.toml").is_file() and (out / "base.toml").is_file()


def test_a_subset_sweep_file_keeps_the_finished_runs_of_the_full_one(sweep_file, tmp_path, monkeypatch):
    """One seed at a time into the same folder: the manifest (what a report reads) keeps both."""
    log = tmp_path / "log.txt"
    monkeypatch.setenv("FAKE_SWEEP_LOG", str(log))
    out = tmp_path / "out"
    seed0 = tmp_path / "seed0.toml"
    seed0.write_text(GRID.replace('"run.seed" = [0, 1]', '"run.seed" = [0]'))
    seed1 = tmp_path / "seed1.toml"
    seed1.write_text(GRID.replace('"run.seed" = [0, 1]', '"run.seed" = [1]'))
    assert len(Sweep(load_sweep(seed0), out, runner=fake_runner, quiet=True).run().done) == 4
    assert len(Sweep(load_sweep(seed1), out, runner=fake_runner, quiet=True).run().done) == 4
    runs = json.loads((out / MANIFEST_FILE).read_text())["runs"]
    assert len(runs) == 8 and all(r["status"] == "done" for r in runs)
    assert sum(bool(r.get("outside_plan")) for r in runs) == 4
    res = Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()  # the full file
    assert res.done == [] and len(res.skipped) == 8 and len(_log_lines(log)) == 8
    assert not any(r.get("outside_plan") for r in json.loads((out / MANIFEST_FILE).read_text())["runs"])


def test_sweep_killed_midway_resumes_where_it_stopped(sweep_file, tmp_path):
    """SIGKILL the whole sweep during its third run, restart it, and check nothing is redone."""
    log = tmp_path / "log.txt"
    out = tmp_path / "out"
    env = dict(os.environ, FAKE_SWEEP_LOG=str(log), FAKE_SWEEP_SLEEP="0.3",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "integration"), str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "fedprune.cli", "sweep", str(sweep_file), "--out", str(out),
                             "--runner", "test_sweep:fake_runner", "--quiet"],
                            env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    plans = expand(load_sweep(sweep_file))
    third = out / "runs" / plans[2].id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (third / CHECKPOINT_FILE).is_file():
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    statuses = [run_status(out / "runs" / p.id) for p in plans]
    assert statuses[:2] == ["done", "done"] and statuses[2] == "resumable"
    assert set(statuses[3:]) <= {"new"}
    rounds_before = len(read_metrics(third))

    os.environ["FAKE_SWEEP_LOG"] = str(log)
    try:
        res = Sweep(load_sweep(out / "sweep.toml", base_override=out / "base.toml"), out,
                    runner=fake_runner, quiet=True).run()
    finally:
        del os.environ["FAKE_SWEEP_LOG"]
    assert sorted(res.skipped) == sorted(p.id for p in plans[:2])
    assert len(res.done) == 6 and not res.failed
    starts = [line.split() for line in _log_lines(log)]
    per_run = {p.id: [int(s[2]) for s in starts if s[0] == p.id] for p in plans}
    assert per_run[plans[0].id] == [0] and per_run[plans[1].id] == [0]  # never redone
    assert per_run[plans[2].id] == [0, rounds_before]  # resumed from its checkpoint
    assert all(per_run[p.id] == [0] for p in plans[3:])
    assert all(run_status(out / "runs" / p.id) == "done" for p in plans)
    assert [r["round"] for r in read_metrics(third)] == [1, 2, 3]


def test_unfinished_run_without_checkpoint_restarts_clean(sweep_file, tmp_path, monkeypatch):
    spec = load_sweep(sweep_file)
    out = tmp_path / "out"
    first = out / "runs" / expand(spec)[0].id
    first.mkdir(parents=True)
    (first / "flwr.log").write_text("killed before round 1\n")
    (first / "junk").write_text("x")
    (first / "config.toml").write_text(BASE.replace("num-rounds = 3", "num-rounds = 9"))  # other settings
    log = tmp_path / "log.txt"
    monkeypatch.setenv("FAKE_SWEEP_LOG", str(log))
    res = Sweep(spec, out, runner=fake_runner, quiet=True).run()
    assert len(res.done) == 8 and not (first / "junk").exists()
    assert len(read_metrics(first)) == 3  # restarted with the plan's settings


def test_failed_runs_do_not_stop_the_sweep_and_are_retried(sweep_file, tmp_path, monkeypatch):
    spec = load_sweep(sweep_file)
    bad = expand(spec)[1].id
    monkeypatch.setenv("FAKE_SWEEP_FAIL", bad)
    out = tmp_path / "out"
    res = Sweep(spec, out, runner=fake_runner, quiet=True).run()
    assert res.failed == [bad] and len(res.done) == 7
    entry = next(r for r in json.loads((out / MANIFEST_FILE).read_text())["runs"] if r["id"] == bad)
    assert entry["status"] == "failed" and "exit code 1" in entry["error"]
    monkeypatch.delenv("FAKE_SWEEP_FAIL")
    res = Sweep(spec, out, runner=fake_runner, quiet=True).run()
    assert res.done == [bad] and len(res.skipped) == 7
    entry = next(r for r in json.loads((out / MANIFEST_FILE).read_text())["runs"] if r["id"] == bad)
    assert entry["status"] == "done" and entry["attempts"] == 2


def test_changed_sweep_file_is_refused_for_existing_runs(sweep_file, tmp_path):
    out = tmp_path / "out"
    Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    sweep_file.write_text(GRID.replace('"train.lr" = 0.01', '"train.lr" = 0.02'))
    with pytest.raises(SweepError, match="train.lr"):
        Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    # extending the grid keeps every finished run
    sweep_file.write_text(GRID.replace('"run.seed" = [0, 1]', '"run.seed" = [0, 1, 2]'))
    res = Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    assert len(res.skipped) == 8 and len(res.done) == 4


def test_two_sweeps_cannot_share_a_folder(sweep_file, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SweepError, match="another fedprune sweep is running"):
            Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()


def test_sigterm_stops_the_sweep_cleanly(sweep_file, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, FAKE_SWEEP_SLEEP="0.5",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "integration"), str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "fedprune.cli", "sweep", str(sweep_file), "--out", str(out),
                             "--runner", "test_sweep:fake_runner", "--parallel", "2"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(out.glob("runs/*/metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert b"resume with: fedprune sweep" in err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert "interrupted" in manifest["counts"]
    assert "running" not in manifest["counts"]


def test_cli_dry_run_and_errors(sweep_file, tmp_path, capsys):
    from fedprune.cli import main

    assert main(["sweep", str(sweep_file), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and lines[0].startswith("new ")
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "error: sweep file" in capsys.readouterr().err


def untrained_runner(cfg, run_dir, on_poll):
    """A run in which every client failed every round: the server aggregated nothing."""
    rows = [{"round": r, "aggregated": 0, "failures": {"0": "does not fit its memory budget"}}
            for r in range(1, cfg.run.num_rounds + 1)]
    write_metrics(run_dir, rows)
    write_json(run_dir / "summary.json", {"final_accuracy": 0.1, "final_params": 100,
                                          "rounds": len(rows), "rounds_aggregated": 0})
    return 0


def test_out_refuses_a_folder_that_is_not_a_sweep(sweep_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not a sweep folder"):
        Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SweepError, match="is a file"):
        Sweep(load_sweep(sweep_file), tmp_path / "afile", runner=fake_runner, quiet=True).run()


def test_out_refuses_another_sweeps_folder(sweep_file, tmp_path, capsys):
    from fedprune.cli import main

    out = tmp_path / "out"
    Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    before = sorted(str(p) for p in out.rglob("*"))
    other = tmp_path / "other.toml"
    other.write_text(GRID.replace('name = "t"', 'name = "u"'))
    assert main(["sweep", str(other), "--out", str(out), "--quiet",
                 "--runner", "tests.integration.test_sweep:fake_runner"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "another sweep" in err and "\n" not in err
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_a_sweep_where_no_client_trained_ends_non_zero(sweep_file, tmp_path, capsys):
    from fedprune.cli import main

    code = main(["sweep", str(sweep_file), "--out", str(tmp_path / "o"), "--quiet",
                 "--runner", "tests.integration.test_sweep:untrained_runner"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no client trained in any round of 8 run(s)")


def test_a_sweep_whose_clients_trained_ends_zero(sweep_file, tmp_path):
    from fedprune.cli import main

    assert main(["sweep", str(sweep_file), "--out", str(tmp_path / "o"), "--quiet",
                 "--runner", "tests.integration.test_sweep:fake_runner"]) == 0


def _data_available():
    from fedprune.data import locate_dataset

    return locate_dataset("fashion-mnist") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _data_available(), reason="Fashion-MNIST not installed")
@pytest.mark.skipif(os.environ.get("FEDPRUNE_SWEEP_E2E") != "1",
                    reason="set FEDPRUNE_SWEEP_E2E=1: two real Flower + Ray runs take 1-3 min on 2 cores")
def test_real_two_run_sweep_end_to_end(tmp_path):
    """Two tiny federated runs through Flower + Ray; a restart afterwards runs nothing."""
    (tmp_path / "base.toml").write_text("""
[run]
num-rounds = 1
[data]
max-samples-per-client = 24
[train]
batch-size = 8
min-batch = 8
[memory]
budget = "constant"
budget-mb = 1.0
[fleet]
num-clients = 2
min-clients = 1
devices = "pi-zero-2w:1, pi4-2gb:1"
budget-scale = 0.05
""")
    f = tmp_path / "s.toml"
    f.write_text('[sweep]\nbase = "base.toml"\n[sweep.grid]\n"methods.enabled" = ["none", "dynhp"]\n')
    out = tmp_path / "out"
    res = Sweep(load_sweep(f), out, quiet=True).run()
    logs = "\n".join((p / "flwr.log").read_text()[-3000:] for p in sorted(out.glob("runs/*"))
                     if (p / "flwr.log").is_file())
    assert len(res.done) == 2, (res, logs)
    for rid in res.done:
        rows = read_metrics(out / "runs" / rid)
        assert len(rows) == 1
        budgets = sorted(c["budget_bytes"] for c in rows[0]["clients"])
        assert budgets[0] < budgets[1]  # the Pi Zero got the smaller budget
    res2 = Sweep(load_sweep(f), out, quiet=True).run()
    assert res2.done == [] and len(res2.skipped) == 2


def test_a_simulate_run_where_no_client_trained_ends_non_zero(tmp_path, monkeypatch, capsys):
    """The CLI reads the server's summary: every round aggregated nothing -> exit 1, one line."""
    import fedprune.commands.simulate
    from fedprune.cli import main
    from fedprune.server_run import rounds_aggregated

    rows = [{"round": 1, "aggregated": 0}, {"round": 2, "aggregated": 0}]
    assert rounds_aggregated(rows) == 0 and rounds_aggregated(rows + [{"aggregated": 3}]) == 1

    def fake_simulation(spec, on_poll=None):
        write_metrics(spec.out_dir, rows)
        write_json(spec.out_dir / "summary.json", {"final_accuracy": 0.1, "final_params": 10, "compression": 1.0,
                                                   "neurons_per_layer": "", "rounds": 2,
                                                   "rounds_aggregated": rounds_aggregated(rows)})
        return 0

    monkeypatch.setattr(fedprune.commands.simulate, "run_flower_simulation", fake_simulation)
    (tmp_path / "exp.toml").write_text(BASE.replace("budget-mb = 4.0", "budget-mb = 64.0"))
    assert main(["simulate", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("error: no client trained in any of the 2 rounds")]
    assert len(err) == 1


def test_the_folder_copy_of_the_sweep_file_names_no_path_of_this_machine(sweep_file, tmp_path):
    sweep_file.write_text(GRID.replace('base = "base.toml"', f'base = "{tmp_path / "base.toml"}"\nout-dir = "{tmp_path}/x"'))
    out = tmp_path / "out"
    Sweep(load_sweep(sweep_file), out, runner=fake_runner, quiet=True).run()
    copy = (out / "sweep.toml").read_text()
    assert str(tmp_path) not in copy and 'base = "base.toml"' in copy and 'out-dir = ""' in copy
