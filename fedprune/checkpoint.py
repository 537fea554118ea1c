"""Per-round server checkpoints: global dense tensors, global mask and the round, saved atomically.

The checkpoint is a ``.npz`` of plain arrays (no pickle), so loading it can run no code; a corrupted
or truncated file raises ``CheckpointError`` naming the file, and the previous good checkpoint is
never overwritten by a partial write (write to a temporary file, then rename).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from fedprune.results import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read."""


@dataclass
class Checkpoint:
    round: int
    dense: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]


def save_checkpoint(run_dir: str | Path, rnd: int, dense: Mapping[str, np.ndarray],
                    mask: Mapping[str, np.ndarray]) -> Path:
    """Atomically write the state after round ``rnd``; returns the file's path."""
    arrays = {"meta/round": np.asarray(rnd, dtype=np.int64)}
    arrays.update({f"dense/{k}": np.asarray(v) for k, v in dense.items()})
    arrays.update({f"mask/{k}": np.asarray(v, dtype=bool) for k, v in mask.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(run_dir) / CHECKPOINT_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The last checkpoint in ``run_dir``, ``None`` if there is none; ``CheckpointError`` if corrupt."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({err})") from None
    if "meta/round" not in files:
        raise CheckpointError(f"{path}: not a fedprune checkpoint (no round recorded)")
    dense = {k[len("dense/"):]: v for k, v in files.items() if k.startswith("dense/")}
    mask = {k[len("mask/"):]: v for k, v in files.items() if k.startswith("mask/")}
    return Checkpoint(int(files["meta/round"]), dense, mask)
