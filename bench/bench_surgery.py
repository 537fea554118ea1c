"""Benchmark: compact vs masked-dense inference on CPU (latency, memory, FLOPs).

For each model (lenet5, resnet18) and neuron-pruning level (50 %, 90 % of every
prunable group, random neurons), builds the *masked dense* model (pruned neurons'
incoming weights zeroed, same architecture) and the *compact* model
(``NeuronGraph.compact``), checks they agree, and times eval-mode inference at
batch 1 and 64. Target: ``speedup >= 0.7 * flops_ratio`` where
``speedup = latency(masked dense) / latency(compact)`` and
``flops_ratio = forward FLOPs(masked dense) / forward FLOPs(compact)``. Latencies are
taken with interleaved calls (dense, compact, dense, ...) so both models see the same
machine load; ``speedup`` uses the best-of-N times, ``speedup_median`` the medians.

Biases and BatchNorm statistics are randomised first (``--plain`` to skip), so
removed neurons emit non-zero constants and the compact models carry the folded
border terms they would carry in practice.

Usage: ``python bench/bench_surgery.py [--quick] [--out bench/results/surgery.json]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fedprune.models import build_model, example_input
from fedprune.surgery import (FoldedConv2d, NeuronGraph, NeuronMask, count_flops, count_params,
                              format_neurons, model_bytes, neurons_per_layer)
from fedprune.surgery.testing import randomize_constants
from common import machine_info  # noqa: E402

TARGET = 0.7


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output in one forward (what training would keep)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def paired_latency(dense: nn.Module, compact: nn.Module, x: torch.Tensor, min_time: float,
                   min_reps: int, max_reps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Wall time of ``model(x)`` (eval, inference mode) for both models, in milliseconds.

    Calls alternate (dense, compact, dense, ...) so both see the same machine load;
    reports the median and the minimum (best-of-N, least disturbed by other processes).
    """
    times: dict[str, list[float]] = {"masked_dense": [], "compact": []}
    models = {"masked_dense": dense.eval(), "compact": compact.eval()}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        start = time.perf_counter()
        while len(times["compact"]) < min_reps or (
                time.perf_counter() - start < min_time and len(times["compact"]) < max_reps):
            for key, model in models.items():
                t0 = time.perf_counter()
                model(x)
                times[key].append(time.perf_counter() - t0)
    return {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "reps": len(v)}
            for k, v in times.items()}


def bench_model(name: str, args) -> list[dict]:
    size = args.image_size
    dense = build_model(name, in_channels=1, num_classes=10, image_size=size, seed=0)
    if not args.plain:
        dense = randomize_constants(dense, seed=1)
    dense.eval()
    graph = NeuronGraph.from_model(dense, example_input(1, size))
    rows = []
    for pruned in args.prune:
        mask = NeuronMask.random(graph, 1.0 - pruned, rng=0)
        masked = graph.zero_pruned(dense, mask).eval()
        t0 = time.perf_counter()
        compact = graph.compact(dense, mask).eval()
        compact_s = time.perf_counter() - t0
        x1 = example_input(1, size)
        with torch.inference_mode():
            err = float((compact(x1) - masked(x1)).abs().max())
        f_dense = count_flops(masked, x1)["forward"]
        f_compact = count_flops(compact, x1)["forward"]
        flops_ratio = f_dense / f_compact
        for batch in args.batch:
            x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(batch))
            lat = paired_latency(masked, compact, x, args.min_time, args.min_reps,
                                 args.max_reps, args.warmup)
            t_dense, t_compact = lat["masked_dense"], lat["compact"]
            speedup = t_dense["min_ms"] / t_compact["min_ms"]
            row = {
                "model": name, "image_size": size, "neurons_pruned": pruned,
                "alive_fraction": round(mask.alive_fraction(), 4), "batch": batch,
                "neurons": format_neurons(neurons_per_layer(compact)),
                "max_abs_error": err, "compact_build_s": round(compact_s, 4),
                "folded_border_convs": sum(isinstance(m, FoldedConv2d) for m in compact.modules()),
                "params": {"masked_dense": count_params(masked), "compact": count_params(compact)},
                "weight_bytes": {"masked_dense": model_bytes(masked), "compact": model_bytes(compact)},
                "activation_bytes": {"masked_dense": activation_bytes(masked, x),
                                     "compact": activation_bytes(compact, x)},
                "forward_flops_per_sample": {"masked_dense": f_dense, "compact": f_compact},
                "flops_ratio": round(flops_ratio, 3),
                "latency_ms": lat,
                "speedup": round(speedup, 3),
                "speedup_median": round(t_dense["median_ms"] / t_compact["median_ms"], 3),
                "speedup_over_flops_ratio": round(speedup / flops_ratio, 3),
                "meets_target": speedup >= TARGET * flops_ratio,
            }
            rows.append(row)
            print(f"{name:9s} pruned {pruned:.0%} batch {batch:3d}: flops x{flops_ratio:6.2f} "
                  f"speedup x{speedup:6.2f} ({speedup / flops_ratio:.2f} of flops ratio) "
                  f"dense {t_dense['min_ms']:8.2f} ms compact {t_compact['min_ms']:8.2f} ms "
                  f"err {err:.1e} {'OK' if row['meets_target'] else 'MISS'}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run, ~1 min)")
    parser.add_argument("--out", default="bench/results/surgery.json")
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18"])
    parser.add_argument("--prune", nargs="+", type=float, default=[0.5, 0.9])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--plain", action="store_true", help="keep zero biases (no folding)")
    args = parser.parse_args(argv)
    args.min_time, args.min_reps, args.max_reps, args.warmup = (
        (0.3, 3, 20, 1) if args.quick else (2.0, 10, 200, 3))
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    rows = [row for name in args.models for row in bench_model(name, args)]
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "surgery: compact vs masked-dense CPU inference",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "target": f"speedup >= {TARGET} * flops_ratio",
        "speedup_definition": "min latency(masked dense) / min latency(compact), interleaved calls",
        "machine": info,
        "all_meet_target": all(r["meets_target"] for r in rows), "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out} ({sum(r['meets_target'] for r in rows)}/{len(rows)} configurations meet the target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
