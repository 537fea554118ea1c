"""Memory budgets for local training: estimate, measure, size batches, follow budgets.

Training memory = peak of live tensor-storage bytes during one steady-state training
step (params, buffers, grads, optimizer state, input batch, saved activations,
transients). See docs/memory.md for the model, its accuracy and integration notes.
No Flower imports here.
"""

from fedprune.memory.batch import LR_RULES, BatchDecision, decide_batch, max_batch_size, scale_lr
from fedprune.memory.budget import BUDGET_KINDS, MIB, BudgetSchedule, BudgetSpec, make_budget_schedule
from fedprune.memory.estimate import MemoryEstimate, TrainingMemoryModel, clear_cache, \
    estimate_training_memory, memory_model
from fedprune.memory.guard import OOMEvent, is_oom_error, run_with_oom_guard
from fedprune.memory.measure import MemoryMeasurement, measure_training_memory
from fedprune.memory.optim import OptimizerSpec
from fedprune.memory.report import MemoryReport
from fedprune.memory.step import make_batch, train_step
from fedprune.memory.tracker import CATEGORIES, PeakMemoryTracker

__all__ = [
    "BUDGET_KINDS", "BatchDecision", "BudgetSchedule", "BudgetSpec", "CATEGORIES", "LR_RULES", "MIB", "MemoryEstimate", "MemoryMeasurement",
    "MemoryReport", "OOMEvent", "OptimizerSpec", "PeakMemoryTracker", "TrainingMemoryModel", "clear_cache",
    "decide_batch", "estimate_training_memory", "is_oom_error", "make_batch", "make_budget_schedule",
    "max_batch_size", "measure_training_memory", "memory_model", "run_with_oom_guard", "scale_lr",
    "train_step",
]
