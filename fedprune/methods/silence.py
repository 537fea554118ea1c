"""Try a neuron removal without touching (or copying) the weights.

SeReNe's threshold search scores candidate removals by the validation loss of the model with the
candidate neurons' incoming weights zeroed. Zeroing and restoring needs a copy of the weights,
which under a memory budget is memory the training step does not have. :class:`NeuronsSilenced`
gets the same outputs with forward hooks instead: a conv/linear layer whose weight rows of the
neurons ``pos`` are zero outputs its bias (or zero) on those channels, so a hook that writes the
bias there reproduces that forward pass exactly, on every batch, with no parameter changed.
"""

from __future__ import annotations

import torch
from torch import nn

_HOOKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _silencer(module: nn.Module, pos: torch.Tensor):
    """A forward hook that sets ``module``'s output channels ``pos`` to its bias (zero without one)."""
    channel_last = isinstance(module, nn.Linear)

    def hook(_module, _inputs, out: torch.Tensor) -> torch.Tensor:
        bias = module.bias
        fill = bias.detach().index_select(0, pos) if bias is not None else out.new_zeros(len(pos))
        with torch.no_grad():
            if channel_last:
                out[..., pos] = fill
            else:
                out[:, pos] = fill.view([1, -1] + [1] * (out.dim() - 2))
        return out

    return hook


class NeuronsSilenced:
    """Context manager: inside it, neurons ``drops[g]`` (site order) of each site output what they
    would with all their incoming weights zeroed.

    Guarantees: conv/linear weight slices on their output axis are handled by forward hooks (no
    parameter is written or copied); any other weight slice is zeroed in place and restored from a
    copy of just the silenced rows. On exit every hook is removed and every parameter holds exactly
    its value from before, also when the block raises.
    """

    def __init__(self, modules: dict[str, nn.Module], sites: dict, drops: dict[str, torch.Tensor]):
        self.modules, self.sites, self.drops = modules, sites, drops
        self._hooks: list = []
        self._saved: list = []

    def __enter__(self) -> "NeuronsSilenced":
        try:
            for g, idx in self.drops.items():
                if idx.numel():
                    self._silence(self.sites[g], idx)
        except BaseException:
            self._restore()
            raise
        return self

    def _silence(self, site, idx: torch.Tensor) -> None:
        for ps in site.params:
            if not ps.is_weight:
                continue
            pos = ps.pos.index_select(0, idx)
            owner, _, pname = ps.name.rpartition(".")
            module = self.modules.get(owner)
            if pname == "weight" and ps.dim == 0 and isinstance(module, _HOOKABLE):
                self._hooks.append(module.register_forward_hook(_silencer(module, pos)))
                continue
            with torch.no_grad():
                self._saved.append((ps.param, ps.dim, pos, ps.param.index_select(ps.dim, pos).clone()))
                ps.param.index_fill_(ps.dim, pos, 0.0)

    def _restore(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        with torch.no_grad():
            for param, dim, pos, rows in self._saved:
                param.index_copy_(dim, pos, rows)
        self._saved = []

    def __exit__(self, *exc) -> None:
        self._restore()
