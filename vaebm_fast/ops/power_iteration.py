"""Batched power iteration for the spectral regulariser: eager reference and kernel dispatch.

For a group of G same-shaped matrices W [G, R, C] with running left/right vectors
u [G, R] and v [G, C], one iteration is

    v <- normalize(u^T W),   u <- normalize(W v),   normalize(x) = x / max(||x||_2, eps),

(``torch.nn.functional.normalize`` semantics with eps = 1e-3, as in the official VAEBM code),
and the estimate of the largest singular value is sigma = u^T W v.

u and v are updated in place and never carry gradients; sigma is differentiable with respect
to W only (d sigma / d W = u v^T with u, v treated as constants), which is the gradient the
official regulariser uses.

Backends (see ``_dispatch``): ``"eager"`` is :func:`_power_iteration_eager` below, the
specification; ``"native"`` runs ``torch.ops.vaebm_fast.power_iteration_`` /
``spectral_norms_`` (csrc/power_iteration/cpu.cpp: W read n_iter + 1 times instead of
2 n_iter + 1, all matrices of all groups in one parallel region); ``"triton"`` runs
``torch.ops.vaebm_fast_triton.*`` (vaebm_fast/triton_kernels/power_iteration.py). The kernels
take float32 and float64; ``"auto"`` uses the reference for other dtypes. The kernels return
sigma without a graph; the wrappers here attach d sigma / d W = u v^T (u, v snapshots taken
after the iterations) with :class:`_SigmaFromVectors`, so every backend has the same gradient.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernel_rules import elements_share_memory
from ..validation import check_int, check_real, explain
from . import _dispatch, _library

__all__ = ["power_iteration_", "spectral_norms", "DEFAULT_EPS"]

DEFAULT_EPS = 1e-3
_KERNEL_DTYPES = (torch.float32, torch.float64)

# "auto": the kernels first (measured: benchmarks/results/auto_choices_cpu.md).
_dispatch.register_op("power_iteration_", native="vaebm_fast::power_iteration_", triton=True)
_dispatch.register_op("spectral_norms", native="vaebm_fast::spectral_norms_", triton=True)


# ------------------------------------------------------------------------- validation

def _check_group(W, u, v, where: str = "") -> None:
    """One group: W [G, R, C] floating, u [G, R], v [G, C] of W's dtype and device, u and v not
    requiring grad (they are written in place) and not sharing memory."""
    for name, t in (("W", W), ("u", u), ("v", v)):
        torch._check_type(isinstance(t, Tensor), explain(
            where, name, " must be a torch.Tensor (got ", type(t).__name__, ")"))
    torch._check_value(W.dim() == 3, explain(where, "W must be [G, R, C], got shape ",
                                             tuple(W.shape)))
    torch._check_value(W.is_floating_point(), explain(
        where, "W must be a floating tensor (got ", W.dtype, "); convert it with .float()"))
    G, R, C = W.shape
    torch._check_value(tuple(u.shape) == (G, R), explain(
        where, "u must be [G, R] = ", (G, R), " for W ", tuple(W.shape), ", got ",
        tuple(u.shape)))
    torch._check_value(tuple(v.shape) == (G, C), explain(
        where, "v must be [G, C] = ", (G, C), " for W ", tuple(W.shape), ", got ",
        tuple(v.shape)))
    for name, t in (("u", u), ("v", v)):
        torch._check_value(t.device == W.device and t.dtype == W.dtype, explain(
            where, name, " is ", t.dtype, " on ", t.device, " but W is ", W.dtype, " on ",
            W.device))
        torch._check_value(not t.requires_grad, explain(
            where, name, " must not require grad (it is updated in place)"))
        # The matrices of a group run in parallel, each writing its row of u and v.
        torch._check_value(not elements_share_memory(t), explain(
            where, name, " has elements sharing memory (e.g. from expand); pass a .clone()"))
    # v is written while u is read (and the other way round). (Not while dynamo traces the
    # wrapper, which cannot trace the check; the fake kernel runs it on the traced tensors.)
    if not torch.compiler.is_compiling():
        torch._check_value(not torch._C._overlaps(u, v), explain(
            where, "u and v are sharing memory; pass separate tensors"))


def _check_scalars(n_iter, eps) -> tuple:
    """n_iter: int >= 0; eps: finite float > 0 (NaN would make normalize's max() differ
    between backends). Python or NumPy numbers or 0-d tensors; returns them as int, float."""
    n_iter = check_int(n_iter, "n_iter")
    eps = check_real(eps, "eps", finite=True)
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (got {eps}); it bounds the norm in normalize "
                         f"from below (default {DEFAULT_EPS})")
    return n_iter, eps


def _check_power_iteration(W, u, v, n_iter, eps) -> tuple:
    """power_iteration_(W [G, R, C], u [G, R], v [G, C], n_iter, eps) -> sigma [G]: the
    wrapper's check and the fake's body; returns (n_iter, eps) as int, float."""
    _check_group(W, u, v)
    return _check_scalars(n_iter, eps)


def _check_spectral_norms(Ws, us, vs, n_iter, eps) -> tuple:
    """spectral_norms_(Ws [G_k, R_k, C_k], us [G_k, R_k], vs [G_k, C_k], n_iter, eps): each group
    as power_iteration_, and no u or v shared between groups (they run in parallel). The
    wrapper's check and the fake's body; returns (n_iter, eps)."""
    for name, items in (("weights_by_group", Ws), ("us", us), ("vs", vs)):
        torch._check_type(isinstance(items, (list, tuple)), explain(
            name, " must be a list of tensors (got ", type(items).__name__, ")"))
    torch._check_value(len(Ws) == len(us) == len(vs), explain(
        "need one u and one v per weight group, got ", len(Ws), " groups, ", len(us),
        " u's and ", len(vs), " v's"))
    for k, (W, u, v) in enumerate(zip(Ws, us, vs)):
        _check_group(W, u, v, where=f"group {k}: ")
    if not torch.compiler.is_compiling():
        vectors = [(k, "us", u) for k, u in enumerate(us)] + [
            (k, "vs", v) for k, v in enumerate(vs)]
        for i, (k, name, t) in enumerate(vectors):
            for k_other, other, o in vectors[:i]:
                # u and v of one group are checked above, with their own message. (A plain if:
                # O(K^2) pairs, no message formatted unless one fails.)
                if k != k_other and torch._C._overlaps(t, o):
                    raise ValueError(f"{name}[{k}] shares memory with {other}[{k_other}]; "
                                     f"every group needs its own u and v")
    return _check_scalars(n_iter, eps)


def _fake_power_iteration(W, u, v, n_iter, eps):
    _check_power_iteration(W, u, v, n_iter, eps)
    return W.new_empty(W.shape[0])


def _fake_spectral_norms(Ws, us, vs, n_iter, eps):
    _check_spectral_norms(Ws, us, vs, n_iter, eps)
    torch._check_value(len(Ws) > 0, explain("spectral_norms_: needs at least one group"))
    return Ws[0].new_empty(sum(W.shape[0] for W in Ws))


def _triton():
    from ..triton_kernels import power_iteration as kernels
    return kernels


_library.define("power_iteration_(Tensor W, Tensor(a!) u, Tensor(b!) v, int n_iter, float eps) "
                "-> Tensor", fake=_fake_power_iteration,
                triton=lambda: _triton().power_iteration_)
# The K sigmas come back concatenated, [G_1 + ... + G_K]: one Tensor, not Tensor[], since
# torch.compile's auto_functionalize does not take a mutating op that returns a list.
_library.define("spectral_norms_(Tensor[] Ws, Tensor(a!)[] us, Tensor(b!)[] vs, int n_iter, "
                "float eps) -> Tensor", fake=_fake_spectral_norms,
                triton=lambda: _triton().spectral_norms_)


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


class _SigmaFromVectors(torch.autograd.Function):
    """sigma [G] (computed by a kernel) as a function of W [G, R, C] with the gradient of
    u^T W v for constant u [G, R], v [G, C]: d sigma_g / d W_g = u_g v_g^T."""

    @staticmethod
    def forward(ctx, W: Tensor, sigma: Tensor, u: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(u, v)
        return sigma.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, v = ctx.saved_tensors
        return torch.einsum("g,gr,gc->grc", grad, u, v), None, None, None


def _kernel_reason(Ws: Sequence[Tensor]) -> Optional[str]:
    """Why the native / Triton kernels cannot take these groups (None: they can), phrased
    for ``resolve_backend(unsupported=...)``."""
    if any(W.dtype not in _KERNEL_DTYPES for W in Ws):
        return f"takes float32 or float64 (got {sorted({str(W.dtype) for W in Ws})})"
    if len({(W.device, W.dtype) for W in Ws}) > 1:
        return "needs every group on one device and of one dtype"
    return None


def _run(op: str, Ws: Sequence[Tensor], us: Sequence[Tensor], vs: Sequence[Tensor],
         n_iter: int, eps: float, backend: str) -> List[Tensor]:
    """Power-iterate every group on the backend ``backend`` resolves to; sigma per group."""
    if not Ws:  # nothing runs, so no device to ask: only the name is checked
        _dispatch.check_choice(backend)
        return []
    chosen = _dispatch.resolve_backend(op, backend, Ws[0].device, unsupported=_kernel_reason(Ws))
    if chosen == "eager":
        return [_power_iteration_eager(W, u, v, n_iter, eps) for W, u, v in zip(Ws, us, vs)]
    Wd = [W.detach() for W in Ws]
    with torch.no_grad():
        ops = _library.namespace(chosen)
        if op == "power_iteration_":
            sigmas = [ops.power_iteration_(Wd[0], us[0], vs[0], n_iter, float(eps))]
        else:  # one tensor [G_1 + ... + G_K]
            sigma = ops.spectral_norms_(Wd, list(us), list(vs), n_iter, float(eps))
            sigmas = list(sigma.split([W.shape[0] for W in Ws]))
    if not torch.is_grad_enabled():
        return sigmas
    # Snapshots: the caller's u, v will be overwritten by the next call, maybe before backward.
    return [_SigmaFromVectors.apply(W, s, u.clone(), v.clone()) if W.requires_grad else s
            for W, s, u, v in zip(Ws, sigmas, us, vs)]


def power_iteration_(W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float = DEFAULT_EPS,
                     *, backend: str = "auto") -> Tensor:
    """Run ``n_iter`` power iterations on a group of matrices; return their spectral norms.

    Args:
        W: [G, R, C] matrices (may require grad; any strides).
        u: [G, R] left vectors, updated in place (no grad).
        v: [G, C] right vectors, updated in place (no grad).
        n_iter: iterations, an int >= 0 (0 just evaluates sigma with the current u, v).
        eps: lower bound on the norm in ``normalize``, finite and > 0.
        backend: "auto", "native", "triton" or "eager" (see ``vaebm_fast.ops._dispatch``).

    Returns:
        sigma: [G], sigma[g] = u[g]^T W[g] v[g], differentiable w.r.t. W only.

    Raises:
        TypeError: a non-tensor W, u or v, or a non-integer n_iter / non-real eps.
        ValueError: bad shapes, dtypes, a negative n_iter, eps not finite and > 0, an unknown
        backend name, or a named kernel backend with a dtype other than float32 / float64.
        BackendUnavailableError: the named backend cannot run on W's device.
    """
    n_iter, eps = _check_power_iteration(W, u, v, n_iter, eps)
    return _run("power_iteration_", [W], [u], [v], n_iter, eps, backend)[0]


def spectral_norms(weights_by_group: Sequence[Tensor], us: Sequence[Tensor],
                   vs: Sequence[Tensor], n_iter: int, eps: float = DEFAULT_EPS,
                   *, backend: str = "auto") -> list[Tensor]:
    """:func:`power_iteration_` over every shape group of a model in one call.

    Args:
        weights_by_group: K tensors, the k-th [G_k, R_k, C_k].
        us, vs: K tensors each, [G_k, R_k] and [G_k, C_k], updated in place.
        n_iter, eps, backend: as for :func:`power_iteration_`. The native kernel runs all
            matrices of all groups in one call; the Triton backend launches once per group.
            Both need all groups of one dtype ("auto" runs the reference otherwise).

    Returns:
        K tensors, the k-th sigma_k [G_k].
    """
    n_iter, eps = _check_spectral_norms(weights_by_group, us, vs, n_iter, eps)
    return _run("spectral_norms", list(weights_by_group), list(us), list(vs), n_iter, eps,
                backend)
