"""The ``vaebm-fast`` command (also ``python -m vaebm_fast``): a thin shell over the library.

``build_parser`` declares the commands and flags, ``main`` runs one and returns its exit code.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) ``main`` initialises the default
process group for train-vae, train-ebm and sample (``vaebm_fast.distributed.init_from_torchrun``)
and destroys it at the end, also on error; only rank 0 prints (another rank prints only an
internal error, which may be its own). The other commands refuse to run under torchrun.
The pieces: ``options.py`` (training options, --config files, numeric flags), ``commands.py``
(one function per command), ``errors.py`` (exit codes and one-line messages).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap

import torch

from .. import distributed
from ..models.energy import OFFICIAL_EBM_ARCHS
from ..presets import PRESETS
from ..training.ebm import EBMTrainConfig
from ..training.vae import VAETrainConfig
from .commands import (cmd_bench, cmd_build, cmd_demo, cmd_eval, cmd_info, cmd_sample,
                       cmd_train_ebm, cmd_train_vae, log)
from .errors import EXIT_BAD_INPUT, EXIT_FAILED, TRACEBACK_ENV, _exit_code_and_message
from .options import SEED, TRAIN_OPTIONS, _add_config_flags, _int, _num, _with_default

__all__ = ["main", "build_parser", "TRAIN_OPTIONS"]

# The commands that run on several processes under torchrun.
DISTRIBUTED_COMMANDS = ("train-vae", "train-ebm", "sample")


EXAMPLES = """\
examples:
  vaebm-fast demo --out runs/demo                      # 25-Gaussians: VAE vs VAEBM, a few minutes
  vaebm-fast demo --dataset digits --out runs/dd       # 8x8 digits: FID and OOD AUROC, ~10 min
  vaebm-fast train-vae --dataset digits --out runs/d   # stage 1 -> runs/d/vae.pt
  vaebm-fast train-ebm --out runs/d --steps 500        # stage 2 -> runs/d/ebm.pt
  vaebm-fast sample --out runs/d --n 64                # VAE | VAEBM samples -> runs/d/samples/
  vaebm-fast train-ebm --help                          # every training option and its default
  vaebm-fast info                                      # versions and the backend of every op
  vaebm-fast build                                     # compile the native kernels now

Rerunning a command with the same --out resumes from its checkpoint. Bad input exits with
code 2 and one 'error:' line; set VAEBM_FAST_TRACEBACK=1 to see a traceback instead.
"""


def _version() -> str:
    """'vaebm-fast X (torch Y)'. The package's __version__ is read from the already imported
    package (importing a submodule imports its package first), not by an import statement:
    the root package imports the samplers, so importing it from here would point upward."""
    package = sys.modules[__package__.partition(".")[0]]
    return f"vaebm-fast {package.__version__} (torch {torch.__version__})"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that points at --help."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


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

    p = command("demo", cmd_demo, "train VAE + EBM and compare VAE with VAEBM (25-Gaussians: "
                "modes covered; digits: FID and OOD AUROC)",
                ["vaebm-fast demo --out runs/demo",
                 "vaebm-fast demo --dataset digits --out runs/digits-demo",
                 "vaebm-fast demo --out /tmp/d --quick"])
    common(p)
    p.add_argument("--dataset", choices=["25gaussians", "digits"], default="25gaussians",
                   help=_with_default("25gaussians (the README's demo, a few minutes) or digits "
                                      "(the README's digits table, about 10 minutes)"))
    p.add_argument("--n-samples", type=_int("", 1).parse, default=None, metavar="INT",
                   help="samples drawn from each model for the comparison (default: 5000 "
                        "for 25gaussians, 2000 for digits)")
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
                "DIR/samples/ (samples.png, samples_vae.npy, samples_vaebm.npy); with --nvae "
                "and --ebm, VAEBM samples from official checkpoints -> DIR/samples.npz (uint8 "
                "[N, H, W, C]) and DIR/samples.png; resumable shard by shard, and run on "
                "several processes under torchrun",
                ["vaebm-fast sample --out runs/d --n 64",
                 "vaebm-fast sample --out runs/d --steps 100 --step-size 5e-4 --seed 1",
                 "vaebm-fast sample --nvae nvae.pt --ebm EBM.pth --ebm-arch cifar32 --n 50000 "
                 "--batch 256 --out fid_samples"])
    common(p, resume=False)
    p.add_argument("--vae", metavar="PATH", help="stage-1 checkpoint (default: DIR/vae.pt)")
    p.add_argument("--ebm", metavar="PATH", help="stage-2 checkpoint (default: DIR/ebm.pt); "
                   "with --nvae, the official VAEBM EBM checkpoint")
    p.add_argument("--nvae", metavar="PATH", help="official NVAE checkpoint: sample from "
                   "official files (needs --ebm and --ebm-arch)")
    p.add_argument("--ebm-arch", choices=sorted(OFFICIAL_EBM_ARCHS),
                   help="the official EBM's architecture; its data set's official test "
                        "settings give the default --steps and --step-size")
    p.add_argument("--batch", type=_int("", 1).parse, metavar="INT",
                   help="chains per shard, the unit of resuming and of sharing the work "
                        "between torchrun processes; it does not change the samples (default: "
                        "256)")
    p.add_argument("--potential", choices=["paper", "official"],
                   help="official path: the eps-space potential, the paper's (default) or the "
                        "official code's")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="official path: where the chains run (default: cuda if available)")
    # --num-samples: under torchrun, whose parser reads "--n" as an ambiguous abbreviation of
    # its own --nnodes / --nproc-per-node before the script's arguments.
    p.add_argument("--n", "--num-samples", dest="n", type=_int("", 1).parse, default=64,
                   metavar="INT", help=_with_default("samples to draw from each model (under "
                                                     "torchrun write --num-samples)"))
    p.add_argument("--steps", type=_int("", 0).parse, metavar="INT",
                   help="Langevin steps (default: the preset's sampling steps, stored in the "
                        "EBM checkpoint; with --nvae, the official test setting of --ebm-arch)")
    p.add_argument("--step-size", type=_num("", low_open=True).parse, metavar="FLOAT",
                   help="Langevin step size (default: the preset's sampling step size, stored "
                        "in the EBM checkpoint; with --nvae, the official test setting of "
                        "--ebm-arch)")

    p = command("bench", cmd_bench, "benchmarks: our ops ('ops') or Langevin steps and whole "
                "chains ('chains') against plain PyTorch, the official-style loop and "
                "torch.compile, or training and sampling on 1, 2, 3 processes ('scaling'); "
                "prints a markdown table, or with --out DIR appends to "
                "DIR/results.jsonl and redraws DIR's tables and charts ('plot DIR' redraws "
                "only)",
                ["vaebm-fast bench ops --list", "vaebm-fast bench chains --only toy --quick",
                 "vaebm-fast bench ops --out bench_results", "vaebm-fast bench plot bench_results",
                 "vaebm-fast bench scaling --processes 1,2 --quick", "vaebm-fast bench ops --help"])
    p.add_argument("suite", choices=["ops", "chains", "scaling", "plot"])
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="options of the suite: --list, --quick, --device cuda, --only REGEX, "
                        "--out DIR, --repeats N; chains also --set KEY=VALUE, --variants REGEX, "
                        "--compile-timeout S; scaling also --processes 1,2,3 (see "
                        "`vaebm-fast bench SUITE --help`); plot: DIR")

    p = command("eval", cmd_eval, "FID, KID and/or Inception Score of samples against "
                "reference images (.npy/.npz [N, C, H, W] in [0, 1]), in the feature space of "
                "a digits network trained on the spot or of the FID Inception (needs the "
                "[eval] extra)",
                ["vaebm-fast eval fid kid --samples runs/d/samples/samples_vaebm.npy "
                 "--reference ref.npz --out scores.json",
                 "vaebm-fast eval fid --samples a.npz --reference b.npz --features inception "
                 "--inception-weights weights-inception-2015-12-05-6726825d.pth"])
    p.add_argument("metrics", nargs="+", choices=["fid", "kid", "is"], metavar="METRIC",
                   help="fid, kid and/or is (Inception Score of the samples)")
    p.add_argument("--samples", required=True, metavar="FILE", help="the generated images")
    p.add_argument("--reference", required=True, metavar="FILE", help="the data images")
    p.add_argument("--features", choices=["digits", "inception"], default="digits",
                   help=_with_default("feature network: 'digits' (8x8 digits only, trained "
                                      "here in seconds) or 'inception' (any images)"))
    p.add_argument("--inception-weights", metavar="FILE",
                   help="the FID Inception weights file (weights-inception-2015-12-05-"
                        "6726825d.pth); nothing is downloaded")
    p.add_argument("--seed", type=SEED.parse, default=0, metavar="INT",
                   help=_with_default("seed of the digits network and of KID/IS subsets"))
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=_with_default("where the feature network runs: cpu, cuda, cuda:1"))
    p.add_argument("--out", metavar="JSON", help="also write the scores to this file")

    command("build", cmd_build, "compile the native kernels for the installed torch now "
            "(otherwise the first native op does, once)")

    p = command("info", cmd_info, "versions, compilers and the available backend of every op")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    several = _torchrun_world_size() > 1
    if several and args.command not in DISTRIBUTED_COMMANDS:
        print(f"error: {args.command} runs on one process, but WORLD_SIZE is "
              f"{_torchrun_world_size()} (started by torchrun); run it without torchrun (only "
              f"{', '.join(DISTRIBUTED_COMMANDS)} run on several processes)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not several:
        return _run(args)
    try:
        is_main = distributed.init_from_torchrun().is_main
    except (RuntimeError, ValueError) as e:
        print(f"error: cannot join the other processes: {' '.join(str(e).split())}",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        return _run(args, quiet=not is_main)
    finally:
        distributed.destroy()


def _torchrun_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _run(args, quiet: bool = False) -> int:
    """Run the parsed command; ``quiet``: a rank other than 0, which prints only an internal
    error (the others, a divergence or bad input, rank 0 prints too)."""
    if quiet:
        return _run_quietly(args)
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


def _run_quietly(args) -> int:
    rank = distributed.World.current().rank
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            args.func(args)
            return 0
        except BaseException as e:
            if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
                raise
            code, message = _exit_code_and_message(e)
            if message and message.startswith("error: internal error"):
                print(f"[rank {rank}] {message}", file=sys.stderr)
            return code
