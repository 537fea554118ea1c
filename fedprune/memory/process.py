"""The training process's resident memory as the kernel counts it, and control of its allocator.

* ``rss_bytes()`` / ``peak_rss_bytes()``: ``VmRSS`` / ``VmHWM`` of ``/proc/<pid>/status``.
* ``PeakWindow``: the high-water mark over one window (a round): it resets the kernel's mark
  (``/proc/self/clear_refs`` ← ``5``) at the start; where that is not possible it samples
  ``VmRSS`` from a thread every few milliseconds instead (``method`` says which was used).
* ``configure_allocator()``: glibc ``mallopt`` settings for this process, and ``allocator_env()``
  the same settings as ``MALLOC_*_`` environment variables for child processes.

Why the allocator matters: glibc raises its mmap threshold dynamically each time a large mmapped
block is freed (up to 32 MiB on 64-bit), after which freed tensor memory stays in the heap and the
process's RSS grows well past its live tensor bytes. A fixed ``M_MMAP_THRESHOLD`` turns the dynamic
threshold off, so every large tensor is its own mapping returned to the kernel when freed; a low
``M_TRIM_THRESHOLD`` returns freed heap tops; ``M_ARENA_MAX`` bounds the per-thread arenas.
``DEFAULT_ALLOCATOR`` is such a setting; bench/bench_rss.py measures what the whole model (this
setting, the kernel caches below, the warm-up) keeps the physical peak at.

* ``configure_kernel_caches()``: bounds oneDNN's caches of compiled CPU kernels. PyTorch's CPU
  convolutions compile one oneDNN primitive per layer shape and batch size and keep it (oneDNN's
  primitive cache and ideep's LRU cache, 1024 entries each by default): a client whose shapes keep
  changing (DynHP removes neurons, the batch is refitted after every change) grows its RSS by a few
  hundred KB per new shape and never gets it back. ``KERNEL_CACHE_ENV`` caps both caches; the
  variables are read when the first convolution runs, so this must happen before it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
_ENV_NAMES = {"mmap_threshold": "MALLOC_MMAP_THRESHOLD_", "trim_threshold": "MALLOC_TRIM_THRESHOLD_",
              "arena_max": "MALLOC_ARENA_MAX"}
_PARAMS = {"mmap_threshold": M_MMAP_THRESHOLD, "trim_threshold": M_TRIM_THRESHOLD, "arena_max": M_ARENA_MAX}
#: the setting bench/bench_allocator.py measured to keep RSS closest to live tensor bytes
DEFAULT_ALLOCATOR = {"mmap_threshold": 65536, "trim_threshold": 131072, "arena_max": 2}
#: oneDNN / ideep kernel cache sizes (entries): enough for the primitives of a few step shapes
KERNEL_CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}


def _status_kb(field_name: str, pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` now, in bytes (``VmRSS``); -1 when /proc cannot tell."""
    kb = _status_kb("VmRSS", pid)
    return kb * 1024 if kb >= 0 else -1


def peak_rss_bytes(pid: int | str = "self") -> int:
    """High-water mark of ``pid``'s RSS since start or the last reset (``VmHWM``); -1 if unknown."""
    kb = _status_kb("VmHWM", pid)
    return kb * 1024 if kb >= 0 else -1


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return 0 <= peak_rss_bytes() <= rss_bytes() + (1 << 20)  # a reset mark sits at the current RSS


@dataclass
class PeakWindow:
    """The RSS high-water mark over a window: ``start()`` … ``peak_bytes()`` (absolute bytes).

    ``start_bytes`` is the RSS when the window opened; ``growth_bytes()`` the peak above it.
    ``method`` is ``"clear_refs"`` (the kernel's own mark, exact) or ``"sampled"`` (a thread reading
    VmRSS every ``interval`` seconds: short spikes between samples can be missed).
    """

    interval: float = 0.002
    start_bytes: int = 0
    method: str = ""
    _peak: int = 0
    _segment: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "PeakWindow":
        """Open the window (resets the kernel's mark, or starts the sampler)."""
        self.stop()
        self.start_bytes = max(0, rss_bytes())
        self._peak = self._segment = self.start_bytes
        if reset_peak_rss():
            self.method = "clear_refs"
            return self
        self.method = "sampled"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-peak", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_bytes()
            self._peak, self._segment = max(self._peak, now), max(self._segment, now)

    def new_segment(self) -> None:
        """Start a sub-window (e.g. one step): the window's peak so far is kept, the segment's restarts."""
        self._peak = self.peak_bytes()
        if self.method == "clear_refs":
            reset_peak_rss()
        self._segment = max(0, rss_bytes())

    def segment_peak_bytes(self) -> int:
        """Highest RSS since the last ``new_segment()`` (or ``start()``)."""
        now = rss_bytes()
        if self.method == "clear_refs":
            return max(self._segment, peak_rss_bytes(), now)
        self._segment = max(self._segment, now)
        return self._segment

    def peak_bytes(self) -> int:
        """Highest RSS seen since ``start()`` (includes the RSS now)."""
        now = rss_bytes()
        if self.method == "clear_refs":
            return max(self._peak, peak_rss_bytes(), now)
        self._peak = max(self._peak, now)
        return self._peak

    def growth_bytes(self) -> int:
        """``peak_bytes() - start_bytes`` (>= 0)."""
        return max(0, self.peak_bytes() - self.start_bytes)

    def stop(self) -> None:
        """Stop the sampler thread, if any (the figures stay readable)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._thread = None


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name or "libc.so.6")
        lib.mallopt  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return lib


def _check_setting(setting: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(setting) - set(_PARAMS))
    if unknown:
        raise ValueError(f"allocator setting(s) {', '.join(unknown)}: expected {', '.join(sorted(_PARAMS))}")
    for k, v in setting.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "arena_max" else 0):
            raise ValueError(f"allocator {k}={v!r}: expected a non-negative integer")
    return dict(setting)


def configure_allocator(setting: dict[str, int] | None = None) -> dict[str, int]:
    """Apply glibc ``mallopt`` settings to this process (default ``DEFAULT_ALLOCATOR``).

    Returns the settings that glibc accepted (empty off glibc). Call it at client start, before
    the large allocations it should govern; it never raises for a missing glibc.
    """
    setting = _check_setting(DEFAULT_ALLOCATOR if setting is None else setting)
    lib = _libc()
    if lib is None:
        return {}
    done = {}
    for k, v in setting.items():
        if lib.mallopt(ctypes.c_int(_PARAMS[k]), ctypes.c_int(v)) == 1:
            done[k] = v
    return done


def allocator_env(setting: dict[str, int] | None = None) -> dict[str, str]:
    """The same setting as ``MALLOC_*_`` environment variables, plus ``KERNEL_CACHE_ENV``, for
    child processes' ``env``."""
    setting = _check_setting(DEFAULT_ALLOCATOR if setting is None else setting)
    return {**{_ENV_NAMES[k]: str(v) for k, v in setting.items()}, **KERNEL_CACHE_ENV}


def configure_kernel_caches(environ: dict | None = None) -> dict[str, str]:
    """Cap oneDNN's kernel caches (``KERNEL_CACHE_ENV``) in ``environ`` (default ``os.environ``).

    Values already set there are kept (a user's choice wins). Returns the values now in effect.
    Takes effect in this process only if no convolution has run yet, and in its children always.
    """
    environ = os.environ if environ is None else environ
    for name, value in KERNEL_CACHE_ENV.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in KERNEL_CACHE_ENV}


def trim_heap() -> bool:
    """Return free heap memory to the kernel now (glibc ``malloc_trim(0)``); False off glibc."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(ctypes.c_size_t(0)))


def env_allocator_setting(environ: dict[str, str] | None = None) -> dict[str, int]:
    """The allocator setting the ``MALLOC_*_`` variables of ``environ`` (default ``os.environ``) give."""
    environ = os.environ if environ is None else environ
    out = {}
    for k, name in _ENV_NAMES.items():
        if name in environ:
            try:
                out[k] = int(environ[name])
            except ValueError:
                raise ValueError(f"{name}={environ[name]!r}: expected an integer") from None
    return out
