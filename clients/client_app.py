"""The Flower ClientApp: a thin adapter from Flower messages to ``fedprune.client_runtime``.

In simulation, ``node_config`` carries ``partition-id``/``num-partitions``; on a real device
(``flower-supernode --node-config``) the same keys select the data partition.
The client's method state (NEq's equilibrium) lives in ``context.state`` between rounds.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.records import (ARRAYS, INFO, MASK, METRICS, NUM_EXAMPLES, from_array_record,
                             records_to_state, split_metrics, state_to_records, to_array_record)
from fedprune.client_runtime import get_runtime
from fedprune.config import config_from_flat

STATE_ARRAYS, STATE_SCALARS = "method-state-arrays", "method-state-scalars"

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received compact model locally; reply compact tensors, mask and metrics."""
    cfg = config_from_flat(context.run_config)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    runtime = get_runtime(cfg, pid, num)
    server_round = int(msg.content["config"]["server-round"])
    state = records_to_state(context.state.get(STATE_ARRAYS), context.state.get(STATE_SCALARS))
    reply = runtime.train_round(from_array_record(msg.content[ARRAYS]),
                                from_array_record(msg.content[MASK]), server_round, state or None)
    arrays_rec, scalars_rec = state_to_records(reply.method_state or {})
    context.state[STATE_ARRAYS] = arrays_rec
    context.state[STATE_SCALARS] = scalars_rec
    metrics, info = split_metrics({**reply.metrics, NUM_EXAMPLES: reply.num_examples})
    content = RecordDict({ARRAYS: to_array_record(reply.arrays), MASK: to_array_record(reply.mask),
                          METRICS: metrics, INFO: info})
    return Message(content=content, reply_to=msg)
