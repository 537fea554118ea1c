"""Shared helpers of the benchmark scripts: machine facts and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Cores, CPU, Python and torch versions: stated in every benchmark's JSON."""
    return {"cores": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` (plus machine info) to ``bench/results/<name>.json`` (or ``out``)."""
    from fedprune.results import write_json

    path = Path(out) if out else RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine_info(), **payload})
    print(f"wrote {path}")
    return path
