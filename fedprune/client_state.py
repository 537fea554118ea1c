"""A client's method state (e.g. NEq's equilibrium) kept on disk between rounds, per round.

In simulation the state travels in Flower's ``context.state``; these files (under the run folder,
``client_state/<client>/round-<r>.npz``, plain arrays, no pickle) let a *resumed* run start every client
from exactly the state it had, so a killed-and-resumed run ends like an uninterrupted one. A client
loads the newest file of a round before the current one; the two newest files are kept.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from fedprune.results import atomic_write_bytes

_ROUND = re.compile(r"round-(\d+)\.npz$")
SEP = "::"


def _folder(run_dir: str | Path, client: int) -> Path:
    return Path(run_dir) / "client_state" / f"client-{client}"


def save_client_state(run_dir: str | Path, client: int, server_round: int, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts of arrays/scalars) after ``server_round``; keep the two newest."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):  # nested {"neq": {...}} -> "neq::..."
            flat.update({f"{key}{SEP}{k}": np.asarray(v) for k, v in value.items()})
        else:  # flat keys ("neq/evals") are stored as they are
            flat[key] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **flat)
    folder = _folder(run_dir, client)
    atomic_write_bytes(folder / f"round-{server_round}.npz", buf.getvalue())
    files = sorted(folder.glob("round-*.npz"), key=lambda p: int(_ROUND.search(p.name).group(1)))
    for old in files[:-2]:
        old.unlink(missing_ok=True)


def load_client_state(run_dir: str | Path, client: int, before_round: int) -> dict[str, Any] | None:
    """The newest saved state of a round < ``before_round``; ``None`` if there is none."""
    folder = _folder(run_dir, client)
    best = None
    for p in folder.glob("round-*.npz"):
        r = int(_ROUND.search(p.name).group(1))
        if r < before_round and (best is None or r > best[0]):
            best = (r, p)
    if best is None:
        return None
    out: dict[str, Any] = {}
    with np.load(best[1], allow_pickle=False) as z:
        for key in z.files:
            value = z[key]
            value = value.item() if value.ndim == 0 else value
            if SEP in key:
                method, _, inner = key.partition(SEP)
                out.setdefault(method, {})[inner] = value
            else:
                out[key] = value
    return out
