"""Squeeze-and-excitation gate, as used by NVAE-style cells."""
from __future__ import annotations

from torch import Tensor, nn


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
