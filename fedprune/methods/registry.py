"""The method registry: one entry per method, naming its class, its config class and its hook rank.

Everything that lists methods derives from here: the accepted names of ``parse_methods``, the hook
order of ``build_methods``, the ``[methods.<name>]`` sections of the experiment config (built-in
entries only, in registry order) and the per-method config classes. Adding a method is one module
(its :class:`~fedprune.methods.base.Method` subclass and its config dataclass) plus one entry in
``BUILTIN``; code outside the package can add one at run time with :func:`register`.

Hook rank: the trainer calls the hooks of the enabled methods in increasing rank. Weight-rewriting
methods come first; NEq comes last because it restores whatever moved a frozen neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedprune.methods.baseline_config import (FedAvgConfig, FedAvgDropConfig, FedRolexConfig, HeteroFLConfig,
                                              SmallModelConfig)
from fedprune.methods.config import DynHPConfig, LobsterConfig, NEqConfig, SeReNeConfig
from fedprune.methods.dynhp import DynHP
from fedprune.methods.fedavg import FedAvgDrop, FedAvgUnbounded
from fedprune.methods.fedrolex import FedRolex
from fedprune.methods.heterofl import HeteroFL
from fedprune.methods.lobster import Lobster
from fedprune.methods.neq import NEq
from fedprune.methods.serene import SeReNe
from fedprune.methods.small_model import SmallModel


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: ``name`` (lower case, the config key), its ``Method`` subclass, its
    config dataclass (fields = ``[methods.<name>]`` keys, with ``validate()``) and its hook rank."""

    name: str
    method_class: type
    config_class: type
    hook_rank: int


BUILTIN: tuple[MethodEntry, ...] = (
    MethodEntry("dynhp", DynHP, DynHPConfig, hook_rank=30),
    MethodEntry("serene", SeReNe, SeReNeConfig, hook_rank=20),
    MethodEntry("neq", NEq, NEqConfig, hook_rank=90),
    MethodEntry("lobster", Lobster, LobsterConfig, hook_rank=10),
    # baselines: they only plan the round (sub-network, batch rule); ranks keep them first
    MethodEntry("fedavg", FedAvgUnbounded, FedAvgConfig, hook_rank=1),
    MethodEntry("fedavg_drop", FedAvgDrop, FedAvgDropConfig, hook_rank=2),
    MethodEntry("small_model", SmallModel, SmallModelConfig, hook_rank=3),
    MethodEntry("heterofl", HeteroFL, HeteroFLConfig, hook_rank=4),
    MethodEntry("fedrolex", FedRolex, FedRolexConfig, hook_rank=5),
)

_ENTRIES: dict[str, MethodEntry] = {e.name: e for e in BUILTIN}
RESERVED = ("none",)


def register(entry: MethodEntry) -> MethodEntry:
    """Add ``entry`` to the registry and return it.

    Guarantees: afterwards ``parse_methods``/``build_methods`` (hence ``train_local``) accept
    ``entry.name``. Raises ``ValueError`` for a name that is not a lower-case identifier, is
    reserved (``none``) or is already registered, or for a config class without ``validate()``.
    """
    if not (entry.name.isidentifier() and entry.name == entry.name.lower()) or entry.name in RESERVED:
        raise ValueError(f"method name {entry.name!r}: expected a lower-case identifier other than 'none'")
    if entry.name in _ENTRIES:
        raise ValueError(f"method {entry.name!r} is already registered")
    if not callable(getattr(entry.config_class, "validate", None)):
        raise ValueError(f"method {entry.name!r}: config class {entry.config_class.__name__} has no validate()")
    _ENTRIES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a method added with :func:`register`; ``ValueError`` for a built-in or unknown name."""
    if name in {e.name for e in BUILTIN}:
        raise ValueError(f"method {name!r} is built in and cannot be unregistered")
    if name not in _ENTRIES:
        raise ValueError(f"method {name!r} is not registered")
    del _ENTRIES[name]


def entry(name: str) -> MethodEntry:
    """The entry of a registered method; ``ValueError`` naming the known ones otherwise."""
    if name not in _ENTRIES:
        raise ValueError(f"unknown method {name!r}; expected names from {', '.join(_ENTRIES)}")
    return _ENTRIES[name]


def registered_names() -> tuple[str, ...]:
    """Names of every registered method, built-in ones first, in registration order."""
    return tuple(_ENTRIES)


def hook_order() -> tuple[str, ...]:
    """Registered names sorted by hook rank (ties keep registration order)."""
    return tuple(sorted(_ENTRIES, key=lambda n: _ENTRIES[n].hook_rank))


def config_classes() -> dict[str, Any]:
    """Method name -> config class, for every registered method."""
    return {name: e.config_class for name, e in _ENTRIES.items()}
