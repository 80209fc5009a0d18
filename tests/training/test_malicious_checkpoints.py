"""A checkpoint that carries code never runs it, on any path that loads a checkpoint.

The file plants a pickle whose ``__reduce__`` opens (creates) a marker file when unpickled,
in the three forms torch.load reads: a torch.save zip archive, torch's legacy (non-zip)
format and a bare pickle. Every load path (the API, resuming either stage, stage 2 reading
vae.pt, sample reading either file, the demo resuming) must refuse it with a one-line error
that names the file and says why, and the marker must not exist afterwards.
"""
import pickle


import pytest
import torch

from vaebm_fast.checkpoint import CheckpointError, load_checkpoint
from vaebm_fast.cli import main

from .helpers import cli_error

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # torch notes that a bare pickle's protocol is not its own; beside the point here
              pytest.mark.filterwarnings("ignore:Detected pickle protocol")]

FORMS = ["zip", "legacy", "pickle"]


class Payload:
    """Unpickling this calls open(marker, "w"): code from the file, run by the loader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker, form="zip"):
    """Write a checkpoint-shaped dict with the payload in place of the weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"kind": "vae", "model": Payload(marker), "config": {"dataset": "25gaussians"},
             "step": 1}
    if form == "zip":
        torch.save(state, path)
    elif form == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as file:
            pickle.dump(state, file)
    return path


def refused(path, message):
    return (f"checkpoint {path} was refused" in message and "run code" in message
            and "\n" not in message)


@pytest.mark.parametrize("form", FORMS)
def test_load_checkpoint_refuses_the_payload(tmp_path, form):
    marker = tmp_path / "PWNED"
    path = plant(tmp_path / "evil.pt", marker, form)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert refused(path, str(info.value)), str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real (tiny) run folder: vae.pt and ebm.pt on the 25-Gaussian grid."""
    out = tmp_path_factory.mktemp("good")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["train-vae", "--dataset", "25gaussians", "--out", str(out), "--steps", "2",
              "--batch-size", "16"])
        main(["train-ebm", "--out", str(out), "--steps", "1", "--batch-size", "16",
              "--langevin-steps", "1"])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("form", FORMS)
def test_train_vae_resume_refuses_the_payload(tmp_path, form):
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    path = plant(out / "vae.pt", marker, form)
    message = cli_error("train-vae", "--dataset", "25gaussians", "--out", out, "--steps", 2)
    assert refused(path, message) and not marker.exists()


def test_train_ebm_reading_vae_pt_refuses_the_payload(tmp_path):
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    path = plant(out / "vae.pt", marker)
    assert refused(path, cli_error("train-ebm", "--out", out, "--steps", 1))
    other = plant(tmp_path / "elsewhere.pt", marker, "legacy")
    assert refused(other, cli_error("train-ebm", "--out", out, "--vae", other))
    assert not marker.exists()


def test_train_ebm_resume_refuses_the_payload(tmp_path, trained_run):
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    out.mkdir()
    (out / "vae.pt").write_bytes((trained_run / "vae.pt").read_bytes())
    path = plant(out / "ebm.pt", marker)
    message = cli_error("train-ebm", "--out", out, "--steps", 2, "--batch-size", 16,
                        "--langevin-steps", 1)
    assert refused(path, message) and not marker.exists()


@pytest.mark.parametrize("which", ["--vae", "--ebm"])
def test_sample_refuses_the_payload(tmp_path, trained_run, which):
    marker = tmp_path / "PWNED"
    path = plant(tmp_path / "evil.pt", marker)
    message = cli_error("sample", "--out", trained_run, which, path, "--n", 4, "--steps", 1)
    assert refused(path, message) and not marker.exists()


def test_demo_resume_refuses_the_payload(tmp_path):
    marker, out = tmp_path / "PWNED", tmp_path / "demo"
    path = plant(out / "vae.pt", marker)
    message = cli_error("demo", "--quick", "--out", out, "--n-samples", 10)
    assert refused(path, message) and not marker.exists()
