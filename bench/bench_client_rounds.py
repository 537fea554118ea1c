"""A tight client's rounds, physically: the study's Pi Zero 2 W client (LeNet-5 + DynHP, 5.4 MB).

One process is the client (``start_client_process``: allocator, warm-up, the resident model on); it
trains ``--rounds`` rounds through ``ClientRuntime.train_round``, exactly as the Flower client app
does, each round starting from the model it returned the round before (no server in between). Per
round the JSON records the kernel's physical peak over the round's baseline (``VmHWM`` reset per
round), the budget, the tensor peak the trainer measured, the batches and the neurons pruned to fit.
Writes ``bench/results/client_rounds.json``.

    python bench/bench_client_rounds.py                 # 3 seeds x 4 rounds, 1,200 samples
    python bench/bench_client_rounds.py --quick         # 1 seed x 2 rounds, 300 samples
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "sim_configs" / "study_converged.toml"
KEYS = ("physical_peak_bytes", "budget_bytes", "measured_peak_bytes", "predicted_peak_bytes", "batch_sizes",
        "neurons_pruned_to_fit", "params_alive", "physical_violation", "resident_fixed_bytes",
        "resident_retained_bytes", "val_accuracy")


def client_rounds(seed: int, rounds: int, samples: int, partition: int) -> list[dict]:
    """In this process: ``rounds`` rounds of one client of the study fleet; one row per round."""
    import torch

    from fedprune.client_runtime import ClientRuntime
    from fedprune.config import config_from_dict
    from fedprune.global_model import GlobalModel
    from fedprune.memory.resident import start_client_process
    from fedprune.surgery import NeuronMask

    torch.set_num_threads(1)
    start_client_process()
    tree = tomllib.loads(STUDY.read_text())
    tree["run"]["seed"] = seed
    tree["data"]["max-samples-per-client"] = samples
    tree["methods"]["enabled"] = "dynhp"
    cfg = config_from_dict(tree)
    rt = ClientRuntime(cfg, partition, cfg.fleet.num_clients)
    server = GlobalModel(cfg)  # the initial model the server sends: dense, every neuron alive
    arrays, mask = server.dense, server.mask
    del server
    state, rows = None, []
    for rnd in range(1, rounds + 1):
        reply = rt.train_round(arrays, mask.to_arrays(), rnd, state)
        m = reply.metrics
        rows.append({"round": rnd, **{k: m.get(k) for k in KEYS}})
        rows[-1]["physical_ratio"] = m["physical_peak_bytes"] / m["budget_bytes"] if m.get("budget_bytes") else None
        arrays, state, mask = reply.arrays, reply.method_state, NeuronMask.from_arrays(rt.graph, dict(reply.mask))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--samples", type=int, default=1200, help="the client's samples (train + validation)")
    p.add_argument("--partition", type=int, default=0, help="client of the study fleet (0-3: Pi Zero 2 W)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 300 samples")
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.rounds, a.samples = "0", 2, 300
    if a.child is not None:  # one fresh process per seed: the kernel's figures are that process's
        print(json.dumps(client_rounds(a.child, a.rounds, a.samples, a.partition)))
        return 0
    runs = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        cmd = [sys.executable, __file__, "--child", str(seed), "--rounds", str(a.rounds),
               "--samples", str(a.samples), "--partition", str(a.partition)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        runs[str(seed)] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [r for rs in runs.values() for r in rs]
    ratios = [r["physical_ratio"] for r in rows if r["physical_ratio"] is not None]
    summary = {"rounds": len(rows), "worst_ratio": max(ratios), "mean_ratio": sum(ratios) / len(ratios),
               "over_budget": sum(r > 1.0 for r in ratios),
               "worst_ratio_after_round_1": max((r["physical_ratio"] for r in rows if r["round"] > 1), default=None)}
    write_result("client_rounds", {"grid": {k: v for k, v in vars(a).items() if k != "child"},
                                   "summary": summary, "runs": runs}, a.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
