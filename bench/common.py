"""Shared helpers of the benchmark scripts: machine facts and JSON output."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any


RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Where a run happened: platform, CPU model and count, RAM, Python, torch version and threads,
    load and UTC date. Every benchmark JSON states this."""
    import psutil
    import torch

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(), "cpu_model": cpu,
        "cores": os.cpu_count(), "cpu_count": os.cpu_count(), "ram_bytes": int(psutil.virtual_memory().total),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` (plus machine info) to ``bench/results/<name>.json`` (or ``out``)."""
    from fedprune.results import write_json

    path = Path(out) if out else RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine_info(), **payload})
    print(f"wrote {path}")
    return path
