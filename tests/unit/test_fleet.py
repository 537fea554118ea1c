"""Device profiles and fleets: profile file, client -> device/budget/methods, one-line config errors."""

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import ROOT

from fedprune.config import ConfigError, config_from_dict, load_config
from fedprune.fleet import (DEFAULT_PROFILES, client_devices, client_profile, fleet_table,
                            load_profiles, parse_profiles)

MIXED = {"fleet": {"num-clients": 6, "devices": "pi-zero-2w:2, pi4-2gb:3, jetson-nano:1"},
         "memory": {"budget": "constant", "budget-mb": 1.0}}


def cfg_with(**sections):
    tree = {k: dict(v) for k, v in MIXED.items()}
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return config_from_dict(tree)


def test_shipped_profiles_cover_the_issue_devices():
    profiles = load_profiles()
    ram = {name: p.ram_mb for name, p in profiles.items()}
    assert ram == {"pi-zero-2w": 512, "pi3b": 1024, "pi4-2gb": 2048, "pi4-4gb": 4096,
                   "pi4-8gb": 8192, "pi5-8gb": 8192, "jetson-nano": 4096}
    for p in profiles.values():
        assert 0 < p.train_share <= 1 and p.budget_mb == pytest.approx(p.ram_mb * p.train_share)
        assert p.description


def test_devices_are_assigned_in_order_and_budgets_follow_the_profiles():
    cfg = cfg_with(fleet={"budget-scale": 0.5})
    assert client_devices(cfg) == ["pi-zero-2w"] * 2 + ["pi4-2gb"] * 3 + ["jetson-nano"]
    profiles = load_profiles()
    for pid, dev in enumerate(client_devices(cfg)):
        p = client_profile(cfg, pid)
        assert p.device == dev
        assert p.budget_spec.to_dict() == {"kind": "constant", "mb": profiles[dev].budget_mb * 0.5}
        assert p.methods == []  # methods.enabled defaults to "none"
    assert client_profile(cfg, 3) == client_profile(cfg_with(fleet={"budget-scale": 0.5}), 3)


def test_per_profile_methods_and_direct_budgets():
    cfg = cfg_with(methods={"enabled": "serene"},
                   fleet={"methods": "pi-zero-2w=dynhp+neq; jetson-nano=none",
                          "budgets-mb": "1,2,3,4,5,6", "budget-scale": 2.0})
    rows = fleet_table(cfg)
    assert [r["methods"] for r in rows] == ["dynhp+neq"] * 2 + ["serene"] * 3 + ["none"]
    assert [r["budget_mb"] for r in rows] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert [r["device"] for r in rows][:2] == ["pi-zero-2w"] * 2  # budgets-mb keeps the device label
    custom = config_from_dict({"fleet": {"num-clients": 2, "budgets-mb": "3,4"}})
    assert client_profile(custom, 1).device == "custom"
    assert client_profile(custom, 1).budget_spec.to_dict() == {"kind": "constant", "mb": 4.0}


def test_dynamic_kinds_use_the_device_budget_as_reference_level():
    cfg = cfg_with(memory={"budget": "trace", "budget-mb": 1.0, "trace-low": 0.3, "trace-high": 0.9},
                   fleet={"budgets-mb": "10,10,20,20,20,40"})
    assert client_profile(cfg, 5).budget_spec.to_dict() == {"kind": "trace", "mb": 40.0, "low": 0.3, "high": 0.9}
    sched = cfg_with(memory={"budget": "schedule", "schedule-mb": "8,4,6", "budget-mb": 0.0},
                     fleet={"budgets-mb": "16,16,16,16,16,2"})
    assert client_profile(sched, 0).budget_spec.to_dict() == {"kind": "schedule", "mb": [16.0, 8.0, 12.0]}
    assert client_profile(sched, 5).budget_mb == 2.0


def test_uniform_fleet_uses_the_memory_section():
    cfg = config_from_dict({"memory": {"budget": "trace", "budget-mb": 12.0}})
    p = client_profile(cfg, 3)
    assert p.device == "default" and p.budget_spec == cfg.memory.schedule_spec()
    assert client_profile(cfg, 50).device == "default"  # real deployments: any partition id
    none = client_profile(config_from_dict({}), 0)
    assert none.budget_spec is None and none.budget_mb is None


def test_budget_specs_are_accepted_by_the_memory_module():
    from fedprune import memory

    cfg = cfg_with(memory={"budget": "trace", "budget-mb": 1.0}, fleet={"budget-scale": 0.01})
    for pid in range(6):
        spec = client_profile(cfg, pid).budget_spec
        sched = memory.make_budget_schedule(spec, seed=0, client_id=pid)
        level = spec.mb * 2**20
        assert all(0.5 * level - 1 <= sched.budget_bytes(r) <= level + 1 for r in range(1, 6))


@pytest.mark.parametrize("fleet, fragment", [
    ({"num-clients": 4, "devices": "pi9:2, pi4-2gb:2"},
     "fleet.devices = 'pi9:2, pi4-2gb:2': unknown profile 'pi9'; expected one of pi-zero-2w"),
    ({"num-clients": 4, "devices": "pi4-2gb:3"}, "counts sum to 3, but num-clients = 4"),
    ({"num-clients": 4, "devices": "pi4-2gb:x"}, "count 'x' of 'pi4-2gb' is not an integer"),
    ({"num-clients": 4, "devices": "pi4-2gb:2, pi4-2gb:2"}, "given twice"),
    ({"num-clients": 4, "devices": "pi4-2gb:4", "methods": "pi5-8gb=dynhp"},
     "fleet.methods = 'pi5-8gb=dynhp': profile 'pi5-8gb' is not in fleet.devices"),
    ({"num-clients": 4, "devices": "pi4-2gb:4", "methods": "pi4-2gb=magic"}, "unknown method 'magic'"),
    ({"num-clients": 4, "methods": "pi4-2gb=dynhp"}, "needs fleet.devices"),
    ({"num-clients": 4, "devices": "pi4-2gb:4", "profiles-file": "/nope/devices.toml"},
     "fleet.profiles-file = '/nope/devices.toml'"),
])
def test_bad_fleets_fail_in_one_line_naming_the_key(fleet, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"fleet": fleet})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_custom_profiles_file_with_bytes_and_direct_budgets(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[profiles.tiny]\nram-bytes = 268435456\ntrain-budget-bytes = 4194304\n'
                 '[profiles.big]\nram-mb = 1024\ntrain-share = 0.5\n')
    cfg = config_from_dict({"fleet": {"num-clients": 3, "devices": "tiny:1, big:2",
                                      "profiles-file": str(f)}})
    assert [client_profile(cfg, i).budget_mb for i in range(3)] == [4.0, 512.0, 512.0]
    with pytest.raises(ConfigError, match="unknown key"):
        parse_profiles({"profiles": {"x": {"ram-mb": 1, "ramm": 2}}})
    with pytest.raises(ConfigError, match="train-share"):
        parse_profiles({"profiles": {"x": {"ram-mb": 1, "train-share": 1.5}}})
    with pytest.raises(ConfigError, match="exactly one of ram-mb, ram-bytes"):
        parse_profiles({"profiles": {"x": {"train-share": 0.5}}})


def test_shipped_fleet_configs_load():
    assert tomllib.loads(DEFAULT_PROFILES.read_text())["profiles"]
    for f in sorted((ROOT / "sim_configs").glob("*.toml")):
        data = tomllib.loads(f.read_text())
        if "sweep" in data or "profiles" in data:
            continue
        cfg = load_config(f)
        if cfg.fleet.devices:
            assert len(fleet_table(cfg)) == cfg.fleet.num_clients


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(load_profiles())), st.integers(1, 5)),
                min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_any_valid_mix_expands_to_its_counts(mix):
    n = sum(c for _, c in mix)
    cfg = config_from_dict({"fleet": {"num-clients": n, "min-clients": 1,
                                      "devices": ", ".join(f"{d}:{c}" for d, c in mix)}})
    devices = client_devices(cfg)
    assert len(devices) == n
    assert all(devices.count(d) == c for d, c in mix)
    assert [client_profile(cfg, i).device for i in range(n)] == devices
