"""Op benchmarks: the fused Langevin step, Philox normals, grouped power iteration.

    vaebm-fast bench ops [--quick] [--only REGEX] [--out DIR]   # prints the markdown table
    vaebm-fast bench ops --list                                 # the cases
    python -m benchmarks.bench_ops --quick                      # the same, from a checkout

Cases (timed by :mod:`.harness`; torch's thread count is left at its default); the keys do not
depend on the sizes, which ``--quick`` shrinks:

* ``langevin_flat``: ``langevin_step_`` on one 16M-element fp32 tensor, native kernel vs the
  update as a user would write it in plain PyTorch (the baseline) vs our eager reference
  (Philox in int64 torch ops: a correctness oracle, timed for information).
* ``langevin_cifar10``: the same on the CIFAR-10 VAEBM sampling state, ε_x [32, 3, 32, 32] plus
  30 latent groups [32, 20, 16, 16] (NVAE's CIFAR-10 model), 31 tensors in one call.
* ``philox_normal``: 16M normals, native vs eager reference vs ``torch.randn``.
* ``power_iteration_cifar32``: the spectral regulariser's 4 power iterations over the CIFAR-32
  EBM's conv weights: ``spectral_norms`` native (all groups in one call) and eager (batched per
  shape group) vs a per-layer loop.
* ``swish``: Swish forward + backward on one 16M-element fp32 tensor, native op vs
  ``x * sigmoid(x)`` vs ``F.silu``.
* ``ebm_block_tail`` / ``nvae_cell_tail`` / ``affine_swish``: the fused epilogues, forward +
  backward, native vs their eager references, at the CIFAR-32 EBM's and NVAE's sizes.
* ``replay_gather_cifar10``: start states of a pixel-space IGEBM batch (128 chains of
  [3, 32, 32], 5% fresh) from a 10,000-chain replay buffer, ``replay_gather`` vs
  ``index_select`` + ``randn`` + ``where``.

``--only REGEX`` runs the cases whose key matches (e.g. ``--only 'langevin|replay'``); a
pattern that matches none is an error before anything is built.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .harness import (Case, Variant, add_run_arguments, print_catalogue, run_case,
                      select_keys, torch_threads, usage_error)
from .record import Recorder
from .table import PLAIN
from vaebm_fast.models import official_ebm
from vaebm_fast.nn import WNConv2d
from vaebm_fast.ops import (affine_swish, backend_availability, ebm_block_tail,
                            langevin_step_, langevin_step_reference, nvae_cell_tail,
                            philox_normal, replay_gather, spectral_norms, swish)

STEP_SIZE = 1e-2
POWER_ITERATIONS = 4
# Sizes: full, and --quick (a smoke run of every case in a few seconds).
FULL = {"numel": 16 * 2**20, "batch": 32, "ebm_channels": None,  # None: official width, 128
        "replay_rows": 10_000, "replay_batch": 128, "epilogue_shape": (32, 128, 16, 16)}
QUICK = {"numel": 2**16, "batch": 2, "ebm_channels": 16, "replay_rows": 64, "replay_batch": 8,
         "epilogue_shape": (2, 8, 8, 8)}
REINIT_PROB = 0.05  # IGEBM's fraction of fresh chains per batch
TIMING_FULL = {"repeats": 15, "warmup": 2, "min_sample_s": 0.05}
TIMING_QUICK = {"repeats": 3, "warmup": 1, "min_sample_s": 0.002}


KERNEL_BACKENDS = ("native", "triton")


def kernel_variants(op: str, device: str, make, *, name=None, **variant_kw):
    """(variants, skipped): one :class:`Variant` per kernel backend of ``op`` that can run on
    ``device`` (``make(backend)`` gives its callable), the reasons for the others. Triton on
    the CPU is its interpreter, a test tool: never timed. ``name(backend)`` names a variant
    (default: the backend's name); ``variant_kw`` go to every Variant."""
    variants, skipped = [], {}
    available = backend_availability(op, device)
    for backend in KERNEL_BACKENDS:
        label = name(backend) if name else backend
        why_not = available[backend]
        if backend == "triton" and torch.device(device).type == "cpu":
            why_not = "Triton runs on the CPU only in its interpreter (a test tool, not timed)"
        if why_not is None:
            variants.append(Variant(label, make(backend), **variant_kw))
        else:
            skipped[label] = why_not
    return variants, skipped


# ------------------------------------------------------------------------------ langevin_step_

def langevin_case(key: str, title: str, shapes: Sequence[Sequence[int]], device: str,
                  rows: bool = False) -> Case:
    """t <- t - eta/2 (g + t) + sqrt(eta) xi on every tensor of ``shapes``, in one call.
    ``rows``: also time each kernel in row mode (``first_row=0``: sample b's noise from its
    own row stream, what distributed sampling uses), beside the default flat mode."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    start = [torch.randn(s, generator=gen).to(device) for s in shapes]
    numel = sum(g.numel() for g in grads)
    item = grads[0].element_size()
    eta, sigma = STEP_SIZE, math.sqrt(STEP_SIZE)

    def fused(backend_fn):
        """A variant that advances its own chain (own tensors, own stream offset)."""
        xs, state = [x.clone() for x in start], {"offset": 0}

        def call():
            state["offset"] = backend_fn(xs, grads, step_size=eta, seed=0,
                                         offset=state["offset"])
        return call

    plain_xs = [x.clone() for x in start]

    def plain():
        for x, g in zip(plain_xs, grads):
            x.add_(g + x, alpha=-eta / 2).add_(torch.randn_like(x), alpha=sigma)

    variants, skipped = kernel_variants(
        "langevin_step_", device,
        lambda backend: fused(lambda *a, **k: langevin_step_(*a, **k, backend=backend)),
        bytes_moved=3 * item * numel,
        note=f"one pass: reads t and g, writes t ({3 * item} B/elem); the normals are made in "
             f"registers (Philox + Box-Muller), never stored")
    if rows:
        row_variants, row_skipped = kernel_variants(
            "langevin_step_", device,
            lambda backend: fused(lambda *a, **k: langevin_step_(*a, **k, first_row=0,
                                                                 backend=backend)),
            name=lambda backend: f"{backend}, row mode", bytes_moved=3 * item * numel,
            note=f"as the flat kernel ({3 * item} B/elem), each sample's noise from its own "
                 f"row stream (first_row=0)")
        variants += row_variants
        skipped.update(row_skipped)
    variants.append(Variant(
        PLAIN, plain, bytes_moved=10 * item * numel, role="baseline",
        note=f"`x.add_(g + x, alpha=-eta / 2).add_(torch.randn_like(x), alpha=sqrt(eta))` per "
             f"tensor: 4 kernels, 10 passes over N elements = {10 * item} B/elem (g + x: r2 w1; "
             f"add_: r2 w1; randn_like: w1; add_: r2 w1). Noise from torch's generator, not our "
             f"Philox stream"))
    variants.append(Variant(
        "eager reference", fused(langevin_step_reference), role="reference",
        note="`langevin_step_reference`, the specification: Philox4x32-10 in int64 torch ops "
             "(dozens of full-size int64 temporaries), then the update in float32; "
             "compute-bound, bytes not counted"))
    description = (f"{len(shapes)} fp32 tensor(s), {numel:,} elements in all; eta = {eta}, "
                   f"prior weight 1, sigma = sqrt(eta), no clip/clamp. Each variant steps its "
                   f"own copy of the state; the gradients are shared and read-only.")
    return Case(key, title, description, variants, baseline=PLAIN,
                ceiling_numel=numel, device=device, skipped=skipped,
                size=f"{len(shapes)} fp32 tensor(s), {numel:,} elements")


def cifar10_state_shapes(batch: int) -> List[List[int]]:
    """VAEBM's CIFAR-10 chain state: eps_x [B, 3, 32, 32] and 30 groups eps_z [B, 20, 16, 16]."""
    return [[batch, 3, 32, 32]] + [[batch, 20, 16, 16]] * 30


# ------------------------------------------------------------------------------ philox_normal

def philox_case(key: str, numel: int, device: str) -> Case:
    variants, skipped = kernel_variants(
        "philox_normal", device,
        lambda backend: lambda: philox_normal(numel, seed=0, offset=0, device=device,
                                              backend=backend),
        bytes_moved=4 * numel, note="writes 4 B/elem (into a fresh tensor each call)")
    variants.append(Variant(
        "eager reference", lambda: philox_normal(numel, seed=0, offset=0, device=device,
                                                 backend="eager"), role="reference",
        note="`philox_normal_reference`: Philox4x32-10 in int64 torch ops, Box-Muller in "
             "float32; compute-bound, bytes not counted"))
    variants.append(Variant(
        "torch.randn", lambda: torch.randn(numel, device=device), bytes_moved=4 * numel,
        role="baseline",
        note="torch's default generator (a different stream); writes 4 B/elem into a fresh "
             "tensor each call"))
    return Case(key, f"philox_normal, {numel:,} fp32 normals",
                "Standard normals from offset 0 of seed 0's stream (native and eager reference "
                "give the same numbers to ~1e-6).",
                variants, baseline="torch.randn", ceiling_numel=numel, device=device,
                skipped=skipped, size=f"{numel:,} fp32 normals")


# ------------------------------------------------------------------------------ power iteration

def conv_weight_groups(model: torch.nn.Module) -> List[List[torch.Tensor]]:
    """The effective weights W_eff.view(C_out, -1) of ``model``'s WNConv2d layers, grouped by
    matrix shape in order of first appearance (how ``SpectralRegularizer`` groups them)."""
    groups: Dict[tuple, List[torch.Tensor]] = {}
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, WNConv2d):
                w = layer.normalized_weight()
                groups.setdefault((w.shape[0], w[0].numel()), []).append(
                    w.reshape(w.shape[0], -1).clone())
    return list(groups.values())


def power_iteration_case(channels: Optional[int], device: str) -> Case:
    model = official_ebm("cifar32", n_channel=channels).to(device)
    reg = model.spectral
    groups = conv_weight_groups(model)
    shapes = [(len(g), *g[0].shape) for g in groups]
    if shapes != [tuple(s) for s in reg.group_shapes]:
        raise RuntimeError(f"grouping differs from SpectralRegularizer's: {shapes} vs "
                           f"{reg.group_shapes}")
    eps, n_iter = reg.eps, POWER_ITERATIONS
    stacked = [torch.stack(g) for g in groups]  # [G, R, C]
    us = [getattr(reg, f"u_{k}").clone() for k in range(len(groups))]
    vs = [getattr(reg, f"v_{k}").clone() for k in range(len(groups))]
    layers = [(W, u.clone(), v.clone())  # per layer: W [R, C], u [R], v [C]
              for Ws, U, V in zip(stacked, us, vs) for W, u, v in zip(Ws, U, V)]

    def per_layer_loop():
        with torch.no_grad():
            for W, u, v in layers:
                for _ in range(n_iter):
                    v.copy_(F.normalize(torch.mv(W.t(), u), dim=0, eps=eps))
                    u.copy_(F.normalize(torch.mv(W, v), dim=0, eps=eps))
        return [torch.dot(u, torch.mv(W, v)) for W, u, v in layers]

    numel = sum(W.numel() for W in stacked)
    item = stacked[0].element_size()
    passes = 2 * n_iter + 1  # W is read twice per iteration, once more for sigma
    traffic = dict(bytes_moved=passes * item * numel, flops=2 * passes * numel)

    def grouped(backend):
        """spectral_norms on ``backend`` with its own copies of the vectors."""
        own_us, own_vs = [u.clone() for u in us], [v.clone() for v in vs]
        return lambda: spectral_norms(stacked, own_us, own_vs, n_iter, eps, backend=backend)

    variants, skipped = kernel_variants(
        "spectral_norms", device, grouped,
        name=lambda backend: f"{backend} spectral_norms ({len(groups)} groups)",
        bytes_moved=(n_iter + 1) * item * numel, flops=4 * n_iter * numel,
        note=f"W read {n_iter + 1}× (one pass per iteration computes W v and the next W^T u "
             f"from each row while it is in cache, sigma from the last pass), 4 FLOPs per "
             f"weight and fused pass; native: all {len(layers)} matrices in one launch, "
             f"Triton: one launch per shape group")
    variants += [
        Variant(f"eager spectral_norms ({len(groups)} groups)", grouped("eager"), **traffic,
                role="reference",
                note=f"the eager reference, one bmm pair per shape group and iteration; "
                     f"counted: W read {passes}× ({n_iter} iterations × 2 + sigma), vectors "
                     f"ignored"),
        Variant(f"{PLAIN} per-layer loop ({len(layers)} layers)", per_layer_loop, **traffic,
                role="baseline",
                note="the same maths with torch.mv per layer; same bytes and FLOPs"),
    ]
    description = (f"{n_iter} power iterations + sigma on the {len(layers)} WNConv2d weights of "
                   f"official_ebm('cifar32'"
                   f"{'' if channels is None else f', n_channel={channels}'}), "
                   f"{numel:,} fp32 weights in {len(groups)} shape groups "
                   f"[G, R, C] = {', '.join(str(list(s)) for s in shapes)}. Weights are "
                   f"stacked once beforehand (not timed), no autograd. W is re-read "
                   f"{2 * n_iter + 1}×: if it fits in the last-level cache, those re-reads can "
                   f"beat the streaming copy_ ceiling.")
    return Case("power_iteration_cifar32", "power iteration, CIFAR-32 EBM spectral regulariser",
                description, variants, baseline=variants[-1].name, ceiling_numel=numel,
                device=device, skipped=skipped,
                size=f"{len(layers)} weights, {numel:,} fp32 in {len(groups)} shape groups, "
                     f"{n_iter} iterations")


# ------------------------------------------------------------------------------ swish

def swish_case(key: str, numel: int, device: str) -> Case:
    """Swish forward + backward (dy -> dx) on one fp32 tensor: native op vs eager expressions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen).to(device).requires_grad_()
    g = torch.randn(numel, generator=gen).to(device)
    item = x.element_size()

    def fwd_bwd(fn):
        def call():
            return torch.autograd.grad(fn(x), x, g)
        return call

    variants, skipped = kernel_variants(
        "swish", device, lambda backend: fwd_bwd(lambda t: swish(t, backend=backend)),
        bytes_moved=5 * item * numel,
        note=f"swish_forward (reads x, writes y) + swish_backward (reads g and x, writes dx): "
             f"{5 * item} B/elem; autograd saves only x, the sigmoid is recomputed")
    variants.append(Variant(
        PLAIN, fwd_bwd(lambda t: t * torch.sigmoid(t)), role="baseline",
        note="`x * torch.sigmoid(x)`, as the formula reads (also the eager reference's "
             "maths): saves x and sigmoid(x); several kernels each way, bytes not counted"))
    variants.append(Variant(
        "F.silu", fwd_bwd(F.silu), bytes_moved=5 * item * numel, role="baseline",
        note="torch's fused SiLU (same maths, scale 1), counted like native"))
    return Case(key, f"swish forward + backward, one fp32 tensor of {numel:,}",
                "y = x * sigmoid(x), then dx = torch.autograd.grad(y, x, g); one call does both.",
                variants, baseline=PLAIN, ceiling_numel=numel, device=device,
                skipped=skipped, size=f"one fp32 tensor of {numel:,}")


# ------------------------------------------------------------------------------ epilogues

def epilogue_case(key: str, shape: Sequence[int], device: str) -> Case:
    """One fused epilogue, forward + backward (all input gradients), native vs plain PyTorch.

    ``key`` picks the op: ``ebm_block_tail`` (with 2x2 pooling: the EBM's downsampling blocks),
    ``nvae_cell_tail`` (with the SE gate) or ``affine_swish`` (BN-Swish in eval mode).
    """
    gen = torch.Generator().manual_seed(0)
    B, C, H, W = shape

    def randn(*size, grad=True):
        return torch.randn(*size, generator=gen).to(device).requires_grad_(grad)

    if key == "ebm_block_tail":
        inputs = (randn(*shape), randn(*shape))
        out_grad = randn(B, C, H // 2, W // 2, grad=False)

        def call(backend):
            return ebm_block_tail(*inputs, downsample=True, backend=backend)

        bytes_fused = (2 + 2 / 4 + 2 / 4 + 1) * 4  # fwd: h, skip -> out, pre (1/4 size); bwd:
        # grad, pre (1/4 size) -> d
        what = "lip_swish(avg_pool2d(h + skip, 2))"
    elif key == "nvae_cell_tail":
        inputs = (randn(*shape), randn(*shape), randn(B, C).sigmoid().detach().requires_grad_())
        out_grad = randn(*shape, grad=False)

        def call(backend):
            return nvae_cell_tail(*inputs, scale=0.1, backend=backend)

        bytes_fused = (3 + 3) * 4  # fwd: skip, h -> out; bwd: grad, h -> dh (dskip = grad)
        what = "skip + 0.1 * h * gate[:, :, None, None]"
    elif key == "affine_swish":
        inputs = (randn(*shape), randn(C), randn(C))
        out_grad = randn(*shape, grad=False)

        def call(backend):
            return affine_swish(*inputs, backend=backend)

        bytes_fused = (2 + 3) * 4  # fwd: x -> out; bwd: grad, x -> dx (+ per-channel sums)
        what = "swish(x * scale[c] + shift[c]) (BatchNorm folded, eval mode)"
    else:
        raise ValueError(f"unknown epilogue {key!r}")
    numel = math.prod(shape)

    def fwd_bwd(backend):
        return lambda: torch.autograd.grad(call(backend), inputs, out_grad)

    variants, skipped = kernel_variants(
        key, device, fwd_bwd, bytes_moved=int(bytes_fused * numel),
        note="one kernel each way; autograd saves only what the backward reads")
    variants.append(Variant(PLAIN, fwd_bwd("eager"), role="baseline",
                            note="the expression in torch ops, as the model computed it before "
                                 "the fused op (it is also the op's eager reference); several "
                                 "kernels each way, bytes not counted"))
    return Case(key, f"{key} forward + backward, {list(shape)} fp32", f"{what}; "
                f"torch.autograd.grad with a random output gradient.", variants,
                baseline=PLAIN, ceiling_numel=numel, device=device, skipped=skipped,
                size=f"{list(shape)} fp32")


# ------------------------------------------------------------------------------ replay_gather

def replay_case(rows: int, batch: int, device: str) -> Case:
    """Start states of a batch of persistent chains: gather rows, fresh noise where flagged."""
    shape = (3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    buffer = torch.randn(rows, *shape, generator=gen).to(device)
    index = torch.randint(rows, (batch,), generator=gen).to(device)
    reinit = (torch.rand(batch, generator=gen) < REINIT_PROB).to(device)
    numel, item = batch * math.prod(shape), buffer.element_size()

    def eager():
        fresh = torch.randn(batch, *shape, device=device)
        return torch.where(reinit.view(-1, 1, 1, 1), fresh, buffer.index_select(0, index))

    variants, skipped = kernel_variants(
        "replay_gather", device,
        lambda backend: lambda: replay_gather(buffer, index, reinit, seed=0, offset=0,
                                              backend=backend),
        bytes_moved=2 * item * numel,
        note=f"one pass: reads a kept row or makes a fresh one in registers, writes the batch "
             f"({2 * item} B/elem at most); no host sync")
    variants.append(Variant(
        PLAIN, eager, bytes_moved=6 * item * numel, role="baseline",
        note=f"`torch.where(reinit, torch.randn(...), buffer.index_select(0, index))`: randn "
             f"(w1), index_select (r1 w1), where (r2 w1) = {6 * item} B/elem; torch's "
             f"generator, not our stream"))
    return Case("replay_gather_cifar10",
                f"replay_gather, {batch} chains of [3, 32, 32] from {rows:,}",
                f"A pixel-space EBM's start states: rows gathered from the buffer, "
                f"{REINIT_PROB:.0%} of them fresh N(0, 1) noise (the same reinit mask each call).",
                variants, baseline=PLAIN, ceiling_numel=numel, device=device,
                skipped=skipped, size=f"{batch} × [3, 32, 32] from {rows:,} rows")


# ------------------------------------------------------------------------------ main

# The cases: key -> (one line for --list, builder(sizes, device) -> Case). Nothing is built
# before a case is chosen; keys do not depend on the sizes.
CASES: Dict[str, Tuple[str, Callable[[dict, str], Case]]] = {
    "langevin_flat": ("langevin_step_ on one fp32 tensor (16M; quick 64K)",
                      lambda z, d: langevin_case(
                          "langevin_flat", f"langevin_step_, one fp32 tensor of {z['numel']:,}",
                          [[z["numel"]]], d)),
    "langevin_cifar10": ("langevin_step_ on the CIFAR-10 VAEBM state (31 tensors, batch 32)",
                         lambda z, d: langevin_case(
                             "langevin_cifar10", f"langevin_step_, CIFAR-10 VAEBM state "
                             f"(batch {z['batch']}, 31 tensors)",
                             cifar10_state_shapes(z["batch"]), d, rows=True)),
    "philox_normal": ("philox_normal vs torch.randn (16M normals)",
                      lambda z, d: philox_case("philox_normal", z["numel"], d)),
    "power_iteration_cifar32": ("spectral_norms over the CIFAR-32 EBM's conv weights vs a "
                                "per-layer loop",
                                lambda z, d: power_iteration_case(z["ebm_channels"], d)),
    "swish": ("swish forward + backward vs x * sigmoid(x) and F.silu (16M)",
              lambda z, d: swish_case("swish", z["numel"], d)),
    "ebm_block_tail": ("fused EBM block tail (add, 2x2 pool, LipSwish), fwd + bwd",
                       lambda z, d: epilogue_case("ebm_block_tail", z["epilogue_shape"], d)),
    "nvae_cell_tail": ("fused NVAE cell tail (SE-gated residual), fwd + bwd",
                       lambda z, d: epilogue_case("nvae_cell_tail", z["epilogue_shape"], d)),
    "affine_swish": ("fused BN-Swish (eval mode), fwd + bwd",
                     lambda z, d: epilogue_case("affine_swish", z["epilogue_shape"], d)),
    "replay_gather_cifar10": ("replay_gather: IGEBM start states from a replay buffer",
                              lambda z, d: replay_case(z["replay_rows"], z["replay_batch"], d)),
}
PROG = "vaebm-fast bench ops"


def catalogue() -> List[Tuple[str, str]]:
    """[(key, description)] of every case, for --list and the --only check."""
    return [(key, description) for key, (description, _) in CASES.items()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_run_arguments(parser, "default 15; quick 3")
    return parser


def main(argv=None) -> Dict[str, object]:
    """Run the chosen cases; returns the paths written ({} without --out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        print_catalogue(catalogue())
        return {}
    keys = select_keys(PROG, catalogue(), args.only)  # before anything is built
    sizes, timing = (QUICK, dict(TIMING_QUICK)) if args.quick else (FULL, dict(TIMING_FULL))
    if args.repeats is not None:
        timing["repeats"] = args.repeats
    if args.threads is not None and args.threads < 1:
        usage_error(PROG, f"--threads must be >= 1 (got {args.threads})")
    with torch_threads(args.threads):
        recorder = Recorder("ops", args.device, args.out, f"{PROG} {shlex.join(argv)}", args.note,
                            label="bench ops")
        for key in keys:
            case = CASES[key][1](sizes, args.device)  # one case's tensors alive at a time
            print(f"[bench ops] {case.title} ...", file=sys.stderr, flush=True)
            recorder.add(run_case(case, **timing))
            del case
        return recorder.finish()


if __name__ == "__main__":
    main()
