"""The README's main job: VAE against VAEBM on the 25-Gaussian grid, in minutes on a CPU.

1. Stage 1: an MLP VAE (2-D latent) by its ELBO.
2. Stage 2: an MLP energy with the VAE frozen, negatives from eps-space Langevin.
3. N samples each way from the same start eps: the VAE sample decodes eps directly, the VAEBM
   sample decodes it after Langevin on U(eps) = E(T(eps)) + 1/2||eps||^2; both report the full
   draw x = T(eps_z, eps_x) (the sampler's output="sample").
4. The table: modes covered, fraction of high-quality samples (within 3 std of a mode), the
   energy distance to data and KL(uniform || mode frequencies); written to DIR/metrics.json
   with DIR/samples_{vae,vaebm}.npy and DIR/scatter.png.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import torch

from .data import TwentyFiveGaussians, batches
from .eval.plots import save_scatter
from .eval.toy_metrics import mixture_metrics
from .presets import build_energy, build_vae, preset
from .sampling.fast import FastSampler
from .training.ebm import train_ebm
from .training.vae import train_vae

COLUMNS = (("modes_covered", "modes (of 25)", "{:d}"),
           ("high_quality_fraction", "high quality", "{:.1%}"),
           ("energy_distance", "energy dist.", "{:.4f}"), ("mode_kl", "mode KL", "{:.3f}"))


def format_table(rows: dict[str, dict]) -> str:
    """A markdown table of the demo metrics, one row per model."""
    head = "| samples | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    lines = [head, rule]
    for name, m in rows.items():
        cells = " | ".join(fmt.format(m[key]) for key, _, fmt in COLUMNS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def run_demo(out: str, *, seed: int = 0, n_samples: int = 5000, quick: bool = False,
             resume: bool = True, log=print) -> dict:
    """Train both stages, sample, evaluate; returns the metrics dict written to metrics.json.

    quick=True shortens both stages (for tests); the README's figures use the defaults.
    """
    os.makedirs(out, exist_ok=True)
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    data = TwentyFiveGaussians()
    p = preset("25gaussians")
    if quick:
        p["vae_train"].steps, p["ebm_train"].steps = 1000, 100
    config = {"dataset": "25gaussians", "vae": p["vae"], "energy": p["energy"]}
    t0 = time.perf_counter()

    vae = build_vae(p["vae"])
    train_vae(vae, batches(data, p["vae_train"].batch_size), p["vae_train"],
              checkpoint_path=os.path.join(out, "vae.pt"), resume=resume,
              extra_state={"config": config})
    energy = build_energy(p["energy"])
    p["ebm_train"].seed = seed
    train_ebm(energy, vae, batches(data, p["ebm_train"].batch_size), p["ebm_train"],
              checkpoint_path=os.path.join(out, "ebm.pt"), resume=resume,
              extra_state={"config": {**config, "vae_checkpoint": "vae.pt"}})
    train_seconds = time.perf_counter() - t0

    energy.eval()
    sample_seed = seed + 1  # a stream the training chains never used
    # output="sample": both sides report x = T(eps_z, eps_x), a draw of p(x) and of h(x) (the
    # toy VAE's decoder std is ~0.2, four times the modes' std, so its mean alone would hide it).
    vae_only = FastSampler(energy, vae, space="eps", step_size=p["sample_step_size"], n_steps=0,
                           output="sample")
    vaebm = FastSampler(energy, vae, space="eps", step_size=p["sample_step_size"],
                        n_steps=p["sample_steps"], output="sample")
    t1 = time.perf_counter()
    samples = {"VAE": vae_only.sample(n_samples, seed=sample_seed),  # same start eps for both
               # A bar on a terminal only, as training's: a log file gets no carriage returns.
               "VAEBM": vaebm.sample(n_samples, seed=sample_seed, progress=sys.stderr.isatty())}
    sample_seconds = time.perf_counter() - t1
    reference = data.sample(n_samples, torch.Generator().manual_seed(seed + 2))

    rows = {name: mixture_metrics(x, reference, data.means, data.std)
            for name, x in samples.items()}
    held_out = data.sample(n_samples, torch.Generator().manual_seed(seed + 3))
    rows["data (reference)"] = mixture_metrics(held_out, reference, data.means, data.std)
    np.save(os.path.join(out, "samples_vae.npy"), samples["VAE"].numpy())
    np.save(os.path.join(out, "samples_vaebm.npy"), samples["VAEBM"].numpy())
    save_scatter(os.path.join(out, "scatter.png"),
                 {"data": reference.numpy(), "VAE": samples["VAE"].numpy(),
                  "VAEBM": samples["VAEBM"].numpy()},
                 means=data.means.numpy(), title="25-Gaussians: VAE vs VAEBM", lim=(-3, 3))
    metrics = {
        "vae": rows["VAE"], "vaebm": rows["VAEBM"], "data": rows["data (reference)"],
        "means": data.means.tolist(), "std": data.std, "n_samples": n_samples, "seed": seed,
        "sample_langevin_steps": p["sample_steps"], "sample_step_size": p["sample_step_size"],
        "train_seconds": round(train_seconds, 1), "sample_seconds": round(sample_seconds, 2),
        "table": format_table(rows),
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    log(metrics["table"])
    log(f"\ntrained in {train_seconds:.0f} s, sampled {n_samples} x {p['sample_steps']} "
        f"Langevin steps in {sample_seconds:.1f} s; wrote {out}/samples_vae.npy, "
        f"samples_vaebm.npy, metrics.json, scatter.png")
    return metrics
