"""Squeeze-and-excitation gate and BatchNorm+Swish, as used by NVAE-style cells."""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.epilogues import bn_swish_eval
from .activations import swish


class SE(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(MLP(mean_hw(x)))``.

    ``self.se = Sequential(Linear(C_in, hidden), ReLU, Linear(hidden, C_out), Sigmoid)`` with
    ``hidden = max(C_out // 16, 4)`` (NVAE's rule), so a parent attribute named ``se`` gives
    state-dict keys ``se.se.0.*`` and ``se.se.2.*``.

    x: [B, C_in, H, W] -> [B, C_out, H, W] (the gate broadcasts, so C_out must equal C_in
    unless C_in == 1). :meth:`gate` gives the gate alone ([B, C_out]), for callers that fuse
    the multiply into a later op (NVAE's :class:`~vaebm_fast.models.nvae_cells.Cell` does,
    with :func:`vaebm_fast.ops.nvae_cell_tail`).
    """

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        hidden = max(channels_out // 16, 4)
        self.se = nn.Sequential(
            nn.Linear(channels_in, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels_out),
            nn.Sigmoid(),
        )

    def gate(self, x: Tensor) -> Tensor:
        """``sigmoid(MLP(mean_hw(x)))``: [B, C_in, H, W] -> [B, C_out]."""
        return self.se(x.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]


class BNSwish(nn.Module):
    """BatchNorm2d followed by Swish. x: [B, C, H, W] -> [B, C, H, W].

    In eval mode (running statistics) the BatchNorm is a per-channel affine map, and BN + Swish
    run as one fused op (:func:`vaebm_fast.ops.bn_swish_eval` -> ``affine_swish``); in training
    mode (batch statistics, running-stat updates) it is ``swish(bn(x))``.

    The BatchNorm is the attribute ``bn`` (keys ``bn.weight``, ``bn.bias``,
    ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``). Official
    checkpoints, whose BN-Swish keys lack the ``bn.`` level, load too.
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return swish(bn(x))
        return bn_swish_eval(x, bn)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The official fused BN-Swish module *is* the BatchNorm, so its keys sit one level up
        # (`prefix.weight`, not `prefix.bn.weight`). Move them under `bn.` so official
        # checkpoints load strictly; state_dict is load_state_dict's private copy.
        for name in _BN_STATE_NAMES:
            flat, nested = prefix + name, prefix + "bn." + name
            if flat in state_dict and nested not in state_dict:
                state_dict[nested] = state_dict.pop(flat)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_BN_STATE_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
