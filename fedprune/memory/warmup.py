"""The per-process warm-up of the resident-memory model: a handful of plain training steps.

What it measures, once per process and key (model class, methods, input shape), on a throw-away
copy of the model with its own optimizer:

1. One step at each of ``FILL_SHAPES`` batch sizes between the smallest and the largest warm-up
   batch, not measured: the one-time costs of training (code pages, the allocator's arenas, thread
   pools, and oneDNN's kernel caches filled to their cap, see ``process.configure_kernel_caches``)
   become resident and are part of every later round's baseline, so the training budget need not
   hold them. A later shape replaces a cached kernel rather than adding one. The memory estimates
   that choose ``b1`` make the estimator's own one-time costs resident too.
2. ``WARM_STEPS`` steps at batch ``b0`` and at a larger ``b1`` (at least ``SLOPE_BATCH_FACTOR * b0``
   and large enough that the predicted tensor peaks differ by ``SLOPE_SPAN_BYTES``) inside an RSS
   window each (``PeakWindow``), with the last step of each under ``PeakMemoryTracker``: the RSS
   growth ``g`` and the new tensor bytes at the peak ``t`` of a warm step at two sizes.

Both leave out what is resident when the window opens (model, gradients, optimizer state, data).
``fixed_bytes = g0 - t0`` (what a warm step costs beyond its new tensors) and ``slope = (g1 - g0) /
(t1 - t0)`` (resident bytes per extra tensor byte, >= 1) go into ``RESIDENT``, and the model's layer
shapes get that slope in ``RESIDENT.slopes``. The caller's model, its optimizer state and the global RNG are
untouched.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedprune.memory.estimate import estimate_training_memory
from fedprune.memory.optim import OptimizerSpec
from fedprune.memory.process import PeakWindow
from fedprune.memory.resident import RESIDENT, structure_key
from fedprune.memory.step import clean_copy
from fedprune.memory.tracker import PeakMemoryTracker

#: smallest warm-up batch: below it the RSS growth is page and heap granularity, not the step
WARM_UP_MIN_BATCH = 8
#: the slope batch is this many times the first measured batch
SLOPE_BATCH_FACTOR = 4
#: tensor bytes the two measured batches should differ by: below a few MB the RSS difference is
#: page and heap granularity, not a slope
SLOPE_SPAN_BYTES = 8 << 20
#: largest warm-up batch
WARM_UP_MAX_BATCH = 1024
#: steps per measured warm-up phase (the first of a phase can differ: new shapes, optimizer state)
WARM_STEPS = 2
#: distinct batch sizes of the unmeasured phase (each shape compiles and caches its own kernels)
FILL_SHAPES = 6

Step = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], object]


def _measure(model: nn.Module, opt: torch.optim.Optimizer, step: Step, x: torch.Tensor,
             y: torch.Tensor) -> tuple[int, int]:
    """``WARM_STEPS`` steps on ``(x, y)``: (RSS growth over the window's start, the new tensor bytes
    of the last step at its peak). Both leave out what is resident at the start (model, gradients,
    optimizer state, data)."""
    window = PeakWindow().start()
    try:
        for _ in range(WARM_STEPS - 1):
            step(model, opt, x, y)
        tracker = PeakMemoryTracker("cpu", model=model, optimizer=opt, tensors=[x, y])
        with tracker:
            step(model, opt, x, y)
        return window.growth_bytes(), int(tracker.allocated_peak_bytes)
    finally:
        window.stop()


def _slope_batch(model: nn.Module, optimizer: OptimizerSpec, shape: tuple, b0: int, n: int) -> int:
    """``b1``: the predicted tensor peaks at ``b0`` and ``b1`` differ by ``SLOPE_SPAN_BYTES`` where the
    data allows. Its estimates also make the estimator's one-time costs (code, tracing) resident."""
    per_sample = (estimate_training_memory(model, 2 * b0, shape, optimizer).total_bytes
                  - estimate_training_memory(model, b0, shape, optimizer).total_bytes) / b0
    want = b0 + int(SLOPE_SPAN_BYTES / max(1.0, per_sample))
    return max(b0, min(n, WARM_UP_MAX_BATCH, max(b0 * SLOPE_BATCH_FACTOR, want)))


def _fill_batches(b0: int, b1: int) -> list[int]:
    """``FILL_SHAPES`` batch sizes from ``b0`` to ``b1`` (fewer when the range is narrower), ``b1`` first."""
    span = max(0, b1 - b0)
    sizes = {b1 - i * span // max(1, FILL_SHAPES - 1) for i in range(FILL_SHAPES)}
    return sorted(sizes, reverse=True)


def warm_up(key: str, model: nn.Module, optimizer: OptimizerSpec, x: torch.Tensor, y: torch.Tensor,
            step: Step, min_batch: int) -> bool:
    """Measure ``RESIDENT.fixed_bytes`` and ``RESIDENT.slope`` for ``key`` (see module doc).

    ``x``/``y`` are training samples (at least one); ``step(model, optimizer, x, y)`` is one
    training step as the trainer runs it. A no-op returning False when the resident model is off,
    when ``key`` was measured already in this process or while a warm-up runs.
    """
    if not RESIDENT.enabled or key in RESIDENT.warmed or RESIDENT.warming:
        return False
    n = len(x)
    b0 = max(1, min(max(int(min_batch), WARM_UP_MIN_BATCH), n // SLOPE_BATCH_FACTOR or 1))
    RESIDENT.warming = True
    try:
        with torch.random.fork_rng(devices=[]):
            copy = clean_copy(model, trainable=lambda _n, p: p.requires_grad)
            b1 = _slope_batch(copy, optimizer, tuple(x.shape[1:]), b0, n)
            opt = optimizer.build(copy.parameters(), 1e-3)
            for b in _fill_batches(b0, b1):  # one-time costs: resident from now on, in the baseline
                step(copy, opt, x[:b], y[:b])
            g0, t0 = _measure(copy, opt, step, x[:b0], y[:b0])
            g1, t1 = _measure(copy, opt, step, x[:b1], y[:b1])
        RESIDENT.fixed_bytes = max(RESIDENT.fixed_bytes, g0 - t0)
        if t1 > t0:
            RESIDENT.slope = max(RESIDENT.slope, (g1 - g0) / (t1 - t0))
        RESIDENT.warmed.add(key)
        RESIDENT.slopes.setdefault(structure_key(model), RESIDENT.slope)
        return True
    finally:
        RESIDENT.warming = False
