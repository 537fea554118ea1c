"""Shortcut kernels for the symbolic (``meta``) step: same output storages, no Python decompositions.

PyTorch's meta kernels for pointwise ops and batch norm run Python reference
decompositions (0.1-2 ms per call), which dominates the estimate's cost. For the
common cases below only the *output allocation* matters, and it is fully
determined by the first input: in-place ops return their input, out-of-place
pointwise ops allocate a tensor like their (contiguous) input, batch norm
allocates ``like(input)`` plus two ``(C,)`` statistics.

``fast_meta(func, args, kwargs)`` returns ``NotImplemented`` whenever a case is
not covered exactly (other dtypes, broadcasting, non-contiguous layouts, eval
batch norm, ...), and the regular meta kernel runs instead. Invariant: whenever
it answers, the returned tensors have the same shapes, dtypes and storage
sharing as the real kernel's outputs (checked by tests against the slow path).
"""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten

_INPLACE = {
    aten.add_.Tensor, aten.add_.Scalar, aten.sub_.Tensor, aten.mul_.Tensor, aten.mul_.Scalar,
    aten.div_.Tensor, aten.div_.Scalar, aten.lerp_.Scalar, aten.addcmul_.default, aten.addcdiv_.default,
    aten.sqrt_.default, aten.hardtanh_.default, aten.relu_.default, aten.clamp_min_.default,
}
_OUT_OF_PLACE = {
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor,
    aten.div.Scalar, aten.sqrt.default, aten.neg.default, aten.relu.default, aten.hardtanh.default,
    aten.threshold_backward.default, aten.hardtanh_backward.default, aten.lerp.Scalar,
    aten.addcmul.default, aten.addcdiv.default,
}


def _pointwise_ok(args: tuple, kwargs: dict) -> bool:
    """First arg is a floating meta tensor; other tensors match it exactly or are 0-dim reals."""
    if not args:
        return False
    t0 = args[0]
    if not isinstance(t0, torch.Tensor) or t0.device.type != "meta" or not t0.dtype.is_floating_point:
        return False
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            if a.dim() == 0:
                if a.dtype.is_complex:
                    return False
            elif (a.device.type != "meta" or a.dtype != t0.dtype or a.shape != t0.shape
                  or a.stride() != t0.stride()):
                return False
        elif isinstance(a, complex):
            return False
    return True


def _vec_ok(t: Any, c: int) -> bool:
    return t is None or (isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dim() == 1
                         and t.shape[0] == c and t.dtype == torch.float32)


def _bn_ok(x: Any, vectors: tuple) -> bool:
    return (isinstance(x, torch.Tensor) and x.device.type == "meta" and x.dtype == torch.float32
            and x.dim() >= 2 and x.is_contiguous() and all(_vec_ok(v, x.shape[1]) for v in vectors))


def fast_meta(func: Any, args: tuple, kwargs: dict) -> Any:
    """Outputs of ``func(*args, **kwargs)`` on meta tensors, or ``NotImplemented`` if not covered."""
    if func in _INPLACE:
        return args[0] if _pointwise_ok(args, kwargs) else NotImplemented
    if func in _OUT_OF_PLACE:
        if _pointwise_ok(args, kwargs) and args[0].is_contiguous() and args[0].dim() > 0:
            return torch.empty_like(args[0])
        return NotImplemented
    if func is aten.native_batch_norm.default and not kwargs and len(args) == 8:
        x, w, b, rm, rv, training = args[:6]
        if training is True and _bn_ok(x, (w, b, rm, rv)):
            c = x.shape[1]
            return torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,))
        return NotImplemented
    if func is aten.native_batch_norm_backward.default and not kwargs and len(args) == 10:
        g, x, w, rm, rv, sm, si, train, _eps, mask = args
        if (train is True and _bn_ok(x, (w, rm, rv, sm, si)) and isinstance(g, torch.Tensor)
                and g.shape == x.shape and g.dtype == x.dtype and g.is_contiguous()):
            c = x.shape[1]
            return (torch.empty_like(x) if mask[0] else None, x.new_empty((c,)) if mask[1] else None,
                    x.new_empty((c,)) if mask[2] else None)
        return NotImplemented
    return NotImplemented
