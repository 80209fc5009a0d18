"""Stage 2: train the energy model by maximum likelihood with the generator frozen.

grad_psi L = E_data[grad_psi E(x)] - E_h[grad_psi E(x)]: the loss is
    mean E(x_data) - mean E(x_neg) + energy_reg * mean(E_data^2 + E_neg^2) + alpha_s * sum sigma
where x_neg comes from a short Langevin chain of the joint model h (eps space for VAEBM, latent
space for exponential tilting, data space for a pixel EBM), optionally persistent through a
replay buffer of eps_z (x in data space) with the official re-initialisation ramp.

The generator is frozen for good (eval mode, requires_grad False); the sampler differentiates
with respect to the chain state only, so Langevin never computes the energy's weight gradients
and leaves its parameters as they are. Adam with betas (0.99, 0.999) and, optionally, IGEBM's
per-element gradient clip to +-(3 sqrt(v_hat) + 0.1) from Adam's second moment.

With several processes (an initialised process group, see ``vaebm_fast.distributed``) the
energies and the spectral term are computed by ``EnergyTerms`` wrapped in
DistributedDataParallel (gradients averaged; the spectral regulariser's vectors broadcast
from rank 0). Each process runs its own chains on its slice of the global batch, with the
same seed; negative j of step t's global batch (size G) starts from and draws its noise from
Philox row stream t * G + j (docs/design.md, "Random numbers"), and positive j's
``data_noise`` from row t * G + j of the seed ``data_noise_seed(seed)``, so the chains and the
noisy positives, and with them the gradient, are those of one process with the global batch.
Each process keeps its own replay
buffer of ``replay_capacity`` chains, whose restart choices come from its own flat-stream
offsets (``rank_chain_offset``). A diverged chain on any process makes every process leave the
step before the backward. On resume at another number of processes the replay buffers are
concatenated and re-split (``reshard_rank_state``). BatchNorm normalises with each process's
own batch statistics; its running averages are rank 0's (a DDP buffer broadcast).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterator

import torch
from torch import nn

from .. import distributed
from ..ops import philox_normal_rows_
from ..sampling.fast import FastSampler
from ..sampling.langevin import ChainDivergedError, LangevinSampler
from ..sampling.replay import ReplayBuffer, reinit_probability
from . import options
from .loop import PeerDiverged, Stage, run_training
from .vae import data_parallel


def data_noise_seed(seed: int) -> int:
    """The Philox seed of the positives' data noise: the chains' seed with bit 62 flipped, a
    key of its own, so no offset a chain may reach (``rank_chain_offset`` spans up to 2**63)
    shares its numbers."""
    return seed ^ (1 << 62)


@dataclass
class EBMTrainConfig:
    """Stage-2 options; each is also a command-line flag (``--step-size``). Checked on
    construction (``training/options.py``: bad values raise ValueError naming the option)."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 4e-5
    beta1: float = 0.99
    beta2: float = 0.999
    weight_decay: float = 3e-5
    space: str = "eps"                # "eps" (VAEBM), "latent" (tilting) or "data" (IGEBM)
    langevin_steps: int = 10
    step_size: float = 8e-5
    noise_scale: float | None = None  # default sqrt(step_size)
    grad_clip: float | None = None    # Langevin gradient clip (data space)
    alpha_s: float = 0.2              # spectral regulariser weight
    energy_reg: float = 0.0           # energy-magnitude regulariser weight
    igebm_clip: bool = True
    data_noise: float = 0.0           # std of Gaussian noise added to positive samples
    replay_capacity: int = 0          # 0: no persistent chains
    replay_max_p: float = 0.6
    replay_anneal_steps: int = 5000
    seed: int = 0                     # Philox seed of the chains
    sampler: str = "fast"             # negative phase: "fast" (FastSampler) or "eager"
    checkpoint_every: int = 200
    log_every: int = 20               # steps between progress lines / metrics.jsonl records
    # Divergence: a loss or mean energy beyond this magnitude is an explosion (healthy runs
    # measured: at most 7.4 after the full demo: README, "Training and checkpoints"); inf
    # turns the test off.
    max_loss_magnitude: float = 1e6
    recover_attempts: int = 0         # automatic recoveries from divergence (0: off)
    recover_factor: float = 0.5       # each recovery multiplies lr and step_size by this

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        options.check_loop_options(self)
        options.check_real(self, "beta1", low=0, high=1, high_open=True)
        options.check_real(self, "beta2", low=0, high=1, high_open=True)
        options.check_real(self, "weight_decay", low=0)
        options.check_choice(self, "space")
        options.check_int(self, "langevin_steps", 0)
        options.check_real(self, "step_size", low=0, low_open=True)
        options.check_real(self, "noise_scale", low=0, optional=True)
        options.check_real(self, "grad_clip", low=0, low_open=True, optional=True)
        options.check_real(self, "alpha_s", low=0)
        options.check_real(self, "energy_reg", low=0)
        options.check_bool(self, "igebm_clip")
        options.check_real(self, "data_noise", low=0)
        options.check_int(self, "replay_capacity", 0)
        options.check_real(self, "replay_max_p", low=0, high=1)
        options.check_int(self, "replay_anneal_steps", 0)
        options.check_int(self, "seed", 0)
        options.check_choice(self, "sampler")


class EnergyTerms(nn.Module):
    """The energies and the spectral term of one step as one forward, the unit
    DistributedDataParallel wraps.

    forward(x_pos [B, ...], x_neg [B, ...], spectral) -> (E(x_pos) [B], E(x_neg) [B],
    energy.spectral_norm_loss() [] if ``spectral`` else None)
    """

    def __init__(self, energy: nn.Module) -> None:
        super().__init__()
        self.energy = energy

    def forward(self, x_pos: torch.Tensor, x_neg: torch.Tensor, spectral: bool):
        e_pos, e_neg = self.energy(x_pos), self.energy(x_neg)
        return e_pos, e_neg, self.energy.spectral_norm_loss() if spectral else None


def _replay_items(state: dict) -> list[torch.Tensor]:
    """The stored chains of a replay buffer's state, oldest first: [size, *shape] per group."""
    size, head, capacity = int(state["size"]), int(state["head"]), int(state["capacity"])
    order = (torch.arange(size) + (head if size == capacity else 0)) % capacity
    return [stored[order] for stored in state["storage"]]


def reshard_rank_state(saved: dict, world: distributed.World) -> dict:
    """This process's ``chain_offset`` and ``replay`` when a run saved by ``len(saved[key])``
    processes resumes with ``world.world_size``.

    chain_offset: this rank's range start plus the furthest any saved rank had gone in its own
    range (no noise is drawn twice). replay: the chains of every saved buffer, merged oldest
    first (interleaved by age, so every saved rank's newest chains survive), and every
    ``world_size``-th from ``rank`` on kept, the newest ``capacity`` of them.
    """
    offsets = saved["chain_offset"]
    progress = max(int(o) - distributed.rank_chain_offset(r) for r, o in enumerate(offsets))
    mine = {"chain_offset": distributed.rank_chain_offset(world.rank) + progress,
            "replay": None}
    buffers = [b for b in saved["replay"] if b is not None]
    if buffers:
        items = [_replay_items(b) for b in buffers]
        # age: 0 for each buffer's newest chain; a stable sort by descending age interleaves
        ages = torch.cat([torch.arange(len(i[0]) - 1, -1, -1) for i in items])
        order = torch.sort(-ages, stable=True).indices[world.rank::world.world_size]
        groups = [torch.cat(parts)[order] for parts in zip(*items)]
        capacity = int(buffers[0]["capacity"])
        kept = min(capacity, groups[0].shape[0])
        storage = []
        for group, like in zip(groups, buffers[0]["storage"]):
            stored = torch.zeros_like(like)
            stored[:kept] = group[group.shape[0] - kept:]
            storage.append(stored)
        mine["replay"] = {**buffers[0], "storage": storage, "size": kept,
                          "head": kept % capacity}
    return mine


def clip_grad_by_adam_moment_(optimizer: torch.optim.Adam, n_std: float = 3.0,
                              floor: float = 0.1) -> None:
    """IGEBM's clip: each gradient element to +-(n_std * sqrt(v_hat) + floor).

    v_hat is Adam's bias-corrected second moment; no clip before Adam has state."""
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = optimizer.state.get(p)
            if p.grad is None or not state or "exp_avg_sq" not in state:
                continue
            bias_correction = 1 - beta2 ** float(state["step"])
            bound = (state["exp_avg_sq"] / bias_correction).sqrt_().mul_(n_std).add_(floor)
            torch.clamp(p.grad, -bound, bound, out=p.grad)


def make_sampler(energy, generator, cfg: EBMTrainConfig, *, n_steps: int | None = None,
                 clamp=None, data_shape=None,
                 replay: ReplayBuffer | None = None) -> LangevinSampler:
    """The negative-phase sampler: a FastSampler (prepared snapshots of the energy, re-made
    after every optimizer step, and of the frozen generator, made once; CUDA graphs on a GPU)
    or, with ``cfg.sampler == "eager"``, the reference LangevinSampler. Same chains either way
    (same seed and offsets), to float tolerance."""
    cls = FastSampler if cfg.sampler == "fast" else LangevinSampler
    # output="sample": the negatives are draws x = T(eps_z, eps_x) of h, which the chain's last
    # potential has already decoded; the decoder mean would cost another decoder pass.
    return cls(
        energy, generator if cfg.space != "data" else None, space=cfg.space,
        step_size=cfg.step_size,
        n_steps=cfg.langevin_steps if n_steps is None else n_steps, noise_scale=cfg.noise_scale,
        grad_clip=cfg.grad_clip, clamp=clamp, data_shape=data_shape, replay_buffer=replay,
        output="sample")


def train_ebm(energy: nn.Module, generator: nn.Module | None, data: Iterator[torch.Tensor],
              cfg: EBMTrainConfig, *, checkpoint_path: str | None = None, resume: bool = True,
              extra_state: dict | None = None, clamp=None, data_shape=None,
              allow_config_change: bool = False) -> dict:
    """Train ``energy`` in place against the frozen ``generator``.

    data: endless iterator of [B, *data_shape] batches; a stream from
    ``vaebm_fast.data.batches`` is checkpointed too (exact resume). ``cfg`` is copied (a
    recovery lowers the copy's lr and step size). The checkpoint holds ``{'kind': 'ebm',
    'config', 'model', 'optimizer', 'replay', 'chain_offset', 'data', 'step', 'rng'}``;
    resuming, divergence (a diverged chain included), config.json and metrics.jsonl:
    ``run_training``. Options given now override the checkpoint's (a lower ``lr`` or
    ``step_size`` takes effect on resume). Returns the last step's metrics ({} if the
    checkpoint was already at ``cfg.steps``).
    """
    cfg = replace(cfg)  # validated again; a recovery changes this copy, not the caller's
    device = next(energy.parameters()).device
    if generator is not None:
        generator.eval()
        generator.requires_grad_(False)
    optimizer = torch.optim.Adam(energy.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 weight_decay=cfg.weight_decay)
    replay = None
    if cfg.replay_capacity > 0:
        shapes = ([tuple(generator.latent_shapes[i]) for i in range(len(generator.latent_shapes))]
                  if cfg.space != "data" else [tuple(data_shape)])
        replay = ReplayBuffer(cfg.replay_capacity, shapes, device=device)
    world = distributed.World.current()
    chain = {"offset": distributed.rank_chain_offset(world.rank), "sampler": None}
    terms = data_parallel(EnergyTerms(energy), device)

    def new_sampler() -> None:
        chain["sampler"] = make_sampler(energy, generator, cfg, clamp=clamp,
                                        data_shape=data_shape, replay=replay)

    new_sampler()
    spectral = getattr(energy, "spectral_norm_loss", None)
    data_state = getattr(data, "state_dict", None)

    def step_fn(step: int) -> dict:
        sampler = chain["sampler"]
        x_pos = next(data).to(device)
        if step == 0:
            with torch.no_grad():
                energy(x_pos)  # data-dependent init of weight-normalised convs (no-op if loaded)
        # Item j of the step's global batch (G items) owns row stream step * G + j: negative j's
        # chain draws from it, and positive j's data noise: the same draws however the batch is
        # split between processes. A replay buffer's restart choices are per process, from this
        # rank's flat-stream offset.
        local = x_pos.shape[0]
        first = step * local * world.world_size + world.rank * local
        if cfg.data_noise > 0:
            noise = torch.empty(x_pos.shape, dtype=x_pos.dtype, device=x_pos.device)
            philox_normal_rows_(noise, seed=data_noise_seed(cfg.seed), offset=0, first_row=first)
            x_pos = x_pos + cfg.data_noise * noise
        if replay is not None:
            sampler.reuse_prob = reinit_probability(step, cfg.replay_max_p, cfg.replay_anneal_steps)
        try:
            result = sampler.sample(local, seed=cfg.seed,
                                    offset=chain["offset"] if replay is not None else 0,
                                    first_index=first, return_chain=True, device=device,
                                    check_finite=True)
        except ChainDivergedError:
            distributed.all_true(False)  # the others learn it before their backward
            raise
        if not distributed.all_true(True):
            raise PeerDiverged("the negative-phase chain of another process diverged")
        if replay is not None:
            chain["offset"] = result.next_offset
        e_pos, e_neg, spec = terms(x_pos, result.x, spectral is not None and cfg.alpha_s > 0)
        loss = e_pos.mean() - e_neg.mean()
        if cfg.energy_reg > 0:
            loss = loss + cfg.energy_reg * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        if spec is not None:
            loss = loss + cfg.alpha_s * spec
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.igebm_clip:
            clip_grad_by_adam_moment_(optimizer)
        optimizer.step()
        out = {"loss": loss.item(), "e_pos": e_pos.mean().item(), "e_neg": e_neg.mean().item()}
        if spec is not None:
            out["spectral"] = spec.item()
        return out

    def config() -> dict:
        return {**(extra_state or {}).get("config", {}), "train": asdict(cfg)}

    def state_fn() -> dict:
        return {"kind": "ebm", "model": energy.state_dict(), "optimizer": optimizer.state_dict(),
                "replay": None if replay is None else replay.state_dict(),
                "chain_offset": chain["offset"],
                "data": data_state() if data_state is not None else None}

    def set_optimizer_options() -> None:
        for group in optimizer.param_groups:  # the options of this run, not the checkpoint's
            group.update(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)

    def load_fn(state: dict) -> None:
        energy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_optimizer_options()
        chain["offset"] = int(state["chain_offset"])
        if replay is not None and state.get("replay") is not None:
            replay.load_state_dict(state["replay"])
        if data_state is not None and state.get("data") is not None:
            data.load_state_dict(state["data"])

    def lower(factor: float) -> str:
        old_lr, old_step = cfg.lr, cfg.step_size
        cfg.lr, cfg.step_size = cfg.lr * factor, cfg.step_size * factor
        if cfg.noise_scale is not None:  # keep noise^2 / step_size, the chain's temperature
            cfg.noise_scale *= factor ** 0.5
        set_optimizer_options()
        new_sampler()
        return (f"lr {old_lr:.3g} -> {cfg.lr:.3g}, Langevin step size {old_step:.3g} -> "
                f"{cfg.step_size:.3g}")

    def resume_options(factor: float) -> str:
        return (f"--step-size {cfg.step_size * factor:.3g} (a smaller Langevin step; "
                f"EBMTrainConfig.step_size) or --lr {cfg.lr * factor:.3g} (a lower learning "
                f"rate; EBMTrainConfig.lr)")

    def weights() -> list:
        return [*energy.parameters(), *energy.buffers()]

    stage = Stage(kind="ebm", desc="stage 2: EBM", config=config, step=step_fn, state=state_fn,
                  load=load_fn, weights=weights, lower=lower, resume_options=resume_options,
                  watched=("loss", "e_pos", "e_neg"), rank_keys=("chain_offset", "replay"),
                  reshard=reshard_rank_state)
    return run_training(stage, cfg, checkpoint_path=checkpoint_path, resume=resume,
                        allow_config_change=allow_config_change)
