"""Failure records: one short line keyed by partition, tracebacks to the log; the round timeout policy."""

import time

import pytest
from flwr.app import Context, Error, Message, Metadata, RecordDict

from fedprune.failures import MAX_REASON, one_line_reason
from fedprune.round_timeout import AUTO_FACTOR, AUTO_FIRST_ROUND_S, AUTO_FLOOR_S, RoundTimeout

RAY_TRACEBACK = (
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=123, ip=10.0.0.1)\n"
    "Traceback (most recent call last):\n"
    '  File "/x/client_app.py", line 40, in train\n'
    "    raise InjectedFault('injected fault: client crashed')\n"
    "\x1b[31mfedprune.faults.InjectedFault: injected fault: client crashed\x1b[0m\n"
    + "  more context line\n" * 200
)


def test_a_ray_traceback_becomes_its_exception_line():
    assert one_line_reason(RAY_TRACEBACK) == "fedprune.faults.InjectedFault: injected fault: client crashed"


def test_reasons_are_single_short_lines_without_escape_codes():
    for text in ("", "\x1b[1m\x1b[0m", "x" * 5000, "a\nb\r\nc", RAY_TRACEBACK):
        line = one_line_reason(text)
        assert line and "\n" not in line and "\r" not in line and "\x1b" not in line
        assert len(line) <= MAX_REASON


def test_flower_error_replies_are_recorded_as_one_line(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedprune.config import config_from_dict
    from fedprune.global_model import GlobalModel
    from strategies.masked_fedavg import MaskedFedAvg

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    gm = GlobalModel(config_from_dict({"model": {"name": "lenet300"}}))
    strategy = MaskedFedAvg(gm, min_train_nodes=1)
    strategy.node_labels[7] = "5"
    meta = Metadata(run_id=1, message_id="r", src_node_id=7, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    outcome = strategy.aggregate_round(1, [Message(error=Error(code=0, reason=RAY_TRACEBACK), metadata=meta)],
                                       sampled=[7])
    assert outcome.row["failures"]["5"] == "fedprune.faults.InjectedFault: injected fault: client crashed"


def test_a_failing_client_replies_its_partition_and_traceback():
    from flwr.app import ConfigRecord

    from clients.client_app import app
    from flower_io.records import FAILURE

    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    ctx = Context(run_id=1, node_id=7, state=RecordDict(), run_config={"fleet.num-clients": 2},
                  node_config={"partition-id": 5, "num-partitions": 2})  # partition out of range
    msg = Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), metadata=meta)
    reply = app(msg, ctx)
    assert not reply.has_error()
    failure = dict(reply.content[FAILURE].items())
    assert failure["client"] == "5"
    assert "\n" not in failure["reason"] and "partition" in failure["reason"]
    assert "Traceback" in failure["traceback"]


def test_auto_round_timeout():
    t = RoundTimeout(0)
    assert t.auto and t.seconds() == AUTO_FIRST_ROUND_S
    t.observe(2.0)
    assert t.seconds() == AUTO_FLOOR_S
    t.observe(30.0)
    t.observe(10.0)
    assert t.seconds() == AUTO_FACTOR * 30.0 and t.longest() >= t.seconds()


def test_explicit_round_timeout_is_kept_and_bad_ones_refused():
    t = RoundTimeout(45)
    t.observe(100.0)
    assert t.seconds() == 45 and not t.auto
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="round-timeout"):
            RoundTimeout(bad)
