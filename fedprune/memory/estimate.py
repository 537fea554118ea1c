"""Predict the training-step peak from the model's structure, without running real compute.

Method (see docs/memory.md): a hook-free copy of the model lives on the ``meta``
device (shapes only, no data). One optimizer step on zero gradients creates the
optimizer state, then the training step is executed symbolically at two batch
sizes under the same ``StorageTracker`` used for measurement. For a fixed
structure every storage size is affine in the batch size, so after aligning the
two event sequences each event ``i`` has live bytes ``a_i + b_i * B`` and

    peak(B) = max_i (a_i + b_i * B)        (exact, for every B)

(A custom ``step_fn`` gets a third probe that verifies the lines; if the runs do
not align or the check fails, every batch size is simulated on demand instead.)

The dominated events are dropped, the rest is cached per structure (parameter
and buffer shapes, module types, trainable set, input shape, optimizer, device),
so re-estimating or sizing a batch after a pruning event costs two symbolic
steps once and microseconds afterwards.

Invariants: ``MemoryEstimate.total_bytes == sum(breakdown.values())``; ``peak(B)``
is non-decreasing in ``B``; the caller's model is never modified.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fedprune.memory.optim import OptimizerSpec
from fedprune.memory.step import StepFn, Trainable, clean_copy, make_batch, train_step, trainable_params, \
    trainable_predicate
from fedprune.memory.tracker import CATEGORIES, StorageTracker, _op_name, iter_module_tensors, \
    iter_optimizer_tensors

_PROBE_BATCHES = (2, 4)  # batch sizes of the two symbolic runs (B=1 can trip BatchNorm checks)
_VERIFY_BATCH = 7  # third probe, only for custom step functions
_CACHE_SIZE = 128
FAST_META = True  # use fastmeta shortcuts in the symbolic step (False: PyTorch's own meta kernels)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak of one training step; ``total_bytes == sum(breakdown.values())``."""

    batch_size: int
    total_bytes: int
    breakdown: dict[str, int]
    peak_phase: str  # "forward" | "backward" | "step" | "setup"
    peak_op: str  # aten op right after which the peak occurs
    per_sample_bytes: int  # slope of the peak line: extra bytes per extra sample near this batch
    device: str = "cpu"
    method: str = "affine"  # "affine" (two-point exact model) | "direct" (simulated at this batch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"batch_size": self.batch_size, "total_bytes": self.total_bytes,
                "breakdown": dict(self.breakdown), "peak_phase": self.peak_phase, "peak_op": self.peak_op,
                "per_sample_bytes": self.per_sample_bytes, "device": self.device, "method": self.method}


@dataclass
class _Trace:
    rows: np.ndarray  # (events, categories) live bytes after each allocation event
    ops: list[str]
    phases: list[str]


@dataclass(eq=False)
class TrainingMemoryModel:
    """Peak memory of one model structure as a function of the batch size.

    ``intercepts[i] + slopes[i] * B`` are the per-category live bytes of candidate event ``i``;
    ``peak_bytes(B)`` is the maximum row sum. In ``direct`` mode (the two symbolic runs did not
    align, e.g. a custom ``step_fn`` with batch-dependent control flow) every batch size is
    simulated on demand and cached.
    """

    intercepts: np.ndarray  # (k, C) int64
    slopes: np.ndarray  # (k, C) int64
    ops: list[str]
    phases: list[str]
    device: str = "cpu"
    method: str = "affine"
    _direct: Callable[[int], _Trace] | None = field(default=None, repr=False)
    _direct_cache: dict[int, tuple[int, np.ndarray, str, str]] = field(default_factory=dict, repr=False)

    def _direct_eval(self, batch_size: int) -> tuple[int, np.ndarray, str, str]:
        hit = self._direct_cache.get(batch_size)
        if hit is None:
            tr = self._direct(batch_size)
            tot = tr.rows.sum(axis=1)
            i = int(tot.argmax())
            hit = (int(tot[i]), tr.rows[i].copy(), tr.phases[i], tr.ops[i])
            self._direct_cache[batch_size] = hit
        return hit

    def peak_bytes(self, batch_size: int) -> int:
        """Predicted peak live bytes of one step at ``batch_size`` (non-decreasing in it)."""
        if self._direct is not None:
            return self._direct_eval(int(batch_size))[0]
        tot_a = self.intercepts.sum(axis=1)
        tot_b = self.slopes.sum(axis=1)
        return int((tot_a + tot_b * int(batch_size)).max())

    def estimate(self, batch_size: int) -> MemoryEstimate:
        """Full ``MemoryEstimate`` (with breakdown at the peak event) for ``batch_size``."""
        b = int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected >= 1")
        if self._direct is not None:
            total, row, phase, op = self._direct_eval(b)
            return MemoryEstimate(b, total, dict(zip(CATEGORIES, map(int, row))), phase, op,
                                  0, self.device, "direct")
        rows = self.intercepts + self.slopes * b
        tot = rows.sum(axis=1)
        i = int(tot.argmax())
        return MemoryEstimate(b, int(tot[i]), dict(zip(CATEGORIES, map(int, rows[i]))), self.phases[i],
                              self.ops[i], int(self.slopes[i].sum()), self.device, "affine")

    def max_batch(self, limit_bytes: int, min_batch: int = 1, max_batch: int = 1024) -> int:
        """Largest ``B`` in ``[min_batch, max_batch]`` with ``peak_bytes(B) <= limit_bytes``; 0 if none.

        Closed form in affine mode (monotone in ``limit_bytes`` by construction), binary search
        over the monotone ``peak_bytes`` in direct mode.
        """
        lo, hi, limit = int(min_batch), int(max_batch), int(limit_bytes)
        if lo < 1 or hi < lo:
            raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch!r}, {max_batch!r}")
        if self._direct is None:
            a = self.intercepts.sum(axis=1)
            s = self.slopes.sum(axis=1)
            if (a[s == 0] > limit).any():
                return 0
            pos = s > 0
            room = limit - a[pos]
            if (room < 0).any():
                return 0
            best = int((room // s[pos]).min()) if pos.any() else hi
            best = min(best, hi)
            return best if best >= lo else 0
        if self.peak_bytes(lo) > limit:
            return 0
        while lo < hi:  # invariant: peak(lo) fits
            mid = (lo + hi + 1) // 2
            if self.peak_bytes(mid) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return lo


# ------------------------------------------------------------------------------------------------
# symbolic execution on meta


@torch.inference_mode(False)  # callers may be in no_grad / inference mode
@torch.enable_grad()
def _simulate(meta_model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
              input_shape: tuple[int, ...], input_dtype: torch.dtype, step_fn: StepFn,
              granularity: int, devices: tuple[str, ...]) -> _Trace:
    optimizer.zero_grad(set_to_none=True)  # every run starts like the steady state: no grads yet
    x, y = make_batch(batch_size, input_shape, "meta", input_dtype)
    tracker = StorageTracker(devices, record=True, granularity=granularity, fast_meta=FAST_META)
    for cat, t in list(iter_module_tensors(meta_model)) + list(iter_optimizer_tensors(optimizer)):
        tracker.register(t, cat)
    tracker.register(x, "input_batch")
    tracker.register(y, "input_batch")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # frees must follow refcounts only, identically at every batch size
    try:
        with tracker:
            step_fn(meta_model, optimizer, x, y)
        rows, ops = tracker.timeline(tracker.final_tags_for(meta_model, optimizer))
        phases = _phases_of(tracker)
    finally:
        tracker.close()
        if gc_was_enabled:
            gc.enable()
    return _Trace(np.asarray(rows, dtype=np.int64).reshape(-1, len(CATEGORIES)),
                  [_op_name(o) for o in ops], phases)


def _phases_of(tracker: StorageTracker) -> list[str]:
    """Phase (setup/forward/backward/step) of each allocation event, in event order."""
    return [tracker.phase_of.get(entry[1], "setup") for entry in tracker.log if entry[0] in ("a", "r")]


def _pareto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices of lines ``a + b*B`` that can be the maximum for some ``B >= 1``.

    A line is dropped when another has both a value at B=1 and a slope at least as large.
    """
    v1 = a + b
    order = np.lexsort((-b, -v1))  # by value at B=1 desc, then slope desc
    keep, best_slope = [], None
    for i in order:
        if best_slope is None or b[i] > best_slope:
            keep.append(int(i))
            best_slope = b[i]
    return np.asarray(sorted(keep), dtype=np.int64)


def _fit_affine(t1: _Trace, t2: _Trace, b1: int, b2: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-event, per-category (intercept, slope) from two aligned traces; None if not affine."""
    if t1.rows.shape != t2.rows.shape or t1.ops != t2.ops or t1.phases != t2.phases:
        return None
    diff = t2.rows - t1.rows
    if (diff < 0).any() or (diff % (b2 - b1)).any():
        return None
    slopes = diff // (b2 - b1)
    intercepts = t1.rows - slopes * b1
    return intercepts, slopes


@torch.inference_mode(False)
@torch.enable_grad()
def _build_model(model: nn.Module, input_shape: tuple[int, ...], spec: OptimizerSpec, trainable: Trainable,
                 device: str, step_fn: StepFn, input_dtype: torch.dtype) -> TrainingMemoryModel:
    cuda = torch.device(device).type == "cuda"
    granularity = 512 if cuda else 1
    # also count "cpu" when targeting CPU: non-capturable Adam keeps its step counters as CPU
    # scalars even for meta params (on CUDA they are not device memory)
    devices = ("meta",) if cuda else ("meta", "cpu")
    foreach = spec.foreach if spec.foreach is not None else (True if cuda else False)
    meta = clean_copy(model, "meta", trainable)
    params = list(trainable_params(meta))
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; nothing to train")
    opt = spec.build(params, lr=1e-3, foreach=foreach)
    with torch.no_grad():  # steady state: the optimizer state exists before the measured step
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    opt.zero_grad(set_to_none=True)

    def run(b: int) -> _Trace:
        return _simulate(meta, opt, b, input_shape, input_dtype, step_fn, granularity, devices)

    try:
        b1, b2 = _PROBE_BATCHES
        t1, t2 = run(b1), run(b2)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"could not simulate a training step of {type(model).__name__} on the meta "
                           f"device ({type(exc).__name__}: {exc}); is the model free of data-dependent "
                           f"ops (.item(), .cpu()) in forward?") from exc
    fit = _fit_affine(t1, t2, b1, b2)
    if fit is not None and step_fn is not train_step:
        # a custom step could allocate non-affinely in B (e.g. a B x B similarity matrix), which
        # two probes cannot reveal: check the fitted lines against a third probe
        t3 = run(_VERIFY_BATCH)
        if t3.rows.shape != fit[0].shape or t3.ops != t1.ops or \
                not np.array_equal(fit[0] + fit[1] * _VERIFY_BATCH, t3.rows):
            fit = None
    dev = torch.device(device).type
    if fit is None:
        empty = np.zeros((0, len(CATEGORIES)), dtype=np.int64)
        return TrainingMemoryModel(empty, empty, [], [], dev, "direct", _direct=run)
    intercepts, slopes = fit
    keep = _pareto(intercepts.sum(axis=1), slopes.sum(axis=1))
    return TrainingMemoryModel(intercepts[keep], slopes[keep], [t1.ops[i] for i in keep],
                               [t1.phases[i] for i in keep], dev, "affine")


# ------------------------------------------------------------------------------------------------
# cache


_cache: "OrderedDict[tuple, TrainingMemoryModel]" = OrderedDict()
_cache_lock = threading.Lock()


def structure_key(model: nn.Module, input_shape: tuple[int, ...], spec: OptimizerSpec, trainable: Trainable,
                  device: str, step_fn: StepFn, input_dtype: torch.dtype) -> tuple:
    """Cache key: everything the simulated step's memory depends on (not the weight values)."""
    pred = trainable_predicate(trainable)
    params = tuple((n, tuple(p.shape), p.dtype, bool(pred(n, p))) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    modules = tuple(type(m).__qualname__ for m in model.modules())
    return (type(model).__qualname__, modules, params, buffers, tuple(int(s) for s in input_shape), spec,
            torch.device(device).type, step_fn, input_dtype)


def clear_cache() -> None:
    """Forget all cached structure models."""
    with _cache_lock:
        _cache.clear()


def memory_model(model: nn.Module, input_shape: tuple[int, ...], optimizer: OptimizerSpec | str | None = None,
                 trainable: Trainable = None, *, device: str = "cpu", step_fn: StepFn | None = None,
                 input_dtype: torch.dtype = torch.float32, cache: bool = True) -> TrainingMemoryModel:
    """The (cached) ``TrainingMemoryModel`` of ``model``'s current structure.

    Two symbolic steps on ``meta`` the first time a structure is seen, a dict lookup afterwards.
    """
    spec = OptimizerSpec.coerce(optimizer)
    step_fn = step_fn or train_step
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape={input_shape!r}; expected per-sample dims like (C, H, W)")
    key = structure_key(model, input_shape, spec, trainable, device, step_fn, input_dtype) if cache else None
    try:
        hash(key)
    except TypeError:  # e.g. an unhashable step_fn: still correct, just not cached
        key = None
    if key is not None:
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
    mm = _build_model(model, input_shape, spec, trainable, device, step_fn, input_dtype)
    if key is not None:
        with _cache_lock:
            _cache[key] = mm
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return mm


def estimate_training_memory(model: nn.Module, batch_size: int, input_shape: tuple[int, ...],
                             optimizer: OptimizerSpec | str | None = None, trainable: Trainable = None, *,
                             device: str = "cpu", step_fn: StepFn | None = None,
                             input_dtype: torch.dtype = torch.float32) -> MemoryEstimate:
    """Predicted peak live tensor bytes of one steady-state training step, with a breakdown.

    Counts parameters, buffers, gradients, optimizer state (as after the first step), the input
    batch (float32 images + int64 labels), activations saved for backward and transients, exactly
    as ``measure_training_memory`` counts them on CPU. ``trainable`` (names or predicate) excludes
    frozen parameters' gradients and state. ``device="cuda"`` rounds storages to 512 bytes and
    assumes the foreach optimizer kernels. No real compute; the model is not modified.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected >= 1")
    mm = memory_model(model, input_shape, optimizer, trainable, device=device, step_fn=step_fn,
                      input_dtype=input_dtype)
    return mm.estimate(int(batch_size))
