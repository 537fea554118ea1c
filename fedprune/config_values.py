"""Leaf helpers of the experiment config, shared by its sections wherever they live.

``ConfigError`` (one line naming the key, the value and what is allowed), ``check`` and
``parse_float_list``. No project imports: ``fedprune.config`` and the modules that own a section
(``fedprune.fleet``) import these without importing each other.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; the message is one line."""


def check(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("<key> = <value>: <allowed>")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key} = {value!r}: {allowed}")


def parse_float_list(text: str, key: str) -> list[float]:
    """Parse '64, 32,48' into floats; ``ConfigError`` naming ``key`` on a bad item."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise ConfigError(f"{key} = {text!r}: {item!r} is not a number") from None
        if not math.isfinite(out[-1]):
            raise ConfigError(f"{key} = {text!r}: {item!r} is not a finite number")
    return out
