"""The resident-memory model: a training budget bounds RSS growth as the kernel counts it.

Definitions (bytes):

* **runtime baseline** -- the process's RSS when a round starts minus the received model's bytes
  (interpreter, torch, Flower, the client's data, plus the one-time costs a warm-up made resident:
  code pages, kernel caches, thread pools). The model counts in the budget, as in the tensor view.
* **physical peak of a round** -- the RSS high-water mark during the round minus that baseline
  (``PeakWindow``: the kernel's ``VmHWM``, reset per round). A round violates its budget physically
  when this exceeds the training budget.
* **device total** -- what the device has (a fleet profile's RAM, or the cgroup limit / host memory);
  the training budget is the device total minus the baseline (minus a reserve) -- see ``auto_budget``.

The prediction: ``physical(b) = fixed_bytes + slope * tensor_peak(b)``. ``fixed_bytes`` is the RSS
growth of a warm training step beyond its tensor bytes and ``slope`` (>= 1) the resident bytes per
tensor byte, both measured once per process by ``fedprune.memory.warmup.warm_up`` (a handful of
plain steps on a copy of the model). Every measured training step can raise ``slope`` and
``fixed_bytes`` (``observe``): kernel workspace that the tensor accounting misses grows with the
step and depends on the layer widths, which pruning changes, so the trainer measures one step of
every new set of layer shapes (``slopes``) before it lets the batch grow. Host memory the steps
keep between them (measurement records, heap the allocator keeps, Python objects) raises
``retained_bytes`` (``observe_retained``). ``tensor_budget`` turns a training budget into the
tensor budget the batch fit uses.
State is per process (``RESIDENT``), which is what the kernel counts.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psutil

from fedprune.memory.cgroup import cgroup_headroom_bytes, cgroup_limit_bytes
from fedprune.memory.process import PeakWindow, configure_allocator, configure_kernel_caches, rss_bytes

#: the most resident bytes per tensor byte a measured step can teach; a larger miss is fixed bytes
MAX_SLOPE = 2.0


def structure_key(model) -> tuple:
    """The shapes of ``model``'s parameters: what a step's untracked kernel workspace depends on."""
    return tuple(tuple(p.shape) for p in model.parameters())


@dataclass
class ResidentModel:
    """Per-process figures of the resident-memory model (see module doc)."""

    enabled: bool = False  # set by start_client_process: off, the batch fit is tensor-only
    fixed_bytes: int = 0
    retained_bytes: int = 0
    slope: float = 1.0
    allocator: dict = field(default_factory=dict)
    warmed: set = field(default_factory=set)  # keys whose plain warm-up steps ran
    rehearsed: set = field(default_factory=set)  # keys whose rehearsal round trained
    slopes: dict = field(default_factory=dict)  # layer shapes (structure_key) -> slope measured for them
    warming: bool = False
    learning: bool = True
    window: PeakWindow | None = None

    def slope_for(self, key: tuple | None) -> float:
        """The slope of layer shapes ``key``: measured for them, else the largest measured for any."""
        if key in self.slopes:
            return self.slopes[key]
        return max([self.slope, *self.slopes.values()])

    def structure_measured(self, model) -> bool:
        """Whether a training step of ``model``'s layer shapes was measured in this process."""
        return structure_key(model) in self.slopes

    def tensor_budget(self, budget_bytes: int, calibration: float = 1.0, held_bytes: int = 0,
                      live_bytes: int = 0, key: tuple | None = None) -> int:
        """Tensor bytes a step may peak at so that its RSS growth stays within ``budget_bytes``.

        ``held_bytes``: the RSS the round holds now over its baseline; ``live_bytes``: the tensor
        bytes that are alive now and part of every step's peak (parameters, gradients, optimizer
        state), which that RSS already holds; ``key``: the model's layer shapes. A step then peaks
        at ``held + fixed + slope_for(key) * (tensor_peak - live)``. Off (library use), the budget
        is divided by ``calibration`` only.
        """
        if not self.enabled:
            return int(int(budget_bytes) / max(1.0, float(calibration)))
        room = int(budget_bytes) - self.fixed_bytes - self.retained_bytes - int(held_bytes)
        if room <= 0:
            return 0
        physical = int(room / max(1.0, self.slope_for(key), float(calibration))) + int(live_bytes)
        return min(physical, int(int(budget_bytes) / max(1.0, float(calibration))))  # tensors fit too

    def observe(self, physical_bytes: int, transient_bytes: int, held_bytes: int, key: tuple | None = None) -> None:
        """Learn from one measured step of layer shapes ``key``: its RSS growth over the round's
        baseline against ``held_bytes`` (held before the step) plus ``fixed_bytes`` plus the slope
        times its predicted new tensor bytes.

        Kernels allocate workspace that the tensor accounting cannot see, and it scales with the
        step and with the layer widths (oneDNN pads a layer's channels to its vector width, so a
        pruned layer of 9 channels costs what one of 16 does). So the step sets the slope of
        ``key``: what explains its growth, at least the warm-up's ``slope`` and at most
        ``MAX_SLOPE``, and never below what an earlier step of ``key`` needed; a miss beyond
        ``MAX_SLOPE`` raises ``fixed_bytes``.
        """
        if not (self.learning and transient_bytes > 0 and physical_bytes > 0):
            return
        growth = int(physical_bytes) - int(held_bytes) - self.fixed_bytes
        needed = min(MAX_SLOPE, max(self.slope, growth / transient_bytes))
        self.slopes[key] = max(needed, self.slopes.get(key, 0.0))
        self.fixed_bytes += max(0, int(growth - self.slopes[key] * transient_bytes))

    def observe_retained(self, held_growth: int, live_growth: int) -> None:
        """Learn host memory the round's steps keep between steps: the RSS held before a measured
        step minus what was held when its batch was fitted, beyond the growth of live tensors.
        It raises ``retained_bytes``, which later fits keep free."""
        if self.learning:
            self.retained_bytes = max(self.retained_bytes, int(held_growth - max(0, live_growth)))

    def describe(self) -> dict:
        """The figures as flat metrics."""
        return {"resident_fixed_bytes": int(self.fixed_bytes), "resident_retained_bytes": int(self.retained_bytes),
                "resident_slope": float(self.slope_for(None))}


RESIDENT = ResidentModel()
PHYSICAL_BUDGET_ENV = "FEDPRUNE_PHYSICAL_BUDGET"


def start_client_process() -> dict:
    """Call once at client start, before the first convolution: turns the resident model on, caps
    oneDNN's kernel caches and applies the allocator setting (``fedprune.memory.process``).

    Returns the allocator settings glibc accepted. Without this call (library use, unit tests) the
    trainer fits batches to tensor bytes only; the physical figures are reported either way.
    ``FEDPRUNE_PHYSICAL_BUDGET=0`` in the environment keeps tensor-only fitting in client processes
    too: batch sizes then do not depend on measured resident memory, so two runs with one seed
    train identically (the physical figures are still reported).
    """
    RESIDENT.enabled = os.environ.get(PHYSICAL_BUDGET_ENV, "1") != "0"
    configure_kernel_caches()
    if not RESIDENT.allocator:
        RESIDENT.allocator = configure_allocator() or {"applied": 0}
    return RESIDENT.allocator


@contextmanager
def client_process() -> Iterator[dict]:
    """``start_client_process()`` for the duration of a ``with`` block (a command run in-process,
    e.g. from tests): the resident model is switched back to what it was afterwards."""
    was = RESIDENT.enabled
    try:
        yield start_client_process()
    finally:
        RESIDENT.enabled = was


def open_round(model_bytes: int = 0) -> tuple[PeakWindow, bool]:
    """The round's RSS window: the open one, or a new one (then the second value is True).

    A new window's baseline is the RSS now minus ``model_bytes`` (the received model's parameters
    and buffers): the model is part of what the training budget holds, as in the tensor accounting.
    """
    if RESIDENT.window is not None:
        return RESIDENT.window, False
    RESIDENT.window = PeakWindow().start()
    RESIDENT.window.start_bytes = max(0, RESIDENT.window.start_bytes - int(model_bytes))
    return RESIDENT.window, True


def close_round(window: PeakWindow, opened: bool, budget_bytes: int | None) -> dict:
    """The round's physical metrics; closes the window when this caller opened it.

    ``physical_peak_bytes``: physical peak of the round (growth over ``physical_baseline_bytes``);
    ``physical_hwm_bytes``: the whole process's high-water mark; ``physical_violation``: 1 when the
    physical peak exceeds the budget; ``physical_utilization``: physical peak / budget.
    """
    peak = window.peak_bytes()
    growth = max(0, peak - window.start_bytes)
    out = {"physical_baseline_bytes": int(window.start_bytes), "physical_hwm_bytes": int(peak),
           "physical_peak_bytes": int(growth), "physical_peak_method": window.method,
           "physical_violation": int(bool(budget_bytes) and growth > int(budget_bytes)),
           "physical_utilization": float(growth / budget_bytes) if budget_bytes else 0.0,
           **RESIDENT.describe()}
    if opened:
        window.stop()
        RESIDENT.window = None
    return out


def held_bytes(window: PeakWindow | None) -> int:
    """RSS the round holds now over its baseline (0 without a window)."""
    return 0 if window is None else max(0, rss_bytes() - window.start_bytes)


def step_physical_bytes(window: PeakWindow, step: Callable[[], object]) -> tuple[object, int, int]:
    """Run ``step()``; its result, the RSS peak during it and the RSS held before it (both over the
    window's baseline)."""
    held = held_bytes(window)
    window.new_segment()
    result = step()
    return result, max(0, window.segment_peak_bytes() - window.start_bytes), held


def device_total_bytes() -> int:
    """What this device has: the smaller of its cgroup limit and the host's RAM."""
    total = int(psutil.virtual_memory().total)
    limit = cgroup_limit_bytes()
    return min(total, limit) if limit is not None else total


def auto_budget(reserve_bytes: int, cap_bytes: float = float("inf")) -> int:
    """``auto``: min(cgroup headroom, available memory) minus the reserve -- measured now.

    Both figures are what the process may still grow by, so the runtime baseline (its RSS now:
    interpreter, torch, Flower, data) is already taken out; the result is the training budget.
    """
    room = int(psutil.virtual_memory().available)
    headroom = cgroup_headroom_bytes()
    if headroom is not None:
        room = min(room, headroom)
    return int(max(0, min(cap_bytes, room - reserve_bytes)))
