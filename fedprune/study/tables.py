"""One row per run (``report.csv``), per setting over seeds (``report_grouped.csv``) and per round
(``rounds.csv``): the summary figures verbatim plus aggregates computed from ``metrics.jsonl``."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from typing import Any, Sequence

from fedprune.study.numbers import client_rows, client_value, mean, num, std
from fedprune.study.runs import RunRecord


SUMMARY_FIELDS = ("final_accuracy", "final_loss", "masked_accuracy", "rounds", "num_clients",
                  "dense_params", "final_params", "compression", "final_flops", "dense_flops",
                  "neurons_per_layer", "upload_bytes_total", "dense_upload_bytes_total",
                  "download_bytes_total", "budget_violations", "client_failures", "wall_seconds")


def method_label(rec: RunRecord) -> str:
    """The run's methods (``methods.enabled``), marked when some devices override them."""
    if rec.config is not None:
        label = rec.config.methods.enabled
        return label + " (per-device)" if rec.config.fleet.methods else label
    return str((rec.summary or {}).get("methods", "?"))


def fleet_levels(rec: RunRecord) -> list[float | None]:
    """Each client's reference budget in MB (from the config; ``None``: unbounded or auto)."""
    if rec.config is None:
        return []
    from fedprune.fleet import client_profile

    try:
        return [client_profile(rec.config, i).budget_mb for i in range(rec.config.fleet.num_clients)]
    except Exception:  # noqa: BLE001 - e.g. a profiles file that moved since the run
        return []


def run_budget_mb(rec: RunRecord) -> float | None:
    """Mean client budget level in MB: from the config, else measured from the metrics rows."""
    levels = fleet_levels(rec)
    if levels and all(v is not None for v in levels):
        return sum(levels) / len(levels)  # type: ignore[arg-type]
    return mean(client_value(c, "budget_mb") for _, c in client_rows(rec.rows))


def run_row(rec: RunRecord) -> dict[str, Any]:
    """The run's line of ``report.csv``: identity, grid values, summary figures verbatim, aggregates."""
    cfg = rec.config
    row: dict[str, Any] = {"run": rec.id, "status": "done" if rec.done else f"unfinished ({len(rec.rows)} rounds)",
                           "method": method_label(rec)}
    if cfg is not None:
        row.update({"seed": cfg.run.seed, "dataset": cfg.data.dataset, "model": cfg.model.name,
                    "budget_kind": cfg.memory.budget, "devices": cfg.fleet.devices or "",
                    "budget_scale": cfg.fleet.budget_scale, "clients": cfg.fleet.num_clients,
                    "clients_per_round": cfg.fleet.clients_per_round or cfg.fleet.num_clients})
    row["budget_mb"] = run_budget_mb(rec)
    for k, v in rec.overrides.items():
        row[f"grid:{k}"] = v
    for k in SUMMARY_FIELDS:
        if rec.summary and k in rec.summary:
            row[k] = rec.summary[k]
    clients = [c for _, c in client_rows(rec.rows)]
    util = [client_value(c, "utilization") for c in clients]
    row["mean_utilization"] = mean(util)
    row["max_utilization"] = max((u for u in util if u is not None), default=None)
    row["mean_peak_mb"] = mean(client_value(c, "peak_mb") for c in clients)
    row["mean_batch"] = mean(client_value(c, "batch") for c in clients)
    row["mean_bprop_flops_saved"] = mean(client_value(c, "flops_saved") for c in clients)
    row["does_not_fit"] = int(sum(1 for c in clients if c.get("does_not_fit")))
    fails = [(k, str(v)) for r in rec.rows for k, v in (r.get("failures") or {}).items()]
    row["client_errors"] = sum(1 for k, v in fails if k != "round" and "does not fit" not in v)
    row["rounds_dropped"] = sum(1 for k, _ in fails if k == "round")
    row["mean_round_seconds"] = mean(num(r.get("round_seconds")) for r in rec.rows)
    row.update(device_breakdown(rec))
    return row


def device_breakdown(rec: RunRecord) -> dict[str, Any]:
    """Per device of a mixed fleet: mean batch (``batch:<dev>``), client-rounds that did not fit."""
    if rec.config is None or not rec.config.fleet.devices:
        return {}
    from fedprune.fleet import client_devices

    try:
        devices = client_devices(rec.config)
    except Exception:  # noqa: BLE001
        return {}
    batches: dict[str, list[float | None]] = {d: [] for d in dict.fromkeys(devices)}
    dnf: dict[str, int] = {d: 0 for d in batches}
    for _, c in client_rows(rec.rows):
        try:
            dev = devices[int(c.get("partition_id", c.get("client")))]
        except (TypeError, ValueError, IndexError):
            continue
        batches[dev].append(client_value(c, "batch"))
        dnf[dev] += 1 if c.get("does_not_fit") else 0
    out: dict[str, Any] = {}
    for dev in batches:
        out[f"batch:{dev}"] = mean(batches[dev])
        out[f"did_not_fit:{dev}"] = dnf[dev]
    return out


GROUP_FIELDS = ("final_accuracy", "final_params", "compression", "final_flops", "mean_utilization",
                "mean_batch", "mean_bprop_flops_saved", "budget_violations", "does_not_fit",
                "client_errors", "rounds_dropped")


def group_key_fields(records: Sequence[RunRecord]) -> list[str]:
    """Grid keys that define a setting (every override but the seed)."""
    keys: list[str] = []
    for r in records:
        for k in r.overrides:
            if k != "run.seed" and k not in keys:
                keys.append(k)
    return keys


def grouped_rows(records: Sequence[RunRecord], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs averaged over seeds: one row per setting, ``<field>_mean``/``_std`` and ``n``."""
    keys = group_key_fields(records)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    order: list[tuple] = []
    for rec, row in zip(records, rows):
        if not rec.done:
            continue
        if keys:
            gk = tuple(json.dumps(rec.overrides.get(k), sort_keys=True) for k in keys)
        else:
            b = row.get("budget_mb")
            gk = (row["method"], None if b is None else round(b, 6), row.get("devices", ""))
        if gk not in groups:
            order.append(gk)
        groups[gk].append(row)
    out = []
    for gk in order:
        members = groups[gk]
        g: dict[str, Any] = {"method": members[0]["method"], "budget_mb": members[0].get("budget_mb"),
                             "n": len(members),
                             "seeds": ",".join(str(m.get("seed", "?")) for m in members)}
        for k in keys:
            g[f"grid:{k}"] = members[0].get(f"grid:{k}")
        extra = [k for k in members[0] if k.startswith(("batch:", "did_not_fit:"))]
        for f in (*GROUP_FIELDS, *extra):
            vals = [num(m.get(f)) for m in members]
            g[f"{f}_mean"] = mean(vals)
            g[f"{f}_std"] = std(vals)
        out.append(g)
    return out


def round_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (run, round): server metrics and the round's client means."""
    out = []
    for rec in records:
        for r in rec.rows:
            row = {"run": rec.id, "method": method_label(rec)}
            row.update({k: v for k, v in r.items() if not isinstance(v, (list, dict))})
            cl = [c for c in (r.get("clients") or []) if isinstance(c, dict)]
            row["failures"] = len(r.get("failures") or {})
            row["mean_utilization"] = mean(client_value(c, "utilization") for c in cl)
            row["mean_batch"] = mean(client_value(c, "batch") for c in cl)
            row["mean_bprop_flops_saved"] = mean(client_value(c, "flops_saved") for c in cl)
            out.append(row)
    return out


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
                    for k, v in r.items()})
    return buf.getvalue()
