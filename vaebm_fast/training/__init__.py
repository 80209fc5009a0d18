"""Two-stage training: the VAE by its ELBO, then the EBM with the VAE frozen."""
from .ebm import EBMTrainConfig, clip_grad_by_adam_moment_, train_ebm
from .loop import TrainingDiverged, run_training
from .vae import VAETrainConfig, train_vae

__all__ = ["VAETrainConfig", "train_vae", "EBMTrainConfig", "train_ebm",
           "clip_grad_by_adam_moment_", "run_training", "TrainingDiverged"]
