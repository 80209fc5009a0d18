"""What leaving FastSampler's heap reuse off (the default) costs on CPU chains.

    python -m benchmarks.bench_heap_reuse [--case igebm|ebm128] [--repeats 9] [--steps 16]

Runs one FastSampler chain with ``heap_reuse=False`` and one with ``heap_reuse=True``,
alternately, ``--repeats`` times each after one untimed warm-up of each, and prints the median
and interquartile range of the wall time per Langevin step and of the system (kernel) time per
chain, which is where page-faulting freed activations in again shows up. Cases (data-space
chains with IGEBM settings: step 20, noise 0.005, grad clip 0.01, clamp to [0, 1]):

* ``igebm``: official_ebm("cifar32", n_channel=32), batch 64 (the IGEBM chain of
  benchmarks/results/chains_cpu.md);
* ``ebm128``: official_ebm("cifar32", n_channel=128) (the official CIFAR-10 energy), batch 32.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from vaebm_fast import FastSampler
from vaebm_fast.models import official_ebm

CASES = {"igebm": (32, 64), "ebm128": (128, 32)}


def _quartiles(values):
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[2] - q[0]


def _one_chain(sampler, batch, seed):
    """(wall seconds, system seconds) of one chain."""
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t0 = time.perf_counter()
    sampler.sample(batch, seed=seed)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="igebm")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    width, batch = CASES[args.case]
    torch.manual_seed(0)
    energy = official_ebm("cifar32", n_channel=width).eval()
    kw = dict(space="data", step_size=20.0, noise_scale=0.005, grad_clip=0.01, clamp=(0.0, 1.0),
              data_shape=(3, 32, 32), n_steps=args.steps)
    samplers = {flag: FastSampler(energy, heap_reuse=flag, **kw) for flag in (False, True)}
    times = {False: [], True: []}
    for rep in range(args.repeats + 1):
        for flag, sampler in samplers.items():
            wall, system = _one_chain(sampler, batch, seed=rep)
            if rep:  # the first round warms up (snapshots, oneDNN primitives)
                times[flag].append((wall, system))
    print(f"{args.case}: official_ebm('cifar32', n_channel={width}), batch {batch}, "
          f"{args.steps}-step data-space chains, {args.repeats} interleaved repeats, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for flag in (False, True):
        wall, iqr = _quartiles([w / args.steps * 1e3 for w, _ in times[flag]])
        system, _ = _quartiles([s for _, s in times[flag]])
        print(f"  heap_reuse={flag!s:5}: {wall:8.1f} ms/step (IQR {iqr:.1f}), "
              f"{system:6.2f} s system time per chain")
    off = statistics.median(w for w, _ in times[False])
    on = statistics.median(w for w, _ in times[True])
    print(f"  off / on: {off / on:.2f}x")


if __name__ == "__main__":
    main()
