"""Numbers read from metrics rows: finite floats, means and spreads, per-client figures."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


MB = 2**20


BATCH_KEYS = ("batch_final", "final_batch", "batch_size")  # the trainer reports batch_final


def num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def client_value(c: dict[str, Any], what: str) -> float | None:
    """A per-client metric: ``utilization`` (peak / budget), ``batch``, ``flops_saved``, ``budget_mb``."""
    if c.get("does_not_fit") and what != "budget_mb":  # the client did not train this round
        return None
    if what == "utilization":  # only meaningful for a client that had a budget
        budget = num(c.get("budget_bytes"))
        if not budget:
            return None
        u = num(c.get("utilization"))
        if u is None:
            peak = num(c.get("measured_peak_bytes"))
            u = peak / budget if peak is not None else None
        return u
    if what == "batch":
        for k in BATCH_KEYS:
            v = c.get(k)
            if isinstance(v, list) and v:
                v = v[-1]
            if num(v) is not None:
                return num(v)
        sizes = c.get("batch_sizes")  # "32,32,48" (the trainer's string) or a list
        if isinstance(sizes, str) and sizes.strip():
            sizes = sizes.split(",")
        try:
            return float(sizes[-1]) if isinstance(sizes, list) and sizes else None
        except ValueError:
            return None
    if what == "flops_saved":
        return num(c.get("bprop_flops_saved_frac"))
    if what == "budget_mb":
        b = num(c.get("budget_bytes"))
        return None if b is None or b <= 0 else b / MB
    if what == "peak_mb":
        b = num(c.get("measured_peak_bytes"))
        return None if b is None else b / MB
    raise KeyError(what)


def mean(vals: Iterable[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return sum(xs) / len(xs) if xs else None


def std(vals: Iterable[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    if len(xs) < 2:
        return 0.0 if xs else None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def client_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(int(r.get("round", i + 1)), c) for i, r in enumerate(rows)
            for c in (r.get("clients") or []) if isinstance(c, dict)]
