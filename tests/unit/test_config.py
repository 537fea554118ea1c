"""Config schema: loading, one-line errors for bad input, Flower's flat form, pyproject sync."""

import tomllib

import pytest

from support import ROOT

from fedprune.config import (ConfigError, ExperimentConfig, config_from_dict, config_from_flat,
                             flat_defaults, flatten, load_config, to_dict)



def test_every_shipped_config_loads():
    files = sorted((ROOT / "sim_configs").glob("*.toml"))
    assert files
    for f in files:
        data = tomllib.loads(f.read_text())
        if "sweep" in data or "profiles" in data:
            continue  # sweep and fleet files have their own loaders
        load_config(f)


@pytest.mark.parametrize("data, fragment", [
    ({"train": {"learning-rate": 0.1}}, "train.learning-rate: unknown key"),
    ({"trian": {}}, "trian: unknown key"),
    ({"train": {"lr": "fast"}}, "train.lr = 'fast': expected a number"),
    ({"run": {"num-rounds": 2.5}}, "run.num-rounds = 2.5: expected an integer"),
    ({"data": {"download": "yes"}}, "data.download = 'yes': expected a boolean"),
    ({"memory": {"budget": "constant", "budget-mb": -1.0}}, "memory.budget-mb = -1.0"),
    ({"memory": {"budget": "trace"}}, "memory.budget-mb = 0.0: must be > 0 with budget = 'trace'"),
    ({"data": {"alpha": 0.0}}, "data.alpha = 0.0: must be > 0"),
    ({"methods": {"dynhp": {"target-compression": 1.0}}}, "methods.dynhp.target_compression"),
    ({"fleet": {"num-clients": 4, "clients-per-round": 5}}, "fleet.clients-per-round = 5"),
    ({"model": {"name": "gpt"}}, "model.name = 'gpt'"),
    ({"methods": {"enabled": "dynhp+magic"}}, "methods.enabled"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset = 'imagenet'"),
])
def test_bad_values_give_one_line_naming_the_key(data, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg


def test_fleet_budgets_make_memory_budget_mb_optional():
    cfg = config_from_dict({"memory": {"budget": "constant"},
                            "fleet": {"num-clients": 2, "budgets-mb": "8,16"}})
    assert cfg.memory.budget_mb == 0.0
    cfg = config_from_dict({"memory": {"budget": "trace"},
                            "fleet": {"num-clients": 2, "devices": "pi3b:2"}})
    assert cfg.memory.budget == "trace"


def test_flat_roundtrip_equals_nested():
    cfg = config_from_dict({"train": {"lr": 0.1}, "methods": {"enabled": "dynhp+neq"}})
    assert config_from_flat(flatten(to_dict(cfg))) == cfg


def test_int_accepted_for_float():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_pyproject_declares_every_key_with_its_default():
    """Flower rejects run-config keys missing from [tool.flwr.app.config]; keep it generated."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert declared == flat_defaults(), "run `fedprune config --sync-pyproject`"


def test_defaults_are_valid():
    ExperimentConfig().validate()


def test_lr_schedule_reaches_the_trainer():
    from fedprune.train import TrainConfig

    cfg = config_from_dict({"train": {"lr-schedule": "cosine"}})
    assert TrainConfig.from_section(cfg.train, cfg.run.seed).lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="train.lr-schedule = 'step'"):
        config_from_dict({"train": {"lr-schedule": "step"}})
    cfg = config_from_dict({"train": {"lr-warmup": 0.1}})
    assert TrainConfig.from_section(cfg.train, cfg.run.seed).lr_warmup == 0.1
    with pytest.raises(ConfigError, match="train.lr-warmup = -0.5"):
        config_from_dict({"train": {"lr-warmup": -0.5}})


def test_mask_policy_names_the_policies_it_accepts():
    from fedprune.aggregation import MASK_POLICIES

    for policy in MASK_POLICIES:
        assert config_from_dict({"strategy": {"mask-policy": policy}}).strategy.mask_policy == policy
    with pytest.raises(ConfigError, match="strategy.mask-policy = 'majority'.*consensus"):
        config_from_dict({"strategy": {"mask-policy": "majority"}})
