"""`fedprune train CONFIG`: the experiment's trainer and methods on one device, no federation."""

import json

import pytest

from fedprune.cli import main
from fedprune.model_file import load_model
from fedprune.train import evaluate
from fedprune.data import load_dataset

CONFIG = """
[run]
name = "central"
num-rounds = 2
[data]
max-samples-per-client = 600
[methods]
enabled = "dynhp+neq"
[methods.dynhp]
target-compression = 0.5
[memory]
budget = "constant"
budget-mb = 8.0
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("central")
    (d / "exp.toml").write_text(CONFIG)
    assert main(["train", str(d / "exp.toml"), "--out", str(d / "out")]) == 0
    return d / "out"


def test_writes_a_results_folder_like_a_federated_run(run_dir):
    for name in ("config.toml", "metrics.jsonl", "summary.json", "final_model.json",
                 "final_model.safetensors", "final_model.onnx"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]  # default epochs: rounds x local epochs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "centralized" and summary["train_samples"] == 540
    assert summary["final_params"] < summary["dense_params"]  # DynHP removed neurons
    assert summary["budget_bytes"] == 8 * 2**20 and summary["budget_violations"] == 0


def test_summary_accuracy_is_the_exported_models(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    _, test = load_dataset("fashion-mnist")
    _, acc = evaluate(load_model(run_dir / "final_model.json"), test.x, test.y)
    assert acc == pytest.approx(summary["final_accuracy"], abs=1e-9)
    assert summary["final_accuracy"] == pytest.approx(summary["trained_accuracy"], abs=2e-3)


def test_refuses_a_non_empty_results_folder(run_dir, capsys):
    assert main(["train", str(run_dir / "config.toml"), "--out", str(run_dir)]) != 0
    assert "not empty" in capsys.readouterr().err
