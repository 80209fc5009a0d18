"""Activations used by the VAE and the energy networks.

Each activation has exactly one entry point here; the modules call the functions. Swish and
LipSwish run the fused op of :mod:`vaebm_fast.ops.swish` (native kernel whose backward saves
only the input when the extension is loaded, otherwise the plain differentiable torch
expression ``x * sigmoid(x) [* scale]``; the backend follows ``vaebm_fast.ops`` defaults).

All functions are elementwise: any shape in, the same shape out.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.swish import lip_swish as _lip_swish_op
from ..ops.swish import swish as _swish_op


def swish(x: Tensor) -> Tensor:
    """Swish / SiLU: x * sigmoid(x)."""
    return _swish_op(x)


def lip_swish(x: Tensor) -> Tensor:
    """LipSwish: x * sigmoid(x) / 1.1; 1.1 bounds Swish's slope, so this is 1-Lipschitz."""
    return _lip_swish_op(x)


class Swish(nn.Module):
    """Module form of :func:`swish`."""

    def forward(self, x: Tensor) -> Tensor:
        return swish(x)


class LipSwish(nn.Module):
    """Module form of :func:`lip_swish`."""

    def forward(self, x: Tensor) -> Tensor:
        return lip_swish(x)
