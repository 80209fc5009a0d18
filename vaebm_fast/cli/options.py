"""Training options and config files: flags made from the config dataclasses, the JSON
``--config`` file, and the rules of the other numeric flags.

Training options come from the dataset's preset (``vaebm_fast.presets``), then a JSON config
file (``--config``: {"vae": {...}, "energy": {...}, "train": {...}}), then flags: every field
of VAETrainConfig / EBMTrainConfig is a flag (``--steps``, ``--step-size``, ...) with the help
text in ``TRAIN_OPTIONS``; the values are checked by the config's own validation
(``training/options.py``), so a flag and a --config value get the same message.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import textwrap


from ..presets import PRESETS
from ..training.ebm import EBMTrainConfig
from ..training.options import CHOICES as TRAIN_CHOICES
from ..training.vae import VAETrainConfig
from .errors import UsageError


# --------------------------------------------------------------------------------------------
# Training options: one rule per dataclass field (help text, type, range); the flags and the
# --config checks are both made from it.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """What a training option means and which values it takes.

    kind: "int", "float", "str" or "bool". low/high bound the value (open bounds exclude
    it); choices list the values of a "str" option; nullable lets a --config file say null
    (the library's default, e.g. noise_scale = sqrt(step_size)).
    """
    help: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        """The accepted values in words: 'an int >= 1', 'a number in [0, 1)', ..."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return ("one of " + ", ".join(repr(c) for c in self.choices) if self.choices
                    else "a string")
        what = "an int" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            what += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        return what + (" or null" if self.nullable else "")

    def check(self, value, name: str):
        """``value`` (a JSON value or a parsed flag) if valid, else UsageError naming ``name``."""
        if value is None and self.nullable:
            return None
        ok = False
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "str":
            ok = isinstance(value, str) and (not self.choices or value in self.choices)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif self.kind == "int":
            ok = isinstance(value, int) and self._in_range(value)
        else:
            ok = math.isfinite(value) and self._in_range(value)
            value = float(value) if ok else value
        if not ok:
            shown = "null" if value is None else repr(value)
            raise UsageError(f"{name} must be {self.describe()} (got {shown})")
        return value

    def _in_range(self, v) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def parse(self, text: str):
        """The argparse ``type=``: the flag's text -> a checked value, or a one-line error."""
        try:
            value = {"int": int, "float": float}.get(self.kind, str)(text)
            return self.check(value, "the value")
        except (ValueError, UsageError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()} (got {text!r})") from None


def _int(help, low=0, high=None):
    return Rule(help, "int", low=low, high=high)


def _num(help, low=0.0, high=None, *, low_open=False, high_open=False, nullable=False):
    return Rule(help, "float", low=low, high=high, low_open=low_open, high_open=high_open,
                nullable=nullable)


SEED = _int("random seed: of torch's initialisation and batches and, in train-ebm and sample, "
            "of the Philox streams of the Langevin chains", 0, 2**63 - 1)


# The help of each training option. Its type comes from the dataclass field, its choices from
# training/options.py CHOICES, and its range from the config's own validation (one place for
# each rule: a bad flag or --config value gets the library's message, naming the option).
_LOOP_HELP = {
    "steps": "optimizer steps in all; a resumed run continues up to this count",
    "batch_size": "training batch size",
    "checkpoint_every": "write a checkpoint every this many steps (and at the end)",
    "log_every": "steps between two progress lines (off a terminal) and metrics.jsonl records",
    "max_loss_magnitude": "divergence test: a loss (or mean energy) beyond this magnitude counts "
                          "as an explosion, like NaN/Inf (inf: off)",
    "recover_attempts": "on divergence, reload the last healthy checkpoint and lower the "
                        "learning rate (and step size) this many times (0: stop and say how to "
                        "resume)",
}


TRAIN_OPTIONS: dict[type, dict[str, str]] = {
    VAETrainConfig: {
        **_LOOP_HELP,
        "lr": "peak learning rate (cosine decay from it)",
        "min_lr": "learning rate at the end of the cosine decay",
        "optimizer": "optimizer (adamax is NVAE's)",
        "kl_warmup_fraction": "fraction of the steps over which the KL weight ramps up to "
                              "--kl-weight",
        "kl_min": "smallest KL weight during the warm-up",
        "kl_weight": "final KL weight (beta-VAE; 1 is the ELBO)",
        "weight_decay_norm": "weight of NVAE's spectral and BatchNorm regularisers",
        "grad_clip_norm": "clip the gradient's global norm to this",
        "recover_factor": "each recovery multiplies the learning rates by this",
    },
    EBMTrainConfig: {
        **_LOOP_HELP,
        "lr": "Adam learning rate of the energy network",
        "beta1": "Adam beta1",
        "beta2": "Adam beta2",
        "weight_decay": "Adam weight decay",
        "space": "where the negative-phase chains run: eps (VAEBM), latent (exponential "
                 "tilting) or data (pixel-space EBM)",
        "langevin_steps": "Langevin steps per negative-phase chain",
        "step_size": "Langevin step size",
        "noise_scale": "Langevin noise scale (unset: sqrt(step size))",
        "grad_clip": "clip each Langevin gradient to this (data space; unset: no clip)",
        "alpha_s": "weight of the spectral regulariser of the energy network",
        "energy_reg": "weight of the energy-magnitude regulariser",
        "igebm_clip": "IGEBM's per-element gradient clip from Adam's second moment",
        "data_noise": "std of Gaussian noise added to the data samples",
        "replay_capacity": "replay buffer size in chains (0: no persistent chains)",
        "replay_max_p": "largest probability of restarting a chain from the buffer",
        "replay_anneal_steps": "steps over which that probability ramps up",
        "seed": SEED.help,
        "sampler": "negative-phase sampler: fast (FastSampler) or eager (the reference "
                   "LangevinSampler)",
        "recover_factor": "each recovery multiplies the learning rate and the Langevin step "
                          "size by this",
    },
}


def _field_kind(cls, name: str) -> str:
    """'bool', 'int', 'str' or 'float' (a None default, such as noise_scale's, is a float)."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return {bool: "bool", int: "int", str: "str"}.get(type(default), "float")


def _parse_as(kind: str):
    """The argparse ``type=`` of a training flag: text -> int or float (a range error comes
    later, from the config's validation, with the option's rule)."""
    def parse(text: str):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an int' if kind == 'int' else 'a number'} (got {text!r})") from None
    return parse


def _preset_defaults(cls, name: str) -> str:
    """'default: 15000 (25gaussians, swissroll), 1500 (digits)': the value in every preset."""
    key = "vae_train" if cls is VAETrainConfig else "ebm_train"
    by_value: dict[str, list[str]] = {}
    for dataset in sorted(PRESETS):
        value = getattr(PRESETS[dataset][key], name)
        shown = ("unset" if value is None else str(value).lower() if isinstance(value, bool)
                 else f"{value:g}" if isinstance(value, float) else str(value))
        by_value.setdefault(shown, []).append(dataset)
    if len(by_value) == 1:
        return f"default: {next(iter(by_value))}"
    return "default: " + ", ".join(f"{v} ({', '.join(ds)})" for v, ds in by_value.items())


def _with_default(help: str) -> str:
    return help.replace("%", "%%") + " (default: %(default)s)"


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, with its rule's help, range and the presets' default.
    Defaults stay None so only given flags override. Fields that already have a flag
    (``--seed``) keep it."""
    group = parser.add_argument_group("training options", textwrap.fill(
        "Defaults come from the dataset's preset (vaebm_fast/presets.py), then from the "
        "'train' section of --config; a flag overrides both.", 79))
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if flag in parser._option_string_actions:
            continue
        kind = _field_kind(cls, f.name)
        help = f"{TRAIN_OPTIONS[cls].get(f.name, '(not described yet)')}; "
        help = (help + _preset_defaults(cls, f.name)).replace("%", "%%")
        if kind == "bool":
            group.add_argument(flag, dest=f.name, default=None, help=help,
                               action=argparse.BooleanOptionalAction)
        elif f.name in TRAIN_CHOICES:
            group.add_argument(flag, dest=f.name, default=None, help=help,
                               choices=TRAIN_CHOICES[f.name])
        else:
            group.add_argument(flag, dest=f.name, default=None, help=help, type=_parse_as(kind),
                               metavar=kind.upper())


class _Section(dict):
    """A --config section, remembering where it came from for error messages."""
    source = "the command line"


def _apply(cfg, overrides: dict):
    """``cfg`` with ``overrides`` (a --config 'train' section or flags); an unknown key or a
    bad value is a UsageError."""
    source = getattr(overrides, "source", "the command line")
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(overrides) - fields
    if unknown:
        raise UsageError(f"unknown training option(s) {sorted(unknown)} in {source}; "
                         f"valid: {', '.join(sorted(fields))}")
    # An int where a float option is expected (lr: 1 in a JSON file) is that float.
    overrides = {k: float(v) if (_field_kind(type(cfg), k) == "float" and type(v) is int) else v
                 for k, v in overrides.items()}
    try:  # the config validates itself (training/options.py): one rule per option
        return dataclasses.replace(cfg, **overrides)
    except ValueError as e:
        where = "" if source == "the command line" else f", in {source}"
        raise UsageError(f"{e}{where}") from None


def _read_config(path: str | None) -> dict:
    """The --config file as {section: dict}; any other shape is a UsageError."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"config file {path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    sections = ("vae", "energy", "train")
    if not isinstance(cfg, dict):
        raise UsageError(f"config file {path} must hold a JSON object with sections "
                         f"{', '.join(sections)} (got {type(cfg).__name__} {cfg!r:.40})")
    unknown = set(cfg) - set(sections)
    if unknown:
        raise UsageError(f"config file {path} has unknown section(s) {sorted(unknown)}; "
                         f"valid: {', '.join(sections)}")
    out = {}
    for name, section in cfg.items():
        if not isinstance(section, dict):
            shown = "null" if section is None else repr(section)
            raise UsageError(f"section {name!r} of config file {path} must be a JSON object "
                             f"{{...}} (got {shown:.40})")
        out[name] = _Section(section)
        out[name].source = f"config file {path}"
    return out


def _flag_overrides(args, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def _train_config(base, file_section: dict, overrides: dict):
    """The preset's training config with the --config file's and the flags' values; a bad
    value is a one-line usage error naming the option."""
    try:
        return _apply(_apply(base, file_section), overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
