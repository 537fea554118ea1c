"""What a memory cgroup is charged and what counts (``fedprune.memory.cgroup.memory_charge``), the
kernel-cache caps of a client process, and deploy-local's per-node hard limits -- on files and
configs, no kernel cgroup needed."""

from __future__ import annotations

import pytest

from fedprune.deploy import hard_limits, node_partition
from fedprune.memory import process
from fedprune.memory.cgroup import memory_charge

MIB = 2**20


def _cgroup_dir(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_v1_page_cache_does_not_count_but_anonymous_and_mapped_files_do(tmp_path):
    d = _cgroup_dir(tmp_path, {"memory.usage_in_bytes": str(900 * MIB),
                               "memory.stat": f"cache {600 * MIB}\nrss {250 * MIB}\nmapped_file {40 * MIB}\n"
                                              f"total_rss {260 * MIB}\ntotal_mapped_file {50 * MIB}\n"})
    charge = memory_charge(1, d)
    assert charge == {"usage": 900 * MIB, "anon": 260 * MIB, "mapped_file": 50 * MIB,
                      "unreclaimable": 310 * MIB}


def test_v2_charge_and_the_fallback_without_a_breakdown(tmp_path):
    d = _cgroup_dir(tmp_path, {"memory.current": str(500 * MIB),
                               "memory.stat": f"anon {120 * MIB}\nfile {350 * MIB}\nfile_mapped {30 * MIB}\n"})
    assert memory_charge(2, d)["unreclaimable"] == 150 * MIB
    (tmp_path / "memory.stat").write_text(f"inactive_file {100 * MIB}\n")
    assert memory_charge(2, d)["unreclaimable"] == 400 * MIB


def test_kernel_caches_are_capped_for_children_and_a_user_setting_wins():
    env = {"LRU_CACHE_CAPACITY": "64"}
    got = process.configure_kernel_caches(env)
    assert got == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": process.KERNEL_CACHE_ENV["ONEDNN_PRIMITIVE_CACHE_CAPACITY"],
                   "LRU_CACHE_CAPACITY": "64"}
    assert set(process.KERNEL_CACHE_ENV) <= set(process.allocator_env())


class _Fleet:
    def __init__(self, devices: str):
        self.devices, self.profiles_file, self.num_clients = devices, "", 3
        self.budgets_mb = ""


class _Cfg:
    def __init__(self, devices: str):
        self.fleet = _Fleet(devices)


def test_hard_limits_come_from_the_device_ram_or_one_figure():
    cfg = _Cfg("pi-zero-2w:1, pi3b:2")
    nodes = ["partition-id=2 num-partitions=3", {"partition-id": 0, "num-partitions": 3}]
    assert hard_limits(cfg, nodes) == [1024 * MIB, 512 * MIB]
    assert hard_limits(cfg, nodes, 700) == [700 * MIB, 700 * MIB]
    with pytest.raises(ValueError, match="fleet.devices"):
        hard_limits(_Cfg(""), nodes)
    with pytest.raises(ValueError, match="partition-id 5"):
        hard_limits(cfg, ["partition-id=5 num-partitions=6"])
    with pytest.raises(ValueError, match="no partition-id"):
        node_partition("num-partitions=2")
