"""The Flower ServerApp: config -> global model -> MaskedFedAvg rounds -> final simplification.

Everything it decides comes from ``fedprune`` (config, global model, results folder); this file only
wires them to Flower's ``Grid``.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.app import Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedprune.checkpoint import save_checkpoint
from fedprune.config import config_from_flat
from fedprune.global_model import GlobalModel
from fedprune.resume import resume_state
from fedprune.server_run import ServerRun
from flower_io.records import to_array_record
from strategies.masked_fedavg import MaskedFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured number of rounds (resuming from a checkpoint when one exists)."""
    cfg = config_from_flat(context.run_config)
    run = ServerRun(cfg)
    gm = GlobalModel(cfg)
    strategy = MaskedFedAvg(gm, seed=cfg.run.seed, clients_per_round=cfg.fleet.clients_per_round,
                            min_train_nodes=cfg.fleet.min_clients)
    first_round, rows, previous_wall = 1, [], 0.0
    state = resume_state(run.out_dir, cfg)  # refuses damaged files; never truncates them
    ckpt = state.checkpoint
    if ckpt is not None:
        gm.load_state(ckpt.dense, ckpt.mask)
        rows = state.rows
        first_round = ckpt.round + 1
        previous_wall = float(rows[-1].get("wall_seconds", 0.0)) if rows else 0.0
        log(INFO, "Resuming %s from round %d", run.out_dir, first_round)
    run.start(resume_rows=rows)
    run.t0 -= previous_wall

    def evaluate_fn(rnd: int, arrays: Any) -> MetricRecord:
        loss, acc = run.evaluate(gm)  # ``arrays`` is gm's compact model, which gm scores
        alive = gm.params_alive()
        return MetricRecord({"accuracy": acc, "loss": loss, "params_alive": alive,
                             "compression": gm.dense_params() / max(alive, 1),
                             "neurons_alive": int(gm.mask.num_alive())})

    def on_round(rnd: int, row: dict[str, Any]) -> None:
        run.record_round(row)
        save_checkpoint(run.out_dir, rnd, gm.dense, gm.mask.to_arrays())
        log(INFO, "round %d: accuracy %.4f, params %d, failures %d", rnd, row["accuracy"],
            row["params_alive"], len(row.get("failures", {})))

    strategy.start(grid, initial_arrays=to_array_record(gm.payload()[0]), num_rounds=cfg.run.num_rounds,
                   timeout=cfg.simulation.round_timeout, evaluate_fn=evaluate_fn,
                   first_round=first_round, on_round=on_round)
    summary = run.finalize(gm)
    log(INFO, "Final model: accuracy %.4f, %d params (%.1fx), results in %s",
        summary["final_accuracy"], summary["final_params"], summary["compression"], run.out_dir)
