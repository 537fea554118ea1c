"""Pruning and freezing methods that run inside the local trainer (no Flower imports).

``parse_methods("serene+neq")`` validates a method string; the ``*Config`` dataclasses hold each
method's hyper-parameters; ``build_methods`` instantiates the enabled ones in hook order. The names,
config classes and hook order come from :mod:`fedprune.methods.registry`. Each method is a
:class:`fedprune.methods.base.Method`; see ``docs/methods.md`` for the algorithms, their scores and
schedules, and where they deviate from the papers.
"""

from __future__ import annotations

from typing import Any, Mapping

from fedprune.methods import registry
from fedprune.methods.config import DynHPConfig, LobsterConfig, NEqConfig, SeReNeConfig
from fedprune.methods.registry import MethodEntry, register, unregister

#: The built-in method names (``none`` first: plain training); ``parse_methods`` also accepts
#: methods registered at run time.
METHOD_NAMES = ("none", *(e.name for e in registry.BUILTIN))
#: The built-in methods in hook order.
HOOK_ORDER = tuple(e.name for e in sorted(registry.BUILTIN, key=lambda e: e.hook_rank))
#: The built-in methods' config classes.
CONFIG_CLASSES = {e.name: e.config_class for e in registry.BUILTIN}

__all__ = [
    "METHOD_NAMES", "HOOK_ORDER", "CONFIG_CLASSES", "parse_methods", "build_methods",
    "default_method_configs", "prune_to_fit_floor", "MethodEntry", "register", "unregister",
    "DynHPConfig", "SeReNeConfig", "NEqConfig", "LobsterConfig",
]


def parse_methods(spec: str) -> list[str]:
    """Parse a ``+``-joined method string (``"dynhp+neq"``) into the list of enabled methods.

    Guarantees: names are lower-cased and stripped, hyphens read as underscores (``fedavg-drop``); the result has no duplicates and keeps the given
    order; ``"none"`` (alone) gives ``[]`` (plain training / FedAvg). Raises ``ValueError`` naming the
    offending token for an unknown name, an empty token, a duplicate, or ``none`` combined with others.
    """
    if not isinstance(spec, str):
        raise ValueError(f"methods must be a string like 'dynhp+neq', got {spec!r}")
    known = ("none", *registry.registered_names())
    tokens = [t.strip().lower().replace("-", "_") for t in spec.split("+")]
    out: list[str] = []
    for tok in tokens:
        if tok not in known:
            shown = tok if tok else "(empty)"
            raise ValueError(f"unknown method {shown!r} in {spec!r}; expected '+'-joined names from "
                             f"{', '.join(known)}")
        if tok in out:
            raise ValueError(f"method {tok!r} given twice in {spec!r}")
        out.append(tok)
    if "none" in out:
        if len(out) > 1:
            raise ValueError(f"method 'none' cannot be combined with others in {spec!r}")
        return []
    return out


def default_method_configs() -> dict[str, Any]:
    """A fresh default config object per registered method name."""
    return {name: cls() for name, cls in registry.config_classes().items()}


def _config_for(name: str, cfg: Any) -> Any:
    cls = registry.entry(name).config_class
    if cfg is None:
        cfg = cls()
    elif isinstance(cfg, Mapping):
        fields = {k.replace("-", "_"): v for k, v in cfg.items()}
        known = set(getattr(cls, "__dataclass_fields__", fields))
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"methods.{name}.{unknown[0]}: unknown key; expected one of {', '.join(sorted(known))}")
        cfg = cls(**fields)
    cfg.validate()
    return cfg


def build_methods(methods: list[str] | str, method_cfgs: Mapping[str, Any] | None = None) -> list:
    """Instantiate the enabled methods, validated, in hook order.

    ``methods`` is a list from :func:`parse_methods` (or a string, parsed here). ``method_cfgs`` maps
    a method name to its config dataclass (or a plain dict of its fields); missing ones use defaults.
    Raises ``ValueError`` for an unknown name or an invalid config.
    """
    names = parse_methods(methods) if isinstance(methods, str) else list(methods)
    for n in names:
        registry.entry(n)  # raises for "none" and unknown names
    cfgs = dict(method_cfgs or {})
    return [registry.entry(name).method_class(_config_for(name, cfgs.get(name)))
            for name in registry.hook_order() if name in names]


def prune_to_fit_floor(methods: list) -> int | None:
    """The fewest neurons per group that the built ``methods`` allow pruning down to so that a model
    fits its memory budget (the largest floor among those that may prune to fit); ``None`` when none
    of them may (see :meth:`fedprune.methods.base.Method.prune_to_fit_floor`)."""
    floors = [f for f in (m.prune_to_fit_floor() for m in methods) if f is not None]
    return max(floors) if floors else None
