"""One ``train_local`` run in this process, its resident-memory figures printed as one JSON line.

Used by bench_allocator.py and bench_rss.py, which start it as a fresh subprocess per point (the
allocator setting comes from the environment, and every point starts from a clean process):

    python bench/rss_probe.py --model resnet8 --budget-mb 20 --methods none --samples 2700

Figures: ``baseline_bytes`` (RSS after model, data and the per-process warm-up), ``rss_growth_bytes``
(VmHWM over the run minus that baseline: what the OS saw the training use), ``tensor_peak_bytes``
(fedprune's live-tensor measurement), the batch chosen and the trainer's own physical metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--budget-mb", type=float, required=True)
    p.add_argument("--methods", default="none")
    p.add_argument("--samples", type=int, default=2700)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument("--raw", action="store_true", help="no allocator setting, no resident model (old trainer path)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if not a.raw:  # the client process's start, before any convolution runs
        from fedprune.memory.resident import start_client_process

        start_client_process()
    import torch

    torch.set_num_threads(a.threads)

    from fedprune.data import load_dataset
    from fedprune.memory import process
    from fedprune.models import build_model, example_input
    from fedprune.surgery import NeuronGraph, NeuronMask
    from fedprune.train import ClientData, TrainConfig, train_local

    torch.manual_seed(0)
    train, _ = load_dataset("fashion-mnist")
    x, y = train.x[: a.samples].clone(), train.y[: a.samples].clone()
    del train
    dense = build_model(a.model, 1, 10, 28, seed=0)
    graph = NeuronGraph.from_model(dense, example_input(1, 28))
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    data = ClientData(x[: int(0.9 * len(x))], y[: int(0.9 * len(y))], x[int(0.9 * len(x)):], y[int(0.9 * len(y)):])
    cfg = TrainConfig(epochs=a.epochs, lr=0.05, batch_size=32, min_batch=8, max_batch=1024)
    budget = int(a.budget_mb * 2**20)
    warm_seconds = 0.0
    if a.raw:
        with torch.no_grad():
            model(data.train_x[:8])  # one warm forward, as in the table
    else:
        from fedprune.methods import parse_methods
        from fedprune.train.local import warm_up_process

        t_warm = time.perf_counter()
        warm_up_process(model, mask, graph, data, cfg, parse_methods(a.methods), None, budget)
        warm_seconds = time.perf_counter() - t_warm
    window = process.PeakWindow().start()  # baseline without the model, as the trainer's round
    window.start_bytes -= sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])
    res = train_local(model, mask, graph, data, cfg, a.methods, None, budget)
    growth = window.growth_bytes()
    window.stop()
    m = res.metrics
    out = {"model": a.model, "budget_mb": a.budget_mb, "methods": a.methods, "samples": a.samples,
           "raw": a.raw, "budget_bytes": budget, "baseline_bytes": window.start_bytes,
           "rss_growth_bytes": int(growth), "peak_method": window.method,
           "tensor_peak_bytes": int(m.get("measured_peak_bytes", 0)),
           "batch_max": m.get("batch_max", 0), "batch_final": m.get("batch_final", 0),
           "does_not_fit": int(m.get("does_not_fit", 0)),
           "trainer_rss_peak_bytes": int(m.get("physical_peak_bytes", 0)),
           "trainer_physical_violation": int(m.get("physical_violation", 0)),
           "resident_fixed_bytes": int(m.get("resident_fixed_bytes", 0)),
           "resident_retained_bytes": int(m.get("resident_retained_bytes", 0)),
           "resident_slope": float(m.get("resident_slope", 0.0)), "warm_up_seconds": warm_seconds,
           "seconds": time.perf_counter() - t0}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
