"""Two-stage training: the VAE by its ELBO, then the EBM with the VAE frozen.

Both trainers run through ``run_training`` (``loop.py``): exact resume, healthy-only atomic
checkpoints, divergence detection and optional recovery, config.json / metrics.jsonl / logging.
Their configs validate every option on construction (``options.py``).
"""
from .ebm import EBMTrainConfig, clip_grad_by_adam_moment_, train_ebm
from .loop import Stage, TrainingDiverged, run_training, weights_are_finite
from .vae import VAETrainConfig, train_vae

__all__ = ["VAETrainConfig", "train_vae", "EBMTrainConfig", "train_ebm",
           "clip_grad_by_adam_moment_", "run_training", "Stage", "TrainingDiverged",
           "weights_are_finite"]
