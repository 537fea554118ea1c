"""Method names, configs, and the shared schedules (kept fraction, PWE trigger, TWT search)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprune.methods import (DynHPConfig, LobsterConfig, NEqConfig, SeReNeConfig, build_methods,
                              parse_methods)
from fedprune.methods.schedules import PlateauTrigger, kept_fraction, search_threshold


@pytest.mark.parametrize("spec, want", [
    ("none", []), ("dynhp", ["dynhp"]), ("dynhp+neq", ["dynhp", "neq"]),
    ("serene+neq", ["serene", "neq"]), (" Serene + DynHP ", ["serene", "dynhp"]),
    ("lobster", ["lobster"]),
])
def test_parse_methods_valid(spec, want):
    assert parse_methods(spec) == want


@pytest.mark.parametrize("spec, token", [
    ("dynhp+foo", "foo"), ("", "(empty)"), ("neq+", "(empty)"), ("none+neq", "none"),
    ("neq+neq", "neq"),
])
def test_parse_methods_invalid_names_token(spec, token):
    with pytest.raises(ValueError, match=re_escape(token)):
        parse_methods(spec)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


@pytest.mark.parametrize("cfg, field", [
    (DynHPConfig(target_compression=1.5), "methods.dynhp.target_compression=1.5: must be in (0, 1)"),
    (DynHPConfig(schedule="exp"), "methods.dynhp.schedule='exp'"),
    (DynHPConfig(start_progress=0.5, end_progress=0.4), "methods.dynhp.end_progress=0.4"),
    (SeReNeConfig(sensitivity="half"), "methods.serene.sensitivity='half'"),
    (SeReNeConfig(lmbda=-1.0), "methods.serene.lmbda=-1.0"),
    (NEqConfig(mu_eq=1.0), "methods.neq.mu_eq=1.0"),
    (NEqConfig(eps=-0.1), "methods.neq.eps=-0.1"),
    (LobsterConfig(twt=-0.5), "methods.lobster.twt=-0.5"),
])
def test_validate_names_the_field(cfg, field):
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert str(err.value).startswith(field)


def test_defaults_validate_and_build_in_hook_order():
    for cls in (DynHPConfig, SeReNeConfig, NEqConfig, LobsterConfig):
        assert cls().validate() is not None
    objs = build_methods(["neq", "dynhp", "serene", "lobster"], {"neq": {"eps": 0.01}})
    assert [m.name for m in objs] == ["lobster", "serene", "dynhp", "neq"]
    assert objs[-1].cfg.eps == 0.01
    with pytest.raises(ValueError, match="methods.neq.eps"):
        build_methods(["neq"], {"neq": NEqConfig(eps=-1)})


@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_kept_fraction_reaches_target_monotonically(kind):
    ps = np.linspace(0, 1, 101)
    ks = [kept_fraction(p, 0.8, 0.1, 0.7, kind) for p in ps]
    assert ks[0] == 1.0 and kept_fraction(0.1, 0.8, 0.1, 0.7, kind) == 1.0
    assert all(a >= b - 1e-12 for a, b in zip(ks, ks[1:]))
    assert math.isclose(kept_fraction(0.7, 0.8, 0.1, 0.7, kind), 0.2)
    assert math.isclose(ks[-1], 0.2)


def test_plateau_trigger_pwe_and_state():
    t = PlateauTrigger(pwe=2)
    assert [t.update(x) for x in (1.0, 0.9, 0.95, 0.93)] == [False, False, False, True]
    # after firing, the next evaluation is the new reference
    assert t.update(2.0) is False and t.best == 2.0
    s = t.state_dict()
    t2 = PlateauTrigger(pwe=2)
    t2.load_state_dict(s)
    assert t2.state_dict() == s
    assert all(PlateauTrigger(pwe=0).update(v) for v in (1.0, 0.5))


def test_search_threshold_respects_tolerance():
    mags = np.sort(np.random.default_rng(0).random(1000))

    def loss_at(t):  # loss grows linearly with the pruned fraction
        return 1.0 + float((mags < t).mean())

    t, frac, loss = search_threshold(mags, loss_at, 1.0, twt=0.3, iters=12)
    assert loss <= 1.3 + 1e-12
    assert 0.25 < frac <= 0.3
    assert search_threshold(mags, lambda t: 10.0, 1.0, 0.1) == (0.0, 0.0, 1.0)
