"""Energy networks and VAEs (plain PyTorch modules), built from the layers of
:mod:`vaebm_fast.nn`.

What samplers need of a generator is :class:`vaebm_fast.sampling.ReparameterizedGenerator`; what
a sampler's snapshot may leave out of a model, each class declares as data in
``sampling_drop`` (docs/interfaces.md). Models import nothing from the sampling layer.
"""
from .ebm_import import EBMImportError, load_official_ebm
from .energy import MLPEnergy, ResNetEnergy, official_ebm, small_image_ebm
from .mlp_vae import MLPVAE
from .nvae import HierarchicalVAE, HierarchicalVAEConfig
from .nvae_import import NVAEImportError, load_nvae

__all__ = ["official_ebm", "small_image_ebm", "ResNetEnergy", "MLPEnergy", "MLPVAE",
           "HierarchicalVAE", "HierarchicalVAEConfig", "load_nvae", "NVAEImportError",
           "load_official_ebm", "EBMImportError"]
