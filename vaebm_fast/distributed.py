"""Several processes under ``torchrun``: which process this is, and the few collectives the
trainers need, on ``torch.distributed``.

- ``World(rank, world_size, local_rank)``: ``World.current()`` reads the default process group
  (rank 0 of 1 when none is initialised), so library code asks "where am I" without ever
  creating a group.
- ``init_from_torchrun()``: creates the default process group from torchrun's environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL with one GPU
  per process (the current device is set to ``LOCAL_RANK``) when CUDA is available, else gloo.
  Only the command line calls it: a library never initialises a process group behind the
  user's back. ``destroy()`` undoes it.
- ``barrier``, ``all_gather_object``, ``gather_object``, ``broadcast_object``, ``all_true``,
  ``mean_over_ranks``: no-ops (or the identity) on one process.
- ``rank_chain_offset(rank)`` and ``rank_seed(base, rank)``: where each process's random
  numbers come from (one place each, documented there).
- ``shard_ranges(n, batch)`` and ``rank_shards(n, batch, world)``: how N samples are cut into
  shards of one batch and which shards a process draws (round-robin).

Standard library and torch only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["World", "init_from_torchrun", "destroy", "barrier", "all_gather_object",
           "gather_object", "broadcast_object", "all_true", "mean_over_ranks",
           "rank_chain_offset", "rank_seed", "shard_ranges", "rank_shards",
           "TORCHRUN_VARIABLES"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# Philox offsets of one process's negative-phase chains: rank r draws from
# [r * 2**56, (r + 1) * 2**56), 2**56 normals (far more than any run draws) before the ranges
# of two processes could meet.
RANK_OFFSET_STRIDE = 2 ** 56


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` in [0, world_size),
    ``local_rank`` on its machine (its GPU index under torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> "World":
        """The world of the initialised default process group; rank 0 of 1 without one."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_from_torchrun() -> World:
    """Initialise the default process group from torchrun's environment and return the world.

    NCCL when CUDA is available (and the current CUDA device becomes ``LOCAL_RANK``), else gloo.

    Raises:
        RuntimeError: a variable torchrun sets is missing (the process was not started by
            torchrun, srun torchrun or an equivalent launcher).
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: start several processes with "
                           f"torchrun --nproc_per_node=N -m vaebm_fast ...")
    local_rank = int(os.environ["LOCAL_RANK"])
    store, rank, world_size = next(dist.rendezvous("env://"))
    # torchrun keeps one store across the restarts of --max-restarts; the keys a killed
    # attempt left there (its processes' addresses, barrier counts) must not be read by the
    # next one, which then fails to connect or hangs: each attempt gets its own key prefix.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"vaebm_fast/attempt{attempt}", store)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world_size,
                                device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    return World.current()


def destroy() -> None:
    """Destroy the default process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    """Where the collectives' tensors live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here."""
    if _active():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """[the obj of rank 0, of rank 1, ...] on every process; [obj] on one."""
    if not _active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> Optional[List[Any]]:
    """[the obj of rank 0, of rank 1, ...] on rank ``dst``, None on the others; [obj] on one."""
    if not _active():
        return [obj]
    out: Optional[List[Any]] = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process; ``obj`` itself on one."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` is true on every process (one all-reduce); ``flag`` on one."""
    if not _active():
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: Dict[str, float]) -> Dict[str, float]:
    """The mean of each entry over the processes (same keys everywhere; one all-reduce in
    float64); ``values`` itself on one process."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                          device=_device())
    dist.all_reduce(packed)
    packed /= dist.get_world_size()
    means = dict(zip(keys, packed.tolist()))
    return {k: means[k] for k in values}


def rank_chain_offset(rank: int) -> int:
    """The first Philox offset of rank ``rank``'s negative-phase chains: ``rank * 2**56``.

    Each process runs its chains with the same seed on its own offset range, so ranks draw
    different noise and rank 0 draws what a single process draws. The only place this rule
    lives: noise numbered by global sample index would replace it here.
    """
    return int(rank) * RANK_OFFSET_STRIDE


def rank_seed(base: int, rank: int) -> int:
    """The seed of rank ``rank``'s global generators, from a ``base`` common to all processes:
    each process draws its own stream (e.g. the posterior noise of stage 1), and the same
    (base, rank) the same one again."""
    return (int(base) * 1_000_003 + int(rank)) % (2 ** 63)


def shard_ranges(n: int, batch: int) -> List[Tuple[int, int]]:
    """[(start, stop)] of the ceil(n / batch) shards of samples [0, n), in sample order."""
    return [(start, min(n, start + batch)) for start in range(0, n, batch)]


def rank_shards(n: int, batch: int, world: World) -> List[Tuple[int, int]]:
    """The shards of :func:`shard_ranges` that ``world``'s process draws: every
    ``world_size``-th from its rank on (round-robin, so the processes' loads differ by at most
    one shard)."""
    return shard_ranges(n, batch)[world.rank::world.world_size]
