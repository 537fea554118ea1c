"""Device fleets: which device each simulated client is, its memory budget and its methods.

A *device profile* (``sim_configs/fleets/devices.toml``) is a board's RAM and the share of it that a
training process may use. A *fleet* is a mix of profiles over the ``fleet.num-clients`` clients
(``fleet.devices = "pi-zero-2w:2, pi4-2gb:6"``): the counts are expanded in the order given, so
clients 0-1 are Pi Zero 2 W and clients 2-7 Pi 4 (2 GB) - the assignment never depends on the seed.

``client_profile(cfg, partition_id)`` resolves one client:

- **device**: the profile name from ``fleet.devices``; ``"custom"`` when only ``fleet.budgets-mb``
  is given; ``"default"`` when neither is (every client then uses the ``[memory]`` settings as is).
- **budget level** (MB): ``fleet.budgets-mb[i]`` if given, else the device's ``ram x train-share``
  (or its ``train-budget-mb``); times ``fleet.budget-scale`` in both cases.
- **budget kind** from ``memory.budget``: ``trace`` -> a trace around that level (``trace-low``,
  ``trace-high``); ``schedule`` -> ``memory.schedule-mb`` rescaled so that its reference level
  (``memory.budget-mb`` when > 0, else the schedule's largest value) equals the client's level;
  ``none``, ``constant`` and ``auto`` -> a constant budget at that level (a device always has one).
- **methods**: ``fleet.methods = "pi-zero-2w=dynhp+neq; pi4-2gb=none"`` per profile, else
  ``methods.enabled``.

Everything here is deterministic and cheap: it only reads the config and the profiles file (cached).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprune.config_values import ConfigError, check, parse_float_list
from fedprune.memory import BudgetSpec
from fedprune.methods import parse_methods

if TYPE_CHECKING:  # annotations only: fedprune.config imports this module for FleetSection
    from fedprune.config import ExperimentConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILES = PROJECT_ROOT / "sim_configs" / "fleets" / "devices.toml"
BYTES_PER_MB = 2**20
PROFILE_KEYS = ("description", "cpu", "ram-mb", "ram-bytes", "train-share", "train-budget-mb",
                "train-budget-bytes")


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


@dataclass(frozen=True)
class DeviceProfile:
    """One board: its RAM and the training budget derived from it (both in MB)."""

    name: str
    description: str
    ram_mb: float
    train_share: float
    direct_budget_mb: float | None = None
    cpu: str = ""

    @property
    def budget_mb(self) -> float:
        """Training budget in MB: the direct budget if given, else ``ram_mb x train_share``."""
        if self.direct_budget_mb is not None:
            return self.direct_budget_mb
        return self.ram_mb * self.train_share


@dataclass(frozen=True)
class ClientProfile:
    """What a client is: its device name, its budget spec (``None``: unbounded) and its methods."""

    device: str
    budget_spec: BudgetSpec | None
    methods: list[str]

    @property
    def budget_mb(self) -> float | None:
        """The reference level of the budget in MB (``None`` for no budget or ``auto``)."""
        return None if self.budget_spec is None else self.budget_spec.reference_mb


# ------------------------------------------------------------------------ profiles file


def resolve_profiles_path(profiles_file: str) -> Path:
    """The profiles file: the default one, or ``profiles_file`` (relative to cwd, then project root)."""
    if not profiles_file:
        return DEFAULT_PROFILES
    p = Path(profiles_file).expanduser()
    if p.is_absolute() or p.is_file():
        return p.resolve() if p.exists() else p
    alt = PROJECT_ROOT / p
    return alt if alt.is_file() else p


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _config_error(f"{where} = {value!r}: expected a finite number")
    return float(value)


def parse_profiles(data: dict[str, Any], source: str = "profiles") -> dict[str, DeviceProfile]:
    """Validate the ``[profiles.NAME]`` tables of a parsed profiles TOML."""
    tables = data.get("profiles")
    if not isinstance(tables, dict) or not tables:
        raise _config_error(f"{source}: expected one or more [profiles.NAME] tables")
    out: dict[str, DeviceProfile] = {}
    for name, t in tables.items():
        where = f"{source}: profiles.{name}"
        if not isinstance(t, dict):
            raise _config_error(f"{where}: expected a table")
        unknown = sorted(set(t) - set(PROFILE_KEYS))
        if unknown:
            raise _config_error(f"{where}.{unknown[0]}: unknown key; expected one of {', '.join(PROFILE_KEYS)}")
        if ("ram-mb" in t) == ("ram-bytes" in t):
            raise _config_error(f"{where}: give exactly one of ram-mb, ram-bytes")
        ram = (_number(t["ram-mb"], f"{where}.ram-mb") if "ram-mb" in t
               else _number(t["ram-bytes"], f"{where}.ram-bytes") / BYTES_PER_MB)
        if ram <= 0:
            raise _config_error(f"{where}: RAM must be > 0")
        share = _number(t.get("train-share", 1.0), f"{where}.train-share")
        if not 0 < share <= 1:
            raise _config_error(f"{where}.train-share = {share}: must be in (0, 1]")
        if "train-budget-mb" in t and "train-budget-bytes" in t:
            raise _config_error(f"{where}: give at most one of train-budget-mb, train-budget-bytes")
        direct = None
        if "train-budget-mb" in t:
            direct = _number(t["train-budget-mb"], f"{where}.train-budget-mb")
        elif "train-budget-bytes" in t:
            direct = _number(t["train-budget-bytes"], f"{where}.train-budget-bytes") / BYTES_PER_MB
        if direct is not None and not 0 < direct <= ram:
            raise _config_error(f"{where}: the direct training budget must be in (0, RAM = {ram:g} MB]")
        out[str(name)] = DeviceProfile(str(name), str(t.get("description", name)), ram, share,
                                       direct, str(t.get("cpu", "")))
    return out


@lru_cache(maxsize=16)
def _load_profiles_cached(path: str, mtime_ns: int) -> dict[str, DeviceProfile]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise _config_error(f"{path}: not valid TOML ({err})") from None
    return parse_profiles(data, path)


def load_profiles(profiles_file: str | Path = "") -> dict[str, DeviceProfile]:
    """Device profiles by name from ``profiles_file`` (empty: ``sim_configs/fleets/devices.toml``)."""
    path = resolve_profiles_path(str(profiles_file))
    if not path.is_file():
        raise _config_error(f"fleet.profiles-file = {str(profiles_file)!r}: file {str(path)!r} not found")
    return dict(_load_profiles_cached(str(path), path.stat().st_mtime_ns))


# ------------------------------------------------------------------------ fleet strings


def parse_devices(text: str, profiles: dict[str, DeviceProfile], key: str = "fleet.devices") -> list[tuple[str, int]]:
    """``"pi-zero-2w:2, pi4-2gb:6"`` -> ``[("pi-zero-2w", 2), ("pi4-2gb", 6)]`` (validated)."""
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, count = item.partition(":")
        name = name.strip()
        if name not in profiles:
            raise _config_error(f"{key} = {text!r}: unknown profile {name!r}; expected one of "
                                f"{', '.join(profiles)}")
        try:
            n = int(count.strip()) if sep else 1
        except ValueError:
            raise _config_error(f"{key} = {text!r}: count {count.strip()!r} of {name!r} is not an integer") from None
        if n < 1:
            raise _config_error(f"{key} = {text!r}: count of {name!r} must be >= 1")
        if name in seen:
            raise _config_error(f"{key} = {text!r}: profile {name!r} given twice")
        seen.add(name)
        out.append((name, n))
    if not out:
        raise _config_error(f"{key} = {text!r}: expected 'profile:count, ...'")
    return out


def parse_fleet_methods(text: str, key: str = "fleet.methods") -> dict[str, list[str]]:
    """``"pi-zero-2w=dynhp+neq; pi4-2gb=none"`` -> ``{"pi-zero-2w": ["dynhp", "neq"], "pi4-2gb": []}``."""
    out: dict[str, list[str]] = {}
    for item in (s.strip() for s in text.split(";")):
        if not item:
            continue
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise _config_error(f"{key} = {text!r}: expected 'profile=methods; ...' (got {item!r})")
        if name in out:
            raise _config_error(f"{key} = {text!r}: profile {name!r} given twice")
        try:
            out[name] = parse_methods(spec.strip())
        except ValueError as err:
            raise _config_error(f"{key} = {text!r}: {err}") from None
    return out


def validate_fleet(fleet: FleetSection, prefix: str = "fleet.") -> None:
    """Check devices, profiles file and per-profile methods; ``ConfigError`` naming the key."""
    if not fleet.devices and not fleet.methods:
        return
    try:
        profiles = load_profiles(fleet.profiles_file)
    except Exception as err:  # noqa: BLE001 - re-raised as a one-line ConfigError naming the key
        msg = str(err)
        if not msg.startswith(f"{prefix}profiles-file"):
            msg = f"{prefix}profiles-file = {fleet.profiles_file!r}: {msg}"
        raise _config_error(msg) from None
    names: list[str] = []
    if fleet.devices:
        mix = parse_devices(fleet.devices, profiles, f"{prefix}devices")
        total = sum(n for _, n in mix)
        if total != fleet.num_clients:
            raise _config_error(f"{prefix}devices = {fleet.devices!r}: counts sum to {total}, "
                                f"but num-clients = {fleet.num_clients}")
        names = [n for n, _ in mix]
    if fleet.methods:
        per = parse_fleet_methods(fleet.methods, f"{prefix}methods")
        for name in per:
            if name not in names:
                where = f"is not in {prefix}devices ({', '.join(names)})" if names else \
                    f"needs {prefix}devices (no device mix given)"
                raise _config_error(f"{prefix}methods = {fleet.methods!r}: profile {name!r} {where}")


@dataclass
class FleetSection:
    """``[fleet]``: how many clients, which devices, their budgets and methods (see module doc)."""

    num_clients: int = 8
    clients_per_round: int = 0  # 0: all clients train every round
    min_clients: int = 2  # a round aggregates when at least this many replied
    devices: str = ""  # device mix "pi-zero-2w:2, pi4-2gb:6" (profile:count, counts sum to num-clients)
    profiles_file: str = ""  # device profiles TOML; empty: sim_configs/fleets/devices.toml
    budgets_mb: str = ""  # per-client budgets "4,8,16,..." (one per client; overrides devices)
    budget_scale: float = 1.0  # multiplies every device/per-client budget
    methods: str = ""  # per-profile methods "pi-zero-2w=dynhp+neq; pi4-2gb=none" (default: methods.enabled)

    def validate(self, p: str) -> None:
        check(self.num_clients >= 1, f"{p}num-clients", self.num_clients, "must be >= 1")
        check(0 <= self.clients_per_round <= self.num_clients, f"{p}clients-per-round",
              self.clients_per_round, f"must be in [0, num-clients={self.num_clients}] (0 = all)")
        sampled = self.clients_per_round or self.num_clients
        check(1 <= self.min_clients <= sampled, f"{p}min-clients", self.min_clients,
              f"must be in [1, clients sampled per round = {sampled}]")
        check(self.budget_scale > 0, f"{p}budget-scale", self.budget_scale, "must be > 0")
        if self.budgets_mb:
            values = parse_float_list(self.budgets_mb, f"{p}budgets-mb")
            check(len(values) == self.num_clients and min(values) > 0, f"{p}budgets-mb",
                  self.budgets_mb, f"must list {self.num_clients} budgets > 0 (one per client)")
        validate_fleet(self, p)


# ------------------------------------------------------------------------ per client


def client_devices(cfg: "ExperimentConfig") -> list[str]:
    """The device name of every client, in partition order (see module docstring)."""
    f = cfg.fleet
    if f.devices:
        profiles = load_profiles(f.profiles_file)
        return [name for name, n in parse_devices(f.devices, profiles) for _ in range(n)]
    return ["custom" if f.budgets_mb else "default"] * f.num_clients


def client_profile(cfg: "ExperimentConfig", partition_id: int) -> ClientProfile:
    """Device, budget spec and methods of client ``partition_id`` (deterministic; see module doc)."""
    f = cfg.fleet
    if not f.devices and not f.budgets_mb:  # a uniform fleet: any partition id (real devices too)
        return ClientProfile("default", cfg.memory.schedule_spec(), list(cfg.methods.names))
    if not 0 <= partition_id < f.num_clients:
        raise ValueError(f"partition-id {partition_id} out of range [0, fleet.num-clients={f.num_clients})")
    device = client_devices(cfg)[partition_id]
    per_profile = parse_fleet_methods(f.methods) if f.methods else {}
    methods = list(per_profile.get(device, cfg.methods.names))
    if f.budgets_mb:
        level = parse_float_list(f.budgets_mb, "fleet.budgets-mb")[partition_id]
    else:
        level = load_profiles(f.profiles_file)[device].budget_mb
    return ClientProfile(device, cfg.memory.spec_at(level * f.budget_scale), methods)


def fleet_table(cfg: "ExperimentConfig") -> list[dict[str, Any]]:
    """One row per client: partition, device, budget kind, reference MB, methods (for docs/reports)."""
    rows = []
    for pid in range(cfg.fleet.num_clients):
        p = client_profile(cfg, pid)
        rows.append({"partition_id": pid, "device": p.device,
                     "budget_kind": p.budget_spec.kind if p.budget_spec else "none",
                     "budget_mb": p.budget_mb, "methods": "+".join(p.methods) or "none"})
    return rows
