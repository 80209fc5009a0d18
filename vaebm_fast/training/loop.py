"""The part every trainer shares: resume, progress bar, periodic atomic checkpoints.

A trainer supplies ``step_fn(step) -> dict of floats`` and ``state_fn() -> dict`` (what to save
besides the step counter and RNG state). ``run_training`` resumes from ``checkpoint_path`` when
it exists (and ``resume`` is set), calls ``step_fn`` for the remaining steps, and writes the
checkpoint atomically every ``checkpoint_every`` steps and at the end, so a crash or a
divergence loses at most that many steps (VAEBM training "eventually explodes":
docs/design.md#stage-2-optimiser).
"""
from __future__ import annotations

import math
import os
from typing import Callable

from tqdm.auto import tqdm

from ..checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint


class TrainingDiverged(FloatingPointError):
    """A loss became NaN/Inf; the last good checkpoint is kept on disk."""


def run_training(*, total_steps: int, step_fn: Callable[[int], dict],
                 state_fn: Callable[[], dict], load_fn: Callable[[dict], None],
                 checkpoint_path: str | None, checkpoint_every: int,
                 resume: bool = True, desc: str = "train", log_every: int = 50,
                 log: Callable[[str], None] | None = None) -> dict:
    """Run ``step_fn`` from the resumed step to ``total_steps``; returns the last metrics."""
    start = 0
    if checkpoint_path and resume and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path)
        load_fn(state)
        restore_rng_state(state["rng"])
        start = int(state["step"])
        if log:
            log(f"resumed from {checkpoint_path} at step {start}")

    def save(step: int) -> None:
        if checkpoint_path:
            save_checkpoint(checkpoint_path,
                            {**state_fn(), "step": step, "rng": capture_rng_state()})

    metrics: dict = {}
    bar = tqdm(range(start, total_steps), desc=desc, initial=start, total=total_steps,
               disable=None, dynamic_ncols=True)
    for step in bar:
        metrics = step_fn(step)
        loss = metrics.get("loss", 0.0)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{desc}: loss became {loss} at step {step}; the last good checkpoint "
                f"({checkpoint_path or 'none: pass a checkpoint path'}) is untouched. Lower the "
                "learning rate or step size and resume from it.")
        if step % log_every == 0 or step == total_steps - 1:
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total_steps:
            save(step + 1)
    if start <= total_steps:  # a checkpoint already past total_steps is kept as it is
        save(total_steps)
    return metrics
