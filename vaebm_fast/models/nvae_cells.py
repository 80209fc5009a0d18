"""The cells an NVAE-style hierarchical VAE is built from.

Structure and module names follow the official NVAE (``res_mbconv`` architecture, the one
every official VAEBM backbone uses), so an official state dict maps onto ours key for key:

==========================  ==============================================================
cell type                   operations (``Cell._ops``), all followed by SE when enabled
==========================  ==============================================================
normal_pre / down_pre       BNSwishConv 3x3, BNSwishConv 3x3   (down: first conv stride 2)
normal_enc / down_enc       same as pre
normal_dec / up_dec         InvertedResidual, expansion 6, depthwise 5x5 (up: nearest x2)
normal_post / up_post       InvertedResidual, expansion 3, depthwise 5x5
==========================  ==============================================================

A cell computes ``skip(s) + 0.1 * se(ops(s))``; the skip is the identity, a
:class:`FactorizedReduce` (down cells) or bilinear x2 + 1x1 conv (up cells). Combiner cells
join the encoder and decoder towers: :class:`EncCombinerCell` (``x_enc + conv1x1(s_dec)``) and
:class:`DecCombinerCell` (``conv1x1(concat(s_dec, z))``).

Strides follow NVAE's convention: 1 keeps the size, 2 halves it, -1 doubles it.

The layers the cells are made of (:class:`~vaebm_fast.nn.NVAEBatchNorm`,
:class:`~vaebm_fast.nn.BNSwish`, :class:`~vaebm_fast.nn.ConvBNSwish`,
:class:`~vaebm_fast.nn.WNConv2d`, :class:`~vaebm_fast.nn.SE`) live in :mod:`vaebm_fast.nn`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# BN_MOMENTUM / BN_EPS: NVAE's BatchNorm settings, used by every BN in the model.
from ..nn import (BN_EPS, BN_MOMENTUM, SE, BNSwish, ConvBNSwish, NVAEBatchNorm, WNConv2d,
                  swish)
from ..ops.epilogues import nvae_cell_tail

# Residual scale of every cell: out = skip + 0.1 * branch (keeps deep towers stable at init).
RESIDUAL_SCALE = 0.1

# Channel multiplier of down (x2) and up (/2) cells.
CHANNEL_MULT = 2

CELL_TYPES = ("normal_pre", "down_pre", "normal_enc", "down_enc",
              "normal_dec", "up_dec", "normal_post", "up_post")


def stride_of(cell_type: str) -> int:
    """1 for normal/combiner cells, 2 for down cells, -1 (upsample x2) for up cells."""
    if cell_type.startswith(("normal", "combiner")):
        return 1
    if cell_type.startswith("down"):
        return 2
    if cell_type.startswith("up"):
        return -1
    raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}")


class BNSwishConv(nn.Module):
    """BN -> Swish -> [nearest x2 if stride == -1] -> weight-normed conv (with bias).

    x: [B, C_in, H, W] -> [B, C_out, H', W'] (H' = H, H/2 or 2H for stride 1, 2, -1).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1):
        super().__init__()
        self.upsample = stride == -1
        self.bn_act = BNSwish(c_in, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.conv_0 = WNConv2d(c_in, c_out, kernel_size, stride=abs(stride), padding=padding,
                               dilation=dilation, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn_act(x)
        if self.upsample:
            out = F.interpolate(out, scale_factor=2, mode="nearest")
        return self.conv_0(out)


class InvertedResidual(nn.Module):
    """MobileNet-style branch of NVAE's decoder cells, as ``self.conv`` (a Sequential):

        [nearest x2 if stride == -1] -> BN -> 1x1 conv to C_in*expansion -> BN-Swish
        -> k x k depthwise conv -> BN-Swish -> 1x1 conv to C_out -> BN

    (no residual add here: the enclosing :class:`Cell` adds the skip).
    x: [B, C_in, H, W] -> [B, C_out, H', W'].
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, kernel_size: int):
        super().__init__()
        if stride not in (1, 2, -1):
            raise ValueError(f"stride must be 1, 2 or -1 (got {stride})")
        hidden = int(round(c_in * expansion))
        layers: list[nn.Module] = [nn.UpsamplingNearest2d(scale_factor=2)] if stride == -1 else []
        layers += [
            NVAEBatchNorm(c_in),
            ConvBNSwish(c_in, hidden, kernel_size=1),
            ConvBNSwish(hidden, hidden, kernel_size=kernel_size, stride=abs(stride), groups=hidden),
            WNConv2d(hidden, c_out, 1, bias=False, weight_norm=False),
            NVAEBatchNorm(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FactorizedReduce(nn.Module):
    """Down-sampling skip: Swish, then four stride-2 1x1 convs on the input shifted by
    (0,0), (1,1), (0,1), (1,0) pixels, concatenated along channels.

    x: [B, C_in, H, W] with H, W even -> [B, C_out, H/2, W/2].
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels "
                             f"(got {c_out})")
        quarter = c_out // 4
        self.conv_1 = WNConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_2 = WNConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_3 = WNConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_4 = WNConv2d(c_in, c_out - 3 * quarter, 1, stride=2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = swish(x)
        return torch.cat([
            self.conv_1(out),
            self.conv_2(out[:, :, 1:, 1:]),
            self.conv_3(out[:, :, :, 1:]),
            self.conv_4(out[:, :, 1:, :]),
        ], dim=1)


class BilinearUpsample(nn.Module):
    """x2 bilinear up-sampling with ``align_corners=True`` (NVAE's choice for up skips)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def skip_connection(c_in: int, stride: int) -> nn.Module:
    """Identity (stride 1), FactorizedReduce to 2*C_in (stride 2), or bilinear x2 then a
    bias-free weight-normed 1x1 conv to C_in/2 (stride -1; keys ``skip.1.*`` as in NVAE)."""
    if stride == 1:
        return nn.Identity()
    if stride == 2:
        return FactorizedReduce(c_in, CHANNEL_MULT * c_in)
    return nn.Sequential(BilinearUpsample(), WNConv2d(c_in, c_in // CHANNEL_MULT, 1, bias=False))


def _branch_ops(cell_type: str, c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    """The ops of one cell under NVAE's ``res_mbconv`` architecture (see the module table).
    Only the first op changes size (stride); later ops map C_out -> C_out."""
    if cell_type.endswith(("_pre", "_enc")):
        return [BNSwishConv(c_in, c_out, 3, stride=stride, padding=1),
                BNSwishConv(c_out, c_out, 3, stride=1, padding=1)]
    if cell_type.endswith("_dec"):
        return [InvertedResidual(c_in, c_out, stride, expansion=6, kernel_size=5)]
    if cell_type.endswith("_post"):
        return [InvertedResidual(c_in, c_out, stride, expansion=3, kernel_size=5)]
    raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}")


class Cell(nn.Module):
    """Residual cell: ``skip(s) + 0.1 * se(ops(s))``.

    Attributes (NVAE's names): ``skip``, ``_ops`` (ModuleList), ``se`` (if ``use_se``),
    ``cell_type``. s: [B, C_in, H, W] -> [B, C_out, H', W'] where the stride of the cell type
    fixes H' and C_out (normal: C_out = C_in; down: 2*C_in at H/2; up: C_in/2 at 2H).
    The tail (SE multiply, scale, residual add) is one fused op,
    :func:`vaebm_fast.ops.nvae_cell_tail`, fed with the SE gate ([B, C_out]).
    """

    def __init__(self, c_in: int, c_out: int, cell_type: str, use_se: bool):
        super().__init__()
        self.cell_type = cell_type
        stride = stride_of(cell_type)
        self.skip = skip_connection(c_in, stride)
        self._ops = nn.ModuleList(_branch_ops(cell_type, c_in, c_out, stride))
        self.use_se = use_se
        if use_se:
            self.se = SE(c_out, c_out)

    def forward(self, s: Tensor) -> Tensor:
        skip = self.skip(s)
        for op in self._ops:
            s = op(s)
        gate = self.se.gate(s) if self.use_se else None
        return nvae_cell_tail(skip, s, gate, scale=RESIDUAL_SCALE)


class EncCombinerCell(nn.Module):
    """Feeds the decoder state into the encoder feature of the same group:
    ``x_enc + conv1x1(s_dec)``.

    x_enc: [B, C_out, H, W], s_dec: [B, C_dec, H, W] -> [B, C_out, H, W].
    """

    cell_type = "combiner_enc"

    def __init__(self, c_dec: int, c_out: int):
        super().__init__()
        self.conv = WNConv2d(c_dec, c_out, 1, bias=True)

    def forward(self, x_enc: Tensor, s_dec: Tensor) -> Tensor:
        return x_enc + self.conv(s_dec)


class DecCombinerCell(nn.Module):
    """Injects a latent group into the decoder: ``conv1x1(concat(s, z))``.

    s: [B, C_dec, H, W], z: [B, C_z, H, W] -> [B, C_out, H, W].
    """

    cell_type = "combiner_dec"

    def __init__(self, c_dec: int, c_z: int, c_out: int):
        super().__init__()
        self.conv = WNConv2d(c_dec + c_z, c_out, 1, bias=True)

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        return self.conv(torch.cat([s, z], dim=1))
