"""MaskedFedAvg: Flower's FedAvg for clients that train different sub-networks of one model.

Overrides only the steps that differ from ``flwr.serverapp.strategy.FedAvg``:
- ``configure_train`` sends the *compact* global model plus the global neuron mask, and samples nodes
  reproducibly (seeded by run seed and round) instead of with the global ``random`` module;
- ``aggregate_train`` turns replies into ``ClientUpdate``s and lets ``fedprune.GlobalModel`` average
  each coordinate over the clients that kept it; failures (errors, "does not fit", invalid tensors)
  are counted and skipped, and the round is dropped when fewer than ``min_train_nodes`` succeeded;
- ``start`` runs the rounds with server-side test evaluation, a per-round hook for the results
  folder, and an optional first round (to resume a checkpointed run).
The averaging math itself lives in ``fedprune.aggregation`` (no Flower there).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from clients.records import (ARRAYS, CONFIG, INFO as INFO_KEY, MASK, METRICS, NUM_EXAMPLES,
                             from_array_record, join_metrics, to_array_record)
from fedprune.global_model import ClientUpdate, GlobalModel, array_bytes
from fedprune.server_run import summarize_clients

RoundHook = Callable[[int, dict[str, Any]], None]


class MaskedFedAvg(FedAvg):
    """FedAvg over masked (structurally pruned) client models; see module docstring."""

    def __init__(self, global_model: GlobalModel, *, seed: int = 0, clients_per_round: int = 0,
                 min_train_nodes: int = 2, **kwargs: Any):
        super().__init__(fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_available_nodes=max(min_train_nodes, clients_per_round), **kwargs)
        self.gm = global_model
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.last_round: dict[str, Any] = {}
        self._sampled: list[int] = []

    # ------------------------------------------------------------------ train

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """Node ids for this round: all, or ``clients_per_round`` drawn with a per-round seed."""
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < self.min_available_nodes:
            log(INFO, "Waiting for nodes: %d connected, %d needed", len(nodes), self.min_available_nodes)
            time.sleep(1)
            nodes = sorted(grid.get_node_ids())
        k = self.clients_per_round or len(nodes)
        return sorted(random.Random(self.seed * 100_003 + server_round).sample(nodes, min(k, len(nodes))))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the compact global model, the global mask and the round number to sampled nodes."""
        node_ids = self.sample(grid, server_round)
        compact, mask = self.gm.payload()
        config["server-round"] = server_round
        record = RecordDict({ARRAYS: to_array_record(compact), MASK: to_array_record(mask),
                             CONFIG: config})
        per_client = array_bytes(compact) + array_bytes(mask)
        self._sampled = list(node_ids)
        self.last_round = {"sampled": len(node_ids), "download_bytes": per_client * len(node_ids),
                           "dense_download_bytes": self.gm.dense_param_bytes * len(node_ids)}
        log(INFO, "configure_train: round %d, %d nodes, %d bytes each", server_round, len(node_ids),
            per_client)
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def parse_reply(self, msg: Message) -> ClientUpdate:
        """A reply's content as a ``ClientUpdate`` (``KeyError``/``TypeError`` if records are missing)."""
        content = msg.content
        metrics = join_metrics(content.get(METRICS), content.get(INFO_KEY))
        return ClientUpdate(
            client=str(metrics.get("partition_id", msg.metadata.src_node_id)),
            arrays=from_array_record(content[ARRAYS]),
            mask=from_array_record(content[MASK]),
            num_examples=int(metrics.get(NUM_EXAMPLES, 0)),
            metrics=metrics,
        )

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Masked aggregation of the valid replies; failures are recorded, never aggregated."""
        failures: dict[str, str] = {}
        updates: list[ClientUpdate] = []
        clients: list[dict[str, Any]] = []
        upload = 0
        replies = list(replies)
        answered = {msg.metadata.src_node_id for msg in replies}
        for node_id in self._sampled:
            if node_id not in answered:
                failures[f"node-{node_id}"] = "no reply within the round timeout"
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                failures[f"node-{node}"] = f"error: {msg.error.reason}"
                continue
            try:
                update = self.parse_reply(msg)
            except (KeyError, TypeError, ValueError) as err:
                failures[f"node-{node}"] = f"malformed reply: {err}"
                continue
            upload += array_bytes(update.arrays) + array_bytes(update.mask)
            clients.append({"client": update.client, **update.metrics})
            if update.metrics.get("does_not_fit"):
                failures[update.client] = "does not fit its memory budget"
                continue
            updates.append(update)
        outcome: dict[str, Any] = {"accepted": [], "rejected": {}}
        if len(updates) >= self.min_train_nodes:
            outcome = self.gm.aggregate(updates)
        else:
            log(WARNING, "round %d: %d valid replies < min %d; global model unchanged",
                server_round, len(updates), self.min_train_nodes)
            failures["round"] = f"only {len(updates)} valid replies (min {self.min_train_nodes})"
        failures.update(outcome["rejected"])
        self.last_round.update({
            "clients": clients, "failures": failures, "aggregated": len(outcome["accepted"]),
            "upload_bytes": upload,
            "dense_upload_bytes": self.gm.dense_param_bytes * len(clients),
            **summarize_clients(clients),
        })
        compact, _ = self.gm.payload()
        return to_array_record(compact), MetricRecord({"aggregated": len(outcome["accepted"])})

    # ------------------------------------------------------------------ loop

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn: Any = None,
              *, first_round: int = 1, on_round: RoundHook | None = None) -> None:
        """Run rounds ``first_round..num_rounds``; after each, evaluate and call ``on_round``.

        ``evaluate_fn(round) -> dict`` (server-side test metrics) is merged into the round's row.
        """
        self.summary()
        for rnd in range(first_round, num_rounds + 1):
            t0 = time.perf_counter()
            log(INFO, "[ROUND %d/%d]", rnd, num_rounds)
            replies = grid.send_and_receive(
                messages=self.configure_train(rnd, ArrayRecord(), ConfigRecord(dict(train_config or {})), grid),
                timeout=timeout)
            self.aggregate_train(rnd, replies)
            row: dict[str, Any] = {"round": rnd, **self.last_round}
            if evaluate_fn is not None:
                row.update(evaluate_fn(rnd))
            row["round_seconds"] = time.perf_counter() - t0
            if on_round is not None:
                on_round(rnd, row)
