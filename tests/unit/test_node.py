"""Node config (``flower-supernode --node-config``): parsing, errors, and its effect on a client."""

from __future__ import annotations

import time

import pytest

from fedprune.memory import BudgetSpec
from fedprune.node import (NodeConfigError, NodeSettings, format_node_config, parse_node_config,
                           process_memory)

MIB = 2**20


def test_simulation_node_config_keeps_the_run_config_budget():
    node = parse_node_config({"partition-id": 3, "num-partitions": 8})
    assert node == NodeSettings(3, 8)
    assert not node.has_budget and node.budget_spec(256.0) is None
    assert node.budget_label == "run-config" and node.data_dir is None


def test_fixed_and_auto_budgets():
    fixed = parse_node_config({"partition-id": 0, "num-partitions": 2, "budget-mb": 6})
    assert fixed.budget_spec() == BudgetSpec("constant", mb=6.0) and fixed.budget_label == "node-config"
    auto = parse_node_config({"partition-id": 1, "num-partitions": 2, "budget-mb": "AUTO"})
    assert auto.budget_spec(300.0) == BudgetSpec("auto", reserve_mb=300.0)  # the run's reserve
    assert auto.budget_label == "node-config:auto"
    own = parse_node_config({"partition-id": 1, "num-partitions": 2, "budget-mb": "auto",
                             "reserve-mb": 128})
    assert own.budget_spec(300.0) == BudgetSpec("auto", reserve_mb=128.0)


def test_strings_numbers_data_dir_and_foreign_keys(tmp_path):
    node = parse_node_config({"partition-id": "1", "num-partitions": 4.0, "budget-mb": "12.5",
                              "data-dir": str(tmp_path), "other-app-key": "x"})
    assert (node.partition_id, node.num_partitions, node.budget_mb) == (1, 4, 12.5)
    assert node.data_dir == str(tmp_path.resolve())


@pytest.mark.parametrize("conf, key", [
    ({"num-partitions": 2}, "partition-id"),
    ({"partition-id": 0}, "num-partitions"),
    ({"partition-id": 2, "num-partitions": 2}, "partition-id"),
    ({"partition-id": -1, "num-partitions": 2}, "partition-id"),
    ({"partition-id": True, "num-partitions": 2}, "partition-id"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions"),
    ({"partition-id": 0, "num-partitions": "two"}, "num-partitions"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": 0}, "budget-mb"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": -5}, "budget-mb"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": "lots"}, "budget-mb"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": float("nan")}, "budget-mb"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": 8, "reserve-mb": 64}, "reserve-mb"),
    ({"partition-id": 0, "num-partitions": 2, "reserve-mb": 64}, "reserve-mb"),
    ({"partition-id": 0, "num-partitions": 2, "budget-mb": "auto", "reserve-mb": -1}, "reserve-mb"),
    ({"partition-id": 0, "num-partitions": 2, "data-dir": "/no/such/folder"}, "data-dir"),
    ({"partition-id": 0, "num-partitions": 2, "data-dir": 5}, "data-dir"),
    ({"partition_id": 0, "num-partitions": 2}, "partition_id"),
    ({"partition-id": 0, "num-partitions": 2, "Budget-MB": 8}, "Budget-MB"),
])
def test_bad_node_configs_fail_in_one_line_naming_the_key(conf, key):
    with pytest.raises(NodeConfigError) as err:
        parse_node_config(conf)
    msg = str(err.value)
    assert key in msg and "\n" not in msg, msg


def test_misspelled_key_gets_a_hint():
    with pytest.raises(NodeConfigError, match="did you mean 'budget-mb'"):
        parse_node_config({"partition-id": 0, "num-partitions": 2, "budget_mb": 8})


def test_format_node_config_round_trips_through_flower():
    from flwr.common.config import parse_config_args

    values = {"partition-id": 1, "num-partitions": 2, "budget-mb": "auto", "reserve-mb": 64.5,
              "data-dir": "/data/fashion mnist"}
    text = format_node_config(values)
    assert parse_config_args([text]) == values
    assert parse_node_config(parse_config_args(["partition-id=0 num-partitions=2 budget-mb=6"])).budget_mb == 6


def test_process_memory_reports_rss():
    mem = process_memory()
    assert mem["rss_bytes"] > 10 * MIB and mem["rss_peak_bytes"] >= mem["rss_bytes"]


def test_node_budget_overrides_the_fleet_but_keeps_its_methods():
    from fedprune.client_runtime import ClientRuntime
    from fedprune.config import config_from_dict

    cfg = config_from_dict({
        "data": {"max-samples-per-client": 40},
        "methods": {"enabled": "dynhp"},
        "memory": {"budget": "constant", "budget-mb": 64.0},
        "fleet": {"num-clients": 2, "devices": "pi-zero-2w:1, pi4-2gb:1",
                  "methods": "pi-zero-2w=dynhp+neq; pi4-2gb=none"}})
    from_fleet = ClientRuntime(cfg, 0, 2)
    node = ClientRuntime(cfg, 0, 2, budget_spec=BudgetSpec("constant", mb=20.0))
    assert node.methods == from_fleet.methods == ["dynhp", "neq"]
    assert node.budget_bytes(1) == 20 * MIB != from_fleet.budget_bytes(1)
    # a device whose partition lies outside the fleet still runs when its node config sets a budget
    outside = ClientRuntime(cfg, 3, 4, budget_spec=BudgetSpec("constant", mb=5.0))
    assert outside.methods == ["dynhp"] and outside.budget_bytes(1) == 5 * MIB
    with pytest.raises(ValueError, match="partition-id"):
        ClientRuntime(cfg, 3, 4)


def test_client_app_applies_the_node_config_and_reports_rss():
    """The ClientApp itself, called in-process with a device's node config."""
    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

    from clients.client_app import app
    from flower_io.records import ARRAYS, CONFIG, INFO, MASK, METRICS, to_array_record
    from fedprune.config import config_from_dict, flatten, to_dict
    from fedprune.global_model import GlobalModel

    cfg = config_from_dict({"data": {"max-samples-per-client": 48}, "methods": {"enabled": "dynhp"},
                            "memory": {"budget": "constant", "budget-mb": 64.0},
                            "fleet": {"num-clients": 2}})
    compact, mask = GlobalModel(cfg).payload()
    content = RecordDict({ARRAYS: to_array_record(compact), MASK: to_array_record(mask),
                          CONFIG: ConfigRecord({"server-round": 1})})
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    ctx = Context(run_id=1, node_id=7, state=RecordDict(), run_config=flatten(to_dict(cfg)),
                  node_config={"partition-id": 1, "num-partitions": 2, "budget-mb": 9})
    reply = app(Message(content=content, metadata=meta), ctx)
    assert not reply.has_error()
    metrics, info = dict(reply.content[METRICS]), dict(reply.content[INFO])
    assert metrics["budget_bytes"] == 9 * MIB and info["budget_source"] == "node-config"
    assert metrics["partition_id"] == 1 and metrics["num-examples"] > 0
    assert metrics["rss_bytes"] > 0 and metrics["rss_peak_bytes"] >= metrics["rss_bytes"]
    assert info["host"]
