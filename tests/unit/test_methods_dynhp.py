"""DynHP: the schedule reaches its target across rounds; the model shrinks and the batch grows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import synthetic_client_data as synthetic

from fedprune.memory import estimate_training_memory
from fedprune.methods.dynhp import count_params_for, normalize_scores
from fedprune.surgery import NeuronMask
from fedprune.train import TrainConfig, train_local


def test_normalize_scores_unit_norm_per_group():
    s = normalize_scores({"a": [3.0, 4.0], "b": [0.0, 0.0]})
    assert s["a"].tolist() == pytest.approx([0.6, 0.8]) and s["b"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("score", ["taylor", "l2"])
def test_schedule_reaches_target_by_the_last_round(lenet, score):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    data = synthetic(128)
    cfg = TrainConfig(epochs=1, lr=0.02, batch_size=32)
    dcfg = {"target_compression": 0.8, "end_progress": 0.75, "score": score, "score_samples": 32}
    model, state, compressions = graph.compact(dense, mask), None, []
    for r in range(4):
        res = train_local(model, mask, graph, data, cfg, "dynhp", {"dynhp": dcfg}, None, state, r, 4)
        assert res.mask.issubset(mask)
        model, mask, state = res.model, res.mask, res.method_state
        compressions.append(res.metrics["compression"])
    assert compressions == sorted(compressions)
    # events sit at the middles of the epoch's halves: the target (end_progress 0.75) is met at the
    # first event after it, in the last round
    assert compressions[2] >= 4.0 and compressions[-1] >= 5.0
    assert count_params_for(graph, mask) == sum(p.numel() for p in model.parameters())
    assert all(mask.num_alive(g) >= 2 for g in mask.names)


def test_model_shrinks_and_batch_grows_under_fixed_budget(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    budget = estimate_training_memory(model, 16, (1, 28, 28), "sgd").total_bytes + 1024
    data = synthetic(256, seed=2)
    cfg = TrainConfig(epochs=2, lr=0.02, batch_size=16, max_batch=256, lr_scaling="sqrt")
    res = train_local(model, mask, graph, data, cfg, "dynhp",
                      {"dynhp": {"target_compression": 0.8, "end_progress": 0.5, "score_samples": 32}},
                      budget)
    m = res.metrics
    batches = [int(b) for b in m["batch_sizes"].split(",")]
    assert batches[0] <= 16 and m["batch_final"] > 2 * batches[0]
    assert batches == sorted(batches)
    assert m["params_alive"] * 5 <= m["params_dense"]
    assert m["structural_changes"] >= 2 and m["neurons_pruned"] > 0
    assert m["measured_peak_bytes"] <= budget or m["violations"] > 0
    assert m["lr_final"] > cfg.lr


def test_no_pruning_event_after_the_last_step():
    from types import SimpleNamespace

    from fedprune.methods.config import DynHPConfig
    from fedprune.methods.dynhp import DynHP

    fired = []
    method = DynHP(DynHPConfig(prunes_per_epoch=2))
    method.prune_now = lambda ctx: fired.append(ctx.epoch_fraction)
    ctx = SimpleNamespace(epoch_fraction=0.0, train_x=torch.zeros(8, 1), batch_size=1)
    method.epoch_start(ctx)
    for f in (0.125, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0):
        ctx.epoch_fraction = f
        method.step_end(ctx)
    assert fired == [0.25, 0.75]  # the middles of the two halves; steps follow each event


def test_an_epoch_of_one_step_prunes_before_it():
    from types import SimpleNamespace

    from fedprune.methods.config import DynHPConfig
    from fedprune.methods.dynhp import DynHP

    fired = []
    method = DynHP(DynHPConfig(prunes_per_epoch=2))
    method.prune_now = lambda ctx: fired.append(ctx.epoch_fraction)
    ctx = SimpleNamespace(epoch_fraction=0.0, train_x=torch.zeros(180, 1), batch_size=180)
    method.epoch_start(ctx)
    ctx.epoch_fraction = 1.0
    method.step_end(ctx)
    assert fired == [0.0]  # one event, before the epoch's only step
    fired.clear()  # three steps of 64 out of 150: the point at 0.75 moves before the last step
    ctx = SimpleNamespace(epoch_fraction=0.0, train_x=torch.zeros(150, 1), batch_size=64)
    method.epoch_start(ctx)
    for f in (64 / 150, 128 / 150, 1.0):
        ctx.epoch_fraction = f
        method.step_end(ctx)
    assert fired == [64 / 150, 128 / 150]


def test_momentum_of_surviving_neurons_is_kept(lenet):
    from fedprune.methods.optim_carry import restore_rows, save_rows

    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = synthetic(64)
    torch.nn.functional.cross_entropy(model(data.train_x[:16]), data.train_y[:16]).backward()
    opt.step()
    arrays = mask.to_arrays()
    arrays["conv2"][[0, 5, 9]] = False
    arrays["fc1"][:100] = False
    new = NeuronMask.from_arrays(graph, arrays)
    saved = save_rows(mask, model, opt)
    small = graph.prune(model, mask, new)
    opt2 = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9)
    assert restore_rows(graph, new, small, opt2, saved) == len(list(small.parameters()))
    old_buf = opt.state[model.conv2.weight]["momentum_buffer"]
    new_buf = opt2.state[small.conv2.weight]["momentum_buffer"]
    keep = torch.as_tensor(arrays["conv2"].nonzero()[0])
    assert torch.equal(new_buf, old_buf[keep])
    old_fc1 = opt.state[model.fc1.weight]["momentum_buffer"]
    assert torch.equal(opt2.state[small.fc1.weight]["momentum_buffer"],
                       old_fc1[100:][:, torch.as_tensor(np.repeat(arrays["conv2"], 16).nonzero()[0])])


def test_memory_saved_is_reported_at_the_runs_own_batch(lenet):
    dense, graph = lenet
    mask = NeuronMask.full(graph)
    model = graph.compact(dense, mask)
    budget = estimate_training_memory(model, 16, (1, 28, 28), "sgd").total_bytes + 1024
    cfg = TrainConfig(epochs=1, lr=0.02, batch_size=16, max_batch=256)
    res = train_local(model, mask, graph, synthetic(128, seed=3), cfg, "dynhp",
                      {"dynhp": {"target_compression": 0.8, "end_progress": 0.5, "score_samples": 32}},
                      budget)
    m = res.metrics
    b = m["batch_final"]
    assert b > 16  # the freed memory went into the batch
    assert m["dynhp_dense_peak_at_batch_bytes"] == estimate_training_memory(
        graph.build_compact(graph.full_mask()), b, (1, 28, 28), "sgd").total_bytes
    assert m["dynhp_dense_peak_at_batch_bytes"] > budget  # dense would not fit at that batch
    assert 0 < m["dynhp_memory_saved_at_batch_frac"] < 1


def test_lr_scaling_default_is_the_measured_winner():
    """The [train] lr-scaling default is the rule bench_dynhp.py measured as the most accurate."""
    import json
    from pathlib import Path

    from fedprune.config import TrainSection

    result = Path(__file__).resolve().parents[2] / "bench" / "results" / "dynhp.json"
    d = json.loads(result.read_text())
    if d.get("quick") or "lr_rule_winner" not in d:
        pytest.skip("no full lr-rule measurement in bench/results/dynhp.json")
    assert TrainSection.lr_scaling == d["lr_rule_winner"]


def test_reindex_equals_the_dense_round_trip_and_refuses_revival(lenet):
    from fedprune.surgery import MaskError

    dense, graph = lenet
    full = NeuronMask.full(graph)
    arrays = full.to_arrays()
    arrays["conv1"][[1, 4]] = False
    arrays["fc1"][::3] = False
    old = NeuronMask.from_arrays(graph, arrays)
    arrays["conv2"][[2, 7]] = False
    arrays["fc1"][10:60] = False
    new = NeuronMask.from_arrays(graph, arrays)
    compact = graph.compact_state_dict(dense.state_dict(), old)
    via_dense = graph.compact_state_dict(graph.expand(compact, old), new)
    direct = graph.reindex(compact, old, new)
    assert direct.keys() == compact.keys()
    for k, t in direct.items():
        assert torch.equal(t, via_dense[k]), k
    with pytest.raises(MaskError):
        graph.reindex(graph.compact_state_dict(dense.state_dict(), new), new, old)
