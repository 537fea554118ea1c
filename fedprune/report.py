"""``fedprune report RUN_OR_SWEEP_DIR``: tables (CSV, Markdown) and figures (PNG) of finished runs.

Works on one results folder (``config.toml`` + ``metrics.jsonl`` + ``summary.json``), on a sweep
folder (``sweep.json`` + ``runs/<id>/``), or on any folder holding run folders below it. Writes into
the folder (or ``--out``):

- ``report.csv``   one row per run: its grid values, the ``summary.json`` figures *verbatim* (same
  numbers, full precision) and per-client aggregates computed from ``metrics.jsonl``;
- ``rounds.csv``   one row per run and round (accuracy, parameters, client means);
- ``report.md``    the fleet, a table averaged over seeds (mean +- std), the per-run table, figures;
- ``accuracy_vs_budget.png``, ``accuracy_vs_params.png``, ``clients_over_rounds.png``,
  ``flops_saved_over_rounds.png``.

Units: memory in MB (2**20 bytes), accuracy as a fraction in [0, 1] in the CSV and in % in figures.
A client's *budget level* is its reference budget (constant level, trace reference, schedule max)
from ``fedprune.fleet.client_profile``; a run's budget is the mean level over its clients.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fedprune.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, atomic_write_text, read_metrics

MB = 2**20
MANIFEST_FILE = "sweep.json"

# summary.json fields copied verbatim into report.csv (those present)
SUMMARY_FIELDS = ("final_accuracy", "final_loss", "masked_accuracy", "rounds", "num_clients",
                  "dense_params", "final_params", "compression", "final_flops", "dense_flops",
                  "neurons_per_layer", "upload_bytes_total", "dense_upload_bytes_total",
                  "download_bytes_total", "budget_violations", "client_failures", "wall_seconds")
BATCH_KEYS = ("batch_final", "final_batch", "batch_size")  # the trainer reports batch_final


class ReportError(ValueError):
    """Nothing to report in the given folder (message is one line)."""


# ------------------------------------------------------------------------------ collecting


@dataclass
class RunRecord:
    """One results folder as read from disk."""

    id: str
    dir: Path
    config: Any = None  # ExperimentConfig, or None when config.toml is unreadable
    overrides: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    config_notes: list[str] = field(default_factory=list)  # keys the current schema had to adapt

    @property
    def done(self) -> bool:
        return self.summary is not None


def _is_run_dir(p: Path) -> bool:
    return (p / CONFIG_FILE).is_file() and ((p / METRICS_FILE).is_file() or (p / SUMMARY_FILE).is_file())


def load_config_lenient(path: Path) -> tuple[Any, list[str]]:
    """A run's config even when the schema moved on since the run: a key the current schema rejects
    is coerced (``1.0`` -> ``1`` for an integer key) or dropped (back to its default). Returns the
    config (``None`` if still unreadable) and one note per key changed."""
    import tomllib

    from fedprune.config import ConfigError, config_from_dict

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        return None, [f"{path.name}: {err}"]
    notes: list[str] = []
    for _ in range(50):
        try:
            return config_from_dict(data), notes
        except ConfigError as err:
            msg = str(err)
            key = msg.split(" =", 1)[0].split(":", 1)[0].strip()
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                return None, notes + [msg]
            value = node[leaf]
            if "expected an integer" in msg and isinstance(value, float) and value.is_integer():
                node[leaf] = int(value)
                notes.append(f"{key}: {value!r} read as {int(value)}")
            else:
                del node[leaf]
                notes.append(f"{key}: ignored ({msg})")
    return None, notes


def _read_run(run_dir: Path, rid: str, overrides: dict[str, Any]) -> RunRecord:
    cfg, notes = load_config_lenient(run_dir / CONFIG_FILE)
    summary = None
    if (run_dir / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        except json.JSONDecodeError:
            summary = None
    return RunRecord(rid, run_dir, cfg, dict(overrides), summary, read_metrics(run_dir), notes)


def collect_runs(path: str | Path) -> tuple[str, list[RunRecord]]:
    """``(kind, runs)`` for a run folder (``"run"``), a sweep folder (``"sweep"``) or a tree (``"tree"``)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ReportError(f"{path}: no such folder")
    if _is_run_dir(root):
        return "run", [_read_run(root, root.name, {})]
    manifest = root / MANIFEST_FILE
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        runs = []
        for entry in data.get("runs", []):
            d = root / entry.get("dir", f"runs/{entry['id']}")
            if _is_run_dir(d):
                runs.append(_read_run(d, entry["id"], entry.get("overrides", {})))
        if not runs:
            raise ReportError(f"{path}: the sweep has no started runs yet")
        return "sweep", runs
    found = sorted({p.parent for p in root.rglob(CONFIG_FILE) if _is_run_dir(p.parent)})
    if not found:
        raise ReportError(f"{path}: no run folders (config.toml + metrics.jsonl/summary.json) here")
    return "tree", [_read_run(d, str(d.relative_to(root)), {}) for d in found]


# ------------------------------------------------------------------------------ numbers


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def client_value(c: dict[str, Any], what: str) -> float | None:
    """A per-client metric: ``utilization`` (peak / budget), ``batch``, ``flops_saved``, ``budget_mb``."""
    if c.get("does_not_fit") and what != "budget_mb":  # the client did not train this round
        return None
    if what == "utilization":  # only meaningful for a client that had a budget
        budget = _num(c.get("budget_bytes"))
        if not budget:
            return None
        u = _num(c.get("utilization"))
        if u is None:
            peak = _num(c.get("measured_peak_bytes"))
            u = peak / budget if peak is not None else None
        return u
    if what == "batch":
        for k in BATCH_KEYS:
            v = c.get(k)
            if isinstance(v, list) and v:
                v = v[-1]
            if _num(v) is not None:
                return _num(v)
        sizes = c.get("batch_sizes")  # "32,32,48" (the trainer's string) or a list
        if isinstance(sizes, str) and sizes.strip():
            sizes = sizes.split(",")
        try:
            return float(sizes[-1]) if isinstance(sizes, list) and sizes else None
        except ValueError:
            return None
    if what == "flops_saved":
        return _num(c.get("bprop_flops_saved_frac"))
    if what == "budget_mb":
        b = _num(c.get("budget_bytes"))
        return None if b is None or b <= 0 else b / MB
    if what == "peak_mb":
        b = _num(c.get("measured_peak_bytes"))
        return None if b is None else b / MB
    raise KeyError(what)


def _mean(vals: Iterable[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return sum(xs) / len(xs) if xs else None


def _std(vals: Iterable[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    if len(xs) < 2:
        return 0.0 if xs else None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _clients(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(int(r.get("round", i + 1)), c) for i, r in enumerate(rows)
            for c in (r.get("clients") or []) if isinstance(c, dict)]


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
    return _mean(client_value(c, "budget_mb") for _, c in _clients(rec.rows))


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
    clients = [c for _, c in _clients(rec.rows)]
    util = [client_value(c, "utilization") for c in clients]
    row["mean_utilization"] = _mean(util)
    row["max_utilization"] = max((u for u in util if u is not None), default=None)
    row["mean_peak_mb"] = _mean(client_value(c, "peak_mb") for c in clients)
    row["mean_batch"] = _mean(client_value(c, "batch") for c in clients)
    row["mean_bprop_flops_saved"] = _mean(client_value(c, "flops_saved") for c in clients)
    row["does_not_fit"] = int(sum(1 for c in clients if c.get("does_not_fit")))
    fails = [(k, str(v)) for r in rec.rows for k, v in (r.get("failures") or {}).items()]
    row["client_errors"] = sum(1 for k, v in fails if k != "round" and "does not fit" not in v)
    row["rounds_dropped"] = sum(1 for k, _ in fails if k == "round")
    row["mean_round_seconds"] = _mean(_num(r.get("round_seconds")) for r in rec.rows)
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
    for _, c in _clients(rec.rows):
        try:
            dev = devices[int(c.get("partition_id", c.get("client")))]
        except (TypeError, ValueError, IndexError):
            continue
        batches[dev].append(client_value(c, "batch"))
        dnf[dev] += 1 if c.get("does_not_fit") else 0
    out: dict[str, Any] = {}
    for dev in batches:
        out[f"batch:{dev}"] = _mean(batches[dev])
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
            vals = [_num(m.get(f)) for m in members]
            g[f"{f}_mean"] = _mean(vals)
            g[f"{f}_std"] = _std(vals)
        out.append(g)
    return out


# ------------------------------------------------------------------------------ writing


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
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


def _fmt(v: Any, kind: str = "") -> str:
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
        return f"{_fmt(m, kind)} ± {_fmt(s, kind).rstrip('x')}"
    return _fmt(m, kind)


def _md_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
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
    lines = [(dev, str(n), kind, _fmt(mb, "mb"), m) for (dev, kind, mb, m), n in per.items()]
    return _md_table(("device", "clients", "budget kind", "budget level (MB)", "methods"), lines)


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
    return _md_table(header, [[dev] + [_fmt(per.get(b), "mb") for b in budgets] for dev, per in table.items()])


def markdown_report(kind: str, src: Path, records: Sequence[RunRecord], rows: Sequence[dict[str, Any]],
                    groups: Sequence[dict[str, Any]], figures: Sequence[str]) -> str:
    done = sum(1 for r in records if r.done)
    first = next((r for r in records if r.config is not None), None)
    import os

    try:
        shown = os.path.relpath(src) if not os.path.relpath(src).startswith("..") else str(src)
    except ValueError:
        shown = str(src)
    parts = [f"# fedprune report: {src.name}", "",
             f"Source: `{shown}` ({kind}); {len(records)} run(s), {done} finished. Accuracy is the final "
             f"simplified model's test accuracy in %; memory in MB (2^20 bytes); a run's budget is the mean "
             f"budget level of its clients; ± is the standard deviation over seeds. *mean util.*: measured "
             f"peak / budget over client-rounds that trained; *did not fit*: client-rounds where not even "
             f"min-batch fitted the budget (the client skipped the round); *violations*: measured steps "
             f"whose peak exceeded the budget; *client errors*: client-rounds that failed otherwise (exceptions, "
             f"invalid replies); *rounds dropped*: rounds with too few valid replies (global model unchanged).", ""]
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
    broken = [r["run"] for r in rows if r.get("client_errors") or r.get("rounds_dropped")]
    if broken:
        parts += [f"**Warning: {len(broken)} run(s) had client errors or dropped rounds** (see the columns "
                  f"*client errors* / *rounds dropped* and each run's `metrics.jsonl` `failures`): "
                  f"{', '.join(broken[:6])}{' ...' if len(broken) > 6 else ''}.", ""]
    notes = sorted({n.split(":", 1)[0] for r in records for n in r.config_notes})
    if notes:
        parts += [f"Note: these runs were made with an older config schema; read with defaults or "
                  f"coerced values for: {', '.join(notes)}.", ""]
    if groups:
        keys = group_key_fields(records)
        header = ["method", "budget (MB)"] + [k for k in keys if k not in ("methods.enabled",)] + [
            "seeds", "accuracy (%)", "final params", "compression", "mean util. (%)", "mean batch",
            "bprop FLOPs saved (%)", "did not fit", "violations", "client errors", "rounds dropped"]
        lines = []
        for g in groups:
            lines.append([g["method"], _fmt(g.get("budget_mb"), "mb")]
                         + [_fmt(g.get(f"grid:{k}")) for k in keys if k not in ("methods.enabled",)]
                         + [str(g["n"]), _pm(g, "final_accuracy", "pct"), _pm(g, "final_params", "int"),
                            _pm(g, "compression", "x"), _pm(g, "mean_utilization", "pct"),
                            _pm(g, "mean_batch", "mb"), _pm(g, "mean_bprop_flops_saved", "pct"),
                            _pm(g, "does_not_fit", ""), _pm(g, "budget_violations", ""),
                            _pm(g, "client_errors", ""), _pm(g, "rounds_dropped", "")])
        parts += ["## Results (mean over seeds)", "", _md_table(header, lines), ""]
        devs = [k.split(":", 1)[1] for k in groups[0] if k.startswith("batch:") and k.endswith("_mean")]
        devs = [d[: -len("_mean")] for d in devs]
        if devs:
            header = ["method", "budget (MB)"] + devs
            lines = [[g["method"], _fmt(g.get("budget_mb"), "mb")]
                     + [f"{_fmt(g.get(f'batch:{d}_mean'), 'int')} / {_fmt(g.get(f'did_not_fit:{d}_mean'))}"
                        for d in devs] for g in groups]
            parts += ["### Per device: mean batch / client-rounds that did not fit (mean over seeds)", "",
                      _md_table(header, lines), ""]
    header = ["run", "status", "method", "seed", "budget (MB)", "accuracy (%)", "final params",
              "compression", "final FLOPs", "upload (MB)", "violations", "wall (s)"]
    lines = [[r["run"], r["status"], r["method"], _fmt(r.get("seed")), _fmt(r.get("budget_mb"), "mb"),
              _fmt(r.get("final_accuracy"), "pct"), _fmt(r.get("final_params"), "int"),
              _fmt(r.get("compression"), "x"), _fmt(r.get("final_flops"), "int"),
              _fmt(None if r.get("upload_bytes_total") is None else r["upload_bytes_total"] / MB, "mb"),
              _fmt(r.get("budget_violations")), _fmt(r.get("wall_seconds"), "mb")] for r in rows]
    parts += ["## Runs", "", _md_table(header, lines), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9,
                         "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 8})
    return plt


def _int_rounds(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in getattr(axes, "flat", [axes]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _bottom_legend(fig: Any, handles: list, labels: list) -> None:
    fig.legend(handles, labels, loc="lower center", title="methods", fontsize=8, title_fontsize=8,
               ncol=min(len(labels), 5) or 1, frameon=False)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _setting_title(records: Sequence[RunRecord]) -> str:
    first = next((r for r in records if r.config is not None), None)
    if first is None:
        return ""
    c = first.config
    seeds = sorted({r.config.run.seed for r in records if r.config is not None})
    fleet = c.fleet.devices.replace(" ", "") if c.fleet.devices else f"{c.fleet.num_clients} clients"
    return (f"{c.data.dataset}, {c.model.name}, {fleet}, {c.run.num_rounds} rounds, "
            f"seeds {','.join(map(str, seeds))}")


def _series(records: Sequence[RunRecord]) -> list[str]:
    seen: list[str] = []
    for r in records:
        label = _series_label(r, records)
        if label not in seen:
            seen.append(label)
    return seen


def _series_label(rec: RunRecord, records: Sequence[RunRecord]) -> str:
    """Method, plus any grid value that is neither the seed, the method nor a budget key."""
    extra = [f"{k.split('.')[-1]}={rec.overrides[k]}" for k in group_key_fields(records)
             if k in rec.overrides and k != "methods.enabled" and not _is_budget_key(k)]
    return method_label(rec) + (f" [{', '.join(extra)}]" if extra else "")


def _is_budget_key(key: str) -> bool:
    return key in ("fleet.budget-scale", "fleet.budgets-mb", "memory.budget-mb", "memory.schedule-mb",
                   "fleet.devices")


def fig_accuracy_vs_budget(records: Sequence[RunRecord], path: Path) -> bool:
    """Final accuracy (%) vs mean client budget (MB), one line per method, mean and range over seeds."""
    pts: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        b = run_budget_mb(r)
        if r.done and b is not None and _num(r.summary.get("final_accuracy")) is not None:
            pts[_series_label(r, records)][round(b, 6)].append(100 * r.summary["final_accuracy"])
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    xs_all = []
    for label in [s for s in _series(records) if s in pts]:
        xs = sorted(pts[label])
        xs_all += xs
        ys = [sum(pts[label][x]) / len(pts[label][x]) for x in xs]
        lo = [y - min(pts[label][x]) for x, y in zip(xs, ys)]
        hi = [max(pts[label][x]) - y for x, y in zip(xs, ys)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    if xs_all and max(xs_all) / max(min(xs_all), 1e-12) > 4:
        ax.set_xscale("log")
    ticks = sorted(set(xs_all))
    if len(ticks) <= 8:  # label the budgets themselves, in plain MB
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_xlabel("memory budget per client (MB, mean over the fleet)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs. memory budget (points: mean over seeds; bars: min-max)\n"
                 + _setting_title(records))
    ax.legend(title="methods", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def fig_accuracy_vs_params(records: Sequence[RunRecord], path: Path) -> bool:
    """Final accuracy (%) vs parameters of the final simplified model, per method (and budget)."""
    done = [r for r in records if r.done and _num(r.summary.get("final_params")) is not None
            and _num(r.summary.get("final_accuracy")) is not None]
    if not done:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    budgets = sorted({round(b, 6) for b in (run_budget_mb(r) for r in done) if b is not None})
    markers = "osD^vP*Xh<>"
    series = [s for s in _series(records) if any(_series_label(r, records) == s for r in done)]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(series):
        for r in (r for r in done if _series_label(r, records) == label):
            b = run_budget_mb(r)
            m = markers[budgets.index(round(b, 6)) % len(markers)] if b is not None and budgets else "o"
            ax.scatter(r.summary["final_params"], 100 * r.summary["final_accuracy"], marker=m,
                       color=colors[i % len(colors)], s=36, alpha=0.85, edgecolors="none")
        ax.scatter([], [], color=colors[i % len(colors)], marker="o", label=label)
    for j, b in enumerate(budgets if len(budgets) > 1 else []):
        ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=f"budget {b:.3g} MB")
    dense = _num(done[0].summary.get("dense_params"))
    if dense:
        ax.axvline(dense, color="gray", ls="--", lw=1)
        ax.annotate("dense model", (dense, ax.get_ylim()[0]), rotation=90, va="bottom", ha="right",
                    fontsize=8, color="gray")
    params = [r.summary["final_params"] for r in done] + ([dense] if dense else [])
    if max(params) / max(min(params), 1) > 4:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("parameters of the final simplified model")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs. final model size (one point per run)\n" + _setting_title(records))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def _per_round(rec: RunRecord, what: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for rnd, c in _clients(rec.rows):
        v = client_value(c, what)
        if v is not None:
            out[rnd].append(100 * v if what in ("utilization", "flops_saved") else v)
    return out


def _sweep_panels(records: Sequence[RunRecord]) -> list[float | None]:
    budgets = sorted({round(b, 6) for b in (run_budget_mb(r) for r in records) if b is not None})
    return budgets or [None]


def fig_clients_over_rounds(records: Sequence[RunRecord], path: Path) -> bool:
    """Per-client memory utilization (%) and batch size over rounds."""
    have = [r for r in records if any(_per_round(r, "utilization")) or any(_per_round(r, "batch"))]
    if not have:
        return False
    plt = _plt()
    if len(have) == 1:  # one run: every client (or mean and range when there are many)
        rec = have[0]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        by_client: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        for rnd, c in _clients(rec.rows):
            by_client[str(c.get("client", c.get("partition_id", "?")))][rnd] = c
        for ax, what, ylabel in ((axes[0], "utilization", "memory utilization (% of budget)"),
                                 (axes[1], "batch", "batch size (samples)")):
            if len(by_client) <= 12:
                for cid, per in sorted(by_client.items(), key=lambda kv: kv[0]):
                    pts = sorted((r, client_value(c, what)) for r, c in per.items())
                    pts = [(r, (100 * v if what == "utilization" else v)) for r, v in pts if v is not None]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=f"client {cid}")
            else:
                per = _per_round(rec, what)
                rounds = sorted(per)
                ax.plot(rounds, [sum(per[r]) / len(per[r]) for r in rounds], marker="o", label="mean")
                ax.fill_between(rounds, [min(per[r]) for r in rounds], [max(per[r]) for r in rounds],
                                alpha=0.25, label="min-max over sampled clients")
            if what == "utilization":
                ax.axhline(100, color="red", ls="--", lw=1, label="budget")
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
        axes[0].set_title("Measured peak memory / budget, per client")
        axes[1].set_title("Batch size chosen by the batch sizer")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].legend(handles, labels, fontsize=7, ncol=2 if len(labels) > 6 else 1, loc="best")
        fig.suptitle(f"Clients over rounds: {rec.id} ({method_label(rec)})", fontsize=10)
        _int_rounds(axes)
        _save(fig, path)
        return True
    # a sweep: one column per budget level, lines per method, mean over clients and seeds
    budgets = _sweep_panels(have)
    fig, axes = plt.subplots(2, len(budgets), figsize=(3.2 * len(budgets) + 1.5, 5.6), squeeze=False,
                             sharey="row")
    for j, b in enumerate(budgets):
        for i, (what, ylabel) in enumerate((("utilization", "memory utilization (% of budget)"),
                                            ("batch", "batch size (samples)"))):
            ax = axes[i][j]
            for label in _series(have):
                acc: dict[int, list[float]] = defaultdict(list)
                for r in have:
                    rb = run_budget_mb(r)
                    if _series_label(r, have) == label and (b is None or (rb is not None and round(rb, 6) == b)):
                        for rnd, vals in _per_round(r, what).items():
                            acc[rnd] += vals
                if acc:
                    rounds = sorted(acc)
                    ax.plot(rounds, [sum(acc[x]) / len(acc[x]) for x in rounds], marker="o", ms=3,
                            lw=1.2, label=label)
            if what == "utilization":
                ax.axhline(100, color="red", ls="--", lw=1)
            if i == 0:
                ax.set_title("budget " + (f"{b:.3g} MB" if b is not None else "n/a"))
            if i == 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle("Client memory utilization (peak/budget; red: the budget) and batch size over rounds\n"
                 "mean over sampled clients and seeds; " + _setting_title(have), fontsize=9)
    _int_rounds(axes)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def _round_means(have: Sequence[RunRecord], label: str, budget: float | None,
                 per_round: Callable[[RunRecord], dict[int, list[float]]]) -> dict[int, float]:
    """Mean per round over the runs of one series (and one budget panel, when given)."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in have:
        rb = run_budget_mb(r)
        if _series_label(r, have) == label and (budget is None or (rb is not None and round(rb, 6) == budget)):
            for rnd, vals in per_round(r).items():
                acc[rnd] += vals
    return {rnd: sum(v) / len(v) for rnd, v in sorted(acc.items())}


def _accuracy_per_round(r: RunRecord) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for i, row in enumerate(r.rows):
        if _num(row.get("accuracy")) is not None:
            out[int(row.get("round", i + 1))].append(100 * row["accuracy"])
    return out


def fig_flops_saved(records: Sequence[RunRecord], path: Path) -> bool:
    """Share of backprop FLOPs saved (%) over rounds (NEq freezing + pruning), per method."""
    have = [r for r in records if any(_per_round(r, "flops_saved"))]
    if not have:
        return False
    plt = _plt()
    budgets = _sweep_panels(have) if len(have) > 1 else [None]
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.2 * len(budgets) + 1.5, 3.8), squeeze=False,
                             sharey=True)
    for j, b in enumerate(budgets):
        ax = axes[0][j]
        for label in _series(have):
            means = _round_means(have, label, b, lambda r: _per_round(r, "flops_saved"))
            if means:
                ax.plot(list(means), list(means.values()), marker="o", ms=3, lw=1.2, label=label)
        ax.set_xlabel("round")
        if j == 0:
            ax.set_ylabel("backprop FLOPs saved (% of dense)")
        ax.set_title("budget " + (f"{b:.3g} MB" if b is not None else "all runs") if len(budgets) > 1
                     else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle("Backprop FLOPs saved per client round (mean over sampled clients and seeds)\n"
                 + _setting_title(have), fontsize=9)
    _int_rounds(axes)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def fig_accuracy_over_rounds(records: Sequence[RunRecord], path: Path) -> bool:
    """Test accuracy (%) of the global model after each round, per method (mean over seeds)."""
    have = [r for r in records if any(_num(row.get("accuracy")) is not None for row in r.rows)]
    if not have:
        return False
    plt = _plt()
    budgets = _sweep_panels(have) if len(have) > 1 else [None]
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.2 * len(budgets) + 1.5, 3.8), squeeze=False,
                             sharey=True)
    for j, b in enumerate(budgets):
        ax = axes[0][j]
        for label in _series(have):
            means = _round_means(have, label, b, _accuracy_per_round)
            if means:
                ax.plot(list(means), list(means.values()), marker="o", ms=3, lw=1.2, label=label)
        ax.set_xlabel("round")
        if j == 0:
            ax.set_ylabel("test accuracy of the global model (%)")
        if len(budgets) > 1:
            ax.set_title("budget " + (f"{b:.3g} MB" if b is not None else "n/a"))
    handles, labels = axes[0][0].get_legend_handles_labels()
    _bottom_legend(fig, handles, labels)
    fig.suptitle("Global model accuracy after each round (mean over seeds)\n" + _setting_title(have),
                 fontsize=9)
    _int_rounds(axes)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


RUN_FIGURES = (("accuracy_over_rounds.png", fig_accuracy_over_rounds),
               ("clients_over_rounds.png", fig_clients_over_rounds),
               ("flops_saved_over_rounds.png", fig_flops_saved))
FIGURES = (("accuracy_vs_budget.png", fig_accuracy_vs_budget),
           ("accuracy_vs_params.png", fig_accuracy_vs_params),
           ("clients_over_rounds.png", fig_clients_over_rounds),
           ("flops_saved_over_rounds.png", fig_flops_saved),
           ("accuracy_over_rounds.png", fig_accuracy_over_rounds))


# ------------------------------------------------------------------------------ entry points


@dataclass
class Report:
    kind: str
    out_dir: Path
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    figures: list[str]


def round_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (run, round): server metrics and the round's client means."""
    out = []
    for rec in records:
        for r in rec.rows:
            row = {"run": rec.id, "method": method_label(rec)}
            row.update({k: v for k, v in r.items() if not isinstance(v, (list, dict))})
            cl = [c for c in (r.get("clients") or []) if isinstance(c, dict)]
            row["failures"] = len(r.get("failures") or {})
            row["mean_utilization"] = _mean(client_value(c, "utilization") for c in cl)
            row["mean_batch"] = _mean(client_value(c, "batch") for c in cl)
            row["mean_bprop_flops_saved"] = _mean(client_value(c, "flops_saved") for c in cl)
            out.append(row)
    return out


def make_report(path: str | Path, out: str | Path | None = None, figures: bool = True) -> Report:
    """Read the runs under ``path`` and write ``report.csv``, ``rounds.csv``, ``report.md`` and figures."""
    kind, records = collect_runs(path)
    src = Path(path).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else src
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r) for r in records]
    groups = grouped_rows(records, rows)
    made: list[str] = []
    if figures:
        for name, fn in (RUN_FIGURES if len(records) == 1 else FIGURES):
            if fn(records, out_dir / name):
                made.append(name)
    atomic_write_text(out_dir / "report.csv", _csv_text(rows))
    atomic_write_text(out_dir / "rounds.csv", _csv_text(round_rows(records)))
    if groups and kind != "run":
        atomic_write_text(out_dir / "report_grouped.csv", _csv_text(groups))
    atomic_write_text(out_dir / "report.md", markdown_report(kind, src, records, rows, groups, made))
    return Report(kind, out_dir, rows, groups, made)


def is_bench_results(path: str | Path) -> bool:
    """A folder of benchmark JSON files (``bench/results``) and no run folders."""
    root = Path(path)
    return (root.is_dir() and not _is_run_dir(root) and not (root / MANIFEST_FILE).is_file()
            and any(root.glob("*.json")) and not any(root.rglob(CONFIG_FILE)))


def bench_report(path: str | Path, out: str | Path | None) -> tuple[Path, bool]:
    """``bench/results`` -> ``RESULTS.md`` (``fedprune.bench_report``); refreshes the README's headline
    table when the folder is ``<repo>/bench/results``. Returns (page, README changed)."""
    from fedprune.bench_report import update_readme, write_results_md

    root = Path(path).resolve()
    page = Path(out) if out else root.parent / "RESULTS.md"
    if page.is_dir():
        page = page / "RESULTS.md"
    rows = write_results_md(root, page)
    readme = root.parent.parent / "README.md"
    changed = root.name == "results" and root.parent.name == "bench" and readme.is_file() \
        and update_readme(readme, rows)
    return page, bool(changed)


def cmd_report(args: argparse.Namespace) -> int:
    from fedprune.cli import UsageError

    if is_bench_results(args.path):
        page, changed = bench_report(args.path, args.out)
        print(f"fedprune report: benchmark results -> {page}" + ("; README headline table updated" if changed else ""))
        return 0
    try:
        rep = make_report(args.path, args.out, figures=not args.no_figures)
    except ReportError as err:
        raise UsageError(str(err)) from None
    done = sum(1 for r in rep.rows if r["status"] == "done")
    print(f"fedprune report: {len(rep.rows)} run(s) ({done} finished) -> {rep.out_dir}/report.md, "
          f"report.csv{', ' + ', '.join(rep.figures) if rep.figures else ''}")
    return 0


def add_report_parser(sub: Any) -> None:
    """Register ``fedprune report`` on the CLI's subparsers."""
    r = sub.add_parser("report", help="tables and figures of a run or a sweep (or bench/results)",
                       description="Write report.csv, report.md and PNG figures for a run or sweep folder; "
                                   "for a folder of benchmark JSON files (bench/results), write RESULTS.md.")
    r.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    r.add_argument("--out", help="folder for the report (default: RUN_OR_SWEEP_DIR)")
    r.add_argument("--no-figures", action="store_true", help="tables only")
    r.set_defaults(func=cmd_report)
