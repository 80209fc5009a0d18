"""Per-dataset defaults, and building models back from the config a checkpoint stores.

A model config is a small JSON-able dict ``{"type": ..., **kwargs}``; checkpoints store it so
``build_vae(cfg)`` / ``build_energy(cfg)`` rebuild exactly the trained architecture.

The toy settings were tuned for the demo (2-core CPU, minutes); the digits settings for a
small run of the full two-stage pipeline. Every training option of a preset can be overridden
from the command line (``vaebm-fast train-ebm --help`` lists them with each preset's value) or
by the ``train`` section of a ``--config`` file; the ``vae`` and ``energy`` sections override
the model keyword arguments below.

The official image settings (CIFAR-10 etc.) are in docs/design.md#langevin-settings and
#stage-2-optimiser. The official energy networks are built from Python with
``build_energy({"type": "official", "arch": "cifar32"})``; the command line has no data set of
their image sizes, so there is no flag for them.
"""
from __future__ import annotations

import copy
from dataclasses import replace

from .training.ebm import EBMTrainConfig
from .training.vae import VAETrainConfig

TOY = ("25gaussians", "swissroll")

PRESETS: dict[str, dict] = {
    "25gaussians": {
        # Tuned for the demo (README, "The demo"): a blurry but mode-covering VAE; an EBM
        # trained with short chains of small steps and sampled with the same small steps, so
        # chains sharpen locally instead of re-balancing mass between modes (larger steps
        # collapse onto a few rows or columns of the grid). The EBM's lr and length are what
        # limit the result: at lr 5e-4 or 1e-3 the energy learns the grid's columns but not
        # its rows in 3000 steps; lr 4e-3 for 5000 steps learns both (README, "The demo").
        "vae": {"type": "mlp", "data_dim": 2, "latent_dim": 2, "hidden": 128, "depth": 3},
        "energy": {"type": "mlp", "in_dim": 2, "hidden": 128, "depth": 3, "activation": "swish"},
        "vae_train": VAETrainConfig(steps=15000, batch_size=256, lr=1e-3, kl_warmup_fraction=0.1,
                                    weight_decay_norm=0.0, checkpoint_every=5000),
        "ebm_train": EBMTrainConfig(steps=5000, batch_size=256, lr=4e-3, beta1=0.5, beta2=0.999,
                                    weight_decay=0.0, space="eps", langevin_steps=30,
                                    step_size=3e-4, alpha_s=0.0, energy_reg=0.01, igebm_clip=False,
                                    checkpoint_every=500),
        "sample_steps": 100,
        "sample_step_size": 3e-4,
    },
    "digits": {
        "vae": {"type": "nvae", "preset": "digits"},
        "energy": {"type": "small_image", "in_channels": 1, "n_channel": 32},
        "vae_train": VAETrainConfig(steps=1500, batch_size=64, lr=3e-3, optimizer="adamax",
                                    kl_warmup_fraction=0.3, weight_decay_norm=1e-3),
        # Tuned for the README's digits table (`vaebm-fast demo --dataset digits`), one run
        # per setting, feature FID of 2000 VAEBM samples (the VAE's: 4.52):
        # - lr 5e-5 (the official CIFAR-10 rate) leaves E_pos = E_neg after 300 steps: no
        #   refinement. lr 1e-3 with beta1 0.5 (as the toy preset) learns in minutes.
        # - The official step sizes (5e-5 .. 8e-5) barely move an 8x8 chain: sampling with
        #   40 x 1e-3 gave 4.45, 40 x 2e-2 3.81, 100 x 2e-2 3.44 on one energy.
        # - data_noise 0.05: the negatives carry the decoder's pixel noise (sigma about 0.065
        #   on [0, 1]); noisy positives stop the energy from separating on noise alone
        #   (3.84 -> 3.44). alpha_s 0.05 and energy_reg 0.01 keep E bounded at lr 1e-3.
        # - Training chains of step 2e-2 and 600 steps (not 300): 3.44 -> 2.43.
        "ebm_train": EBMTrainConfig(steps=600, batch_size=32, lr=1e-3, beta1=0.5, space="eps",
                                    langevin_steps=20, step_size=2e-2, alpha_s=0.05,
                                    energy_reg=0.01, data_noise=0.05, checkpoint_every=100),
        "sample_steps": 100,
        "sample_step_size": 2e-2,
    },
}
PRESETS["swissroll"] = copy.deepcopy(PRESETS["25gaussians"])
# The grid's stage-2 lr and length were tuned on the grid only; the swiss roll keeps the
# settings it was run with.
PRESETS["swissroll"]["ebm_train"] = replace(PRESETS["swissroll"]["ebm_train"], steps=3000, lr=5e-4)


def preset(dataset: str) -> dict:
    """A fresh copy of the defaults for ``dataset``."""
    if dataset not in PRESETS:
        raise ValueError(f"no preset for dataset {dataset!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[dataset])


def build_vae(cfg: dict):
    """Rebuild a VAE from its stored config ``{"type": "mlp"|"nvae", ...}``."""
    kind, kw = cfg["type"], {k: v for k, v in cfg.items() if k != "type"}
    if kind == "mlp":
        from .models.mlp_vae import MLPVAE
        return MLPVAE(**kw)
    if kind == "nvae":
        from .models.nvae import HierarchicalVAE, HierarchicalVAEConfig
        config = (HierarchicalVAEConfig.preset(kw.pop("preset")) if "preset" in kw
                  else HierarchicalVAEConfig())
        return HierarchicalVAE(replace(config, **kw))
    raise ValueError(f"unknown VAE type {kind!r}; valid: 'mlp', 'nvae'")


def build_energy(cfg: dict):
    """Rebuild an energy network from ``{"type": "mlp"|"small_image"|"official", ...}``."""
    from .models import energy as E
    kind, kw = cfg["type"], {k: v for k, v in cfg.items() if k != "type"}
    builders = {"mlp": E.MLPEnergy, "small_image": E.small_image_ebm, "official": E.official_ebm}
    if kind not in builders:
        raise ValueError(f"unknown energy type {kind!r}; valid: {', '.join(builders)}")
    return builders[kind](**kw)
