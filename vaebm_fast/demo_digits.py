"""The README's digits result: VAE against VAEBM on scikit-learn's 8x8 digits, minutes on a CPU.

1. Stage 1: the ``digits`` NVAE-style VAE by its ELBO, on the 1617 training digits.
2. Stage 2: the small image EBM, VAE frozen, negatives from eps-space Langevin chains.
3. N samples each way from the same start eps: the VAE sample decodes eps as drawn, the VAEBM
   sample after Langevin on U(eps) = E(T(eps)) + 1/2||eps||^2; both report the decoder mean
   (output="mean", as the official code reports images).
4. Sample quality: FID against the training digits in the feature space of the toolkit's
   digits classifier (``eval.train_digits_features``), a digits-scale stand-in for the
   Inception FID. The held-out test digits give the floor ("data" row).
5. OOD detection: the 180 held-out test digits (in distribution) against as many midpoints of
   two test digits, the digit-scale analogue of the paper's "CIFAR-10 interpolated" set.
   The VAE scores an image by its negative ELBO; VAEBM by E(x) - ELBO(x), the negative log of
   its unnormalised density h(x) = p(x) exp(-E(x)) with log p(x) estimated by the ELBO. The
   energy alone is reported beside them. AUROC 1 separates the sets; 0.5 is chance.

Writes DIR/metrics.json (with a markdown table), DIR/samples_{vae,vaebm}.npy ([N, 1, 8, 8] in
[0, 1]), DIR/samples.png (data | VAE | VAEBM) and DIR/roc.png. DIR/vae.pt and DIR/ebm.pt are the
command line's checkpoints: ``vaebm-fast sample --out DIR`` samples from them, and a rerun
resumes from them.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import eval as metrics
from .data import batches, interpolated_digits, load_digits_images
from .presets import build_energy, build_vae, preset
from .sampling.fast import FastSampler
from .training.ebm import train_ebm
from .training.vae import train_vae

ELBO_SAMPLES = 8  # posterior samples averaged per ELBO estimate of an OOD score

COLUMNS = (("fid", "FID (digits features) ↓", "{:.2f}"),
           ("auroc_interpolated", "OOD AUROC, interpolated digits ↑", "{:.3f}"))


def format_table(rows: dict[str, dict]) -> str:
    """A markdown table, one row per model; a missing value is shown as a dash."""
    head = "| samples | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = " | ".join(fmt.format(row[key]) if row.get(key) is not None else "–"
                           for key, _, fmt in COLUMNS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


@torch.no_grad()
def negative_elbo(vae: nn.Module, images: torch.Tensor, *, samples: int = ELBO_SAMPLES,
                  seed: int = 0, batch_size: int = 512) -> torch.Tensor:
    """-ELBO [N] in nats of ``images`` [N, 1, 8, 8], averaged over ``samples`` posterior draws
    (seeded; the caller's random state is untouched)."""
    total = torch.zeros(len(images))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(samples):
            for start in range(0, len(images), batch_size):
                recon_nll, kl = vae.elbo_terms(images[start:start + batch_size])
                total[start:start + batch_size] += recon_nll + sum(kl)
    return total / samples


@torch.no_grad()
def _energies(energy: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([energy(chunk) for chunk in images.split(512)])


def run_digits_demo(out: str, *, seed: int = 0, n_samples: int = 2000, quick: bool = False,
                    resume: bool = True, log=print) -> dict:
    """Train both stages, sample, score; returns the metrics dict written to metrics.json.

    quick=True shortens both stages (for tests); the README's figures use the defaults.
    """
    os.makedirs(out, exist_ok=True)
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    train_x, train_y = load_digits_images("train", return_labels=True)
    test_x = load_digits_images("test")
    p = preset("digits")
    if quick:
        p["vae_train"] = replace(p["vae_train"], steps=60, checkpoint_every=30)
        p["ebm_train"] = replace(p["ebm_train"], steps=10, checkpoint_every=5)
    # The command line's config keys, so `vaebm-fast sample --out DIR` reads these files.
    config = {"dataset": "digits", "vae": p["vae"]}
    t0 = time.perf_counter()

    vae = build_vae(p["vae"])
    train_vae(vae, batches(train_x, p["vae_train"].batch_size), p["vae_train"],
              checkpoint_path=os.path.join(out, "vae.pt"), resume=resume,
              extra_state={"config": config})
    energy = build_energy(p["energy"])
    p["ebm_train"] = replace(p["ebm_train"], seed=seed)
    train_ebm(energy, vae, batches(train_x, p["ebm_train"].batch_size), p["ebm_train"],
              checkpoint_path=os.path.join(out, "ebm.pt"), resume=resume, data_shape=(1, 8, 8),
              extra_state={"config": {**config, "energy": p["energy"],
                                      "sample_steps": p["sample_steps"],
                                      "sample_step_size": p["sample_step_size"]}})
    train_seconds = time.perf_counter() - t0
    vae.eval(), energy.eval()

    sample_seed = seed + 1  # a stream the training chains never used
    common = dict(space="eps", step_size=p["sample_step_size"], output="mean")
    t1 = time.perf_counter()
    samples = {"VAE": FastSampler(energy, vae, n_steps=0, **common).sample(n_samples,
                                                                          seed=sample_seed),
               "VAEBM": FastSampler(energy, vae, n_steps=p["sample_steps"], **common).sample(
                   n_samples, seed=sample_seed, progress=sys.stderr.isatty())}
    sample_seconds = time.perf_counter() - t1

    features = metrics.train_digits_features(train_x, train_y, seed=seed)
    fid = {name: metrics.frechet_distance(x, train_x, features) for name, x in samples.items()}
    fid["data"] = metrics.frechet_distance(test_x, train_x, features)

    ood_x = interpolated_digits(test_x, len(test_x), seed=seed)
    nelbo_in = negative_elbo(vae, test_x, seed=seed)
    nelbo_ood = negative_elbo(vae, ood_x, seed=seed)
    e_in, e_ood = _energies(energy, test_x), _energies(energy, ood_x)
    aurocs = metrics.ood_report(
        {"VAE: -ELBO": (nelbo_in, nelbo_ood), "VAEBM: E - ELBO": (e_in + nelbo_in,
                                                                e_ood + nelbo_ood),
         "energy E alone": (e_in, e_ood)},
        os.path.join(out, "roc.png"), title="test digits vs interpolated digits")

    rows = {"VAE": {"fid": fid["VAE"], "auroc_interpolated": aurocs["VAE: -ELBO"]},
            "VAEBM": {"fid": fid["VAEBM"], "auroc_interpolated": aurocs["VAEBM: E - ELBO"]},
            "data (held-out digits)": {"fid": fid["data"]}}
    np.save(os.path.join(out, "samples_vae.npy"), samples["VAE"].numpy())
    np.save(os.path.join(out, "samples_vaebm.npy"), samples["VAEBM"].numpy())
    metrics.save_image_grids_side_by_side(
        os.path.join(out, "samples.png"),
        {"data": test_x[:64], "VAE": samples["VAE"][:64],
         f"VAEBM ({p['sample_steps']} Langevin steps)": samples["VAEBM"][:64]})
    result = {
        "vae": rows["VAE"], "vaebm": rows["VAEBM"], "data": rows["data (held-out digits)"],
        "auroc_energy_alone": aurocs["energy E alone"],
        "n_samples": n_samples, "n_fid_reference": len(train_x), "n_ood": len(ood_x),
        "seed": seed, "sample_langevin_steps": p["sample_steps"],
        "sample_step_size": p["sample_step_size"], "elbo_samples": ELBO_SAMPLES,
        "train_seconds": round(train_seconds, 1), "sample_seconds": round(sample_seconds, 2),
        "table": format_table(rows),
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(result["table"])
    log(f"\nenergy alone: OOD AUROC {result['auroc_energy_alone']:.3f}. Trained in "
        f"{train_seconds:.0f} s, sampled {n_samples} x {p['sample_steps']} Langevin steps in "
        f"{sample_seconds:.1f} s; wrote {out}/samples_vae.npy, samples_vaebm.npy, "
        f"samples.png, roc.png, metrics.json")
    return result
