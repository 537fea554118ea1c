"""MaskedFedAvg against a fake Grid: the quorum counts valid replies only; Flower's start contract."""

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Result

from fedprune.config import config_from_dict
from fedprune.global_model import GlobalModel
from flower_io.records import ARRAYS, FAILURE, MASK, METRICS, from_array_record, to_array_record
from strategies.masked_fedavg import MaskedFedAvg


def reply_to(msg: Message, content: RecordDict) -> Message:
    """A reply from the message's destination node (what Flower's Grid hands back)."""
    meta = Metadata(run_id=1, message_id=f"r{msg.metadata.dst_node_id}", src_node_id=msg.metadata.dst_node_id,
                    dst_node_id=0, reply_to_message_id="", group_id="1", created_at=time.time(),
                    ttl=60.0, message_type="train")
    return Message(content=content, metadata=meta)


def good_content(msg: Message, partition: int, shift: float = 0.5) -> RecordDict:
    arrays = {k: v + shift if np.issubdtype(v.dtype, np.floating) else v
              for k, v in from_array_record(msg.content[ARRAYS]).items()}
    return RecordDict({ARRAYS: to_array_record(arrays), MASK: msg.content[MASK],
                       METRICS: MetricRecord({"partition_id": partition, "num-examples": 10})})


def nan_content(msg: Message, partition: int) -> RecordDict:
    content = good_content(msg, partition)
    arrays = from_array_record(content[ARRAYS])
    key = next(k for k, v in arrays.items() if v.dtype == np.float32)
    arrays[key] = np.full_like(arrays[key], np.nan)
    content[ARRAYS] = to_array_record(arrays)
    return content


class FakeGrid:
    """Four nodes (ids 101..104 serve partitions 0..3); ``answer(node, msg)`` builds each reply."""

    def __init__(self, answer):
        self.answer = answer
        self.timeouts: list[float] = []

    def get_node_ids(self):
        return [101, 102, 103, 104]

    def send_and_receive(self, messages, timeout):
        self.timeouts.append(timeout)
        out = []
        for msg in messages:
            content = self.answer(msg.metadata.dst_node_id - 101, msg)
            if content is not None:
                out.append(reply_to(msg, content))
        return out


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """What a ServerApp process has set before a strategy builds messages."""
    from flwr.supercore.task_identity import TaskIdentity
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def gm():
    return GlobalModel(config_from_dict({"model": {"name": "lenet300"}, "fleet": {"num-clients": 4}}))


def _start(gm, grid, rounds=1, **kw):
    strategy = MaskedFedAvg(gm, seed=0, min_train_nodes=4)
    rows = []
    result = strategy.start(grid, initial_arrays=to_array_record(gm.payload()[0]), num_rounds=rounds,
                            on_round=lambda r, row: rows.append(row), **kw)
    return result, rows


def test_three_valid_replies_do_not_make_a_quorum_of_four(gm):
    before = {k: v.copy() for k, v in gm.dense.items()}
    grid = FakeGrid(lambda p, msg: nan_content(msg, p) if p == 3 else good_content(msg, p))
    _, rows = _start(gm, grid)
    assert all(np.array_equal(before[k], gm.dense[k]) for k in before)  # global model unchanged
    row = rows[0]
    assert row["aggregated"] == 0
    assert row["failures"]["round"] == "only 3 valid replies (min 4)"
    assert "NaN" in row["failures"]["3"]


def test_four_valid_replies_aggregate(gm):
    before = {k: v.copy() for k, v in gm.dense.items()}
    _, rows = _start(gm, FakeGrid(lambda p, msg: good_content(msg, p)))
    assert rows[0]["aggregated"] == 4 and rows[0]["failures"] == {}
    assert not all(np.array_equal(before[k], gm.dense[k]) for k in before)


def test_start_returns_a_flower_result_from_initial_arrays(gm):
    sent = []

    def answer(p, msg):
        sent.append(from_array_record(msg.content[ARRAYS]))
        return good_content(msg, p)

    evaluated = []

    def evaluate_fn(rnd, arrays):
        evaluated.append(rnd)
        return MetricRecord({"accuracy": 0.5})

    initial = to_array_record(gm.payload()[0])
    result, rows = _start(gm, FakeGrid(answer), rounds=2, evaluate_fn=evaluate_fn)
    assert isinstance(result, Result)
    assert set(result.train_metrics_clientapp) == {1, 2} and evaluated == [1, 2]
    assert result.evaluate_metrics_serverapp[2]["accuracy"] == 0.5 and rows[1]["accuracy"] == 0.5
    first = sent[0]
    assert all(np.array_equal(first[k], v) for k, v in from_array_record(initial).items())
    final = from_array_record(result.arrays)
    assert all(np.array_equal(final[k], v) for k, v in gm.payload()[0].items())
    assert not hasattr(MaskedFedAvg(gm), "last_round")


def test_start_refuses_arrays_that_do_not_match_the_mask(gm):
    with pytest.raises(ValueError, match="initial_arrays"):
        MaskedFedAvg(gm).start(FakeGrid(lambda p, m: None), initial_arrays=ArrayRecord(), num_rounds=1)


def test_failure_replies_are_keyed_by_partition_with_one_line(gm):
    def answer(p, msg):
        if p == 1:
            return RecordDict({FAILURE: ConfigRecord({"client": "1", "reason": "MemoryError: out of memory",
                                                      "traceback": "Traceback ...\nMemoryError: out of memory"})})
        hangs = p == 2 and msg.content["config"]["server-round"] == 2
        return None if hangs else good_content(msg, p)

    _, rows = _start(gm, FakeGrid(answer), rounds=2, timeout=30)
    failures = rows[1]["failures"]
    assert failures["1"] == "MemoryError: out of memory"
    assert failures["2"] == "no reply within the round timeout (30 s)"  # known from round 1
    assert not any(k.startswith("node") for k in failures)


def test_auto_round_timeout_follows_the_measured_rounds(gm):
    grid = FakeGrid(lambda p, msg: good_content(msg, p))
    _start(gm, grid, rounds=3, timeout=0)
    assert grid.timeouts[0] == 600.0 and grid.timeouts[1] == grid.timeouts[2] == 60.0
    grid = FakeGrid(lambda p, msg: good_content(msg, p))
    _start(gm, grid, rounds=2, timeout=45)
    assert grid.timeouts == [45, 45]
