"""Out-of-memory guard: a real OOM during a step halves the batch and retries.

``run_with_oom_guard(step_fn, batch_size, min_batch)`` calls ``step_fn(batch)``;
on an out-of-memory error (``MemoryError``, ``torch.OutOfMemoryError`` incl. CUDA,
or a ``RuntimeError`` whose message says so) it frees what it can, records an
``OOMEvent`` and retries with half the batch, never below ``min_batch``. If the
minimum batch fails too it returns ``(None, 0, events)`` -- the "does not fit"
signal -- instead of raising. Any other exception propagates unchanged.
``step_fn`` must be safe to re-run (e.g. start with ``zero_grad``).
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

_OOM_MESSAGES = ("out of memory", "not enough memory", "cannot allocate memory", "failed to allocate")


def is_oom_error(exc: BaseException) -> bool:
    """True for ``MemoryError``, ``torch.OutOfMemoryError`` and allocator "out of memory" errors."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return any(m in msg for m in _OOM_MESSAGES)
    return False


@dataclass(frozen=True)
class OOMEvent:
    """One out-of-memory failure: the batch that failed and what was tried next (0 = gave up)."""

    batch_size: int
    next_batch_size: int
    error: str
    message: str
    time: float

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_guard(step_fn: Callable[[int], Any], batch_size: int, min_batch: int = 1, *,
                       release: Callable[[], None] | None = _release_memory
                       ) -> tuple[Any, int, list[OOMEvent]]:
    """Run ``step_fn(batch)``, halving ``batch`` on OOM; returns ``(result, batch_used, events)``.

    ``batch_used`` is the batch that succeeded, or 0 (with ``result=None``) when even
    ``min_batch`` ran out of memory. ``events`` lists every OOM, oldest first. ``release`` runs
    after each OOM (default: full GC + CUDA cache flush; pass ``None`` to skip).
    """
    b, lo = int(batch_size), int(min_batch)
    if lo < 1 or b < lo:
        raise ValueError(f"need 1 <= min_batch <= batch_size, got min_batch={min_batch!r}, batch_size={batch_size!r}")
    events: list[OOMEvent] = []
    while True:
        try:
            return step_fn(b), b, events
        except BaseException as exc:  # noqa: BLE001 - filtered right below
            if not is_oom_error(exc):
                raise
            nxt = max(lo, b // 2) if b > lo else 0
            events.append(OOMEvent(b, nxt, type(exc).__name__, str(exc)[:300], time.time()))
            del exc  # drop the traceback (and the frames' tensors) before retrying
        if release is not None:
            release()
        if nxt == 0:
            return None, 0, events
        b = nxt
