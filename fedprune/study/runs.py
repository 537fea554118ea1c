"""Reading finished (or unfinished) runs from disk: one :class:`RunRecord` per results folder.

A results folder holds ``config.toml`` + ``metrics.jsonl`` (+ ``summary.json`` once finished); a sweep
folder holds ``sweep.json`` and ``runs/<id>/``; a folder whose subfolders are sweep folders is read as
one sweep (their runs, ids prefixed by the subfolder); any other folder is searched for run folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprune.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics

MANIFEST_FILE = "sweep.json"



class ReportError(ValueError):
    """Nothing to report in the given folder (message is one line)."""



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


def _sweep_runs(root: Path, prefix: str) -> list[RunRecord]:
    """The started runs of the sweep folder ``root`` with their grid values; ids get ``prefix``."""
    data = json.loads((root / MANIFEST_FILE).read_text())
    runs = []
    for entry in data.get("runs", []):
        d = root / entry.get("dir", f"runs/{entry['id']}")
        if _is_run_dir(d):
            runs.append(_read_run(d, prefix + entry["id"], entry.get("overrides", {})))
    return runs


def collect_runs(path: str | Path) -> tuple[str, list[RunRecord]]:
    """``(kind, runs)`` for a run folder (``"run"``), a sweep folder or a folder of sweep folders
    (``"sweep"``: runs keep their grid values), or any other tree (``"tree"``)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ReportError(f"{path}: no such folder")
    if _is_run_dir(root):
        return "run", [_read_run(root, root.name, {})]
    if (root / MANIFEST_FILE).is_file():
        runs = _sweep_runs(root, "")
        if not runs:
            raise ReportError(f"{path}: the sweep has no started runs yet")
        return "sweep", runs
    sweeps = sorted(p.parent for p in root.glob(f"*/{MANIFEST_FILE}"))
    if sweeps:  # a folder of sweeps (e.g. one per partitioner): their runs keep their grid values
        runs = [r for d in sweeps for r in _sweep_runs(d, f"{d.name}/")]
        if not runs:
            raise ReportError(f"{path}: the sweeps have no started runs yet")
        return "sweep", runs
    found = sorted({p.parent for p in root.rglob(CONFIG_FILE) if _is_run_dir(p.parent)})
    if not found:
        raise ReportError(f"{path}: no run folders (config.toml + metrics.jsonl/summary.json) here")
    return "tree", [_read_run(d, str(d.relative_to(root)), {}) for d in found]

