"""Fault injection: make a client misbehave the way real fleets do, reproducibly.

Driven by ``[faults]`` in the config: each sampled client fails in a round with probability ``rate``,
with a kind drawn from ``kinds``. The draw depends only on (faults.seed, run seed, client, round), so a
rerun or a resumed run sees the same faults. Kinds:

- ``raise``: the client raises an exception (Flower returns an error reply);
- ``oom``: the client runs out of memory (``MemoryError`` that even the batch-halving guard cannot fix);
- ``nan``: the reply's tensors contain NaN/Inf;
- ``bad-mask``: the reply's mask has the wrong length for one group;
- ``mismatch``: the reply's tensors do not match its own mask (one tensor loses a row);
- ``timeout``: the client answers only after the round's timeout (the server stops waiting).
The server must count each as a failure and aggregate the rest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedprune.config import ExperimentConfig
from fedprune.round_timeout import RoundTimeout


class InjectedFault(RuntimeError):
    """Raised by a client told to fail with kind ``raise``."""


def draw_fault(cfg: ExperimentConfig, partition_id: int, server_round: int) -> str | None:
    """The fault this client suffers this round, or ``None`` (deterministic)."""
    f = cfg.faults
    if f.rate <= 0 or not f.kind_list:
        return None
    rng = np.random.default_rng([f.seed, cfg.run.seed, partition_id, server_round])
    if rng.random() >= f.rate:
        return None
    return f.kind_list[int(rng.integers(len(f.kind_list)))]


def fail_before_training(kind: str | None, cfg: ExperimentConfig) -> None:
    """Faults that strike before any work: raise, run out of memory, or stall past the timeout."""
    if kind == "raise":
        raise InjectedFault("injected fault: client crashed")
    if kind == "oom":
        raise MemoryError("injected fault: out of memory even at the minimum batch")
    if kind == "timeout":
        time.sleep(RoundTimeout(cfg.simulation.round_timeout).longest() + 5.0)


def corrupt_reply(kind: str | None, arrays: dict[str, np.ndarray],
                  mask: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Faults that corrupt what is sent back: NaN tensors, a wrong-shape mask, mismatched tensors."""
    arrays, mask = dict(arrays), dict(mask)
    float_keys = [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and v.size]
    if kind == "nan" and float_keys:
        bad = arrays[float_keys[0]].copy()
        bad.flat[0] = np.nan
        arrays[float_keys[0]] = bad
    elif kind == "bad-mask" and mask:
        name = next(iter(mask))
        mask[name] = np.concatenate([mask[name], [True]])
    elif kind == "mismatch" and float_keys:
        key = next(k for k in float_keys if arrays[k].ndim >= 1)
        arrays[key] = arrays[key][:-1] if arrays[key].shape[0] > 1 else np.concatenate([arrays[key]] * 2)
    return arrays, mask


def describe(kind: str | None) -> dict[str, Any]:
    """Metrics entry recording an injected fault (empty when none)."""
    return {"injected_fault": kind} if kind else {}
