"""BatchNorm layers as NVAE-style networks use them, and a BatchNorm's eval-mode affine map.

In eval mode (running statistics) a BatchNorm over channel dim 1 is the per-channel affine map

    bn(x) = x * scale[c] + shift[c],   scale = weight / sqrt(running_var + eps),
                                       shift = bias - running_mean * scale

(``weight`` = 1 and ``bias`` = 0 without affine parameters). :func:`bn_affine` is the one place
this is computed: :func:`bn_swish_eval` uses it differentiably in the BatchNorm's own dtype, and
:func:`vaebm_fast.nn.frozen_copy` in float64 when it folds BatchNorms into weights.

Layers (keys follow NVAE, so official checkpoints load):

- :class:`NVAEBatchNorm`: a BatchNorm2d held as ``.bn``.
- :class:`BNSwish`: BatchNorm2d then Swish, one fused op in eval mode.
- :class:`ConvBNSwish`: bias-free conv then BN-Swish.
- :class:`AffineSwish`: ``swish(x * scale + shift)`` with fixed buffers, what an eval-mode
  BN-Swish becomes in a frozen copy.

``BN_MOMENTUM`` and ``BN_EPS`` are NVAE's BatchNorm settings and the defaults of every layer
here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops.epilogues import affine_swish
from .activations import swish
from .conv import WNConv2d

__all__ = ["BN_MOMENTUM", "BN_EPS", "bn_affine", "bn_swish_eval", "NVAEBatchNorm", "BNSwish",
           "ConvBNSwish", "AffineSwish"]

# NVAE's BatchNorm settings (its models use them for every BN).
BN_MOMENTUM = 0.05
BN_EPS = 1e-5


def bn_affine(bn: nn.modules.batchnorm._BatchNorm,
              dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)``, each [C], with ``bn(x) == x * scale[c] + shift[c]`` when ``bn``
    uses its running statistics (see the module docstring for the formula).

    Args:
        bn: a BatchNorm1d/2d/3d tracking running statistics. Its mode is not checked: in
            training mode ``bn`` normalises by batch statistics, which this map is not.
        dtype: compute in this dtype (float64 to fold into weights and round once); None
            computes in the BatchNorm's own dtype.

    Differentiable in ``bn.weight`` and ``bn.bias``. Raises ValueError when ``bn`` tracks no
    running statistics (``track_running_stats=False``), which has no eval-mode affine map.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm tracks no running statistics (track_running_stats="
                         "False): it always normalises by batch statistics, which is no fixed "
                         "affine map; use bn(x)")

    def cast(t: Tensor) -> Tensor:
        return t if dtype is None else t.to(dtype)

    inv_std = torch.rsqrt(cast(bn.running_var) + bn.eps)
    scale = inv_std if bn.weight is None else cast(bn.weight) * inv_std
    shift = -cast(bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + cast(bn.bias)
    return scale, shift


def bn_swish_eval(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, *,
                  backend: str = "auto") -> Tensor:
    """``swish(bn(x))`` for a BatchNorm using its running statistics, as one fused
    :func:`vaebm_fast.ops.affine_swish`.

    x: [N, C, ...] -> same shape. The (scale, shift) of :func:`bn_affine` are cast to x's
    dtype; gradients reach x, ``bn.weight`` and ``bn.bias``. Use only when ``bn`` would use
    its running statistics (``not bn.training`` and running statistics tracked; ValueError
    without them): training mode normalises by batch statistics and is not an affine map of x.
    ``backend`` is passed to ``affine_swish``.
    """
    scale, shift = bn_affine(bn)
    if isinstance(x, Tensor) and x.is_floating_point():
        scale, shift = scale.to(x.dtype), shift.to(x.dtype)
    return affine_swish(x, scale, shift, backend=backend)


class NVAEBatchNorm(nn.Module):
    """A plain BatchNorm2d held as ``self.bn`` (NVAE wraps its BNs the same way, so the keys
    read ``….bn.weight``). x: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


class BNSwish(nn.Module):
    """BatchNorm2d followed by Swish. x: [B, C, H, W] -> [B, C, H, W].

    In eval mode (running statistics) the BatchNorm is a per-channel affine map, and BN + Swish
    run as one fused op (:func:`bn_swish_eval` -> ``affine_swish``); in training mode (batch
    statistics, running-stat updates) it is ``swish(bn(x))``.

    The BatchNorm is the attribute ``bn`` (keys ``bn.weight``, ``bn.bias``,
    ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``). Official
    checkpoints, whose BN-Swish keys lack the ``bn.`` level, load too.
    """

    def __init__(self, channels: int, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
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


class ConvBNSwish(nn.Module):
    """Plain conv (no weight norm, no bias) -> BN -> Swish, as ``self.conv`` (a Sequential:
    keys ``conv.0.weight`` and ``conv.1.bn.*``, as in NVAE).

    x: [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]; the padding,
    ``dilation * (kernel_size - 1) // 2``, keeps the size for odd kernels.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Sequential(
            WNConv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=False, weight_norm=False),
            BNSwish(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class AffineSwish(nn.Module):
    """``swish(x * scale[c] + shift[c])`` (c = dim 1): an eval-mode BatchNorm + Swish with its
    per-channel affine map precomputed (what :func:`~vaebm_fast.nn.frozen_copy` turns a
    :class:`BNSwish` into). x: [B, C, ...] -> same shape. Buffers ``scale``, ``shift``: [C],
    cast to x's dtype when they differ."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale, self.shift
        if scale.dtype != x.dtype:
            scale, shift = scale.to(x.dtype), shift.to(x.dtype)
        return affine_swish(x, scale, shift)
