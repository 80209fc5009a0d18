"""The part every trainer shares: resume, divergence, checkpoints, progress and metrics files.

A trainer describes itself as a :class:`Stage` (callbacks: one training step, its state, how
to load a state, its weights, how to lower its step sizes) and ``run_training`` runs it:

- **Resume.** A checkpoint at ``checkpoint_path`` is loaded (``resume=True``) if its config
  names the same data set and architecture as this run (``allow_config_change=True`` accepts
  others) and its step is below ``cfg.steps``; at or past ``cfg.steps`` the run says so and
  trains nothing, leaving the file as it is. Temporary files of checkpoint writes that were
  killed are removed first.
- **Divergence.** After every step the metrics must be finite, the watched ones (the loss, the
  energies) within ``cfg.max_loss_magnitude``, and the weights finite (one fused reduction
  after the optimizer step); a ``ChainDivergedError`` of the negative phase counts too. A
  divergence raises :class:`TrainingDiverged`, which names the last healthy checkpoint and the
  options to resume it with, or, with ``cfg.recover_attempts > 0``, reloads the last healthy
  state, lowers the learning rate (and the EBM's Langevin step size) by ``cfg.recover_factor``
  and goes on, logged, at most that many times.
- **Checkpoints that cannot be poisoned.** Every ``cfg.checkpoint_every`` steps the state is
  snapshotted, and written (atomically) only once the next step has come back healthy: weights
  that are finite but already exploded show up in that step's loss and are never written. The
  file it replaces is kept as ``NAME.prev.pt``. The final checkpoint is written at the end.
- **Observability.** Beside the checkpoint: ``config.json`` (this run's config per stage,
  ``{"vae": {...}, "ebm": {...}}``) and ``metrics.jsonl`` (one JSON object per logged step:
  ``{"stage", "step", "time_s", **metrics}``; a resumed run appends, so a step between the
  checkpoint and a crash can appear twice: the later line is the run that went on). Progress is
  a tqdm bar on a terminal, else a line on the ``vaebm_fast.training`` logger every
  ``cfg.log_every`` steps. The library adds no logging handler; the command line does.

Steps are counted from 0: "diverged at step 7" is the eighth step; a checkpoint's ``step`` is
the number of steps done, the index of the step a resumed run starts with.

**Several processes** (an initialised process group of more than one process, see
``vaebm_fast.distributed``; the trainers wrap their model in DistributedDataParallel):

- Only rank 0 removes stale temporary files, writes checkpoints, config.json and
  metrics.jsonl and logs; the others wait at a barrier after each checkpoint write. Every
  process reads the checkpoint on resume (the run directory must be one every process sees).
- The metrics of a step are averaged over the processes (one all-reduce) before the
  divergence checks and the log, and the "healthy" verdict is all-reduced, so a divergence on
  any process stops (or recovers) every process at the same step.
- A fresh run re-seeds each process's global generators from one draw of the (common) torch
  generator and its rank (``distributed.rank_seed``): each process draws its own noise.
- Per-process state (the RNG states; the stage's ``rank_keys``, e.g. stage 2's replay buffer)
  is gathered to rank 0 and stored per rank in the checkpoint (``"ranks"``, with
  ``"world_size"``); the top-level ``"rng"`` is rank 0's, as one process writes it. Resumed at
  the same number of processes each process gets its own back; at another number the RNGs are
  re-derived from rank 0's saved state and the rank, and the stage's ``reshard`` redistributes
  the per-rank entries (stage 2: the replay buffers concatenated and re-split).
"""
from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import (CheckpointError, capture_rng_state, checkpoint_bytes, load_checkpoint,
                          remove_stale_temp_files, restore_rng_state, save_checkpoint,
                          seed_rng_state, write_atomically)
from ..sampling.langevin import ChainDivergedError

logger = logging.getLogger("vaebm_fast.training")

# The config entries that make a run directory what it is: resuming with other values is
# refused unless allowed.
IDENTITY_KEYS = ("dataset", "vae", "energy")


class TrainingDiverged(FloatingPointError):
    """Training diverged (NaN/Inf or exploding metrics, non-finite weights, or a diverged
    negative-phase chain). ``step``: the step that diverged; ``checkpoint``: the last healthy
    checkpoint on disk (None if none was written); ``checkpoint_step``: its step."""

    def __init__(self, message: str, *, step: int, checkpoint: Path | None,
                 checkpoint_step: int | None):
        super().__init__(message)
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step


class PeerDiverged(RuntimeError):
    """Raised by a stage's step on the processes whose own negative-phase chain was healthy
    when another process's diverged: every process then leaves the step before its backward
    (whose gradient all-reduce the diverged process would never join)."""


@dataclass
class Stage:
    """What a trainer hands ``run_training``.

    kind: checkpoint kind and config.json / metrics.jsonl key ("vae", "ebm").
    desc: how messages name it ("stage 1: VAE").
    config: () -> the run's JSON-able config (checkpoint "config" and config.json).
    step: (step) -> metrics {name: float}; one training step (optimizer step included).
    state: () -> what to checkpoint besides "step", "rng" and "config".
    load: (checkpoint dict) -> None; restores what ``state`` saved.
    weights: () -> the floating-point tensors to check for NaN/Inf (parameters, buffers).
    lower: (factor) -> text; multiplies the step sizes recovery lowers, says what changed.
    resume_options: (factor) -> text; the options to rerun with, lowered by factor.
    watched: the metrics held to ``max_loss_magnitude``.
    """
    kind: str
    desc: str
    config: Callable[[], dict]
    step: Callable[[int], dict]
    state: Callable[[], dict]
    load: Callable[[dict], None]
    weights: Callable[[], Sequence[torch.Tensor]]
    lower: Callable[[float], str]
    resume_options: Callable[[float], str]
    watched: tuple[str, ...] = ("loss",)
    # Entries of ``state()`` that differ between processes, stored per rank; ``reshard``:
    # ({key: [value saved by each rank]}, world) -> {key: this process's value} when a run
    # resumes at another number of processes (None: every process takes rank 0's).
    rank_keys: tuple[str, ...] = ()
    reshard: Callable[[dict, "distributed.World"], dict] | None = None


def weights_are_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every entry of every floating-point tensor is finite: one fused max-norm over
    all of them (NaN and Inf propagate through a max; it cannot overflow) and one host sync."""
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel() > 0]
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all())


def run_training(stage: Stage, cfg, *, checkpoint_path: str | Path | None,
                 resume: bool = True, allow_config_change: bool = False) -> dict:
    """Run ``stage`` from the resumed step to ``cfg.steps`` (see the module docstring).

    cfg: the trainer's config; read here: steps, checkpoint_every, log_every,
        max_loss_magnitude, recover_attempts, recover_factor.

    Returns the last step's metrics ({} when there was nothing to train).

    Raises:
        CheckpointError: the checkpoint to resume cannot be read, is of another data set or
            architecture, or does not fit the model (one line, naming the file).
        TrainingDiverged: see the module docstring.
    """
    return _Run(stage, cfg, checkpoint_path, resume, allow_config_change).run()


class _Run:
    def __init__(self, stage, cfg, checkpoint_path, resume, allow_config_change):
        self.stage, self.cfg = stage, cfg
        self.path = Path(checkpoint_path) if checkpoint_path else None
        self.resume, self.allow_config_change = resume, allow_config_change
        self.saved_step: int | None = None  # step of the healthy checkpoint on disk
        self.world = distributed.World.current()
        self.t0 = time.perf_counter()

    # -- resume ---------------------------------------------------------------------------
    def run(self) -> dict:
        start = 0
        if self.path is not None:
            if self.world.is_main:  # another process's live temporary file is not stale
                for stale in remove_stale_temp_files(self.path.parent):
                    logger.info("removed %s, left by a checkpoint write that was killed", stale)
            if self.resume and distributed.broadcast_object(self.path.exists()):
                start = self._resume()
                if start >= self.cfg.steps:
                    self._info("%s: %s is already at step %d >= --steps %d; nothing to train%s",
                               self.stage.desc, self.path, start, self.cfg.steps,
                               "" if start == self.cfg.steps else
                               " (the checkpoint is past --steps: pass a larger --steps to "
                               "train on, or --no-resume to start over)")
                    return {}
            self._write_config()
        if start == 0 and self.world.is_distributed:
            seed_rng_state(distributed.rank_seed(int(torch.randint(2 ** 62, ())), self.world.rank))
        return self._train(start)

    def _info(self, message: str, *args) -> None:
        if self.world.is_main:
            logger.info(message, *args)

    def _resume(self) -> int:
        state = load_checkpoint(self.path, kind=self.stage.kind,
                                required_keys=("model", "step", "rng", "config"))
        if not self.allow_config_change:
            self._check_same_run(state["config"])
        state, saved_world = self._this_rank_state(state)
        start = self._restore(state, self.path)
        if saved_world != self.world.world_size:
            self._info("%s: the checkpoint was written by %d process(es), this run has %d: "
                       "RNG states re-derived per rank%s", self.stage.desc, saved_world,
                       self.world.world_size,
                       f", {', '.join(self.stage.rank_keys)} redistributed"
                       if self.stage.rank_keys else "")
            base = int(torch.randint(2 ** 62, ()))  # from rank 0's restored generator
            seed_rng_state(distributed.rank_seed(base, self.world.rank))
        if not weights_are_finite(self.stage.weights()):  # written before the weights check
            raise CheckpointError(
                f"checkpoint {self.path} holds NaN/Inf weights (training had diverged when it "
                f"was written); resume from an earlier checkpoint, or start over (--no-resume)")
        self.saved_step = start
        self._info("resumed from %s at step %d", self.path, start)
        return start

    def _this_rank_state(self, state: dict) -> tuple[dict, int]:
        """(``state`` with this process's RNG states and rank entries, the number of
        processes that wrote it); see the module docstring."""
        saved_world = int(state.get("world_size", 1))
        ranks = state.get("ranks")
        if not ranks:  # written by one process
            ranks = [{"rng": state["rng"], **{k: state.get(k) for k in self.stage.rank_keys}}]
        if saved_world == self.world.world_size:
            return {**state, **ranks[self.world.rank]}, saved_world
        mine = {"rng": ranks[0]["rng"]}
        if self.stage.rank_keys:
            saved = {k: [r.get(k) for r in ranks] for k in self.stage.rank_keys}
            if self.stage.reshard is not None:
                mine.update(self.stage.reshard(saved, self.world))
            else:
                mine.update({k: values[0] for k, values in saved.items()})
        return {**state, **mine}, saved_world

    def _check_same_run(self, stored: dict) -> None:
        current = self.stage.config()
        changed = [key for key in IDENTITY_KEYS
                   if key in current and key in stored and current[key] != stored[key]]
        if changed:
            was = ", ".join(f"{key} {stored[key]!r}" for key in changed)
            now = ", ".join(f"{key} {current[key]!r}" for key in changed)
            raise CheckpointError(
                f"checkpoint {self.path} was trained with {was}, but this run asks for {now}; "
                f"resume with the settings it was trained with, start a new run (another "
                f"--out, or --no-resume), or pass --allow-config-change "
                f"(allow_config_change=True) to train it on with the new ones")

    def _restore(self, state: dict, source) -> int:
        try:
            self.stage.load(state)
            restore_rng_state(state["rng"])
            return int(state["step"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            detail = " ".join(str(error).split())
            if len(detail) > 300:
                detail = detail[:300] + " ..."
            raise CheckpointError(
                f"checkpoint {source} does not fit this run ({type(error).__name__}: {detail}); "
                f"it holds another architecture or an incomplete state: train a new run "
                f"(another --out, or --no-resume)") from error

    # -- training -------------------------------------------------------------------------
    def _train(self, start: int) -> dict:
        cfg, stage = self.cfg, self.stage
        on_terminal = (bool(getattr(sys.stderr, "isatty", lambda: False)())
                       and self.world.is_main)
        bar = tqdm(total=cfg.steps, initial=start, desc=stage.desc, disable=not on_terminal,
                   dynamic_ncols=True)
        recovering = cfg.recover_attempts > 0
        last_good = (start, self._snapshot(start)) if recovering else None
        pending = None  # (step, snapshot) written once the next step is healthy
        attempts, metrics, step = 0, {}, start
        try:
            while step < cfg.steps:
                metrics, problem, cause = self._one_step(step)
                if problem is not None:
                    pending = None  # taken after the weights that just failed: not trusted
                    if attempts < cfg.recover_attempts:
                        attempts += 1
                        step = self._recover(step, problem, last_good, attempts)
                        bar.n = step
                        bar.refresh()
                        continue
                    raise self._diverged(step, problem) from cause
                if pending is not None:  # this step ran healthy on the pending weights
                    self._save(*pending)
                    if recovering:
                        last_good = pending
                    pending = None
                step += 1
                bar.update(1)
                if (step - 1) % cfg.log_every == 0 or step == cfg.steps:
                    self._log(step - 1, metrics, bar, on_terminal)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    if self.path is not None or recovering:
                        pending = (step, self._snapshot(step))
        finally:
            bar.close()
        self._save(cfg.steps, None)
        return metrics

    def _one_step(self, step: int) -> tuple[dict, str | None, Exception | None]:
        """Run step ``step``; return (metrics, what diverged or None, the error behind it).
        With several processes the metrics are the mean over them and the verdict is theirs
        together (the same collectives on every process, whatever the outcome)."""
        try:
            metrics, chain_error = self.stage.step(step), None
        except (ChainDivergedError, PeerDiverged) as error:
            metrics, chain_error = {}, error
        if not distributed.all_true(chain_error is None):
            detail = (str(chain_error).split(". ")[0]
                      if isinstance(chain_error, ChainDivergedError) else "on another process")
            return {}, f"its negative-phase Langevin chain diverged ({detail})", chain_error
        metrics = distributed.mean_over_ranks(metrics)
        metrics, problem, cause = self._check(metrics)
        if not distributed.all_true(problem is None):
            problem = problem or "another process diverged"
        return metrics, problem, cause

    def _check(self, metrics: dict) -> tuple[dict, str | None, Exception | None]:
        for name, value in metrics.items():
            if not math.isfinite(value):
                return metrics, f"{name} became {value}", None
        bound = self.cfg.max_loss_magnitude
        for name in self.stage.watched:
            if name in metrics and abs(metrics[name]) > bound:
                return metrics, (f"|{name}| = {abs(metrics[name]):.3g} exceeds "
                                 f"max_loss_magnitude = {bound:g}"), None
        if not weights_are_finite(self.stage.weights()):
            return metrics, "the weights became NaN/Inf at the optimizer step", None
        return metrics, None, None

    def _snapshot(self, step: int) -> bytes:
        """This process's state at ``step``; with several processes, rank 0's also holds
        every rank's RNG states and ``rank_keys`` entries (gathered: every process calls this
        at the same steps)."""
        state = {**self.stage.state(), "config": self.stage.config(), "step": step,
                 "rng": capture_rng_state()}
        if self.world.is_distributed:
            ranks = distributed.gather_object(
                {"rng": state["rng"], **{k: state[k] for k in self.stage.rank_keys}})
            if self.world.is_main:
                state.update(ranks=ranks, world_size=self.world.world_size)
        return checkpoint_bytes(state)

    def _save(self, step: int, snapshot: bytes | None) -> None:
        if self.path is None:
            return
        if snapshot is None:
            snapshot = self._snapshot(step)
        if self.world.is_main:
            save_checkpoint(self.path, snapshot, keep_previous=True)
        distributed.barrier()  # the file is on disk before any process goes on
        self.saved_step = step

    def _recover(self, step: int, problem: str, last_good, attempt: int) -> int:
        good_step, snapshot = last_good
        state = torch.load(io.BytesIO(snapshot), map_location="cpu", weights_only=True)
        self._restore(state, f"(the in-memory state of step {good_step})")
        change = self.stage.lower(self.cfg.recover_factor)
        if self.world.is_main:
            logger.warning("%s diverged at step %d: %s. Recovery %d of %d: back to the last "
                           "healthy state (step %d), %s", self.stage.desc, step, problem,
                           attempt, self.cfg.recover_attempts, good_step, change)
        self._write_config()
        return good_step

    def _diverged(self, step: int, problem: str) -> TrainingDiverged:
        options = self.stage.resume_options(0.5)
        if self.path is None:
            where = (f"no checkpoint was being written (checkpoint_path=None); start again "
                     f"with {options}")
        elif self.saved_step is None:
            where = (f"no checkpoint of this run was written before it; start again with "
                     f"{options}")
        else:
            where = (f"the last healthy checkpoint is {self.path} (step {self.saved_step}); "
                     f"resume from it by rerunning the same command with {options}")
        tried = (f" ({self.cfg.recover_attempts} automatic recoveries did not help)"
                 if self.cfg.recover_attempts else "")
        return TrainingDiverged(f"{self.stage.desc} diverged at step {step}: {problem}{tried}; "
                                f"{where}", step=step,
                                checkpoint=self.path if self.saved_step is not None else None,
                                checkpoint_step=self.saved_step)

    # -- files and logs -------------------------------------------------------------------
    def _write_config(self) -> None:
        if self.path is None or not self.world.is_main:
            return
        config_path = self.path.parent / "config.json"
        try:
            configs = json.loads(config_path.read_text())
            if not isinstance(configs, dict):
                configs = {}
        except (OSError, ValueError):
            configs = {}
        configs[self.stage.kind] = self.stage.config()
        text = json.dumps(configs, indent=2, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(config_path, lambda file: file.write(text.encode()))

    def _log(self, step: int, metrics: dict, bar, on_terminal: bool) -> None:
        if not self.world.is_main:
            return
        elapsed = time.perf_counter() - self.t0
        if on_terminal:
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
        else:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            logger.info("%s step %d/%d  %s  (%.0f s)", self.stage.desc, step + 1,
                        self.cfg.steps, shown, elapsed)
        if self.path is not None:
            record = {"stage": self.stage.kind, "step": step, "time_s": round(elapsed, 3),
                      **metrics}
            with open(self.path.parent / "metrics.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")


__all__ = ["Stage", "TrainingDiverged", "PeerDiverged", "run_training", "weights_are_finite",
           "IDENTITY_KEYS"]
