"""Weight gradients for the active output rows only, for Conv2d (``groups == 1``) and Linear layers.

NEq freezes some output neurons of a layer. Computing the layer's full weight gradient and zeroing
the frozen rows afterwards costs the full backward; here the layer's forward is replaced (an
instance attribute, removed by :func:`uninstall`) by an autograd function whose backward

* computes the input gradient as usual (when autograd needs it),
* computes the weight (and bias) gradient only for the active output rows, from the active slice of
  the output gradient (``aten.convolution_backward`` with only the weight output requested, or one
  matmul for Linear),
* fills the frozen rows with ``-weight_decay * w``: the optimizer adds ``weight_decay * w`` back, so
  a frozen row's update direction is exactly zero (SGD and Adam's L2 decay; their momentum rows are
  zeroed when the neuron freezes, so they stay zero). No weights or optimizer state are copied.

The replacement forward is a bound method of the module, so ``copy.deepcopy`` (the memory
estimate's model copy) re-binds it to the copy.

A backward that wants activation gradients only -- SeReNe's eq. 2 pass, one batched backward over
the ``C`` output directions (``vmap``) -- runs inside :func:`activation_grads_only`: there the
backward computes the input gradient alone and returns no weight or bias gradient (nobody asked for
them, and the in-place row fill of an unbatched gradient cannot take batched rows).

The CPU weight-gradient kernels (oneDNN convolution, BLAS matmul) work on blocks of output rows,
one SIMD register of float32 each: 8 rows with AVX2, 16 with AVX-512 (:func:`row_block`). Computing
10 or 16 rows of a 16-row layer takes the same time with AVX2, and 18 or 32 rows of a 32-row layer
with AVX-512 (``bench/bench_neq.py`` measures the curve, ``row_block_curve`` in ``bench/results/neq.json``).
:func:`saves_a_block` says whether the active rows need fewer blocks than the whole layer; where they
do not, the partial path would only add its own overhead (an output-gradient slice, a second
``convolution_backward`` call and a Python backward).
"""

from __future__ import annotations

import threading
import types
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_ATTR = "_partial_grad"
#: float32 output rows per kernel block, by the CPU capability PyTorch dispatches to; 8 otherwise
ROW_BLOCKS = {"AVX512": 16, "AVX2": 8}


_MODE = threading.local()


@contextmanager
def activation_grads_only() -> Iterator[None]:
    """Inside: the partial-path layers' backward computes input gradients only (no weight or bias
    gradient), for a backward that asks for gradients of activations."""
    was = getattr(_MODE, "activations_only", False)
    _MODE.activations_only = True
    try:
        yield
    finally:
        _MODE.activations_only = was


def _weight_grads_wanted() -> bool:
    return not getattr(_MODE, "activations_only", False)


def row_block() -> int:
    """Output rows per block of this machine's CPU weight-gradient kernels: ``ROW_BLOCKS`` of
    ``torch.backends.cpu.get_cpu_capability()`` (16 for AVX-512, 8 for AVX2), 8 for any other."""
    return ROW_BLOCKS.get(torch.backends.cpu.get_cpu_capability(), 8)


def saves_a_block(n_active: int, n_rows: int, block: int | None = None) -> bool:
    """True when ``n_active`` of ``n_rows`` output rows span fewer ``block``-row blocks than all rows
    (``block`` defaults to :func:`row_block`), i.e. the weight-gradient kernel has less to do for the
    active rows than for the whole layer."""
    block = row_block() if block is None else block
    if n_rows <= 0 or not 0 <= n_active <= n_rows:
        raise ValueError(f"saves_a_block: need 0 <= n_active <= n_rows, got {n_active}, {n_rows}")
    return -(-n_active // block) < -(-n_rows // block)


def _fill_rows(param: torch.Tensor, active: torch.Tensor, grad_active: torch.Tensor,
               decay: float) -> torch.Tensor:
    """Full-shape gradient: ``grad_active`` at the active rows, ``-decay * param`` at the others."""
    full = param.detach() * (-decay) if decay else torch.zeros_like(param)
    return full.index_copy_(0, active, grad_active)


class _ActiveRowsConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, active, decay, stride, padding, dilation):
        ctx.save_for_backward(x, weight, bias, active)
        ctx.conf = (stride, padding, dilation, decay)
        return F.conv2d(x, weight, bias, stride, padding, dilation, 1)

    @staticmethod
    def backward(ctx, go):
        x, w, b, active = ctx.saved_tensors
        stride, padding, dilation, decay = ctx.conf
        gx = gw = gb = None
        conv = torch.ops.aten.convolution_backward
        if ctx.needs_input_grad[0]:
            gx = conv(go, x, w, None, stride, padding, dilation, False, [0, 0], 1, [True, False, False])[0]
        if not _weight_grads_wanted():
            return gx, None, None, None, None, None, None, None
        go_a = go.index_select(1, active)
        if ctx.needs_input_grad[1]:
            w_a = w.narrow(0, 0, len(active))  # only its shape matters for the weight gradient
            gw_a = conv(go_a, x, w_a, None, stride, padding, dilation, False, [0, 0], 1,
                        [False, True, False])[1]
            gw = _fill_rows(w, active, gw_a, decay)
        if b is not None and ctx.needs_input_grad[2]:
            gb = _fill_rows(b, active, go_a.sum(dim=(0, 2, 3)), decay)
        return gx, gw, gb, None, None, None, None, None


class _ActiveRowsLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, active, decay):
        ctx.save_for_backward(x, weight, bias, active)
        ctx.decay = decay
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, go):
        x, w, b, active = ctx.saved_tensors
        decay = ctx.decay
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = go.matmul(w)
        if not _weight_grads_wanted():
            return gx, None, None, None, None
        go_a = go.index_select(-1, active).reshape(-1, len(active))
        if ctx.needs_input_grad[1]:
            gw = _fill_rows(w, active, go_a.t().matmul(x.reshape(-1, x.shape[-1])), decay)
        if b is not None and ctx.needs_input_grad[2]:
            gb = _fill_rows(b, active, go_a.sum(dim=0), decay)
        return gx, gw, gb, None, None


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    active, decay = getattr(self, _ATTR)
    return _ActiveRowsConv2d.apply(x, self.weight, self.bias, active.to(x.device), decay,
                                   self.stride, self.padding, self.dilation)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    active, decay = getattr(self, _ATTR)
    return _ActiveRowsLinear.apply(x, self.weight, self.bias, active.to(x.device), decay)


def supports(module: nn.Module) -> bool:
    """True for the layers :func:`install` handles: Linear, and Conv2d with ``groups == 1`` and
    zero padding mode."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
        and not isinstance(module.padding, str)


def install(module: nn.Module, active: torch.Tensor, weight_decay: float = 0.0) -> None:
    """Compute ``module``'s weight/bias gradient only for output rows ``active`` (see module doc).

    Raises ``ValueError`` for an unsupported module or an empty/out-of-range ``active``.
    """
    if not supports(module):
        raise ValueError(f"partial weight gradients: unsupported module {type(module).__name__}")
    n = module.weight.shape[0]
    active = torch.as_tensor(active, dtype=torch.long).reshape(-1)
    if active.numel() == 0 or int(active.min()) < 0 or int(active.max()) >= n:
        raise ValueError(f"partial weight gradients: active rows must be non-empty and in [0, {n})")
    setattr(module, _ATTR, (active, float(weight_decay)))
    fwd = _linear_forward if isinstance(module, nn.Linear) else _conv_forward
    module.forward = types.MethodType(fwd, module)


def uninstall(module: nn.Module) -> None:
    """Restore the module's own forward (no-op when :func:`install` was not called on it)."""
    if _ATTR in module.__dict__:
        del module.__dict__[_ATTR]
        module.__dict__.pop("forward", None)
