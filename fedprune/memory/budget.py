"""Per-client memory budgets that may change from round to round.

Spec kinds (sizes in MiB = 2**20 bytes; rounds are Flower's 1-based ``server_round``):

* ``{"kind": "constant", "mb": X}``
* ``{"kind": "schedule", "mb": [X1, X2, ...]}`` -- one value per round, the last repeats
* ``{"kind": "trace", "mb": X, "low": 0.5, "high": 1.0, "period": 1, "process": "piecewise"}``
  -- ``X`` times a seeded random factor in ``[low, high]``; ``piecewise`` draws a fresh
  factor every ``period`` rounds, ``walk`` moves it by up to ``step`` (default 0.1) every
  ``period`` rounds, reflecting at the bounds
* ``{"kind": "auto", "reserve_mb": R}`` -- the smaller of the memory cgroup's headroom and the
  host's available memory, minus R, read at call time (real devices; ``resident.auto_budget``);
  optional ``cap_mb``

Instead of ``mb`` a spec may give ``fraction`` (same shapes: number or list) of a
``reference_bytes`` passed to ``make_budget_schedule`` -- e.g. a fleet with budgets at
10%..100% of the dense model's need. Optional ``min_mb`` floors any kind.

A spec is a :class:`BudgetSpec` (typed, read through attributes; ``kind = "none"`` means no budget)
or its JSON form, the dict above (``BudgetSpec.to_dict`` / ``BudgetSpec.from_dict``).

Invariants: the same ``(spec, seed, client_id)`` always yields the same budgets, whatever
order rounds are queried in (``auto`` excepted); budgets are ints >= 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import psutil  # noqa: F401 - auto_budget reads psutil.virtual_memory (tests patch it through here)

from fedprune.memory.resident import auto_budget

MIB = 2**20
KINDS = ("constant", "schedule", "trace", "auto")
BUDGET_KINDS = ("none", *KINDS)
PROCESSES = ("piecewise", "walk")
_ALLOWED = {
    "constant": {"kind", "mb", "fraction", "min_mb"},
    "schedule": {"kind", "mb", "fraction", "min_mb"},
    "trace": {"kind", "mb", "fraction", "min_mb", "low", "high", "period", "process", "step"},
    "auto": {"kind", "reserve_mb", "cap_mb", "min_mb"},
    "none": {"kind"},
}


@dataclass(frozen=True)
class BudgetSpec:
    """A memory budget description (see module doc); unset fields are ``None``.

    Guarantees: ``kind`` is one of ``BUDGET_KINDS`` and only the fields of that kind are set (else
    ``ValueError`` naming the field); ``BudgetSpec.from_dict(s.to_dict()) == s``; values are checked
    by :func:`make_budget_schedule`.
    """

    kind: str
    mb: float | tuple[float, ...] | None = None
    fraction: float | tuple[float, ...] | None = None
    min_mb: float | None = None
    low: float | None = None
    high: float | None = None
    period: int | None = None
    process: str | None = None
    step: float | None = None
    reserve_mb: float | None = None
    cap_mb: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget spec kind={self.kind!r}: expected one of {', '.join(BUDGET_KINDS)}")
        extra = sorted(k for k, v in self._fields().items() if v is not None and k not in _ALLOWED[self.kind])
        if extra:
            raise ValueError(f"budget spec kind={self.kind!r} has unknown key(s) {', '.join(map(repr, extra))}; "
                             f"allowed: {', '.join(sorted(_ALLOWED[self.kind]))}")

    def _fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "kind"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BudgetSpec":
        """The spec of a JSON-form dict; ``ValueError`` naming an unknown kind or key."""
        if not isinstance(data, dict):
            raise ValueError(f"budget spec must be a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"budget spec kind={data.get('kind')!r} has unknown key(s) "
                             f"{', '.join(map(repr, unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"kind": ..., <set fields>}`` (lists for per-round values)."""
        out: dict[str, Any] = {"kind": self.kind}
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in self._fields().items() if v is not None})
        return out

    @property
    def bounded(self) -> bool:
        """False for ``kind = "none"`` (no budget)."""
        return self.kind != "none"

    @property
    def reference_mb(self) -> float | None:
        """The reference level in MB: the constant/trace level, the schedule's largest value;
        ``None`` for ``none``, ``auto`` and fraction-based specs."""
        if self.kind in ("constant", "trace") and self.mb is not None:
            return float(self.mb)
        if self.kind == "schedule" and self.mb is not None:
            return float(max(self.mb))
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(spec: dict, key: str, *, allow_zero: bool = False) -> float:
    v = spec[key]
    if not _is_number(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"budget spec {key}={v!r}: expected a {'non-negative' if allow_zero else 'positive'} number")
    return float(v)


def _base_bytes(spec: dict, reference_bytes: int | None, *, as_list: bool) -> list[float] | float:
    """Resolve ``mb`` or ``fraction`` (exactly one) into bytes."""
    has_mb, has_frac = "mb" in spec, "fraction" in spec
    if has_mb == has_frac:
        raise ValueError(f"budget spec kind={spec['kind']!r} needs exactly one of 'mb' or 'fraction'")
    key = "mb" if has_mb else "fraction"
    if has_frac and (reference_bytes is None or not _is_number(reference_bytes) or reference_bytes <= 0):
        raise ValueError("budget spec uses 'fraction' but no positive reference_bytes was given")
    scale = MIB if has_mb else float(reference_bytes)
    value = spec[key]
    if as_list:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"budget spec {key}={value!r}: kind 'schedule' needs a non-empty list")
        out = []
        for i, v in enumerate(value):
            if not _is_number(v) or v < 0:
                raise ValueError(f"budget spec {key}[{i}]={v!r}: expected a non-negative number")
            out.append(float(v) * scale)
        return out
    if not _is_number(value) or value <= 0:
        raise ValueError(f"budget spec {key}={value!r}: expected a positive number")
    return float(value) * scale


def _rng(seed: int, client_id: int, *salt: int) -> np.random.Generator:
    cid = int(client_id) if isinstance(client_id, (int, np.integer)) else int.from_bytes(
        hashlib.sha256(str(client_id).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), cid & (2**63 - 1), *salt]))


@dataclass
class BudgetSchedule:
    """A client's budget per round: ``budget_bytes(round)`` (1-based rounds, >= 0 bytes)."""

    kind: str
    spec: dict
    seed: int
    client_id: int | str
    _fn: Callable[[int], float] = field(repr=False)
    min_bytes: int = 0

    def budget_bytes(self, round: int) -> int:  # noqa: A002 - Flower calls it server_round/round
        """The budget in bytes for ``round`` (``auto`` reads available memory now)."""
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 1:
            raise ValueError(f"round={round!r}; rounds are 1-based integers (Flower's server_round)")
        return max(int(self.min_bytes), int(max(0.0, self._fn(int(round)))))

    def budget_mb(self, round: int) -> float:  # noqa: A002
        """``budget_bytes(round)`` in MiB."""
        return self.budget_bytes(round) / MIB

    def describe(self) -> dict:
        """JSON-friendly description (spec, seed, client id)."""
        return {"kind": self.kind, "spec": dict(self.spec), "seed": self.seed, "client_id": self.client_id}


def _trace_fn(spec: dict, base: float, seed: int, client_id: int | str) -> Callable[[int], float]:
    low = _positive(spec, "low") if "low" in spec else 0.5
    high = _positive(spec, "high") if "high" in spec else 1.0
    if low > high:
        raise ValueError(f"budget spec low={low!r} > high={high!r}")
    period = spec.get("period", 1)
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"budget spec period={period!r}: expected an integer >= 1")
    process = spec.get("process", "piecewise")
    if process not in PROCESSES:
        raise ValueError(f"budget spec process={process!r}: expected one of {', '.join(PROCESSES)}")
    if process == "piecewise":
        if "step" in spec:
            raise ValueError("budget spec key 'step' only applies to process='walk'")

        def piecewise(r: int) -> float:
            segment = (r - 1) // period
            return base * float(_rng(seed, client_id, 1, segment).uniform(low, high))
        return piecewise

    step = _positive(spec, "step") if "step" in spec else 0.1
    levels: list[float] = []
    gen = _rng(seed, client_id, 2)

    def walk(r: int) -> float:
        segment = (r - 1) // period
        while len(levels) <= segment:  # generated in order and cached: query order does not matter
            if not levels:
                levels.append(float(gen.uniform(low, high)))
                continue
            v = levels[-1] + float(gen.uniform(-step, step))
            while v < low or v > high:  # reflect at the bounds
                v = 2 * low - v if v < low else 2 * high - v
                if low == high:
                    v = low
            levels.append(v)
        return base * levels[segment]
    return walk


def make_budget_schedule(spec: BudgetSpec | dict, seed: int, client_id: int | str,
                         reference_bytes: int | None = None) -> BudgetSchedule:
    """Build a validated, deterministic ``BudgetSchedule`` from a spec (see module doc).

    Raises ``ValueError`` naming the offending key and value for any malformed spec.
    """
    if isinstance(spec, BudgetSpec):
        spec = spec.to_dict()
    if not isinstance(spec, dict):
        raise ValueError(f"budget spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"budget spec kind={kind!r}: expected one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        raise ValueError(f"budget spec kind={kind!r} has unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(_ALLOWED[kind]))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r}: expected an integer")
    min_bytes = int(_positive(spec, "min_mb", allow_zero=True) * MIB) if "min_mb" in spec else 0

    if kind == "constant":
        base = _base_bytes(spec, reference_bytes, as_list=False)
        fn: Callable[[int], float] = lambda _r: base  # noqa: E731
    elif kind == "schedule":
        values = _base_bytes(spec, reference_bytes, as_list=True)
        fn = lambda r: values[min(r, len(values)) - 1]  # noqa: E731
    elif kind == "trace":
        fn = _trace_fn(spec, _base_bytes(spec, reference_bytes, as_list=False), int(seed), client_id)
    else:  # auto
        if "reserve_mb" not in spec:
            raise ValueError("budget spec kind='auto' needs 'reserve_mb'")
        reserve = _positive(spec, "reserve_mb", allow_zero=True) * MIB
        cap = _positive(spec, "cap_mb") * MIB if "cap_mb" in spec else math.inf

        def fn(_r: int) -> float:  # min(cgroup headroom, available memory) - reserve, read now
            return float(auto_budget(int(reserve), cap))
    return BudgetSchedule(kind, dict(spec), int(seed), client_id, fn, min_bytes)
