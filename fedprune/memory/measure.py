"""Measure the peak of one real training step (the ground truth the estimate is checked against).

CPU: ``PeakMemoryTracker`` counts live untyped storages (parameters, buffers, gradients,
optimizer state, the input batch, and everything allocated by the step). CUDA:
``torch.cuda.max_memory_allocated`` relative to the allocation level before the copy.
Optionally (``allocator=True``, CPU) a second profiled step reports the allocator-level
peak, which also sees kernel-internal scratch buffers that never become op outputs.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch
from torch import nn

from fedprune.memory.optim import OptimizerSpec
from fedprune.memory.step import StepFn, Trainable, clean_copy, make_batch, train_step, trainable_params
from fedprune.memory.tracker import PeakMemoryTracker


@dataclass(frozen=True)
class MemoryMeasurement:
    """Measured peak of one steady-state step: ``peak_bytes`` (live tensor bytes) and process RSS."""

    batch_size: int
    peak_bytes: int
    rss_bytes: int
    device: str
    breakdown: dict[str, int] | None
    step_seconds: float
    allocator_peak_bytes: int | None = None

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {"batch_size": self.batch_size, "peak_bytes": self.peak_bytes, "rss_bytes": self.rss_bytes,
                "device": self.device, "breakdown": self.breakdown, "step_seconds": self.step_seconds,
                "allocator_peak_bytes": self.allocator_peak_bytes}


def _allocator_peak(step, baseline_bytes: int) -> int:
    """Baseline + peak cumulative CPU-allocator delta of ``step()`` (torch profiler memory events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.typed[0] == _EventType.Allocation and e.typed[1].device.type == "cpu":
            events.append((e.start_time_ns, e.typed[1].alloc_size))
        stack.extend(e.children)
    cur = peak = 0
    for _, size in sorted(events, key=lambda ev: (ev[0], -ev[1])):
        cur += size
        peak = max(peak, cur)
    return baseline_bytes + peak


def measure_training_memory(model: nn.Module, batch_size: int, input_shape: tuple[int, ...],
                            optimizer: OptimizerSpec | str | None = None, device: str = "cpu", *,
                            trainable: Trainable = None, step_fn: StepFn | None = None,
                            input_dtype: torch.dtype = torch.float32, allocator: bool = False,
                            ) -> MemoryMeasurement:
    """Run one real steady-state training step on a copy of ``model`` and return its peak.

    A hook-free deep copy is trained (the caller's model, optimizer and global RNG stream are
    untouched): one warm-up step at batch ``min(2, batch_size)`` creates the optimizer state,
    then the step at ``batch_size`` is measured with everything live counted. Exact for the
    live-storage definition on CPU; allocator-based on CUDA.
    """
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected >= 1")
    spec = OptimizerSpec.coerce(optimizer)
    step_fn = step_fn or train_step
    dev = torch.device(device)
    shape = tuple(int(s) for s in input_shape)
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.inference_mode(False), torch.enable_grad():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        work = clean_copy(model, dev, trainable)
        opt = spec.build(trainable_params(work), lr=1e-3)
        xw, yw = make_batch(min(2, b), shape, dev, input_dtype)
        step_fn(work, opt, xw, yw)
        opt.zero_grad(set_to_none=True)
        del xw, yw
        x, y = make_batch(b, shape, dev, input_dtype)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with PeakMemoryTracker(dev, model=work, optimizer=opt, tensors=(x, y),
                                   record=dev.type != "cuda") as tracker:
                t0 = time.perf_counter()
                step_fn(work, opt, x, y)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds = time.perf_counter() - t0
            alloc_peak = None
            if allocator and dev.type == "cpu":
                opt.zero_grad(set_to_none=True)
                alloc_peak = _allocator_peak(lambda: step_fn(work, opt, x, y), tracker.baseline_bytes)
        finally:
            if gc_was_enabled:
                gc.enable()
    return MemoryMeasurement(b, int(tracker.peak_bytes), int(tracker.rss_bytes), dev.type,
                             tracker.breakdown, seconds, alloc_peak)
