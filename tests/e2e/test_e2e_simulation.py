"""Real federated runs through `fedprune simulate` (Flower SuperLink + Ray), end to end."""

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch

from support import ROOT

from fedprune.data import load_dataset
from fedprune.results import read_metrics
from fedprune.model_file import load_model
from fedprune.train import evaluate


TINY = """
[run]
name = "e2e"
seed = 1
num-rounds = 2
[data]
max-samples-per-client = 600
[train]
batch-size = 32
min-batch = 8
max-batch = 128
[methods]
enabled = "{methods}"
[memory]
budget = "constant"
budget-mb = {budget}
[fleet]
num-clients = 4
min-clients = 2
budgets-mb = "{budgets}"
"""


def fedprune(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, "-m", "fedprune.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_pruned_simulation_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(methods="serene+neq+dynhp", budget=8.0, budgets="3,4,6,8"))
    out = tmp_path / "run"
    proc = fedprune("simulate", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "flwr.log").read_text()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "rounds", "num_clients", "dense_params", "final_params",
                "compression", "final_flops", "neurons_per_layer", "upload_bytes_total",
                "dense_upload_bytes_total", "budget_violations", "wall_seconds"):
        assert key in summary, key
    assert summary["rounds"] == 2 and summary["num_clients"] == 4
    assert summary["final_params"] < summary["dense_params"]
    assert summary["upload_bytes_total"] < summary["dense_upload_bytes_total"]
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    budgets = sorted({c["budget_bytes"] for r in rows for c in r["clients"]})
    assert len(budgets) == 4  # every client had its own budget
    # the exported compact model loads and scores what the summary reports
    _, test = load_dataset("fashion-mnist")
    model = load_model(out / "final_model.json")
    _, acc = evaluate(model, test.x, test.y)
    assert abs(acc - summary["final_accuracy"]) < 1e-6
    assert abs(summary["final_accuracy"] - summary["masked_accuracy"]) < 1e-3
    sess = ort.InferenceSession(str(out / "final_model.onnx"))
    x = test.x[:8].numpy()
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    torch.testing.assert_close(torch.from_numpy(onnx_out), model(test.x[:8]).detach(), atol=1e-4, rtol=1e-4)


def test_bad_config_fails_before_ray_with_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nlearning-rate = 0.1\n")
    proc = fedprune("simulate", str(cfg), "--out", str(tmp_path / "run"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train.learning-rate" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_missing_dataset_fails_before_ray(tmp_path):
    cfg = tmp_path / "nodata.toml"
    cfg.write_text(f'[data]\ndataset = "mnist"\ndata-dir = "{tmp_path / "empty"}"\n')
    proc = fedprune("simulate", str(cfg), "--out", str(tmp_path / "run"), timeout=60)
    assert proc.returncode == 2 and "not found" in proc.stderr and "download" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_results_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    proc = fedprune("simulate", str(ROOT / "sim_configs" / "quickstart.toml"), "--out", str(out), timeout=60)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (out / "summary.json").read_text() == "{}"
