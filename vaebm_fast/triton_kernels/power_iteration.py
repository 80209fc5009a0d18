"""Triton power iteration: ``vaebm_fast_triton::power_iteration_`` and ``::spectral_norms_``.

Same contract as the native ops (schemas in csrc/ops.cpp) and the eager reference
``_power_iteration_eager`` in ``vaebm_fast/ops/power_iteration.py``: for each matrix W [R, C]
of a group W [G, R, C], with u [G, R] and v [G, C] updated in place, ``n_iter`` times

    v <- normalize(W^T u),   u <- normalize(W v),   normalize(x) = x / max(||x||_2, eps),

then sigma = u^T W v, [G]. ``spectral_norms_`` returns the sigmas of its K groups concatenated,
[G_1 + ... + G_K], as the native op does. Sigma has no graph: the wrapper in
``vaebm_fast.ops.power_iteration`` attaches d sigma / d W = u v^T.

Kernel: one program per matrix (grid = (G,)); the program loops over the ``n_iter`` iterations
itself, so a whole group is one launch. ``spectral_norms_`` launches once per shape group (K
launches for K groups; for the CIFAR-32 EBM, 7): a single launch over groups of different
shapes would need per-program shape tables and tile sizes, and K small launches cost less than
the iterations they run.

Each matrix-vector product is a tiled loop, ``_matvec``: out = A x for A = W (rows out) or
A = W^T (columns out), reading [BLOCK_OUT, BLOCK_IN] tiles of W through its strides and
reducing over the input axis; the unnormalised result is written to u or v and its squared
norm accumulated, then a second short loop scales it by 1 / max(norm, eps). Memory traffic per
matrix: W is read 2 n_iter + 1 times (twice per iteration, once for sigma), like the reference,
each read of a [R, C] matrix tile by tile; u and v are read and written O(n_iter) times (they
stay in L1/L2). Accumulation is in W's dtype (float32 or float64).

Within a program, values stored to u / v are read back by other threads of the same program,
so a ``tl.debug_barrier()`` separates the phases.
"""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .philox import from_f64_bits

__all__ = ["power_iteration_", "spectral_norms_"]

_MAX_BLOCK_OUT = 32
_MAX_BLOCK_IN = 128


@triton.jit
def _matvec(A, x, out, n_out, n_in, s_out, s_in, s_x, s_o,
            BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, STORE: tl.constexpr):
    """y = A x with y[o] = sum_i A[o * s_out + i * s_in] x[i * s_x], o < n_out.

    STORE: write y[o] to out[o * s_o] and return ||y||^2. Otherwise return out . y (out read
    with stride s_o, nothing written): u^T (W v) for sigma.
    """
    result = tl.sum(tl.zeros([BLOCK_OUT], dtype=A.dtype.element_ty), axis=0)
    for o0 in range(0, n_out, BLOCK_OUT):
        rows = o0 + tl.arange(0, BLOCK_OUT)
        row_ok = rows < n_out
        acc = tl.zeros([BLOCK_OUT, BLOCK_IN], dtype=A.dtype.element_ty)
        for i0 in range(0, n_in, BLOCK_IN):
            cols = i0 + tl.arange(0, BLOCK_IN)
            col_ok = cols < n_in
            tile = tl.load(A + rows[:, None] * s_out + cols[None, :] * s_in,
                           mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tile * tl.load(x + cols * s_x, mask=col_ok, other=0.0)[None, :]
        y = tl.sum(acc, axis=1)
        if STORE:
            tl.store(out + rows * s_o, y, mask=row_ok)
            result += tl.sum(y * y)
        else:
            result += tl.sum(y * tl.load(out + rows * s_o, mask=row_ok, other=0.0))
    return result


@triton.jit
def _scale(x, n, s_x, factor, BLOCK: tl.constexpr):
    """x[i * s_x] *= factor for i < n."""
    for i0 in range(0, n, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        ok = idx < n
        tl.store(x + idx * s_x, tl.load(x + idx * s_x, mask=ok) * factor, mask=ok)


@triton.jit
def _clamp_norm(sq, eps):
    """max(sqrt(sq), eps), NaN kept (as torch's clamp_min): tl.maximum would return eps for a
    NaN norm and turn a diverged weight's vectors finite."""
    norm = tl.sqrt(sq)
    return tl.where(norm != norm, norm, tl.maximum(norm, eps))


@triton.jit(do_not_specialize=["eps_lo", "eps_hi"])
def _power_iteration_kernel(W, u, v, sigma, R, C, s_wg, s_wr, s_wc, s_ug, s_ur, s_vg, s_vc,
                            n_iter, eps_lo: tl.int32, eps_hi: tl.int32, BLOCK_R: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    # eps as its float64 bit pattern (a plain Python float would arrive as float32).
    eps = from_f64_bits(eps_lo, eps_hi).to(W.dtype.element_ty)
    g = tl.program_id(0).to(tl.int64)
    W += g * s_wg
    u += g * s_ug
    v += g * s_vg
    for _ in range(n_iter):
        # v = normalize(W^T u): outputs along C (stride s_wc), inputs along R.
        sq = _matvec(W, u, v, C, R, s_wc, s_wr, s_ur, s_vc, BLOCK_C, BLOCK_R, True)
        tl.debug_barrier()
        _scale(v, C, s_vc, 1.0 / _clamp_norm(sq, eps), BLOCK_C)
        tl.debug_barrier()
        # u = normalize(W v): outputs along R, inputs along C.
        sq = _matvec(W, v, u, R, C, s_wr, s_wc, s_vc, s_ur, BLOCK_R, BLOCK_C, True)
        tl.debug_barrier()
        _scale(u, R, s_ur, 1.0 / _clamp_norm(sq, eps), BLOCK_R)
        tl.debug_barrier()
    # sigma = u^T (W v): one more pass over W.
    tl.store(sigma + g, _matvec(W, v, u, R, C, s_wr, s_wc, s_vc, s_ur, BLOCK_R, BLOCK_C, False))


def _check_vectors(u: Tensor, v: Tensor) -> None:
    """Each program writes its own rows of u and v while reading the other: rows sharing
    memory, or u overlapping v, would race."""
    _launch.no_internal_overlap("power_iteration_", "u", u)
    _launch.no_internal_overlap("power_iteration_", "v", v)
    if torch._C._overlaps(u, v):
        raise RuntimeError("power_iteration_: u and v are sharing memory; pass separate "
                           "tensors")


def _check(W: Tensor, u: Tensor, v: Tensor, n_iter: int) -> None:
    torch._check(W.dim() == 3, lambda: f"W must be [G, R, C], got {tuple(W.shape)}")
    G, R, C = W.shape
    torch._check(tuple(u.shape) == (G, R), lambda: f"u must be [G, R], got {tuple(u.shape)}")
    torch._check(tuple(v.shape) == (G, C), lambda: f"v must be [G, C], got {tuple(v.shape)}")
    torch._check(W.dtype in (torch.float32, torch.float64) and u.dtype == W.dtype
                 and v.dtype == W.dtype,
                 lambda: f"W, u, v must be all float32 or all float64, got {W.dtype}, "
                         f"{u.dtype}, {v.dtype}")
    torch._check(n_iter >= 0, lambda: f"n_iter must be >= 0, got {n_iter}")
    _check_vectors(u, v)


def _run_group(W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float,
               sigma: Tensor) -> Tensor:
    """Power-iterate one group W [G, R, C] (u [G, R], v [G, C] in place) into sigma [G]."""
    _check(W, u, v, n_iter)
    G, R, C = W.shape
    if G > 0:
        block_r = min(_MAX_BLOCK_OUT, triton.next_power_of_2(max(R, 1)))
        block_c = min(_MAX_BLOCK_IN, triton.next_power_of_2(max(C, 1)))
        _power_iteration_kernel[(G,)](W, u, v, sigma, R, C, *W.stride(), *u.stride(),
                                      *v.stride(), n_iter, *_launch.f64_args(eps),
                                      BLOCK_R=block_r,
                                      BLOCK_C=block_c)
    return sigma


@_launch.on_tensor_device
def power_iteration_(W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float) -> Tensor:
    """W [G, R, C], u [G, R], v [G, C] (updated in place) -> sigma [G]; one launch."""
    return _run_group(W, u, v, n_iter, eps, W.new_empty(W.shape[0]))



@_launch.on_tensor_device
def spectral_norms_(Ws: List[Tensor], us: List[Tensor], vs: List[Tensor], n_iter: int,
                    eps: float) -> Tensor:
    """K groups Ws[k] [G_k, R_k, C_k] with us[k], vs[k] in place -> the K sigmas concatenated,
    [G_1 + ... + G_K] (like the native op: a mutating op returning a list could not be
    functionalized); one launch per group."""
    torch._check(len(Ws) == len(us) == len(vs) and len(Ws) > 0,
                 lambda: f"need one u and one v per group and at least one group, got "
                         f"{len(Ws)}, {len(us)}, {len(vs)}")
    torch._check(all(W.dtype == Ws[0].dtype for W in Ws),
                 lambda: "spectral_norms_: every group must have one dtype")
    for W, u, v in zip(Ws, us, vs):  # every group, before any is written
        _check(W, u, v, n_iter)
    sigma = Ws[0].new_empty(sum(W.shape[0] for W in Ws))
    for W, u, v, out in zip(Ws, us, vs, sigma.split([W.shape[0] for W in Ws])):
        _run_group(W, u, v, n_iter, eps, out)
    return sigma
