"""``NeuronGraph``: the prunable neuron groups of one architecture and all surgery on them.

Built once per architecture from a dense reference model and an example input
(:meth:`NeuronGraph.from_model`); afterwards it is plain data (no torch-pruning
objects, no weights: the architecture template lives on the ``meta`` device).

Coordinate systems. Masks and dense state dicts use the *dense reference*
coordinates. A compact model for mask ``m`` keeps, along every neuron axis, the
alive positions in increasing dense order; nothing else is reordered.

Invariants (for any valid masks ``m`` and ``n <= m``):

* ``compact(model, m)`` and ``zero_pruned(model, m)`` compute the same function in
  eval mode (up to float rounding; see :mod:`fedprune.surgery.folding` for the one
  documented inexact case, which warns);
* ``prune(c, m, n)`` and ``zero_pruned(c, n, current=m)`` compute the same function
  for a model ``c`` shaped by ``m`` (removal only ever zeroes *incoming weights*;
  a neuron's bias, including constants folded into it earlier, is kept);
* compact state dicts have exactly the dense keys (plus :attr:`extra_keys`, empty for
  every conv/linear that has a bias or feeds a BatchNorm), with smaller shapes;
* ``compact_state_dict(expand(sd, m), m) == sd`` bit for bit, and
  ``expand(compact_state_dict(d, m), m) == d * coordinate_masks(m)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import MaskError, SurgeryError
from .folding import fold_into_consumers, warn_inexact
from .groups import LayerRole, NeuronGroup
from .mask import NeuronMask
from .modules import FoldedConv2d, resize_layers
from .plan import IndexPlan, split_key
from .sinks import FoldSinks
from .testing import randomize_constants
from .trace import TraceResult, trace_groups

VERIFY_RTOL = 1e-4


def _axis_lengths(model: nn.Module) -> dict[tuple[str, str], int]:
    lengths: dict[tuple[str, str], int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            lengths[(name, "out")], lengths[(name, "inp")] = m.out_channels, m.in_channels
        elif isinstance(m, nn.Linear):
            lengths[(name, "out")], lengths[(name, "inp")] = m.out_features, m.in_features
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            lengths[(name, "out")] = m.num_features
    return lengths


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


class NeuronGraph:
    """Prunable neuron groups of one architecture, with exact index maps and surgery."""

    def __init__(self, trace: TraceResult, template: nn.Module, example_shape: Sequence[int],
                 dtype: torch.dtype):
        """Use :meth:`from_model`; this assembles a graph from an already traced result."""
        self._trace = trace
        self._template = template  # dense architecture on the meta device
        self.example_shape = tuple(int(s) for s in example_shape)
        self.dtype = dtype
        self.dense_shapes: dict[str, tuple[int, ...]] = {
            k: tuple(v.shape) for k, v in template.state_dict().items()}
        self._plan = IndexPlan(trace.groups, _axis_lengths(template))
        self._groups = {g.name: g for g in trace.groups}
        consumers = [n for n, axes in self._plan.layers.items() if axes.inp is not None]
        self._sinks = FoldSinks(consumers, template, trace)
        self.extra_keys: tuple[str, ...] = self._sinks.extra_keys

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, *,
                   ignored_layers: Sequence[str] = (), verify: bool = True) -> "NeuronGraph":
        """Trace ``model`` (untouched) and build its graph; deterministic group order.

        ``ignored_layers`` names layers whose output neurons must never be pruned (the
        network output layer is always excluded). With ``verify`` (default) the graph
        checks itself on a copy of ``model`` with random biases/BatchNorm statistics:
        groups whose removed outputs are not constant where they are consumed are
        moved to :attr:`unsupported`, and any remaining mismatch between the compact
        and the masked dense model raises :class:`SurgeryError`.
        """
        example_input = example_input.detach()
        try:
            trace = trace_groups(model, example_input, tuple(ignored_layers))
        except Exception as exc:  # torch-pruning raises anything from ZeroDivisionError up
            raise SurgeryError(f"torch-pruning cannot trace {type(model).__name__}: "
                               f"{type(exc).__name__}: {exc}") from exc
        template = copy.deepcopy(model).to("meta")
        graph = cls(trace, template, example_input.shape, example_input.dtype)
        if verify:
            graph = graph._verified(model)
        return graph

    def _verified(self, model: nn.Module) -> "NeuronGraph":
        """Self-check on a perturbed copy; drop groups whose constants cannot be folded."""
        ref = randomize_constants(model)
        full = NeuronMask.full(self)
        check = NeuronMask(self, {g.name: np.arange(g.size) % 2 == 0 for g in self.groups})
        try:
            small, inexact = self._reduce(ref, full, check)
        except RuntimeError as exc:
            raise SurgeryError(f"{type(model).__name__}: folding failed ({exc})") from exc
        if inexact:
            bad = {self.groups[seg.group].name
                   for layer, pos in inexact.items()
                   for seg in self._plan.layers[layer].inp.segments if np.isin(seg.pos, pos).any()}
            trace = copy.copy(self._trace)
            trace.groups = [g for g in self.groups if g.name not in bad]
            trace.unsupported = {**trace.unsupported, **{
                n: "its removed outputs are not constant where consumed" for n in sorted(bad)}}
            return NeuronGraph(trace, self._template, self.example_shape, self.dtype)._verified(model)
        x = self._probe(ref)
        try:
            with torch.no_grad():
                want = self._prepare(ref, full, check).eval()(x)
                got = small.eval()(x)
        except RuntimeError as exc:
            raise SurgeryError(f"{type(model).__name__}: compact model does not run ({exc})") from exc
        err = float((want - got).abs().max())
        scale = 1.0 + float(want.abs().max())
        if got.shape != want.shape or err > VERIFY_RTOL * scale:
            raise SurgeryError(f"{type(model).__name__}: compact and masked dense models differ "
                               f"(max abs error {err:.3g}); this architecture is not supported")
        return self

    # -- groups ---------------------------------------------------------------------------
    @property
    def groups(self) -> list[NeuronGroup]:
        """Prunable groups, ordered by their name's position in ``named_modules()``."""
        return list(self._trace.groups)

    @property
    def names(self) -> list[str]:
        """Group names in graph order."""
        return [g.name for g in self._trace.groups]

    @property
    def mask_spec(self) -> tuple[tuple[str, int], ...]:
        """``((group name, dense size), ...)``: what a :class:`NeuronMask` is validated against."""
        return tuple((g.name, g.size) for g in self._trace.groups)

    @property
    def unsupported(self) -> dict[str, str]:
        """Groups left dense because an op in them is not known to be channel-wise: name -> reason."""
        return dict(self._trace.unsupported)

    @property
    def output_layers(self) -> list[str]:
        """Layers producing the network output (never pruned)."""
        return list(self._trace.output_layers)

    @property
    def layers(self) -> list[tuple[str, int, str | None]]:
        """Every conv/linear layer in module order: ``(name, dense out size, group or None)``."""
        return list(self._trace.layers)

    def group(self, name: str) -> NeuronGroup:
        """The group called ``name``; :class:`MaskError` if there is none."""
        try:
            return self._groups[name]
        except KeyError:
            raise MaskError(f"unknown neuron group {name!r}") from None

    def group_layers(self, name: str) -> list[LayerRole]:
        """The layers group ``name`` touches: role, dense positions, neuron of each position.

        ``[r for r in graph.group_layers(n) if r.is_producer]`` are the layers whose
        incoming weights (``weight`` rows ``r.index``) create the neurons ``r.neuron``.
        """
        return list(self.group(name).layers)

    def full_mask(self) -> NeuronMask:
        """Same as ``NeuronMask.full(graph)``."""
        return NeuronMask.full(self)

    # -- model surgery --------------------------------------------------------------------
    def compact(self, model: nn.Module, mask: NeuronMask) -> nn.Module:
        """A new compact module for ``mask`` from the DENSE ``model`` (which is untouched).

        The result computes the same function as ``zero_pruned(model, mask)`` in eval
        mode: constant outputs of removed neurons are folded forward.
        """
        return self.prune(model, NeuronMask.full(self), mask)

    def prune(self, compact_model: nn.Module, old_mask: NeuronMask,
              new_mask: NeuronMask, *, in_place: bool = False) -> nn.Module:
        """Remove ``old_mask & ~new_mask`` from a model shaped by ``old_mask`` (a new module).

        ``new_mask`` must be a subset of ``old_mask``. The removed neurons' incoming
        weights are treated as zero and their constant outputs are folded into the
        consumers. Train/eval mode and ``requires_grad`` are kept; gradients are
        dropped (rebuild the optimizer afterwards).

        ``in_place=True`` cuts ``compact_model`` itself and returns it: no copy of the model is
        made, and each old tensor is freed as soon as its layer is cut (where nothing else holds
        it), so the surgery needs one layer's worth of extra memory. The masks are checked first;
        an error after that leaves the model partly cut.
        """
        self._check_mask(old_mask, "old_mask")
        self._check_mask(new_mask, "new_mask")
        if not new_mask.issubset(old_mask):
            raise MaskError("new_mask revives neurons that old_mask had pruned; "
                            "it must be a subset of old_mask")
        self.check_model(compact_model, old_mask)
        work, inexact = self._reduce(compact_model, old_mask, new_mask, in_place=in_place)
        warn_inexact(inexact)
        return work

    def reindex(self, compact_tensors: Mapping[str, torch.Tensor], old_mask: NeuronMask,
                new_mask: NeuronMask) -> dict[str, torch.Tensor]:
        """Tensors shaped like a compact model for ``old_mask`` (e.g. its optimizer state), indexed
        down to ``new_mask`` (a subset): exactly the rows and columns of the surviving neurons, no
        folding, and nothing dense-sized is allocated. Keys are state-dict keys."""
        self._check_mask(old_mask, "old_mask")
        self._check_mask(new_mask, "new_mask")
        if not new_mask.issubset(old_mask):
            raise MaskError("new_mask revives neurons that old_mask had pruned; it must be a subset of old_mask")
        cur, tgt = self._plan.alive(old_mask), self._plan.alive(new_mask)
        kept = {k: np.flatnonzero(tgt[k][cur[k]]) for k in cur}
        return {key: self._plan.index_tensor(key, t.detach(), kept) for key, t in compact_tensors.items()}

    def zero_pruned(self, model: nn.Module, mask: NeuronMask, *,
                    current: NeuronMask | None = None) -> nn.Module:
        """A copy of ``model`` whose pruned neurons have zero incoming weights (bias/BN kept).

        ``model`` is dense by default (the "masked dense" model); pass ``current`` for a
        model shaped by that mask, then ``mask`` must be a subset of it. Invariant:
        ``prune(m, current, mask)`` computes the same eval-mode function as
        ``zero_pruned(m, mask, current=current)``.
        """
        current = current if current is not None else NeuronMask.full(self)
        self._check_mask(mask, "mask")
        self._check_mask(current, "current")
        if not mask.issubset(current):
            raise MaskError("mask revives neurons that current had pruned")
        self.check_model(model, current)
        return self._prepare(model, current, mask)

    def build_compact(self, mask: NeuronMask, device: torch.device | str = "cpu") -> nn.Module:
        """A freshly initialised module with the compact architecture of ``mask``.

        Its ``state_dict()`` has the keys and shapes of ``compact_state_dict(.., mask)``,
        so ``build_compact(mask).load_state_dict(tensors)`` rebuilds a received model.
        Border-fold terms (non-persistent) are not part of it.
        """
        self._check_mask(mask, "mask")
        model = copy.deepcopy(self._template)
        resize_layers(model, self._plan, self._positions(mask))
        self._add_extra_biases(model)
        model = model.to_empty(device=device)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for t in list(model.parameters()) + list(model.buffers()):
                t.zero_()
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return model

    # -- state dicts ----------------------------------------------------------------------
    def compact_state_dict(self, dense_state_dict: Mapping[str, torch.Tensor],
                           mask: NeuronMask) -> dict[str, torch.Tensor]:
        """Index a dense state dict down to ``mask`` (no folding): the tensors to upload."""
        self._check_mask(mask, "mask")
        positions = self._positions(mask)
        out = {}
        for key, shape in self.dense_shapes.items():
            if key not in dense_state_dict:
                raise SurgeryError(f"dense state dict is missing {key!r}")
            t = dense_state_dict[key]
            if tuple(t.shape) != shape:
                raise SurgeryError(f"{key!r} has shape {tuple(t.shape)}, dense reference has {shape}")
            out[key] = self._plan.index_tensor(key, t.detach(), positions).clone()
        for key in self.extra_keys:
            module, _ = split_key(key)
            n = len(positions[(module, "out")]) if (module, "out") in positions else \
                self.dense_shapes[f"{module}.weight"][0]
            out[key] = torch.zeros(n, dtype=self.dtype)
        return out

    def expand(self, compact_state_dict: Mapping[str, torch.Tensor],
               mask: NeuronMask) -> dict[str, torch.Tensor]:
        """Scatter compact tensors into dense-shaped ones, zeros at pruned coordinates.

        Keys are the dense reference keys. Raises :class:`MaskError` when a tensor's
        shape does not match ``mask`` (e.g. client and server disagree on the mask).
        :attr:`extra_keys` have no dense counterpart and are dropped.
        """
        self._check_mask(mask, "mask")
        alive = self._plan.alive(mask)
        unknown = set(compact_state_dict) - set(self.dense_shapes) - set(self.extra_keys)
        if unknown:
            raise SurgeryError(f"unexpected keys in compact state dict: {sorted(unknown)[:5]}")
        out = {}
        for key, shape in self.dense_shapes.items():
            if key not in compact_state_dict:
                raise SurgeryError(f"compact state dict is missing {key!r}")
            t = compact_state_dict[key]
            want = self._plan.compact_shape(key, shape, alive)
            if tuple(t.shape) != want:
                raise MaskError(f"{key!r} has shape {tuple(t.shape)} but the mask implies {want} "
                                f"(groups {self._groups_of(key)})")
            out[key] = self._plan.expand_tensor(key, t.detach(), shape, alive)
        return out

    def compact_shapes(self, mask: NeuronMask) -> dict[str, tuple[int, ...]]:
        """Per key, the tensor shape of a compact model for ``mask`` (cheap; no module built)."""
        self._check_mask(mask, "mask")
        alive = self._plan.alive(mask)
        shapes = {k: self._plan.compact_shape(k, s, alive) for k, s in self.dense_shapes.items()}
        for key in self.extra_keys:
            module, _ = split_key(key)
            shapes[key] = shapes[f"{module}.weight"][:1]
        return shapes

    def coordinate_masks(self, mask: NeuronMask) -> dict[str, np.ndarray]:
        """Per dense key, a boolean array of the dense shape: ``True`` where alive."""
        self._check_mask(mask, "mask")
        alive = self._plan.alive(mask)
        return {k: self._plan.coordinate_mask(k, s, alive) for k, s in self.dense_shapes.items()}

    # -- checks ---------------------------------------------------------------------------
    def check_model(self, model: nn.Module, mask: NeuronMask) -> None:
        """Raise :class:`SurgeryError` unless ``model``'s layer sizes are those of ``mask``."""
        alive = self._plan.alive(mask)
        for (layer, attr), vec in alive.items():
            try:
                m = model.get_submodule(layer)
            except AttributeError:
                raise SurgeryError(f"model has no layer {layer!r}; "
                                   "is it this graph's architecture?") from None
            ref = m.weight if getattr(m, "weight", None) is not None else m.running_mean
            size = ref.shape[1 if attr == "inp" else 0]
            if size != int(vec.sum()):
                what = "inputs" if attr == "inp" else "outputs"
                raise SurgeryError(f"layer {layer!r} has {size} {what} but the mask keeps "
                                   f"{int(vec.sum())}; wrong mask for this model?")

    def _check_mask(self, mask: NeuronMask, what: str) -> None:
        if not isinstance(mask, NeuronMask):
            raise TypeError(f"{what} must be a NeuronMask, got {type(mask).__name__}")
        if mask.spec != self.mask_spec:
            raise MaskError(f"{what} belongs to a different neuron graph (group names or sizes differ)")

    def _groups_of(self, key: str) -> list[str]:
        module, _ = split_key(key)
        return sorted({g.name for g in self.groups for r in g.layers if r.module == module})

    # -- internals ------------------------------------------------------------------------
    def _positions(self, mask: NeuronMask) -> dict[tuple[str, str], np.ndarray]:
        return {k: np.flatnonzero(v) for k, v in self._plan.alive(mask).items()}

    def _removed(self, current: NeuronMask, target: NeuronMask) -> dict[tuple[str, str], np.ndarray]:
        cur, tgt = self._plan.alive(current), self._plan.alive(target)
        return {k: np.flatnonzero(~tgt[k][cur[k]]) for k in cur}

    def _removed_inputs(self, current: NeuronMask, target: NeuronMask) -> dict[str, np.ndarray]:
        return {layer: pos for (layer, attr), pos in self._removed(current, target).items()
                if attr == "inp" and len(pos)}

    def _reduce(self, model: nn.Module, current: NeuronMask, target: NeuronMask,
                in_place: bool = False) -> tuple[nn.Module, dict[str, np.ndarray]]:
        """Zero, fold and cut: the compact model for ``target`` (a copy unless ``in_place``) and
        any inexact folds."""
        work = self._prepare(model, current, target, in_place=in_place)
        inexact = fold_into_consumers(work, self._removed_inputs(current, target),
                                      self._probe(work), self._sinks.resolve(self._plan.alive(current)))
        resize_layers(work, self._plan, self._plan.keep(current, target))
        self._add_extra_biases(work)
        return work, inexact

    def _prepare(self, model: nn.Module, current: NeuronMask, target: NeuronMask,
                 in_place: bool = False) -> nn.Module:
        """``model`` (a deep copy unless ``in_place``) with the removed neurons' incoming weights
        set to zero."""
        work = model if in_place else copy.deepcopy(model)
        for p in work.parameters():
            p.grad = None
        with torch.no_grad():
            for (layer, attr), pos in self._removed(current, target).items():
                if attr != "out" or not len(pos) or self._plan.layers[layer].kind == "batchnorm":
                    continue
                m = work.get_submodule(layer)
                idx = torch.as_tensor(pos, device=m.weight.device)
                m.weight.index_fill_(0, idx, 0.0)
                if isinstance(m, FoldedConv2d):
                    m.fold_kernel.index_fill_(0, idx, 0.0)
        return work

    def _probe(self, model: nn.Module) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, *self.example_shape[1:]), generator=gen, dtype=torch.float64)
        return x.to(device=_device_of(model), dtype=self.dtype)

    def _add_extra_biases(self, model: nn.Module) -> None:
        for key in self.extra_keys:
            m = model.get_submodule(split_key(key)[0])
            if m.bias is None:
                m.bias = nn.Parameter(m.weight.new_zeros(m.weight.shape[0]),
                                      requires_grad=m.weight.requires_grad)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{g.name}:{g.size}" for g in self.groups)
        return f"NeuronGraph({len(self.groups)} groups: {sizes})"
