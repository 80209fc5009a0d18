"""``vaebm-fast sample --nvae CKPT --ebm CKPT --ebm-arch ARCH``: VAEBM samples from official files.

The official pipeline: an official NVAE checkpoint (:func:`vaebm_fast.models.load_nvae`) and an
official VAEBM energy network (:func:`vaebm_fast.models.load_official_ebm`), eps-space Langevin
chains with the official test settings of the arch's data set (``OFFICIAL_SAMPLING``), and the
decoder mean at the final state as the image (what the official test script saves).

Output, in --out DIR:

- ``samples.npz``: one array ``arr_0``, uint8 [N, H, W, C] (NHWC, the layout FID tools read),
  pixel = round(255 * clamp(x, 0, 1)) as torchvision's ``save_image`` rounds;
- ``samples.png``: a grid of the first 64;
- ``batches/``: ``batch_{i:06d}.npy`` per finished batch (written atomically) and ``run.json``
  with the settings and checkpoint digests they were drawn with.

Batch i draws its starts and noise from the Philox stream ``seed`` at offset ``i * STRIDE``:
its images depend on (seed, i) and the run's settings only, so a rerun of one batch, or a
resumed run that skips the batches already on disk, gives the same images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time

import numpy as np
import torch

from ..checkpoint import write_atomically
from .errors import UsageError

log = logging.getLogger("vaebm_fast")

# (Langevin steps, step size) of the official test scripts per EBM arch (docs/design.md,
# "Langevin settings"). MNIST's are not recorded there: --steps and --step-size are required.
OFFICIAL_SAMPLING = {
    "cifar32": (16, 8e-5),    # CIFAR-10
    "celeba64": (20, 5e-6),   # CelebA-64
    "lsun64": (20, 4e-6),     # LSUN church 64
    "celeba256": (24, 3e-6),  # CelebA-HQ-256
}

# Philox offsets reserved per batch: far more normals than any batch draws (a CIFAR-10 batch of
# 256 chains x 17 draws of ~10^5 numbers is ~5e8 < 2**40), and room for 2**23 batches.
STRIDE = 2 ** 40

DEFAULT_BATCH = 256
GRID = 64  # images in samples.png


def sample_official(args) -> None:
    """The official path of ``vaebm-fast sample`` (``args.nvae`` given)."""
    from ..models import load_nvae, load_official_ebm
    from ..models.energy import OFFICIAL_EBM_ARCHS
    from ..sampling.fast import FastSampler

    if args.ebm is None:
        raise UsageError("--nvae needs --ebm, the official VAEBM energy-network checkpoint")
    if args.ebm_arch is None:
        raise UsageError(f"--nvae needs --ebm-arch, the EBM's architecture; valid: "
                         f"{', '.join(OFFICIAL_EBM_ARCHS)}")
    n_steps, step_size = _settings(args.ebm_arch, args.steps, args.step_size)
    batch = DEFAULT_BATCH if args.batch is None else args.batch
    potential = args.potential or "paper"
    device = _device(args.device)
    for flag, path in (("--nvae", args.nvae), ("--ebm", args.ebm)):
        if not os.path.isfile(path):
            raise UsageError(f"{flag} file {path} not found")
    vae = load_nvae(args.nvae)
    energy = load_official_ebm(args.ebm, args.ebm_arch)
    size = OFFICIAL_EBM_ARCHS[args.ebm_arch].image_size
    if tuple(vae.data_shape) != (energy.in_channels, size, size):
        c, h, w = vae.data_shape
        raise UsageError(f"the NVAE in {args.nvae} makes {c}x{h}x{w} images but EBM arch "
                         f"{args.ebm_arch!r} takes {energy.in_channels}x{size}x{size}; pass the "
                         "--ebm-arch of the NVAE's data set")

    batch_dir = os.path.join(args.out, "batches")
    os.makedirs(batch_dir, exist_ok=True)
    settings = {"nvae_sha256": _sha256(args.nvae), "ebm_sha256": _sha256(args.ebm),
                "ebm_arch": args.ebm_arch, "seed": args.seed, "batch": batch,
                "steps": n_steps, "step_size": step_size, "potential": potential,
                "output": "decoder mean", "layout": "NHWC uint8"}
    _check_or_write_settings(os.path.join(batch_dir, "run.json"), settings)

    vae.to(device), energy.to(device)
    sampler = FastSampler(energy, vae, space="eps", n_steps=n_steps, step_size=step_size,
                          potential=potential, output="mean")
    numel = sum(math.prod(s) for s in sampler.state_shapes())
    if batch * numel * (n_steps + 1) > STRIDE:
        raise UsageError(f"--batch {batch} draws more random numbers per batch than the "
                         f"{STRIDE} reserved for it; pass a smaller --batch")
    n_batches = math.ceil(args.n / batch)
    log.info("sampling %d images in %d batches of %d: %d Langevin steps, step size %g, %s "
             "potential, on %s", args.n, n_batches, batch, n_steps, step_size,
             potential, device)
    start = time.perf_counter()
    done = 0
    for i in range(n_batches):
        size_i = min(batch, args.n - i * batch)
        path = _batch_path(batch_dir, i)
        if _finished(path, size_i, vae.data_shape):
            continue
        x = sampler.sample(size_i, seed=args.seed, offset=i * STRIDE, device=device)
        images = to_uint8_nhwc(x)
        write_atomically(path, lambda f, images=images: np.save(f, images))
        done += 1
        log.info("batch %d/%d done (%.1f s)", i + 1, n_batches, time.perf_counter() - start)
    if done < n_batches:
        log.info("resumed: %d of %d batches were already in %s", n_batches - done, n_batches,
                 batch_dir)

    images = np.concatenate([np.load(_batch_path(batch_dir, i)) for i in range(n_batches)])
    npz = write_atomically(os.path.join(args.out, "samples.npz"),
                           lambda f: np.savez(f, images))
    png = _save_grid(os.path.join(args.out, "samples.png"), images[:GRID])
    print(f"wrote {npz} (uint8 [N, H, W, C] = {list(images.shape)}, key arr_0) and {png}")


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Images x [B, C, H, W] in [0, 1] -> uint8 [B, H, W, C], rounded to the nearest level."""
    pixels = (x.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _settings(arch: str, steps, step_size) -> tuple[int, float]:
    """(steps, step size): the flags, else the official test settings of ``arch``."""
    from ..models.energy import OFFICIAL_EBM_ARCHS
    if arch not in OFFICIAL_EBM_ARCHS:
        raise UsageError(f"unknown --ebm-arch {arch!r}; valid: {', '.join(OFFICIAL_EBM_ARCHS)}")
    if arch not in OFFICIAL_SAMPLING and (steps is None or step_size is None):
        raise UsageError(f"the official sampling settings of --ebm-arch {arch} are not recorded "
                         f"(docs/design.md lists {', '.join(OFFICIAL_SAMPLING)}); pass --steps "
                         "and --step-size")
    default_steps, default_size = OFFICIAL_SAMPLING.get(arch, (None, None))
    return (default_steps if steps is None else steps,
            default_size if step_size is None else step_size)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; pass --device cpu")
    return torch.device(name)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_or_write_settings(path: str, settings: dict) -> None:
    """Resume only batches drawn with the same settings and checkpoints."""
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in set(before) | set(settings)
                         if before.get(k) != settings.get(k))
        if changed:
            raise UsageError(f"{os.path.dirname(path)} holds batches drawn with other settings "
                             f"({', '.join(changed)} differ); pass another --out or remove "
                             "that folder to start over")
        return
    text = json.dumps(settings, indent=2).encode()
    write_atomically(path, lambda f: f.write(text))


def _batch_path(batch_dir: str, i: int) -> str:
    return os.path.join(batch_dir, f"batch_{i:06d}.npy")


def _finished(path: str, size: int, data_shape) -> bool:
    """Whether ``path`` holds batch images of the expected shape (a batch of another --n's
    last, shorter batch is drawn again)."""
    if not os.path.exists(path):
        return False
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    c, h, w = data_shape
    return images.dtype == np.uint8 and images.shape == (size, h, w, c)


def _save_grid(path: str, images: np.ndarray):
    from ..eval.plots import save_image_grid
    return save_image_grid(path, images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0,
                           nrow=8)
