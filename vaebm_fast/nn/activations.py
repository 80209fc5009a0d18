"""Activations used by the VAE and the energy networks.

Each activation has exactly one function body here; the modules call the functions, so the
kernels work can swap in fused implementations in one place.

All functions are elementwise: any shape in, the same shape out.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# LipSwish divides Swish by 1.1, an upper bound of Swish's slope, so the activation is 1-Lipschitz.
_LIPSWISH_SCALE = 1.0 / 1.1


def swish(x: Tensor) -> Tensor:
    """Swish / SiLU: x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def lip_swish(x: Tensor) -> Tensor:
    """LipSwish: x * sigmoid(x) / 1.1 (1-Lipschitz)."""
    return swish(x) * _LIPSWISH_SCALE


class Swish(nn.Module):
    """Module form of :func:`swish`."""

    def forward(self, x: Tensor) -> Tensor:
        return swish(x)


class LipSwish(nn.Module):
    """Module form of :func:`lip_swish`."""

    def forward(self, x: Tensor) -> Tensor:
        return lip_swish(x)
