"""Layers shared by the VAE and the energy networks."""
from .activations import LipSwish, Swish, lip_swish, swish
from .conv import WNConv2d, frozen_normalized_weights
from .se import SE, BNSwish
from .spectral import SpectralRegularizer

__all__ = [
    "WNConv2d", "frozen_normalized_weights",
    "swish", "lip_swish", "Swish", "LipSwish",
    "SE", "BNSwish",
    "SpectralRegularizer",
]
