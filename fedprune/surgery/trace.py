"""Find neuron groups with torch-pruning's ``DependencyGraph`` (the only tp user here).

``trace_groups`` asks torch-pruning for every dependency group rooted at a conv or
linear layer and converts each into a :class:`~fedprune.surgery.groups.NeuronGroup`
with exact per-layer index maps (tp's ``_HybridIndex.root_idx`` gives, for every
affected position, the root neuron it belongs to: this covers flatten, where one
conv channel feeds ``H*W`` linear features, and channel concatenations).

A group is kept only if every op in it is known to act channel by channel, so that
removing channel ``j`` everywhere in the group is exactly "neuron ``j`` is gone":

* layers: ``nn.Conv2d`` (dense or depthwise with in == out == groups), ``nn.Linear``,
  ``nn.BatchNorm*``;
* tensor ops: concatenation on the channel dim, flatten/view, and the element-wise
  ops in :data:`CHANNELWISE_OPS` (activations, pooling, add/mul, spatial means).

Groups that reach the network output are never prunable. Other groups (grouped
convs, LayerNorm, channel shuffles, splits, transposes, unknown ops, ...) are left
dense and reported in ``TraceResult.unsupported`` with the reason.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .groups import ROLE_TENSORS, LayerRole, NeuronGroup

OPTYPE = tp.ops.OPTYPE

# Element-wise autograd ops that treat every channel independently (grad_fn names
# without the trailing version digit). Reductions are checked separately.
CHANNELWISE_OPS = frozenset({
    "ReluBackward", "HardtanhBackward", "ThresholdBackward", "LeakyReluBackward",
    "EluBackward", "GeluBackward", "SiluBackward", "MishBackward", "SoftplusBackward",
    "SigmoidBackward", "TanhBackward", "HardswishBackward", "HardsigmoidBackward",
    "ClampBackward", "ClampMinBackward", "ClampMaxBackward", "NegBackward",
    "AddBackward", "SubBackward", "MulBackward", "DivBackward",
    "MaxPool2DWithIndicesBackward", "AvgPool2DBackward", "AdaptiveAvgPool2DBackward",
    "AdaptiveMaxPool2DBackward", "UpsampleNearest2DBackward", "UpsampleBilinear2DBackward",
    "CloneBackward", "AliasBackward", "ToCopyBackward",
})
REDUCTIONS = frozenset({"MeanBackward", "SumBackward", "AmaxBackward"})
# Ops with op(x + d) == op(x) + d for a per-channel constant d (a conv's folded bias can
# travel through them to a BatchNorm's running_mean).
SHIFT_EQUIVARIANT_OPS = frozenset({
    "AddBackward", "MaxPool2DWithIndicesBackward", "AdaptiveAvgPool2DBackward",
    "AdaptiveMaxPool2DBackward", "CloneBackward", "AliasBackward"})


@dataclass
class TraceResult:
    """Everything the surgery needs from one trace, as plain data (no tp objects)."""

    groups: list[NeuronGroup]
    unsupported: dict[str, str] = field(default_factory=dict)  # group name -> reason
    layers: list[tuple[str, int, str | None]] = field(default_factory=list)  # (layer, out size, group)
    next_bn: dict[str, str] = field(default_factory=dict)  # conv/linear -> BatchNorm fed only by it
    # conv/linear -> BatchNorms that see its output only through concatenations and adds
    # (every path ends in one of them), so they can absorb a constant shift of it.
    shift_bns: dict[str, list[str]] = field(default_factory=dict)
    output_layers: list[str] = field(default_factory=list)


def _op_name(node) -> str:
    return re.sub(r"\d+$", "", node.grad_fn.name()) if node.grad_fn is not None else "?"


def _reduction_keeps_channels(grad_fn) -> bool:
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dims = getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dims is None:
        return False
    nd = len(sizes)
    dims = [int(d) % nd for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    return nd >= 2 and 1 not in dims and 0 not in dims


def _classify(DG, node, name: str | None) -> tuple[str | None, str | None]:
    """``(kind, reason)`` for one node of a group: kind for parameter layers, reason if unsupported."""
    m, t = node.module, node.type
    if t == OPTYPE.CONV:
        if not isinstance(m, nn.Conv2d):
            return None, f"{type(m).__name__} {name}"
        if m.transposed or m.groups != 1:
            return None, f"grouped conv {name} (groups={m.groups})"
        return "conv", None
    if t == OPTYPE.DEPTHWISE_CONV:
        if not isinstance(m, nn.Conv2d) or not (m.in_channels == m.out_channels == m.groups):
            return None, f"grouped conv {name} (groups={m.groups})"
        return "depthwise", None
    if t == OPTYPE.LINEAR:
        return "linear", None
    if t == OPTYPE.BN:
        return "batchnorm", None
    if t == OPTYPE.RESHAPE:
        return None, None
    if t == OPTYPE.CONCAT:
        if getattr(node.grad_fn, "_saved_dim", 1) != 1 or m.offsets is None:
            return None, "concatenation outside the channel dim"
        return None, None
    if t == OPTYPE.ELEMENTWISE:
        op = _op_name(node)
        if op == "TBackward" and not node.inputs:  # a linear layer's weight.t()
            return None, None
        if op in REDUCTIONS and _reduction_keeps_channels(node.grad_fn):
            return None, None
        if op in CHANNELWISE_OPS:
            return None, None
        return None, f"op {op} is not known to be channel-wise"
    return None, f"{t.name.lower()} {name or type(m).__name__}"


def _is_network_output(DG, node, handler) -> bool:
    """Does this group item put channels into a tensor the network returns?"""
    if node.type == OPTYPE.OUTPUT:
        return True
    if node.outputs:
        return False
    pruner = DG.get_pruner_of_module(node.module)
    return node.type not in (OPTYPE.CONV, OPTYPE.LINEAR) or handler == pruner.prune_out_channels


def _convert(DG, group, names: dict) -> tuple[list[tuple], str | None, bool]:
    """tp group -> ``([(module, kind, role, index, neuron)], unsupported reason, reaches output)``."""
    items, reason = [], None
    for item in group:
        node, handler = item.dep.target, item.dep.handler
        if _is_network_output(DG, node, handler):
            return [], None, True
        name = names.get(node.module)
        kind, why = _classify(DG, node, name)
        reason = reason or why
        if kind is None:
            continue
        if kind in ("conv", "linear"):
            role = "out" if handler == DG.get_pruner_of_module(node.module).prune_out_channels else "in"
        else:
            role = "depthwise" if kind == "depthwise" else "norm"
        idx = np.asarray(item.idxs, dtype=np.int64)
        root = np.asarray(item.root_idxs, dtype=np.int64)
        items.append((name, kind, role, idx, root))
    return items, reason, False


def _renumber(items: list[tuple], name: str, size: int) -> list[tuple]:
    """Number neurons by the named producer's output channel (tp's root choice may differ)."""
    for mod, _, role, idx, root in items:
        if mod == name and role in ("out", "depthwise"):
            perm = np.empty(size, dtype=np.int64)
            perm[root] = idx
            return [(m, k, r, i, perm[n]) for m, k, r, i, n in items]
    return items


def _passes_shift(node) -> bool:
    """Does ``op(x + d) == op(x) + d`` hold for a per-channel constant ``d``?"""
    if node.type == OPTYPE.CONCAT:
        return True
    if node.type != OPTYPE.ELEMENTWISE:
        return False
    op = _op_name(node)
    if op == "AvgPool2DBackward":  # zero padding counted in the average scales borders
        fn = node.grad_fn
        return not any(getattr(fn, "_saved_padding", [1])) or not getattr(
            fn, "_saved_count_include_pad", True)
    if op in REDUCTIONS and op != "SumBackward":
        return _reduction_keeps_channels(node.grad_fn)
    return op in SHIFT_EQUIVARIANT_OPS


def _shift_absorbing_bns(node) -> list | None:
    """BatchNorm nodes that absorb a per-channel shift of ``node``'s output, or None.

    Walks forward through ops that pass a constant shift through unchanged
    (concatenation, addition, max/average pooling); every path must end in a BatchNorm.
    """
    stack, seen, bns = list(node.outputs), set(), []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type == OPTYPE.BN:
            bns.append(n)
        elif n.outputs and _passes_shift(n):
            stack.extend(n.outputs)
        else:
            return None
    return bns or None


def trace_groups(model: nn.Module, example_input: torch.Tensor,
                 ignored_layers: tuple[str, ...] = ()) -> TraceResult:
    """Trace ``model`` (a deep copy; the model is not touched) and return its neuron groups.

    Guarantees: groups are ordered by their name's position in ``named_modules()``;
    every position of every layer axis belongs to at most one group; no group
    contains a layer that feeds the network output.
    """
    work = copy.deepcopy(model)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DG = tp.DependencyGraph().build_dependency(work, example_inputs=example_input, verbose=False)
        ignored = [work.get_submodule(n) for n in ignored_layers]
        tp_groups = list(DG.get_all_groups(ignored_layers=ignored,
                                           root_module_types=(nn.Conv2d, nn.Linear)))
    names = {m: n for n, m in work.named_modules()}
    result = TraceResult(groups=[])
    _collect_groups(DG, tp_groups, names, set(work.state_dict()), result)
    _collect_layers(DG, names, result)
    return result


def _collect_groups(DG, tp_groups, names: dict, keys: set[str], result: TraceResult) -> None:
    """Convert tp groups into :class:`NeuronGroup`s (or unsupported/output entries)."""
    order = {n: i for i, n in enumerate(names.values())}
    for g in tp_groups:
        items, reason, is_output = _convert(DG, g, names)
        if is_output:
            result.output_layers.extend(
                names[it.dep.target.module] for it in g if it.dep.target.module in names
                and it.dep.handler == DG.get_pruner_of_module(it.dep.target.module).prune_out_channels)
            continue
        producers = sorted({m for m, _, r, _, _ in items if r in ("out", "depthwise")}, key=order.get)
        root = g[0].dep.target.module
        gname = producers[0] if producers else names.get(root, f"group{len(result.groups)}")
        if reason is not None:
            result.unsupported[gname] = reason
            continue
        size = int(DG.get_pruner_of_module(root).get_out_channels(root))
        roles = tuple(
            LayerRole(module=m, kind=k, role=r, index=i, neuron=n, tensors=tuple(
                (key, d) for t, d in ROLE_TENSORS[(k, r)]
                if (key := f"{m}.{t}" if m else t) in keys))
            for m, k, r, i, n in sorted(_renumber(items, gname, size),
                                        key=lambda it: (order[it[0]], it[2])))
        result.groups.append(NeuronGroup(name=gname, size=size, layers=roles))
    result.groups.sort(key=lambda grp: order[grp.name])


def _collect_layers(DG, names: dict, result: TraceResult) -> None:
    """Per conv/linear layer: size, owning group, and the BatchNorms after it."""
    order = {n: i for i, n in enumerate(names.values())}
    owner = {p: g.name for g in result.groups for p in g.producers}
    for m, node in DG.module2node.items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m not in names:
            continue
        name = names[m]
        outs = set(node.outputs)
        if len(outs) == 1:
            nxt = next(iter(outs))
            if nxt.type == OPTYPE.BN and set(nxt.inputs) == {node}:
                result.next_bn[name] = names[nxt.module]
        bns = _shift_absorbing_bns(node)
        if bns is not None:
            result.shift_bns[name] = sorted((names[b.module] for b in bns), key=order.get)
        size = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        result.layers.append((name, int(size), owner.get(name)))
    result.layers.sort(key=lambda it: order[it[0]])
