"""Scaling benchmark: stage-2 training steps and samples per second against the number of
processes (``vaebm-fast bench scaling``).

Each case is one workload (the toy or the digits preset's networks, untrained: the time of a
step does not depend on the weights) run by groups of 1, 2, 3, ... processes on one machine,
joined by ``torch.distributed`` as torchrun would join them (gloo on the CPU, NCCL with one GPU
per process on CUDA). Every group is a :class:`ProcessGroupPool`: its processes start once,
build the workload, and then wait for orders, so a timed call (:meth:`ProcessGroupPool.round`)
is one round of work on every process and nothing else: process start, imports and model
building are not timed. The groups are the variants of one :class:`~.harness.Case`, so
:func:`~.harness.run_case` interleaves them round-robin like any other benchmark; the baseline
is one process, and the speed-up of N processes is the strong-scaling factor (the same global
work split N ways; N times is perfect).

* ``train``: ``train_ebm`` for a few steps of the preset's stage 2 at a fixed global batch,
  split across the processes (DDP, one all-reduce of the energy's gradient per step; each
  ``train_ebm`` call builds its optimizer and DDP wrapper once, amortised over its steps).
* ``sample``: a fixed number of samples in shards of one batch, shared round-robin as
  ``vaebm-fast sample`` shares them, each drawn from its global indices' row streams, then
  gathered on rank 0 in sample order (the output file is not written).

Before timing, every group runs one round from the same weights and its rank 0 returns what
it computed: the samples must equal one process's bit for bit (row streams), the trained
weights to rounding (their difference under 1% of how far the round moved them: Adam
amplifies the rounding of batch-size-dependent BLAS blocking). A group that disagrees fails
the benchmark instead of being timed.

Each process uses ``--threads`` torch threads (default 1: one core per process, as one GPU per
process), so on a machine with C cores up to C processes run side by side; one process with C
threads (what a user runs without torchrun) is timed beside them, a second baseline. A group
that needs more GPUs than there are, or whose global batch does not split evenly, is reported
as not run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..info import machine_info
from .harness import (Case, Variant, add_run_arguments, print_catalogue, run_case,
                      select_keys, usage_error)
from .record import Recorder

__all__ = ["Workload", "WORKLOADS", "Group", "groups", "ProcessGroupPool", "disagreement",
           "scaling_case", "run_workload", "main"]

PROG = "vaebm-fast bench scaling"
START_TIMEOUT_S = 300.0  # process start + imports + model building, on a loaded machine
ROUND_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Workload:
    """One round of work, shared by however many processes run it.

    ``dataset``: the preset whose networks and stage-2 settings are used; ``task``: "train"
    (``steps`` stage-2 steps of global batch ``batch``) or "sample" (``samples`` samples in
    shards of ``batch``, chains of ``langevin_steps``).
    """

    key: str
    title: str
    dataset: str
    task: str
    batch: int
    steps: int = 0
    samples: int = 0
    langevin_steps: int = 0

    @property
    def items(self) -> Tuple[int, str]:
        """(what one round produces, its unit): the rate column of the table."""
        return (self.steps, "steps") if self.task == "train" else (self.samples, "samples")

    def size(self) -> str:
        if self.task == "train":
            return (f"{self.steps} stage-2 steps of global batch {self.batch}, "
                    f"{self.langevin_steps}-step chains, {self.dataset} preset")
        return (f"{self.samples} samples in shards of {self.batch}, {self.langevin_steps}-step "
                f"chains, {self.dataset} preset")


# Global batches and shard counts divisible by 1, 2 and 3 processes (and 4, 6 for the batches).
WORKLOADS: Dict[str, Workload] = {w.key: w for w in [
    Workload("train_toy", "Stage-2 training, 25-Gaussians MLPs", "25gaussians", "train",
             batch=240, steps=10, langevin_steps=30),
    Workload("train_digits", "Stage-2 training, digits NVAE + conv EBM", "digits", "train",
             batch=48, steps=3, langevin_steps=20),
    Workload("sample_toy", "Sampling, 25-Gaussians VAEBM", "25gaussians", "sample",
             batch=240, samples=1440, langevin_steps=100),
    Workload("sample_digits", "Sampling, digits VAEBM", "digits", "sample",
             batch=48, samples=288, langevin_steps=20),
]}
# --quick: the same code paths at smoke sizes (tests, CI).
QUICK = {key: replace(w, steps=min(w.steps, 2), samples=w.batch * 2 if w.samples else 0,
                      langevin_steps=3)
         for key, w in WORKLOADS.items()}
TIMING_FULL = dict(repeats=7, warmup=1, min_sample_s=0.0)
TIMING_QUICK = dict(repeats=2, warmup=1, min_sample_s=0.0)


# ------------------------------------------------------------------------------ one process

def _build(workload: Workload, device: torch.device) -> Callable[[], Any]:
    """This process's round of ``workload`` (the process group is initialised): a callable
    that runs one round and returns what rank 0 checks (samples, or the trained weights)."""
    import torch.distributed as dist

    from .. import distributed
    from ..data import batches, make_dataset
    from ..presets import build_energy, build_vae, preset
    from ..training import train_ebm
    from ..training.ebm import make_sampler

    settings = preset(workload.dataset)
    torch.manual_seed(0)  # the same weights on every process and in every group
    vae = build_vae(settings["vae"]).to(device).eval().requires_grad_(False)
    energy = build_energy(settings["energy"]).to(device)
    cfg = replace(settings["ebm_train"], batch_size=workload.batch, steps=workload.steps,
                  langevin_steps=workload.langevin_steps)
    world = distributed.World.current()

    if workload.task == "train":
        stream = batches(make_dataset(workload.dataset), workload.batch,
                         torch.Generator().manual_seed(0), world)

        def weights():
            return torch.cat([p.detach().cpu().flatten() for p in energy.parameters()])

        def train_round():
            before = weights()
            train_ebm(energy, vae, stream, cfg)
            return before, weights()
        return train_round

    sampler = make_sampler(energy, vae, replace(cfg, step_size=settings["sample_step_size"]))
    shards = distributed.rank_shards(workload.samples, workload.batch, world)

    def sample_round():  # the sample command's shards, gathered instead of written
        mine = [(start, sampler.sample(stop - start, seed=0, first_index=start,
                                       device=device).cpu())
                for start, stop in shards]
        gathered = [None] * world.world_size if world.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        if not world.is_main:
            return None
        return torch.cat([x for _, x in sorted(sum(gathered, []), key=lambda item: item[0])])
    return sample_round


def _worker(rank: int, world_size: int, init_file: str, workload: Workload, device: str,
            threads: int, connections) -> None:
    """A pool process: join the group, build the workload, then serve the parent's orders
    ("round": run one round; "check": one round, rank 0 sends its result; "stop")."""
    import torch.distributed as dist
    connection = connections[rank]
    try:
        torch.set_num_threads(threads)
        os.environ["LOCAL_RANK"] = str(rank)
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                init_method=f"file://{init_file}", rank=rank,
                                world_size=world_size)
        run = _build(workload, torch.device(device, rank) if device == "cuda"
                     else torch.device("cpu"))
        connection.send(("ready", None))
        while True:
            order = connection.recv()
            if order == "stop":
                break
            result = run()
            if device == "cuda":
                torch.cuda.synchronize()
            dist.barrier()  # the round ends when the slowest process ends it
            connection.send(("done", result if order == "check" and rank == 0 else None))
    except Exception:  # the parent reports it; the process must still leave the group
        connection.send(("error", f"rank {rank}: {traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------ the parent

class ProcessGroupPool:
    """``world_size`` processes joined into one process group, each holding ``workload``.

    Use as a context manager; :meth:`round` runs one round on every process and returns when
    all have finished it (what a timed call is); :meth:`check` does the same and returns rank
    0's result.
    """

    def __init__(self, world_size: int, workload: Workload, device: str = "cpu",
                 threads: int = 1):
        import torch.multiprocessing as mp
        self.world_size = world_size
        context = mp.get_context("spawn")
        pipes = [context.Pipe() for _ in range(world_size)]
        self._connections = [parent for parent, _ in pipes]
        self._folder = tempfile.TemporaryDirectory(prefix="vaebm_fast_scaling_")
        init_file = os.path.join(self._folder.name, "rendezvous")
        self._processes = mp.start_processes(
            _worker, args=(world_size, init_file, workload, device, threads,
                           [child for _, child in pipes]),
            nprocs=world_size, join=False, start_method="spawn")
        try:
            self._collect(START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _collect(self, timeout_s: float) -> List[Any]:
        """Each process's answer to the last order, in rank order."""
        deadline = time.monotonic() + timeout_s
        answers = []
        for rank, connection in enumerate(self._connections):
            while not connection.poll(0.1):
                process = self._processes.processes[rank]
                if not process.is_alive():
                    raise RuntimeError(f"process {rank} of {self.world_size} ended (exit code "
                                       f"{process.exitcode}) without answering")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"process {rank} of {self.world_size} did not answer "
                                       f"in {timeout_s:.0f} s")
            kind, payload = connection.recv()
            if kind == "error":
                raise RuntimeError(f"a process of the {self.world_size}-process group "
                                   f"failed:\n{payload}")
            answers.append(payload)
        return answers

    def _order(self, order: str) -> List[Any]:
        for connection in self._connections:
            connection.send(order)
        return self._collect(ROUND_TIMEOUT_S)

    def round(self) -> None:
        self._order("round")

    def check(self) -> Any:
        return self._order("check")[0]

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send("stop")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 60
        while not self._processes.join(timeout=1):
            if time.monotonic() > deadline:
                for process in self._processes.processes:
                    process.kill()
                break
        self._folder.cleanup()

    def __enter__(self) -> "ProcessGroupPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def disagreement(reference: Any, other: Any, task: str, exact: bool = True) -> Optional[str]:
    """Why ``other`` (a group's check result) differs from one process's, or None. ``exact``:
    samples must be bitwise equal (same thread count); else equal to rounding."""
    if task == "sample":
        if torch.equal(reference, other) or (
                not exact and torch.allclose(reference, other, rtol=1e-4, atol=1e-4)):
            return None
        return "samples differ from one process's"
    # Adam amplifies the rounding of batch-size-dependent BLAS blocking in a weight whose
    # gradient is near 0 (its step may flip sign), so single weights may differ by a good part
    # of a step; over all weights the difference stays a tiny share of how far the round moved
    # them, while a wrong split (other data, other noise) differs by a share near 1.
    (start, end), (other_start, other_end) = reference, other
    if not torch.equal(start, other_start):
        return "the weights a round starts from differ from one process's"
    share = ((end - other_end).norm() / (end - start).norm()).item()
    if not share <= 0.01:
        return (f"weights after one round differ from one process's by {share:.2%} of how far "
                f"the round moved them (allowed: 1%)")
    return None


@dataclass(frozen=True)
class Group:
    """A variant: ``processes`` processes of ``threads`` torch threads each."""

    processes: int
    threads: int
    whole_machine: bool = False  # one process with every core: a second baseline

    @property
    def name(self) -> str:
        name = f"{self.processes} process" + ("" if self.processes == 1 else "es")
        return name + (f", {self.threads} threads" if self.whole_machine else "")


def groups(processes: Sequence[int], threads: int, cores: int) -> List[Group]:
    """The variants: each process count at ``threads`` threads per process and, where the
    machine has more cores than that, one process using them all (what a user runs without
    torchrun)."""
    out = [Group(n, threads) for n in processes]
    if cores > threads:
        out.insert(1, Group(1, cores, whole_machine=True))
    return out


def scaling_case(workload: Workload, chosen: Sequence[Group], pools: Dict[Group, Any],
                 skipped: Dict[str, str], device: str) -> Case:
    """The case timing ``pools`` ({group: started pool}) on ``workload``; one process at the
    run's thread count is the baseline."""
    def variant(g: Group) -> Variant:
        if g.whole_machine:
            return Variant(g.name, pools[g].round, role="baseline",
                           note=f"one process using all {g.threads} cores, without torchrun")
        if g.processes == 1:
            return Variant(g.name, pools[g].round, role="baseline")
        return Variant(g.name, pools[g].round, note=f"the same global work split {g.processes} "
                                                     "ways")

    most = max(g.processes for g in chosen)
    return Case(workload.key, workload.title,
                f"{workload.title} on 1 to {most} processes (torch.distributed)",
                [variant(g) for g in chosen if g in pools], baseline=chosen[0].name,
                ceiling_numel=None, device=device, skipped=skipped, size=workload.size())


def _skip_reason(workload: Workload, n: int, device: str) -> Optional[str]:
    if workload.task == "train" and workload.batch % n:
        return f"the global batch {workload.batch} does not split into {n} equal parts"
    if device == "cuda" and n > torch.cuda.device_count():
        return f"{n} processes need {n} GPUs; this machine has {torch.cuda.device_count()}"
    return None


def run_workload(workload: Workload, chosen: Sequence[Group], device: str,
                 timing: Dict[str, Any]) -> Dict[str, Any]:
    """Start a pool per group, check they agree with one process, time them; the case's
    result."""
    skipped = {g.name: why for g in chosen
               if (why := _skip_reason(workload, g.processes, device))}
    pools: Dict[Group, ProcessGroupPool] = {}
    try:
        for g in chosen:
            if g.name not in skipped:
                print(f"[bench scaling] {workload.key}: starting {g.name} ...", file=sys.stderr,
                      flush=True)
                pools[g] = ProcessGroupPool(g.processes, workload, device, g.threads)
        base = chosen[0]
        reference = pools[base].check()
        for g, pool in pools.items():
            if g != base and (why := disagreement(reference, pool.check(), workload.task,
                                                  exact=g.threads == base.threads)):
                raise RuntimeError(f"{workload.key} on {g.name}: {why}")
        case = scaling_case(workload, chosen, pools, skipped, device)
        print(f"[bench scaling] {case.title} ...", file=sys.stderr, flush=True)
        return run_case(case, **timing)
    finally:
        for pool in pools.values():
            pool.close()


# ------------------------------------------------------------------------------ command line

def catalogue() -> List[Tuple[str, str]]:
    return [(w.key, w.size()) for w in WORKLOADS.values()]


def _process_counts(text: str) -> List[int]:
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        usage_error(PROG, f"--processes takes counts separated by commas, e.g. 1,2,3 "
                          f"(got {text!r})")
    if counts[0] != 1 or counts[-1] > 64:
        usage_error(PROG, f"--processes must include 1 (the baseline) and stay at most 64 "
                          f"(got {text!r})")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, "default 7; quick 2")
    parser.add_argument("--processes", default="1,2,3", metavar="N,N,...",
                        help="process counts to compare (default 1,2,3; 1 is the baseline)")
    parser.set_defaults(threads=1)
    return parser


def main(argv=None) -> Dict[str, object]:
    """Run the chosen workloads; returns the paths written ({} without --out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        print_catalogue(catalogue())
        return {}
    keys = select_keys(PROG, catalogue(), args.only)
    processes = _process_counts(args.processes)
    if args.threads < 1:
        usage_error(PROG, f"--threads must be >= 1 (got {args.threads})")
    device = args.device.split(":")[0]
    if device not in ("cpu", "cuda"):
        usage_error(PROG, f"--device must be cpu or cuda (got {args.device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        usage_error(PROG, "--device cuda: no CUDA device is available")
    workloads, timing = (QUICK, dict(TIMING_QUICK)) if args.quick else (WORKLOADS,
                                                                         dict(TIMING_FULL))
    if args.repeats is not None:
        timing["repeats"] = args.repeats
    note = (f"{args.threads} torch thread{'' if args.threads == 1 else 's'} per process. "
            + args.note).strip()
    recorder = Recorder("scaling", device, args.out, f"{PROG} {shlex.join(argv)}", note,
                        label="bench scaling")
    cores = 1 if device == "cuda" else machine_info("cpu")["usable_cores"]
    chosen = groups(processes, args.threads, cores)
    for key in keys:
        workload = workloads[key]
        items, unit = workload.items
        result = run_workload(workload, chosen, device, timing)
        recorder.add(result, extra={"*": {"items_per_call": items, "item": unit}})
    return recorder.finish()


if __name__ == "__main__":
    main()
