"""Layers shared by the VAE and the energy networks, and frozen inference copies of networks
built from them (:func:`frozen_copy`). Imports only :mod:`vaebm_fast.ops` below it."""
from .activations import LipSwish, Swish, lip_swish, swish
from .conv import WNConv2d, frozen_normalized_weights
from .freeze import frozen_copy, is_frozen_copy
from .norm import (BN_EPS, BN_MOMENTUM, AffineSwish, BNSwish, ConvBNSwish, NVAEBatchNorm,
                   bn_affine, bn_swish_eval)
from .se import SE
from .spectral import SpectralRegularizer

__all__ = [
    "WNConv2d", "frozen_normalized_weights",
    "swish", "lip_swish", "Swish", "LipSwish",
    "SE",
    "BNSwish", "NVAEBatchNorm", "ConvBNSwish", "AffineSwish", "bn_affine", "bn_swish_eval",
    "BN_MOMENTUM", "BN_EPS",
    "frozen_copy", "is_frozen_copy",
    "SpectralRegularizer",
]
