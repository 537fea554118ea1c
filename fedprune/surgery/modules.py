"""Module-level surgery: resize layers in place and the exact border-fold conv.

``FoldedConv2d`` is an ``nn.Conv2d`` that also adds the *border part* of folded
constant input channels. When a removed input channel carries a constant ``c`` into a
zero-padded conv, its contribution is ``c * sum(weights over in-image taps)``: a
per-output-channel constant in the interior (folded into a bias or the next
BatchNorm's ``running_mean``) plus a correction near the borders that depends only
on the spatial size. ``fold_kernel`` (``(out, 1, kh, kw)``, the removed channels'
weights weighted by their constants) recomputes that correction for any input size:
``conv2d(ones, fold_kernel) - fold_kernel.sum()``, which is zero away from borders.

``fold_kernel`` is a *non-persistent* buffer: it is kept by ``copy.deepcopy``,
``torch.save(module)``, ONNX export and further pruning, but it is not part of
``state_dict()`` (so compact and dense state dicts keep the same keys).

The border term depends only on the input's spatial size, so eager calls cache it
(keyed by size, dtype, device and the buffer's version); tracing/export recompute it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .plan import IndexPlan


class FoldedConv2d(nn.Conv2d):
    """``nn.Conv2d`` plus the exact zero-padding border term of folded constant inputs."""

    fold_kernel: torch.Tensor

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "FoldedConv2d":
        """Turn ``conv`` (in place) into a ``FoldedConv2d`` with a zero ``fold_kernel``."""
        if not isinstance(conv, FoldedConv2d):
            conv.__class__ = cls
            w = conv.weight
            conv.register_buffer("fold_kernel", w.new_zeros((w.shape[0], 1, *w.shape[2:])),
                                 persistent=False)
        return conv  # type: ignore[return-value]

    def border_term(self, x: torch.Tensor) -> torch.Tensor:
        """The border correction for input ``x`` (zero in the interior)."""
        k = self.fold_kernel.to(x.dtype)
        ones = x.new_ones((1, 1, *x.shape[-2:]))
        full = F.conv2d(ones, k, None, self.stride, self.padding, self.dilation)
        term = full - k.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return term if x.dim() == 4 else term[0]

    def _cached_border_term(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.border_term(x)
        k = self.fold_kernel
        key = (tuple(x.shape[-2:]), x.dim(), x.dtype, x.device, k.data_ptr(), k._version,
               torch.is_inference_mode_enabled())
        cached = self.__dict__.get("_border_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.border_term(x))
            self.__dict__["_border_cache"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self._cached_border_term(x)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_border_cache", None)  # derived data: never pickled or deep-copied
        return state


def needs_border_fold(conv: nn.Conv2d) -> bool:
    """True when a constant input channel is *not* constant after ``conv`` (zero padding)."""
    if conv.padding_mode != "zeros":
        return False  # reflect/replicate/circular padding of a constant is the same constant
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _as_param(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)


def resize_layers(model: nn.Module, plan: IndexPlan,
                  positions: Mapping[tuple[str, str], np.ndarray]) -> None:
    """Keep only ``positions`` along every planned axis of ``model`` (in place).

    Tensors are replaced by new ones (parameters keep ``requires_grad``; gradients are
    dropped) and the layer attributes (``out_channels``, ``in_features``, ``groups``,
    ``num_features``, ...) are updated to the new shapes.
    """
    for name in plan.layers:
        module = model.get_submodule(name)
        for store in (module._parameters, module._buffers):
            for tname, t in list(store.items()):
                if t is None:
                    continue
                key = f"{name}.{tname}" if name else tname
                new = plan.index_tensor(key, t.detach(), positions)
                if new.shape == t.shape:
                    continue
                store[tname] = _as_param(t, new) if isinstance(t, nn.Parameter) else new
        _sync_attributes(module)


def _sync_attributes(module: nn.Module) -> None:
    """Make a layer's size attributes agree with its (already resized) tensors."""
    if isinstance(module, nn.Conv2d):
        w = module.weight
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        module.out_channels = w.shape[0]
        if depthwise:
            module.in_channels = module.groups = w.shape[0]
        else:
            module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
