"""max_batch_size / decide_batch / scale_lr."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprune.memory import MIB, OptimizerSpec, decide_batch, estimate_training_memory, max_batch_size, \
    measure_training_memory, scale_lr
from fedprune.models import build_model

SHAPE = (1, 28, 28)
LENET = build_model("lenet5", seed=0)
SGD = OptimizerSpec("sgd")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300 * MIB), min_size=2, max_size=8))
def test_max_batch_is_monotone_in_budget_and_fits(budgets):
    budgets = sorted(budgets)
    batches = [max_batch_size(LENET, b, SHAPE, SGD, max_batch=4096) for b in budgets]
    assert batches == sorted(batches)
    for budget, b in zip(budgets, batches):
        limit = math.floor(budget * 0.95)
        if b:
            assert estimate_training_memory(LENET, b, SHAPE, SGD).total_bytes <= limit
        if b < 4096:  # maximal: one more sample would not fit
            assert estimate_training_memory(LENET, b + 1, SHAPE, SGD).total_bytes > limit


@pytest.mark.parametrize("name,opt,budget_mb", [("lenet5", "sgd", 8), ("resnet8", "adam", 12)])
def test_returned_batch_really_fits(name, opt, budget_mb):
    model = build_model(name, seed=0)
    budget = budget_mb * MIB
    b = max_batch_size(model, budget, SHAPE, OptimizerSpec(opt))
    assert b > 1
    peak = measure_training_memory(model, b, SHAPE, OptimizerSpec(opt)).peak_bytes
    assert peak <= budget
    assert peak >= 0.9 * 0.95 * budget  # and it uses the budget


def test_zero_when_min_batch_does_not_fit_and_clamps():
    need_1 = estimate_training_memory(LENET, 1, SHAPE, SGD).total_bytes
    assert max_batch_size(LENET, need_1, SHAPE, SGD, margin=0.0) == 1
    assert max_batch_size(LENET, need_1 - 1, SHAPE, SGD, margin=0.0) == 0
    assert max_batch_size(LENET, 10**12, SHAPE, SGD, max_batch=64) == 64
    assert max_batch_size(LENET, 8 * MIB, SHAPE, SGD, min_batch=500) == 0
    with pytest.raises(ValueError, match="budget_bytes"):
        max_batch_size(LENET, -1, SHAPE, SGD)
    with pytest.raises(ValueError, match="min_batch"):
        max_batch_size(LENET, MIB, SHAPE, SGD, min_batch=8, max_batch=4)
    with pytest.raises(ValueError, match="margin"):
        max_batch_size(LENET, MIB, SHAPE, SGD, margin=1.0)


def test_decide_batch_respects_data_size_and_reports_does_not_fit():
    d = decide_batch(LENET, 64 * MIB, SHAPE, SGD, min_batch=8, max_batch=256, num_samples=40)
    assert d.fits and d.batch_size == 40 and d.max_batch == 40 and d.reason == "ok"
    d = decide_batch(LENET, 64 * MIB, SHAPE, SGD, min_batch=8, num_samples=5)
    assert d.fits and d.batch_size == 5 and d.min_batch == 5
    d = decide_batch(LENET, MIB, SHAPE, SGD)
    assert not d.fits and d.batch_size == 0 and d.reason == "does_not_fit"
    assert d.predicted_bytes > d.limit_bytes
    assert d.to_dict()["reason"] == "does_not_fit"


def test_shrinking_model_gets_a_growing_batch():
    big = build_model("lenet5", seed=0)
    small = build_model("lenet5", seed=0)
    import torch.nn as nn
    small.fc1, small.fc2 = nn.Linear(800, 50), nn.Linear(50, 10)
    budget = 6 * MIB
    assert max_batch_size(small, budget, SHAPE, SGD) > max_batch_size(big, budget, SHAPE, SGD)


def test_scale_lr_rules():
    assert scale_lr(0.1, 64, 32, "none") == 0.1
    assert scale_lr(0.1, 64, 32, "linear") == pytest.approx(0.2)
    assert scale_lr(0.1, 128, 32, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 8, 32, "linear") == pytest.approx(0.025)
    with pytest.raises(ValueError, match="rule"):
        scale_lr(0.1, 8, 32, "cubic")
    with pytest.raises(ValueError, match="batch"):
        scale_lr(0.1, 0, 32, "linear")
