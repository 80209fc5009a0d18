"""Stage 1: train the VAE by its ELBO.

loss = mean_B[ recon_nll + beta(step) * sum_groups KL ] + wdn * (spectral + batchnorm)

with NVAE's KL warm-up beta(step) = kl_weight * max(min(step / warmup_steps, 1), kl_min) and NVAE's
spectral and BatchNorm regularisers (``vae.regularization_terms()``; empty for the MLP VAE),
weighted by ``weight_decay_norm`` (kept constant here; NVAE anneals it during warm-up).
The optimiser is Adam or Adamax (NVAE) with cosine learning-rate decay.

With several processes (an initialised process group, see ``vaebm_fast.distributed``) the
loss terms are computed by ``ELBOTerms`` wrapped in DistributedDataParallel: each process
takes its slice of the global batch, the gradients are averaged (the gradient of the global
batch's mean loss; the regularisers are the same on every process), and DDP broadcasts rank
0's buffers (the spectral regulariser's power-iteration vectors) at every forward, keeping
them identical. BatchNorm normalises with each process's own batch statistics (no
SyncBatchNorm); its running averages are rank 0's, broadcast with the other buffers. The model
must be on this process's device (with NCCL, ``cuda:LOCAL_RANK``) before training starts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import World
from ..validation import check_choice
from . import options
from .loop import Stage, run_training


@dataclass
class VAETrainConfig:
    """Stage-1 options; each is also a command-line flag (``--kl-warmup-fraction``). Checked
    on construction (``training/options.py``: bad values raise ValueError naming the option)."""
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
    log_every: int = 100             # steps between progress lines / metrics.jsonl records
    # Divergence: a loss beyond this magnitude is an explosion (healthy runs measured: at
    # most 87 on digits, 3.3e3 for the CIFAR-10 NVAE at init: README, "Training and
    # checkpoints"); inf turns the test off.
    max_loss_magnitude: float = 1e6
    recover_attempts: int = 0        # automatic recoveries from divergence (0: off)
    recover_factor: float = 0.5      # each recovery multiplies lr and min_lr by this

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        options.check_loop_options(self)
        options.check_real(self, "min_lr", low=0)
        options.check_choice(self, "optimizer")
        options.check_real(self, "kl_warmup_fraction", low=0, high=1)
        options.check_real(self, "kl_min", low=0, high=1)
        options.check_real(self, "kl_weight", low=0)
        options.check_real(self, "weight_decay_norm", low=0)
        options.check_real(self, "grad_clip_norm", low=0, low_open=True, allow_inf=True)


class ELBOTerms(nn.Module):
    """The VAE's loss terms as one forward, the unit DistributedDataParallel wraps.

    forward(x [B, *data_shape]) -> (recon_nll [B], [kl [B] per group], {name: regulariser []})
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        recon, kl_groups = self.vae.elbo_terms(x)
        return recon, kl_groups, self.vae.regularization_terms()


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when this process is one of several (rank 0's
    weights and buffers are broadcast now, the gradients averaged at every backward), else
    ``module`` itself."""
    if not World.current().is_distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def make_optimizer(name: str, params, lr: float, **kw) -> torch.optim.Optimizer:
    check_choice(name, "optimizer", options.CHOICES["optimizer"])
    cls = torch.optim.Adam if name == "adam" else torch.optim.Adamax
    return cls(params, lr=lr, **kw)


def set_cosine_schedule(optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
                        lr: float, min_lr: float) -> None:
    """Put the cosine schedule on ``lr`` -> ``min_lr`` at its current step (a resume with
    another ``--lr``, or a recovery that lowers it)."""
    t = scheduler.last_epoch
    now = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * min(t, scheduler.T_max)
                                                 / scheduler.T_max)) / 2
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler.eta_min = min_lr
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, now
    scheduler._last_lr = [now] * len(optimizer.param_groups)


def train_vae(vae: nn.Module, data: Iterator[torch.Tensor], cfg: VAETrainConfig, *,
              checkpoint_path: str | None = None, resume: bool = True,
              extra_state: dict | None = None, allow_config_change: bool = False) -> dict:
    """Train ``vae`` (docs/interfaces.md: ``elbo_terms``, ``regularization_terms``) in place.

    data: an endless iterator of batches [B, *data_shape]; a stream from
    ``vaebm_fast.data.batches`` is checkpointed too (exact resume). ``cfg`` is copied (a
    recovery lowers the copy's lr). The checkpoint holds ``{'kind': 'vae', 'config':
    {...extra_state['config'], 'train': cfg}, 'model', 'optimizer', 'scheduler', 'data',
    'step', 'rng'}``; resuming, divergence, config.json and metrics.jsonl: ``run_training``.
    Options given now override the checkpoint's (a lower ``lr`` takes effect on resume).
    With several processes ``data`` gives this process's slice of each global batch
    (``batches`` does, see the module docstring for the rest).
    Returns the last step's metrics ({} if the checkpoint was already at ``cfg.steps``).
    """
    cfg = replace(cfg)  # validated again; a recovery changes this copy, not the caller's
    vae.train()
    optimizer = make_optimizer(cfg.optimizer, vae.parameters(), cfg.lr,
                               eps=1e-3 if cfg.optimizer == "adamax" else 1e-8)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.steps, 1),
                                                           eta_min=cfg.min_lr)
    warmup_steps = max(1, int(cfg.kl_warmup_fraction * cfg.steps))
    device = next(vae.parameters()).device
    data_state = getattr(data, "state_dict", None)
    terms = data_parallel(ELBOTerms(vae), device)

    def step_fn(step: int) -> dict:
        x = next(data).to(device)
        beta = cfg.kl_weight * max(min(step / warmup_steps, 1.0), cfg.kl_min)
        recon, kl_groups, regs = terms(x)
        kl = torch.stack(kl_groups).sum(0)
        loss = (recon + beta * kl).mean()
        for value in regs.values():
            loss = loss + cfg.weight_decay_norm * value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item(), "nelbo": (recon + kl).mean().item(), "kl": kl.mean().item(),
                "beta": beta}

    def config() -> dict:
        return {**(extra_state or {}).get("config", {}), "train": asdict(cfg)}

    def state_fn() -> dict:
        return {"kind": "vae", "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "data": data_state() if data_state is not None else None}

    def load_fn(state: dict) -> None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = max(cfg.steps, 1)  # resuming with more --steps stretches the cosine
        saved = state["config"].get("train", {})
        if (saved.get("lr"), saved.get("min_lr")) != (cfg.lr, cfg.min_lr):
            set_cosine_schedule(optimizer, scheduler, cfg.lr, cfg.min_lr)
        if data_state is not None and state.get("data") is not None:
            data.load_state_dict(state["data"])

    def lower(factor: float) -> str:
        old = cfg.lr
        cfg.lr, cfg.min_lr = cfg.lr * factor, cfg.min_lr * factor
        set_cosine_schedule(optimizer, scheduler, cfg.lr, cfg.min_lr)
        return f"lr {old:.3g} -> {cfg.lr:.3g}"

    def weights() -> list:
        return [*vae.parameters(), *vae.buffers()]

    stage = Stage(kind="vae", desc="stage 1: VAE", config=config, step=step_fn, state=state_fn,
                  load=load_fn, weights=weights, lower=lower,
                  resume_options=lambda factor: f"--lr {cfg.lr * factor:.3g} (a lower "
                                                f"learning rate; VAETrainConfig.lr)",
                  watched=("loss",))
    metrics = run_training(stage, cfg, checkpoint_path=checkpoint_path, resume=resume,
                           allow_config_change=allow_config_change)
    vae.eval()
    return metrics
