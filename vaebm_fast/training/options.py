"""Checks of training options, shared by ``VAETrainConfig`` and ``EBMTrainConfig``.

Each config validates itself in ``__post_init__`` (so ``dataclasses.replace`` and the command
line's overrides are checked too) and again when a trainer starts (a field assigned after
construction is checked then). A bad value raises ``ValueError`` naming the option both ways,
as a field and as its command-line flag: ``VAETrainConfig.steps (--steps) must be an integer
>= 0 (got -1)``.

The options every trainer has, checked by ``check_loop_options``:

- ``steps``, ``batch_size``, ``lr``, ``checkpoint_every``: as usual;
- ``log_every``: steps between two progress lines (and metrics.jsonl records);
- ``max_loss_magnitude``: the explosion test: a watched metric (the loss; for the EBM also the
  mean energies) whose magnitude exceeds it counts as divergence, like NaN/Inf (``inf`` turns
  the test off);
- ``recover_attempts``, ``recover_factor``: automatic recovery from divergence (0: off).
"""
from __future__ import annotations

import math
import numbers
from typing import Any


# The options with a fixed set of values (the command line offers them as ``choices``).
CHOICES = {
    "optimizer": ("adam", "adamax"),
    "space": ("eps", "latent", "data"),
    "sampler": ("fast", "eager"),
}


def _fail(cfg: Any, name: str, rule: str) -> None:
    flag = "--" + name.replace("_", "-")
    raise ValueError(f"{type(cfg).__name__}.{name} ({flag}) must be {rule} "
                     f"(got {getattr(cfg, name)!r})")


def check_int(cfg: Any, name: str, low: int = 0) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        _fail(cfg, name, f"an integer >= {low}")


def check_real(cfg: Any, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, optional: bool = False,
               allow_inf: bool = False) -> None:
    """A real number in the interval given (closed unless ``*_open``); finite unless
    ``allow_inf``; ``None`` too with ``optional``."""
    value = getattr(cfg, name)
    if optional and value is None:
        return
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    if low is not None and high is not None:
        rule = f"a number in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        rule = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        rule = "a number"
    rule += " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        _fail(cfg, name, rule)
    if math.isinf(value) and not allow_inf:
        _fail(cfg, name, "finite, " + rule)
    if low is not None and (value < low or (low_open and value == low)):
        _fail(cfg, name, rule)
    if high is not None and (value > high or (high_open and value == high)):
        _fail(cfg, name, rule)


def check_choice(cfg: Any, name: str) -> None:
    choices = CHOICES[name]
    if getattr(cfg, name) not in choices:
        _fail(cfg, name, "one of " + ", ".join(repr(c) for c in choices))


def check_bool(cfg: Any, name: str) -> None:
    if not isinstance(getattr(cfg, name), bool):
        _fail(cfg, name, "True or False")


def check_loop_options(cfg: Any) -> None:
    """The options ``run_training`` reads, and the batch size and learning rate."""
    check_int(cfg, "steps", 0)
    check_int(cfg, "batch_size", 1)
    check_real(cfg, "lr", low=0, low_open=True)
    check_int(cfg, "checkpoint_every", 1)
    check_int(cfg, "log_every", 1)
    check_real(cfg, "max_loss_magnitude", low=0, low_open=True, allow_inf=True)
    check_int(cfg, "recover_attempts", 0)
    check_real(cfg, "recover_factor", low=0, high=1, low_open=True, high_open=True)
