"""Peak of live tensor bytes, counted per untyped storage at the dispatcher.

Two layers:

* ``StorageTracker`` -- a ``TorchDispatchMode`` that sees every aten op output,
  registers each new untyped storage once (views and in-place results share
  their storage, so nothing is counted twice) and drops it when the storage
  dies (a weakref callback on the storage object, which PyTorch keeps alive
  exactly as long as the C++ storage; tensors saved for backward therefore stay
  counted until autograd releases them). ``peak`` is the maximum of the live
  total right after any op. It is used on CPU for measurement and on ``meta``
  for the estimate -- the same accounting code on both sides.
* ``PeakMemoryTracker`` -- the public context manager the trainer wraps around
  any step. It counts the tensors that already exist at entry and that you name
  (model parameters, buffers and gradients, optimizer state, the input batch)
  plus every storage allocated inside. On CUDA it uses the caching allocator's
  counters instead (``max_memory_allocated``).

Invariants: ``current`` is always the byte sum of registered storages still
alive; ``peak >= current`` and ``peak >= baseline``; a storage is counted once
no matter how many tensors view it. Bytes inside a kernel that never surface as
an op output (e.g. oneDNN scratch buffers) are not seen -- see docs/memory.md.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, Iterable

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fedprune.memory.fastmeta import fast_meta

#: Breakdown categories, in report order. Their sum is always the total.
CATEGORIES = ("params", "buffers", "grads", "optimizer_state", "input_batch", "activations", "transient")
_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
_CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to 512 bytes


def _storage_of(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, some subclasses
        return None


def iter_module_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield ``(category, tensor)`` for a module's parameters, gradients and buffers."""
    for p in model.parameters():
        yield "params", p
        if p.grad is not None:
            yield "grads", p.grad
    for b in model.buffers():
        yield "buffers", b


def iter_optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield ``(category, tensor)`` for an optimizer's parameters, gradients and state tensors."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            yield "params", p
            if p.grad is not None:
                yield "grads", p.grad
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield "optimizer_state", v


class StorageTracker(TorchDispatchMode):
    """Dispatch mode counting live untyped-storage bytes on one device type.

    ``device_type`` (one or a tuple) filters what is counted ("cpu", "meta", ...), so an
    estimate running on ``meta`` inside a CPU tracker does not pollute it. ``fast_meta``
    answers common meta ops with ``fastmeta.fast_meta`` (same outputs, much cheaper). ``granularity``
    rounds each storage up (512 mimics the CUDA caching allocator). With
    ``record=True`` an event log is kept so :meth:`timeline` can break the peak
    down by category afterwards.
    """

    def __init__(self, device_type: str | tuple[str, ...] = "cpu", *, record: bool = False,
                 granularity: int = 1, fast_meta: bool = False):
        super().__init__()
        self.device_types = (device_type,) if isinstance(device_type, str) else tuple(device_type)
        self.fast_meta = fast_meta
        self.record = record
        self.granularity = max(1, int(granularity))
        self.current = 0
        self.peak = 0
        self._live: dict[int, list] = {}  # id(storage) -> [serial, nbytes, weakref]
        self._serial = 0
        self._closed = False
        # record mode
        self.log: list[tuple] = []  # ("a", serial, nbytes) | ("f", serial) | ("r", serial, delta)
        self.event_ops: list[Any] = []  # op (or "register") for every "a"/"r" entry, same order
        self.tags: dict[int, str] = {}  # serial -> category fixed at registration
        self.phase_of: dict[int, str] = {}  # serial -> phase in which it was allocated
        self._saw_backward = False

    # -- bookkeeping -------------------------------------------------------------------------
    def _nbytes(self, st: torch.UntypedStorage) -> int:
        n = st.nbytes()
        g = self.granularity
        return n if g == 1 or n == 0 else -(-n // g) * g

    def _phase(self) -> str:
        if torch._C._current_graph_task_id() != -1:
            self._saw_backward = True
            return "backward"
        return "step" if self._saw_backward else "forward"

    def _add_storage(self, st: torch.UntypedStorage, op: Any, tag: str | None) -> None:
        key = id(st)
        entry = self._live.get(key)
        if entry is not None:
            n = self._nbytes(st)
            delta = n - entry[1]
            if delta:  # resized in place
                entry[1] = n
                self.current += delta
                if self.record:
                    self.log.append(("r", entry[0], delta))
                    self.event_ops.append(op)
            return
        n = self._nbytes(st)
        serial = self._serial
        self._serial += 1
        ref = weakref.ref(st, partial(self._on_free, key, serial))
        self._live[key] = [serial, n, ref]
        self.current += n
        if self.record:
            self.log.append(("a", serial, n))
            self.event_ops.append(op)
            if tag is not None:
                self.tags[serial] = tag
            else:
                self.phase_of[serial] = self._phase()

    def _on_free(self, key: int, serial: int, _ref: Any) -> None:
        entry = self._live.get(key)
        if entry is None or entry[0] != serial:
            return
        del self._live[key]
        self.current -= entry[1]
        if self.record and not self._closed:
            self.log.append(("f", serial))

    def register(self, t: torch.Tensor, tag: str | None = None) -> None:
        """Count a tensor that already exists (its storage once; ignored if on another device)."""
        if not isinstance(t, torch.Tensor) or t.device.type not in self.device_types:
            return
        st = _storage_of(t)
        if st is not None:
            self._add_storage(st, "register", tag)
            if self.current > self.peak:
                self.peak = self.current

    def serial_of(self, t: torch.Tensor) -> int | None:
        """The serial number of a live tensor's storage, or None when untracked."""
        st = _storage_of(t)
        entry = self._live.get(id(st)) if st is not None else None
        return None if entry is None else entry[0]

    def close(self) -> None:
        """Stop following frees (drops the weakrefs); counters keep their last values."""
        self._closed = True
        self._live.clear()

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = fast_meta(func, args, kwargs) if self.fast_meta else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        dt = self.device_types
        if isinstance(out, torch.Tensor):
            if out.device.type in dt:
                st = _storage_of(out)
                if st is not None:
                    self._add_storage(st, func, None)
        elif isinstance(out, (tuple, list)):
            for o in tree_leaves(out):
                if isinstance(o, torch.Tensor) and o.device.type in dt:
                    st = _storage_of(o)
                    if st is not None:
                        self._add_storage(st, func, None)
        if self.current > self.peak:
            self.peak = self.current
        return out

    # -- analysis (record mode) --------------------------------------------------------------
    def timeline(self, final_tags: dict[int, str] | None = None) -> tuple[list[list[int]], list[Any]]:
        """Per-category live bytes after every allocation event, and the op of each event.

        Category of a storage: ``final_tags`` (e.g. it ended up as a ``.grad``), else its
        registration tag, else "activations" when allocated in the forward phase and
        "transient" otherwise. Row sums equal the live total after that event.
        """
        if not self.record:
            raise RuntimeError("timeline() needs StorageTracker(record=True)")
        final_tags = final_tags or {}
        cat_of: dict[int, int] = {}
        size_of: dict[int, int] = {}
        cur = [0] * len(CATEGORIES)
        rows: list[list[int]] = []
        act, trans = _CAT_INDEX["activations"], _CAT_INDEX["transient"]
        for entry in self.log:
            kind, serial = entry[0], entry[1]
            if kind == "a":
                tag = final_tags.get(serial) or self.tags.get(serial)
                if tag is not None:
                    c = _CAT_INDEX[tag]
                else:
                    c = act if self.phase_of.get(serial) == "forward" else trans
                cat_of[serial] = c
                size_of[serial] = entry[2]
                cur[c] += entry[2]
                rows.append(list(cur))
            elif kind == "f":
                c = cat_of.pop(serial, None)
                if c is not None:
                    cur[c] -= size_of.pop(serial)
            else:  # resize
                c = cat_of[serial]
                cur[c] += entry[2]
                size_of[serial] += entry[2]
                rows.append(list(cur))
        return rows, list(self.event_ops)

    def final_tags_for(self, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None) -> dict[int, str]:
        """Tags for storages that ended the run as gradients or optimizer state."""
        tags: dict[int, str] = {}
        pairs: list[tuple[str, torch.Tensor]] = []
        if model is not None:
            pairs += [(c, t) for c, t in iter_module_tensors(model) if c == "grads"]
        if optimizer is not None:
            pairs += [(c, t) for c, t in iter_optimizer_tensors(optimizer) if c != "params"]
        for cat, t in pairs:
            s = self.serial_of(t)
            if s is not None and s not in self.tags:
                tags[s] = cat
        return tags


def _expand(objs: list[tuple[Any, str]]) -> list[tuple[str, torch.Tensor]]:
    """``(category, tensor)`` pairs for modules, optimizers and tagged tensors, as they are now."""
    pairs: list[tuple[str, torch.Tensor]] = []
    for obj, tag in objs:
        if isinstance(obj, nn.Module):
            pairs += list(iter_module_tensors(obj))
        elif isinstance(obj, torch.optim.Optimizer):
            pairs += list(iter_optimizer_tensors(obj))
        else:
            pairs.append((tag, obj))
    return pairs


def _op_name(op: Any) -> str:
    if isinstance(op, str):
        return op
    name = getattr(op, "__name__", None) or str(op)
    ns = getattr(op, "namespace", "aten")
    return f"{ns}.{name}"


class PeakMemoryTracker:
    """Context manager: peak live tensor bytes of whatever runs inside, including named state.

    Pass (or later ``track()``) everything that already lives before the step and must be
    counted -- ``model`` (parameters, buffers, gradients), ``optimizer`` (state tensors) and
    ``tensors`` (the input batch, labels, ...). After exit:

    * ``peak_bytes``     peak of (named pre-existing + allocated inside) live bytes,
    * ``baseline_bytes`` bytes of the named tensors at entry,
    * ``rss_bytes``      process RSS at exit (psutil), reported beside it,
    * ``breakdown``      per-category bytes at the peak (only with ``record=True``; CPU/meta).

    On CPU/meta every aten op goes through a Python dispatch mode (roughly 10-30 us per op);
    wrap one step per round or per structural change rather than every step of tiny models.
    On CUDA the allocator counters are used: ``peak = max_memory_allocated - allocated_at_entry
    + baseline`` (rounded to 512-byte blocks), so other tensors on the device are not counted.
    Not thread-safe; one tracker per training thread.
    """

    def __init__(self, device: str | torch.device = "cpu", *, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, tensors: Iterable[torch.Tensor] = (),
                 record: bool = False):
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
            dev = torch.device("cuda", torch.cuda.current_device())  # "cuda" == "cuda:N" for matching
        self.device = dev
        self.record = record
        self._model = model
        self._optimizer = optimizer
        self._impl: StorageTracker | None = None
        self._cuda_entry = 0
        self._cuda_seen: set[int] = set()
        self._active = False
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.rss_bytes = 0
        self.breakdown: dict[str, int] | None = None
        self.peak_op: str | None = None
        self._pending_objs: list[tuple[Any, str]] = []  # expanded at entry: state as it is then
        if model is not None:
            self._pending_objs.append((model, "input_batch"))
        if optimizer is not None:
            self._pending_objs.append((optimizer, "input_batch"))
        self._pending_objs += [(t, "input_batch") for t in tensors]

    # -- registration ------------------------------------------------------------------------
    def track(self, *objs: Any, tag: str = "input_batch") -> "PeakMemoryTracker":
        """Also count these pre-existing modules, optimizers or tensors (tensors get ``tag``)."""
        if tag not in _CAT_INDEX:
            raise ValueError(f"unknown tag {tag!r}; expected one of {', '.join(CATEGORIES)}")
        for obj in objs:
            if not isinstance(obj, (nn.Module, torch.optim.Optimizer, torch.Tensor)):
                raise TypeError(f"cannot track {type(obj).__name__}; pass modules, optimizers or tensors")
        if self._active:
            self._register(_expand([(obj, tag) for obj in objs]))
        else:
            self._pending_objs += [(obj, tag) for obj in objs]
        return self

    def _register(self, pairs: list[tuple[str, torch.Tensor]]) -> None:
        if self._impl is not None:
            before = self._impl.current
            for cat, t in pairs:
                self._impl.register(t, cat)
            self.baseline_bytes += self._impl.current - before
            return
        for _, t in pairs:  # CUDA: byte sum of distinct storages on this device
            if isinstance(t, torch.Tensor) and t.device == self.device:
                st = _storage_of(t)
                if st is not None and st.data_ptr() not in self._cuda_seen:
                    self._cuda_seen.add(st.data_ptr())
                    n = st.nbytes()
                    self.baseline_bytes += -(-n // _CUDA_BLOCK) * _CUDA_BLOCK if n else 0

    @property
    def current_bytes(self) -> int:
        """Live tracked bytes now (CPU/meta: exact; CUDA: allocator-based)."""
        if self._impl is not None:
            return self._impl.current
        if self.device.type == "cuda" and self._active:
            return torch.cuda.memory_allocated(self.device) - self._cuda_entry + self.baseline_bytes
        return 0

    @property
    def allocated_peak_bytes(self) -> int:
        """Peak minus the baseline: what the step added on top of the named state."""
        return self.peak_bytes - self.baseline_bytes

    def reset_peak(self) -> None:
        """Restart the peak from the current live bytes (to measure consecutive steps separately)."""
        if self._impl is not None:
            self._impl.peak = self._impl.current
        elif self.device.type == "cuda" and self._active:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "PeakMemoryTracker":
        if self._active:
            raise RuntimeError("PeakMemoryTracker is not re-entrant")
        self._active = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._cuda_entry = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._register(_expand(self._pending_objs))
        else:
            self._impl = StorageTracker(self.device.type, record=self.record)  # counts one device type
            self._register(_expand(self._pending_objs))
            self._impl.__enter__()
        self._pending_objs = []
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._impl is not None:
                self._impl.__exit__(*exc)
                impl = self._impl
                self.peak_bytes = impl.peak
                if self.record and exc[0] is None:
                    self._compute_breakdown(impl)
                impl.close()
                self._impl = None
            elif self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) - self._cuda_entry
                self.peak_bytes = max(peak, 0) + self.baseline_bytes
            self.rss_bytes = psutil.Process().memory_info().rss
        finally:
            self._active = False

    def _compute_breakdown(self, impl: StorageTracker) -> None:
        rows, ops = impl.timeline(impl.final_tags_for(self._model, self._optimizer))
        if not rows:
            self.breakdown = {c: 0 for c in CATEGORIES}
            return
        i = max(range(len(rows)), key=lambda k: sum(rows[k]))
        self.breakdown = dict(zip(CATEGORIES, rows[i]))
        self.peak_op = _op_name(ops[i])
