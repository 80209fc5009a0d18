"""CUDA-graph and side-stream check of every op and of FastSampler chains on image models.

    python3 scripts/gpu_graph_check.py --out DIR [--device cuda|cpu]

For each op and each kernel backend that can run on the device (native, triton):

* ``eager``: the op once, the result kept as the expected value;
* ``stream``: the same call on a side stream must give the same result;
* ``graph``: the call captured in a ``torch.cuda.CUDAGraph`` (after a warm-up on a side stream,
  as PyTorch documents) and replayed must give the same result.

Then FastSampler chains (NVAE ``tiny`` generator, small ResNet energy, every space, TF32 off):
the captured chain must be taken (``last_path == "graph"``, no warning) and match the eager
LangevinSampler; a second ``sample`` (a replay) must match the first.

On the CPU (``--device cpu``, the dry run CI runs) only the ``eager`` parts run, through the
same code; capture checks are reported as skipped. Writes ``graph_check.json`` to DIR and
prints one line per check; exits 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from vaebm_fast import FastSampler, LangevinSampler, ops
from vaebm_fast.models import HierarchicalVAE, small_image_ebm

KERNEL_BACKENDS = ("native", "triton")


def clone_all(out):
    """Detached copies of a tensor / list of tensors (a graph's outputs are overwritten)."""
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    return [t.detach().clone() for t in out if isinstance(t, torch.Tensor)]


def same(a, b, rtol, atol) -> str | None:
    """None when the lists match, else what differs."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} outputs"
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"output {i}: {tuple(x.shape)}/{x.dtype} vs {tuple(y.shape)}/{y.dtype}"
        if not torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol, equal_nan=True):
            err = (x.double() - y.double()).abs().max().item()
            return f"output {i}: max abs difference {err:.3g}"
    return None


class OpCase:
    """An op call on fixed inputs. ``reset()`` restores the inputs an in-place op changes;
    ``call()`` returns the tensors to compare."""

    def __init__(self, name, call, reset=lambda: None, rtol=1e-5, atol=1e-6):
        self.name, self.call, self.reset = name, call, reset
        self.rtol, self.atol = rtol, atol


def op_cases(backend: str, device: str):
    """One OpCase per op on ``backend`` (fp32, odd sizes, autograd where the op has it)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    cases = []
    # philox_normal: a fresh output per call.
    cases.append(OpCase("philox_normal", lambda: ops.philox_normal(
        10_007, seed=3, offset=5, device=device, backend=backend)))

    # langevin_step_: in place on 3 tensors, with clip, clamp and the half-norm output.
    start = [randn(7, 5, 3), randn(7, 11), randn(7)]
    grads = [randn(*t.shape) for t in start]
    xs = [t.clone() for t in start]
    hsn = torch.empty(7, device=device)

    def langevin_reset():
        for x, s in zip(xs, start):
            x.copy_(s)

    def langevin_call():
        ops.langevin_step_(xs, grads, step_size=0.01, seed=7, offset=123, grad_clip=0.5,
                           clamp=(-2.0, 2.0), half_sq_norm=hsn, backend=backend)
        return xs + [hsn]
    cases.append(OpCase("langevin_step_", langevin_call, langevin_reset))

    # swish / lip_swish forward + backward.
    x = randn(3, 5, 7, 9, grad=True)
    dy = randn(3, 5, 7, 9)
    for name, fn in (("swish", ops.swish), ("lip_swish", ops.lip_swish)):
        cases.append(OpCase(name, lambda fn=fn: [fn(x, backend=backend)]
                            + list(torch.autograd.grad(fn(x, backend=backend), x, dy))))

    # The epilogues, forward + backward.
    h, skip = randn(2, 6, 10, 14, grad=True), randn(2, 6, 10, 14, grad=True)
    for down in (False, True):
        shape = (2, 6, 5, 7) if down else (2, 6, 10, 14)
        dout = randn(*shape)

        def tail(down=down, dout=dout):
            out = ops.ebm_block_tail(h, skip, downsample=down, backend=backend)
            return [out] + list(torch.autograd.grad(out, (h, skip), dout))
        cases.append(OpCase(f"ebm_block_tail(downsample={down})", tail))
    gate = torch.rand(2, 6, generator=g).to(device).requires_grad_()
    dcell = randn(2, 6, 10, 14)

    def cell():
        out = ops.nvae_cell_tail(skip, h, gate, scale=0.1, backend=backend)
        return [out] + list(torch.autograd.grad(out, (skip, h, gate), dcell))
    cases.append(OpCase("nvae_cell_tail", cell))
    scale, shift = randn(6, grad=True), randn(6, grad=True)

    def affine():
        out = ops.affine_swish(h, scale, shift, backend=backend)
        return [out] + list(torch.autograd.grad(out, (h, scale, shift), dcell))
    cases.append(OpCase("affine_swish", affine, rtol=1e-4, atol=1e-5))

    # spectral_norms: u, v updated in place.
    Ws = [randn(3, 17, 33), randn(2, 8, 5)]
    us0 = [torch.nn.functional.normalize(randn(3, 17), dim=1),
           torch.nn.functional.normalize(randn(2, 8), dim=1)]
    vs0 = [torch.nn.functional.normalize(randn(3, 33), dim=1),
           torch.nn.functional.normalize(randn(2, 5), dim=1)]
    us, vs = [u.clone() for u in us0], [v.clone() for v in vs0]

    def power_reset():
        for a, b in zip(us + vs, us0 + vs0):
            a.copy_(b)

    def power():
        sig = ops.spectral_norms(Ws, us, vs, 4, 1e-3, backend=backend)
        return list(sig) + us + vs
    cases.append(OpCase("spectral_norms", power, power_reset, rtol=1e-4, atol=1e-5))

    # replay_gather (fresh output) and replay_scatter_ (in place).
    buffer0 = randn(37, 3, 5, 5)
    index = torch.tensor([4, 0, 36, 4, 11], device=device)
    reinit = torch.tensor([False, True, False, False, True], device=device)
    cases.append(OpCase("replay_gather", lambda: [ops.replay_gather(
        buffer0, index, reinit, seed=1, offset=9, backend=backend)[0]]))
    buffer = buffer0.clone()
    rows = randn(3, 3, 5, 5)
    where = torch.tensor([2, 30, 7], device=device)

    def scatter():
        ops.replay_scatter_(buffer, where, rows, backend=backend)
        return [buffer]
    cases.append(OpCase("replay_scatter_", scatter, lambda: buffer.copy_(buffer0)))
    return cases


def run_op_case(case: OpCase, device: str) -> dict:
    case.reset()
    expected = clone_all(case.call())
    result = {"eager": "pass"}
    if device != "cuda":
        result["stream"] = result["graph"] = "skipped: needs CUDA"
        return result
    torch.cuda.synchronize()
    # A side stream.
    case.reset()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = clone_all(case.call())
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    diff = same(got, expected, case.rtol, case.atol)
    result["stream"] = "pass" if diff is None else f"FAIL: {diff}"
    # Capture: warm up on a side stream, capture, replay.
    case.reset()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        case.call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    case.reset()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        static = case.call()
    case.reset()
    graph.replay()
    torch.cuda.synchronize()
    diff = same(clone_all(static), expected, case.rtol, case.atol)
    result["graph"] = "pass" if diff is None else f"FAIL: {diff}"
    return result


def image_models(device: str):
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny")
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    energy = small_image_ebm(in_channels=1, n_channel=8)
    return vae.to(device), energy.to(device)


def chain_check(space: str, device: str) -> str:
    vae, energy = image_models(device)
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=1e-3, n_steps=4, data_shape=tuple(vae.data_shape))
    a = LangevinSampler(energy, gen, **kw).sample(6, seed=1, return_chain=True, device=device)
    fast = FastSampler(energy, gen, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = fast.sample(6, seed=1, return_chain=True, device=device)
        c = fast.sample(6, seed=1, return_chain=True, device=device)
    want = "graph" if device == "cuda" else "fast"
    if fast.last_path != want:
        return f"FAIL: path {fast.last_path!r}, expected {want!r}"
    problems = []
    for label, other in (("eager vs first", b), ("first vs replay", c)):
        ref = a if label.startswith("eager") else b
        diff = same([ref.x, ref.energies] + list(ref.states),
                    [other.x, other.energies] + list(other.states), 1e-4, 1e-4)
        if diff:
            problems.append(f"{label}: {diff}")
    return "pass" if not problems else "FAIL: " + "; ".join(problems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for graph_check.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        # Same samples as the eager sampler need exact fp32 convolutions.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    report, failures = {"device": args.device, "ops": {}, "chains": {}}, 0
    for backend in KERNEL_BACKENDS:
        why = ops.backend_availability("swish", args.device)[backend]
        if why is not None:
            report["ops"][backend] = f"skipped: {why}"
            print(f"SKIP ops[{backend}]: {why}", flush=True)
            continue
        try:
            cases = op_cases(backend, args.device)
        except Exception as exc:  # a report, not a crash
            report["ops"][backend] = f"FAIL building inputs: {exc!r}"
            failures += 1
            continue
        for case in cases:
            t0 = time.perf_counter()
            try:
                res = run_op_case(case, args.device)
            except Exception as exc:
                res = {"error": f"FAIL: {type(exc).__name__}: {exc}"}
                traceback.print_exc()
            key = f"{case.name}[{backend}]"
            report["ops"][key] = res
            bad = [k for k, v in res.items() if str(v).startswith("FAIL")]
            failures += bool(bad)
            print(f"{'FAIL' if bad else 'ok  '} {key}: {res} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    for space in ("eps", "latent", "data"):
        t0 = time.perf_counter()
        try:
            res = chain_check(space, args.device)
        except Exception as exc:
            res = f"FAIL: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        report["chains"][space] = res
        failures += res.startswith("FAIL")
        print(f"{'FAIL' if res.startswith('FAIL') else 'ok  '} chain[{space}]: {res} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    report["failures"] = failures
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph_check.json").write_text(json.dumps(report, indent=1))
    print(f"graph check: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
