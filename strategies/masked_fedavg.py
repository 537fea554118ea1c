"""MaskedFedAvg: Flower's FedAvg for clients that train different sub-networks of one model.

Keeps ``flwr.serverapp.strategy.Strategy``'s contract and overrides only the steps that differ:
- ``configure_train`` sends the given compact global arrays plus the global neuron mask, and samples
  nodes reproducibly (seeded by run seed and round) instead of with the global ``random`` module;
- ``aggregate_train`` turns replies into ``ClientUpdate``s, lets ``fedprune.GlobalModel`` validate
  every one of them and then average each coordinate over the clients that kept it; the quorum
  (``min_train_nodes``) counts *valid* replies only, and failures (errors, "does not fit", invalid
  tensors, no reply) are recorded as one line per client, keyed by partition id;
- ``start`` runs the rounds from ``initial_arrays`` with server-side evaluation and returns a Flower
  ``Result``. Extras: a per-round hook for the results folder, a first round (to resume), and an
  automatic round timeout (``timeout = 0``: see ``fedprune.round_timeout``).
The averaging math itself lives in ``fedprune.aggregation`` (no Flower there).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedprune.failures import one_line_reason, strip_ansi
from fedprune.global_model import ClientUpdate, GlobalModel, array_bytes
from fedprune.round_timeout import RoundTimeout
from fedprune.server_run import summarize_clients
from flower_io.records import (ARRAYS, CONFIG, FAILURE, INFO as INFO_KEY, MASK, METRICS, NUM_EXAMPLES,
                               from_array_record, join_metrics, to_array_record)

RoundHook = Callable[[int, dict[str, Any]], None]
EvaluateFn = Callable[[int, ArrayRecord], "MetricRecord | None"]


@dataclass
class RoundOutcome:
    """What one round's replies did: the new global arrays and the round's row for the results."""

    arrays: ArrayRecord
    row: dict[str, Any] = field(default_factory=dict)

    def metric_record(self) -> MetricRecord:
        """The numeric part of the row (what Flower's ``Result`` keeps per round)."""
        return MetricRecord({k: v for k, v in self.row.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})


class MaskedFedAvg(FedAvg):
    """FedAvg over masked (structurally pruned) client models; see module docstring."""

    def __init__(self, global_model: GlobalModel, *, seed: int = 0, clients_per_round: int = 0,
                 min_train_nodes: int = 2, **kwargs: Any):
        super().__init__(fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_available_nodes=max(min_train_nodes, clients_per_round), **kwargs)
        self.gm = global_model
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.node_labels: dict[int, str] = {}  # node id -> partition id, learnt from replies

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
        """Send ``arrays`` (the compact global model), the global mask and the round to sampled nodes."""
        node_ids = self.sample(grid, server_round)
        config["server-round"] = server_round
        record = RecordDict({ARRAYS: arrays, MASK: to_array_record(self.gm.mask.to_arrays()),
                             CONFIG: config})
        log(INFO, "configure_train: round %d, %d nodes", server_round, len(node_ids))
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

    def label(self, node_id: int) -> str:
        """The partition id (or device name) of ``node_id`` once it has replied; else ``node <id>``."""
        return self.node_labels.get(int(node_id), f"node {node_id}")

    def _failure(self, failures: dict[str, str], node_id: int, text: str,
                 client: str | None = None, detail: str = "") -> None:
        key = client or self.label(node_id)
        failures[key] = one_line_reason(text)
        log(WARNING, "client %s failed: %s", key, strip_ansi(detail or text))  # full text: the log

    def collect(self, replies: Iterable[Message], sampled: Sequence[int], timeout: float,
                failures: dict[str, str]) -> tuple[list[ClientUpdate], list[dict[str, Any]], int]:
        """Parse replies into updates; record no-reply, error and failure replies in ``failures``."""
        updates: list[ClientUpdate] = []
        clients: list[dict[str, Any]] = []
        upload = 0
        replies = list(replies)
        for msg in replies:  # learn which partition each node serves
            record = None if msg.has_error() else (msg.content.get(METRICS) or msg.content.get(FAILURE))
            client = record.get("partition_id", record.get("client")) if record is not None else None
            if client is not None and str(client) != "":
                self.node_labels[int(msg.metadata.src_node_id)] = str(client)
        answered = {msg.metadata.src_node_id for msg in replies}
        for node_id in sampled:
            if node_id not in answered:
                self._failure(failures, node_id, f"no reply within the round timeout ({timeout:.0f} s)")
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._failure(failures, node, f"error: {msg.error.reason}")
                continue
            if FAILURE in msg.content:
                rec = dict(msg.content[FAILURE].items())
                self._failure(failures, node, str(rec.get("reason", "")), str(rec.get("client") or "") or None,
                              detail=str(rec.get("traceback", "")))
                continue
            try:
                update = self.parse_reply(msg)
            except (KeyError, TypeError, ValueError) as err:
                self._failure(failures, node, f"malformed reply: {err}")
                continue
            upload += array_bytes(update.arrays) + array_bytes(update.mask)
            clients.append({"client": update.client, **update.metrics})
            if update.metrics.get("does_not_fit"):
                failures[update.client] = "does not fit its memory budget"
                continue
            updates.append(update)
        return updates, clients, upload

    def aggregate_round(self, server_round: int, replies: Iterable[Message],
                        sampled: Sequence[int] = (), timeout: float = 0.0) -> RoundOutcome:
        """Validate every reply, then aggregate if the valid ones reach ``min_train_nodes``."""
        failures: dict[str, str] = {}
        updates, clients, upload = self.collect(replies, sampled, timeout, failures)
        outcome = self.gm.aggregate(updates, min_accepted=self.min_train_nodes)
        failures.update({k: one_line_reason(v) for k, v in outcome["rejected"].items()})
        if not outcome["applied"]:
            valid = len(outcome["accepted"])
            log(WARNING, "round %d: %d valid replies < min %d; global model unchanged",
                server_round, valid, self.min_train_nodes)
            failures["round"] = f"only {valid} valid replies (min {self.min_train_nodes})"
        aggregated = len(outcome["accepted"]) if outcome["applied"] else 0
        compact, _ = self.gm.payload()
        row = {"clients": clients, "failures": failures, "aggregated": aggregated, "upload_bytes": upload,
               "dense_upload_bytes": self.gm.dense_param_bytes * len(clients), **summarize_clients(clients)}
        return RoundOutcome(to_array_record(compact), row)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's step: :meth:`aggregate_round` without the sampled nodes (no-replies not seen)."""
        outcome = self.aggregate_round(server_round, replies)
        return outcome.arrays, outcome.metric_record()

    # ------------------------------------------------------------------ loop

    def _run_round(self, grid: Grid, rnd: int, arrays: ArrayRecord, train_config: ConfigRecord | None,
                   deadline: RoundTimeout) -> RoundOutcome:
        messages = list(self.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
        sampled = [m.metadata.dst_node_id for m in messages]
        t0, timeout = time.perf_counter(), deadline.seconds()
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        if len(replies) == len(sampled):
            deadline.observe(time.perf_counter() - t0)
        per_client = array_bytes(from_array_record(arrays)) + array_bytes(self.gm.mask.to_arrays())
        outcome = self.aggregate_round(rnd, replies, sampled, timeout)
        outcome.row = {"round": rnd, "sampled": len(sampled), "download_bytes": per_client * len(sampled),
                       "dense_download_bytes": self.gm.dense_param_bytes * len(sampled), **outcome.row}
        return outcome

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn: EvaluateFn | None = None,
              *, first_round: int = 1, on_round: RoundHook | None = None) -> Result:
        """Run rounds ``first_round..num_rounds`` from ``initial_arrays``; return Flower's ``Result``.

        ``initial_arrays`` is the compact global model for the global model's current mask
        (``ValueError`` otherwise). ``timeout`` 0 means auto. After each round ``evaluate_fn(round,
        arrays)`` (server-side metrics) is merged into the round's row, which goes to ``on_round``.
        """
        self._check_arrays(initial_arrays)
        self.summary()
        result, arrays, deadline = Result(arrays=initial_arrays), initial_arrays, RoundTimeout(timeout)
        for rnd in range(first_round, num_rounds + 1):
            t0 = time.perf_counter()
            log(INFO, "[ROUND %d/%d]", rnd, num_rounds)
            outcome = self._run_round(grid, rnd, arrays, train_config, deadline)
            arrays = result.arrays = outcome.arrays
            result.train_metrics_clientapp[rnd] = outcome.metric_record()
            row = outcome.row
            if evaluate_fn is not None:
                evaluated = evaluate_fn(rnd, arrays)
                if evaluated is not None:
                    result.evaluate_metrics_serverapp[rnd] = evaluated
                    row.update(dict(evaluated.items()))
            row["round_seconds"] = time.perf_counter() - t0
            if on_round is not None:
                on_round(rnd, row)
        return result

    def _check_arrays(self, arrays: ArrayRecord) -> None:
        want = self.gm.graph.compact_shapes(self.gm.mask)
        got = {k: tuple(v.shape) for k, v in from_array_record(arrays).items()}
        if got != {k: tuple(s) for k, s in want.items()}:
            raise ValueError("initial_arrays do not match the global model's mask "
                             f"(keys or shapes differ, e.g. {sorted(set(got) ^ set(want))[:3]})")
