"""``vaebm-fast`` (also ``python -m vaebm_fast``): a thin shell over the library.

    vaebm-fast demo --out DIR                       the README's main job (25-Gaussians)
    vaebm-fast train-vae --dataset digits --out DIR stage 1 -> DIR/vae.pt
    vaebm-fast train-ebm --out DIR                  stage 2 (reads DIR/vae.pt) -> DIR/ebm.pt
    vaebm-fast sample --out DIR                     VAE and VAEBM samples side by side
    vaebm-fast info                                 versions and available backends
    vaebm-fast bench ops|chains|plot [--list] [--out DIR]  benchmarks (a markdown table)

Training options come from the dataset's preset (``vaebm_fast.presets``), then a JSON config
file (``--config``: {"vae": {...}, "energy": {...}, "train": {...}}), then flags: every field
of VAETrainConfig / EBMTrainConfig is a flag (``--steps``, ``--step-size``, ...). Checkpoints are
written atomically and a rerun with the same --out resumes from them (``--no-resume`` starts
over).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import torch

from .presets import TOY, PRESETS, build_energy, build_vae, preset
from .training.ebm import EBMTrainConfig
from .training.vae import VAETrainConfig


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field; defaults stay None so only given flags override.
    Fields that already have a flag (``--seed``) keep it."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if flag in parser._option_string_actions:
            continue
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction)
        else:
            kind = type(default) if default is not None else float
            parser.add_argument(flag, dest=f.name, type=kind, default=None,
                                metavar=kind.__name__.upper())


def _apply(cfg, overrides: dict):
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(overrides) - known
    if unknown:
        raise SystemExit(f"error: unknown training option(s) {sorted(unknown)}; "
                         f"valid: {sorted(known)}")
    return dataclasses.replace(cfg, **overrides)


def _read_config(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: config file {path} not found") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: config file {path} is not valid JSON: {e}") from None
    unknown = set(cfg) - {"vae", "energy", "train"}
    if unknown:
        raise SystemExit(f"error: config file {path} has unknown section(s) {sorted(unknown)}; "
                         "valid: vae, energy, train")
    return cfg


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
    from .checkpoint import CheckpointError, load_checkpoint
    try:
        return load_checkpoint(path, kind=kind)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


def _build(builder, cfg: dict, what: str):
    """Build a model from a preset/--config dict; a bad key or value is a usage error."""
    try:
        return builder(cfg)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid {what} config {cfg}: {e}") from None


def cmd_train_vae(args) -> None:
    from .data import batches
    from .training.vae import train_vae
    p, file_cfg = preset(args.dataset), _read_config(args.config)
    vae_cfg = {**p["vae"], **file_cfg.get("vae", {})}
    cfg = _apply(_apply(p["vae_train"], file_cfg.get("train", {})),
                 _flag_overrides(args, VAETrainConfig))
    torch.manual_seed(args.seed)
    data, _, _ = _dataset(args.dataset)
    vae = _build(build_vae, vae_cfg, "vae")
    path = os.path.join(args.out, "vae.pt")
    metrics = train_vae(vae, batches(data, cfg.batch_size), cfg, checkpoint_path=path,
                        resume=args.resume,
                        extra_state={"config": {"dataset": args.dataset, "vae": vae_cfg}},
                        log=print)
    print(f"stage 1 done: {metrics}; wrote {path}")


def cmd_train_ebm(args) -> None:
    from .data import batches
    from .training.ebm import train_ebm
    vae_state = _load(args.vae or os.path.join(args.out, "vae.pt"), "vae")
    dataset = vae_state["config"]["dataset"]
    p, file_cfg = preset(dataset), _read_config(args.config)
    energy_cfg = {**p["energy"], **file_cfg.get("energy", {})}
    cfg = _apply(_apply(p["ebm_train"], file_cfg.get("train", {})),
                 {**_flag_overrides(args, EBMTrainConfig), "seed": args.seed})
    torch.manual_seed(args.seed)
    data, shape, clamp = _dataset(dataset)
    vae = build_vae(vae_state["config"]["vae"])
    vae.load_state_dict(vae_state["model"])
    energy = _build(build_energy, energy_cfg, "energy")
    path = os.path.join(args.out, "ebm.pt")
    config = {"dataset": dataset, "vae": vae_state["config"]["vae"], "energy": energy_cfg,
              "sample_steps": p["sample_steps"], "sample_step_size": p["sample_step_size"]}
    metrics = train_ebm(energy, vae, batches(data, cfg.batch_size), cfg, checkpoint_path=path,
                        resume=args.resume, extra_state={"config": config},
                        clamp=clamp if cfg.space == "data" else None, data_shape=shape, log=print)
    print(f"stage 2 done: {metrics}; wrote {path}")


def cmd_sample(args) -> None:
    from .eval.plots import save_image_grids_side_by_side, save_scatter
    from .sampling.fast import FastSampler
    ebm_state = _load(args.ebm or os.path.join(args.out, "ebm.pt"), "ebm")
    vae_state = _load(args.vae or os.path.join(args.out, "vae.pt"), "vae")
    config, train = ebm_state["config"], ebm_state["config"]["train"]
    vae, energy = build_vae(config["vae"]), build_energy(config["energy"])
    vae.load_state_dict(vae_state["model"])
    energy.load_state_dict(ebm_state["model"])
    vae.eval(), energy.eval()
    toy = config["dataset"] in TOY
    space = train["space"] if train["space"] != "data" else "eps"
    n_steps = (args.steps if args.steps is not None
               else config.get("sample_steps", train["langevin_steps"]))
    step_size = (args.step_size if args.step_size is not None
                 else config.get("sample_step_size", train["step_size"]))
    output = "sample" if toy else "mean"
    common = dict(space=space, step_size=step_size, noise_scale=train.get("noise_scale"),
                  output=output)
    x_vae = FastSampler(energy, vae, n_steps=0, **common).sample(args.n, seed=args.seed)
    x_vaebm = FastSampler(energy, vae, n_steps=n_steps, **common).sample(args.n, seed=args.seed,
                                                                         progress=True)
    out = os.path.join(args.out, "samples")
    os.makedirs(out, exist_ok=True)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaebm-fast", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def common(p, out_required=True):
        p.add_argument("--out", required=out_required, help="run directory (checkpoints, samples)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-resume", dest="resume", action="store_false",
                       help="start over instead of resuming from the checkpoint in --out")

    p = command("demo", cmd_demo, "train VAE + EBM on 25-Gaussians and compare VAE with VAEBM")
    common(p)
    p.add_argument("--n-samples", type=int, default=5000)
    p.add_argument("--quick", action="store_true", help="shorter training (for smoke tests)")

    p = command("train-vae", cmd_train_vae, "stage 1: train the VAE by its ELBO")
    common(p)
    p.add_argument("--dataset", required=True, choices=sorted(PRESETS))
    p.add_argument("--config", help="JSON file with 'vae' and 'train' sections")
    _add_config_flags(p, VAETrainConfig)

    p = command("train-ebm", cmd_train_ebm, "stage 2: train the EBM with the VAE frozen")
    common(p)
    p.add_argument("--vae", help="stage-1 checkpoint (default: OUT/vae.pt)")
    p.add_argument("--config", help="JSON file with 'energy' and 'train' sections")
    _add_config_flags(p, EBMTrainConfig)

    p = command("sample", cmd_sample, "draw VAE and VAEBM samples side by side")
    common(p)
    p.add_argument("--vae", help="default: OUT/vae.pt")
    p.add_argument("--ebm", help="default: OUT/ebm.pt")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, help="Langevin steps (default: the preset's test steps)")
    p.add_argument("--step-size", type=float, help="default: the preset's test step size")

    p = command("bench", cmd_bench, "benchmarks: our ops ('ops') or Langevin steps and whole "
                "chains ('chains') against plain PyTorch, the official-style loop and "
                "torch.compile; prints a markdown table, or with --out DIR appends to "
                "DIR/results.jsonl and redraws DIR's tables and charts ('plot DIR' redraws only)")
    p.add_argument("suite", choices=["ops", "chains", "plot"])
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="options of the suite: --list, --quick, --device cuda, --only REGEX, "
                        "--out DIR, --repeats N; chains also --set KEY=VALUE, --variants REGEX, "
                        "--compile-timeout S (see `vaebm-fast bench SUITE --help`); plot: DIR")

    p = command("info", cmd_info, "versions, compilers and the available backend of every op")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CheckpointError as e:  # e.g. a corrupt checkpoint met on resume
        raise SystemExit(f"error: {e}") from None
    except FloatingPointError as e:  # TrainingDiverged / ChainDivergedError: say it, no traceback
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
