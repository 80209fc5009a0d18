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

from ..checkpoint import (CheckpointError, capture_rng_state, checkpoint_bytes, load_checkpoint,
                          remove_stale_temp_files, restore_rng_state, save_checkpoint,
                          write_atomically)
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
        self.t0 = time.perf_counter()

    # -- resume ---------------------------------------------------------------------------
    def run(self) -> dict:
        start = 0
        if self.path is not None:
            for stale in remove_stale_temp_files(self.path.parent):
                logger.info("removed %s, left by a checkpoint write that was killed", stale)
            if self.resume and self.path.exists():
                start = self._resume()
                if start >= self.cfg.steps:
                    logger.info("%s: %s is already at step %d >= --steps %d; nothing to train%s",
                                self.stage.desc, self.path, start, self.cfg.steps,
                                "" if start == self.cfg.steps else
                                " (the checkpoint is past --steps: pass a larger --steps to "
                                "train on, or --no-resume to start over)")
                    return {}
            self._write_config()
        return self._train(start)

    def _resume(self) -> int:
        state = load_checkpoint(self.path, kind=self.stage.kind,
                                required_keys=("model", "step", "rng", "config"))
        if not self.allow_config_change:
            self._check_same_run(state["config"])
        start = self._restore(state, self.path)
        if not weights_are_finite(self.stage.weights()):  # written before the weights check
            raise CheckpointError(
                f"checkpoint {self.path} holds NaN/Inf weights (training had diverged when it "
                f"was written); resume from an earlier checkpoint, or start over (--no-resume)")
        self.saved_step = start
        logger.info("resumed from %s at step %d", self.path, start)
        return start

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
        on_terminal = bool(getattr(sys.stderr, "isatty", lambda: False)())
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
        """Run step ``step``; return (metrics, what diverged or None, the error behind it)."""
        try:
            metrics = self.stage.step(step)
        except ChainDivergedError as error:
            return ({}, f"its negative-phase Langevin chain diverged "
                        f"({str(error).split('. ')[0]})", error)
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
        return checkpoint_bytes({**self.stage.state(), "config": self.stage.config(),
                                 "step": step, "rng": capture_rng_state()})

    def _save(self, step: int, snapshot: bytes | None) -> None:
        if self.path is None:
            return
        save_checkpoint(self.path, snapshot if snapshot is not None else self._snapshot(step),
                        keep_previous=True)
        self.saved_step = step

    def _recover(self, step: int, problem: str, last_good, attempt: int) -> int:
        good_step, snapshot = last_good
        state = torch.load(io.BytesIO(snapshot), map_location="cpu", weights_only=True)
        self._restore(state, f"(the in-memory state of step {good_step})")
        change = self.stage.lower(self.cfg.recover_factor)
        logger.warning("%s diverged at step %d: %s. Recovery %d of %d: back to the last "
                       "healthy state (step %d), %s", self.stage.desc, step, problem, attempt,
                       self.cfg.recover_attempts, good_step, change)
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
        if self.path is None:
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


__all__ = ["Stage", "TrainingDiverged", "run_training", "weights_are_finite", "IDENTITY_KEYS"]
