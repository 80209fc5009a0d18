"""The effect of ``network_precision="bf16"`` on Langevin samples, measured on the CPU.

Two models, each sampled twice by FastSampler from the same start and the same noise (same
seed), once with fp32 networks and once with bf16 networks:

* the 25-Gaussians toy VAEBM (presets "25gaussians"), trained briefly here (shortened stages 1
  and 2), sampled with the preset's chain (K x step); mode coverage and quality of both sample
  sets, the mean and max absolute difference between them and the mean distance the chain
  moved the samples (the scale the difference is small against);
* the digits models (presets "digits": the NVAE and the conv energy) on scikit-learn's digits,
  trained briefly too (far from the README's quality: a real decoder and energy, not random
  weights, whose gradients barely move a chain), sampled with the preset's chain: the
  difference between the two sample sets and the time per chain.

Times are the median of ``--repeats`` chains, fp32 and bf16 alternating. Prints a markdown
report (machine, command, tables); ``--out`` also writes it to a file.

    python scripts/measure_precision.py --out benchmarks/results/precision_cpu.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from vaebm_fast.data import TwentyFiveGaussians, batches, load_digits_images
from vaebm_fast.eval.toy_metrics import mixture_metrics
from vaebm_fast.presets import build_energy, build_vae, preset
from vaebm_fast.sampling import FastSampler
from vaebm_fast.training.ebm import train_ebm
from vaebm_fast.training.vae import train_vae

PRECISIONS = ("fp32", "bf16")


def cpu_description() -> str:
    """The CPU model and whether it has bfloat16 instructions (Linux /proc/cpuinfo)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["no bf16 instructions"]
    return f"{model} ({', '.join(bf16)})"


def chains(energy, vae, n: int, seed: int, repeats: int, **kw):
    """{precision: (samples [n, ...], median seconds per chain)}, same start and noise."""
    samplers = {p: FastSampler(energy, vae, space="eps", network_precision=p, **kw)
                for p in PRECISIONS}
    times = {p: [] for p in PRECISIONS}
    samples = {}
    for _ in range(repeats):
        for p, sampler in samplers.items():
            t0 = time.perf_counter()
            samples[p] = sampler.sample(n, seed=seed)
            times[p].append(time.perf_counter() - t0)
    return {p: (samples[p], statistics.median(times[p])) for p in PRECISIONS}


def difference_row(name: str, out: dict, start: torch.Tensor) -> str:
    """One row of HEADER: fp32 against bf16 samples [n, ...], the move of the fp32 chain from
    ``start`` (its samples after 0 steps), the times."""
    a, b = out["fp32"][0], out["bf16"][0]
    diff = (a - b).abs()
    per_chain = diff.flatten(1).amax(1)
    p50, p99 = torch.quantile(per_chain, torch.tensor([0.5, 0.99])).tolist()
    moved = (a - start).abs().mean()
    t32, t16 = out["fp32"][1], out["bf16"][1]
    return (f"| {name} | {diff.mean():.2e} | {p50:.1e} / {p99:.1e} / {per_chain.max():.1e} | "
            f"{int((per_chain > APART).sum())} of {len(a)} | {moved:.2e} | "
            f"{bool(torch.isfinite(b).all())} | {t32:.2f} | {t16:.2f} | {t16 / t32:.2f} |")


def toy(args, log) -> list[str]:
    p = preset("25gaussians")
    p["vae_train"].steps, p["ebm_train"].steps = args.toy_vae_steps, args.toy_ebm_steps
    p["vae_train"].checkpoint_every = p["ebm_train"].checkpoint_every = 10 ** 9
    data = TwentyFiveGaussians()
    torch.manual_seed(0)
    vae, energy = build_vae(p["vae"]), build_energy(p["energy"])
    t0 = time.perf_counter()
    train_vae(vae, batches(data, p["vae_train"].batch_size), p["vae_train"])
    train_ebm(energy, vae, batches(data, p["ebm_train"].batch_size), p["ebm_train"])
    log(f"toy: trained in {time.perf_counter() - t0:.0f} s")
    vae.eval(), energy.eval()
    kw = dict(step_size=p["sample_step_size"], output="sample")
    out = chains(energy, vae, args.toy_n, 1, args.repeats, n_steps=p["sample_steps"], **kw)
    start = FastSampler(energy, vae, space="eps", n_steps=0, **kw).sample(args.toy_n, seed=1)
    reference = data.sample(args.toy_n, torch.Generator().manual_seed(2))
    quality = {name: mixture_metrics(x, reference, data.means, data.std)
               for name, x in (("VAE (no chain)", start), ("VAEBM fp32", out["fp32"][0]),
                               ("VAEBM bf16", out["bf16"][0]))}
    K = p["sample_steps"]
    return [
        f"**25-Gaussians** (stage 1 {args.toy_vae_steps} steps, stage 2 {args.toy_ebm_steps} "
        f"steps of the preset; {args.toy_n} chains of {K} x {p['sample_step_size']:g}):", "",
        "| samples | modes (of 25) | high quality | energy dist. | mode KL |",
        "|---|---|---|---|---|",
        *(f"| {name} | {m['modes_covered']} | {m['high_quality_fraction']:.1%} | "
          f"{m['energy_distance']:.4f} | {m['mode_kl']:.3f} |" for name, m in quality.items()),
        "", HEADER, RULE, difference_row(f"25-Gaussians, {args.toy_n} x {K} steps", out, start),
    ]


def digits(args, log) -> list[str]:
    p = preset("digits")
    p["vae_train"].steps, p["ebm_train"].steps = args.digits_vae_steps, args.digits_ebm_steps
    p["vae_train"].checkpoint_every = p["ebm_train"].checkpoint_every = 10 ** 9
    train_x = load_digits_images("train")
    torch.manual_seed(0)
    vae, energy = build_vae(p["vae"]), build_energy(p["energy"])
    t0 = time.perf_counter()
    train_vae(vae, batches(train_x, p["vae_train"].batch_size), p["vae_train"])
    train_ebm(energy, vae, batches(train_x, p["ebm_train"].batch_size), p["ebm_train"],
              data_shape=(1, 8, 8))
    log(f"digits: trained in {time.perf_counter() - t0:.0f} s")
    vae.eval(), energy.eval()
    kw = dict(step_size=p["sample_step_size"])
    out = chains(energy, vae, args.digits_n, 1, args.repeats, n_steps=p["sample_steps"], **kw)
    start = FastSampler(energy, vae, space="eps", n_steps=0, **kw).sample(args.digits_n, seed=1)
    name = (f"digits (stages {args.digits_vae_steps} + {args.digits_ebm_steps} steps), "
            f"{args.digits_n} x {p['sample_steps']} steps of {p['sample_step_size']:g}")
    return [difference_row(name, out, start)]


# Chains whose fp32 and bf16 samples differ by more than this (two std of a toy mode) in some
# coordinate are counted: those ended in another place, not at a rounding distance.
APART = 0.1
HEADER = ("| chain | mean abs diff fp32 vs bf16 | per-chain max abs diff: median / 99th pct / max "
          f"| chains > {APART} apart | mean abs move of the chain | bf16 finite | "
          "s per chain fp32 | s per chain bf16 | bf16 / fp32 time |")
RULE = "|---|---|---|---|---|---|---|---|---|"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--toy-vae-steps", type=int, default=4000)
    parser.add_argument("--toy-ebm-steps", type=int, default=1500)
    parser.add_argument("--toy-n", type=int, default=5000)
    parser.add_argument("--digits-vae-steps", type=int, default=300)
    parser.add_argument("--digits-ebm-steps", type=int, default=100)
    parser.add_argument("--digits-n", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    toy_lines = toy(args, log)
    digit_row = digits(args, log)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after the run"
    report = "\n".join([
        "# bf16 networks inside the Langevin chain, on the CPU", "",
        f"Machine: {cpu_description()}, {args.threads} torch thread(s), torch "
        f"{torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"{load}.", "",
        "Command: `python scripts/measure_precision.py "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
        "FastSampler, the same seed (start and noise) for both precisions; the chain state, "
        "update and noise are float32 either way, only the decoder and energy run under bf16 "
        "autocast. Samples: decoder output at float32 after the chain. Time: median of "
        f"{args.repeats} chains, fp32 and bf16 alternating.", "",
        *toy_lines, digit_row[0], "",
    ])
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return report


if __name__ == "__main__":
    main()
