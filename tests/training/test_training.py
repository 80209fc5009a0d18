"""Two-stage training: ELBO stage, EBM stage with the VAE frozen, resumable checkpoints."""
import math

import pytest
import torch
from torch import nn

from vaebm_fast.checkpoint import CheckpointError, load_checkpoint
from vaebm_fast.data import TwentyFiveGaussians, batches, load_digits_images
from vaebm_fast.models.energy import MLPEnergy, small_image_ebm
from vaebm_fast.models.mlp_vae import MLPVAE
from vaebm_fast.models.nvae import HierarchicalVAE
from vaebm_fast.sampling import reinit_probability
from vaebm_fast.training import (EBMTrainConfig, TrainingDiverged, VAETrainConfig,
                                 clip_grad_by_adam_moment_, train_ebm, train_vae)
from vaebm_fast.training import ebm as ebm_training

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = TwentyFiveGaussians()


def toy_batches(batch_size):
    return batches(TOY, batch_size)


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return MLPVAE(data_dim=2, latent_dim=2, hidden=32, depth=2)


def tiny_energy(seed=0):
    torch.manual_seed(seed)
    return MLPEnergy(in_dim=2, hidden=32, depth=2)


def vae_cfg(**kw):
    base = dict(steps=20, batch_size=64, lr=3e-3, kl_warmup_fraction=0.2, weight_decay_norm=0.0,
                checkpoint_every=10)
    return VAETrainConfig(**{**base, **kw})


def ebm_cfg(**kw):
    base = dict(steps=12, batch_size=32, lr=1e-3, beta1=0.5, space="eps", langevin_steps=4,
                step_size=2e-3, alpha_s=0.1, energy_reg=0.1, igebm_clip=True, checkpoint_every=6)
    return EBMTrainConfig(**{**base, **kw})


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_params(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def nelbo(vae, x):
    torch.manual_seed(5)
    with torch.no_grad():
        recon, kl = vae.elbo_terms(x)
    return (recon + torch.stack(kl).sum(0)).mean().item()


def crash_after(iterator, n_batches):
    """Yield n_batches from iterator, then fail as a killed process would."""
    for i, batch in enumerate(iterator):
        if i == n_batches:
            raise RuntimeError("simulated crash")
        yield batch


def leftover_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# Two-stage run
# --------------------------------------------------------------------------------------------
def test_two_stage_run_on_25_gaussians():
    vae = tiny_vae()
    x_test = TOY.sample(2048, torch.Generator().manual_seed(123))
    before = nelbo(vae, x_test)
    metrics = train_vae(vae, toy_batches(128), vae_cfg(steps=150, batch_size=128,
                                                       kl_warmup_fraction=0.1))
    after = nelbo(vae, x_test)
    assert math.isfinite(metrics["loss"]) and metrics["beta"] == 1.0
    assert after < 0.6 * before, (before, after)  # held-out NELBO drops (about 14.6 -> 4)
    assert not vae.training

    # Stage 2: the VAE is frozen; the EBM learns to give data lower energy than VAE samples.
    vae.zero_grad(set_to_none=True)  # drop stage 1's last gradients
    vae_before = params(vae)
    energy = tiny_energy()
    energy_before = params(energy)
    x_vae = vae.sample(1024, generator=torch.Generator().manual_seed(1), mean=False)
    with torch.no_grad():
        gap_before = (energy(x_test[:1024]).mean() - energy(x_vae).mean()).item()
    metrics = train_ebm(energy, vae, toy_batches(128),
                        ebm_cfg(steps=20, batch_size=128, lr=1e-2, alpha_s=0.0, energy_reg=0.0,
                                igebm_clip=False))
    assert all(math.isfinite(v) for v in metrics.values())
    assert same_params(params(vae), vae_before)
    assert all(p.grad is None for p in vae.parameters())
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
    assert not same_params(params(energy), energy_before)
    assert all(p.requires_grad for p in energy.parameters())  # unfrozen after each chain
    with torch.no_grad():
        gap_after = (energy(x_test[:1024]).mean() - energy(x_vae).mean()).item()
    assert gap_after < gap_before - 0.25, (gap_before, gap_after)  # about 0 -> -0.6


class NegativePhaseSpy:
    """What train_ebm's negative phase does, recorded through the sampler it builds
    (``make_sampler``): every chain's result, and for every batch of start states drawn from
    the replay buffer, the buffer's content before the draw and what was drawn."""

    def __init__(self, monkeypatch):
        self.sampler, self.results, self.starts = None, [], []
        make = ebm_training.make_sampler

        def recording_make_sampler(*args, **kwargs):
            self.sampler = make(*args, **kwargs)
            self._wrap(self.sampler)
            return self.sampler

        monkeypatch.setattr(ebm_training, "make_sampler", recording_make_sampler)

    def _wrap(self, sampler):
        sample = sampler.sample

        def recording_sample(*args, **kwargs):
            self.results.append(sample(*args, **kwargs))
            return self.results[-1]

        sampler.sample = recording_sample
        buf = sampler.replay_buffer
        if buf is None:
            return
        initial_states = buf.initial_states

        def recording_initial_states(batch_size, reuse_prob, **kwargs):
            stored = [s[:len(buf)].clone() for s in buf.storage]
            states, n_reused, offset = initial_states(batch_size, reuse_prob, **kwargs)
            self.starts.append({"chain": len(self.results), "p": reuse_prob, "stored": stored,
                                "n_reused": n_reused, "states": [s.clone() for s in states]})
            return states, n_reused, offset

        buf.initial_states = recording_initial_states


def rows_are_stored(rows, stored):
    """Whether every row of rows [n, ...] equals some row of stored [m, ...]."""
    if rows.shape[0] == 0:
        return True
    same = (rows.flatten(1)[:, None, :] == stored.flatten(1)[None, :, :]).all(-1)
    return bool(same.any(1).all())


def check_replay(spy, cfg, n_chains):
    """The buffer holds the last chains' final states and is full; chains started from it once
    the reuse probability is positive, each from stored rows, with the official ramp."""
    buf = spy.sampler.replay_buffer
    assert len(spy.results) == n_chains
    assert len(buf) == cfg.replay_capacity
    last = spy.results[-1]
    for g, stored in enumerate(buf.storage):
        assert rows_are_stored(last.states[g], stored)
    # Step 0 has p = 0 (no draw from the buffer); every later step draws with the ramp's p.
    assert [start["chain"] for start in spy.starts] == list(range(1, n_chains))
    assert [start["p"] for start in spy.starts] == [
        reinit_probability(step, cfg.replay_max_p, cfg.replay_anneal_steps)
        for step in range(1, n_chains)]
    assert sum(start["n_reused"] for start in spy.starts) > 0
    for start in spy.starts:
        k = start["n_reused"]
        for g, stored in enumerate(start["stored"]):
            assert rows_are_stored(start["states"][g][:k], stored)


@pytest.mark.parametrize("space", ["eps", "latent"])
def test_stage_two_with_regularisers_replay_and_latent_space(monkeypatch, space):
    vae = tiny_vae()
    energy = tiny_energy()
    # Every batch the energy sees (forward pre-hook) and every data batch drawn.
    seen, drawn = [], []
    energy.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))

    def recorded_batches():
        for batch in toy_batches(64):
            drawn.append(batch.clone())
            yield batch

    spy = NegativePhaseSpy(monkeypatch)
    noise = 0.01
    cfg = ebm_cfg(steps=6, batch_size=64, space=space, replay_capacity=96, data_noise=noise,
                  replay_anneal_steps=3)
    metrics = train_ebm(energy, vae, recorded_batches(), cfg)
    assert set(metrics) == {"loss", "e_pos", "e_neg", "spectral"}
    assert all(math.isfinite(v) for v in metrics.values())
    check_replay(spy, cfg, n_chains=6)
    # The chains ran in the configured space: eps holds eps_x as its last state group.
    n_groups = len(vae.latent_shapes) + (space == "eps")
    assert all(len(r.states) == n_groups for r in spy.results)

    # Data noise: each step the energy saw its batch plus N(0, noise^2) noise. The noisy copy is
    # the input within 0.1 of the batch everywhere (negatives are nowhere near all 64 points);
    # the residuals' std is `noise` within 10% (768 values: standard error 2.6%).
    assert len(drawn) == 6
    residuals = []
    for batch in drawn:
        noisy = [x for x in seen if x.shape == batch.shape and not torch.equal(x, batch)
                 and (x - batch).abs().max() < 0.1]
        assert len(noisy) == 1
        residuals.append(noisy[0] - batch)
    residual_std = torch.cat(residuals).std().item()
    assert abs(residual_std - noise) < 0.1 * noise, residual_std


def test_stage_two_hierarchical_vae_and_pixel_space(monkeypatch):
    """The digits path: NVAE-style 'tiny' VAE in eps space, and an IGEBM-style data-space EBM
    with clamp and replay buffer."""
    images = load_digits_images("train")
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny").eval()
    energy = small_image_ebm(in_channels=1, n_channel=8)
    before = params(energy)
    m = train_ebm(energy, vae, batches(images, 8),
                  ebm_cfg(steps=2, batch_size=8, langevin_steps=2, step_size=5e-5, alpha_s=0.2))
    assert all(math.isfinite(v) for v in m.values()) and not same_params(params(energy), before)

    # Pixel space: big steps of a clipped gradient plus noise, kept inside [0, 1] by the clamp
    # (without it, start pixels within a step of an edge would leave the box), and persistent
    # chains through a buffer of x.
    energy = small_image_ebm(in_channels=1, n_channel=8)
    spy = NegativePhaseSpy(monkeypatch)
    cfg = ebm_cfg(steps=4, batch_size=8, space="data", langevin_steps=3, step_size=1.0,
                  noise_scale=0.005, grad_clip=0.01, replay_capacity=16, replay_anneal_steps=1)
    m = train_ebm(energy, None, batches(images, 8), cfg, clamp=(0.0, 1.0), data_shape=(1, 8, 8))
    assert all(math.isfinite(v) for v in m.values())
    for result in spy.results:
        assert result.x.shape == (8, 1, 8, 8)
        assert result.x.min() >= 0.0 and result.x.max() <= 1.0
    check_replay(spy, cfg, n_chains=4)


def test_hierarchical_vae_tiny_trains_through_train_vae(tmp_path):
    images = load_digits_images("train")
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny")
    before = params(vae)
    path = tmp_path / "vae.pt"
    cfg = VAETrainConfig(steps=4, batch_size=16, lr=3e-3, optimizer="adamax",
                         weight_decay_norm=1e-3, checkpoint_every=2)
    metrics = train_vae(vae, batches(images, 16), cfg, checkpoint_path=str(path))
    assert all(math.isfinite(v) for v in metrics.values())
    assert not same_params(params(vae), before) and not vae.training
    state = load_checkpoint(path, kind="vae")
    assert state["step"] == 4 and state["config"]["train"]["optimizer"] == "adamax"
    assert same_params(state["model"], params(vae))
    assert leftover_temp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Resumable training
# --------------------------------------------------------------------------------------------
def test_vae_resume_after_crash_is_identical_to_a_straight_run(tmp_path, caplog):
    cfg = vae_cfg(steps=20, checkpoint_every=10)
    torch.manual_seed(1)
    straight = tiny_vae()
    train_vae(straight, toy_batches(64), cfg)

    path = tmp_path / "vae.pt"
    torch.manual_seed(1)
    crashed = tiny_vae()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_vae(crashed, crash_after(toy_batches(64), 14), cfg, checkpoint_path=str(path))
    assert load_checkpoint(path)["step"] == 10
    assert leftover_temp_files(tmp_path) == []

    torch.manual_seed(99)  # a new process: other weights, other RNG state
    resumed = tiny_vae(seed=99)
    with caplog.at_level("INFO", logger="vaebm_fast"):
        train_vae(resumed, toy_batches(64), cfg, checkpoint_path=str(path))
    assert f"resumed from {path} at step 10" in caplog.text
    assert same_params(params(resumed), params(straight))
    assert load_checkpoint(path)["step"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "metrics.jsonl", "vae.prev.pt", "vae.pt"]


def test_ebm_resume_after_crash_is_identical_to_a_straight_run(tmp_path):
    """Everything that shapes the next steps survives a restart: weights, Adam moments, the
    Philox offset of the chains, the replay buffer, the spectral vectors and the RNG that draws
    the data and the data noise."""
    vae = tiny_vae()
    cfg = ebm_cfg(steps=12, checkpoint_every=6, replay_capacity=48, replay_anneal_steps=4,
                  data_noise=0.01)
    torch.manual_seed(2)
    straight = tiny_energy()
    train_ebm(straight, vae, toy_batches(32), cfg, checkpoint_path=str(tmp_path / "a.pt"))

    path = tmp_path / "ebm.pt"
    torch.manual_seed(2)
    crashed = tiny_energy()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ebm(crashed, vae, crash_after(toy_batches(32), 9), cfg, checkpoint_path=str(path))
    state = load_checkpoint(path, kind="ebm")
    assert state["step"] == 6 and state["chain_offset"] > 0 and state["replay"]["size"] > 0

    torch.manual_seed(99)
    resumed = tiny_energy(seed=99)
    train_ebm(resumed, vae, toy_batches(32), cfg, checkpoint_path=str(path))
    assert same_params(params(resumed), params(straight))
    final, reference = load_checkpoint(path), load_checkpoint(tmp_path / "a.pt")
    assert final["step"] == 12 and final["chain_offset"] == reference["chain_offset"]
    assert torch.equal(final["replay"]["storage"][0], reference["replay"]["storage"][0])
    assert leftover_temp_files(tmp_path) == []


def test_rerun_with_fewer_steps_does_not_rewind_the_checkpoint(tmp_path):
    path = str(tmp_path / "vae.pt")
    vae = tiny_vae()
    train_vae(vae, toy_batches(64), vae_cfg(steps=10), checkpoint_path=path)
    trained = params(vae)
    again = tiny_vae(seed=5)
    train_vae(again, toy_batches(64), vae_cfg(steps=4), checkpoint_path=path)
    assert same_params(params(again), trained)  # loaded, nothing redone
    assert load_checkpoint(path)["step"] == 10  # still says 10 steps were done


def test_no_resume_starts_over(tmp_path, caplog):
    path = str(tmp_path / "vae.pt")
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=6), checkpoint_path=path)
    with caplog.at_level("INFO", logger="vaebm_fast"):
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=3), checkpoint_path=path,
                  resume=False)
    assert "resumed" not in caplog.text and load_checkpoint(path)["step"] == 3


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "ebm.pt"
    vae = tiny_vae()
    if content == "truncated":
        train_ebm(tiny_energy(), vae, toy_batches(32), ebm_cfg(steps=2), checkpoint_path=str(path))
        data = path.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_ebm(tiny_energy(), vae, toy_batches(32), ebm_cfg(steps=2), checkpoint_path=str(path))


def test_checkpoint_of_the_wrong_kind_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=2), checkpoint_path=str(path))
    with pytest.raises(CheckpointError, match="has kind 'vae', but kind 'ebm' is needed"):
        load_checkpoint(path, kind="ebm")


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------
def nan_at(iterator, index):
    for i, batch in enumerate(iterator):
        yield torch.full_like(batch, float("nan")) if i == index else batch


@pytest.mark.parametrize("stage", ["vae", "ebm"])
def test_diverging_loss_raises_and_keeps_the_last_checkpoint(tmp_path, stage):
    path = tmp_path / f"{stage}.pt"
    vae = tiny_vae()
    if stage == "vae":
        model, cfg = tiny_vae(seed=3), vae_cfg(steps=12, checkpoint_every=5)

        def run(data):
            return train_vae(model, data, cfg, checkpoint_path=str(path))
    else:
        model, cfg = tiny_energy(), ebm_cfg(steps=12, checkpoint_every=5)

        def run(data):
            return train_ebm(model, vae, data, cfg, checkpoint_path=str(path))
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7: (loss|e_pos) became nan; "
                       r"the last healthy checkpoint is .*(vae|ebm)\.pt \(step 5\)") as info:
        run(nan_at(toy_batches(32), 7))
    assert info.value.checkpoint == path and info.value.checkpoint_step == 5
    assert isinstance(info.value, FloatingPointError)
    state = load_checkpoint(path, kind=stage)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert leftover_temp_files(tmp_path) == []
    # Training resumes from the good checkpoint and finishes.
    metrics = run(toy_batches(32))
    assert math.isfinite(metrics["loss"]) and load_checkpoint(path)["step"] == 12


# --------------------------------------------------------------------------------------------
# IGEBM gradient clip
# --------------------------------------------------------------------------------------------
def test_clip_grad_by_adam_moment():
    a = nn.Parameter(torch.zeros(4))
    b = nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b], "betas": (0.9, 0.5)}], lr=0.1,
                           betas=(0.9, 0.99))
    g1a, g1b = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([4.0, -1.0])
    a.grad, b.grad = g1a.clone(), g1b.clone()
    clip_grad_by_adam_moment_(opt)  # no Adam state yet: no clip
    assert torch.equal(a.grad, g1a) and torch.equal(b.grad, g1b)
    opt.step()

    # After one step v_hat = g1^2 (bias-corrected with each group's beta2), so the bound is
    # 3 |g1| + 0.1 per element.
    a.grad = torch.tensor([100.0, -100.0, 0.01, 0.0])
    b.grad = torch.tensor([-50.0, 0.5])
    clip_grad_by_adam_moment_(opt)
    assert torch.allclose(a.grad, torch.tensor([3.1, -6.1, 0.01, 0.0]))
    assert torch.allclose(b.grad, torch.tensor([-12.1, 0.5]))
    b.grad = torch.tensor([-50.0, 50.0])
    clip_grad_by_adam_moment_(opt, n_std=1.0, floor=0.0)
    assert torch.allclose(b.grad, torch.tensor([-4.0, 1.0]))
    # Parameters without a gradient are skipped.
    a.grad = None
    clip_grad_by_adam_moment_(opt)
    assert a.grad is None
