"""NVAE's posterior normalizing flows: autoregressive cells applied to each posterior sample.

They act on the encoder side only (the posterior q(z_g | x, z_<g) of ``elbo_terms``); sampling
from the prior, and so ``decode_eps``, never runs them. Module names follow the official code,
so an official ``nf_cells.N`` loads key for key::

    PairedARCell                 cell1 (raster order), then cell2 (mirrored: reverse order)
      ARCell.conv.convz          masked 3x3 conv n_z -> 6 n_z (no bias, zero diagonal), ELU,
                                 masked depthwise 5x5 conv (no bias), ELU          -> h
      ARCell.mu.conv_0           ELU, masked 1x1 conv 6 n_z -> n_z (bias)         -> mu(h)
      output                     z - mu                        (log-determinant 0)

The masks make mu at pixel (i, j), channel c depend only on z at earlier pixels (raster order:
rows above, or the same row to the left) and, at the same pixel, on channels < c; so the
Jacobian of ``z -> z - mu(z)`` is unit lower-triangular and its log-determinant is 0. The
official files do not store the masks; they are rebuilt here from that rule (non-persistent
buffers). The official encoder feature passed to each cell is unused, and so is not an input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import WNConv2d

__all__ = ["PairedARCell", "ARCell", "MaskedWNConv2d", "autoregressive_mask"]

# Hidden width of a cell, in multiples of n_z (the official expansion).
_EXPANSION = 6


def _channel_mask(c_in: int, c_out: int, groups: int, zero_diag: bool) -> Tensor:
    """Centre-tap mask [c_out, c_in // groups]: output block k (of c_out / c_in outputs, or one
    output per block of c_in / c_out inputs) sees input blocks <= k, or < k with
    ``zero_diag``. A depthwise conv (groups == c_in) sees its own channel unless zero_diag."""
    if groups == c_in:
        return torch.full((c_out, 1), 0.0 if zero_diag else 1.0)
    if groups != 1 or (c_in % c_out and c_out % c_in):
        raise ValueError(f"an autoregressive conv needs groups 1 or c_in and one channel count "
                         f"a multiple of the other (got c_in={c_in}, c_out={c_out}, "
                         f"groups={groups})")
    mask = torch.ones(c_out, c_in)
    if c_out >= c_in:
        ratio = c_out // c_in
        for i in range(c_in):
            mask[i * ratio:(i + 1) * ratio, i + (0 if zero_diag else 1):] = 0
    else:
        ratio = c_in // c_out
        for i in range(c_out):
            mask[i, (i + (0 if zero_diag else 1)) * ratio:] = 0
    return mask


def autoregressive_mask(kernel_size: int, c_in: int, c_out: int, groups: int = 1,
                        zero_diag: bool = False, mirror: bool = False) -> Tensor:
    """The weight mask [c_out, c_in // groups, k, k] of a masked conv: taps in rows above the
    centre and left of it in the centre row are open, the centre tap carries
    :func:`_channel_mask`, the rest are closed; ``mirror`` flips both spatial axes."""
    if kernel_size % 2 != 1:
        raise ValueError(f"an autoregressive conv needs an odd kernel size (got {kernel_size})")
    m = (kernel_size - 1) // 2
    mask = torch.ones(c_out, c_in // groups, kernel_size, kernel_size)
    mask[:, :, m:, :] = 0
    mask[:, :, m, :m] = 1
    mask[:, :, m, m] = _channel_mask(c_in, c_out, groups, zero_diag)
    return mask.flip(2, 3) if mirror else mask


class MaskedWNConv2d(WNConv2d):
    """Weight-normalised conv on a masked weight: W_eff = exp(g) (W * M) / (||W * M|| + 1e-5),
    norm per output filter. Parameters ``weight``, ``log_weight_norm`` (and ``bias``) as in
    :class:`~vaebm_fast.nn.WNConv2d`; the mask M is a non-persistent buffer (not in state
    dicts, as in the official files). x: [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int = 1,
                 bias: bool = False, zero_diag: bool = False, mirror: bool = False):
        super().__init__(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2, groups=groups,
                         bias=bias)
        self.register_buffer("mask", autoregressive_mask(kernel_size, c_in, c_out, groups,
                                                         zero_diag, mirror), persistent=False)
        with torch.no_grad():  # the gain starts at the masked weight's norm
            masked = self.weight * self.mask
            norms = torch.linalg.vector_norm(masked, dim=(1, 2, 3), keepdim=True)
            self.log_weight_norm.copy_(torch.log(norms + 1e-2))

    def normalized_weight(self) -> Tensor:
        masked = self.weight * self.mask
        norms = torch.linalg.vector_norm(masked, dim=(1, 2, 3), keepdim=True)
        return self.log_weight_norm.exp() * masked / (norms + 1e-5)


class _ARInvertedResidual(nn.Module):
    """z [B, n_z, H, W] -> h [B, 6 n_z, H, W] (as ``self.convz``, the official name)."""

    def __init__(self, n_z: int, mirror: bool):
        super().__init__()
        hidden = _EXPANSION * n_z
        self.convz = nn.Sequential(
            MaskedWNConv2d(n_z, hidden, 3, zero_diag=True, mirror=mirror), nn.ELU(),
            MaskedWNConv2d(hidden, hidden, 5, groups=hidden, mirror=mirror), nn.ELU())

    def forward(self, z: Tensor) -> Tensor:
        return self.convz(z)


class _AREluConv(nn.Module):
    """h [B, 6 n_z, H, W] -> mu [B, n_z, H, W]: ELU then a masked 1x1 conv with bias."""

    def __init__(self, n_z: int, mirror: bool):
        super().__init__()
        self.conv_0 = MaskedWNConv2d(_EXPANSION * n_z, n_z, 1, bias=True, mirror=mirror)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv_0(F.elu(h))


class ARCell(nn.Module):
    """z [B, n_z, H, W] -> z - mu(z), autoregressive (log-determinant 0)."""

    def __init__(self, n_z: int, mirror: bool):
        super().__init__()
        self.conv = _ARInvertedResidual(n_z, mirror)
        self.mu = _AREluConv(n_z, mirror)

    def forward(self, z: Tensor) -> Tensor:
        return z - self.mu(self.conv(z))


class PairedARCell(nn.Module):
    """One official flow step: ``cell1`` in raster order, then ``cell2`` in reverse order.
    z [B, n_z, H, W] -> [B, n_z, H, W], volume-preserving (log-determinant 0)."""

    def __init__(self, n_z: int):
        super().__init__()
        self.cell1 = ARCell(n_z, mirror=False)
        self.cell2 = ARCell(n_z, mirror=True)

    def forward(self, z: Tensor) -> Tensor:
        return self.cell2(self.cell1(z))
