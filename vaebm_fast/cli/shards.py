"""Samples [0, N) drawn in shards by the processes of a run, collected in sample order.

Shard s holds samples [s * B, min(N, (s + 1) * B)) (B: ``--batch``); process r of W draws the
shards s with s mod W = r, each with ``sample(..., first_index=s * B)``, so sample i comes from
row stream i of the seed (docs/design.md, "Random numbers"): its image depends on (seed, i, the
settings) alone, not on B's split, W or which process drew it. Each finished shard is a file
``shard_{start:09d}_{stop:09d}.npy`` written atomically; a rerun (at any number of processes)
skips the shards already on disk, and rank 0 concatenates them in order once all are there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, Tuple

import numpy as np

from .. import distributed
from ..checkpoint import write_atomically
from .errors import UsageError

__all__ = ["draw_shards", "claim_folder", "shard_path", "sha256"]

log = logging.getLogger("vaebm_fast")

# draw(start, stop) -> {name: array [stop - start, ...]}: the samples of global indices
# [start, stop), one array per output (e.g. "vae" and "vaebm").
Draw = Callable[[int, int], Dict[str, np.ndarray]]


def shard_path(shard_dir: str, name: str, start: int, stop: int) -> str:
    return os.path.join(shard_dir, f"{name}_{start:09d}_{stop:09d}.npy")


def draw_shards(draw: Draw, names: Tuple[str, ...], n: int, batch: int, shard_dir: str,
                ) -> Dict[str, np.ndarray] | None:
    """Draw this process's missing shards, wait for the others, and return ``{name: all n
    samples in order}`` on rank 0 (None on the other ranks)."""
    world = distributed.World.current()
    os.makedirs(shard_dir, exist_ok=True)
    mine = distributed.rank_shards(n, batch, world)
    todo = [(a, b) for a, b in mine
            if not all(_finished(shard_path(shard_dir, name, a, b), b - a) for name in names)]
    if len(todo) < len(mine):
        log.info("resumed: %d of this process's %d shards were already in %s",
                 len(mine) - len(todo), len(mine), shard_dir)
    start_time = time.perf_counter()
    for k, (a, b) in enumerate(todo):
        arrays = draw(a, b)
        for name in names:
            write_atomically(shard_path(shard_dir, name, a, b),
                             lambda f, x=arrays[name]: np.save(f, x))
        log.info("shard %d/%d (samples %d..%d) done (%.1f s)", k + 1, len(todo), a, b - 1,
                 time.perf_counter() - start_time)
    distributed.barrier()
    if not world.is_main:
        return None
    return {name: np.concatenate([np.load(shard_path(shard_dir, name, a, b))
                                  for a, b in distributed.shard_ranges(n, batch)])
            for name in names}


def _finished(path: str, size: int) -> bool:
    """Whether ``path`` holds a shard of ``size`` samples (a damaged file is drawn again)."""
    if not os.path.exists(path):
        return False
    try:
        return np.load(path, mmap_mode="r").shape[:1] == (size,)
    except (OSError, ValueError):
        return False


def claim_folder(shard_dir: str, settings: dict, *, replace: bool = False) -> None:
    """Make ``shard_dir`` hold shards of these ``settings``: rank 0 records them in
    ``run.json``, or checks a rerun's against the recorded ones. When they differ, a resumed
    run must not mix samples of other settings: with ``replace`` the old shards are deleted
    (a cache of a run folder's ``sample``), else every process raises the same UsageError (an
    official sampling job, whose shards may have cost hours)."""
    problem = None
    if distributed.World.current().is_main:
        try:
            os.makedirs(shard_dir, exist_ok=True)
            _check_or_write_settings(os.path.join(shard_dir, "run.json"), settings)
        except UsageError as e:
            if not replace:
                problem = str(e)
            else:
                for name in os.listdir(shard_dir):
                    if name.endswith(".npy") or name == "run.json":
                        os.remove(os.path.join(shard_dir, name))
                _check_or_write_settings(os.path.join(shard_dir, "run.json"), settings)
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise UsageError(problem)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_or_write_settings(path: str, settings: dict) -> None:
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in set(before) | set(settings)
                         if before.get(k) != settings.get(k))
        if changed:
            raise UsageError(f"{os.path.dirname(path)} holds samples drawn with other settings "
                             f"({', '.join(changed)} differ); pass another --out or remove "
                             "that folder to start over")
        return
    text = json.dumps(settings, indent=2).encode()
    write_atomically(path, lambda f: f.write(text))
