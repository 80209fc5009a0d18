"""The vaebm-fast command line, run in-process on tiny step counts."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vaebm_fast
from vaebm_fast import cli
from vaebm_fast.cli import options as cli_options
from vaebm_fast.checkpoint import load_checkpoint
from vaebm_fast.cli import main
from vaebm_fast.training.ebm import EBMTrainConfig
from vaebm_fast.training.vae import VAETrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*argv):
    assert main([str(a) for a in argv]) == 0


def fails(capsys, *argv, code=2):
    """Run a command that must fail with a clean usage error; return its one stderr line."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def check_samples(out, n, shape):
    samples = out / "samples"
    png = samples / "samples.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
    x_vae = np.load(samples / "samples_vae.npy")
    x_vaebm = np.load(samples / "samples_vaebm.npy")
    for x in (x_vae, x_vaebm):
        assert x.shape == (n, *shape) and np.isfinite(x).all()
    assert not np.allclose(x_vae, x_vaebm)  # the Langevin steps moved the samples
    return x_vae, x_vaebm


def no_temp_files(out):
    return not [n for _, _, files in os.walk(out) for n in files if n.endswith(".tmp")]


def test_toy_pipeline_train_vae_train_ebm_sample(tmp_path, capsys):
    out = tmp_path / "run"
    run("train-vae", "--dataset", "25gaussians", "--out", out, "--steps", 20, "--batch-size", 64,
        "--checkpoint-every", 10)
    run("train-ebm", "--out", out, "--steps", 4, "--batch-size", 32, "--langevin-steps", 3,
        "--no-igebm-clip")
    run("sample", "--out", out, "--n", 50, "--steps", 3)
    captured = capsys.readouterr()
    printed = captured.out
    assert "stage 1 done" in printed and "stage 2 done" in printed and "samples.png" in printed
    # Not on a terminal: a log line per chain run instead of a progress bar.
    assert "sampling 50 chains of 3 Langevin steps" in captured.err
    assert "it/s" not in captured.err and "\r" not in captured.err

    vae_ckpt = load_checkpoint(out / "vae.pt", kind="vae")
    ebm_ckpt = load_checkpoint(out / "ebm.pt", kind="ebm")
    assert vae_ckpt["step"] == 20 and vae_ckpt["config"]["dataset"] == "25gaussians"
    assert vae_ckpt["config"]["train"]["batch_size"] == 64  # the flag overrode the preset
    assert ebm_ckpt["step"] == 4
    train = ebm_ckpt["config"]["train"]
    assert (train["langevin_steps"], train["igebm_clip"], train["space"]) == (3, False, "eps")
    x_vae, x_vaebm = check_samples(out, 50, (2,))
    assert no_temp_files(out)

    # Sampling is reproducible by seed.
    run("sample", "--out", out, "--n", 50, "--steps", 3)
    assert np.array_equal(np.load(out / "samples" / "samples_vaebm.npy"), x_vaebm)
    run("sample", "--out", out, "--n", 50, "--steps", 3, "--seed", 1)
    assert not np.allclose(np.load(out / "samples" / "samples_vaebm.npy"), x_vaebm)


def test_digits_pipeline_with_the_default_preset(tmp_path):
    """The preset's NVAE-style 'digits' VAE and small image EBM, for a couple of steps."""
    out = tmp_path / "digits"
    run("train-vae", "--dataset", "digits", "--out", out, "--steps", 2, "--batch-size", 16)
    run("train-ebm", "--out", out, "--steps", 2, "--batch-size", 8, "--langevin-steps", 2)
    run("sample", "--out", out, "--n", 8, "--steps", 2)
    assert load_checkpoint(out / "vae.pt")["config"]["vae"] == {"type": "nvae", "preset": "digits"}
    x_vae, x_vaebm = check_samples(out, 8, (1, 8, 8))
    for x in (x_vae, x_vaebm):  # decoder-mean images in [0, 1]
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_digits_pipeline_with_a_config_file(tmp_path):
    out = tmp_path / "digits_tiny"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"vae": {"preset": "tiny"}, "energy": {"n_channel": 8},
                                  "train": {"batch_size": 8, "checkpoint_every": 1}}))
    run("train-vae", "--dataset", "digits", "--out", out, "--steps", 2, "--config", config)
    run("train-ebm", "--out", out, "--steps", 2, "--langevin-steps", 2, "--config", config)
    run("sample", "--out", out, "--n", 4, "--steps", 1)
    vae_ckpt, ebm_ckpt = load_checkpoint(out / "vae.pt"), load_checkpoint(out / "ebm.pt")
    assert vae_ckpt["config"]["vae"] == {"type": "nvae", "preset": "tiny"}
    assert vae_ckpt["config"]["train"]["batch_size"] == 8
    assert ebm_ckpt["config"]["energy"]["n_channel"] == 8
    assert ebm_ckpt["config"]["train"]["batch_size"] == 8
    assert ebm_ckpt["model"]["conv1.weight"].shape[0] == 8
    check_samples(out, 4, (1, 8, 8))


def test_rerunning_train_vae_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    common = ("train-vae", "--dataset", "25gaussians", "--out", out, "--batch-size", 32)
    run(*common, "--steps", 6)
    first = load_checkpoint(out / "vae.pt")
    capsys.readouterr()

    run(*common, "--steps", 6)  # already done: loads, trains nothing, writes nothing
    printed = capsys.readouterr()  # the training log goes to stderr
    assert f"resumed from {out / 'vae.pt'} at step 6" in printed.err
    assert printed.err.count("resumed from") == 1  # each log line printed once
    assert "already at step 6 >= --steps 6; nothing to train" in printed.err
    assert "wrote" not in printed.out
    again = load_checkpoint(out / "vae.pt")
    assert again["step"] == 6
    assert all(torch.equal(first["model"][k], again["model"][k]) for k in first["model"])

    run(*common, "--steps", 9)  # continues from 6, not from 0
    assert "at step 6" in capsys.readouterr().err
    longer = load_checkpoint(out / "vae.pt")
    assert longer["step"] == 9
    assert not all(torch.equal(first["model"][k], longer["model"][k]) for k in first["model"])

    run(*common, "--steps", 3, "--no-resume")  # starts over
    assert "resumed" not in capsys.readouterr().err
    assert load_checkpoint(out / "vae.pt")["step"] == 3
    assert no_temp_files(out)


def test_info_prints_the_op_table(capsys):
    run("info")
    printed = capsys.readouterr().out
    assert "ops (backend: available, or why not)" in printed
    for op in ("langevin_step_", "philox_normal"):
        assert op in printed
    assert "cpu   available:" in printed
    run("info", "--json")
    info = json.loads(capsys.readouterr().out)
    assert "langevin_step_" in info["ops"] and "cpu" in info["ops"]["langevin_step_"]


def test_python_dash_m_info():
    result = subprocess.run([sys.executable, "-m", "vaebm_fast", "info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "langevin_step_" in result.stdout and "vaebm_fast" in result.stdout


# --------------------------------------------------------------------------------------------
# Errors: a message and a non-zero exit, never a traceback
# --------------------------------------------------------------------------------------------
def test_argument_errors(tmp_path, capsys):
    out = tmp_path / "x"
    assert "unrecognized arguments: --bogus" in fails(
        capsys, "train-vae", "--dataset", "25gaussians", "--out", out, "--bogus", 1)
    assert "invalid choice: 'cifar100'" in fails(
        capsys, "train-vae", "--dataset", "cifar100", "--out", out)
    assert "--steps: must be an int (got 'many')" in fails(
        capsys, "train-vae", "--dataset", "digits", "--out", out, "--steps", "many")
    assert "invalid choice: 'frobnicate'" in fails(capsys, "frobnicate")
    assert "see 'vaebm-fast --help'" in fails(capsys)
    assert not out.exists()  # nothing was written


def test_missing_checkpoints(tmp_path, capsys):
    empty = tmp_path / "empty"
    msg = fails(capsys, "train-ebm", "--out", empty)
    assert msg.startswith("error: no checkpoint at") and "vae.pt" in msg
    msg = fails(capsys, "sample", "--out", empty)
    assert msg.startswith("error: no checkpoint at") and "ebm.pt" in msg
    msg = fails(capsys, "train-ebm", "--out", empty, "--vae", tmp_path / "elsewhere.pt")
    assert "elsewhere.pt" in msg


def test_corrupt_and_wrong_kind_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "vae.pt").write_bytes(b"\x00" * 64)
    msg = fails(capsys, "train-vae", "--dataset", "25gaussians", "--out", out, "--steps", 2)
    assert msg.startswith("error:") and "corrupt or truncated" in msg
    msg = fails(capsys, "train-ebm", "--out", out)
    assert "corrupt or truncated" in msg

    good = tmp_path / "good"
    run("train-vae", "--dataset", "25gaussians", "--out", good, "--steps", 2, "--batch-size", 16)
    msg = fails(capsys, "sample", "--out", good, "--ebm", good / "vae.pt")
    assert "has kind 'vae', but kind 'ebm' is needed" in msg


def test_config_file_errors(tmp_path, capsys):
    out = tmp_path / "run"
    base = ("train-vae", "--dataset", "25gaussians", "--out", out, "--steps", 1, "--config")
    assert "not found" in fails(capsys, *base, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "is not valid JSON" in fails(capsys, *base, bad)
    for content, fragment in [
        ({"vea": {}}, "unknown section(s) ['vea']"),
        ({"train": {"stepz": 3}}, "unknown training option(s) ['stepz']"),
        ({"vae": {"hiden": 32}}, "invalid vae config"),
    ]:
        bad.write_text(json.dumps(content))
        assert fragment in fails(capsys, *base, bad)
    bad.write_text(json.dumps({"vae": {"preset": "tinyy"}}))
    msg = fails(capsys, "train-vae", "--dataset", "digits", "--out", out, "--steps", 1,
                "--config", bad)
    assert "did you mean 'tiny'" in msg
    assert not (out / "vae.pt").exists()


def test_internal_error_is_one_line_and_the_traceback_is_one_variable_away(monkeypatch, capsys):
    def broken(args):
        raise KeyError("frobs")
    monkeypatch.setattr(cli, "cmd_info", broken)
    monkeypatch.delenv("VAEBM_FAST_TRACEBACK", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "internal error (KeyError: 'frobs')" in err and "VAEBM_FAST_TRACEBACK=1" in err
    monkeypatch.setenv("VAEBM_FAST_TRACEBACK", "1")
    with pytest.raises(KeyError, match="frobs"):
        main(["info"])


def test_main_leaves_the_package_logger_as_it_found_it():
    logger = logging.getLogger("vaebm_fast")
    before = (list(logger.handlers), logger.level, logger.propagate)
    run("info", "--json")
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_info_into_a_closed_pipe_prints_no_traceback():
    """`vaebm-fast info | head -1`: the reader is gone before the report is written."""
    proc = subprocess.Popen([sys.executable, "-m", "vaebm_fast", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert err.strip() == b""


def test_sample_checks_the_output_directory_before_any_chain(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run("train-vae", "--dataset", "25gaussians", "--out", run_dir, "--steps", 2,
        "--batch-size", 16)
    run("train-ebm", "--out", run_dir, "--steps", 1, "--batch-size", 8, "--langevin-steps", 1)
    from vaebm_fast.sampling.fast import FastSampler

    def no_chains(*args, **kwargs):
        raise AssertionError("a chain ran before --out was checked")
    monkeypatch.setattr(FastSampler, "sample", no_chains)
    (tmp_path / "afile").write_text("")
    msg = fails(capsys, "sample", "--out", tmp_path / "afile" / "x", "--vae", run_dir / "vae.pt",
                "--ebm", run_dir / "ebm.pt")
    assert msg.startswith("error: cannot write to") and "samples" in msg


# --------------------------------------------------------------------------------------------
# Help and version: usable without the README
# --------------------------------------------------------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"vaebm-fast {vaebm_fast.__version__} (torch {torch.__version__})")


def help_of(capsys, *argv):
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_top_level_help_has_plain_text_and_examples(capsys):
    text = help_of(capsys)
    assert "``" not in text and "examples:" in text
    for command in ("demo", "train-vae", "train-ebm", "sample", "bench", "info"):
        assert command in text
    assert "vaebm-fast train-vae --dataset digits --out" in text


@pytest.mark.parametrize("command, cls", [("train-vae", VAETrainConfig),
                                          ("train-ebm", EBMTrainConfig)])
def test_every_training_option_has_help_a_rule_and_its_preset_default(command, cls, capsys):
    import dataclasses
    fields = {f.name for f in dataclasses.fields(cls)}
    # A field added to the dataclass without a rule fails here, not silently undocumented.
    assert set(cli.TRAIN_OPTIONS[cls]) == fields
    text = " ".join(help_of(capsys, command).split())  # unwrap argparse's line breaks
    assert "(not described yet)" not in text and "examples:" in text
    parser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    helps = {a.dest: a.help for a in parser._actions}
    for name in fields - {"seed"}:  # seed has its own flag with a fixed default
        assert cli.TRAIN_OPTIONS[cls][name] in helps[name], name
        assert "default:" in helps[name], name
    if cls is EBMTrainConfig:
        assert "--space {eps,latent,data}" in text and "--sampler {fast,eager}" in text
        # The presets differ here, and the help says which is which.
        assert "default: 30 (25gaussians, swissroll), 20 (digits)" in text
    else:
        assert "--optimizer {adam,adamax}" in text
        assert "default: 15000 (25gaussians, swissroll), 1500 (digits)" in text


def test_sample_help_offers_only_what_sample_uses(capsys):
    text = help_of(capsys, "sample")
    assert "--no-resume" not in text and "(default: 64)" in text


def test_config_values_of_the_right_type_are_accepted():
    """The checks reject bad values, not good ones: an int for a float, null where the
    library has a default, the largest seed."""
    section = cli_options._Section({"lr": 1, "noise_scale": None, "seed": 2**63 - 1,
                                    "igebm_clip": False})
    cfg = cli_options._apply(EBMTrainConfig(), section)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.noise_scale is None and cfg.seed == 2**63 - 1 and cfg.igebm_clip is False
