"""Resident memory of this process (fedprune.memory.process) and the resident model's bookkeeping."""

import pytest

from fedprune.memory import process
from fedprune.memory.resident import MAX_SLOPE, ResidentModel, close_round, open_round

MIB = 2**20


def test_rss_and_high_water_mark_are_read():
    assert process.rss_bytes() > MIB
    assert process.peak_rss_bytes() >= process.rss_bytes() - MIB


def test_window_sees_a_short_spike_after_it_is_freed():
    w = process.PeakWindow().start()
    blob = bytearray(64 * MIB)
    blob[::4096] = b"1" * len(range(0, 64 * MIB, 4096))
    del blob
    assert w.growth_bytes() >= 60 * MIB
    w.new_segment()
    assert w.segment_peak_bytes() - w.start_bytes < 60 * MIB  # the segment starts after the spike
    assert w.growth_bytes() >= 60 * MIB  # the window keeps it
    w.stop()


def test_allocator_settings_are_checked_and_exported():
    with pytest.raises(ValueError, match="mmap_thresh"):
        process.allocator_env({"mmap_thresh": 1})
    with pytest.raises(ValueError, match="arena_max"):
        process.configure_allocator({"arena_max": 0})
    env = process.allocator_env({"mmap_threshold": 65536})
    assert env == {"MALLOC_MMAP_THRESHOLD_": "65536", **process.KERNEL_CACHE_ENV}
    assert process.env_allocator_setting(env) == {"mmap_threshold": 65536}
    assert process.configure_allocator({"mmap_threshold": 65536}) == {"mmap_threshold": 65536}


def test_resident_model_reserves_fixed_cost_and_slope_only_when_enabled():
    m = ResidentModel(fixed_bytes=2 * MIB, slope=1.25)
    assert m.tensor_budget(22 * MIB) == 22 * MIB  # library use: tensor bytes only
    m.enabled = True
    assert m.tensor_budget(22 * MIB) == 16 * MIB
    # held RSS is taken off the room; live tensors (already held) are part of the tensor peak
    assert m.tensor_budget(22 * MIB, held_bytes=5 * MIB, live_bytes=3 * MIB) == 15 * MIB
    assert m.tensor_budget(22 * MIB, held_bytes=21 * MIB) == 0


def test_resident_model_learns_what_a_step_and_the_round_hold_beyond_the_prediction():
    m = ResidentModel(fixed_bytes=0, slope=1.0, enabled=True)
    wide, narrow = ((16, 1, 5, 5),), ((9, 1, 5, 5),)
    m.observe(10 * MIB, 4 * MIB, 6 * MIB, wide)  # as predicted: the warm-up's slope holds
    assert m.slopes[wide] == 1.0 and m.fixed_bytes == 0
    m.observe(11 * MIB, 4 * MIB, 6 * MIB, narrow)  # 1 MiB more, on other layer shapes: their slope
    assert m.slopes[narrow] == 1.25 and m.fixed_bytes == 0
    assert m.slope_for(wide) == 1.0 and m.slope_for(((3, 1, 5, 5),)) == 1.25  # unmeasured: the largest
    assert m.tensor_budget(20 * MIB, key=narrow) == 16 * MIB and m.tensor_budget(20 * MIB, key=wide) == 20 * MIB
    m.observe(8 * MIB, 2 * MIB, 6 * MIB, narrow)  # a step that needs less never lowers a slope
    assert m.slopes[narrow] == 1.25
    m.observe(10 * MIB, 1 * MIB, 6 * MIB, wide)  # 4 MiB for 1 MiB of tensors: slope capped, rest fixed
    assert m.slopes[wide] == MAX_SLOPE and m.fixed_bytes == 2 * MIB
    m.observe_retained(5 * MIB, 3 * MIB)  # 2 MiB held between steps beyond the new live tensors
    assert m.retained_bytes == 2 * MIB
    assert m.tensor_budget(20 * MIB, key=wide) == 8 * MIB  # (20 - 2 fixed - 2 retained) / 2


def test_round_metrics_flag_a_physical_violation():
    w, opened = open_round()
    blob = bytearray(32 * MIB)
    blob[::4096] = b"1" * len(range(0, 32 * MIB, 4096))
    out = close_round(w, opened, 8 * MIB)
    del blob
    assert opened and out["physical_peak_bytes"] >= 30 * MIB and out["physical_violation"] == 1


def test_counting_nonzero_parameters_needs_no_memory_of_the_model_size():
    """Round metrics run inside the client's budget: counting must not allocate per element."""
    import torch

    from fedprune.train.metrics import nonzero_params

    model = torch.nn.Linear(2000, 1000)  # 2 M parameters, 8 MB
    with torch.no_grad():  # no exact zeros but the chosen ones (a random init can draw a 0.0)
        model.weight.fill_(0.5)
        model.bias.fill_(-0.5)
        model.weight[:, ::2] = 0
    w = process.PeakWindow().start()
    assert nonzero_params(model) == 1000 * 1000 + 1000
    assert w.growth_bytes() < MIB  # ``(p != 0).sum()`` peaked at ~30 bytes per element
    w.stop()
