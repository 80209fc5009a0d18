"""Checkpoints: round trip, atomic writes, clear errors, RNG state capture and restore."""

import random

import numpy as np
import pytest
import torch

from vaebm_fast.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
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
    real_save = torch.save

    def save_half_then_fail(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(10)  # a half-written file on disk ...
        raise OSError("No space left on device")  # ... and then the failure

    monkeypatch.setattr(torch, "save", save_half_then_fail)
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
def test_corrupt_file_says_so_and_suggests_the_previous_checkpoint(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state())
    content = path.read_bytes()
    damaged = {"truncate": content[: len(content) // 2],
               "garbage": b"not a checkpoint at all" * 10,
               "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "corrupt or truncated" in message and "previous checkpoint" in message


def test_wrong_kind_and_missing_keys(tmp_path):
    path = tmp_path / "vae.pt"
    save_checkpoint(path, {"kind": "vae", "model": {}})
    with pytest.raises(CheckpointError, match=r"has kind 'vae', but kind 'ebm' is needed"):
        load_checkpoint(path, kind="ebm")

    path = tmp_path / "other.pt"
    save_checkpoint(path, {"state_dict": {}})
    with pytest.raises(CheckpointError, match=r"lacks the key\(s\) \['model'\]"):
        load_checkpoint(path)
    assert load_checkpoint(path, required_keys=()) == {"state_dict": {}}

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
