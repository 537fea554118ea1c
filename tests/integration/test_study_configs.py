"""The converged study's sweeps: what each budget level binds, and the sizing arithmetic."""

import pytest
from support import ROOT

from fedprune.config import config_from_dict, load_config, to_dict
from fedprune.data import dataset_info
from fedprune.fleet import client_profile
from fedprune.global_model import GlobalModel
from fedprune.memory import OptimizerSpec
from fedprune.methods.submodel import trains_at_batch
from fedprune.study.sizing import sweep_size
from fedprune.study.sweep import expand, load_sweep

CONFIGS = ROOT / "sim_configs"
PARTS = {"upper": 2, "upper_dirichlet": 3, "iid_tight": 10, "dirichlet": 12, "iid_middle": 10, "generous": 2}
#: Dirichlet at the tightest budget runs a third seed (its margins were the size of two seeds' spread)
SEEDS = {part: {0, 1, 2} if part in ("upper_dirichlet", "dirichlet") else {0, 1} for part in PARTS}
DIRICHLET_ROUNDS = 30  # the Dirichlet parts (FedAvg, the baselines, DynHP quorum) train longer
ROUNDS = {part: DIRICHLET_ROUNDS if "dirichlet" in part else None for part in PARTS}


@pytest.fixture(scope="module")
def base():
    return load_config(CONFIGS / "study_converged.toml")


def dense_fits(cfg, scale, device_pid, batch):
    tree = to_dict(cfg)
    tree["fleet"]["budget-scale"] = scale
    c = config_from_dict(tree)
    gm = GlobalModel(c)
    budget = int(client_profile(c, device_pid).budget_spec.reference_mb * 2**20)
    t = c.train
    opt = OptimizerSpec(name=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay)
    return trains_at_batch(gm.graph, gm.mask, budget, dataset_info(c.data.dataset).input_shape, opt, batch)


def test_budget_levels_bind_as_documented(base):
    pi_zero, pi3b = 0, 4  # the fleet lists 4 Pi Zero 2 W first, then 3 Pi 3B
    assert client_profile(base, pi_zero).device == "pi-zero-2w" and client_profile(base, pi3b).device == "pi3b"
    t = base.train
    assert not dense_fits(base, 0.03, pi_zero, t.min_batch)  # tightest: not even at min-batch
    assert dense_fits(base, 0.03, pi3b, t.batch_size)
    assert dense_fits(base, 0.045, pi_zero, t.min_batch) and not dense_fits(base, 0.045, pi_zero, t.batch_size)
    assert dense_fits(base, 0.25, pi_zero, t.batch_size)  # generous: baselines train dense FedAvg


def test_sweeps_cover_the_study_and_sizing_adds_up(base):
    total = 0
    for part, runs in PARTS.items():
        path = CONFIGS / f"study_converged_{part}_sweep.toml"
        plans = expand(load_sweep(path))
        assert len(plans) == runs and {p.config.run.seed for p in plans} == SEEDS[part]
        assert load_sweep(path).out_dir.startswith("results/sweeps/study-converged/")
        size = sweep_size(path, round_seconds=10.0, startup_seconds=5.0)
        rounds = ROUNDS[part] or base.run.num_rounds
        assert {p.config.run.num_rounds for p in plans} == {rounds}
        assert size.runs == runs and size.rounds == runs * rounds
        assert size.seconds == pytest.approx(size.rounds * 10.0 + runs * 5.0)
        total += runs
    methods = {p.config.methods.enabled for part in PARTS
               for p in expand(load_sweep(CONFIGS / f"study_converged_{part}_sweep.toml"))}
    assert methods == {"fedavg", "fedavg-drop", "small-model", "heterofl", "fedrolex", "dynhp"}
    with pytest.raises(ValueError):
        sweep_size(CONFIGS / "study_converged_iid_sweep.toml", -1, 0)


def test_sizing_table_totals():
    from fedprune.study.sizing import sizing_markdown

    files = [CONFIGS / f"study_converged_{p}_sweep.toml" for p in PARTS]
    text = sizing_markdown(files, round_seconds=36.0, startup_seconds=0.0)
    base_rounds = load_config(CONFIGS / "study_converged.toml").run.num_rounds
    rounds = sum(runs * (ROUNDS[part] or base_rounds) for part, runs in PARTS.items())
    assert f"| total | {sum(PARTS.values())} | {rounds} | {rounds * 36 / 3600:.2f} |" in text


def test_the_study_archive_is_not_git_ignored():
    """`scripts/archive_study.sh` copies finished runs to docs/study/sweeps/<sweep>/runs/<run>/; the
    repository must keep them (an ignore rule for `runs/` once dropped every archived run)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("summary.json", "metrics.jsonl", "config.toml"):
        path = f"docs/study/sweeps/iid-tight/runs/seed=0_enabled=dynhp/{name}"
        res = subprocess.run(["git", "check-ignore", "-v", "--no-index", path], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 1, f"{path} is git-ignored: {res.stdout.strip()}"


def test_every_dirichlet_part_trains_as_long_as_its_fedavg_upper_bound():
    """The report compares runs of one partitioner with its FedAvg runs: equal rounds, or the
    comparison would mix training lengths."""
    for path in CONFIGS.glob("study_converged_*_sweep.toml"):
        plans = expand(load_sweep(path))
        for p in plans:
            want = DIRICHLET_ROUNDS if p.config.data.partitioner == "dirichlet" else load_config(
                CONFIGS / "study_converged.toml").run.num_rounds
            assert p.config.run.num_rounds == want, (path.name, p.id)


def test_run_study_runs_every_converged_sweep_file():
    """`scripts/run_study.sh` with no arguments runs every part whose sweep file exists, and no other."""
    import re

    text = (ROOT / "scripts" / "run_study.sh").read_text()
    listed = re.search(r"\|\| parts=\(([^)]*)\)", text).group(1).split()
    files = {p.name[len("study_converged_"):-len("_sweep.toml")] for p in CONFIGS.glob("study_converged_*_sweep.toml")}
    assert sorted(listed) == sorted(files) and len(listed) == len(set(listed))
