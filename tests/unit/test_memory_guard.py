"""run_with_oom_guard: halves on OOM, records events, reports 'does not fit' cleanly."""

import pytest
import torch

from fedprune.memory import is_oom_error, run_with_oom_guard


def _step_failing_above(limit, exc=MemoryError):
    tried = []

    def step(b):
        tried.append(b)
        if b > limit:
            raise exc(f"out of memory at batch {b}")
        return f"ok@{b}"
    return step, tried


def test_halves_until_it_fits_and_records_events():
    step, tried = _step_failing_above(10)
    result, used, events = run_with_oom_guard(step, 64, min_batch=2, release=None)
    assert (result, used) == ("ok@8", 8)
    assert tried == [64, 32, 16, 8]
    assert [(e.batch_size, e.next_batch_size) for e in events] == [(64, 32), (32, 16), (16, 8)]
    assert events[0].error == "MemoryError" and "batch 64" in events[0].to_dict()["message"]


def test_never_goes_below_min_batch_and_returns_does_not_fit():
    step, tried = _step_failing_above(3)
    result, used, events = run_with_oom_guard(step, 40, min_batch=6, release=None)
    assert result is None and used == 0
    assert tried == [40, 20, 10, 6]
    assert events[-1].next_batch_size == 0


def test_no_oom_no_events():
    step, _ = _step_failing_above(100)
    assert run_with_oom_guard(step, 32) == ("ok@32", 32, [])


def test_recognises_torch_and_allocator_errors():
    assert is_oom_error(MemoryError())
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))
    step, _ = _step_failing_above(4, exc=lambda m: RuntimeError("CUDA error: out of memory"))
    assert run_with_oom_guard(step, 16, release=None)[1] == 4


def test_other_errors_propagate_and_args_are_validated():
    def bad(_b):
        raise ValueError("bug")
    with pytest.raises(ValueError, match="bug"):
        run_with_oom_guard(bad, 8)
    with pytest.raises(ValueError, match="min_batch"):
        run_with_oom_guard(lambda b: b, 4, min_batch=8)


def test_release_hook_runs_after_each_oom():
    step, _ = _step_failing_above(10)
    released = []
    run_with_oom_guard(step, 32, release=lambda: released.append(1))
    assert len(released) == 2
