"""Training on several processes (DDP, gloo on the CPU): data sharding, identical weights, one
writer, the gradient of the global batch, divergence on one rank, resume at another world
size, a killed worker under torchrun, and bad batch sizes.

Processes are started by ``torch.multiprocessing.spawn`` (library-level checks; each worker
writes what it saw to a file) or by ``python -m torch.distributed.run`` (the command line).
"""
import contextlib
import faulthandler
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.training.test_resume import CrashingStream
from vaebm_fast import distributed
from vaebm_fast.data import TwentyFiveGaussians, batches
from vaebm_fast.distributed import World

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # per launch; each one takes 5-20 s on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(world_size: int, rank: int, port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}


def _spawn_worker(rank: int, world_size: int, port: int, scenario: str, out: str) -> None:
    # A native abort in a worker (CI saw one SIGABRT, "terminate called without an active
    # exception", once in many runs) then prints every thread's Python stack with it.
    faulthandler.enable(all_threads=True)
    os.environ.update(_env(world_size, rank, port))
    torch.set_num_threads(1)
    if scenario.startswith("cli_"):  # the command line joins the group itself
        result = SCENARIOS[scenario](rank, Path(out))
    else:
        dist.init_process_group("gloo")
        try:
            result = SCENARIOS[scenario](rank, Path(out))
        finally:
            dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def _spawn(scenario: str, world_size: int, out: Path) -> list:
    """Run SCENARIOS[scenario] on ``world_size`` processes; each rank's result."""
    out.mkdir(parents=True, exist_ok=True)
    context = mp.spawn(_spawn_worker, args=(world_size, _free_port(), scenario, str(out)),
                       nprocs=world_size, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):  # a hung collective fails the test, not the whole run
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{scenario} on {world_size} processes did not finish in {TIMEOUT_S} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


# -- scenarios (run in each spawned process) -----------------------------------------------
def _toy_vae():
    from vaebm_fast.presets import build_vae
    return build_vae({"type": "mlp", "data_dim": 2, "latent_dim": 2, "hidden": 16, "depth": 2})


def _scenario_train_both_stages(rank: int, out: Path) -> dict:
    """Stage 1 then stage 2 (with a replay buffer) on the toy data; counts checkpoint writes."""
    from vaebm_fast.presets import build_energy
    from vaebm_fast.training import EBMTrainConfig, VAETrainConfig, loop, train_ebm, train_vae
    writes = []
    save = loop.save_checkpoint
    loop.save_checkpoint = lambda path, *a, **k: (writes.append(Path(path).name),
                                                  save(path, *a, **k))
    torch.manual_seed(0)
    vae = _toy_vae()
    if rank == 1:  # DDP must start every process from rank 0's weights
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(1.0)
    data = batches(TwentyFiveGaussians(), 16, torch.Generator().manual_seed(1))
    train_vae(vae, data, VAETrainConfig(steps=4, batch_size=16, checkpoint_every=2, log_every=1),
              checkpoint_path=out / "vae.pt")
    energy = build_energy({"type": "mlp", "in_dim": 2, "hidden": 16, "depth": 2})
    cfg = EBMTrainConfig(steps=4, batch_size=16, lr=1e-3, langevin_steps=3, step_size=1e-3,
                         replay_capacity=24, checkpoint_every=2, log_every=1, sampler="eager")
    train_ebm(energy, vae, data, cfg, checkpoint_path=out / "ebm.pt")
    saved = torch.load(out / "ebm.pt", weights_only=True) if rank == 0 else None
    return {"vae": vae.state_dict(), "energy": energy.state_dict(), "writes": writes,
            "ebm_checkpoint": saved}


def _scenario_resume_same_world(rank: int, out: Path) -> list:
    """Stage 1 for 4 steps uninterrupted, and crashed in step 3 then resumed: final weights."""
    from vaebm_fast.training import VAETrainConfig, train_vae
    cfg = VAETrainConfig(steps=4, batch_size=16, checkpoint_every=2)
    finals = []
    for name, crash_after in (("straight", None), ("crashed", 3), ("crashed", None)):
        torch.manual_seed(0)
        vae = _toy_vae()
        data = batches(TwentyFiveGaussians(), 16, torch.Generator().manual_seed(1))
        try:
            train_vae(vae, data if crash_after is None else CrashingStream(data, crash_after),
                      cfg, checkpoint_path=out / name / "vae.pt")
        except RuntimeError as error:
            assert str(error) == "simulated crash"
            continue
        finals.append(vae.state_dict())
    return finals


class _DeterministicVAE(nn.Module):
    """elbo_terms without posterior noise (a fixed loss of the weights and x) and one
    regulariser: the gradient of a global batch is then the same however it is split."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.decoder = nn.Linear(2, 3), nn.Linear(3, 2)

    def elbo_terms(self, x):
        z = torch.tanh(self.encoder(x))
        return (self.decoder(z) - x).pow(2).sum(-1), [z.pow(2).sum(-1), z.abs().sum(-1)]

    def regularization_terms(self):
        return {"decoder_l2": self.decoder.weight.pow(2).sum()}


def _scenario_gradient(rank: int, out: Path) -> dict:
    from vaebm_fast.training import VAETrainConfig, train_vae
    vae = _DeterministicVAE()
    data = batches(TwentyFiveGaussians(), 12, torch.Generator().manual_seed(3))
    cfg = VAETrainConfig(steps=1, batch_size=12, grad_clip_norm=float("inf"),
                         weight_decay_norm=0.5, kl_warmup_fraction=0.0)
    train_vae(vae, data, cfg)
    return {name: p.grad.clone() for name, p in vae.named_parameters()}


def _scenario_stage_two(rank: int, out: Path) -> dict:
    """Two stage-2 steps (eps space, global batch 12, no replay, noisy positives): the
    energy's weights after."""
    from vaebm_fast.presets import build_energy
    from vaebm_fast.training import EBMTrainConfig, train_ebm
    torch.manual_seed(0)
    vae = _toy_vae()
    energy = build_energy({"type": "mlp", "in_dim": 2, "hidden": 16, "depth": 2})
    data = batches(TwentyFiveGaussians(), 12, torch.Generator().manual_seed(3))
    cfg = EBMTrainConfig(steps=2, batch_size=12, lr=1e-2, langevin_steps=4, step_size=0.05,
                         igebm_clip=False, weight_decay=0.0, sampler="eager", data_noise=0.1)
    train_ebm(energy, vae, data, cfg)
    return energy.state_dict()


class _NaNOnRankOne:
    """The toy sampler, with NaN in the rows rank 1 gets from the third global batch on."""

    def __init__(self):
        self.toy, self.calls = TwentyFiveGaussians(), 0

    def sample(self, n, generator=None):
        self.calls += 1
        x = self.toy.sample(n, generator)
        if self.calls >= 3:
            x[n // 2:] = float("nan")
        return x


def _scenario_diverge(rank: int, out: Path) -> dict:
    from vaebm_fast.training import TrainingDiverged, VAETrainConfig, train_vae
    torch.manual_seed(0)
    data = batches(_NaNOnRankOne(), 16, torch.Generator().manual_seed(0))
    try:
        train_vae(_toy_vae(), data, VAETrainConfig(steps=6, batch_size=16, checkpoint_every=1),
                  checkpoint_path=out / "vae.pt")
    except TrainingDiverged as error:
        return {"step": error.step, "message": str(error)}
    return {"step": None}


def _scenario_chain_diverges_on_rank_one(rank: int, out: Path) -> dict:
    """Rank 1's Langevin step is huge: its chain diverges, rank 0's does not."""
    from vaebm_fast.presets import build_energy
    from vaebm_fast.training import EBMTrainConfig, TrainingDiverged, train_ebm
    torch.manual_seed(0)
    energy = build_energy({"type": "mlp", "in_dim": 2, "hidden": 16, "depth": 2})
    cfg = EBMTrainConfig(steps=3, batch_size=8, langevin_steps=3, sampler="eager",
                         step_size=1e-3 if rank == 0 else 1e200)
    data = batches(TwentyFiveGaussians(), 8, torch.Generator().manual_seed(0))
    try:
        train_ebm(energy, _toy_vae(), data, cfg)
    except TrainingDiverged as error:
        return {"step": error.step, "message": str(error)}
    return {"step": None}


def _scenario_cli_bad_batch(rank: int, out: Path) -> dict:
    from vaebm_fast.cli import main
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train-vae", "--dataset", "25gaussians", "--out", str(out / "run"),
                     "--steps", "2", "--batch-size", "5"])
    assert not dist.is_initialized()  # main destroyed the group it made
    return {"code": code, "stderr": stderr.getvalue()}


SCENARIOS = {"train": _scenario_train_both_stages, "gradient": _scenario_gradient,
             "stage_two": _scenario_stage_two,
             "diverge": _scenario_diverge, "chain": _scenario_chain_diverges_on_rank_one,
             "resume": _scenario_resume_same_world, "cli_bad_batch": _scenario_cli_bad_batch}


# -- one process: the world and the data order ---------------------------------------------
def test_one_process_world_and_collectives_are_no_ops():
    world = World.current()
    assert (world.rank, world.world_size, world.is_main, world.is_distributed) == (0, 1, True,
                                                                                   False)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(7) == 7
    assert distributed.all_true(False) is False
    assert distributed.mean_over_ranks({"b": 2.0, "a": 1.0}) == {"b": 2.0, "a": 1.0}
    assert distributed.rank_chain_offset(0) == 0 and distributed.rank_chain_offset(3) == 3 << 56


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("kind", ["tensor", "sampler"])
def test_union_of_rank_slices_is_the_single_process_batch(world_size, kind):
    data = torch.arange(40.0).view(20, 2) if kind == "tensor" else TwentyFiveGaussians()

    def stream(rank=0, size=1, seed=5):
        return batches(data, 6, torch.Generator().manual_seed(seed), World(rank, size, rank))

    single = stream()
    ranks = [stream(r, world_size) for r in range(world_size)]
    for _ in range(7):  # more than two epochs of the tensor (3 batches each)
        expected = next(single)
        slices = [next(s) for s in ranks]
        assert all(s.shape[0] == 6 // world_size for s in slices)
        assert torch.equal(torch.cat(slices), expected)
    # the state is global: saved on this world size, it continues the order on one process
    resumed = stream(seed=99)
    resumed.load_state_dict(ranks[1].state_dict())
    for _ in range(4):
        assert torch.equal(next(resumed), next(single))


def test_one_process_stream_adopts_the_saved_generator():
    """A stream saved by several processes (its own generator) resumed by a stream built
    without one (torch's global generator, as the one-process command line does) goes on with
    the saved generator: the same global order."""
    saved = batches(TwentyFiveGaussians(), 8, torch.Generator().manual_seed(2), World(0, 2, 0))
    next(saved)
    reference = batches(TwentyFiveGaussians(), 8, torch.Generator().manual_seed(2))
    next(reference)
    resumed = batches(TwentyFiveGaussians(), 8)
    resumed.load_state_dict(saved.state_dict())
    assert torch.equal(next(resumed), next(reference))


def test_batch_size_not_divisible_and_missing_generator_are_clear_errors():
    with pytest.raises(ValueError, match=r"batch_size \(5\) must be divisible by the number "
                                         r"of processes \(2\)"):
        batches(TwentyFiveGaussians(), 5, torch.Generator(), World(0, 2, 0))
    with pytest.raises(ValueError, match="needs a generator seeded the same on every process"):
        batches(TwentyFiveGaussians(), 4, None, World(1, 2, 1))


# -- several processes, spawned ------------------------------------------------------------
def test_two_ranks_end_identical_and_only_rank_zero_writes(tmp_path, one_thread):
    rank0, rank1 = _spawn("train", 2, tmp_path)
    for part in ("vae", "energy"):  # rank 1 started from other weights: DDP broadcast them
        for name, value in rank0[part].items():
            assert torch.equal(value, rank1[part][name]), (part, name)
    assert rank1["writes"] == []
    assert rank0["writes"] == ["vae.pt", "vae.pt", "ebm.pt", "ebm.pt"]  # step 2 and the end
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [
        ("vae", 0), ("vae", 1), ("vae", 2), ("vae", 3), ("ebm", 0), ("ebm", 1), ("ebm", 2),
        ("ebm", 3)]
    assert set(json.loads((tmp_path / "config.json").read_text())) == {"vae", "ebm"}
    # per-rank state: each rank's RNG and chain offset (its own Philox range) and replay buffer
    saved = rank0["ebm_checkpoint"]
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    offsets = [r["chain_offset"] for r in saved["ranks"]]
    assert offsets[0] < distributed.rank_chain_offset(1) <= offsets[1]
    assert offsets[1] - distributed.rank_chain_offset(1) == offsets[0]  # same progress
    assert not torch.equal(saved["ranks"][0]["rng"]["torch"], saved["ranks"][1]["rng"]["torch"])
    buffers = [r["replay"] for r in saved["ranks"]]
    assert [b["size"] for b in buffers] == [24, 24]  # 4 steps x 8 chains, capacity 24 each
    assert not torch.equal(buffers[0]["storage"][0], buffers[1]["storage"][0])


def test_resume_at_the_same_world_size_gives_each_rank_its_own_rngs_back(tmp_path, one_thread):
    """Each rank's posterior noise comes from its own generator: the resumed run ends bitwise
    equal to the uninterrupted one only if every rank got its own RNG states back."""
    for straight, resumed in _spawn("resume", 2, tmp_path):
        for name, value in straight.items():
            assert torch.equal(value, resumed[name]), name


@pytest.mark.parametrize("world_size", [2, 3])
def test_stage_one_gradient_equals_the_single_process_gradient(tmp_path, world_size,
                                                               one_thread):
    single = _scenario_gradient(0, tmp_path)
    for grads in _spawn("gradient", world_size, tmp_path):
        for name, value in single.items():
            torch.testing.assert_close(grads[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world_size", [2, 3])
def test_stage_two_on_several_processes_trains_as_one_with_the_global_batch(tmp_path,
                                                                             world_size,
                                                                             one_thread):
    # Negative j of each global batch comes from row stream step * 12 + j on whichever rank
    # draws it, and positive j's data noise from that row of the data-noise seed: the same
    # chains and noisy positives, so the same averaged gradient and the same weights.
    single = _scenario_stage_two(0, tmp_path)
    for weights in _spawn("stage_two", world_size, tmp_path):
        for name, value in single.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6)


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, one_thread):
    results = _spawn("diverge", 2, tmp_path)
    assert [r["step"] for r in results] == [2, 2]
    assert "loss became nan" in results[0]["message"]
    # the snapshot of step 2 waited for step 2 to come back healthy: step 1 is the last on disk
    assert torch.load(tmp_path / "vae.pt", weights_only=True)["step"] == 1


def test_a_chain_diverging_on_one_rank_stops_every_rank_before_the_backward(tmp_path,
                                                                           one_thread):
    rank0, rank1 = _spawn("chain", 2, tmp_path)
    assert rank0["step"] == rank1["step"] == 0
    assert "chain diverged (on another process)" in rank0["message"]
    assert "chain diverged (Langevin chain diverged" in rank1["message"]


def test_other_commands_refuse_to_run_under_torchrun(monkeypatch, capsys):
    from vaebm_fast.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: info runs on one process, but WORLD_SIZE is 2 (started by torchrun); run it "
        "without torchrun (only train-vae, train-ebm, sample run on several processes)"]


def test_bad_batch_size_under_torchrun_is_one_line_exit_code_2(tmp_path, one_thread):
    rank0, rank1 = _spawn("cli_bad_batch", 2, tmp_path)
    assert rank0["code"] == rank1["code"] == 2
    assert rank0["stderr"].splitlines() == [
        "error: batch_size (5) must be divisible by the number of processes (2): it is the "
        "global batch, split evenly; pick a multiple of 2"]
    assert rank1["stderr"] == ""


# -- the command line under torchrun -------------------------------------------------------
def _torchrun(nproc: int, *argv, extra=(), script=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    entry = [str(script)] if script else ["-m", "vaebm_fast"]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", *extra, *entry, *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)


def _cli(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vaebm_fast", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT_S)


TRAIN = ("train-vae", "--dataset", "25gaussians", "--batch-size", "32", "--checkpoint-every",
         "3", "--log-every", "1", "--seed", "4")


def _global_generator_after(steps: int, seed: int = 4) -> torch.Tensor:
    """The data generator's state after ``steps`` global batches of 32, drawn by one process."""
    generator = torch.Generator().manual_seed(seed)
    toy = TwentyFiveGaussians()
    for _ in range(steps):
        toy.sample(32, generator)
    return generator.get_state()


def test_two_process_checkpoint_resumes_on_one_and_on_two(tmp_path):
    first = _torchrun(2, *TRAIN, "--out", tmp_path / "a", "--steps", "6")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("stage 1 done") == 1  # only rank 0 prints
    saved = torch.load(tmp_path / "a" / "vae.pt", weights_only=True)
    assert (saved["step"], saved["world_size"]) == (6, 2)
    assert torch.equal(saved["data"]["generator"], _global_generator_after(6))
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    for run, resume in (("a", lambda: _cli(*TRAIN, "--out", tmp_path / "a", "--steps", "9")),
                        ("b", lambda: _torchrun(2, *TRAIN, "--out", tmp_path / "b", "--steps",
                                                "9"))):
        result = resume()
        assert result.returncode == 0, result.stderr
        assert "resumed from" in result.stderr and "at step 6" in result.stderr
        assert ("written by 2 process(es), this run has 1" in result.stderr) == (run == "a")
        state = torch.load(tmp_path / run / "vae.pt", weights_only=True)
        assert state["step"] == 9
        assert state.get("world_size", 1) == (1 if run == "a" else 2)
        # the same global data order as one uninterrupted run of 9 global batches
        assert torch.equal(state["data"]["generator"], _global_generator_after(9))
        steps = [json.loads(line)["step"]
                 for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(9))


KILLER = """\
import os, signal, sys
from vaebm_fast.cli import main
from vaebm_fast.training import loop

one_step = loop._Run._one_step

def dying_step(self, step):
    if (step == 7 and os.environ["RANK"] == "1"
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        os.kill(os.getpid(), signal.SIGKILL)
    return one_step(self, step)

loop._Run._one_step = dying_step
sys.exit(main())
"""


def test_killed_worker_restarts_from_the_last_checkpoint(tmp_path):
    script = tmp_path / "dying_worker.py"
    script.write_text(KILLER)
    result = _torchrun(2, *TRAIN, "--out", tmp_path / "run", "--steps", "10",
                       extra=("--max-restarts=1",), script=script)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "at step 6" in result.stderr
    assert "internal error" not in result.stderr  # rank 0 lost its peer: not a bug report
    state = torch.load(tmp_path / "run" / "vae.pt", weights_only=True)
    assert state["step"] == 10
    assert torch.equal(state["data"]["generator"], _global_generator_after(10))
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-4:] == [6, 7, 8, 9] and set(steps) == set(range(10))


def test_replay_buffers_and_chain_offsets_are_redistributed_at_another_world_size():
    from vaebm_fast.sampling.replay import ReplayBuffer
    from vaebm_fast.training.ebm import reshard_rank_state
    saved = []
    for rank, pushed in ((0, 5), (1, 3)):  # rank 0's ring has wrapped, rank 1's has not
        buffer = ReplayBuffer(4, [(1,)])
        for i in range(pushed):
            buffer.push([torch.full((1, 1), 10.0 * rank + i)])
        saved.append(buffer.state_dict())
    offsets = [100, distributed.rank_chain_offset(1) + 120]
    one = reshard_rank_state({"chain_offset": offsets, "replay": saved}, World(0, 1, 0))
    assert one["chain_offset"] == 120  # the furthest progress: no noise drawn twice
    assert one["replay"]["size"] == 4 and one["replay"]["head"] == 0
    # the newest 4 of the 7 chains (ages interleaved): both ranks' newest survive
    assert one["replay"]["storage"][0].flatten().tolist() == [3.0, 11.0, 4.0, 12.0]
    three = [reshard_rank_state({"chain_offset": offsets, "replay": saved}, World(r, 3, r))
             for r in range(3)]
    assert [t["chain_offset"] for t in three] == [distributed.rank_chain_offset(r) + 120
                                                  for r in range(3)]
    kept = sorted(v for t in three
                  for v in t["replay"]["storage"][0][:t["replay"]["size"]].flatten().tolist())
    assert kept == [1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0]  # every stored chain, once
    ring = ReplayBuffer(4, [(1,)])
    ring.load_state_dict(three[0]["replay"])  # a state the buffer accepts
    assert len(ring) == three[0]["replay"]["size"]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_shards_cover_every_sample_once_in_round_robin(world_size):
    ranges = distributed.shard_ranges(10, 4)
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    mine = [distributed.rank_shards(10, 4, World(r, world_size, r)) for r in range(world_size)]
    assert sorted(sum(mine, [])) == ranges
    assert all(m == ranges[r::world_size] for r, m in enumerate(mine))
