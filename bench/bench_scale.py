"""Scale bench: a 100-client LeNet-5 fleet (10 sampled per round) on this machine, through Flower + Ray.

Runs one federated simulation exactly as ``fedprune simulate`` does and, while it runs, samples the
host memory of the whole process tree every 0.5 s: this process, the Flower SuperLink and SuperExec,
the Ray GCS/raylet/workers (found as descendants, plus any process whose ``FLWR_HOME`` is the run's
private Flower home, which catches daemonised Ray processes). It reports

- ``peak_rss_bytes``  the largest sum of RSS over that tree (counts shared pages once per process,
  so it over-states; the conservative figure);
- ``peak_pss_bytes``  the largest sum of PSS (shared pages divided among sharers; sampled every
  2 s because reading it is slower) - the better estimate of what the tree really occupies;
- seconds per round from ``metrics.jsonl`` (``round_seconds``: send, train, receive, aggregate,
  evaluate), and the start-up time before round 1.

Writes ``bench/results/scale.json`` (or ``--out``). ``--quick``: 2 rounds, 16 samples per client.

    .venv/bin/python bench/bench_scale.py            # 100 clients, 10 per round, 5 rounds
    .venv/bin/python bench/bench_scale.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_result  # noqa: E402  (bench/common.py)
from fedprune.config import config_from_dict  # noqa: E402
from fedprune.results import read_metrics  # noqa: E402

# a mixed Pi fleet of 100 devices; budget-scale 0.01 makes the budgets bind for LeNet-5 (see docs/studies.md)
FLEET_100 = "pi-zero-2w:20, pi3b:20, pi4-2gb:30, pi4-4gb:20, pi5-8gb:10"


def bench_config(args: argparse.Namespace) -> dict:
    return {
        "run": {"name": "bench-scale", "seed": 0, "num-rounds": args.rounds},
        "data": {"dataset": "fashion-mnist", "partitioner": "iid",
                 "max-samples-per-client": args.samples},
        "model": {"name": "lenet5"},
        "train": {"local-epochs": 1, "batch-size": 16, "min-batch": 8, "max-batch": 64},
        "methods": {"enabled": args.methods},
        "memory": {"budget": "constant", "budget-mb": 1.0},
        "fleet": {"num-clients": args.clients, "clients-per-round": args.per_round,
                  "min-clients": max(1, args.per_round // 2),
                  "devices": FLEET_100 if args.clients == 100 else "",
                  "budgets-mb": "" if args.clients == 100 else ",".join(["8"] * args.clients),
                  "budget-scale": 0.01 if args.clients == 100 else 1.0},
        "simulation": {"client-cpus": 1},
    }


class TreeSampler:
    """Samples the summed RSS (and PSS, less often) of a process tree in a background thread."""

    def __init__(self, flwr_home: Path, interval: float = 0.5, pss_every: float = 2.0):
        self.root = psutil.Process()
        self.home = str(flwr_home.resolve())
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.samples = 0
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()
        self._last_env_scan = 0.0
        self._extra: set[int] = set()

    def procs(self) -> list[psutil.Process]:
        seen = {self.root.pid: self.root}
        try:
            for p in self.root.children(recursive=True):
                seen[p.pid] = p
        except psutil.Error:
            pass
        now = time.monotonic()
        if now - self._last_env_scan > 2.0:  # daemonised processes: match the run's FLWR_HOME
            self._last_env_scan = now
            for p in psutil.process_iter(["pid"]):
                if p.pid in seen:
                    continue
                try:
                    if p.environ().get("FLWR_HOME") == self.home:
                        self._extra.add(p.pid)
                except (psutil.Error, OSError):
                    continue
        for pid in list(self._extra):
            if pid not in seen:
                try:
                    seen[pid] = psutil.Process(pid)
                except psutil.Error:
                    self._extra.discard(pid)
        return list(seen.values())

    def _loop(self) -> None:
        last_pss = 0.0
        while not self._stop.wait(self.interval):
            procs = self.procs()
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.timeline.append((round(time.monotonic() - self._t0, 1), rss))
            if time.monotonic() - last_pss >= self.pss_every:
                last_pss = time.monotonic()
                pss = 0
                for p in procs:
                    try:
                        pss += p.memory_full_info().pss
                    except (psutil.Error, AttributeError):
                        pass
                self.peak_pss = max(self.peak_pss, pss)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, 16 samples per client")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=128, help="max samples per client")
    ap.add_argument("--methods", default="dynhp+neq")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    ap.add_argument("--keep", metavar="DIR", help="keep the run's results folder here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.samples = 2, 16

    from fedprune.preflight import check_data_available
    from fedprune.run_folder import prepare_run_dir
    from fedprune.launch import SimulationSpec, run_flower_simulation

    cfg = config_from_dict(bench_config(args))
    check_data_available(cfg)
    tmp = None
    if args.keep:
        run_out = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="fedprune-bench-scale-")
        run_out = Path(tmp) / "run"
    cfg, run_dir = prepare_run_dir(cfg, str(run_out), None)
    spec = SimulationSpec.for_run(cfg, run_dir)
    baseline_available = psutil.virtual_memory().available
    min_available = baseline_available
    first_round_at: list[float] = []

    def on_poll() -> None:
        nonlocal min_available
        min_available = min(min_available, psutil.virtual_memory().available)
        if not first_round_at and read_metrics(run_dir):
            first_round_at.append(time.perf_counter() - t0)

    print(f"bench_scale: {cfg.fleet.num_clients} clients, {cfg.fleet.clients_per_round} per round, "
          f"{cfg.run.num_rounds} rounds, {cfg.data.max_samples_per_client} samples/client -> {run_dir}",
          flush=True)
    t0 = time.perf_counter()
    with TreeSampler(run_dir / ".flwr") as sampler:
        code = run_flower_simulation(spec, on_poll=on_poll)
    wall = time.perf_counter() - t0
    rows = read_metrics(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    secs = [float(r["round_seconds"]) for r in rows if "round_seconds" in r]
    result = {
        "ok": bool(summary) and code == 0,
        "flwr_exit_code": code,
        "setting": {"clients": cfg.fleet.num_clients, "clients_per_round": cfg.fleet.clients_per_round,
                    "rounds": cfg.run.num_rounds, "model": cfg.model.name, "dataset": cfg.data.dataset,
                    "max_samples_per_client": cfg.data.max_samples_per_client,
                    "methods": cfg.methods.enabled, "fleet": cfg.fleet.devices or cfg.fleet.budgets_mb,
                    "budget_scale": cfg.fleet.budget_scale, "client_cpus": cfg.simulation.client_cpus,
                    "quick": bool(args.quick)},
        "host": {"cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
                 "platform": platform.platform()},
        # headline figures read by bench/results_page.py: peak = the conservative RSS sum
        "peak_host_memory_bytes": sampler.peak_rss,
        "fits": bool(summary) and sampler.peak_rss < psutil.virtual_memory().total,
        "seconds_per_round": statistics.fmean(secs[1:]) if len(secs) > 1 else (secs[0] if secs else None),
        "peak_rss_bytes": sampler.peak_rss,
        "peak_rss_gib": round(sampler.peak_rss / 2**30, 3),
        "peak_pss_bytes": sampler.peak_pss,
        "peak_pss_gib": round(sampler.peak_pss / 2**30, 3),
        "peak_processes": sampler.peak_procs,
        "memory_samples": sampler.samples,
        "host_available_drop_bytes": baseline_available - min_available,
        "round_seconds": secs,
        "seconds_per_round_mean": statistics.fmean(secs) if secs else None,
        "startup_seconds": first_round_at[0] - (secs[0] if secs else 0) if first_round_at else None,
        "wall_seconds": wall,
        "final_accuracy": summary.get("final_accuracy"),
        "final_params": summary.get("final_params"),
        "client_failures": summary.get("client_failures"),
        "rss_timeline": sampler.timeline[:: max(1, len(sampler.timeline) // 200)],
        "notes": "100 simulated clients (mixed Pi fleet, budget-scale 0.01), 10 sampled per round, LeNet-5 "
                 "through Flower + Ray on this machine. Peak host memory = the largest sum of RSS over the "
                 "whole process tree (SuperLink, SuperExec, Ray GCS/raylet/workers), sampled every 0.5 s; RSS "
                 "counts shared pages (torch, Ray libraries) once per process and over-states real use, PSS "
                 "(peak_pss_bytes) divides them among sharers. seconds_per_round is the steady state (rounds "
                 "after the first, as measured by the server app); the first round also starts the Ray "
                 "actors. host_available_drop is machine-wide and includes other users' activity.",
    }
    write_result("scale", result, args.out)
    print(json.dumps({k: result[k] for k in ("ok", "peak_rss_gib", "peak_pss_gib", "peak_processes",
                                             "seconds_per_round", "seconds_per_round_mean",
                                             "startup_seconds", "wall_seconds", "final_accuracy")}, indent=1))
    if not result["ok"]:
        print(f"bench_scale: the run did not finish; see {run_dir / 'flwr.log'}", file=sys.stderr)
    elif tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
