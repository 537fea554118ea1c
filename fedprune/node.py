"""Per-node settings of a client: Flower's ``node_config`` parsed and checked (no Flower imports).

In simulation Flower gives every virtual node ``partition-id`` and ``num-partitions``. On a real device
the same keys, and a few more, come from ``flower-supernode --node-config``::

    flower-supernode ... --node-config 'partition-id=0 num-partitions=4 budget-mb=64 data-dir="/data"'

| key              | value                                                                    |
| ---------------- | ------------------------------------------------------------------------ |
| `partition-id`   | integer in ``[0, num-partitions)``: which data partition this node trains |
| `num-partitions` | integer >= 1: how many partitions the data set is split into             |
| `budget-mb`      | training-memory budget in MB (number > 0), or ``"auto"``: the host's     |
|                  | available memory (psutil) minus ``reserve-mb``, read every round         |
| `reserve-mb`     | MB kept free with ``budget-mb = "auto"`` (default: the run's             |
|                  | ``memory.reserve-mb``); only valid with ``budget-mb = "auto"``           |
| `data-dir`       | folder holding the data set on this node (overrides ``data.data-dir``)   |

A node's ``budget-mb`` overrides whatever budget the run config (``[memory]``, ``[fleet]``) would give
that partition; the methods still come from the run config and fleet. Keys written with underscores
or in another case (``budget_mb``) are rejected with a hint, since Flower would silently ignore them;
any other key is left alone (a SuperNode may serve several apps). Every error is a one-line
``NodeConfigError`` naming the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fedprune.memory import BudgetSpec

PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
BUDGET_MB, RESERVE_MB, DATA_DIR = "budget-mb", "reserve-mb", "data-dir"
NODE_KEYS = (PARTITION_ID, NUM_PARTITIONS, BUDGET_MB, RESERVE_MB, DATA_DIR)
DEVICE_KEYS = (BUDGET_MB, RESERVE_MB, DATA_DIR)  # only ever given on real devices
AUTO = "auto"


class NodeConfigError(ValueError):
    """A node-config value is missing, misspelled, of the wrong type or out of range (one line)."""


def _fail(key: str, value: Any, why: str) -> NodeConfigError:
    return NodeConfigError(f"node config {key}={value!r}: {why}")


def _integer(node_config: Mapping[str, Any], key: str) -> int:
    if key not in node_config:
        raise NodeConfigError(f"node config: {key!r} is missing (flower-supernode --node-config "
                              f"'{PARTITION_ID}=0 {NUM_PARTITIONS}=2 ...')")
    value = node_config[key]
    if isinstance(value, bool):
        raise _fail(key, value, "expected an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(key, value, "expected an integer")


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(key, value, "expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, value, "expected a number")
    return float(value)


@dataclass(frozen=True)
class NodeSettings:
    """What a node's config says: its partition, and optionally its budget and data folder."""

    partition_id: int
    num_partitions: int
    budget_mb: float | None = None  # a fixed budget in MB
    budget_auto: bool = False  # budget-mb = "auto": available memory minus the reserve
    reserve_mb: float | None = None  # reserve for "auto" (None: the run config's memory.reserve-mb)
    data_dir: str | None = None

    @property
    def has_budget(self) -> bool:
        """True when the node config sets the budget (it then overrides the run config's)."""
        return self.budget_auto or self.budget_mb is not None

    def budget_spec(self, default_reserve_mb: float = 256.0) -> BudgetSpec | None:
        """The budget spec for ``fedprune.memory.make_budget_schedule``; ``None``: not set here."""
        if self.budget_auto:
            reserve = self.reserve_mb if self.reserve_mb is not None else default_reserve_mb
            return BudgetSpec("auto", reserve_mb=float(reserve))
        if self.budget_mb is not None:
            return BudgetSpec("constant", mb=float(self.budget_mb))
        return None

    @property
    def budget_label(self) -> str:
        """Where the budget comes from, for the client's report."""
        if self.budget_auto:
            return "node-config:auto"
        return "node-config" if self.budget_mb is not None else "run-config"


def _near_miss(key: str) -> str | None:
    norm = str(key).strip().lower().replace("_", "-").replace(" ", "-")
    if norm in NODE_KEYS and key != norm:
        return norm
    return None


def parse_node_config(node_config: Mapping[str, Any]) -> NodeSettings:
    """Check Flower's ``context.node_config`` and return this node's ``NodeSettings``."""
    for key in node_config:
        hint = _near_miss(key)
        if hint is not None:
            raise NodeConfigError(f"node config {key!r}: unknown key; did you mean {hint!r}? "
                                  f"(keys: {', '.join(NODE_KEYS)})")
    pid = _integer(node_config, PARTITION_ID)
    num = _integer(node_config, NUM_PARTITIONS)
    if num < 1:
        raise _fail(NUM_PARTITIONS, node_config[NUM_PARTITIONS], "must be >= 1")
    if not 0 <= pid < num:
        raise _fail(PARTITION_ID, node_config[PARTITION_ID], f"must be in [0, {NUM_PARTITIONS}={num})")

    budget_mb: float | None = None
    auto = False
    if BUDGET_MB in node_config:
        raw = node_config[BUDGET_MB]
        if isinstance(raw, str) and raw.strip().lower() == AUTO:
            auto = True
        else:
            try:
                budget_mb = _number(raw, BUDGET_MB)
            except NodeConfigError:
                raise _fail(BUDGET_MB, raw, 'expected a number of MB > 0 or "auto"') from None
            if budget_mb <= 0:
                raise _fail(BUDGET_MB, raw, 'must be > 0 (MB), or "auto"')

    reserve: float | None = None
    if RESERVE_MB in node_config:
        raw = node_config[RESERVE_MB]
        reserve = _number(raw, RESERVE_MB)
        if reserve < 0:
            raise _fail(RESERVE_MB, raw, "must be >= 0 (MB)")
        if not auto:
            raise _fail(RESERVE_MB, raw, f'only applies with {BUDGET_MB}="auto"')

    data_dir: str | None = None
    if DATA_DIR in node_config:
        raw = node_config[DATA_DIR]
        if not isinstance(raw, str) or not raw.strip():
            raise _fail(DATA_DIR, raw, "expected a folder path (string)")
        path = Path(os.path.expandvars(raw.strip())).expanduser()
        if not path.is_dir():
            raise _fail(DATA_DIR, raw, f"folder {str(path)!r} does not exist on this node")
        data_dir = str(path.resolve())

    return NodeSettings(pid, num, budget_mb, auto, reserve, data_dir)


def format_node_config(values: Mapping[str, Any]) -> str:
    """The ``--node-config`` argument for ``values`` (strings quoted), e.g. for scripts and tests."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def process_memory() -> dict[str, int]:
    """This process's resident memory now (``rss_bytes``, psutil) and its peak so far."""
    import resource
    import sys

    import psutil

    out = {"rss_bytes": int(psutil.Process().memory_info().rss)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = int(peak if sys.platform == "darwin" else peak * 1024)
    out["rss_peak_bytes"] = max(peak, out["rss_bytes"])  # the kernel's peak lags psutil's figure a little
    return out
