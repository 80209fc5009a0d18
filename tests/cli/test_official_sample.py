"""`vaebm-fast sample --nvae --ebm --ebm-arch`: sampling from official checkpoint files.

The files are written in-process in the official layouts: the NVAE as NVAE's train.py saves it
(the helper of tests/models/test_nvae_import.py), the EBM as VAEBM's training script saves it,
``{'model': EBM.state_dict(), 'optimizer': ...}`` with no spectral-regulariser vectors.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.models.test_nvae_import import official_checkpoint, source_model
from vaebm_fast.cli import main
from vaebm_fast.models import official_ebm

# Small and fast on a CPU: 5 images in batches of 2 (the last one short), 2 Langevin steps.
RUN = ["--n", "5", "--batch", "2", "--steps", "2", "--step-size", "0.05", "--device", "cpu",
       "--seed", "3"]


# Tiny models are hundreds of small ops: one intra-op thread is faster on 2 shared cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(NVAE path, EBM path) of a tiny 3x32x32 NVAE and a tiny cifar32 EBM."""
    root = tmp_path_factory.mktemp("official")
    vae, args = source_model(dataset="cifar10", num_latent_per_group=1)
    nvae_path = root / "checkpoint.pt"
    torch.save(official_checkpoint(vae, args), nvae_path)
    torch.manual_seed(1)
    ebm = official_ebm("cifar32", n_channel=4)
    ebm_path = root / "EBM.pth"
    torch.save({"model": ebm.official_state_dict(), "optimizer": {"state": {}}}, ebm_path)
    return str(nvae_path), str(ebm_path)


@pytest.fixture(scope="module")
def celeba64_ebm(tmp_path_factory):
    """A tiny official celeba64 EBM: a valid file whose images are 64x64."""
    path = tmp_path_factory.mktemp("celeba64") / "EBM.pth"
    torch.save({"model": official_ebm("celeba64", n_channel=2).official_state_dict()}, path)
    return str(path)


def sample(files, out, *extra) -> int:
    nvae, ebm = files
    return main(["sample", "--nvae", nvae, "--ebm", ebm, "--ebm-arch", "cifar32",
                 "--out", str(out), *RUN, *extra])


def images(out) -> np.ndarray:
    with np.load(os.path.join(out, "samples.npz")) as npz:
        return npz["arr_0"]


@pytest.fixture(scope="module")
def first_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert sample(files, out) == 0
    return out, images(out)


def test_writes_nhwc_uint8_npz_and_png(first_run, capsys):
    out, x = first_run
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
    assert x.min() < x.max()                    # real images, not a constant fill
    png = out / "samples.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == [
        "images_000000000_000000002.npy", "images_000000002_000000004.npy",
        "images_000000004_000000005.npy"]


def test_the_images_do_not_depend_on_the_shards(files, first_run, tmp_path):
    out, x = first_run
    # Sample i comes from row stream i: the first 4 alone, or all 5 in shards of 3, are the
    # same images (to a rounding step of the networks, which block batches by their size).
    assert sample(files, tmp_path / "a", "--n", "4") == 0
    assert np.abs(images(tmp_path / "a").astype(int) - x[:4]).max() <= 1
    assert sample(files, tmp_path / "b", "--batch", "3") == 0
    assert np.abs(images(tmp_path / "b").astype(int) - x).max() <= 1


@pytest.mark.parametrize("lost", [2, 1], ids=["last_shard", "middle_shard"])
def test_resume_after_losing_a_shard_is_identical(files, first_run, tmp_path, lost):
    _, x = first_run
    assert sample(files, tmp_path) == 0
    shards = sorted((tmp_path / "shards").glob("*.npy"))
    kept = shards[0]
    kept_mtime = kept.stat().st_mtime_ns
    shards[lost].unlink()
    (tmp_path / "samples.npz").unlink()
    assert sample(files, tmp_path) == 0
    np.testing.assert_array_equal(images(tmp_path), x)
    assert kept.stat().st_mtime_ns == kept_mtime   # finished shards are not redrawn


def test_official_potential_changes_the_samples(files, first_run, tmp_path):
    _, x = first_run
    assert sample(files, tmp_path, "--potential", "official") == 0
    y = images(tmp_path)
    assert y.shape == x.shape and not np.array_equal(y, x)


def test_other_settings_do_not_resume_old_batches(files, first_run, tmp_path, capsys):
    assert sample(files, tmp_path) == 0
    capsys.readouterr()
    assert sample(files, tmp_path, "--seed", "4") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "seed" in err and "\n" not in err


def _error(capsys, code, argv) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error:" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("case, expect", [
    ("missing_nvae", "not found"),
    ("missing_ebm", "not found"),
    ("nvae_not_official", "not an official NVAE checkpoint"),
    ("ebm_not_official", "not an official"),
    ("ebm_is_nvae", "this is an NVAE checkpoint"),
    ("unknown_arch", "invalid choice"),
    ("n_zero", "--n"),
    ("batch_zero", "--batch"),
    ("size_mismatch", "takes 3x64x64"),
    ("arch_of_another_ebm", "not an official celeba64 EBM"),
    ("mnist_needs_steps", "--steps and --step-size"),
    ("no_arch", "--ebm-arch"),
    ("official_flag_without_nvae", "--potential"),
])
def test_bad_input_is_one_error_line_and_exit_code_2(files, celeba64_ebm, tmp_path, capsys,
                                                     case, expect):
    nvae, ebm = files
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    base = {"--nvae": nvae, "--ebm": ebm, "--ebm-arch": "cifar32", "--out": str(tmp_path / "o"),
            "--n": "2", "--batch": "2", "--steps": "1", "--device": "cpu"}
    change = {
        "missing_nvae": {"--nvae": str(tmp_path / "absent.pt")},
        "missing_ebm": {"--ebm": str(tmp_path / "absent.pth")},
        "nvae_not_official": {"--nvae": str(junk)},
        "ebm_not_official": {"--ebm": str(junk)},
        "ebm_is_nvae": {"--ebm": nvae},
        "unknown_arch": {"--ebm-arch": "cifar64"},
        "n_zero": {"--n": "0"},
        "batch_zero": {"--batch": "0"},
        "size_mismatch": {"--ebm-arch": "celeba64", "--ebm": celeba64_ebm},
        "arch_of_another_ebm": {"--ebm-arch": "celeba64"},
        "mnist_needs_steps": {"--ebm-arch": "mnist", "--steps": None},
        "no_arch": {"--ebm-arch": None},
        "official_flag_without_nvae": {"--nvae": None, "--ebm": None, "--potential": "official"},
    }[case]
    flags = {**base, **change}
    argv = ["sample"] + [a for k, v in flags.items() if v is not None for a in (k, v)]
    err = _error(capsys, 2, argv)
    assert expect in err, err
