"""``report.md``: the fleet, the table over seeds (mean ± std), the per-run table and the figures."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from fedprune.study.numbers import MB
from fedprune.study.runs import RunRecord
from fedprune.study.tables import fleet_levels, group_key_fields, run_budget_mb


def fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "pct":
        return f"{100 * v:.2f}"
    if kind == "int":
        return f"{int(round(v)):,}"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "mb":
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pm(g: dict[str, Any], f: str, kind: str) -> str:
    m, s = g.get(f"{f}_mean"), g.get(f"{f}_std")
    if m is None:
        return "-"
    if g.get("n", 1) > 1 and s:
        return f"{fmt(m, kind)} ± {fmt(s, kind).rstrip('x')}"
    return fmt(m, kind)


def md_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines]
    return "\n".join(out)


def fleet_markdown(rec: RunRecord) -> str:
    """Devices of a run's fleet: count, budget level (MB), budget kind, methods."""
    if rec.config is None:
        return ""
    from fedprune.fleet import client_profile

    cfg = rec.config
    per: dict[tuple, int] = defaultdict(int)
    for i in range(cfg.fleet.num_clients):
        p = client_profile(cfg, i)
        kind = p.budget_spec.kind if p.budget_spec else "none"
        per[(p.device, kind, None if p.budget_mb is None else round(p.budget_mb, 3),
             "+".join(p.methods) or "none")] += 1
    lines = [(dev, str(n), kind, fmt(mb, "mb"), m) for (dev, kind, mb, m), n in per.items()]
    return md_table(("device", "clients", "budget kind", "budget level (MB)", "methods"), lines)


def device_levels_markdown(records: Sequence[RunRecord]) -> str:
    """Device x run-budget table of budget levels (MB), when runs differ in their budgets."""
    from fedprune.fleet import client_devices

    cols: dict[float, RunRecord] = {}
    for r in records:
        b = run_budget_mb(r)
        if b is not None and r.config is not None:
            cols.setdefault(round(b, 6), r)
    if len(cols) < 2:
        return ""
    budgets = sorted(cols)
    table: dict[str, dict[float, float | None]] = defaultdict(dict)
    for b in budgets:
        rec = cols[b]
        try:
            devices = client_devices(rec.config)
        except Exception:  # noqa: BLE001
            return ""
        for dev, level in zip(devices, fleet_levels(rec)):
            table[dev].setdefault(b, level)
    header = ["device"] + [f"run budget {b:.3g} MB" for b in budgets]
    return md_table(header, [[dev] + [fmt(per.get(b), "mb") for b in budgets] for dev, per in table.items()])


def markdown_report(kind: str, src: Path, records: Sequence[RunRecord], rows: Sequence[dict[str, Any]],
                    groups: Sequence[dict[str, Any]], figures: Sequence[str]) -> str:
    """The whole ``report.md``: header, setting and fleet, warnings, results over seeds, runs, figures."""
    parts = _intro(kind, src, records) + _setting(records) + _warnings(records, rows)
    if groups:
        parts += _results_over_seeds(records, groups)
    header = ["run", "status", "method", "seed", "budget (MB)", "accuracy (%)", "final params",
              "compression", "final FLOPs", "upload (MB)", "violations", "wall (s)"]
    lines = [[r["run"], r["status"], r["method"], fmt(r.get("seed")), fmt(r.get("budget_mb"), "mb"),
              fmt(r.get("final_accuracy"), "pct"), fmt(r.get("final_params"), "int"),
              fmt(r.get("compression"), "x"), fmt(r.get("final_flops"), "int"),
              fmt(None if r.get("upload_bytes_total") is None else r["upload_bytes_total"] / MB, "mb"),
              fmt(r.get("budget_violations")), fmt(r.get("wall_seconds"), "mb")] for r in rows]
    parts += ["## Runs", "", md_table(header, lines), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(parts)


def _intro(kind: str, src: Path, records: Sequence[RunRecord]) -> list[str]:
    done = sum(1 for r in records if r.done)
    try:
        shown = os.path.relpath(src) if not os.path.relpath(src).startswith("..") else str(src)
    except ValueError:
        shown = str(src)
    return [f"# fedprune report: {src.name}", "",
            f"Source: `{shown}` ({kind}); {len(records)} run(s), {done} finished. Accuracy is the final "
            f"simplified model's test accuracy in %; memory in MB (2^20 bytes); a run's budget is the mean "
            f"budget level of its clients; ± is the standard deviation over seeds. *mean util.*: measured "
            f"peak / budget over client-rounds that trained; *did not fit*: client-rounds where not even "
            f"min-batch fitted the budget (the client skipped the round); *violations*: measured steps "
            f"whose peak exceeded the budget; *client errors*: client-rounds that failed otherwise (exceptions, "
            f"invalid replies); *rounds dropped*: rounds with too few valid replies (global model unchanged).", ""]


def _setting(records: Sequence[RunRecord]) -> list[str]:
    first = next((r for r in records if r.config is not None), None)
    parts: list[str] = []
    if first is not None:
        c = first.config
        parts += [f"Setting: {c.data.dataset}, {c.model.name}, {c.fleet.num_clients} clients "
                  f"({c.fleet.clients_per_round or c.fleet.num_clients} per round), {c.run.num_rounds} rounds, "
                  f"{c.train.local_epochs} local epoch(s), {c.data.max_samples_per_client or 'all'} samples "
                  f"per client, memory budget kind `{c.memory.budget}`.", ""]
        fm = fleet_markdown(first)
        if fm:
            title = "Fleet (first run" + (", budgets scale with the grid" if len(records) > 1 else "") + ")"
            parts += [f"## {title}", "", fm, ""]
        levels = device_levels_markdown(records)
        if levels:
            parts += ["Budget level per device (MB) at each run budget (mean over the fleet):", "",
                      levels, ""]
    return parts


def _warnings(records: Sequence[RunRecord], rows: Sequence[dict[str, Any]]) -> list[str]:
    parts: list[str] = []
    broken = [r["run"] for r in rows if r.get("client_errors") or r.get("rounds_dropped")]
    if broken:
        parts += [f"**Warning: {len(broken)} run(s) had client errors or dropped rounds** (see the columns "
                  f"*client errors* / *rounds dropped* and each run's `metrics.jsonl` `failures`): "
                  f"{', '.join(broken[:6])}{' ...' if len(broken) > 6 else ''}.", ""]
    notes = sorted({n.split(":", 1)[0] for r in records for n in r.config_notes})
    if notes:
        parts += [f"Note: these runs were made with an older config schema; read with defaults or "
                  f"coerced values for: {', '.join(notes)}.", ""]
    return parts


def _results_over_seeds(records: Sequence[RunRecord], groups: Sequence[dict[str, Any]]) -> list[str]:
    parts: list[str] = []
    keys = group_key_fields(records)
    header = ["method", "budget (MB)"] + [k for k in keys if k not in ("methods.enabled",)] + [
        "seeds", "accuracy (%)", "final params", "compression", "mean util. (%)", "mean batch",
        "bprop FLOPs saved (%)", "did not fit", "violations", "client errors", "rounds dropped"]
    lines = []
    for g in groups:
        lines.append([g["method"], fmt(g.get("budget_mb"), "mb")]
                     + [fmt(g.get(f"grid:{k}")) for k in keys if k not in ("methods.enabled",)]
                     + [str(g["n"]), _pm(g, "final_accuracy", "pct"), _pm(g, "final_params", "int"),
                        _pm(g, "compression", "x"), _pm(g, "mean_utilization", "pct"),
                        _pm(g, "mean_batch", "mb"), _pm(g, "mean_bprop_flops_saved", "pct"),
                        _pm(g, "does_not_fit", ""), _pm(g, "budget_violations", ""),
                        _pm(g, "client_errors", ""), _pm(g, "rounds_dropped", "")])
    parts += ["## Results (mean over seeds)", "", md_table(header, lines), ""]
    devs = [k.split(":", 1)[1] for k in groups[0] if k.startswith("batch:") and k.endswith("_mean")]
    devs = [d[: -len("_mean")] for d in devs]
    if devs:
        header = ["method", "budget (MB)"] + devs
        lines = [[g["method"], fmt(g.get("budget_mb"), "mb")]
                 + [f"{fmt(g.get(f'batch:{d}_mean'), 'int')} / {fmt(g.get(f'did_not_fit:{d}_mean'))}"
                    for d in devs] for g in groups]
        parts += ["### Per device: mean batch / client-rounds that did not fit (mean over seeds)", "",
                  md_table(header, lines), ""]
    return parts
