"""Per-client, per-round memory report that the trainer fills and sends to the server.

Fields: budget, predicted peak, measured peak (max over measured steps), RSS,
batch sizes used, utilization = measured / budget, violations (measured or
predicted above budget), OOM events and whether the client could train at all.
``to_dict`` is JSON-friendly; ``to_metrics`` flattens to scalars for Flower metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


def _event_dict(e: Any) -> dict:
    return e.to_dict() if hasattr(e, "to_dict") else dict(e)


@dataclass
class MemoryReport:
    """Memory accounting of one client in one round (invariant: peaks only ever grow)."""

    client_id: int | str | None = None
    round: int | None = None
    budget_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    rss_bytes: int | None = None
    batch_sizes: list[int] = field(default_factory=list)
    violations: list[dict] = field(default_factory=list)
    oom_events: list[dict] = field(default_factory=list)
    fits: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def utilization(self) -> float | None:
        """``measured_peak_bytes / budget_bytes`` (None until both are known or budget is 0)."""
        if not self.budget_bytes or self.measured_peak_bytes is None:
            return None
        return self.measured_peak_bytes / self.budget_bytes

    def record_batch(self, batch_size: int) -> None:
        """Note a batch size used this round (consecutive duplicates collapse)."""
        b = int(batch_size)
        if not self.batch_sizes or self.batch_sizes[-1] != b:
            self.batch_sizes.append(b)

    def record_prediction(self, predicted_bytes: int, batch_size: int | None = None) -> None:
        """Keep the largest predicted peak; a prediction above the budget is a violation."""
        p = int(predicted_bytes)
        self.predicted_peak_bytes = p if self.predicted_peak_bytes is None else max(self.predicted_peak_bytes, p)
        if self.budget_bytes is not None and p > self.budget_bytes:
            self.violations.append({"kind": "predicted_over_budget", "bytes": p, "budget_bytes": self.budget_bytes,
                                    "batch_size": batch_size})

    def record_measurement(self, peak_bytes: int, rss_bytes: int | None = None, *,
                           batch_size: int | None = None, step: int | None = None) -> None:
        """Keep the largest measured peak (and RSS); a peak above the budget is a violation."""
        m = int(peak_bytes)
        self.measured_peak_bytes = m if self.measured_peak_bytes is None else max(self.measured_peak_bytes, m)
        if rss_bytes is not None:
            self.rss_bytes = int(rss_bytes) if self.rss_bytes is None else max(self.rss_bytes, int(rss_bytes))
        if self.budget_bytes is not None and m > self.budget_bytes:
            self.violations.append({"kind": "measured_over_budget", "bytes": m, "budget_bytes": self.budget_bytes,
                                    "batch_size": batch_size, "step": step})

    def record_oom(self, events: Iterable[Any]) -> None:
        """Append OOM events (``OOMEvent`` or dicts) from ``run_with_oom_guard``."""
        self.oom_events.extend(_event_dict(e) for e in events)

    def mark_does_not_fit(self, note: str = "") -> None:
        """The client could not train within its budget this round (a clean failure)."""
        self.fits = False
        if note:
            self.notes.append(note)

    def to_dict(self) -> dict:
        """JSON-friendly dict, including the derived ``utilization`` and counts."""
        return {"client_id": self.client_id, "round": self.round, "budget_bytes": self.budget_bytes,
                "predicted_peak_bytes": self.predicted_peak_bytes, "measured_peak_bytes": self.measured_peak_bytes,
                "rss_bytes": self.rss_bytes, "batch_sizes": list(self.batch_sizes),
                "utilization": self.utilization, "violations": [dict(v) for v in self.violations],
                "num_violations": len(self.violations), "oom_events": [dict(e) for e in self.oom_events],
                "num_oom_events": len(self.oom_events), "fits": self.fits, "notes": list(self.notes)}

    def to_metrics(self, prefix: str = "mem_") -> dict[str, int | float]:
        """Flat scalar metrics (ints/floats only; -1 = unknown) for Flower ``MetricRecord``s."""
        def num(v: Any) -> int | float:
            return -1 if v is None else v
        return {f"{prefix}budget_bytes": num(self.budget_bytes),
                f"{prefix}predicted_peak_bytes": num(self.predicted_peak_bytes),
                f"{prefix}measured_peak_bytes": num(self.measured_peak_bytes),
                f"{prefix}rss_bytes": num(self.rss_bytes),
                f"{prefix}utilization": float(num(self.utilization)),
                f"{prefix}batch_size_min": min(self.batch_sizes) if self.batch_sizes else 0,
                f"{prefix}batch_size_max": max(self.batch_sizes) if self.batch_sizes else 0,
                f"{prefix}batch_size_last": self.batch_sizes[-1] if self.batch_sizes else 0,
                f"{prefix}num_violations": len(self.violations),
                f"{prefix}num_oom_events": len(self.oom_events),
                f"{prefix}fits": int(self.fits)}
