"""Pruning and freezing methods that run inside the local trainer (no Flower imports).

``parse_methods("serene+neq")`` validates a method string; the ``*Config`` dataclasses hold each
method's hyper-parameters; ``build_methods`` instantiates the enabled ones (in a fixed hook order).
Each method is a :class:`fedprune.methods.base.Method`; see ``docs/methods.md`` for the algorithms,
their scores and schedules, and where they deviate from the papers.
"""

from __future__ import annotations

from typing import Any, Mapping

from fedprune.methods.config import (CONFIG_CLASSES, DynHPConfig, LobsterConfig, NEqConfig,
                                     SeReNeConfig)

METHOD_NAMES = ("none", "dynhp", "serene", "neq", "lobster")
# Hook order: weight-rewriting methods first, NEq last (it restores whatever moved a frozen neuron).
HOOK_ORDER = ("lobster", "serene", "dynhp", "neq")

__all__ = [
    "METHOD_NAMES", "HOOK_ORDER", "parse_methods", "build_methods", "default_method_configs",
    "DynHPConfig", "SeReNeConfig", "NEqConfig", "LobsterConfig",
]


def parse_methods(spec: str) -> list[str]:
    """Parse a ``+``-joined method string (``"dynhp+neq"``) into the list of enabled methods.

    Guarantees: names are lower-cased and stripped; the result has no duplicates and keeps the given
    order; ``"none"`` (alone) gives ``[]`` (plain training / FedAvg). Raises ``ValueError`` naming the
    offending token for an unknown name, an empty token, a duplicate, or ``none`` combined with others.
    """
    if not isinstance(spec, str):
        raise ValueError(f"methods must be a string like 'dynhp+neq', got {spec!r}")
    tokens = [t.strip().lower() for t in spec.split("+")]
    out: list[str] = []
    for tok in tokens:
        if tok not in METHOD_NAMES:
            shown = tok if tok else "(empty)"
            raise ValueError(f"unknown method {shown!r} in {spec!r}; expected '+'-joined names from "
                             f"{', '.join(METHOD_NAMES)}")
        if tok in out:
            raise ValueError(f"method {tok!r} given twice in {spec!r}")
        out.append(tok)
    if "none" in out:
        if len(out) > 1:
            raise ValueError(f"method 'none' cannot be combined with others in {spec!r}")
        return []
    return out


def default_method_configs() -> dict[str, Any]:
    """A fresh default config object per method name."""
    return {name: cls() for name, cls in CONFIG_CLASSES.items()}


def build_methods(methods: list[str] | str, method_cfgs: Mapping[str, Any] | None = None) -> list:
    """Instantiate the enabled methods, validated, in ``HOOK_ORDER``.

    ``methods`` is a list from :func:`parse_methods` (or a string, parsed here). ``method_cfgs`` maps
    a method name to its config dataclass (or a plain dict of its fields); missing ones use defaults.
    Raises ``ValueError`` for an unknown name or an invalid config.
    """
    from fedprune.methods.dynhp import DynHP
    from fedprune.methods.lobster import Lobster
    from fedprune.methods.neq import NEq
    from fedprune.methods.serene import SeReNe

    names = parse_methods(methods) if isinstance(methods, str) else list(methods)
    for n in names:
        if n not in METHOD_NAMES or n == "none":
            raise ValueError(f"unknown method {n!r}; expected names from {', '.join(METHOD_NAMES[1:])}")
    classes = {"dynhp": DynHP, "serene": SeReNe, "neq": NEq, "lobster": Lobster}
    cfgs = dict(method_cfgs or {})
    out = []
    for name in HOOK_ORDER:
        if name not in names:
            continue
        cfg = cfgs.get(name)
        if cfg is None:
            cfg = CONFIG_CLASSES[name]()
        elif isinstance(cfg, Mapping):
            cfg = CONFIG_CLASSES[name](**{k.replace("-", "_"): v for k, v in cfg.items()})
        cfg.validate()
        out.append(classes[name](cfg))
    return out
