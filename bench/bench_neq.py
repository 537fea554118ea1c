"""NEq on LeNet-5 and ResNet-8 / Fashion-MNIST, centralized: backprop FLOPs and time vs NEq off.

For each model, the same seed and epochs are trained with NEq off and on. Reported: backprop FLOPs
per sample averaged over all steps (the accounting of ``fedprune.methods.flops``: weight-gradient
FLOPs of frozen neurons are saved, input gradients only where autograd skips them), the measured
wall time of ``loss.backward()`` summed over the run, test accuracy, and the frozen fraction.

Targets (issue 5): >= 20% fewer backprop FLOPs with <= 0.5 point accuracy loss, per model.

    python bench/bench_neq.py            # full run (see --epochs; minutes on 2 cores)
    python bench/bench_neq.py --quick    # smoke test

Writes ``bench/results/neq.json`` (``--out``), with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedprune.memory import OptimizerSpec  # noqa: E402
from fedprune.methods import NEqConfig  # noqa: E402
from fedprune.training import TrainConfig, machine_info, run_centralized  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_pair(model: str, epochs: int, lr: float, batch: int, seed: int, ncfg: NEqConfig, sub: dict) -> dict:
    cfg = TrainConfig(epochs=epochs, lr_schedule="cosine", lr=lr, batch_size=batch, seed=seed,
                      optimizer=OptimizerSpec("sgd", momentum=0.9, weight_decay=5e-4))
    log = lambda s: print("  " + s, flush=True)  # noqa: E731
    print(f"{model}: NEq off, {epochs} epochs")
    off, _ = run_centralized(model, cfg, "none", log=log, **sub)
    print(f"{model}: NEq on, {epochs} epochs, {ncfg}")
    on, _ = run_centralized(model, cfg, "neq", {"neq": ncfg}, log=log, **sub)
    mo, mn = off["metrics"], on["metrics"]
    saved = 1.0 - mn["bprop_flops"] / mo["bprop_flops"]
    loss_pts = 100.0 * (off["test_accuracy"] - on["test_accuracy"])
    bw_saved = 1.0 - mn["backward_seconds"] / mo["backward_seconds"]
    row = {
        "model": model, "epochs": epochs, "train_samples": on["train_samples"],
        "train_config": on["train_config"],
        "off": {"test_accuracy": off["test_accuracy"], "bprop_flops_per_sample": mo["bprop_flops"],
                "backward_seconds": mo["backward_seconds"], "wall_seconds": off["wall_seconds"],
                "history": off["history"]},
        "on": {"test_accuracy": on["test_accuracy"], "bprop_flops_per_sample": mn["bprop_flops"],
               "backward_seconds": mn["backward_seconds"], "wall_seconds": on["wall_seconds"],
               "frozen_frac_last_epoch": mn["neq_frozen_frac"],
               "frozen_frac_mean": mn["neq_frozen_frac_mean"],
               "eval_seconds": mn["neq_eval_seconds"], "history": on["history"]},
        "bprop_flops_saved_frac": saved,
        "backward_wall_saved_frac": bw_saved,
        "accuracy_loss_points": loss_pts,
        "targets": {"bprop_flops_20pct_fewer": bool(saved >= 0.2),
                    "accuracy_loss_le_0_5_point": bool(loss_pts <= 0.5)},
    }
    row["targets"]["all_met"] = all(row["targets"].values())
    print(f"{model}: bprop FLOPs saved {100 * saved:.1f}%, backward time saved {100 * bw_saved:.1f}%, "
          f"accuracy {off['test_accuracy']:.4f} -> {on['test_accuracy']:.4f} (loss {loss_pts:.2f} points), "
          f"targets {row['targets']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1000 samples, 3 epochs")
    ap.add_argument("--epochs", type=int, default=10, help="epochs for lenet5")
    ap.add_argument("--resnet-epochs", type=int, default=10)
    ap.add_argument("--resnet-train-samples", type=int, default=20000,
                    help="training subset for resnet8 (0 = all 60000) to keep the run in minutes")
    ap.add_argument("--models", default="lenet5,resnet8")
    ap.add_argument("--eps", type=float, default=NEqConfig.eps)
    ap.add_argument("--mu", type=float, default=NEqConfig.mu_eq)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "neq.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ncfg = NEqConfig(eps=a.eps, mu_eq=a.mu)
    t0 = time.perf_counter()
    rows = []
    for model in a.models.split(","):
        if a.quick:
            epochs, sub = 3, {"max_train_samples": 1000, "max_test_samples": 500}
        elif model == "resnet8":
            epochs, sub = a.resnet_epochs, {"max_train_samples": a.resnet_train_samples}
        else:
            epochs, sub = a.epochs, {}
        lr = 0.05
        rows.append(run_pair(model, epochs, lr, 64, a.seed, ncfg, sub))
    out = {
        "benchmark": "neq", "quick": a.quick, "dataset": "fashion-mnist", "neq_config": ncfg.__dict__,
        "note": ("epochs chosen so the full benchmark fits minutes on 2 shared cores; NEq's first freeze "
                 "needs 3 evaluations (one per epoch start), so savings grow with longer training"),
        "results": rows,
        "targets": {r["model"]: r["targets"] for r in rows},
        "machine": {**machine_info(), "loadavg": os.getloadavg()},
        "wall_seconds": time.perf_counter() - t0,
    }
    out["all_met"] = all(r["targets"]["all_met"] for r in rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
