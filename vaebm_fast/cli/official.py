"""``vaebm-fast sample --nvae CKPT --ebm CKPT --ebm-arch ARCH``: VAEBM samples from official files.

The official pipeline: an official NVAE checkpoint (:func:`vaebm_fast.models.load_nvae`) and an
official VAEBM energy network (:func:`vaebm_fast.models.load_official_ebm`), eps-space Langevin
chains with the official test settings of the arch's data set (``OFFICIAL_SAMPLING``), and the
decoder mean at the final state as the image (what the official test script saves).

Output, in --out DIR:

- ``samples.npz``: one array ``arr_0``, uint8 [N, H, W, C] (NHWC, the layout FID tools read),
  pixel = round(255 * clamp(x, 0, 1)) as torchvision's ``save_image`` rounds;
- ``samples.png``: a grid of the first 64;
- ``shards/``: ``images_{start:09d}_{stop:09d}.npy`` per finished shard of ``--batch`` samples
  (written atomically) and ``run.json`` with the settings and checkpoint digests they were drawn
  with.

Sample i draws its start and noise from row stream i of the Philox seed (``first_index``; see
:mod:`vaebm_fast.cli.shards`): its image depends on (seed, i) and the run's settings only, so a
resumed run skips the shards already on disk, and under ``torchrun`` the processes share the
shards and write the same images as one process. (Until version 0.1 batch i drew from the flat
stream at offset i * 2**40; folders of that layout are refused on resume.)
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .. import distributed
from ..checkpoint import write_atomically
from .errors import UsageError
from .shards import claim_folder, draw_shards, sha256

log = logging.getLogger("vaebm_fast")

# (Langevin steps, step size) of the official test scripts per EBM arch (docs/design.md,
# "Langevin settings"). MNIST's are not recorded there: --steps and --step-size are required.
OFFICIAL_SAMPLING = {
    "cifar32": (16, 8e-5),    # CIFAR-10
    "celeba64": (20, 5e-6),   # CelebA-64
    "lsun64": (20, 4e-6),     # LSUN church 64
    "celeba256": (24, 3e-6),  # CelebA-HQ-256
}

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

    shard_dir = os.path.join(args.out, "shards")
    world = distributed.World.current()
    settings = {"nvae_sha256": sha256(args.nvae), "ebm_sha256": sha256(args.ebm),
                "ebm_arch": args.ebm_arch, "seed": args.seed, "batch": batch,
                "steps": n_steps, "step_size": step_size, "potential": potential,
                "output": "decoder mean", "layout": "NHWC uint8", "noise": "row streams"}
    claim_folder(shard_dir, settings)

    vae.to(device), energy.to(device)
    sampler = FastSampler(energy, vae, space="eps", n_steps=n_steps, step_size=step_size,
                          potential=potential, output="mean")
    log.info("sampling %d images in shards of %d on %d process(es): %d Langevin steps, step "
             "size %g, %s potential, on %s", args.n, batch, world.world_size, n_steps,
             step_size, potential, device)

    def draw(start: int, stop: int) -> dict:
        x = sampler.sample(stop - start, seed=args.seed, first_index=start, device=device)
        return {"images": to_uint8_nhwc(x)}

    collected = draw_shards(draw, ("images",), args.n, batch, shard_dir)
    if collected is None:  # another rank writes the output
        return
    images = collected["images"]
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


def _save_grid(path: str, images: np.ndarray):
    from ..eval.plots import save_image_grid
    return save_image_grid(path, images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0,
                           nrow=8)
