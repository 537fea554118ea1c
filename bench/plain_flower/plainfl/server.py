"""Plain ServerApp: Flower's stock FedAvg with server-side test evaluation each round."""

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedprune.data import load_dataset
from fedprune.models import build_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    t0 = time.perf_counter()
    _, test = load_dataset("fashion-mnist")
    model = build_model("lenet5", seed=int(cfg["seed"]))
    n = int(cfg["num-clients"])
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if rnd == 0:  # fedprune does not evaluate the initial model either
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(test.x[i:i + 1000]).argmax(1) == test.y[i:i + 1000]).sum())
                          for i in range(0, len(test), 1000))
        return MetricRecord({"accuracy": correct / len(test)})

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(cfg["num-rounds"]), evaluate_fn=evaluate)
    acc = result.evaluate_metrics_serverapp[int(cfg["num-rounds"])]["accuracy"]
    out = Path(cfg["out-dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"final_accuracy": acc,
                                                  "wall_seconds": time.perf_counter() - t0}))
