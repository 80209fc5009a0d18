"""The commands: one ``cmd_*`` function each, taking the parsed arguments.

Each raises on failure (``errors.py`` turns the exception into one line and an exit code) and
logs progress to the ``vaebm_fast`` logger, which :func:`vaebm_fast.cli.main` shows on stderr.
Checkpoints are written atomically and a rerun with the same --out resumes from them
(``--no-resume`` starts over).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from ..distributed import World
from ..presets import PRESETS, TOY, build_energy, build_vae, preset
from ..training.ebm import EBMTrainConfig
from ..training.vae import VAETrainConfig
from .errors import UsageError, _one_line
from .options import _flag_overrides, _read_config, _train_config


log = logging.getLogger("vaebm_fast")


def _dataset(name: str):
    """(batch source for the trainers, per-sample shape, clamp box of the data)."""
    from ..data import load_digits_images, make_dataset
    if name == "digits":
        return load_digits_images("train"), (1, 8, 8), (0.0, 1.0)
    return make_dataset(name), (2,), None


def _load(path: str, kind: str) -> dict:
    """The checkpoint at ``path``; CheckpointError (a usage error in :func:`main`) if absent,
    damaged or of another kind."""
    from ..checkpoint import load_checkpoint
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


def _format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _load_vae_for_stage_two(path: str):
    """(VAE with its trained weights, its checkpoint's config) from a stage-1 checkpoint."""
    from ..training.loop import weights_are_finite
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


def _batches_and_device(data, batch_size: int, seed: int):
    """(batch stream, training device) for a trainer. One process: the stream draws from
    torch's global generator, on the CPU, as always. Several (under torchrun): every process
    draws the same global order from a private generator seeded by --seed (the stream's
    state, checkpointed, then carries it) and trains on its GPU, LOCAL_RANK, if CUDA is
    available."""
    from ..data import batches
    world = World.current()
    if not world.is_distributed:
        return batches(data, batch_size), torch.device("cpu")
    device = (torch.device("cuda", world.local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    return batches(data, batch_size, torch.Generator().manual_seed(seed), world), device


def cmd_train_vae(args) -> None:
    from ..training.vae import train_vae
    p, file_cfg = preset(args.dataset), _read_config(args.config)
    vae_cfg = {**p["vae"], **file_cfg.get("vae", {})}
    cfg = _train_config(p["vae_train"], file_cfg.get("train", {}),
                        _flag_overrides(args, VAETrainConfig))
    _check_writable(args.out)
    torch.manual_seed(args.seed)
    data, _, _ = _dataset(args.dataset)
    vae = _build(build_vae, vae_cfg, "vae")
    stream, device = _batches_and_device(data, cfg.batch_size, args.seed)
    path = os.path.join(args.out, "vae.pt")
    metrics = train_vae(vae.to(device), stream, cfg, checkpoint_path=path,
                        resume=args.resume, allow_config_change=args.allow_config_change,
                        extra_state={"config": {"dataset": args.dataset, "vae": vae_cfg}})
    if metrics:
        print(f"stage 1 done: {_format_metrics(metrics)}; wrote {path}")


def cmd_train_ebm(args) -> None:
    from ..training.ebm import train_ebm
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
    stream, device = _batches_and_device(data, cfg.batch_size, args.seed)
    path = os.path.join(args.out, "ebm.pt")
    config = {"dataset": dataset, "vae": vae_config["vae"], "energy": energy_cfg,
              "sample_steps": p["sample_steps"], "sample_step_size": p["sample_step_size"]}
    metrics = train_ebm(energy.to(device), vae.to(device), stream, cfg,
                        checkpoint_path=path, resume=args.resume,
                        allow_config_change=args.allow_config_change,
                        extra_state={"config": config},
                        clamp=clamp if cfg.space == "data" else None, data_shape=shape)
    if metrics:
        print(f"stage 2 done: {_format_metrics(metrics)}; wrote {path}")


def cmd_sample(args) -> None:
    """Official files (--nvae): :mod:`vaebm_fast.cli.official`; else the run in --out."""
    if args.nvae is not None:
        from .official import sample_official
        return sample_official(args)
    official_only = [flag for flag, value in (
        ("--ebm-arch", args.ebm_arch), ("--potential", args.potential),
        ("--device", args.device)) if value is not None]
    if official_only:
        raise UsageError(f"{', '.join(official_only)} apply to official checkpoints only; "
                         "pass --nvae and --ebm too, or leave them out")
    from ..checkpoint import write_atomically
    from ..eval.plots import save_image_grids_side_by_side, save_scatter
    from ..sampling.fast import FastSampler
    from .shards import claim_folder, draw_shards, sha256
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
    vae_only = FastSampler(energy, vae, n_steps=0, **common)
    vaebm = FastSampler(energy, vae, n_steps=n_steps, **common)
    batch = args.batch or 256
    claim_folder(os.path.join(out, "shards"),
                 {"vae_sha256": sha256(vae_path), "ebm_sha256": sha256(ebm_path),
                  "seed": args.seed, "batch": batch, "steps": n_steps, "step_size": step_size,
                  "noise": "row streams"}, replace=True)
    # A bar on rank 0's terminal; shard lines in a log file (nohup, CI, slurm).
    on_terminal = sys.stderr.isatty() and World.current().is_main
    log.info("sampling %d chains of %d Langevin steps (%s space, step size %g) in shards of %d",
             args.n, n_steps, space, step_size, batch)
    start = time.perf_counter()

    def draw(first: int, stop: int) -> dict:
        # The same start eps for both: sample i of each comes from row stream i of the seed.
        kw = dict(seed=args.seed, first_index=first)
        return {"vae": vae_only.sample(stop - first, **kw).numpy(),
                "vaebm": vaebm.sample(stop - first, progress=on_terminal, **kw).numpy()}

    collected = draw_shards(draw, ("vae", "vaebm"), args.n, batch, os.path.join(out, "shards"))
    if collected is None:  # another process writes the outputs
        return
    log.info("chains done in %.1f s", time.perf_counter() - start)
    x_vae, x_vaebm = collected["vae"], collected["vaebm"]
    for name, x in (("samples_vae.npy", x_vae), ("samples_vaebm.npy", x_vaebm)):
        write_atomically(os.path.join(out, name), lambda f, x=x: np.save(f, x))
    if toy:
        png = save_scatter(os.path.join(out, "samples.png"), {"VAE": x_vae, "VAEBM": x_vaebm},
                           title=f"{config['dataset']}: VAE vs VAEBM ({n_steps} Langevin steps)")
    else:
        png = save_image_grids_side_by_side(
            os.path.join(out, "samples.png"),
            {"VAE": torch.from_numpy(x_vae[:64]),
             f"VAEBM ({n_steps} steps)": torch.from_numpy(x_vaebm[:64])})
    print(f"wrote {png} and samples_vae.npy / samples_vaebm.npy ({args.n} each) in {out}")


def cmd_demo(args) -> None:
    if args.dataset == "digits":
        from ..demo_digits import run_digits_demo as run
        default_n = 2000
    else:
        from ..demo import run_demo as run
        default_n = 5000
    _check_writable(args.out)
    run(args.out, seed=args.seed, n_samples=args.n_samples or default_n, quick=args.quick,
        resume=args.resume)


def cmd_info(args) -> None:
    from ..info import collect_info, format_info
    info = collect_info()
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))


def cmd_bench(args) -> None:
    """``bench ops|chains|scaling [...]`` runs a suite (its own parser: ``bench ops --help``);
    ``bench plot DIR`` redraws DIR's markdown tables and charts from DIR/results.jsonl."""
    if args.suite == "plot":
        from ..bench.harness import usage_error
        from ..bench.plot import redraw
        if len(args.rest) != 1 or args.rest[0].startswith("-"):
            usage_error("vaebm-fast bench plot", "give one folder holding results.jsonl, e.g. "
                        "`vaebm-fast bench plot benchmarks/results`")
        try:
            written = redraw(args.rest[0])
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"vaebm-fast bench plot: error: {e}") from None
        print("wrote " + ", ".join(str(p) for p in written))
    elif args.suite == "ops":
        from ..bench import ops
        ops.main(args.rest)
    elif args.suite == "scaling":
        from ..bench import scaling
        scaling.main(args.rest)
    else:
        from ..bench import chains
        chains.main(args.rest)


def cmd_build(args) -> None:
    """Compile the native kernels now, as the first native op would (once per torch)."""
    from .. import _compile, _native
    if _native._find_library() is None:  # no installed _C: compile into the cache
        _compile.ensure_library()  # CompileError: reported by main, exit code 1
    st = _native.status()
    if not st.loaded:
        raise _compile.CompileError(f"the native kernels do not load: {st.reason}")
    print(f"native kernels for torch {torch.__version__} loaded from {st.path}")


def _load_images(path: str, flag: str) -> torch.Tensor:
    """Images [N, C, H, W] float32 in [0, 1] from a .npy file or a .npz holding one array (or an
    array named 'images' or 'samples'); [N, H, W] gains a channel, uint8 is divided by 255."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {flag} {path}: {_one_line(e)}; pass a .npy or .npz file "
                         "of images [N, C, H, W] in [0, 1]") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = [n for n in ("images", "samples") if n in loaded.files] or loaded.files
        if len(names) != 1:
            raise UsageError(f"{flag} {path} holds the arrays {loaded.files}; it must hold one "
                             "array, or one named 'images' or 'samples'")
        loaded = loaded[names[0]]
    images = torch.from_numpy(np.ascontiguousarray(loaded))
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or len(images) < 2 or not images.is_floating_point():
        raise UsageError(f"{flag} {path} must hold at least 2 images [N, C, H, W] (or [N, H, W]) "
                         f"of floats in [0, 1] or uint8 (got {images.dtype} "
                         f"{list(images.shape)})")
    if not torch.isfinite(images).all():
        raise UsageError(f"{flag} {path} holds NaN or infinite values")
    return images.float()


def cmd_eval(args) -> None:
    """FID, KID and/or Inception Score of --samples against --reference -> JSON."""
    from .. import eval as metrics
    from ..checkpoint import write_atomically
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; pass cpu, cuda or "
                         "cuda:INDEX") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    samples = _load_images(args.samples, "--samples")
    reference = _load_images(args.reference, "--reference")
    if samples.shape[1:] != reference.shape[1:]:
        raise UsageError(f"--samples images are {list(samples.shape[1:])} but --reference "
                         f"images are {list(reference.shape[1:])}; compare images of one shape")
    if args.features == "inception":
        if not args.inception_weights:
            raise UsageError("--features inception needs --inception-weights FILE: download "
                             f"{metrics.INCEPTION_WEIGHTS_URL} and pass its path")
        features = metrics.inception_features(args.inception_weights).to(device)
        classifier = (metrics.inception_features(args.inception_weights, "logits_unbiased")
                      .to(device) if "is" in args.metrics else None)
    else:
        from ..data import load_digits_images
        if args.inception_weights:
            raise UsageError("--inception-weights is used with --features inception only; add "
                             "--features inception, or drop it to score in digits features")
        if samples.shape[1:] != (1, 8, 8):
            raise UsageError(f"--features digits scores 8x8 digits [N, 1, 8, 8] (got images "
                             f"{list(samples.shape[1:])}); use --features inception for others")
        log.info("training the digits feature network (seed %d)", args.seed)
        features = metrics.train_digits_features(*load_digits_images("train", return_labels=True),
                                                 seed=args.seed, device=device)
        classifier = features.classifier()
    scores = {"features": args.features, "n_samples": len(samples),
              "n_reference": len(reference)}
    if "fid" in args.metrics:
        scores["fid"] = metrics.frechet_distance(samples, reference, features)
    if "kid" in args.metrics:
        scores.update(metrics.kernel_distance(samples, reference, features, seed=args.seed))
    if "is" in args.metrics:
        scores.update(metrics.inception_score(samples, classifier, seed=args.seed))
    text = json.dumps(scores, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_atomically(args.out, lambda file: file.write(text.encode() + b"\n"))
        print(f"wrote {args.out}")
    print(text)
