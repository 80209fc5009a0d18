"""vaebm_fast: VAEBM (a VAE and a data-space EBM as one product density) and its relatives,
the latent-space EBM and the pixel-space EBM, with fused kernels for the MCMC hot paths.

Drop-in sampling for your own models::

    from vaebm_fast import FastSampler   # or LangevinSampler, the eager reference
    sampler = FastSampler(energy, vae, space="eps", step_size=8e-5, n_steps=16)
    images = sampler.sample(64, seed=0)

Importing loads no native code and queries no device (the extension loads on first use). It
checks first that torch is installed and new enough, and says which torch to install if not.
"""
from ._requirements import require_torch

require_torch()  # a clear ImportError before `import torch` fails deep in a submodule

from .sampling import (ChainDivergedError, ChainResult, FastSampler, LangevinSampler,  # noqa: E402
                       ReplayBuffer, prepare_for_sampling)

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)
__all__ = ["LangevinSampler", "FastSampler", "prepare_for_sampling", "ChainResult",
           "ChainDivergedError", "ReplayBuffer", "__version__"]
