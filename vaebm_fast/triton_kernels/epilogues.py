"""Triton kernels of the fused epilogues: the launchers behind
``torch.ops.vaebm_fast_triton.{ebm_block_tail, nvae_cell_tail, affine_swish}`` and their
backward ops (the ops, their specification and autograd: ``vaebm_fast.ops.epilogues``).

Backend specifics. One program per BLOCK output elements (element-wise kernels) or per (n, c)
plane (kernels with a per-channel reduction). ``ebm_block_tail`` / ``nvae_cell_tail`` read their
NCHW inputs through their strides (no copies); ``affine_swish`` reads contiguous copies.
Precision: float16 / bfloat16 / float32 computed in float32, float64 in float64; float
arguments (the LipSwish factor ``k``, the cell ``scale``) travel as the halves of their float64
bit pattern (``_launch.f64_args``: a Python float would reach a compiled kernel as float32).
The launchers check only what keeps the kernels inside their tensors (dtype, shapes); the ops
validate everything else before calling them.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._kernel_rules import LIPSWISH_SCALE
from . import _launch
from .philox import from_f64_bits

__all__ = ["ebm_block_tail", "ebm_block_tail_backward", "nvae_cell_tail",
           "nvae_cell_tail_backward", "affine_swish", "affine_swish_backward"]

_BLOCK = _launch.BLOCK
_LIP = LIPSWISH_SCALE


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# ------------------------------------------------------------------------------- kernels

@triton.jit
def _sigmoid(t):
    return 1.0 / (1.0 + tl.exp(-t))


@triton.jit
def _block_nchw(C, H, W, BLOCK: tl.constexpr):
    """This program's BLOCK flat offsets into a contiguous [B, C, H, W] tensor, as
    (offs, b, c, y, x)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = offs % W
    t = offs // W
    y = t % H
    t = t // H
    return offs, t // C, t % C, y, x


@triton.jit(do_not_specialize=["k_lo", "k_hi"])
def _ebm_fwd_kernel(h_ptr, s_ptr, out_ptr, pre_ptr, n, C, Ho, Wo,
                    hs0, hs1, hs2, hs3, ss0, ss1, ss2, ss3, k_lo: tl.int32, k_hi: tl.int32,
                    DOWNSAMPLE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    k = from_f64_bits(k_lo, k_hi).to(ACC)
    offs, b, c, yo, xo = _block_nchw(C, Ho, Wo, BLOCK)
    mask = offs < n
    hb = b * hs0 + c * hs1
    sb = b * ss0 + c * ss1
    if DOWNSAMPLE:
        y0 = 2 * yo
        x0 = 2 * xo
        a00 = (tl.load(h_ptr + hb + y0 * hs2 + x0 * hs3, mask=mask).to(ACC)
               + tl.load(s_ptr + sb + y0 * ss2 + x0 * ss3, mask=mask).to(ACC))
        a01 = (tl.load(h_ptr + hb + y0 * hs2 + (x0 + 1) * hs3, mask=mask).to(ACC)
               + tl.load(s_ptr + sb + y0 * ss2 + (x0 + 1) * ss3, mask=mask).to(ACC))
        a10 = (tl.load(h_ptr + hb + (y0 + 1) * hs2 + x0 * hs3, mask=mask).to(ACC)
               + tl.load(s_ptr + sb + (y0 + 1) * ss2 + x0 * ss3, mask=mask).to(ACC))
        a11 = (tl.load(h_ptr + hb + (y0 + 1) * hs2 + (x0 + 1) * hs3, mask=mask).to(ACC)
               + tl.load(s_ptr + sb + (y0 + 1) * ss2 + (x0 + 1) * ss3, mask=mask).to(ACC))
        p = (a00 + a01 + a10 + a11) * 0.25
    else:
        p = (tl.load(h_ptr + hb + yo * hs2 + xo * hs3, mask=mask).to(ACC)
             + tl.load(s_ptr + sb + yo * ss2 + xo * ss3, mask=mask).to(ACC))
    tl.store(pre_ptr + offs, p.to(pre_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs, (k * p * _sigmoid(p)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["k_lo", "k_hi"])
def _ebm_bwd_kernel(g_ptr, p_ptr, d_ptr, n, C, H, W,
                    gs0, gs1, gs2, gs3, ps0, ps1, ps2, ps3, k_lo: tl.int32, k_hi: tl.int32,
                    DOWNSAMPLE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # One program per BLOCK elements of d (h's size); each reads its pooled position.
    k = from_f64_bits(k_lo, k_hi).to(ACC)
    offs, b, c, y, x = _block_nchw(C, H, W, BLOCK)
    mask = offs < n
    if DOWNSAMPLE:
        y = y // 2
        x = x // 2
    g = tl.load(g_ptr + b * gs0 + c * gs1 + y * gs2 + x * gs3, mask=mask).to(ACC)
    p = tl.load(p_ptr + b * ps0 + c * ps1 + y * ps2 + x * ps3, mask=mask).to(ACC)
    s = _sigmoid(p)
    d = k * g * (s + p * s * (1.0 - s))
    tl.store(d_ptr + offs, d.to(d_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["scale_lo", "scale_hi"])
def _cell_fwd_kernel(s_ptr, h_ptr, gate_ptr, out_ptr, n, C, H, W,
                     ss0, ss1, ss2, ss3, hs0, hs1, hs2, hs3, gs0, gs1,
                     scale_lo: tl.int32, scale_hi: tl.int32,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    scale = from_f64_bits(scale_lo, scale_hi).to(ACC)
    offs, b, c, y, x = _block_nchw(C, H, W, BLOCK)
    mask = offs < n
    s = tl.load(s_ptr + b * ss0 + c * ss1 + y * ss2 + x * ss3, mask=mask).to(ACC)
    h = tl.load(h_ptr + b * hs0 + c * hs1 + y * hs2 + x * hs3, mask=mask).to(ACC)
    g = tl.load(gate_ptr + b * gs0 + c * gs1, mask=mask).to(ACC)
    tl.store(out_ptr + offs, (s + (scale * g) * h).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["scale_lo", "scale_hi"])
def _cell_bwd_kernel(g_ptr, h_ptr, gate_ptr, dh_ptr, dgate_ptr, C, H, W,
                     gs0, gs1, gs2, gs3, hs0, hs1, hs2, hs3, ts0, ts1, scale_lo: tl.int32,
                     scale_hi: tl.int32,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    # One program per (b, c) plane: dh over the plane and dgate[b, c] = scale * sum(g * h).
    scale = from_f64_bits(scale_lo, scale_hi).to(ACC)
    plane = tl.program_id(0).to(tl.int64)
    c = plane % C
    b = plane // C
    m = scale * tl.load(gate_ptr + b * ts0 + c * ts1).to(ACC)
    hw = H * W
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, hw, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hw
        y = i // W
        x = i % W
        g = tl.load(g_ptr + b * gs0 + c * gs1 + y * gs2 + x * gs3, mask=mask, other=0).to(ACC)
        h = tl.load(h_ptr + b * hs0 + c * hs1 + y * hs2 + x * hs3, mask=mask, other=0).to(ACC)
        tl.store(dh_ptr + plane * hw + i, (m * g).to(dh_ptr.dtype.element_ty), mask=mask)
        acc += g * h
    tl.store(dgate_ptr + plane, (scale * tl.sum(acc, axis=0)).to(dgate_ptr.dtype.element_ty))


@triton.jit
def _affine_fwd_kernel(x_ptr, a_ptr, b_ptr, out_ptr, n, C, inner,
                       ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // inner) % C
    x = tl.load(x_ptr + offs, mask=mask).to(ACC)
    a = tl.load(a_ptr + c, mask=mask).to(ACC)
    b = tl.load(b_ptr + c, mask=mask).to(ACC)
    t = x * a + b
    tl.store(out_ptr + offs, (t * _sigmoid(t)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_bwd_kernel(g_ptr, x_ptr, a_ptr, b_ptr, dx_ptr, part_a_ptr, part_b_ptr, C, inner,
                       ACC: tl.constexpr, BLOCK: tl.constexpr):
    # One program per (n, c) plane of `inner` elements: dx, and the plane's partial sums of
    # q * x and q (q = grad * swish'(t)) into part_a / part_b [N * C].
    plane = tl.program_id(0).to(tl.int64)
    c = plane % C
    a = tl.load(a_ptr + c).to(ACC)
    b = tl.load(b_ptr + c).to(ACC)
    base = plane * inner
    acc_a = tl.zeros([BLOCK], dtype=ACC)
    acc_b = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, inner, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < inner
        x = tl.load(x_ptr + base + i, mask=mask, other=0).to(ACC)
        g = tl.load(g_ptr + base + i, mask=mask, other=0).to(ACC)
        t = x * a + b
        s = _sigmoid(t)
        q = g * (s + t * s * (1.0 - s))
        tl.store(dx_ptr + base + i, (q * a).to(dx_ptr.dtype.element_ty), mask=mask)
        acc_a += q * x
        acc_b += q
    tl.store(part_a_ptr + plane, tl.sum(acc_a, axis=0))
    tl.store(part_b_ptr + plane, tl.sum(acc_b, axis=0))


# ------------------------------------------------------------------------------- launchers

def _grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


def _check_nchw(op: str, *tensors: Tensor) -> None:
    _launch.check_dtype(op, *tensors)
    if tensors[0].dim() != 4:
        raise RuntimeError(f"{op} (Triton): expected [B, C, H, W] tensors (got "
                           f"{tuple(tensors[0].shape)})")
    _launch.check_same_shape(op, *tensors)


def _check_gate(op: str, gate: Tensor, h: Tensor) -> None:
    _launch.check_dtype(op, h, gate)
    if gate.shape != h.shape[:2]:
        raise RuntimeError(f"{op} (Triton): gate must have shape [B, C] = {tuple(h.shape[:2])} "
                           f"(got {tuple(gate.shape)})")


@_launch.on_tensor_device
def ebm_block_tail(h: Tensor, skip: Tensor, downsample: bool) -> Tuple[Tensor, Tensor]:
    """h, skip [B, C, H, W] -> (out, pre), [B, C, H/2, W/2] if downsample else [B, C, H, W]."""
    op = "ebm_block_tail"
    _check_nchw(op, h, skip)
    B, C, H, W = h.shape
    if downsample and (H % 2 or W % 2):
        raise RuntimeError(f"{op} (Triton): downsample needs even H and W (got {H}x{W})")
    Ho, Wo = (H // 2, W // 2) if downsample else (H, W)
    out = h.new_empty((B, C, Ho, Wo))
    pre = h.new_empty((B, C, Ho, Wo))
    n = out.numel()
    if n:
        _ebm_fwd_kernel[_grid(n)](h, skip, out, pre, n, C, Ho, Wo, *h.stride(), *skip.stride(),
                                  *_launch.f64_args(_LIP), DOWNSAMPLE=bool(downsample),
                                  ACC=_acc(h.dtype), BLOCK=_BLOCK)
    return out, pre


@_launch.on_tensor_device
def ebm_block_tail_backward(grad: Tensor, pre: Tensor, downsample: bool) -> Tensor:
    """grad, pre [B, C, h, w] -> d [B, C, 2h, 2w] if downsample else [B, C, h, w]."""
    _check_nchw("ebm_block_tail_backward", pre, grad)
    B, C, Ho, Wo = pre.shape
    H, W = (2 * Ho, 2 * Wo) if downsample else (Ho, Wo)
    d = pre.new_empty((B, C, H, W))
    n = d.numel()
    if n:
        _ebm_bwd_kernel[_grid(n)](grad, pre, d, n, C, H, W, *grad.stride(), *pre.stride(),
                                  *_launch.f64_args(_LIP * (0.25 if downsample else 1.0)),
                                  DOWNSAMPLE=bool(downsample), ACC=_acc(pre.dtype),
                                  BLOCK=_BLOCK)
    return d


@_launch.on_tensor_device
def nvae_cell_tail(skip: Tensor, h: Tensor, gate: Tensor, scale: float) -> Tensor:
    """skip, h [B, C, H, W], gate [B, C] -> skip + scale * h * gate, [B, C, H, W]."""
    op = "nvae_cell_tail"
    _check_nchw(op, h, skip)
    _check_gate(op, gate, h)
    B, C, H, W = h.shape
    out = h.new_empty((B, C, H, W))
    n = out.numel()
    if n:
        _cell_fwd_kernel[_grid(n)](skip, h, gate, out, n, C, H, W, *skip.stride(), *h.stride(),
                                   *gate.stride(), *_launch.f64_args(scale), ACC=_acc(h.dtype),
                                   BLOCK=_BLOCK)
    return out


@_launch.on_tensor_device
def nvae_cell_tail_backward(grad: Tensor, h: Tensor, gate: Tensor,
                            scale: float) -> Tuple[Tensor, Tensor]:
    """grad, h [B, C, H, W], gate [B, C] -> (dh [B, C, H, W], dgate [B, C])."""
    op = "nvae_cell_tail_backward"
    _check_nchw(op, h, grad)
    _check_gate(op, gate, h)
    B, C, H, W = h.shape
    dh = h.new_empty((B, C, H, W))
    dgate = gate.new_empty((B, C))
    if B * C:
        if H * W == 0:
            dgate.zero_()
        else:
            block = min(_BLOCK, triton.next_power_of_2(H * W))
            _cell_bwd_kernel[(B * C,)](grad, h, gate, dh, dgate, C, H, W, *grad.stride(),
                                       *h.stride(), *gate.stride(), *_launch.f64_args(scale),
                                       ACC=_acc(h.dtype), BLOCK=block)
    return dh, dgate


def _check_affine(op: str, x: Tensor, scale: Tensor, shift: Tensor) -> Tuple[int, int, int]:
    _launch.check_dtype(op, x, scale, shift)
    if x.dim() < 2 or scale.shape != (x.shape[1],) or shift.shape != (x.shape[1],):
        raise RuntimeError(f"{op} (Triton): expected x [N, C, ...] with scale, shift [C] (got "
                           f"{tuple(x.shape)}, {tuple(scale.shape)}, {tuple(shift.shape)})")
    N, C = x.shape[0], x.shape[1]
    inner = x.numel() // (N * C) if N * C else 0
    return N, C, inner


@_launch.on_tensor_device
def affine_swish(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x [N, C, ...], scale, shift [C] -> swish(x * scale[c] + shift[c]), x's shape."""
    N, C, inner = _check_affine("affine_swish", x, scale, shift)
    xc = x.contiguous()
    out = torch.empty_like(xc)
    n = out.numel()
    if n:
        _affine_fwd_kernel[_grid(n)](xc, scale.contiguous(), shift.contiguous(), out, n, C,
                                     inner, ACC=_acc(x.dtype), BLOCK=_BLOCK)
    return out


@_launch.on_tensor_device
def affine_swish_backward(grad: Tensor, x: Tensor, scale: Tensor,
                          shift: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """grad, x [N, C, ...], scale, shift [C] -> (dx, dscale [C], dshift [C])."""
    op = "affine_swish_backward"
    N, C, inner = _check_affine(op, x, scale, shift)
    _launch.check_dtype(op, x, grad)
    _launch.check_same_shape(op, x, grad)
    xc, gc = x.contiguous(), grad.contiguous()
    dx = torch.empty_like(xc)
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part_a = torch.zeros((N, C), dtype=part_dtype, device=x.device)
    part_b = torch.zeros((N, C), dtype=part_dtype, device=x.device)
    if N * C and inner:
        block = min(_BLOCK, triton.next_power_of_2(inner))
        _affine_bwd_kernel[(N * C,)](gc, xc, scale.contiguous(), shift.contiguous(), dx,
                                     part_a, part_b, C, inner, ACC=_acc(x.dtype), BLOCK=block)
    # Deterministic sum of the per-plane partials over n (tiny: [N, C]).
    return dx, part_a.sum(0).to(scale.dtype), part_b.sum(0).to(shift.dtype)
