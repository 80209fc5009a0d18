"""Stage 1: train the VAE by its ELBO.

loss = mean_B[ recon_nll + beta(step) * sum_groups KL ] + wdn * (spectral + batchnorm)

with NVAE's KL warm-up beta(step) = kl_weight * max(min(step / warmup_steps, 1), kl_min) and NVAE's
spectral and BatchNorm regularisers (``vae.regularization_terms()``; empty for the MLP VAE),
weighted by ``weight_decay_norm`` (kept constant here; NVAE anneals it during warm-up).
The optimiser is Adam or Adamax (NVAE) with cosine learning-rate decay.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

from ..validation import check_choice
from .loop import run_training


@dataclass
class VAETrainConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    min_lr: float = 1e-4
    optimizer: str = "adam"          # "adam" or "adamax" (NVAE)
    kl_warmup_fraction: float = 0.3  # fraction of steps over which beta ramps to 1
    kl_min: float = 1e-4
    kl_weight: float = 1.0           # final beta (beta-VAE); 1 is the ELBO
    weight_decay_norm: float = 1e-2  # NVAE's coefficient of the spectral + BN regularisers
    grad_clip_norm: float = 200.0
    checkpoint_every: int = 500


def make_optimizer(name: str, params, lr: float, **kw) -> torch.optim.Optimizer:
    check_choice(name, "optimizer", ("adam", "adamax"))
    cls = torch.optim.Adam if name == "adam" else torch.optim.Adamax
    return cls(params, lr=lr, **kw)


def train_vae(vae: nn.Module, data: Iterator[torch.Tensor], cfg: VAETrainConfig, *,
              checkpoint_path: str | None = None, resume: bool = True,
              extra_state: dict | None = None, log=None) -> dict:
    """Train ``vae`` (docs/interfaces.md: ``elbo_terms``, ``regularization_terms``) in place.

    data: an endless iterator of batches [B, *data_shape]. The checkpoint holds
    ``{'kind': 'vae', 'config': {...extra_state['config'], 'train': cfg}, 'model', 'optimizer',
    'scheduler', 'step', 'rng'}``. Returns the last step's metrics.
    """
    vae.train()
    optimizer = make_optimizer(cfg.optimizer, vae.parameters(), cfg.lr,
                               eps=1e-3 if cfg.optimizer == "adamax" else 1e-8)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.steps, 1),
                                                           eta_min=cfg.min_lr)
    warmup_steps = max(1, int(cfg.kl_warmup_fraction * cfg.steps))
    device = next(vae.parameters()).device

    def step_fn(step: int) -> dict:
        x = next(data).to(device)
        beta = cfg.kl_weight * max(min(step / warmup_steps, 1.0), cfg.kl_min)
        recon, kl_groups = vae.elbo_terms(x)
        kl = torch.stack(kl_groups).sum(0)
        loss = (recon + beta * kl).mean()
        regs = vae.regularization_terms()
        for value in regs.values():
            loss = loss + cfg.weight_decay_norm * value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item(), "nelbo": (recon + kl).mean().item(), "kl": kl.mean().item(),
                "beta": beta}

    def state_fn() -> dict:
        return {"kind": "vae",
                "config": {**(extra_state or {}).get("config", {}), "train": asdict(cfg)},
                "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}

    def load_fn(state: dict) -> None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = max(cfg.steps, 1)  # resuming with more --steps stretches the cosine

    metrics = run_training(total_steps=cfg.steps, step_fn=step_fn, state_fn=state_fn,
                           load_fn=load_fn,
                           checkpoint_path=checkpoint_path, checkpoint_every=cfg.checkpoint_every,
                           resume=resume, desc="stage 1: VAE", log=log)
    vae.eval()
    return metrics
