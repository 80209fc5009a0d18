"""Divergence in training: what counts, what is kept on disk, what the message says, recovery.

The defects these guard against: a checkpoint written after the weights had already exploded
(finite 1e20 weights, or NaN weights from a NaN gradient) and then named as the one to resume
from; a finite blow-up of the loss or the energies accepted as training; a diverged chain
raised without naming the checkpoint; a rerun with the advised lower --lr that silently kept
the checkpoint's learning rate.
"""
import math

import pytest
import torch

from vaebm_fast.checkpoint import load_checkpoint, previous_path
from vaebm_fast.sampling import ChainDivergedError
from vaebm_fast.training import TrainingDiverged, train_ebm, train_vae
from vaebm_fast.training import ebm as ebm_training

from .test_training import (ebm_cfg, leftover_temp_files, nan_at, params, same_params,
                            tiny_energy, tiny_vae, toy_batches, vae_cfg)

pytestmark = pytest.mark.usefixtures("one_thread")


def finite(state):
    return all(torch.isfinite(v).all() for v in state["model"].values()
               if v.is_floating_point())


def test_exploded_but_finite_weights_are_never_written(tmp_path):
    """--lr 1e20 with a checkpoint every step: the step's weights are finite (~1e20) and the
    next step's loss explodes. The file on disk stays the healthy step before, and a rerun
    with the lower --lr the message names resumes from it and uses that rate."""
    path = tmp_path / "vae.pt"
    vae = tiny_vae()
    train_vae(vae, toy_batches(64), vae_cfg(steps=4, checkpoint_every=1), checkpoint_path=path)
    healthy = params(vae)

    with pytest.raises(TrainingDiverged) as info:
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=8, checkpoint_every=1, lr=1e20),
                  checkpoint_path=path)
    message = str(info.value)
    assert info.value.step == 5 and info.value.checkpoint_step == 4  # step 4 moved the weights
    assert f"the last healthy checkpoint is {path} (step 4)" in message
    assert "--lr 5e+19" in message and "\n" not in message
    state = load_checkpoint(path)
    assert state["step"] == 4 and finite(state) and same_params(state["model"], healthy)
    assert leftover_temp_files(tmp_path) == []

    resumed = tiny_vae(seed=7)
    metrics = train_vae(resumed, toy_batches(64), vae_cfg(steps=8, checkpoint_every=1, lr=1e-3),
                        checkpoint_path=path)
    final = load_checkpoint(path)
    assert math.isfinite(metrics["loss"]) and final["step"] == 8 and finite(final)
    assert final["optimizer"]["param_groups"][0]["initial_lr"] == 1e-3  # the new rate applied
    assert final["config"]["train"]["lr"] == 1e-3


def test_nan_weights_from_a_nan_gradient_are_caught_at_the_optimizer_step(tmp_path):
    """A finite loss with a NaN parameter gradient makes NaN weights at the optimizer step:
    caught there, by the weights check, not saved."""
    path = tmp_path / "ebm.pt"
    vae, energy = tiny_vae(), tiny_energy()
    calls = {"n": 0}

    def nan_gradient_at_step_3(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 4 else grad

    next(energy.parameters()).register_hook(nan_gradient_at_step_3)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3: the weights became NaN/Inf "
                                               r"at the optimizer step"):
        train_ebm(energy, vae, toy_batches(32), ebm_cfg(steps=6, checkpoint_every=1,
                                                        igebm_clip=False),
                  checkpoint_path=path)
    state = load_checkpoint(path)
    assert state["step"] == 2 and finite(state)  # step 3 was never written: 2 is the last
    assert finite(load_checkpoint(previous_path(path)))


@pytest.mark.parametrize("stage", ["vae", "ebm"])
def test_a_finite_explosion_beyond_max_loss_magnitude_is_divergence(tmp_path, stage):
    """The explosion test: magnitude, not only NaN/Inf (the toy loss is ~10, energies ~1)."""
    path = tmp_path / f"{stage}.pt"
    if stage == "vae":
        with pytest.raises(TrainingDiverged, match=r"\|loss\| = [0-9.e+]+ exceeds "
                                                   r"max_loss_magnitude = 0\.001"):
            train_vae(tiny_vae(), toy_batches(64), vae_cfg(max_loss_magnitude=1e-3),
                      checkpoint_path=path)
    else:
        # e_neg blows up while the loss stays moderate: the energies are watched too.
        energy = tiny_energy()
        with torch.no_grad():
            energy.out.bias.fill_(1e4)
        with pytest.raises(TrainingDiverged, match=r"\|e_pos\| = 1e\+04 exceeds"):
            train_ebm(energy, tiny_vae(), toy_batches(32), ebm_cfg(max_loss_magnitude=1e3,
                                                                   alpha_s=0, energy_reg=0),
                      checkpoint_path=path)
    assert not path.exists()  # nothing healthy was ever reached: nothing written


def test_a_diverged_chain_is_a_training_divergence_that_names_the_checkpoint(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "ebm.pt"
    make = ebm_training.make_sampler

    def sampler_that_diverges_at_the_fifth_chain(*args, **kwargs):
        sampler = make(*args, **kwargs)
        sample, calls = sampler.sample, {"n": 0}

        def diverging_sample(n, **kw):
            calls["n"] += 1
            if calls["n"] == 5:
                raise ChainDivergedError(3, n, n)
            return sample(n, **kw)

        sampler.sample = diverging_sample
        return sampler

    monkeypatch.setattr(ebm_training, "make_sampler", sampler_that_diverges_at_the_fifth_chain)
    with pytest.raises(TrainingDiverged) as info:
        train_ebm(tiny_energy(), tiny_vae(), toy_batches(32), ebm_cfg(steps=8,
                                                                      checkpoint_every=2),
                  checkpoint_path=path)
    message = str(info.value)
    assert message.startswith("stage 2: EBM diverged at step 4: its negative-phase Langevin "
                              "chain diverged (Langevin chain diverged: 32 of 32 chains")
    assert f"{path} (step 2)" in message  # 4 was pending: step 4's chain had not come back
    assert "--step-size 0.001" in message and "--lr 0.0005" in message
    assert isinstance(info.value.__cause__, ChainDivergedError)
    assert load_checkpoint(path)["step"] == 2


def test_recovery_reloads_the_last_healthy_state_and_lowers_the_rate(tmp_path, caplog):
    path = tmp_path / "vae.pt"
    cfg = vae_cfg(steps=12, checkpoint_every=5, recover_attempts=2, recover_factor=0.25)
    with caplog.at_level("INFO", logger="vaebm_fast"):
        metrics = train_vae(tiny_vae(), nan_at(toy_batches(32), 7), cfg, checkpoint_path=path)
    assert math.isfinite(metrics["loss"])
    assert ("stage 1: VAE diverged at step 7: loss became nan. Recovery 1 of 2: back to the "
            "last healthy state (step 5), lr 0.003 -> 0.00075") in caplog.text
    state = load_checkpoint(path)
    assert state["step"] == 12 and finite(state)
    assert state["config"]["train"]["lr"] == 0.00075 and cfg.lr == 3e-3  # the caller's cfg kept

    # Without a checkpoint path it recovers from the state kept in memory.
    metrics = train_vae(tiny_vae(), nan_at(toy_batches(32), 3), cfg)
    assert math.isfinite(metrics["loss"])


def test_recovery_gives_up_after_its_attempts(tmp_path):
    def nan_from(iterator, index):
        for i, batch in enumerate(iterator):
            yield torch.full_like(batch, float("nan")) if i >= index else batch

    cfg = vae_cfg(steps=12, checkpoint_every=2, recover_attempts=2)
    with pytest.raises(TrainingDiverged, match=r"\(2 automatic recoveries did not help\)"):
        train_vae(tiny_vae(), nan_from(toy_batches(32), 5), cfg,
                  checkpoint_path=tmp_path / "vae.pt")
    assert load_checkpoint(tmp_path / "vae.pt")["step"] == 4


def test_ebm_recovery_lowers_the_langevin_step_size(tmp_path, monkeypatch, caplog):
    make = ebm_training.make_sampler
    built = []

    def once_diverging(*args, **kwargs):
        sampler = make(*args, **kwargs)
        built.append(sampler)
        if len(built) == 1:
            sample, calls = sampler.sample, {"n": 0}

            def diverging_sample(n, **kw):
                calls["n"] += 1
                if calls["n"] == 4:
                    raise ChainDivergedError(1, n, n)
                return sample(n, **kw)

            sampler.sample = diverging_sample
        return sampler

    monkeypatch.setattr(ebm_training, "make_sampler", once_diverging)
    cfg = ebm_cfg(steps=6, checkpoint_every=2, recover_attempts=1)
    with caplog.at_level("WARNING", logger="vaebm_fast"):
        train_ebm(tiny_energy(), tiny_vae(), toy_batches(32), cfg,
                  checkpoint_path=tmp_path / "ebm.pt")
    assert "Langevin step size 0.002 -> 0.001" in caplog.text
    assert [s.step_size for s in built] == [2e-3, 1e-3]
    state = load_checkpoint(tmp_path / "ebm.pt")
    assert state["step"] == 6 and state["config"]["train"]["step_size"] == 1e-3
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-4
