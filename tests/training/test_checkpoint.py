"""Checkpoints: round trip, atomic writes, clear errors, RNG state capture and restore,
weights-only loading, format versions, stale temporary files, the previous checkpoint."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from vaebm_fast.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    checkpoint_bytes,
    load_checkpoint,
    previous_path,
    remove_stale_temp_files,
    restore_rng_state,
    save_checkpoint,
)


def make_state(step=7):
    model = torch.nn.Linear(3, 2)
    # What Adam.state_dict() looks like (building a real optimizer costs seconds of imports).
    optimizer_state = {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [{"lr": 4e-5, "betas": (0.99, 0.999), "params": [0, 1]}],
    }
    return {
        "kind": "ebm",
        "config": {"channels": 64, "betas": (0.99, 0.999)},
        "model": model.state_dict(),
        "optimizer": optimizer_state,
        "step": step,
        "rng": capture_rng_state(),
    }


def test_round_trip_preserves_everything(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path / "runs" / "a" / "last.pt", state)  # parents created
    assert path.is_file()
    loaded = load_checkpoint(path, kind="ebm")
    assert loaded["kind"] == "ebm" and loaded["step"] == 7
    assert loaded["config"] == state["config"]
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], exp_avg)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state(step=1))

    def disk_full(fd):  # the new file is on disk, half-flushed, when the failure comes
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint(path, make_state(step=2))
    assert str(path) in str(info.value)
    monkeypatch.undo()

    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state(step=1))
    save_checkpoint(path, make_state(step=2))
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_missing_file_names_the_path_and_how_it_is_made(tmp_path):
    save_checkpoint(tmp_path / "step_100.pt", make_state())
    missing = tmp_path / "step_200.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "save_checkpoint" in message
    assert "step_100.pt" in message  # points at what is there


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_says_so_and_names_a_way_out(tmp_path, damage):
    """A damaged file is named with what is wrong; the message offers the previous checkpoint
    when one was kept (keep_previous), else starting over."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state(step=1))
    save_checkpoint(path, make_state(step=2), keep_previous=True)
    content = path.read_bytes()
    damaged = {"truncate": content[: len(content) // 2],
               "garbage": b"not a checkpoint at all" * 10,
               "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "corrupt or truncated" in message
    assert f"the checkpoint before it is {previous_path(path)}" in message
    assert load_checkpoint(previous_path(path))["step"] == 1

    previous_path(path).unlink()
    with pytest.raises(CheckpointError, match="corrupt or truncated.*--no-resume"):
        load_checkpoint(path)


def test_keep_previous_keeps_the_replaced_file(tmp_path):
    path = tmp_path / "vae.pt"
    save_checkpoint(path, make_state(step=1), keep_previous=True)
    assert not previous_path(path).exists()  # nothing to keep yet
    save_checkpoint(path, make_state(step=2), keep_previous=True)
    save_checkpoint(path, make_state(step=3), keep_previous=True)
    assert previous_path(path) == tmp_path / "vae.prev.pt"
    assert load_checkpoint(path)["step"] == 3 and load_checkpoint(previous_path(path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.prev.pt", "vae.pt"]


def test_checkpoints_load_with_torch_weights_only_and_carry_their_format_version(tmp_path):
    """Our files hold tensors and plain data only (RNG states included), so PyTorch's own
    weights-only loader reads them."""
    path = save_checkpoint(tmp_path / "a.pt", make_state())
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION
    assert isinstance(state["rng"]["numpy"]["key"], list)
    assert isinstance(state["rng"]["python"], list)
    snapshot = checkpoint_bytes(make_state(step=4))  # a snapshot written later: same file
    save_checkpoint(tmp_path / "b.pt", snapshot)
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 4


def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**make_state(), "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and f"format version {FORMAT_VERSION + 1}" in message
    assert "newer vaebm_fast" in message and "upgrade" in message


def test_format_1_files_with_a_pickled_numpy_state_still_load(tmp_path):
    """Files written before format_version existed hold NumPy's RNG state as a tuple with an
    ndarray; they load through the minimal NumPy allowlist and restore every generator."""
    path = tmp_path / "old.pt"
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(),
               "torch": torch.get_rng_state()}
    torch.save({"kind": "vae", "model": {}, "step": 3, "rng": old_rng}, path)
    with pytest.raises(Exception):  # what needs the allowlist: plain weights-only refuses it
        torch.load(path, weights_only=True)
    expected = draw_everything()
    draw_everything()
    state = load_checkpoint(path, kind="vae")
    restore_rng_state(state["rng"])
    again = draw_everything()
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / f".vae.pt.{dead_pid()}.0badc0de.tmp"
    mine = tmp_path / f".vae.pt.{os.getpid()}.12345678.tmp"  # a write in progress
    other = tmp_path / ".notes.tmp"  # not of write_atomically's form
    for p in (stale, mine, other):
        p.write_bytes(b"x")
    save_checkpoint(tmp_path / "vae.pt", make_state())
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, "vae.pt"])


def test_wrong_kind_and_missing_keys(tmp_path):
    path = tmp_path / "vae.pt"
    save_checkpoint(path, {"kind": "vae", "model": {}})
    with pytest.raises(CheckpointError, match=r"has kind 'vae', but kind 'ebm' is needed"):
        load_checkpoint(path, kind="ebm")

    path = tmp_path / "other.pt"
    save_checkpoint(path, {"state_dict": {}})
    with pytest.raises(CheckpointError, match=r"lacks the key\(s\) \['model'\]"):
        load_checkpoint(path)
    assert load_checkpoint(path, required_keys=())["state_dict"] == {}

    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)


def test_checkpoint_error_is_a_runtime_error_and_state_must_be_a_dict(tmp_path):
    assert issubclass(CheckpointError, RuntimeError)
    with pytest.raises(TypeError, match="state must be a dict"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])


def draw_everything():
    return (random.random(), float(np.random.rand()), torch.rand(3))


def test_rng_state_restore_reproduces_draws(tmp_path):
    state = capture_rng_state()
    first = draw_everything()
    restore_rng_state(state)
    second = draw_everything()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])

    # And through a checkpoint file.
    restore_rng_state(state)
    save_checkpoint(tmp_path / "rng.pt", {"model": {}, "rng": capture_rng_state()})
    expected = draw_everything()
    draw_everything()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = draw_everything()
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
