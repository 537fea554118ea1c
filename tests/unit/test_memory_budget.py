"""Budget schedules: deterministic per seed/client, validated with clear messages."""

from types import SimpleNamespace

import pytest

from fedprune.memory import MIB, make_budget_schedule
from fedprune.memory import budget as budget_mod


def test_constant_and_schedule():
    s = make_budget_schedule({"kind": "constant", "mb": 64}, seed=0, client_id=1)
    assert [s.budget_bytes(r) for r in (1, 2, 50)] == [64 * MIB] * 3
    s = make_budget_schedule({"kind": "schedule", "mb": [100, 50, 25]}, seed=0, client_id=1)
    assert [s.budget_mb(r) for r in range(1, 6)] == [100, 50, 25, 25, 25]  # last value repeats


@pytest.mark.parametrize("process", ["piecewise", "walk"])
def test_trace_is_seeded_bounded_and_order_independent(process):
    spec = {"kind": "trace", "mb": 100, "low": 0.4, "high": 0.9, "period": 2, "process": process}
    a = make_budget_schedule(spec, seed=7, client_id=3)
    b = make_budget_schedule(spec, seed=7, client_id=3)
    rounds = list(range(1, 41))
    va = [a.budget_bytes(r) for r in rounds]
    vb = [b.budget_bytes(r) for r in reversed(rounds)][::-1]
    assert va == vb
    assert all(0.4 * 100 * MIB <= v <= 0.9 * 100 * MIB for v in va)
    assert va[0] == va[1] and len(set(va)) > 3  # constant within a period, varies across periods
    other = make_budget_schedule(spec, seed=7, client_id=4)
    assert [other.budget_bytes(r) for r in rounds] != va
    reseeded = make_budget_schedule(spec, seed=8, client_id=3)
    assert [reseeded.budget_bytes(r) for r in rounds] != va


def test_fraction_of_reference_and_min_floor():
    s = make_budget_schedule({"kind": "constant", "fraction": 0.25}, 0, 0, reference_bytes=400 * MIB)
    assert s.budget_bytes(1) == 100 * MIB
    s = make_budget_schedule({"kind": "schedule", "fraction": [1.0, 0.1], "min_mb": 50}, 0, 0,
                             reference_bytes=100 * MIB)
    assert s.budget_bytes(1) == 100 * MIB and s.budget_bytes(2) == 50 * MIB


def test_auto_reads_available_memory_at_call_time(monkeypatch):
    avail = {"v": 1000 * MIB}
    monkeypatch.setattr(budget_mod.psutil, "virtual_memory", lambda: SimpleNamespace(available=avail["v"]))
    s = make_budget_schedule({"kind": "auto", "reserve_mb": 200}, seed=0, client_id=0)
    assert s.budget_bytes(1) == 800 * MIB
    avail["v"] = 100 * MIB
    assert s.budget_bytes(1) == 0  # never negative
    capped = make_budget_schedule({"kind": "auto", "reserve_mb": 0, "cap_mb": 10}, 0, 0)
    avail["v"] = 1000 * MIB
    assert capped.budget_bytes(3) == 10 * MIB


@pytest.mark.parametrize("spec,match", [
    ({"kind": "nope"}, "kind"),
    ({"mb": 4}, "kind"),
    ({"kind": "constant"}, "'mb' or 'fraction'"),
    ({"kind": "constant", "mb": 4, "fraction": 0.5}, "'mb' or 'fraction'"),
    ({"kind": "constant", "mb": -4}, "mb=-4"),
    ({"kind": "constant", "mb": "4"}, "mb='4'"),
    ({"kind": "constant", "mbb": 4}, "'mbb'"),
    ({"kind": "schedule", "mb": []}, "non-empty list"),
    ({"kind": "schedule", "mb": [1, -2]}, r"mb\[1\]=-2"),
    ({"kind": "trace", "mb": 10, "low": 0.9, "high": 0.5}, "low"),
    ({"kind": "trace", "mb": 10, "period": 0}, "period=0"),
    ({"kind": "trace", "mb": 10, "process": "brownian"}, "process='brownian'"),
    ({"kind": "trace", "mb": 10, "step": 0.2}, "step"),
    ({"kind": "auto"}, "reserve_mb"),
    ({"kind": "auto", "reserve_mb": 1, "mb": 3}, "'mb'"),
    ({"kind": "constant", "fraction": 0.5}, "reference_bytes"),
])
def test_invalid_specs_name_the_bad_key(spec, match):
    with pytest.raises(ValueError, match=match):
        make_budget_schedule(spec, seed=0, client_id=0)


def test_rounds_are_one_based():
    s = make_budget_schedule({"kind": "constant", "mb": 1}, 0, 0)
    with pytest.raises(ValueError, match="round"):
        s.budget_bytes(0)
    assert s.describe()["kind"] == "constant"


@pytest.mark.parametrize("data", [
    {"kind": "constant", "mb": 12.5},
    {"kind": "schedule", "mb": [16.0, 8.0, 12.0], "min_mb": 1.0},
    {"kind": "trace", "mb": 40.0, "low": 0.3, "high": 0.9, "process": "walk", "step": 0.2},
    {"kind": "auto", "reserve_mb": 128.0, "cap_mb": 512.0},
    {"kind": "none"},
])
def test_budget_spec_keeps_its_json_form(data):
    from fedprune.memory import BudgetSpec

    spec = BudgetSpec.from_dict(data)
    assert spec.to_dict() == data and BudgetSpec.from_dict(spec.to_dict()) == spec
    assert spec.bounded == (data["kind"] != "none")
    if data["kind"] not in ("auto", "none"):
        a = make_budget_schedule(spec, seed=3, client_id=1)
        b = make_budget_schedule(data, seed=3, client_id=1)
        assert [a.budget_bytes(r) for r in range(1, 6)] == [b.budget_bytes(r) for r in range(1, 6)]
        assert a.describe() == b.describe()


@pytest.mark.parametrize("data, fragment", [
    ({"kind": "weekly"}, "kind='weekly'"),
    ({"kind": "constant", "mb": 4.0, "reserve_mb": 1.0}, "'reserve_mb'"),
    ({"kind": "auto", "reserve_mb": 1.0, "colour": "red"}, "'colour'"),
])
def test_budget_spec_rejects_unknown_kinds_and_keys(data, fragment):
    from fedprune.memory import BudgetSpec

    with pytest.raises(ValueError, match=fragment):
        BudgetSpec.from_dict(data)
