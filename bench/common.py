"""Shared helpers of the benchmark scripts: machine facts and JSON output."""

from __future__ import annotations

from pathlib import Path
from typing import Any


RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Cores, CPU, RAM, Python and torch versions, load and date: stated in every benchmark's JSON."""
    from fedprune.training import machine_info as info

    return info()


def write_result(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` (plus machine info) to ``bench/results/<name>.json`` (or ``out``)."""
    from fedprune.results import write_json

    path = Path(out) if out else RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine_info(), **payload})
    print(f"wrote {path}")
    return path
