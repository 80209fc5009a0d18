r"""Fused epilogues of the model blocks: the memory-bound element-wise tails after the convs.

Three ops, each one pass over memory instead of the 3-6 passes of the eager expression:

* :func:`ebm_block_tail` -- the end of a residual block of the energy network
  (:class:`vaebm_fast.models.energy.ResBlock`):

  .. math:: p = \mathrm{avgpool}_{2\times 2}(h + s)\ \text{(if downsample, else } h + s),
            \qquad \mathrm{out} = \mathrm{lipswish}(p) = p\,\sigma(p) / 1.1

  Backward: :math:`\partial p = g\,(\sigma + p\,\sigma(1-\sigma))/1.1`, and
  :math:`\partial h = \partial s = \partial p` broadcast back over each 2x2 window divided by 4
  when downsampling. Autograd saves **only** ``pre`` (= p, a quarter of h's size when
  downsampling), never h, skip or the sigmoid.

* :func:`nvae_cell_tail` -- the end of an NVAE residual cell (:class:`vaebm_fast.models.
  nvae_cells.Cell`), the SE multiply and the residual add in one pass:

  .. math:: \mathrm{out} = s + c\,h \odot g[:, :, \text{None}, \text{None}], \qquad g \in
            \mathbb{R}^{B\times C}\ \text{(the SE gate)}

  Backward: :math:`\partial s = \bar o`, :math:`\partial h = c\,\bar o\,g`,
  :math:`\partial g = c \sum_{hw} \bar o\,h`. Autograd saves ``h`` and ``gate``.

* :func:`affine_swish` -- BatchNorm in eval mode followed by Swish, as one per-channel affine
  map (``c`` = dim 1) and the activation:

  .. math:: t = x\,a_c + b_c, \qquad \mathrm{out} = t\,\sigma(t)

  Backward: with :math:`d = \sigma(t) + t\,\sigma(t)(1-\sigma(t))`, :math:`\partial x = g d a_c`,
  :math:`\partial a_c = \sum g d x`, :math:`\partial b_c = \sum g d` (sums over every dim but
  1). Autograd saves ``x``, ``scale`` and ``shift``; ``t`` and the sigmoid are recomputed.
  :func:`bn_swish_eval` folds a BatchNorm's running statistics into ``(scale, shift)``
  (differentiably in ``bn.weight`` / ``bn.bias``) and calls it.

``*_reference`` are the specifications (plain differentiable PyTorch, any device and dtype);
``*_backward_reference`` spell out the backward ops. Kernels: ``torch.ops.vaebm_fast.*``
(native, csrc/cpu/epilogues.cpp; CUDA kernels are registered by csrc/cuda when built) and
``torch.ops.vaebm_fast_triton.*`` (vaebm_fast/triton_kernels/epilogues.py). Every kernel
accepts non-contiguous inputs, returns new contiguous tensors, and computes float16 /
bfloat16 / float32 in float32 (rounded once when stored) and float64 in float64. The backward
ops are themselves differentiable (their derivatives are written in torch ops here), so double
backward works on every backend. Channels-last inputs: ``"auto"`` runs the eager reference,
which keeps their layout (see ``_kernel_ns``).

Shapes: ``ebm_block_tail`` and ``nvae_cell_tail`` take NCHW tensors ``[B, C, H, W]`` of equal
shape (``h``, ``skip``), with even H and W when downsampling; ``affine_swish`` takes any
``x`` with ``dim >= 2`` and 1-d ``scale``, ``shift`` of length ``x.shape[1]``. All tensors of
one call share dtype and device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _native
from . import _dispatch
from .swish import LIPSWISH_SCALE, activation_format, kernel_dtype_reason

__all__ = [
    "ebm_block_tail", "nvae_cell_tail", "affine_swish", "bn_swish_eval", "bn_fold",
    "ebm_block_tail_reference", "nvae_cell_tail_reference", "affine_swish_reference",
    "ebm_block_tail_backward_reference", "nvae_cell_tail_backward_reference",
    "affine_swish_backward_reference",
]

# "auto" on the CPU, by measurement: forward + backward (torch.autograd.grad with a random
# contiguous output gradient, all input gradients), native vs eager reference, [32,128,16,16]
# fp32, `OMP_NUM_THREADS=1 python -m benchmarks.bench_ops --only
# 'ebm_block_tail|nvae_cell_tail|affine_swish'` (the harness's interleaved medians), 6 runs
# alternated with the same command on the previous kernels; 2-core AMD EPYC with AVX-512, shared
# with other jobs (load 3-6: with torch's default 2 threads the runs were dominated by
# contention), torch 2.13. Median over runs, ms (run-to-run eager/native range):
#   ebm_block_tail (downsampling)  native 0.74  eager 5.52  (6.1-7.9x)  before: 5.81 (0.7-1.4x)
#   nvae_cell_tail                 native 0.96  eager 2.64  (1.8-3.2x)  before: 1.32
#   affine_swish                   native 1.08  eager 4.37  (3.2-4.6x)  before: 6.25 (0.8-1.8x)
# ("before" for ebm_block_tail also spread a materialised zero gradient of pre, see
# ebm_setup.) copy_ of the same tensor: 0.11 ms. Native also won at [32,64,32,32], [32,256,8,8] and
# [32,384,16,16] (ebm_block_tail with and without pooling, 1.2-7x) and tied at [2,8,8,8]
# (Python overhead). The fp32 kernels are compiled per instruction set (simd_math.h) since
# the AVX-512 rewrite; before it they ran in SSE2 and lost to ATen on the sigmoid-bound ops.
_AUTO_ORDER_EBM = {"cpu": ("native", "eager")}
_AUTO_ORDER_CELL = {"cpu": ("native", "eager")}
_AUTO_ORDER_AFFINE = {"cpu": ("native", "eager")}
_dispatch.register_op("ebm_block_tail", native="vaebm_fast::ebm_block_tail", triton=True,
                      auto_order=_AUTO_ORDER_EBM)
_dispatch.register_op("nvae_cell_tail", native="vaebm_fast::nvae_cell_tail", triton=True,
                      auto_order=_AUTO_ORDER_CELL)
_dispatch.register_op("affine_swish", native="vaebm_fast::affine_swish", triton=True,
                      auto_order=_AUTO_ORDER_AFFINE)


# ------------------------------------------------------------------------- references (spec)

def ebm_block_tail_reference(h: Tensor, skip: Tensor, downsample: bool) -> Tuple[Tensor, Tensor]:
    """``(out, pre)`` of the EBM block tail, as the op returns them: ``pre = avg_pool2d(h + skip,
    2)`` if ``downsample`` else ``h + skip``; ``out = pre * sigmoid(pre) / 1.1``."""
    pre = h + skip
    if downsample:
        b, c, hh, ww = pre.shape
        # avg_pool2d rejects C == 0; the window mean is the same maths for empty tensors.
        pre = (F.avg_pool2d(pre, 2) if pre.numel() else
               pre.reshape(b, c, hh // 2, 2, ww // 2, 2).mean(dim=(3, 5)))
    return pre * torch.sigmoid(pre) * LIPSWISH_SCALE, pre


def ebm_block_tail_backward_reference(grad: Tensor, pre: Tensor, downsample: bool) -> Tensor:
    """d(h + skip) of :func:`ebm_block_tail_reference`'s ``out`` given ``grad`` = d out,
    at h's size (2H x 2W of ``pre`` when downsampling)."""
    s = torch.sigmoid(pre)
    d = grad * (LIPSWISH_SCALE * (s + pre * s * (1 - s)))
    if downsample:  # adjoint of the 2x2 average: spread d/4 over each window
        d = (d * 0.25).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return d


def nvae_cell_tail_reference(skip: Tensor, h: Tensor, gate: Tensor, scale: float) -> Tensor:
    """``skip + scale * h * gate[:, :, None, None]``."""
    return skip + scale * (h * gate[:, :, None, None])


def nvae_cell_tail_backward_reference(grad: Tensor, h: Tensor, gate: Tensor,
                                      scale: float) -> Tuple[Tensor, Tensor]:
    """``(d h, d gate) = (scale * grad * gate, scale * sum_hw(grad * h))``; d skip is grad."""
    return grad * (scale * gate[:, :, None, None]), scale * (grad * h).sum(dim=(2, 3))


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def affine_swish_reference(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``swish(x * scale[c] + shift[c])`` with ``c`` the index along dim 1."""
    t = x * _channel_view(scale, x) + _channel_view(shift, x)
    return t * torch.sigmoid(t)


def affine_swish_backward_reference(grad: Tensor, x: Tensor, scale: Tensor,
                                    shift: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(d x, d scale, d shift)`` of :func:`affine_swish_reference`."""
    t = x * _channel_view(scale, x) + _channel_view(shift, x)
    s = torch.sigmoid(t)
    gd = grad * (s + t * s * (1 - s))
    dims = [0] + list(range(2, x.dim()))
    return gd * _channel_view(scale, x), (gd * x).sum(dim=dims), gd.sum(dim=dims)


# ------------------------------------------------------------------------- argument checks

def _check_tensor(t, op: str, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor (got {type(t).__name__})")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating tensor (got {t.dtype})")


def _check_same(op: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def _check_nchw_pair(op: str, h, skip) -> None:
    """h and skip: tensors of one NCHW shape, dtype and device."""
    _check_tensor(h, op, "h")
    _check_tensor(skip, op, "skip")
    if h.dim() != 4:
        raise ValueError(f"{op}: h must be NCHW [B, C, H, W] (got shape {tuple(h.shape)})")
    if skip.shape != h.shape:
        raise ValueError(f"{op}: skip has shape {tuple(skip.shape)} but h has "
                         f"{tuple(h.shape)}; they must match")
    _check_same(op, "h", h, skip=skip)


def _check_ebm(h, skip, downsample) -> None:
    op = "ebm_block_tail"
    _check_nchw_pair(op, h, skip)
    if downsample and (h.shape[2] % 2 or h.shape[3] % 2):
        raise ValueError(f"{op}: downsample needs even H and W (got {h.shape[2]}x{h.shape[3]})")


def _check_cell(skip, h, gate) -> None:
    op = "nvae_cell_tail"
    _check_nchw_pair(op, h, skip)
    if gate is not None:
        _check_tensor(gate, op, "gate")
        if gate.shape != h.shape[:2]:
            raise ValueError(f"{op}: gate must have shape [B, C] = {tuple(h.shape[:2])} "
                             f"(got {tuple(gate.shape)})")
        _check_same(op, "h", h, gate=gate)


def _check_affine(x, scale, shift) -> None:
    op = "affine_swish"
    _check_tensor(x, op, "x")
    _check_tensor(scale, op, "scale")
    _check_tensor(shift, op, "shift")
    if x.dim() < 2:
        raise ValueError(f"{op}: x must have at least 2 dims [N, C, ...] (got shape "
                         f"{tuple(x.shape)})")
    c = x.shape[1]
    for name, v in (("scale", scale), ("shift", shift)):
        if v.shape != (c,):
            raise ValueError(f"{op}: {name} must have shape [C] = [{c}] (got "
                             f"{tuple(v.shape)})")
    _check_same(op, "x", x, scale=scale, shift=shift)


def _kernel_ns(op: str, backend: str, x: Tensor):
    """The ``torch.ops`` namespace whose kernel runs ``op`` on ``x``, or None for the eager
    reference.

    Channels-last x (a model prepared in channels-last, FastSampler's default on the CPU):
    ``"auto"`` runs the eager reference, whose torch ops keep the layout. The kernels index
    channels in row-major NCHW, so they would read channels-last inputs through row-major
    copies and hand the next convolution row-major outputs to convert back; a named backend
    still runs its kernel that way (same results). Measured: in a CIFAR-10 chain step at batch
    32 (official widths, channels-last) the eager epilogues take ~0.4 s of ~7.4 s, the
    convolutions 5.9 s (2-core AMD EPYC).
    """
    chosen = _dispatch.resolve_backend(op, backend, x.device,
                                       unsupported=kernel_dtype_reason(x.dtype))
    if chosen == "eager" or (backend == "auto" and
                             activation_format(x) == torch.channels_last):
        return None
    if chosen == "triton":
        from ..triton_kernels import epilogues as _tk  # noqa: F401  (registers the ops)
        return torch.ops.vaebm_fast_triton
    return torch.ops.vaebm_fast


# ------------------------------------------------------------------------- public ops

def ebm_block_tail(h: Tensor, skip: Tensor, *, downsample: bool = False,
                   backend: str = "auto") -> Tensor:
    """``lip_swish(avg_pool2d(h + skip, 2) if downsample else h + skip)`` in one pass.

    h, skip: [B, C, H, W], same shape, dtype and device (H, W even when downsampling).
    Returns [B, C, H/2, W/2] if downsample else [B, C, H, W]. Autograd on the kernel backends
    saves only the pre-activation (a quarter of h when downsampling).

    Raises:
        TypeError: a non-tensor argument. ValueError: shapes, dtypes or devices that do not
        match, odd H/W with downsample, unknown backend. BackendUnavailableError: a named
        backend cannot run here.
    """
    _check_ebm(h, skip, downsample)
    ns = _kernel_ns("ebm_block_tail", backend, h)
    if ns is None:
        return ebm_block_tail_reference(h, skip, bool(downsample))[0]
    return ns.ebm_block_tail(h, skip, bool(downsample))[0]


def nvae_cell_tail(skip: Tensor, h: Tensor, gate: Optional[Tensor] = None, *,
                   scale: float = 0.1, backend: str = "auto") -> Tensor:
    """``skip + scale * h * gate[:, :, None, None]`` in one pass (NVAE cell: SE gate times
    the branch, scaled, plus the skip). Without ``gate`` it is ``torch.add(skip, h,
    alpha=scale)`` (one eager op already).

    skip, h: [B, C, H, W]; gate: [B, C]; same dtype and device. Returns [B, C, H, W].
    Autograd on the kernel backends saves h and gate. Raises as :func:`ebm_block_tail`.
    """
    _check_cell(skip, h, gate)
    scale = float(scale)
    if gate is None:
        _dispatch.resolve_backend("nvae_cell_tail", backend, h.device)  # validates the name
        return torch.add(skip, h, alpha=scale)
    ns = _kernel_ns("nvae_cell_tail", backend, h)
    if ns is None:
        return nvae_cell_tail_reference(skip, h, gate, scale)
    return ns.nvae_cell_tail(skip, h, gate, scale)


def affine_swish(x: Tensor, scale: Tensor, shift: Tensor, *, backend: str = "auto") -> Tensor:
    """``swish(x * scale[c] + shift[c])``, c = dim 1: BatchNorm (eval) + Swish in one pass.

    x: [N, C, ...] (dim >= 2); scale, shift: [C]; same dtype and device. Returns x's shape.
    Autograd on the kernel backends saves x, scale and shift (not the affine output nor the
    sigmoid). Raises as :func:`ebm_block_tail`.
    """
    _check_affine(x, scale, shift)
    ns = _kernel_ns("affine_swish", backend, x)
    if ns is None:
        return affine_swish_reference(x, scale, shift)
    return ns.affine_swish(x, scale, shift)


def bn_fold(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale[c] + shift[c]`` in eval mode, from the
    running statistics: ``scale = weight / sqrt(running_var + eps)``, ``shift = bias -
    running_mean * scale``; differentiable in ``bn.weight`` and ``bn.bias``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn_swish_eval: the BatchNorm tracks no running statistics "
                         "(track_running_stats=False); use swish(bn(x))")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight * inv_std
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def bn_swish_eval(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, *,
                  backend: str = "auto") -> Tensor:
    """``swish(bn(x))`` for a BatchNorm in eval mode (running statistics), as one
    :func:`affine_swish`. The folded scale/shift are cast to x's dtype; gradients reach x,
    ``bn.weight`` and ``bn.bias``. Use only when ``bn`` would use its running statistics
    (``not bn.training`` and running stats tracked); training mode normalises by batch
    statistics and is not an affine map of x.
    """
    scale, shift = bn_fold(bn)
    if isinstance(x, Tensor) and x.is_floating_point():
        scale, shift = scale.to(x.dtype), shift.to(x.dtype)
    return affine_swish(x, scale, shift, backend=backend)


# ------------------------------------------------------------------------- autograd
# One set of formulas for the native ops (torch.ops.vaebm_fast) and the Triton custom ops
# (torch.ops.vaebm_fast_triton): `ns` is the namespace whose backward op is called.

def _pool_adjoint(d: Tensor) -> Tensor:
    return (d * 0.25).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _lipswish_d1(p: Tensor) -> Tensor:
    s = torch.sigmoid(p)
    return LIPSWISH_SCALE * (s + p * s * (1 - s))


def _lipswish_d2(p: Tensor) -> Tensor:
    s = torch.sigmoid(p)
    return LIPSWISH_SCALE * s * (1 - s) * (2 + p * (1 - 2 * s))


def register_epilogue_autograd(ns_name: str) -> None:
    """Register autograd (and double backward) for the six epilogue ops of namespace
    ``ns_name`` ("vaebm_fast" or "vaebm_fast_triton")."""
    ns = getattr(torch.ops, ns_name)

    # ebm_block_tail: save pre only.
    def ebm_setup(ctx, inputs, output):
        _, _, downsample = inputs
        ctx.downsample = downsample
        # An unused output gradient stays None: materialised, the zeros of pre's gradient
        # were spread (repeat_interleave) and added to d on every backward, ~3x the
        # kernel's own time on the CPU.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1])

    def ebm_backward(ctx, grad_out, grad_pre):
        (pre,) = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(pre)
        d = ns.ebm_block_tail_backward(grad_out, pre, ctx.downsample)
        if grad_pre is not None:  # pre used directly (not by the public wrapper)
            d = d + (_pool_adjoint(grad_pre) if ctx.downsample else grad_pre)
        return d, d, None

    def ebm_bwd_setup(ctx, inputs, output):
        grad, pre, downsample = inputs
        ctx.downsample = downsample
        ctx.save_for_backward(grad, pre)

    def ebm_bwd_backward(ctx, gg):
        # out = U(grad * f'(pre)), U = adjoint of the 2x2 average (or identity).
        grad, pre = ctx.saved_tensors
        p_gg = F.avg_pool2d(gg, 2) if ctx.downsample else gg
        d_grad = p_gg * _lipswish_d1(pre) if ctx.needs_input_grad[0] else None
        d_pre = p_gg * grad * _lipswish_d2(pre) if ctx.needs_input_grad[1] else None
        return d_grad, d_pre, None

    torch.library.register_autograd(f"{ns_name}::ebm_block_tail", ebm_backward,
                                    setup_context=ebm_setup)
    torch.library.register_autograd(f"{ns_name}::ebm_block_tail_backward", ebm_bwd_backward,
                                    setup_context=ebm_bwd_setup)

    # nvae_cell_tail: save h and gate.
    def cell_setup(ctx, inputs, output):
        _, h, gate, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(h, gate)

    def cell_backward(ctx, grad):
        h, gate = ctx.saved_tensors
        dh = dgate = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dh, dgate = ns.nvae_cell_tail_backward(grad, h, gate, ctx.scale)
        return (grad if ctx.needs_input_grad[0] else None,
                dh if ctx.needs_input_grad[1] else None,
                dgate if ctx.needs_input_grad[2] else None, None)

    def cell_bwd_setup(ctx, inputs, output):
        grad, h, gate, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(grad, h, gate)

    def cell_bwd_backward(ctx, gg_dh, gg_dgate):
        # dh = c grad gate, dgate = c sum_hw(grad h): both bilinear.
        grad, h, gate = ctx.saved_tensors
        c = ctx.scale
        d_grad = d_h = d_gate = None
        if ctx.needs_input_grad[0]:
            d_grad = torch.zeros_like(grad)
            if gg_dh is not None:
                d_grad = d_grad + c * gg_dh * gate[:, :, None, None]
            if gg_dgate is not None:
                d_grad = d_grad + c * gg_dgate[:, :, None, None] * h
        if ctx.needs_input_grad[1]:
            d_h = (c * gg_dgate[:, :, None, None] * grad if gg_dgate is not None
                   else torch.zeros_like(h))
        if ctx.needs_input_grad[2]:
            d_gate = (c * (gg_dh * grad).sum(dim=(2, 3)) if gg_dh is not None
                      else torch.zeros_like(gate))
        return d_grad, d_h, d_gate, None

    torch.library.register_autograd(f"{ns_name}::nvae_cell_tail", cell_backward,
                                    setup_context=cell_setup)
    torch.library.register_autograd(f"{ns_name}::nvae_cell_tail_backward", cell_bwd_backward,
                                    setup_context=cell_bwd_setup)

    # affine_swish: save x, scale, shift.
    def affine_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def affine_backward(ctx, grad):
        x, scale, shift = ctx.saved_tensors
        dx, dscale, dshift = ns.affine_swish_backward(grad, x, scale, shift)
        return (dx if ctx.needs_input_grad[0] else None,
                dscale if ctx.needs_input_grad[1] else None,
                dshift if ctx.needs_input_grad[2] else None)

    def affine_bwd_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def affine_bwd_backward(ctx, gg_dx, gg_dscale, gg_dshift):
        # Written in torch ops from the reference (rarely used: double backward only).
        grad, x, scale, shift = (t.detach() for t in ctx.saved_tensors)
        with torch.enable_grad():
            ins = [t.requires_grad_() for t in (grad, x, scale, shift)]
            outs = affine_swish_backward_reference(*ins)
            pairs = [(o, g) for o, g in zip(outs, (gg_dx, gg_dscale, gg_dshift))
                     if g is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], ins, [g for _, g in pairs],
                                        allow_unused=True)
        return tuple(g if (g is not None and need) else
                     (torch.zeros_like(i) if need else None)
                     for g, i, need in zip(grads, ins, ctx.needs_input_grad))

    torch.library.register_autograd(f"{ns_name}::affine_swish", affine_backward,
                                    setup_context=affine_setup)
    torch.library.register_autograd(f"{ns_name}::affine_swish_backward", affine_bwd_backward,
                                    setup_context=affine_bwd_setup)


# ------------------------------------------------------------------------- fake kernels

def _fake_ebm(h, skip, downsample):
    torch._check(h.dim() == 4, lambda: "ebm_block_tail: h must be [B, C, H, W]")
    torch._check(skip.shape == h.shape, lambda: "ebm_block_tail: skip and h differ in shape")
    b, c, hh, ww = h.shape
    if downsample:
        torch._check(hh % 2 == 0 and ww % 2 == 0,
                     lambda: "ebm_block_tail: downsample needs even H and W")
        shape = (b, c, hh // 2, ww // 2)
    else:
        shape = (b, c, hh, ww)
    return h.new_empty(shape), h.new_empty(shape)


def _fake_ebm_backward(grad, pre, downsample):
    torch._check(grad.shape == pre.shape,
                 lambda: "ebm_block_tail_backward: grad and pre differ in shape")
    b, c, hh, ww = pre.shape
    return pre.new_empty((b, c, 2 * hh, 2 * ww) if downsample else (b, c, hh, ww))


def _fake_cell(skip, h, gate, scale):
    torch._check(skip.shape == h.shape, lambda: "nvae_cell_tail: skip and h differ in shape")
    torch._check(gate.shape == h.shape[:2], lambda: "nvae_cell_tail: gate must be [B, C]")
    return h.new_empty(h.shape)


def _fake_cell_backward(grad, h, gate, scale):
    torch._check(grad.shape == h.shape,
                 lambda: "nvae_cell_tail_backward: grad and h differ in shape")
    return h.new_empty(h.shape), gate.new_empty(gate.shape)


def _fake_affine(x, scale, shift):
    torch._check(x.dim() >= 2, lambda: "affine_swish: x must have dim >= 2")
    return x.new_empty(x.shape)


def _fake_affine_backward(grad, x, scale, shift):
    torch._check(grad.shape == x.shape, lambda: "affine_swish_backward: grad and x differ")
    return x.new_empty(x.shape), scale.new_empty(scale.shape), shift.new_empty(shift.shape)


FAKES = {
    "ebm_block_tail": _fake_ebm, "ebm_block_tail_backward": _fake_ebm_backward,
    "nvae_cell_tail": _fake_cell, "nvae_cell_tail_backward": _fake_cell_backward,
    "affine_swish": _fake_affine, "affine_swish_backward": _fake_affine_backward,
}


def _register() -> None:
    for name, fake in FAKES.items():
        torch.library.register_fake(f"vaebm_fast::{name}", fake)
    register_epilogue_autograd("vaebm_fast")


_native.on_load(_register)
