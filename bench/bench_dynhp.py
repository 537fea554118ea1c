"""DynHP on LeNet-5 / Fashion-MNIST under a fixed memory budget, centralized.

The budget is the predicted training peak of the *dense* model at the starting batch (64), so the
run starts at that batch; as DynHP removes neurons the trainer reinvests the freed memory in a
larger batch (learning rate scaled by sqrt of the batch ratio). Compared with the dense model
trained for the same epochs at the starting batch without a budget.

Targets: >= 5x fewer parameters; >= 50% lower peak training memory than the dense model
at the same starting batch (measured: one real steady-state step of each at that batch, live
tensor bytes); <= 2 points accuracy loss; and the batch-size trajectory.

    python bench/bench_dynhp.py            # full run (see --epochs; minutes on 2 cores)
    python bench/bench_dynhp.py --quick    # smoke test

Writes ``bench/results/dynhp.json`` (``--out``), with machine info.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

from fedprune.memory import OptimizerSpec, estimate_training_memory, measure_training_memory  # noqa: E402
from fedprune.methods import DynHPConfig  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.train import TrainConfig  # noqa: E402
from fedprune.train.centralized import run_centralized  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 2000 samples, 2 epochs")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64, help="starting batch (the budget fits it)")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--target", type=float, default=DynHPConfig.target_compression)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "dynhp.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    epochs = 2 if a.quick else a.epochs
    sub = {"max_train_samples": 2000, "max_test_samples": 1000} if a.quick else {}
    opt = OptimizerSpec("sgd", momentum=0.9)
    shape = (1, 28, 28)
    dense = build_model("lenet5", seed=a.seed)
    margin = 0.05  # max_batch_size's default safety margin
    budget = int(math.ceil(estimate_training_memory(dense, a.batch, shape, opt).total_bytes / (1 - margin)))
    dcfg = DynHPConfig(target_compression=a.target)
    if a.quick:
        dcfg.score_samples = 128
    t0 = time.perf_counter()
    log = lambda s: print("  " + s, flush=True)  # noqa: E731

    base_cfg = TrainConfig(epochs=epochs, lr_schedule="cosine", lr=a.lr, batch_size=a.batch, optimizer=opt,
                           seed=a.seed, min_batch=1, max_batch=1024)
    print(f"dense baseline: lenet5, batch {a.batch}, {epochs} epochs, no budget")
    base, _ = run_centralized("lenet5", base_cfg, "none", log=log, **sub)

    cfg = TrainConfig(epochs=epochs, lr_schedule="cosine", lr=a.lr, batch_size=a.batch, min_batch=8,
                      max_batch=a.max_batch, lr_scaling="sqrt", optimizer=opt, seed=a.seed)
    print(f"DynHP: budget {budget} bytes (dense predicted peak at batch {a.batch} / {1 - margin}), {dcfg}")
    dyn, res = run_centralized("lenet5", cfg, "dynhp", {"dynhp": dcfg}, budget, log=log, **sub)

    dense_mem = measure_training_memory(dense, a.batch, shape, opt)
    pruned_mem = measure_training_memory(res.model, a.batch, shape, opt)
    mem_reduction = 1.0 - pruned_mem.peak_bytes / dense_mem.peak_bytes
    loss_pts = 100.0 * (base["test_accuracy"] - dyn["test_accuracy"])
    m = dyn["metrics"]
    out = {
        "benchmark": "dynhp", "quick": a.quick, "model": "lenet5", "dataset": "fashion-mnist",
        "epochs": epochs, "note": f"{epochs} epochs per run so the benchmark fits minutes on 2 shared cores",
        "dynhp_config": dcfg.__dict__, "budget_bytes": budget, "starting_batch": a.batch,
        "train_config": dyn["train_config"], "baseline_train_config": base["train_config"],
        "baseline": {"test_accuracy": base["test_accuracy"], "params": base["params_dense"],
                     "neurons": base["neurons"], "wall_seconds": base["wall_seconds"]},
        "dynhp": {"test_accuracy": dyn["test_accuracy"], "params": dyn["params_alive"],
                  "compression": dyn["compression"], "neurons": dyn["neurons"],
                  "batch_sizes": m["batch_sizes"], "batch_final": m["batch_final"],
                  "lr_final": m["lr_final"], "violations": m["violations"],
                  "measured_peak_bytes_in_run": m["measured_peak_bytes"],
                  "predicted_peak_bytes_in_run": m["predicted_peak_bytes"],
                  "utilization": m["utilization"], "wall_seconds": dyn["wall_seconds"],
                  "history": dyn["history"]},
        "peak_memory_at_starting_batch": {"dense_bytes": dense_mem.peak_bytes,
                                          "pruned_bytes": pruned_mem.peak_bytes,
                                          "reduction": mem_reduction,
                                          "dense_breakdown": dense_mem.breakdown,
                                          "pruned_breakdown": pruned_mem.breakdown},
        "compression": dyn["compression"], "memory_reduction": mem_reduction,
        "accuracy_loss_points": loss_pts,
        "targets": {
            "params_5x_fewer": bool(dyn["compression"] >= 5.0),
            "memory_50pct_lower": bool(mem_reduction >= 0.5),
            "accuracy_loss_le_2_points": bool(loss_pts <= 2.0),
            "no_budget_violation": bool(m["violations"] == 0),
        },
        "machine": {**machine_info(), "loadavg": os.getloadavg()},
        "wall_seconds": time.perf_counter() - t0,
    }
    out["targets"]["all_met"] = all(out["targets"].values())
    print()
    print(f"dense:  acc {base['test_accuracy']:.4f}  params {base['params_dense']}  {base['neurons']}  "
          f"peak@{a.batch} {dense_mem.peak_bytes / 2**20:.2f} MiB")
    print(f"DynHP:  acc {dyn['test_accuracy']:.4f}  params {dyn['params_alive']} "
          f"({dyn['compression']:.1f}x)  "
          f"{dyn['neurons']}  peak@{a.batch} {pruned_mem.peak_bytes / 2**20:.2f} MiB "
          f"({100 * mem_reduction:.1f}% lower)")
    print(f"batch trajectory: {m['batch_sizes']}  (budget {budget / 2**20:.2f} MiB, "
          f"violations {m['violations']})")
    print(f"accuracy loss {loss_pts:.2f} points; targets: {out['targets']}")
    write_result("dynhp", out, a.out)
    return out


if __name__ == "__main__":
    main()
