"""Energy networks and VAEs (plain PyTorch modules)."""
from typing import Protocol, Sequence, runtime_checkable

import torch

from .energy import MLPEnergy, ResNetEnergy, official_ebm, small_image_ebm
from .mlp_vae import MLPVAE
from .nvae import HierarchicalVAE, HierarchicalVAEConfig


@runtime_checkable
class ReparameterizedGenerator(Protocol):
    """What the samplers need of a generator: x = T(eps_z, eps_x) (docs/interfaces.md)."""
    latent_shapes: Sequence[tuple]
    data_shape: tuple

    def decode_eps(self, eps_z: list, eps_x: "torch.Tensor | None" = None) -> torch.Tensor: ...


__all__ = ["official_ebm", "small_image_ebm", "ResNetEnergy", "MLPEnergy", "MLPVAE",
           "HierarchicalVAE", "HierarchicalVAEConfig", "ReparameterizedGenerator"]
