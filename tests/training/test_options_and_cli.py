"""Training options are validated with messages naming the option; the train commands turn
bad options, foreign run folders, foreign checkpoints and divergence into one-line errors."""
import io
import json
import math

import pytest
import torch

from vaebm_fast.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from vaebm_fast.cli import main
from vaebm_fast.training import EBMTrainConfig, VAETrainConfig

from .helpers import cli_error as fails

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_OPTIONS = [
    (VAETrainConfig, "steps", -1, "an integer >= 0"),
    (VAETrainConfig, "steps", "5", "an integer >= 0"),
    (VAETrainConfig, "steps", 2.5, "an integer >= 0"),
    (VAETrainConfig, "batch_size", 0, "an integer >= 1"),
    (VAETrainConfig, "checkpoint_every", 0, "an integer >= 1"),
    (VAETrainConfig, "checkpoint_every", -1, "an integer >= 1"),
    (VAETrainConfig, "log_every", 0, "an integer >= 1"),
    (VAETrainConfig, "kl_warmup_fraction", -0.1, r"a number in \[0, 1\]"),
    (VAETrainConfig, "kl_warmup_fraction", 1.5, r"a number in \[0, 1\]"),
    (VAETrainConfig, "lr", 0.0, "a number > 0"),
    (VAETrainConfig, "lr", -1e-3, "a number > 0"),
    (VAETrainConfig, "lr", math.nan, "a number > 0"),
    (VAETrainConfig, "lr", math.inf, "finite, a number > 0"),
    (VAETrainConfig, "min_lr", -1.0, "a number >= 0"),
    (VAETrainConfig, "optimizer", "sgd", "one of 'adam', 'adamax'"),
    (VAETrainConfig, "max_loss_magnitude", 0.0, "a number > 0"),
    (VAETrainConfig, "recover_attempts", -1, "an integer >= 0"),
    (VAETrainConfig, "recover_factor", 1.0, r"a number in \(0, 1\)"),
    (EBMTrainConfig, "replay_capacity", -1, "an integer >= 0"),
    (EBMTrainConfig, "step_size", 0.0, "a number > 0"),
    (EBMTrainConfig, "lr", math.nan, "a number > 0"),
    (EBMTrainConfig, "beta1", 1.0, r"a number in \[0, 1\)"),
    (EBMTrainConfig, "space", "pixel", "one of 'eps', 'latent', 'data'"),
    (EBMTrainConfig, "sampler", "turbo", "one of 'fast', 'eager'"),
    (EBMTrainConfig, "replay_max_p", 2.0, r"a number in \[0, 1\]"),
    (EBMTrainConfig, "noise_scale", -1.0, "a number >= 0 or None"),
    (EBMTrainConfig, "grad_clip", 0.0, "a number > 0 or None"),
    (EBMTrainConfig, "seed", -1, "an integer >= 0"),
    (EBMTrainConfig, "igebm_clip", 1, "True or False"),
    (EBMTrainConfig, "langevin_steps", -2, "an integer >= 0"),
]


@pytest.mark.parametrize("cls, name, value, rule", BAD_OPTIONS)
def test_bad_option_values_are_refused_naming_the_option(cls, name, value, rule):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name} \({flag}\) must be {rule} "
                                         rf"\(got {repr(value)}\)$"):
        cls(**{name: value})


def test_options_assigned_later_are_checked_when_training_starts():
    from vaebm_fast.data import TwentyFiveGaussians, batches
    from vaebm_fast.models.mlp_vae import MLPVAE
    from vaebm_fast.training import train_vae
    cfg = VAETrainConfig(steps=2)
    cfg.checkpoint_every = 0
    with pytest.raises(ValueError, match=r"checkpoint_every \(--checkpoint-every\)"):
        train_vae(MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1),
                  batches(TwentyFiveGaussians(), 8), cfg)


def run(*argv):
    assert main([str(a) for a in argv]) == 0


TOY = ("--dataset", "25gaussians", "--batch-size", 16)


@pytest.mark.parametrize("flags, fragment", [
    (("--steps", -1), "VAETrainConfig.steps (--steps) must be an integer >= 0 (got -1)"),
    (("--checkpoint-every", -1), "checkpoint_every (--checkpoint-every) must be an integer >= 1"),
    (("--kl-warmup-fraction", -1), "kl_warmup_fraction (--kl-warmup-fraction) must be a number"),
    (("--lr", "nan"), "VAETrainConfig.lr (--lr) must be a number > 0 (got nan)"),
])
def test_train_vae_refuses_bad_flags_before_writing_anything(tmp_path, flags, fragment):
    out = tmp_path / "run"
    assert fragment in fails("train-vae", *TOY, "--out", out, *flags)
    assert not out.exists()


def test_a_bad_type_in_the_config_file_names_the_option(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"steps": "5"}}))
    message = fails("train-vae", *TOY, "--out", tmp_path / "run", "--config", config)
    assert "VAETrainConfig.steps (--steps) must be an integer >= 0 (got '5')" in message


def test_train_ebm_refuses_a_negative_replay_capacity(tmp_path):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 1)
    message = fails("train-ebm", "--out", out, "--replay-capacity", -1)
    assert "EBMTrainConfig.replay_capacity (--replay-capacity) must be an integer >= 0" in message
    assert not (out / "ebm.pt").exists()


def test_a_run_folder_keeps_its_data_set_and_architecture(tmp_path, capsys):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 2)
    message = fails("train-vae", "--dataset", "swissroll", "--batch-size", 16, "--out", out,
                    "--steps", 4)
    assert f"checkpoint {out / 'vae.pt'} was trained with dataset '25gaussians'" in message
    assert "this run asks for dataset 'swissroll'" in message
    assert "--allow-config-change" in message
    assert load_checkpoint(out / "vae.pt")["step"] == 2

    run("train-vae", "--dataset", "swissroll", "--batch-size", 16, "--out", out, "--steps", 4,
        "--allow-config-change")
    assert load_checkpoint(out / "vae.pt")["config"]["dataset"] == "swissroll"

    # Another architecture: refused; allowed, it still cannot load: one line, no traceback.
    config = tmp_path / "wide.json"
    config.write_text(json.dumps({"vae": {"hidden": 64}}))
    wide = ("train-vae", "--dataset", "swissroll", "--batch-size", 16, "--out", out, "--steps",
            6, "--config", config)
    assert "was trained with vae" in fails(*wide)
    message = fails(*wide, "--allow-config-change")
    assert f"checkpoint {out / 'vae.pt'} does not fit this run" in message
    assert "size mismatch" in message


def test_train_ebm_explains_a_stage_one_checkpoint_that_does_not_fit(tmp_path):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 1)
    state = load_checkpoint(out / "vae.pt")
    state["config"]["vae"]["hidden"] = 64  # the config no longer describes the weights
    save_checkpoint(out / "vae.pt", state)
    message = fails("train-ebm", "--out", out, "--steps", 1)
    assert f"checkpoint {out / 'vae.pt'} does not fit the VAE its config describes" in message
    assert "size mismatch" in message

    save_checkpoint(out / "vae.pt", {"kind": "vae", "model": state["model"]})
    message = fails("train-ebm", "--out", out, "--steps", 1)
    assert "has no 'dataset' and 'vae' in its config" in message


def test_truncated_random_and_newer_checkpoints_are_one_line_errors(tmp_path):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 1)
    path = out / "vae.pt"
    good = path.read_bytes()
    resume = ("train-vae", *TOY, "--out", out, "--steps", 3)
    path.write_bytes(good[: len(good) // 3])
    assert "is corrupt or truncated" in fails(*resume)
    path.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    assert "is corrupt or truncated" in fails(*resume)
    state = torch.load(io.BytesIO(good), weights_only=True)
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, path)
    assert "newer vaebm_fast" in fails(*resume)
    assert "newer vaebm_fast" in fails("train-ebm", "--out", out)


def test_divergence_on_the_command_line_names_the_checkpoint_and_the_option(tmp_path):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 3, "--checkpoint-every", 1)
    message = fails("train-vae", *TOY, "--out", out, "--steps", 8, "--checkpoint-every", 1,
                    "--lr", 1e20)
    assert message.startswith("error: stage 1: VAE diverged at step ")
    assert f"the last healthy checkpoint is {out / 'vae.pt'} (step 3)" in message
    assert "--lr 5e+19" in message
    state = load_checkpoint(out / "vae.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() and v.abs().max() < 1e3 for v in state["model"].values())
    run("train-vae", *TOY, "--out", out, "--steps", 8, "--checkpoint-every", 1, "--lr", 1e-3)
    assert load_checkpoint(out / "vae.pt")["step"] == 8


def test_train_ebm_refuses_a_vae_with_nan_weights(tmp_path):
    out = tmp_path / "run"
    run("train-vae", *TOY, "--out", out, "--steps", 1)
    state = load_checkpoint(out / "vae.pt")
    for tensor in state["model"].values():
        tensor.fill_(float("nan"))
    save_checkpoint(out / "vae.pt", state)
    message = fails("train-ebm", "--out", out, "--steps", 1)
    assert f"checkpoint {out / 'vae.pt'} holds NaN/Inf weights" in message
