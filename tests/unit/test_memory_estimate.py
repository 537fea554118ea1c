"""estimate_training_memory: agrees with measure_training_memory, is exact in B, leaves the model alone."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedprune.memory import CATEGORIES, OptimizerSpec, clear_cache, estimate_training_memory, \
    measure_training_memory, memory_model
from fedprune.memory import estimate as est_mod
from fedprune.models import build_model

SHAPE = (1, 28, 28)


def _rel(a, b):
    return abs(a - b) / b


@pytest.mark.parametrize("name,opt,batch", [
    ("lenet5", "sgd", 1), ("lenet5", "adam", 16), ("lenet300", "adam", 8), ("resnet8", "sgd", 4),
    ("resnet8", "adam", 8), ("vgg", "sgd", 8), ("vgg", "adam", 2),
])
def test_estimate_matches_measurement(name, opt, batch):
    model = build_model(name, seed=0)
    spec = OptimizerSpec(opt)
    est = estimate_training_memory(model, batch, SHAPE, spec)
    meas = measure_training_memory(model, batch, SHAPE, spec)
    assert _rel(est.total_bytes, meas.peak_bytes) <= 0.10  # the target
    assert _rel(est.total_bytes, meas.peak_bytes) <= 0.01  # currently exact: guard against regressions
    assert est.breakdown == meas.breakdown


def test_breakdown_sums_to_total_and_is_plausible():
    model = build_model("resnet8", seed=0)
    est = estimate_training_memory(model, 32, SHAPE, OptimizerSpec("adam"))
    assert sum(est.breakdown.values()) == est.total_bytes
    assert tuple(est.breakdown) == CATEGORIES
    n_params = sum(p.numel() * 4 for p in model.parameters())
    assert est.breakdown["params"] == n_params
    assert est.breakdown["optimizer_state"] >= 2 * n_params  # exp_avg + exp_avg_sq (+ step scalars)
    assert est.breakdown["input_batch"] == 32 * (28 * 28 * 4 + 8)
    assert est.breakdown["activations"] > 0 and est.peak_phase in ("forward", "backward", "step")


def test_affine_model_equals_direct_simulation(monkeypatch):
    model = build_model("resnet8", seed=0)
    affine = memory_model(model, SHAPE, "sgd", cache=False)
    monkeypatch.setattr(est_mod, "_fit_affine", lambda *a: None)
    direct = memory_model(model, SHAPE, "sgd", cache=False)
    assert affine.method == "affine" and direct.method == "direct"
    for b in (1, 3, 7):
        assert affine.peak_bytes(b) == direct.peak_bytes(b)
        assert affine.estimate(b).breakdown == direct.estimate(b).breakdown
    limit = affine.peak_bytes(5) + 10
    assert affine.max_batch(limit, 1, 64) == direct.max_batch(limit, 1, 64) == 5


def test_fast_meta_shortcuts_match_pytorch_meta_kernels(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(inplace=True), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
    for opt in ("sgd", "adam"):
        fast = memory_model(model, SHAPE, opt, cache=False)
        monkeypatch.setattr(est_mod, "FAST_META", False)
        slow = memory_model(model, SHAPE, opt, cache=False)
        monkeypatch.setattr(est_mod, "FAST_META", True)
        for b in (2, 9):
            assert fast.estimate(b) == slow.estimate(b)


def test_trainable_excludes_frozen_grads_and_state():
    model = build_model("lenet5", seed=0)
    head = {"fc2.weight", "fc2.bias"}
    full = estimate_training_memory(model, 8, SHAPE, "adam")
    frozen = estimate_training_memory(model, 8, SHAPE, "adam", trainable=head)
    head_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n in head)
    assert frozen.total_bytes < full.total_bytes
    assert frozen.breakdown["optimizer_state"] == 2 * head_bytes + 4 * len(head)  # + step counters
    meas = measure_training_memory(model, 8, SHAPE, "adam", trainable=lambda n, p: n in head)
    assert _rel(frozen.total_bytes, meas.peak_bytes) <= 0.01


def test_caller_model_is_untouched():
    model = build_model("resnet8", seed=0)
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    rng = torch.get_rng_state()
    estimate_training_memory(model, 4, SHAPE, "adam")
    measure_training_memory(model, 4, SHAPE, "adam")
    assert torch.equal(rng, torch.get_rng_state())
    assert calls == []  # hooks are not copied
    assert not model.training
    assert all(p.grad is None and p.device.type == "cpu" for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cache_hits_and_structure_changes():
    clear_cache()
    model = build_model("lenet5", seed=0)
    assert memory_model(model, SHAPE, "sgd") is memory_model(model, SHAPE, "sgd")
    small = build_model("lenet5", seed=0)
    small.fc1 = nn.Linear(800, 100)  # a hard-pruned fc1: the model physically shrank
    small.fc2 = nn.Linear(100, 10)
    assert memory_model(small, SHAPE, "sgd") is not memory_model(model, SHAPE, "sgd")
    assert estimate_training_memory(small, 8, SHAPE).total_bytes < estimate_training_memory(model, 8, SHAPE).total_bytes


def test_peak_is_monotone_in_batch():
    mm = memory_model(build_model("vgg", seed=0), SHAPE, "sgd")
    peaks = [mm.peak_bytes(b) for b in range(1, 300, 7)]
    assert peaks == sorted(peaks)


def test_validation():
    model = build_model("lenet5", seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_training_memory(model, 0, SHAPE)
    with pytest.raises(ValueError, match="input_shape"):
        estimate_training_memory(model, 4, ())
    with pytest.raises(ValueError, match="name"):
        OptimizerSpec("rmsprop")
    with pytest.raises(ValueError, match="momentum"):
        OptimizerSpec("sgd", momentum=1.5)


@dataclass(frozen=True)
class _SensitivityStep:
    """A custom step (extra backward pass, like SeReNe's): hashable, so it is cached."""

    def __call__(self, model, optimizer, x, y):
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        torch.autograd.grad(out.sum(), next(model.parameters()), retain_graph=True)
        loss.backward()
        optimizer.step()
        return loss.detach()


def test_custom_step_fn_is_estimated_exactly():
    model = build_model("lenet5", seed=0)
    step = _SensitivityStep()
    mm = memory_model(model, SHAPE, "sgd", step_fn=step)
    assert mm is memory_model(model, SHAPE, "sgd", step_fn=_SensitivityStep()) and mm.method == "affine"
    est = estimate_training_memory(model, 16, SHAPE, "sgd", step_fn=step)
    meas = measure_training_memory(model, 16, SHAPE, "sgd", step_fn=step)
    assert est.total_bytes == meas.peak_bytes
    assert est.total_bytes >= estimate_training_memory(model, 16, SHAPE, "sgd").total_bytes


def test_fully_frozen_model_is_rejected_clearly():
    with pytest.raises(ValueError, match="no trainable parameters"):
        estimate_training_memory(build_model("lenet5"), 4, SHAPE, trainable=set())


@dataclass(frozen=True)
class _QuadraticStep:
    """Allocates a B x B matrix: not affine in B, which the third probe must catch."""

    def __call__(self, model, optimizer, x, y):
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        sim = out @ out.t()  # (B, B)
        loss = F.cross_entropy(out, y) + sim.mean()
        loss.backward()
        optimizer.step()
        return loss.detach()


def test_non_affine_custom_step_falls_back_to_direct_simulation():
    model = build_model("lenet300", seed=0)
    mm = memory_model(model, SHAPE, "sgd", step_fn=_QuadraticStep(), cache=False)
    assert mm.method == "direct"
    b = 300
    est = mm.estimate(b)
    assert est.total_bytes == measure_training_memory(model, b, SHAPE, "sgd", step_fn=_QuadraticStep()).peak_bytes
    limit = mm.peak_bytes(200)
    assert mm.max_batch(limit, 1, 1024) == 200


def test_works_inside_no_grad_and_inference_mode():
    model = build_model("lenet5", seed=0)
    ref = estimate_training_memory(model, 8, SHAPE, "adam").total_bytes
    clear_cache()
    with torch.no_grad():
        assert estimate_training_memory(model, 8, SHAPE, "adam").total_bytes == ref
    clear_cache()
    with torch.inference_mode():
        assert estimate_training_memory(model, 8, SHAPE, "adam").total_bytes == ref
        assert measure_training_memory(model, 8, SHAPE, "adam").peak_bytes == ref
