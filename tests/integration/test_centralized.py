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
    # the kernel's figure for the training, beside the budget it is judged against
    assert summary["physical_peak_method"] in ("clear_refs", "sampled")
    assert summary["physical_violation"] == int(summary["physical_peak_bytes"] > summary["budget_bytes"])
    assert summary["batch_min"] >= 8


def test_auto_budget_is_measured_once_model_and_data_are_resident(monkeypatch):
    """A callable budget is resolved after the split data, the model and its graph exist."""
    import fedprune.train.centralized as central
    from fedprune.train import TrainConfig

    seen = []
    real_compact = central.NeuronGraph.compact

    def compact(self, model, mask):
        seen.append("model built")
        return real_compact(self, model, mask)

    monkeypatch.setattr(central.NeuronGraph, "compact", compact)
    budget = lambda: seen.append("budget measured") or 8 * 2**20  # noqa: E731
    out, _ = central.run_centralized("lenet5", TrainConfig(epochs=1, batch_size=32), "none", None, budget,
                                     max_train_samples=200, max_test_samples=100, eval_test_every_epoch=False)
    assert seen[:2] == ["model built", "budget measured"] and out["budget_bytes"] == 8 * 2**20


def test_summary_accuracy_is_the_exported_models(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    _, test = load_dataset("fashion-mnist")
    _, acc = evaluate(load_model(run_dir / "final_model.json"), test.x, test.y)
    assert acc == pytest.approx(summary["final_accuracy"], abs=1e-9)
    assert summary["final_accuracy"] == pytest.approx(summary["trained_accuracy"], abs=2e-3)


def test_refuses_a_non_empty_results_folder(run_dir, capsys):
    assert main(["train", str(run_dir / "config.toml"), "--out", str(run_dir)]) != 0
    assert "not empty" in capsys.readouterr().err
