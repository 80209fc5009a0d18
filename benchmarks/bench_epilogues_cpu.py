"""CPU measurement behind the ``auto_order`` of the fused epilogues (vaebm_fast/ops/epilogues.py).

Forward + backward of each op, native kernel vs the eager reference, interleaved (A B A B ...)
after warm-up, medians in ms, at VAEBM's CIFAR sizes. The backward gets a random contiguous
output gradient (as from the next conv's backward) and computes the input and parameter
gradients with torch.autograd.grad. Run from the repository root:

    python -m benchmarks.bench_epilogues_cpu [--reps 30] [--threads N]
"""
import argparse
import statistics
import time

import torch

from vaebm_fast.ops import affine_swish, ebm_block_tail, nvae_cell_tail


def _cases():
    for shape in ((32, 128, 16, 16), (32, 64, 32, 32), (32, 256, 8, 8)):
        for ds in (False, True):
            def ebm(backend, shape=shape, ds=ds):
                h = torch.randn(shape, requires_grad=True)
                s = torch.randn(shape, requires_grad=True)
                g = torch.randn(shape[:2] + ((shape[2] // 2, shape[3] // 2) if ds else shape[2:]))
                return lambda: torch.autograd.grad(
                    ebm_block_tail(h, s, downsample=ds, backend=backend), (h, s), g)
            yield f"ebm_block_tail {list(shape)} ds={ds}", ebm
    for shape in ((32, 64, 16, 16), (32, 128, 16, 16), (32, 384, 16, 16)):
        def cell(backend, shape=shape):
            s = torch.randn(shape, requires_grad=True)
            h = torch.randn(shape, requires_grad=True)
            g = torch.rand(shape[:2], requires_grad=True)
            go = torch.randn(shape)
            return lambda: torch.autograd.grad(
                nvae_cell_tail(s, h, g, scale=0.1, backend=backend), (s, h, g), go)
        yield f"nvae_cell_tail {list(shape)}", cell

        def aff(backend, shape=shape):
            x = torch.randn(shape, requires_grad=True)
            a = torch.rand(shape[1], requires_grad=True)
            b = torch.randn(shape[1], requires_grad=True)
            go = torch.randn(shape)
            return lambda: torch.autograd.grad(affine_swish(x, a, b, backend=backend), (x, a, b),
                                               go)
        yield f"affine_swish {list(shape)}", aff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, make in _cases():
        fns = {b: make(b) for b in ("native", "eager")}
        for f in fns.values():
            for _ in range(3):
                f()
        times = {b: [] for b in fns}
        for _ in range(args.reps):
            for b, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[b].append(time.perf_counter() - t0)
        med = {b: statistics.median(t) * 1e3 for b, t in times.items()}
        print(f"{name:42s} native {med['native']:7.2f} ms  eager {med['eager']:7.2f} ms  "
              f"eager/native {med['eager'] / med['native']:5.2f}")


if __name__ == "__main__":
    main()
