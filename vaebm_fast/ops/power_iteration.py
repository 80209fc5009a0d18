"""Batched power iteration for the spectral regulariser (eager reference).

For a group of G same-shaped matrices W [G, R, C] with running left/right vectors
u [G, R] and v [G, C], one iteration is

    v <- normalize(u^T W),   u <- normalize(W v),   normalize(x) = x / max(||x||_2, eps),

(``torch.nn.functional.normalize`` semantics with eps = 1e-3, as in the official VAEBM code),
and the estimate of the largest singular value is sigma = u^T W v.

u and v are updated in place and never carry gradients; sigma is differentiable with respect
to W only (d sigma / d W = u v^T with u, v treated as constants), which is the gradient the
official regulariser uses.

This module is the specification: native kernels may replace the body of
:func:`power_iteration_` / :func:`spectral_norms` behind the same signatures.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["power_iteration_", "spectral_norms", "DEFAULT_EPS"]

DEFAULT_EPS = 1e-3
_BACKENDS = ("auto", "eager")


def _check_group(W: Tensor, u: Tensor, v: Tensor, where: str = "") -> None:
    if W.dim() != 3:
        raise ValueError(f"{where}W must be [G, R, C], got shape {tuple(W.shape)}")
    G, R, C = W.shape
    if tuple(u.shape) != (G, R):
        raise ValueError(f"{where}u must be [G, R] = {(G, R)} for W {tuple(W.shape)}, "
                         f"got {tuple(u.shape)}")
    if tuple(v.shape) != (G, C):
        raise ValueError(f"{where}v must be [G, C] = {(G, C)} for W {tuple(W.shape)}, "
                         f"got {tuple(v.shape)}")
    for name, t in (("u", u), ("v", v)):
        if t.device != W.device or t.dtype != W.dtype:
            raise ValueError(f"{where}{name} is {t.dtype} on {t.device} but W is "
                             f"{W.dtype} on {W.device}")
        if t.requires_grad:
            raise ValueError(f"{where}{name} must not require grad (it is updated in place)")


def _check_n_iter(n_iter: int) -> None:
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative int, got {n_iter!r}")


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(_BACKENDS)}")


def _power_iteration_eager(W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float) -> Tensor:
    with torch.no_grad():
        W_const = W.detach()
        for _ in range(n_iter):
            # v = u^T W: [G,1,R] @ [G,R,C] -> [G,C].  u = W v, computed as the row vector
            # v^T W^T: [G,1,C] @ [G,C,R] -> [G,R]; on the CPU, bmm with a [G,C,1] column
            # vector is ~10x slower than this form (benchmarks/results/ops_cpu.md).
            v.copy_(F.normalize(torch.bmm(u.unsqueeze(1), W_const).squeeze(1), dim=1, eps=eps))
            u.copy_(F.normalize(torch.bmm(v.unsqueeze(1), W_const.transpose(1, 2)).squeeze(1),
                                dim=1, eps=eps))
        # Snapshots: the backward of sigma needs u and v as they are now, and the caller's
        # buffers will be overwritten in place by the next call, possibly before backward.
        u_now, v_now = u.clone(), v.clone()
    return torch.einsum("gr,grc,gc->g", u_now, W, v_now)


def power_iteration_(W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float = DEFAULT_EPS,
                     *, backend: str = "auto") -> Tensor:
    """Run ``n_iter`` power iterations on a group of matrices; return their spectral norms.

    Args:
        W: [G, R, C] matrices (may require grad).
        u: [G, R] left vectors, updated in place (no grad).
        v: [G, C] right vectors, updated in place (no grad).
        n_iter: iterations (0 just evaluates sigma with the current u, v).
        eps: lower bound on the norm in ``normalize``.
        backend: "auto" or "eager" (the only one so far).

    Returns:
        sigma: [G], sigma[g] = u[g]^T W[g] v[g], differentiable w.r.t. W only.
    """
    _check_group(W, u, v)
    _check_n_iter(n_iter)
    _check_backend(backend)
    return _power_iteration_eager(W, u, v, n_iter, eps)


def spectral_norms(weights_by_group: Sequence[Tensor], us: Sequence[Tensor],
                   vs: Sequence[Tensor], n_iter: int, eps: float = DEFAULT_EPS,
                   *, backend: str = "auto") -> list[Tensor]:
    """:func:`power_iteration_` over every shape group of a model in one call.

    Args:
        weights_by_group: K tensors, the k-th [G_k, R_k, C_k].
        us, vs: K tensors each, [G_k, R_k] and [G_k, C_k], updated in place.
        n_iter, eps, backend: as for :func:`power_iteration_`.

    Returns:
        K tensors, the k-th sigma_k [G_k].
    """
    if not (len(weights_by_group) == len(us) == len(vs)):
        raise ValueError(f"need one u and one v per weight group, got {len(weights_by_group)} "
                         f"groups, {len(us)} u's and {len(vs)} v's")
    for k, (W, u, v) in enumerate(zip(weights_by_group, us, vs)):
        _check_group(W, u, v, where=f"group {k}: ")
    _check_n_iter(n_iter)
    _check_backend(backend)
    return [_power_iteration_eager(W, u, v, n_iter, eps)
            for W, u, v in zip(weights_by_group, us, vs)]
