"""Resuming a run folder: exact on tensor data sets, refused for another data set or
architecture, nothing rewritten when there is nothing to train, stale temp files cleaned up,
config.json, metrics.jsonl and the progress log beside the checkpoint."""
import json
import os

import pytest
import torch

from vaebm_fast.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint
from vaebm_fast.data import batches, load_digits_images
from vaebm_fast.models.mlp_vae import MLPVAE
from vaebm_fast.models.nvae import HierarchicalVAE
from vaebm_fast.training import VAETrainConfig, train_ebm, train_vae

from .test_checkpoint import dead_pid
from .test_training import ebm_cfg, params, same_params, tiny_energy, tiny_vae, toy_batches, vae_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

TOY_CONFIG = {"config": {"dataset": "25gaussians",
                         "vae": {"type": "mlp", "data_dim": 2, "latent_dim": 2, "hidden": 32,
                                 "depth": 2}}}


class CrashingStream:
    """A checkpointable batch stream that fails as a killed process would after n batches."""

    def __init__(self, stream, n_batches):
        self.stream, self.left = stream, n_batches

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise RuntimeError("simulated crash")
        self.left -= 1
        return next(self.stream)

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)


def test_digits_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    """A tensor data set: the shuffle order and the position in it are in the checkpoint. 40
    images in batches of 16 are 2 batches an epoch: the checkpoint (step 3) is mid-epoch, where
    a resume that drew a fresh order would differ, and the run crosses epochs after it."""
    images = load_digits_images("train")[:40]
    cfg = VAETrainConfig(steps=7, batch_size=16, lr=3e-3, optimizer="adamax",
                         weight_decay_norm=1e-3, checkpoint_every=3)

    def fresh():
        torch.manual_seed(0)
        return HierarchicalVAE("tiny"), batches(images, 16)

    straight, data = fresh()
    train_vae(straight, data, cfg, checkpoint_path=tmp_path / "straight" / "vae.pt")

    path = tmp_path / "crashed" / "vae.pt"
    crashed, data = fresh()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_vae(crashed, CrashingStream(data, 5), cfg, checkpoint_path=path)
    saved = load_checkpoint(path)
    assert saved["step"] == 3 and saved["data"]["position"] == 1  # mid second epoch

    torch.manual_seed(123)  # a new process: other weights, other global RNG state
    resumed = HierarchicalVAE("tiny")
    train_vae(resumed, batches(images, 16), cfg, checkpoint_path=path)
    assert same_params(params(resumed), params(straight))
    final, reference = load_checkpoint(path), load_checkpoint(tmp_path / "straight" / "vae.pt")
    assert torch.equal(final["data"]["order"], reference["data"]["order"])
    assert final["rng"]["torch"].equal(reference["rng"]["torch"])


def test_the_batch_stream_resumes_mid_epoch():
    images = torch.arange(10.0).reshape(10, 1)
    generator = torch.Generator().manual_seed(0)
    stream = batches(images, 3, generator)
    for _ in range(4):  # one full epoch (3 batches) and one batch of the next
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(5)]
    again = batches(images, 3, torch.Generator().manual_seed(99))
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip((next(again) for _ in range(5)), expected))


def test_another_data_set_or_architecture_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "vae.pt"
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=2), checkpoint_path=path,
              extra_state=TOY_CONFIG)
    before = path.read_bytes()
    other_data = {"config": {**TOY_CONFIG["config"], "dataset": "swissroll"}}
    with pytest.raises(CheckpointError) as info:
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=4), checkpoint_path=path,
                  extra_state=other_data)
    message = str(info.value)
    assert (f"checkpoint {path} was trained with dataset '25gaussians', but this run asks for "
            f"dataset 'swissroll'") in message
    assert "--allow-config-change" in message and "--no-resume" in message
    assert path.read_bytes() == before

    wider = {"config": {**TOY_CONFIG["config"],
                        "vae": {**TOY_CONFIG["config"]["vae"], "hidden": 48}}}
    torch.manual_seed(0)
    wide_vae = MLPVAE(data_dim=2, latent_dim=2, hidden=48, depth=2)
    with pytest.raises(CheckpointError, match="was trained with vae"):
        train_vae(wide_vae, toy_batches(64), vae_cfg(steps=4), checkpoint_path=path,
                  extra_state=wider)
    # Allowed: the data set may change; an architecture that does not fit still cannot load.
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=4), checkpoint_path=path,
              extra_state=other_data, allow_config_change=True)
    assert load_checkpoint(path)["config"]["dataset"] == "swissroll"
    with pytest.raises(CheckpointError) as info:
        train_vae(wide_vae, toy_batches(64), vae_cfg(steps=6), checkpoint_path=path,
                  extra_state=wider, allow_config_change=True)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} does not fit this run (RuntimeError: Error(s) "
                              "in loading state_dict for MLPVAE: size mismatch")
    assert "\n" not in message and len(message) < 600


def test_nothing_to_train_leaves_the_checkpoint_alone(tmp_path, caplog):
    path = tmp_path / "vae.pt"
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=6), checkpoint_path=path)
    stamp = os.stat(path)
    with caplog.at_level("INFO", logger="vaebm_fast"):
        assert train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=6),
                         checkpoint_path=path) == {}
    assert "already at step 6 >= --steps 6; nothing to train" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="vaebm_fast"):
        assert train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=4),
                         checkpoint_path=path) == {}
    assert ("already at step 6 >= --steps 4; nothing to train (the checkpoint is past --steps: "
            "pass a larger --steps to train on, or --no-resume to start over)") in caplog.text
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


def test_a_checkpoint_of_a_newer_format_is_refused_on_resume(tmp_path):
    path = tmp_path / "ebm.pt"
    train_ebm(tiny_energy(), tiny_vae(), toy_batches(32), ebm_cfg(steps=2), checkpoint_path=path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"{path} has format version {FORMAT_VERSION + 1}"):
        train_ebm(tiny_energy(), tiny_vae(), toy_batches(32), ebm_cfg(steps=4),
                  checkpoint_path=path)


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path, caplog):
    stale = tmp_path / f".vae.pt.{dead_pid()}.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("INFO", logger="vaebm_fast"):
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=2),
                  checkpoint_path=tmp_path / "vae.pt")
    assert not stale.exists() and f"removed {stale}" in caplog.text


def test_config_json_metrics_jsonl_and_the_progress_log(tmp_path, caplog):
    """Off a terminal (pytest's stderr), a progress line every log_every steps; one
    metrics.jsonl record per logged step; config.json holds each stage's config."""
    path = tmp_path / "vae.pt"
    with caplog.at_level("INFO", logger="vaebm_fast"):
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=10, log_every=4),
                  checkpoint_path=path, extra_state=TOY_CONFIG)
        train_ebm(tiny_energy(), tiny_vae(), toy_batches(32), ebm_cfg(steps=3, log_every=2),
                  checkpoint_path=tmp_path / "ebm.pt", extra_state=TOY_CONFIG)
    progress = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [line.split("  ")[0] for line in progress] == [
        "stage 1: VAE step 1/10", "stage 1: VAE step 5/10", "stage 1: VAE step 9/10",
        "stage 1: VAE step 10/10", "stage 2: EBM step 1/3", "stage 2: EBM step 3/3"]
    assert "loss " in progress[0] and all(r.name == "vaebm_fast.training" for r in caplog.records)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [
        ("vae", 0), ("vae", 4), ("vae", 8), ("vae", 9), ("ebm", 0), ("ebm", 2)]
    assert {"loss", "nelbo", "kl", "beta", "time_s"} <= set(records[0])
    assert {"loss", "e_pos", "e_neg"} <= set(records[-1])

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vae"]["dataset"] == "25gaussians" and config["vae"]["train"]["steps"] == 10
    assert config["ebm"]["train"]["steps"] == 3 and config["ebm"]["vae"]["hidden"] == 32
    assert config["vae"] == load_checkpoint(path)["config"]


def test_a_checkpoint_with_nan_weights_is_not_resumed(tmp_path):
    """Files written before the weights check could hold diverged weights: named as such,
    not trained on (which would report a diverged chain or a NaN loss instead)."""
    path = tmp_path / "vae.pt"
    train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=2), checkpoint_path=path)
    state = torch.load(path, weights_only=True)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} holds NaN/Inf weights"):
        train_vae(tiny_vae(), toy_batches(64), vae_cfg(steps=4), checkpoint_path=path)
