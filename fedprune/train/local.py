"""``train_local``: what a federated client (or the centralized mode) runs for one round.

It owns the compact model, the optimizer, the batch size and the memory accounting; the enabled
methods (:mod:`fedprune.methods`) act through hooks (see :mod:`fedprune.methods.base`). The batch
and memory rules are in :mod:`fedprune.train.budgeting`, the loop in :mod:`fedprune.train.loop`.
No Flower import here: the Flower client app wraps this function.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fedprune.memory import max_batch_size
from fedprune.memory.resident import RESIDENT, close_round, open_round
from fedprune.memory.warmup import warm_up
from fedprune.methods import build_methods, parse_methods
from fedprune.methods.flops import dense_bprop_flops, layer_costs
from fedprune.methods.sites import build_sites
from fedprune.train.context import ClientData, TrainConfig, TrainContext, TrainResult
from fedprune.train.evaluation import evaluate
from fedprune.train.budgeting import ReferenceStep
from fedprune.train.loop import LocalTrainer
from fedprune.train.round_plan import apply_round_plan, fit_batch_or_shrink
from fedprune.train.metrics import build_metrics, dense_params


def _dense_reference_flops(graph, example: torch.Tensor) -> int:
    """Backward FLOPs per sample of the dense reference architecture (shapes only, on meta)."""
    try:
        ref = graph.build_compact(graph.full_mask(), device="meta")
        return dense_bprop_flops(layer_costs(ref, example.to("meta")))
    except Exception:  # pragma: no cover - a module that cannot run on meta
        return dense_bprop_flops(layer_costs(graph.build_compact(graph.full_mask()), example))


def _split_state(state: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    prefix = f"{name}/"
    return {k[len(prefix):]: v for k, v in (state or {}).items() if k.startswith(prefix)}


def _start(trainer: LocalTrainer, batch: int) -> None:
    """Set the first batch, build the optimizer, run the methods' ``begin`` and bind them."""
    ctx = trainer.ctx
    ctx.batch_size = batch
    trainer.build_optimizer()
    trainer.budget.set_batch(trainer.budget.probed(batch))
    for m in trainer.methods:
        m.begin(ctx)
    trainer.dense_reference_flops = _dense_reference_flops(ctx.graph, trainer.example())
    trainer.bind()


def _train(trainer: LocalTrainer) -> tuple[float, float]:
    """Run the loop; methods are detached and every ``requires_grad`` is restored, even on error."""
    try:
        return trainer.run()
    finally:
        for m in trainer.methods:
            m.detach(trainer.ctx)
        for p in trainer.ctx.model.parameters():
            p.requires_grad_(True)


def _model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each storage once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers()]}
    return int(sum(storages.values()))


#: the rehearsal trains on this many batches (of the largest batch the budget could hold)
REHEARSAL_BATCHES = 3
#: rehearsals per call until one trains: the first one's own one-time costs (the methods' and the
#: trainer's first setup) are held in its round and can make min-batch look too large; a second
#: one runs with them resident, as every real round will
REHEARSAL_TRIES = 2


def _largest_batch(model: nn.Module, data: ClientData, cfg: TrainConfig, budget_bytes: int) -> int:
    """The largest batch whose predicted plain step fits ``budget_bytes`` (at least ``cfg.min_batch``)."""
    hi = max(cfg.min_batch, min(cfg.max_batch, len(data.train_x)))
    b = max_batch_size(model, int(budget_bytes), tuple(data.train_x.shape[1:]), cfg.optimizer,
                       min_batch=min(cfg.min_batch, hi), max_batch=hi, step_fn=ReferenceStep())
    return max(int(cfg.min_batch), int(b or 0))


def warm_up_process(model: nn.Module, mask, graph, data: ClientData, cfg: TrainConfig, names: list[str],
                    method_cfgs: Mapping[str, Any] | None = None, budget_bytes: int | None = None) -> bool:
    """Measure this process's resident-memory figures for the model class and methods, once per
    process; a no-op (False) unless ``start_client_process`` ran.

    Two parts: the plain steps of :func:`fedprune.memory.warmup.warm_up` (allocator slope, one-time
    costs), then, with a budget, a rehearsal: one ``train_local`` round under that budget on a copy
    of the model and a few batches of the data. The rehearsal runs the trainer's own code (batch
    fit, memory measurements, the methods' passes), so its one-time costs join the baseline and the
    host memory it holds beyond the prediction is learned (``RESIDENT.fixed_bytes`` and
    ``retained_bytes``) before a real round starts. The plain steps run once per key; a rehearsal
    that did not fit (nothing trained) is repeated once at once (``REHEARSAL_TRIES``) and again at
    the next call, e.g. after prune-to-fit, without repeating the plain steps (their one-time costs
    are resident already). Model, mask, data and the global RNG are untouched.
    """
    key = f"{type(model).__name__}|{'+'.join(names)}|{tuple(data.train_x.shape[1:])}"
    if not RESIDENT.enabled or RESIDENT.warming:
        return False
    warmed = warm_up(key, model, cfg.optimizer, data.train_x, data.train_y, ReferenceStep(), cfg.min_batch)
    if budget_bytes is None or key in RESIDENT.rehearsed:
        return warmed
    n = min(len(data.train_x), REHEARSAL_BATCHES * _largest_batch(model, data, cfg, budget_bytes))
    val_x, val_y = (data.val_x, data.val_y) if data.val_x is not None and len(data.val_x) else (None, None)
    part = ClientData(data.train_x[:n], data.train_y[:n], None if val_x is None else val_x[:n],
                      None if val_y is None else val_y[:n])
    RESIDENT.warming = True
    try:
        for _ in range(REHEARSAL_TRIES):
            with torch.random.fork_rng(devices=[]):
                res = train_local(copy.deepcopy(model), copy.deepcopy(mask), graph, part, cfg, names,
                                  method_cfgs, budget_bytes)
            if not res.metrics.get("does_not_fit"):  # otherwise nothing trained: rehearse again
                RESIDENT.rehearsed.add(key)
                break
    finally:
        RESIDENT.warming = False
    return True


def train_local(model: nn.Module, mask, graph, data: ClientData, cfg: TrainConfig, methods: list[str] | str,
                method_cfgs: Mapping[str, Any] | None, budget_bytes: int | None,
                method_state: Mapping[str, Any] | None = None, round_idx: int = 0, num_rounds: int = 1, *,
                epoch_callback: Callable[[int, TrainContext, dict], None] | None = None) -> TrainResult:
    """Train ``model`` (compact for ``mask``) on ``data`` for ``cfg.epochs`` with the enabled methods.

    ``round_idx`` is 0-based (``0 <= round_idx < num_rounds``); schedules use the total progress
    over all rounds. ``method_state`` is the ``method_state`` of this client's previous result (flat
    ``"<method>/<key>"`` -> numpy array or scalar), or None.

    Guarantees: never raises because the model does not fit (then ``metrics["does_not_fit"] == 1``,
    ``num_examples == 0`` and model, mask and method state come back unchanged); the returned model
    is compact for the returned mask, a subset of ``mask`` (the input model may have been trained in
    place); every measured step peak is <= ``budget_bytes`` or counted in ``metrics["violations"]``;
    the methods' round plans (``Method.plan_round``: a baseline's sub-network, fixed batch, no
    budget, or a skip, which counts as "does not fit") are applied before the first batch fit;
    the batch is refitted at the start and after every structural change; all ``requires_grad``
    flags are restored; ``metrics`` is flat and JSON-able; ``method_state`` holds only numpy arrays
    and scalars. Raises ``ValueError`` for an invalid config, method name or round index.
    """
    t_start = time.perf_counter()
    cfg.validate()
    names = parse_methods(methods if isinstance(methods, str) else "+".join(methods) or "none")
    if not 0 <= round_idx < num_rounds:
        raise ValueError(f"round_idx={round_idx} must be in [0, num_rounds={num_rounds})")
    budget_bytes = None if budget_bytes is None else max(0, int(budget_bytes))
    if budget_bytes is not None and not RESIDENT.warming:
        warm_up_process(model, mask, graph, data, cfg, names, method_cfgs, budget_bytes)
    window, opened = open_round(_model_bytes(model))
    try:
        result = _train_round(model, mask, graph, data, cfg, names, method_cfgs, budget_bytes, method_state,
                              round_idx, num_rounds, epoch_callback, window)
    finally:
        physical = close_round(window, opened, budget_bytes)
    result.metrics.update(physical)
    result.metrics["wall_seconds"] = time.perf_counter() - t_start
    return result


def _train_round(model, mask, graph, data, cfg, names, method_cfgs, budget_bytes, method_state, round_idx,
                 num_rounds, epoch_callback, window) -> TrainResult:
    """The body of ``train_local`` inside the round's RSS window (the same guarantees)."""
    t_start = time.perf_counter()
    ctx = TrainContext(model, mask, graph, data, cfg, round_idx, num_rounds, budget_bytes)
    trainer = LocalTrainer(ctx, build_methods(names, method_cfgs), epoch_callback)
    trainer.budget.window = window
    model.train()
    base = {"methods": "+".join(names) or "none", "budget_bytes": budget_bytes or 0,
            "params_dense": dense_params(graph), "neurons_dense": int(mask.num_total())}

    def not_fit(reason: str) -> TrainResult:
        trainer.budget.report.mark_does_not_fit(reason)
        try:
            predicted = trainer.budget.predicted_peak(cfg.min_batch)
        except Exception:  # pragma: no cover - the estimate itself failed
            predicted = 0
        metrics = build_metrics(base, trainer, model, mask, reason=reason, predicted_peak=predicted,
                                wall_seconds=time.perf_counter() - t_start)
        return TrainResult(model, mask, 0, metrics, dict(method_state or {}))

    for m in trainer.methods:
        m.load_state_dict(_split_state(method_state, m.name))
    ctx.sites = build_sites(graph, model, mask)  # methods' state sizes depend on them
    skip = apply_round_plan(trainer)
    if skip:
        return not_fit(skip)
    batch = fit_batch_or_shrink(trainer)
    if batch == 0:
        return not_fit(f"min_batch={ctx.cfg.min_batch} does not fit budget_bytes={budget_bytes}")
    _start(trainer, batch)
    neurons_before = ctx.mask.num_alive()
    train_loss, train_acc = _train(trainer)
    if trainer.out_of_memory and trainer.stats["steps"] == 0:
        return not_fit("out of memory at min_batch")
    ctx.model.train()
    val_loss, val_acc = evaluate(ctx.model, ctx.val_x, ctx.val_y, ctx.eval_batch)
    losses = {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc}
    metrics = build_metrics(base, trainer, ctx.model, ctx.mask, num_examples=len(data.train_x), losses=losses,
                            neurons_before=neurons_before, wall_seconds=time.perf_counter() - t_start)
    state = {f"{m.name}/{k}": v for m in trainer.methods for k, v in m.state_dict().items()}
    return TrainResult(ctx.model, ctx.mask, int(len(data.train_x)), metrics, state)
