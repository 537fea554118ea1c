"""DynHP on LeNet-5 / Fashion-MNIST under a fixed memory budget, centralized, over several seeds.

The budget is the predicted training peak of the *dense* model at the starting batch (64), so the
run starts at that batch; as DynHP removes neurons the trainer reinvests the freed memory in a
larger batch. How the learning rate follows that batch is measured here: for every seed of
``--seeds`` DynHP runs once per rule of ``--rules`` (``none``: fixed lr, ``sqrt``, ``linear``: lr
times sqrt / ratio of the batch to the starting batch), beside the dense model trained for the same
epochs at the starting batch without a budget. The rule with the highest mean accuracy is reported
as ``lr_rule_winner``; the headline figures are those of ``--headline-rule`` (the library default,
``TrainSection.lr_scaling``).

Memory is reported two ways: at the run's *own* final batch (what the dense model would need at the
batch the pruned model trained with, against the pruned model's need at it; the trainer's
``dynhp_*_at_batch_bytes`` estimates) and, measured by one real steady-state step of each, at the
starting batch.

Targets (headline rule, mean over seeds): >= 5x fewer parameters; >= 50% lower peak training memory
than the dense model at the run's own batch; <= 2 points accuracy loss; no budget violation.

    python bench/bench_dynhp.py            # full run (see --epochs, --max-train-samples)
    python bench/bench_dynhp.py --quick    # smoke test (1 seed, 2000 samples, 2 epochs)

Writes ``bench/results/dynhp.json`` (``--out``), with machine info and load average.
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

from fedprune.config import TrainSection  # noqa: E402
from fedprune.memory import OptimizerSpec, estimate_training_memory, measure_training_memory  # noqa: E402
from fedprune.methods import DynHPConfig  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.train import TrainConfig  # noqa: E402
from fedprune.train.centralized import run_centralized  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 28, 28)
OPT = OptimizerSpec("sgd", momentum=0.9)


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mu = sum(xs) / len(xs)
    sd = (sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return float(mu), float(sd)


def dynhp_run(seed: int, rule: str, a, dcfg: DynHPConfig, budget: int, base_acc: float, sub: dict) -> dict:
    """One DynHP run at ``rule``; figures of the run, incl. memory at its own and the starting batch."""
    log = lambda s: print("  " + s, flush=True)  # noqa: E731
    cfg = TrainConfig(epochs=a.epochs, lr_schedule="cosine", lr=a.lr, batch_size=a.batch, min_batch=8,
                      max_batch=a.max_batch, lr_scaling=rule, optimizer=OPT, seed=seed)
    print(f"DynHP seed {seed} lr-scaling {rule}: budget {budget} bytes", flush=True)
    res, tr = run_centralized("lenet5", cfg, "dynhp", {"dynhp": dcfg}, budget, log=log, **sub)
    m = res["metrics"]
    dense_mem = measure_training_memory(build_model("lenet5", seed=seed), a.batch, SHAPE, OPT)
    pruned_mem = measure_training_memory(tr.model, a.batch, SHAPE, OPT)
    return {"seed": seed, "lr_scaling": rule, "test_accuracy": res["test_accuracy"],
            "accuracy_loss_points": 100.0 * (base_acc - res["test_accuracy"]),
            "params": res["params_alive"], "compression": res["compression"], "neurons": res["neurons"],
            "batch_sizes": m["batch_sizes"], "batch_final": m["batch_final"], "lr_final": m["lr_final"],
            "violations": m["violations"], "utilization": m["utilization"],
            "measured_peak_bytes_in_run": m["measured_peak_bytes"],
            "predicted_peak_bytes_in_run": m["predicted_peak_bytes"],
            "dense_peak_at_own_batch_bytes": m["dynhp_dense_peak_at_batch_bytes"],
            "pruned_peak_at_own_batch_bytes": m["dynhp_peak_at_batch_bytes"],
            "memory_saved_at_own_batch": m["dynhp_memory_saved_at_batch_frac"],
            "dense_peak_at_start_batch_bytes": dense_mem.peak_bytes,
            "pruned_peak_at_start_batch_bytes": pruned_mem.peak_bytes,
            "memory_saved_at_start_batch": 1.0 - pruned_mem.peak_bytes / dense_mem.peak_bytes,
            "wall_seconds": res["wall_seconds"], "history": res["history"]}


KEYS = ("test_accuracy", "accuracy_loss_points", "compression", "params", "batch_final",
        "memory_saved_at_own_batch", "memory_saved_at_start_batch", "violations")


def summarize(runs: list[dict]) -> dict:
    """Mean and std over seeds of the figures in ``KEYS``."""
    out: dict = {"seeds": [r["seed"] for r in runs]}
    for k in KEYS:
        out[k], out[k + "_std"] = mean_std([float(r[k]) for r in runs])
    return out


def set_headline(out: dict, rule: str) -> dict:
    """Make ``rule``'s figures the headline and targets of ``out`` (a bench JSON with ``lr_rules``)."""
    head = out["lr_rules"][rule]
    out.update({"headline_rule": rule, "dynhp": head, "compression": head["compression"],
                "memory_saved_at_own_batch": head["memory_saved_at_own_batch"],
                "accuracy_loss_points": head["accuracy_loss_points"]})
    out["targets"] = {
        "params_5x_fewer": bool(head["compression"] >= 5.0),
        "memory_50pct_lower_at_own_batch": bool(head["memory_saved_at_own_batch"] >= 0.5),
        "accuracy_loss_le_2_points": bool(head["accuracy_loss_points"] <= 2.0),
        "no_budget_violation": bool(head["violations"] == 0),
        "headline_rule_is_winner": bool(out["lr_rule_winner"] == rule),
    }
    out["targets"]["all_met"] = all(out["targets"].values())
    return out


def reheadline(path: str, rule: str) -> dict:
    """Re-point an existing result file's headline at ``rule`` (the measured runs are unchanged)."""
    import json

    from fedprune.results import write_json

    out = set_headline(json.loads(Path(path).read_text()), rule)
    write_json(path, out)
    print(f"{path}: headline rule {rule}; targets {out['targets']}")
    return out


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2000 samples, 2 epochs")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-train-samples", type=int, default=30000, help="0 = all 60000")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64, help="starting batch (the budget fits it)")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--target", type=float, default=DynHPConfig.target_compression)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default="none,sqrt,linear", help="lr-scaling rules to measure")
    ap.add_argument("--headline-rule", default=TrainSection.lr_scaling)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "dynhp.json"))
    ap.add_argument("--reheadline", action="store_true",
                    help="only re-point --out's headline at --headline-rule (no training)")
    a = ap.parse_args(argv)
    if a.quick:
        a.epochs, a.max_train_samples, a.seeds = 2, 2000, a.seeds.split(",")[0]
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a.reheadline:
        return reheadline(a.out, a.headline_rule)
    torch.set_num_threads(a.threads)
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    rules = [r for r in a.rules.split(",") if r.strip()]
    if a.headline_rule not in rules:
        raise SystemExit(f"--headline-rule={a.headline_rule!r} is not among --rules={a.rules!r}")
    sub = {"max_train_samples": a.max_train_samples, "max_test_samples": 1000 if a.quick else 0}
    dcfg = DynHPConfig(target_compression=a.target, score_samples=128 if a.quick else 512)
    margin = 0.05  # max_batch_size's default safety margin
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    base_runs, runs = [], {r: [] for r in rules}
    for seed in seeds:
        dense = build_model("lenet5", seed=seed)
        budget = int(math.ceil(estimate_training_memory(dense, a.batch, SHAPE, OPT).total_bytes / (1 - margin)))
        cfg = TrainConfig(epochs=a.epochs, lr_schedule="cosine", lr=a.lr, batch_size=a.batch, optimizer=OPT,
                          seed=seed, min_batch=1, max_batch=1024)
        print(f"dense baseline seed {seed}: batch {a.batch}, {a.epochs} epochs, no budget", flush=True)
        base, _ = run_centralized("lenet5", cfg, "none", log=lambda s: print("  " + s, flush=True), **sub)
        base_runs.append({"seed": seed, "test_accuracy": base["test_accuracy"], "params": base["params_dense"],
                          "neurons": base["neurons"], "wall_seconds": base["wall_seconds"]})
        for rule in rules:
            runs[rule].append(dynhp_run(seed, rule, a, dcfg, budget, base["test_accuracy"], sub))
    by_rule = {r: summarize(v) for r, v in runs.items()}
    winner = max(rules, key=lambda r: by_rule[r]["test_accuracy"])
    base_acc = mean_std([r["test_accuracy"] for r in base_runs])
    out = {
        "benchmark": "dynhp", "quick": a.quick, "model": "lenet5", "dataset": "fashion-mnist",
        "epochs": a.epochs, "seeds": seeds, "max_train_samples": a.max_train_samples,
        "note": (f"{a.epochs} epochs on {a.max_train_samples or 'all'} training samples per run so "
                 f"{len(seeds)} seeds x {len(rules) + 1} runs fit ~20 minutes on 2 shared cores"),
        "dynhp_config": dcfg.__dict__, "starting_batch": a.batch, "lr": a.lr, "max_batch": a.max_batch,
        "baseline": {"test_accuracy": base_acc[0], "test_accuracy_std": base_acc[1], "runs": base_runs,
                     "params": base_runs[0]["params"], "neurons": base_runs[0]["neurons"]},
        "lr_rules": by_rule, "lr_rule_winner": winner, "runs": runs,
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "wall_seconds": time.perf_counter() - t0,
    }
    set_headline(out, a.headline_rule)
    print()
    print(f"dense: acc {100 * base_acc[0]:.2f} +- {100 * base_acc[1]:.2f}")
    for r, s in by_rule.items():
        print(f"DynHP lr-scaling {r:<7} acc {100 * s['test_accuracy']:.2f} +- {100 * s['test_accuracy_std']:.2f}  "
              f"{s['compression']:.1f}x  final batch {s['batch_final']:.0f}  memory saved at own batch "
              f"{100 * s['memory_saved_at_own_batch']:.1f}%  at batch {a.batch} "
              f"{100 * s['memory_saved_at_start_batch']:.1f}%  violations {s['violations']:.0f}")
    print(f"lr rule winner: {winner}; targets: {out['targets']}")
    write_result("dynhp", out, a.out)
    return out


if __name__ == "__main__":
    main()
