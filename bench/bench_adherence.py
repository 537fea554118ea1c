"""Budget adherence: a simulated fleet with budgets from 10% to 100% of the dense model's need.

Each client is a real ``ClientRuntime`` (the code a Flower client runs) training LeNet-5 on its
Fashion-MNIST partition with DynHP for a few rounds, the model passed from round to round as in
federated training with one client. The budget is a fraction of the dense model's predicted training
peak at the default batch (``train.batch-size``). Targets: the measured peak never exceeds
the budget (zero violations), and mean utilization (measured / budget) is >= 90% once pruning has
freed memory (rounds after the first).

Usage: python bench/bench_adherence.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fedprune.client_runtime import ClientRuntime  # noqa: E402
from fedprune.config import config_from_dict  # noqa: E402
from fedprune.global_model import GlobalModel  # noqa: E402
from fedprune.memory import OptimizerSpec, estimate_training_memory  # noqa: E402
from fedprune.models import build_model  # noqa: E402

MB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 budgets, 2 rounds, 400 samples")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    fractions = [0.1, 0.5, 1.0] if a.quick else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    rounds = 2 if a.quick else a.rounds
    samples = 400 if a.quick else 3000
    base = {"run": {"num-rounds": rounds}, "data": {"max-samples-per-client": samples},
            "train": {"batch-size": 32, "min-batch": 8, "max-batch": 1024},
            "methods": {"enabled": "dynhp"}, "fleet": {"num-clients": len(fractions)}}
    probe = config_from_dict(base)
    spec = OptimizerSpec(probe.train.optimizer, momentum=probe.train.momentum,
                         weight_decay=probe.train.weight_decay)
    dense_need = estimate_training_memory(build_model("lenet5"), probe.train.batch_size, (1, 28, 28),
                                          spec).total_bytes
    budgets = [f * dense_need / MB for f in fractions]
    cfg = config_from_dict({**base, "fleet": {**base["fleet"],
                                              "budgets-mb": ",".join(f"{b:.4f}" for b in budgets)}})
    gm = GlobalModel(cfg)
    rows = []
    for pid, frac in enumerate(fractions):
        rt = ClientRuntime(cfg, pid, len(fractions))
        arrays, mask = gm.payload()
        state = None
        for rnd in range(1, rounds + 1):
            reply = rt.train_round(arrays, mask, rnd, state)
            m = reply.metrics
            rows.append({"client": pid, "budget_fraction": frac, "round": rnd,
                         "budget_bytes": m.get("budget_bytes"), "measured_peak_bytes": m.get("measured_peak_bytes"),
                         "predicted_peak_bytes": m.get("predicted_peak_bytes"), "utilization": m.get("utilization"),
                         "violations": m.get("violations", 0), "does_not_fit": m.get("does_not_fit", 0),
                         "batch_sizes": m.get("batch_sizes"), "params_alive": m.get("params_alive"),
                         "val_accuracy": m.get("val_accuracy")})
            print(rows[-1], flush=True)
            if reply.num_examples:
                arrays, mask, state = reply.arrays, reply.mask, reply.method_state
    trained = [r for r in rows if not r["does_not_fit"]]
    later = [r for r in trained if r["round"] > 1 and r["utilization"] is not None]
    violations = int(sum(r["violations"] or 0 for r in rows))
    mean_util = float(np.mean([r["utilization"] for r in later])) if later else None
    write_result("adherence", {
        "setup": {"model": "lenet5", "dataset": "fashion-mnist", "methods": "dynhp", "rounds": rounds,
                  "samples_per_client": samples, "dense_need_bytes": dense_need,
                  "budget_fractions": fractions, "quick": a.quick},
        "rows": rows, "violations": violations,
        "does_not_fit": int(sum(r["does_not_fit"] for r in rows)),
        "mean_utilization_after_round_1": mean_util,
        "targets_met": {"zero_violations": violations == 0,
                        "utilization_ge_90pct": mean_util is not None and mean_util >= 0.9}}, a.out)


if __name__ == "__main__":
    main()
