"""The results folder: what a run writes, written so that nothing already saved is ever lost.

Layout (every file is written atomically: a temporary file, then a rename):
- ``config.toml``   the resolved config (every key, defaults included)
- ``metrics.jsonl`` one JSON object per completed round (appended, one line per round)
- ``summary.json``  the run's headline figures, written at the end
- ``final_model.json`` + ``.safetensors`` / ``final_model.onnx``  the simplified compact model
  (architecture + checksummed tensors, see :mod:`fedprune.model_file`; ONNX)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of ``atomic_write_bytes`` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically; NaN/Inf become ``null``."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rounds recorded in ``metrics.jsonl`` (a torn last line, from a kill, is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_metrics(run_dir: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` with exactly ``rows`` (atomic; used after every round)."""
    text = "".join(json.dumps(_json_safe(r), sort_keys=True) + "\n" for r in rows)
    atomic_write_text(Path(run_dir) / METRICS_FILE, text)
