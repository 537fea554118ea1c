"""PeakMemoryTracker / StorageTracker: what is counted, when it is freed, no double counting."""

import pytest
import torch
from torch import nn

from fedprune.memory import CATEGORIES, OptimizerSpec, PeakMemoryTracker, estimate_training_memory, \
    measure_training_memory, train_step
from fedprune.models import build_model


def test_counts_allocations_and_frees():
    with PeakMemoryTracker() as t:
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(500)  # 2000 B
        del a
        c = torch.empty(100)  # 400 B
        assert t.current_bytes == 2400
    assert t.peak_bytes == 6000
    assert t.baseline_bytes == 0
    del b, c


def test_views_and_inplace_are_not_double_counted():
    x = torch.randn(1000)
    with PeakMemoryTracker(tensors=(x,)) as t:
        v = x.view(10, 100)
        x.add_(1.0)
        v.mul_(2.0)
        s = x[::2]
        _ = x.t() if x.dim() == 2 else x.reshape(1000)
    assert t.baseline_bytes == 4000
    assert t.peak_bytes == 4000
    del v, s


def test_preexisting_tensor_freed_inside_is_subtracted():
    holder = [torch.randn(1000)]
    with PeakMemoryTracker(tensors=holder) as t:
        holder.clear()
        assert t.current_bytes == 0
        y = torch.empty(250)  # 1000 B
    assert t.peak_bytes == 4000
    del y


def test_tensors_saved_for_backward_stay_counted_until_released():
    w = torch.randn(1000, requires_grad=True)
    with PeakMemoryTracker(tensors=(w,)) as t:
        h = (w * 3.0).sin()  # sin saves its input (w*3) although Python holds no reference to it
        assert t.current_bytes == 3 * 4000
        h.sum().backward()  # releases the saved tensor; w.grad appears
        assert t.current_bytes == 3 * 4000  # w + h + w.grad
        del h
        assert t.current_bytes == 2 * 4000
    assert t.peak_bytes >= 3 * 4000


def test_step_peak_matches_measure_and_counts_state():
    torch.manual_seed(0)
    model = build_model("lenet300", seed=0)
    spec = OptimizerSpec("sgd")
    opt = spec.build(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    train_step(model, opt, x, y)  # creates momentum buffers
    n_params = sum(p.numel() * 4 for p in model.parameters())
    with PeakMemoryTracker(model=model, optimizer=opt, tensors=(x, y), record=True) as t:
        train_step(model, opt, x, y)
    assert t.peak_bytes >= 3 * n_params  # params + grads + momentum
    assert sum(t.breakdown.values()) == t.peak_bytes
    assert set(t.breakdown) == set(CATEGORIES)
    assert t.breakdown["params"] == n_params and t.breakdown["optimizer_state"] == n_params
    assert t.rss_bytes > 0
    assert measure_training_memory(model, 8, (1, 28, 28), spec).peak_bytes == t.peak_bytes


def test_reset_peak_restarts_from_current():
    with PeakMemoryTracker() as t:
        a = torch.empty(1000)
        del a
        t.reset_peak()
        b = torch.empty(10)
    assert t.peak_bytes == 40
    del b


def test_estimate_inside_a_tracker_does_not_pollute_it():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    with PeakMemoryTracker() as t:
        est = estimate_training_memory(model, 64, (1, 28, 28), OptimizerSpec("adam"))
    assert est.total_bytes > 100_000
    assert t.peak_bytes < 1_000  # only Adam's CPU step counters of the meta copy


def test_track_validates_arguments():
    t = PeakMemoryTracker()
    with pytest.raises(TypeError, match="cannot track"):
        t.track("not a tensor")
    with pytest.raises(ValueError, match="unknown tag"):
        t.track(torch.empty(1), tag="weights")
    later = torch.empty(100)
    with t:
        t.track(later)
        assert t.baseline_bytes == 400
    assert t.peak_bytes == 400


def test_after_a_step_only_the_persistent_state_is_live():
    """Frees are followed exactly: after the step only params, grads, state and the batch remain."""
    model = build_model("resnet8", seed=0)
    opt = OptimizerSpec("adam").build(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    train_step(model, opt, x, y)
    with PeakMemoryTracker(model=model, optimizer=opt, tensors=(x, y)) as t:
        train_step(model, opt, x, y)
        live = sum(p.numel() * 4 * 2 for p in model.parameters())  # params + grads
        live += sum(b.numel() * b.element_size() for b in model.buffers())
        live += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values())
        live += x.numel() * 4 + y.numel() * 8
        assert t.current_bytes == live
    assert t.peak_bytes > live


def test_named_state_is_read_at_entry_not_at_construction():
    model = nn.Linear(100, 10)
    opt = OptimizerSpec("adam").build(model.parameters(), lr=1e-3)
    t = PeakMemoryTracker(model=model, optimizer=opt)  # optimizer state does not exist yet
    train_step(model, opt, torch.randn(4, 100), torch.zeros(4, dtype=torch.long))
    with t:
        pass
    params = 1010 * 4
    assert t.baseline_bytes == params * 4 + 2 * 4  # params, grads, exp_avg, exp_avg_sq + step counters
