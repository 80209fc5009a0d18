"""The ``vaebm-fast`` command (also ``python -m vaebm_fast``): a thin shell over the library.

Training options come from the dataset's preset (``vaebm_fast.presets``), then a JSON config
file (``--config``: {"vae": {...}, "energy": {...}, "train": {...}}), then flags: every field
of VAETrainConfig / EBMTrainConfig is a flag (``--steps``, ``--step-size``, ...), described and
range-checked by one rule in ``TRAIN_OPTIONS`` (the same rule checks a --config value).
Checkpoints are written atomically and a rerun with the same --out resumes from them
(``--no-resume`` starts over).

Errors: bad input (a flag, a config file, a checkpoint, a path) is one ``error: ...`` line on
stderr and exit code 2; a diverged run is one line and exit code 1; anything else is a bug,
reported in one line (exit code 1) that says how to see the traceback
(``VAEBM_FAST_TRACEBACK=1``). Progress and status go to the ``vaebm_fast`` logger, which
:func:`main` points at stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np
import torch

from .presets import TOY, PRESETS, build_energy, build_vae, preset
from .training.ebm import EBMTrainConfig
from .training.options import CHOICES as TRAIN_CHOICES
from .training.vae import VAETrainConfig

log = logging.getLogger("vaebm_fast")

TRACEBACK_ENV = "VAEBM_FAST_TRACEBACK"
EXIT_BAD_INPUT = 2  # also argparse's code for a usage error
EXIT_FAILED = 1     # the run diverged, or an internal error

EXAMPLES = """\
examples:
  vaebm-fast demo --out runs/demo                      # 25-Gaussians: VAE vs VAEBM, a few minutes
  vaebm-fast train-vae --dataset digits --out runs/d   # stage 1 -> runs/d/vae.pt
  vaebm-fast train-ebm --out runs/d --steps 500        # stage 2 -> runs/d/ebm.pt
  vaebm-fast sample --out runs/d --n 64                # VAE | VAEBM samples -> runs/d/samples/
  vaebm-fast train-ebm --help                          # every training option and its default
  vaebm-fast info                                      # versions and the backend of every op
  vaebm-fast build                                     # compile the native kernels now

Rerunning a command with the same --out resumes from its checkpoint. Bad input exits with
code 2 and one 'error:' line; set VAEBM_FAST_TRACEBACK=1 to see a traceback instead.
"""


class UsageError(ValueError):
    """Bad input found by the CLI itself (a flag, a config file, a checkpoint's contents)."""


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


def _dataset(name: str):
    """(batch source for the trainers, per-sample shape, clamp box of the data)."""
    from .data import load_digits_images, make_dataset
    if name == "digits":
        return load_digits_images("train"), (1, 8, 8), (0.0, 1.0)
    return make_dataset(name), (2,), None


def _load(path: str, kind: str) -> dict:
    """The checkpoint at ``path``; CheckpointError (a usage error in :func:`main`) if absent,
    damaged or of another kind."""
    from .checkpoint import load_checkpoint
    return load_checkpoint(path, kind=kind)


def _build(builder, cfg: dict, what: str):
    """Build a model from a preset/--config dict; a bad key or value is a usage error.

    Warnings raised while building are held back and shown only if the build succeeds (torch
    warns about zero-size layers just before failing on them; the error says it better)."""
    def hint() -> str:
        sizes = [f"{k}={v}" for k, v in cfg.items()
                 if isinstance(v, int) and not isinstance(v, bool) and v < 1]
        return f"; sizes must be >= 1 (got {', '.join(sizes)})" if sizes else ""

    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            model = builder(cfg)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise UsageError(f"invalid {what} config {cfg}: {_one_line(e)}{hint()}") from None
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise UsageError(f"invalid {what} config {cfg}: it gives layers with no weights "
                         f"({', '.join(empty[:3])}){hint()}")
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


@contextlib.contextmanager
def _training_log():
    """Show the library's training log (logger "vaebm_fast": resume, progress lines off a
    terminal, divergence recoveries) on stderr while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("vaebm_fast")
    package_logger.addHandler(handler)
    level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)


def _train_config(base, file_section: dict, overrides: dict):
    """The preset's training config with the --config file's and the flags' values; a bad
    value is a one-line usage error naming the option."""
    try:
        return _apply(_apply(base, file_section), overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def cmd_train_vae(args) -> None:
    from .data import batches
    from .training.vae import train_vae
    p, file_cfg = preset(args.dataset), _read_config(args.config)
    vae_cfg = {**p["vae"], **file_cfg.get("vae", {})}
    cfg = _train_config(p["vae_train"], file_cfg.get("train", {}),
                        _flag_overrides(args, VAETrainConfig))
    _check_writable(args.out)
    torch.manual_seed(args.seed)
    data, _, _ = _dataset(args.dataset)
    vae = _build(build_vae, vae_cfg, "vae")
    path = os.path.join(args.out, "vae.pt")
    with _training_log():
        metrics = train_vae(vae, batches(data, cfg.batch_size), cfg, checkpoint_path=path,
                            resume=args.resume, allow_config_change=args.allow_config_change,
                            extra_state={"config": {"dataset": args.dataset, "vae": vae_cfg}})
    if metrics:
        print(f"stage 1 done: {_format_metrics(metrics)}; wrote {path}")


def _format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _load_vae_for_stage_two(path: str):
    """(VAE with its trained weights, its checkpoint's config) from a stage-1 checkpoint."""
    from .training.loop import weights_are_finite
    state = _load(path, "vae")
    config = state.get("config")
    if not isinstance(config, dict) or "dataset" not in config or "vae" not in config:
        raise SystemExit(f"error: checkpoint {path} has no 'dataset' and 'vae' in its config; "
                         f"it was not written by train-vae: pass a stage-1 checkpoint (--vae)")
    if config["dataset"] not in PRESETS:
        raise SystemExit(f"error: checkpoint {path} was trained on data set "
                         f"{config['dataset']!r}, which has no preset here; valid: "
                         f"{', '.join(PRESETS)}")
    try:
        vae = build_vae(config["vae"])
        vae.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:300]
        raise SystemExit(f"error: checkpoint {path} does not fit the VAE its config "
                         f"describes ({type(e).__name__}: {detail})") from None
    if not weights_are_finite(list(vae.state_dict().values())):
        raise SystemExit(f"error: checkpoint {path} holds NaN/Inf weights (stage 1 had "
                         f"diverged when it was written); train the VAE again")
    return vae, config


def cmd_train_ebm(args) -> None:
    from .data import batches
    from .training.ebm import train_ebm
    vae_path = args.vae or os.path.join(args.out, "vae.pt")
    vae, vae_config = _load_vae_for_stage_two(vae_path)
    dataset = vae_config["dataset"]
    p, file_cfg = preset(dataset), _read_config(args.config)
    energy_cfg = {**p["energy"], **file_cfg.get("energy", {})}
    cfg = _train_config(p["ebm_train"], file_cfg.get("train", {}),
                        {**_flag_overrides(args, EBMTrainConfig), "seed": args.seed})
    _check_writable(args.out)
    torch.manual_seed(args.seed)
    data, shape, clamp = _dataset(dataset)
    energy = _build(build_energy, energy_cfg, "energy")
    path = os.path.join(args.out, "ebm.pt")
    config = {"dataset": dataset, "vae": vae_config["vae"], "energy": energy_cfg,
              "sample_steps": p["sample_steps"], "sample_step_size": p["sample_step_size"]}
    with _training_log():
        metrics = train_ebm(energy, vae, batches(data, cfg.batch_size), cfg,
                            checkpoint_path=path, resume=args.resume,
                            allow_config_change=args.allow_config_change,
                            extra_state={"config": config},
                            clamp=clamp if cfg.space == "data" else None, data_shape=shape)
    if metrics:
        print(f"stage 2 done: {_format_metrics(metrics)}; wrote {path}")

def _load_weights(model, state: dict, path: str) -> None:
    """Load a checkpoint's weights; a mismatch with the model built from its config is one
    UsageError line instead of load_state_dict's key dump."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"the weights in {path} do not fit the architecture its config "
                         f"describes ({_one_line(e)[:200]}...); the file was written by "
                         "another version or edited") from None


def _check_writable(directory: str) -> None:
    """Create ``directory`` and write a scratch file there, so a bad --out fails before any
    compute instead of after it."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {directory}: {e.strerror or e}; "
                         "pass an --out you can write to") from None


def cmd_sample(args) -> None:
    from .eval.plots import save_image_grids_side_by_side, save_scatter
    from .sampling.fast import FastSampler
    ebm_path = args.ebm or os.path.join(args.out, "ebm.pt")
    vae_path = args.vae or os.path.join(args.out, "vae.pt")
    ebm_state, vae_state = _load(ebm_path, "ebm"), _load(vae_path, "vae")
    config, train = ebm_state["config"], ebm_state["config"]["train"]
    # The VAE is built from its own file's config; the EBM records the VAE (and data set) it
    # was trained against, and an energy learned on another generator's samples means nothing.
    trained_with = (config.get("dataset"), config.get("vae"))
    given = (vae_state["config"].get("dataset"), vae_state["config"].get("vae"))
    if given != trained_with:
        raise UsageError(
            f"the VAE in {vae_path} (dataset {given[0]}, {given[1]}) is not the one the EBM in "
            f"{ebm_path} was trained with (dataset {trained_with[0]}, {trained_with[1]}); pass "
            "--vae the stage-1 checkpoint of that run")
    vae = _build(build_vae, given[1], f"vae (from {vae_path})")
    energy = _build(build_energy, config["energy"], f"energy (from {ebm_path})")
    _load_weights(vae, vae_state["model"], vae_path)
    _load_weights(energy, ebm_state["model"], ebm_path)
    vae.eval(), energy.eval()
    toy = config["dataset"] in TOY
    space = train["space"] if train["space"] != "data" else "eps"
    n_steps = (args.steps if args.steps is not None
               else config.get("sample_steps", train["langevin_steps"]))
    step_size = (args.step_size if args.step_size is not None
                 else config.get("sample_step_size", train["step_size"]))
    out = os.path.join(args.out, "samples")
    _check_writable(out)
    output = "sample" if toy else "mean"
    common = dict(space=space, step_size=step_size, noise_scale=train.get("noise_scale"),
                  output=output)
    x_vae = FastSampler(energy, vae, n_steps=0, **common).sample(args.n, seed=args.seed)
    # A bar on a terminal; a start and an end line in a log file (nohup, CI, slurm).
    on_terminal = sys.stderr.isatty()
    log.info("sampling %d chains of %d Langevin steps (%s space, step size %g)",
             args.n, n_steps, space, step_size)
    start = time.perf_counter()
    x_vaebm = FastSampler(energy, vae, n_steps=n_steps, **common).sample(
        args.n, seed=args.seed, progress=on_terminal)
    log.info("chains done in %.1f s", time.perf_counter() - start)
    np.save(os.path.join(out, "samples_vae.npy"), x_vae.numpy())
    np.save(os.path.join(out, "samples_vaebm.npy"), x_vaebm.numpy())
    if toy:
        png = save_scatter(os.path.join(out, "samples.png"),
                           {"VAE": x_vae.numpy(), "VAEBM": x_vaebm.numpy()},
                           title=f"{config['dataset']}: VAE vs VAEBM ({n_steps} Langevin steps)")
    else:
        png = save_image_grids_side_by_side(os.path.join(out, "samples.png"),
                                            {"VAE": x_vae, f"VAEBM ({n_steps} steps)": x_vaebm})
    print(f"wrote {png} and samples_vae.npy / samples_vaebm.npy ({args.n} each) in {out}")


def cmd_demo(args) -> None:
    from .demo import run_demo
    _check_writable(args.out)
    with _training_log():
        run_demo(args.out, seed=args.seed, n_samples=args.n_samples, quick=args.quick,
                 resume=args.resume)


def cmd_info(args) -> None:
    from .info import collect_info, format_info
    info = collect_info()
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))


def cmd_bench(args) -> None:
    """``bench ops|chains [...]`` runs a suite (its own parser: ``bench ops --help``);
    ``bench plot DIR`` redraws DIR's markdown tables and charts from DIR/results.jsonl."""
    if args.suite == "plot":
        from .bench.harness import usage_error
        from .bench.plot import redraw
        if len(args.rest) != 1 or args.rest[0].startswith("-"):
            usage_error("vaebm-fast bench plot", "give one folder holding results.jsonl, e.g. "
                        "`vaebm-fast bench plot benchmarks/results`")
        try:
            written = redraw(args.rest[0])
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"vaebm-fast bench plot: error: {e}") from None
        print("wrote " + ", ".join(str(p) for p in written))
    elif args.suite == "ops":
        from .bench import ops
        ops.main(args.rest)
    else:
        from .bench import chains
        chains.main(args.rest)


def _version() -> str:
    """'vaebm-fast X (torch Y)'. The package's __version__ is read from the already imported
    package (importing a submodule imports its package first), not by an import statement:
    the root package imports the samplers, so importing it from here would point upward."""
    return f"vaebm-fast {sys.modules[__package__].__version__} (torch {torch.__version__})"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that points at --help."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _with_default(help: str) -> str:
    return help.replace("%", "%%") + " (default: %(default)s)"


def cmd_build(args) -> None:
    """Compile the native kernels now, as the first native op would (once per torch)."""
    from . import _compile, _native
    if _native._find_library() is None:  # no installed _C: compile into the cache
        _compile.ensure_library()  # CompileError: reported by main, exit code 1
    st = _native.status()
    if not st.loaded:
        raise _compile.CompileError(f"the native kernels do not load: {st.reason}")
    print(f"native kernels for torch {torch.__version__} loaded from {st.path}")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="vaebm-fast", formatter_class=raw, allow_abbrev=False, epilog=EXAMPLES,
                     description=textwrap.fill(
                         "Train a VAE, then an energy-based model on top of it (VAEBM), and "
                         "draw samples with fused Langevin kernels.", 79))
    parser.add_argument("-V", "--version", action="version",
                        version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help, examples=()):
        epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples)) if examples else None
        p = sub.add_parser(name, help=help, description=textwrap.fill(help, 79), epilog=epilog,
                           formatter_class=raw, allow_abbrev=False)
        p.set_defaults(func=func)
        return p

    def common(p, resume=True):
        p.add_argument("--out", required=True, metavar="DIR",
                       help="run directory: checkpoints (vae.pt, ebm.pt) and samples/")
        p.add_argument("--seed", type=SEED.parse, default=0, metavar="INT",
                       help=_with_default(SEED.help))
        if resume:
            p.add_argument("--no-resume", dest="resume", action="store_false",
                           help="start over instead of resuming from the checkpoint in --out")

    p = command("demo", cmd_demo, "train VAE + EBM on 25-Gaussians and compare VAE with VAEBM",
                ["vaebm-fast demo --out runs/demo", "vaebm-fast demo --out /tmp/d --quick"])
    common(p)
    p.add_argument("--n-samples", type=_int("", 1).parse, default=5000, metavar="INT",
                   help=_with_default("samples drawn from each model for the comparison"))
    p.add_argument("--quick", action="store_true", help="shorter training (for smoke tests)")

    p = command("train-vae", cmd_train_vae, "stage 1: train the VAE by its ELBO -> DIR/vae.pt",
                ["vaebm-fast train-vae --dataset digits --out runs/d",
                 "vaebm-fast train-vae --dataset 25gaussians --out runs/g --steps 2000 --lr 5e-4",
                 "vaebm-fast train-vae --dataset digits --out runs/d --config my.json"])
    common(p)
    p.add_argument("--dataset", required=True, choices=sorted(PRESETS),
                   help="the data set, and with it the preset of models and training options")
    p.add_argument("--config", metavar="JSON", help="JSON file with 'vae' (model keyword "
                   "arguments) and 'train' (training options) sections, over the preset")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a checkpoint of another data set or architecture")
    _add_config_flags(p, VAETrainConfig)

    p = command("train-ebm", cmd_train_ebm, "stage 2: train the EBM with the VAE frozen -> "
                "DIR/ebm.pt (the data set and its preset come from the VAE checkpoint)",
                ["vaebm-fast train-ebm --out runs/d",
                 "vaebm-fast train-ebm --out runs/d --langevin-steps 10 --step-size 5e-4",
                 "vaebm-fast train-ebm --out runs/d --replay-capacity 1000 --no-resume"])
    common(p)
    p.add_argument("--vae", metavar="PATH", help="stage-1 checkpoint (default: DIR/vae.pt)")
    p.add_argument("--config", metavar="JSON", help="JSON file with 'energy' (model keyword "
                   "arguments) and 'train' (training options) sections, over the preset")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a checkpoint of another data set or architecture")
    _add_config_flags(p, EBMTrainConfig)

    p = command("sample", cmd_sample, "draw VAE and VAEBM samples side by side -> "
                "DIR/samples/ (samples.png, samples_vae.npy, samples_vaebm.npy)",
                ["vaebm-fast sample --out runs/d --n 64",
                 "vaebm-fast sample --out runs/d --steps 100 --step-size 5e-4 --seed 1"])
    common(p, resume=False)
    p.add_argument("--vae", metavar="PATH", help="stage-1 checkpoint (default: DIR/vae.pt)")
    p.add_argument("--ebm", metavar="PATH", help="stage-2 checkpoint (default: DIR/ebm.pt)")
    p.add_argument("--n", type=_int("", 1).parse, default=64, metavar="INT",
                   help=_with_default("samples to draw from each model"))
    p.add_argument("--steps", type=_int("", 0).parse, metavar="INT",
                   help="Langevin steps (default: the preset's sampling steps, stored in the "
                        "EBM checkpoint)")
    p.add_argument("--step-size", type=_num("", low_open=True).parse, metavar="FLOAT",
                   help="Langevin step size (default: the preset's sampling step size, stored "
                        "in the EBM checkpoint)")

    p = command("bench", cmd_bench, "benchmarks: our ops ('ops') or Langevin steps and whole "
                "chains ('chains') against plain PyTorch, the official-style loop and "
                "torch.compile; prints a markdown table, or with --out DIR appends to "
                "DIR/results.jsonl and redraws DIR's tables and charts ('plot DIR' redraws only)",
                ["vaebm-fast bench ops --list", "vaebm-fast bench chains --only toy --quick",
                 "vaebm-fast bench ops --out bench_results", "vaebm-fast bench plot bench_results",
                 "vaebm-fast bench ops --help"])
    p.add_argument("suite", choices=["ops", "chains", "plot"])
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="options of the suite: --list, --quick, --device cuda, --only REGEX, "
                        "--out DIR, --repeats N; chains also --set KEY=VALUE, --variants REGEX, "
                        "--compile-timeout S (see `vaebm-fast bench SUITE --help`); plot: DIR")

    command("build", cmd_build, "compile the native kernels for the installed torch now "
            "(otherwise the first native op does, once)")

    p = command("info", cmd_info, "versions, compilers and the available backend of every op")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line library messages joined)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def _silence_stdout() -> None:
    """After a closed pipe (`vaebm-fast info | head`), send what is left to /dev/null so the
    interpreter's final flush does not raise again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _exit_code_and_message(e: BaseException) -> tuple[int, str | None]:
    """What :func:`main` prints and returns for an exception a command raised."""
    from ._compile import CompileError
    from ._requirements import MissingExtraError
    from .checkpoint import CheckpointError
    from .ops import BackendUnavailableError
    if isinstance(e, BrokenPipeError):
        _silence_stdout()
        return EXIT_FAILED, None
    if isinstance(e, KeyboardInterrupt):
        return 130, "error: interrupted"
    if isinstance(e, SystemExit):  # a command's own `raise SystemExit("error: ...")`
        if e.code is None or isinstance(e.code, int):
            return e.code or 0, None
        message = _one_line(Exception(e.code))
        said = message.startswith("error:") or ": error: " in message  # "vaebm-fast X: error:"
        return EXIT_BAD_INPUT, message if said else f"error: {message}"
    if isinstance(e, FloatingPointError):  # TrainingDiverged / ChainDivergedError
        return EXIT_FAILED, f"error: {_one_line(e)}"
    if isinstance(e, RuntimeError) and str(e).startswith("Error(s) in loading state_dict"):
        # Resuming (or loading) weights of another architecture than the one configured now.
        return EXIT_BAD_INPUT, (
            "error: a checkpoint's weights do not fit the model built from the current dataset, "
            f"preset and --config ({_one_line(e)[:200]}...); rerun with the settings it was "
            "trained with, or pass another --out (or --no-resume to start over)")
    if isinstance(e, (MissingExtraError, CompileError)):  # the installation, not the input
        return EXIT_FAILED, f"error: {_one_line(e)}"
    if isinstance(e, (ValueError, TypeError, CheckpointError, BackendUnavailableError, OSError)):
        return EXIT_BAD_INPUT, f"error: {_one_line(e)}"
    return EXIT_FAILED, (f"error: internal error ({type(e).__name__}: {_one_line(e)[:300]}); "
                         f"this is a bug in vaebm-fast: rerun with {TRACEBACK_ENV}=1 to see the "
                         "traceback, and please report it")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    # The CLI is the application: it owns the package logger while a command runs.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, not at exit
        return 0
    except BaseException as e:
        if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
            raise
        code, message = _exit_code_and_message(e)
        if message:
            print(message, file=sys.stderr)
        return code
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
