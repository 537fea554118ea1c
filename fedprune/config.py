"""Experiment configuration: one typed schema, loaded from TOML or from Flower's flat run config.

The schema is a tree of dataclasses (``ExperimentConfig``). Every key has a default, so a config file
only names what it changes. ``load_config(path)`` and ``config_from_flat(run_config)`` give the same
object for the same settings, and both reject - with one line naming the key, the value and what is
allowed - unknown keys, wrong types and out-of-range values (``ConfigError``). Validation never imports
Ray or starts anything.

TOML keys use hyphens (``local-epochs``), dataclass fields underscores (``local_epochs``). Flower's
run config is the same tree flattened with dots (``train.local-epochs``); every key must exist in
``[tool.flwr.app.config]`` of ``pyproject.toml``, which ``flat_defaults()`` generates.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprune.config_values import ConfigError, parse_float_list
from fedprune.config_values import check as _check
from fedprune.data import DATASETS, PARTITIONERS
from fedprune.fleet import FleetSection
from fedprune.memory import BUDGET_KINDS, LR_RULES, BudgetSpec
from fedprune.methods import parse_methods, registry
from fedprune.models import MODEL_NAMES


@dataclass
class RunConfig:
    name: str = "experiment"
    seed: int = 0
    num_rounds: int = 3
    out_dir: str = ""  # empty: results/<name> relative to the working directory

    def validate(self, p: str) -> None:
        _check(self.num_rounds >= 1, f"{p}num-rounds", self.num_rounds, "must be >= 1")
        _check(self.seed >= 0, f"{p}seed", self.seed, "must be >= 0")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    download: bool = False
    partitioner: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    val_fraction: float = 0.1
    max_samples_per_client: int = 0  # 0: all of the partition

    def validate(self, p: str) -> None:
        _check(self.dataset in DATASETS, f"{p}dataset", self.dataset,
               f"expected one of {', '.join(DATASETS)}")
        _check(self.partitioner in PARTITIONERS, f"{p}partitioner", self.partitioner,
               f"expected one of {', '.join(PARTITIONERS)}")
        _check(self.alpha > 0, f"{p}alpha", self.alpha, "must be > 0")
        _check(self.shards_per_client >= 1, f"{p}shards-per-client", self.shards_per_client,
               "must be >= 1")
        _check(0 < self.val_fraction < 1, f"{p}val-fraction", self.val_fraction,
               "must be in (0, 1): NEq and SeReNe need a validation split")
        _check(self.max_samples_per_client >= 0, f"{p}max-samples-per-client",
               self.max_samples_per_client, "must be >= 0 (0 = all)")


@dataclass
class ModelConfig:
    name: str = "lenet5"

    def validate(self, p: str) -> None:
        _check(self.name in MODEL_NAMES, f"{p}name", self.name,
               f"expected one of {', '.join(MODEL_NAMES)}")


@dataclass
class TrainSection:
    local_epochs: int = 1
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    min_batch: int = 8
    max_batch: int = 256
    lr_scaling: str = "linear"  # the most accurate rule measured by bench/bench_dynhp.py
    lr_schedule: str = "constant"  # constant | cosine (over all rounds' progress)
    lr_warmup: float = 0.0  # fraction of all rounds' progress over which a batch-scaled lr above lr is reached

    def validate(self, p: str) -> None:
        _check(self.local_epochs >= 1, f"{p}local-epochs", self.local_epochs, "must be >= 1")
        _check(self.lr > 0, f"{p}lr", self.lr, "must be > 0")
        _check(self.optimizer in ("sgd", "adam"), f"{p}optimizer", self.optimizer,
               "expected 'sgd' or 'adam'")
        _check(0 <= self.momentum < 1, f"{p}momentum", self.momentum, "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{p}weight-decay", self.weight_decay, "must be >= 0")
        _check(self.min_batch >= 1, f"{p}min-batch", self.min_batch, "must be >= 1")
        _check(self.max_batch >= self.min_batch, f"{p}max-batch", self.max_batch,
               f"must be >= min-batch ({self.min_batch})")
        _check(self.min_batch <= self.batch_size <= self.max_batch, f"{p}batch-size",
               self.batch_size, f"must be in [min-batch, max-batch] = [{self.min_batch}, {self.max_batch}]")
        _check(self.lr_scaling in LR_RULES, f"{p}lr-scaling", self.lr_scaling,
               f"expected one of {', '.join(LR_RULES)}")
        _check(self.lr_schedule in ("constant", "cosine"), f"{p}lr-schedule", self.lr_schedule,
               "expected 'constant' or 'cosine'")
        _check(0.0 <= self.lr_warmup < 1.0, f"{p}lr-warmup", self.lr_warmup, "must be in [0, 1)")


class _MethodsBase:
    """``[methods]``: ``enabled`` ("+"-joined method names or ``none``) and one ``[methods.<name>]``
    table per built-in method of :mod:`fedprune.methods.registry` (its config dataclass)."""

    def validate(self, p: str) -> None:
        """``ConfigError`` naming ``enabled`` when it is not a valid method string."""
        try:
            parse_methods(self.enabled)
        except ValueError as err:
            raise ConfigError(f"{p}enabled = {self.enabled!r}: {err}") from None

    @property
    def names(self) -> list[str]:
        """The enabled method names."""
        return parse_methods(self.enabled)

    def method_configs(self) -> dict[str, Any]:
        """Method name -> its config object, for every built-in method."""
        return {e.name: getattr(self, e.name) for e in registry.BUILTIN}


MethodsSection = dataclasses.make_dataclass(
    "MethodsSection",
    [("enabled", str, field(default="none"))]
    + [(e.name, e.config_class, field(default_factory=e.config_class)) for e in registry.BUILTIN],
    bases=(_MethodsBase,))
MethodsSection.__module__ = __name__


@dataclass
class MemorySection:
    budget: str = "none"  # none | constant | schedule | trace | auto
    budget_mb: float = 0.0  # constant budget, or the trace's reference level
    schedule_mb: str = ""  # per-round budgets, comma separated; the last one repeats
    trace_low: float = 0.5  # trace: budget varies in [low, high] x budget-mb
    trace_high: float = 1.0
    reserve_mb: float = 256.0  # auto: psutil available memory minus this reserve
    margin: float = 0.05  # safety margin of the batch sizer

    def validate(self, p: str) -> None:
        _check(self.budget in BUDGET_KINDS, f"{p}budget", self.budget,
               f"expected one of {', '.join(BUDGET_KINDS)}")
        _check(self.budget_mb >= 0, f"{p}budget-mb", self.budget_mb, "must be >= 0")
        if self.budget == "schedule":
            values = parse_float_list(self.schedule_mb, f"{p}schedule-mb")
            _check(bool(values) and min(values) > 0, f"{p}schedule-mb", self.schedule_mb,
                   "must list one or more budgets > 0 in MB, e.g. '64,32,48'")
        _check(0 < self.trace_low <= self.trace_high, f"{p}trace-low", self.trace_low,
               f"must be in (0, trace-high={self.trace_high}]")
        _check(self.reserve_mb >= 0, f"{p}reserve-mb", self.reserve_mb, "must be >= 0")
        _check(0 <= self.margin < 1, f"{p}margin", self.margin, "must be in [0, 1)")

    def schedule_spec(self) -> BudgetSpec | None:
        """The budget spec of these settings (``None``: no budget); see :meth:`spec_at`."""
        return self.spec_at(None)

    def spec_at(self, level_mb: float | None) -> BudgetSpec | None:
        """The one place budget specs are built from the ``[memory]`` settings.

        ``level_mb`` None: the settings as they are (``none`` gives ``None``). A level (a fleet
        client's budget in MB): ``trace`` around that level; ``schedule`` rescaled so that its
        reference (``budget-mb`` when > 0, else its largest value) equals the level; ``none``,
        ``constant`` and ``auto`` a constant budget at the level (a device always has one).
        """
        kind = self.budget
        if level_mb is None:
            if kind == "none":
                return None
            if kind == "auto":
                return BudgetSpec("auto", reserve_mb=self.reserve_mb)
        mb = self.budget_mb if level_mb is None else level_mb
        if kind == "trace":
            return BudgetSpec("trace", mb=mb, low=self.trace_low, high=self.trace_high)
        if kind == "schedule":
            values = parse_float_list(self.schedule_mb, "memory.schedule-mb")
            if level_mb is not None:
                ref = self.budget_mb if self.budget_mb > 0 else max(values)
                values = [v * level_mb / ref for v in values]
            return BudgetSpec("schedule", mb=tuple(values))
        return BudgetSpec("constant", mb=mb)


@dataclass
class StrategySection:
    # unanimous: pruned when every client pruned it; quorum: by weight; consensus: the median client's
    # count, most-kept neurons first; keep: never (fedprune.aggregation.update_global_mask)
    mask_policy: str = "unanimous"
    quorum: float = 0.5

    def validate(self, p: str) -> None:
        from fedprune.aggregation import MASK_POLICIES

        _check(self.mask_policy in MASK_POLICIES, f"{p}mask-policy", self.mask_policy,
               "expected one of " + ", ".join(repr(m) for m in MASK_POLICIES))
        _check(0 < self.quorum <= 1, f"{p}quorum", self.quorum, "must be in (0, 1]")


@dataclass
class SimulationSection:
    client_cpus: int = 1  # whole CPUs per client (Flower's client-resources-num-cpus is an integer)
    client_gpus: float = 0.0
    ray_address: str = ""  # empty: start a local Ray (or use RAY_ADDRESS when set)
    round_timeout: float = 0.0  # seconds to wait for a round's replies; 0 = auto (fedprune.round_timeout)

    def validate(self, p: str) -> None:
        _check(self.client_cpus >= 1, f"{p}client-cpus", self.client_cpus, "must be a whole number >= 1")
        _check(self.client_gpus >= 0, f"{p}client-gpus", self.client_gpus, "must be >= 0")
        _check(math.isfinite(self.round_timeout) and self.round_timeout >= 0, f"{p}round-timeout",
               self.round_timeout, "must be a finite number >= 0 (0 = auto)")


FAULT_KINDS = ("raise", "oom", "nan", "bad-mask", "mismatch", "timeout")


@dataclass
class FaultsSection:
    rate: float = 0.0  # probability that a sampled client fails in a round (fault injection)
    kinds: str = "raise,oom,nan,bad-mask,mismatch,timeout"  # which faults to draw from
    seed: int = 0

    def validate(self, p: str) -> None:
        _check(0 <= self.rate <= 1, f"{p}rate", self.rate, "must be in [0, 1]")
        kinds = [k.strip() for k in self.kinds.split(",") if k.strip()]
        bad = [k for k in kinds if k not in FAULT_KINDS]
        _check(not bad and (kinds or self.rate == 0), f"{p}kinds", self.kinds,
               f"expected a comma-separated subset of {', '.join(FAULT_KINDS)}")

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSection = field(default_factory=TrainSection)
    methods: MethodsSection = field(default_factory=MethodsSection)
    memory: MemorySection = field(default_factory=MemorySection)
    fleet: FleetSection = field(default_factory=FleetSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    faults: FaultsSection = field(default_factory=FaultsSection)

    def validate(self) -> "ExperimentConfig":
        """Check every section's ranges; returns ``self`` so calls chain."""
        _validate_tree(self, "")
        m, f = self.memory, self.fleet
        if m.budget in ("constant", "trace") and not (f.devices or f.budgets_mb):
            # with a device fleet or per-client budgets the clients' levels come from the fleet
            _check(m.budget_mb > 0, "memory.budget-mb", m.budget_mb,
                   f"must be > 0 with budget = {m.budget!r} (or give fleet.devices / fleet.budgets-mb)")
        return self


# ---------------------------------------------------------------- generic dict <-> dataclass


def _toml_key(name: str) -> str:
    return name.replace("_", "-")


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: expected a finite number")
    if tp in (bool, int, float, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional-like: accept any member type
        for member in typing.get_args(tp):
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r}: expected one of {typing.get_args(tp)}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} = {data!r}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(_toml_key(f) for f in fields)
            raise ConfigError(f"{prefix}{key}: unknown key; expected one of {known}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _validate_tree(obj: Any, prefix: str) -> None:
    if hasattr(obj, "validate") and not isinstance(obj, ExperimentConfig):
        if inspect.signature(obj.validate).parameters:
            obj.validate(prefix)
        else:  # method configs validate themselves and name their keys ("methods.neq.eps=...")
            try:
                obj.validate()
            except ValueError as err:
                raise ConfigError(str(err)) from None
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, f"{prefix}{_toml_key(f.name)}.")


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a nested dict (TOML layout); ``ConfigError`` if bad."""
    return _from_dict(ExperimentConfig, data, "").validate()


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a TOML experiment file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8), so not a TOML config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return config_from_dict(data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The nested TOML-layout dict of a config (hyphenated keys), every key present."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[_toml_key(f.name)] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def flatten(data: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dict -> Flower's flat run config (``{"train.lr": 0.05, ...}``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """Flower's flat run config -> nested dict (inverse of ``flatten``)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(sep)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def config_from_flat(run_config: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from Flower's flat ``context.run_config``."""
    return config_from_dict(unflatten(dict(run_config)))


def flat_defaults() -> dict[str, Any]:
    """Every key with its default, flat: the body of ``[tool.flwr.app.config]``."""
    return flatten(to_dict(ExperimentConfig()))


def dumps_toml(data: dict[str, Any]) -> str:
    """Serialise a nested config dict as TOML (tables for sections)."""
    import tomli_w

    return tomli_w.dumps(data)


PYPROJECT_MARKER = "[tool.flwr.app.config]"


def pyproject_app_config() -> str:
    """The ``[tool.flwr.app.config]`` section (every key and default) for ``pyproject.toml``.

    Flower only accepts run-config overrides for keys declared there, so the section must list the
    whole schema; ``tests/test_config.py`` checks that it does.
    """
    body = dumps_toml({"tool": {"flwr": {"app": {"config": to_dict(ExperimentConfig())}}}})
    return body.replace('[tool.flwr.app.config.', '[tool.flwr.app.config.')


def sync_pyproject(path: str | Path = "pyproject.toml") -> bool:
    """Rewrite the generated tail of ``pyproject.toml`` (from the marker on); True if it changed."""
    path = Path(path)
    text = path.read_text()
    head = text.split("# --- generated by `fedprune config --sync-pyproject`", 1)[0].rstrip() + "\n\n"
    new = head + "# --- generated by `fedprune config --sync-pyproject`: every run-config key and its default\n" \
        + pyproject_app_config()
    if new != text:
        path.write_text(new)
        return True
    return False
