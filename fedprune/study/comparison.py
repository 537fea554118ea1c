"""Method against method at each setting: accuracy, peak memory, model size, upload, participation.

A *setting* is every grid value but the seed and the method (budget level, partitioner, ...). Per
finished run: final accuracy, the per-client peak memory (the largest over client-rounds that
trained) both physical (``rss_peak_bytes``, the client process's resident peak, when the metrics
have it) and of the training tensors (``measured_peak_bytes``), the final model's parameters
against the dense model's, upload bytes,
per device tier the share of sampled client-rounds that trained, the steady-state seconds per round
and the run's wall seconds (to size a study). Per (setting, method) the mean and the seeds'
standard deviation and range (:func:`comparison_rows`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Sequence

from fedprune.study.numbers import MB, client_rows, mean, num, std
from fedprune.study.runs import RunRecord
from fedprune.study.tables import group_key_fields, method_label, run_budget_mb

#: The baselines of fedprune.methods (normalised names); every other method string is fedprune's.
BASELINES = ("fedavg", "fedavg_drop", "small_model", "heterofl", "fedrolex")
#: The unconstrained upper bound.
UPPER_BOUND = "fedavg"
#: Convergence: the mean test accuracy of the last ``PLATEAU_WINDOW`` rounds is less than
#: ``PLATEAU_TOL`` above the mean of the ``PLATEAU_WINDOW`` rounds before them.
PLATEAU_WINDOW, PLATEAU_TOL = 3, 0.003
#: (comparison field, client metric, reader's name) of each peak, the physical one first.
PEAKS = (("physical_peak_mb", "physical_peak_bytes", "physical peak of training (RSS growth in the round)"),
         ("rss_peak_mb", "rss_peak_bytes", "physical peak (process RSS)"),
         ("tensor_peak_mb", "measured_peak_bytes", "tensor peak (training tensors)"))


#: Grid keys that make a variant of a method rather than a setting (``dynhp [mask-policy=quorum]``):
#: the strategy's, the trainer's and the methods' own keys (``methods.enabled`` is the method itself).
VARIANT_PREFIXES = ("strategy.", "train.", "methods.")


def is_variant_key(key: str) -> bool:
    """Whether grid key ``key`` makes a variant of the method (see ``VARIANT_PREFIXES``)."""
    return key.startswith(VARIANT_PREFIXES) and key != "methods.enabled"


def method_name(rec: RunRecord) -> str:
    """The run's method string normalised (``fedavg-drop`` -> ``fedavg_drop``; ``none`` stays), with
    the run's variant grid values (:func:`is_variant_key`) in brackets when it has any."""
    from fedprune.methods import parse_methods

    label = method_label(rec)
    try:
        name = "+".join(parse_methods(label.replace(" (per-device)", ""))) or "none"
    except ValueError:
        name = label
    variant = [f"{k.split('.')[-1]}={v}" for k, v in sorted(rec.overrides.items())
               if is_variant_key(k)]
    return f"{name} [{', '.join(variant)}]" if variant else name


def is_baseline(method: str) -> bool:
    """Whether a normalised method string is one of the baselines."""
    return method in BASELINES


def participation(rec: RunRecord) -> dict[str, float]:
    """Per device (``"all"`` for a fleet without devices): trained / sampled client-rounds."""
    devices: list[str] = []
    if rec.config is not None and rec.config.fleet.devices:
        from fedprune.fleet import client_devices

        devices = client_devices(rec.config)
    sampled: dict[str, int] = defaultdict(int)
    trained: dict[str, int] = defaultdict(int)
    for row in rec.rows:
        failed = {str(k) for k in (row.get("failures") or {}) if k != "round"}
        clients = {str(c.get("partition_id", c.get("client"))): c for c in row.get("clients") or []
                   if isinstance(c, dict)}
        for pid in set(clients) | failed:
            dev = devices[int(pid)] if pid.isdigit() and int(pid) < len(devices) else "all"
            sampled[dev] += 1
            c = clients.get(pid)
            trained[dev] += int(c is not None and not c.get("does_not_fit") and pid not in failed)
    return {d: trained[d] / sampled[d] for d in sampled}


def plateau_round(accuracies: Sequence[float]) -> int | None:
    """The first round (1-based) at which the accuracy curve meets the plateau criterion (see
    ``PLATEAU_WINDOW``/``PLATEAU_TOL``); ``None`` when it never does."""
    w = PLATEAU_WINDOW
    for end in range(2 * w, len(accuracies) + 1):
        last, before = accuracies[end - w:end], accuracies[end - 2 * w:end - w]
        if sum(last) / w - sum(before) / w < PLATEAU_TOL:
            return end
    return None


def largest_peak_mb(rec: RunRecord, metric: str) -> float | None:
    """The largest ``metric`` (bytes) over the run's client-rounds that trained, in MB."""
    peaks = [num(c.get(metric)) for _, c in client_rows(rec.rows) if not c.get("does_not_fit")]
    peaks = [p for p in peaks if p]
    return max(peaks) / MB if peaks else None


def run_facts(rec: RunRecord) -> dict[str, Any]:
    """One finished run's figures for the comparison (see module docstring)."""
    s = rec.summary or {}
    dense, final = num(s.get("dense_params")), num(s.get("final_params"))
    return {"accuracy": num(s.get("final_accuracy")),
            **{field: largest_peak_mb(rec, metric) for field, metric, _ in PEAKS},
            "final_params": final, "smaller": dense / final if dense and final else None,
            "upload_mb": None if num(s.get("upload_bytes_total")) is None else s["upload_bytes_total"] / MB,
            "participation": participation(rec),
            "plateau_round": plateau_round([a for a in (num(r.get("accuracy")) for r in rec.rows)
                                            if a is not None]),
            "rounds": len(rec.rows),
            # steady state: the first round also starts the simulation's processes
            "round_seconds": mean(num(r.get("round_seconds")) for r in rec.rows[1:]),
            "wall_seconds": num(s.get("wall_seconds"))}


def setting_of(rec: RunRecord, keys: Sequence[str]) -> str:
    """The setting's label: its grid values but seed and method (the budget level first)."""
    b = run_budget_mb(rec)
    parts = [f"budget {b:.4g} MB" if b is not None else "no budget"]
    parts += [f"{k.split('.')[-1]}={rec.overrides[k]}" for k in keys
              if k in rec.overrides and k not in ("run.seed", "methods.enabled")
              and not k.startswith(("fleet.budget", "memory.budget")) and not is_variant_key(k)]
    return ", ".join(parts)


def _stats(vals: Sequence[float | None]) -> dict[str, float | None]:
    xs = [v for v in vals if v is not None]
    return {"mean": mean(xs), "std": std(xs), "min": min(xs, default=None), "max": max(xs, default=None)}


def comparison_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (setting, method) over the finished runs, in the order met; budgets ascending."""
    keys = group_key_fields(records)
    groups: dict[tuple[str, str], list[tuple[RunRecord, dict[str, Any]]]] = defaultdict(list)
    budgets: dict[str, float] = {}
    for rec in records:
        if rec.done:
            setting = setting_of(rec, keys)
            budgets.setdefault(setting, run_budget_mb(rec) or float("inf"))
            groups[(setting, method_name(rec))].append((rec, run_facts(rec)))
    out = []
    for (setting, method), members in sorted(groups.items(), key=lambda kv: budgets[kv[0][0]]):
        facts = [f for _, f in members]
        row: dict[str, Any] = {"setting": setting, "budget_mb": budgets[setting], "method": method,
                               "baseline": is_baseline(method), "seeds": len(members)}
        for f in ("accuracy", *(p[0] for p in PEAKS), "final_params", "smaller", "upload_mb",
                  "round_seconds", "wall_seconds"):
            for stat, v in _stats([x[f] for x in facts]).items():
                row[f"{f}_{stat}"] = v
        plateaus = [x["plateau_round"] for x in facts]
        row["rounds"] = max(x["rounds"] for x in facts)
        row["plateau_round_max"] = None if None in plateaus else max(plateaus)  # type: ignore[type-var]
        row["plateaued"] = sum(p is not None for p in plateaus)
        tiers = sorted({d for x in facts for d in x["participation"]})
        for d in tiers:
            row[f"participation:{d}"] = mean(x["participation"].get(d) for x in facts)
        out.append(row)
    return out


def rows_json(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison rows as JSON (what the conclusion and the README read)."""
    return json.dumps(list(rows), indent=1, sort_keys=True)
