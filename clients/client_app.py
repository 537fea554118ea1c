"""The Flower ClientApp: a thin adapter from Flower messages to ``fedprune.client_runtime``.

In simulation, ``node_config`` carries ``partition-id``/``num-partitions``; on a real device
(``flower-supernode --node-config``) the same keys select the data partition, and ``budget-mb``
(MB or ``"auto"``), ``reserve-mb`` and ``data-dir`` override the run config for that node
(``fedprune.node``). The client's method state (NEq's equilibrium) lives in ``context.state``
between rounds. Every reply also reports the process's resident memory (``rss_bytes``,
``rss_peak_bytes``) beside the training-memory figures.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import traceback
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedprune.client_runtime import get_runtime
from fedprune.config import config_from_flat
from fedprune.failures import one_line_reason
from fedprune.memory.resident import start_client_process
from fedprune.node import parse_node_config, process_memory
from flower_io.records import (ARRAYS, FAILURE, INFO, MASK, METRICS, NUM_EXAMPLES, from_array_record,
                               records_to_state, split_metrics, state_to_records, to_array_record)

STATE_ARRAYS, STATE_SCALARS = "method-state-arrays", "method-state-scalars"

app = ClientApp()


def where_it_ran() -> dict[str, Any]:
    """The host, and in a Ray simulation the Ray node, that ran this client (for the report)."""
    out: dict[str, Any] = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")  # only inside a simulation's Ray actor; never imported here
    if ray is not None and ray.is_initialized():
        out["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received compact model locally; reply compact tensors, mask and metrics.

    A client that fails replies a ``failure`` record (its partition id, one line of reason and the
    traceback) so the server can name it and log the traceback; the global model never sees it.
    """
    try:
        return _train(msg, context)
    except Exception as exc:  # reported to the server, which logs the traceback
        client = str(context.node_config.get("partition-id", context.node_id))
        failure = ConfigRecord({"client": client, "reason": one_line_reason(f"{type(exc).__name__}: {exc}"),
                                "traceback": traceback.format_exc()})
        return Message(content=RecordDict({FAILURE: failure}), reply_to=msg)


def _train(msg: Message, context: Context) -> Message:
    start_client_process()  # this process is the device: its resident memory is what the budget bounds
    cfg = config_from_flat(context.run_config)
    node = parse_node_config(context.node_config)
    if node.data_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=node.data_dir))
    runtime = get_runtime(cfg, node.partition_id, node.num_partitions,
                          budget_spec=node.budget_spec(cfg.memory.reserve_mb))
    server_round = int(msg.content["config"]["server-round"])
    state = records_to_state(context.state.get(STATE_ARRAYS), context.state.get(STATE_SCALARS))
    reply = runtime.train_round(from_array_record(msg.content[ARRAYS]),
                                from_array_record(msg.content[MASK]), server_round, state or None)
    arrays_rec, scalars_rec = state_to_records(reply.method_state or {})
    context.state[STATE_ARRAYS] = arrays_rec
    context.state[STATE_SCALARS] = scalars_rec
    metrics, info = split_metrics({**reply.metrics, NUM_EXAMPLES: reply.num_examples,
                                   **process_memory(), "budget_source": node.budget_label,
                                   **where_it_ran()})
    content = RecordDict({ARRAYS: to_array_record(reply.arrays), MASK: to_array_record(reply.mask),
                          METRICS: metrics, INFO: info})
    return Message(content=content, reply_to=msg)
