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
  (:func:`vaebm_fast.nn.bn_swish_eval` folds a BatchNorm's running statistics into
  ``(scale, shift)`` and calls it.)

``*_reference`` are the specifications (plain differentiable PyTorch, any device and dtype);
``*_backward_reference`` spell out the backward ops. Kernels: ``torch.ops.vaebm_fast.*``
(native, csrc/epilogues/cpu.cpp; csrc/epilogues/cuda.cu when built with CUDA) and
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernel_rules import LIPSWISH_SCALE, activation_format, dtype_reason
from ..validation import check_real, explain
from . import _dispatch, _library

__all__ = [
    "ebm_block_tail", "nvae_cell_tail", "affine_swish",
    "ebm_block_tail_reference", "nvae_cell_tail_reference", "affine_swish_reference",
    "ebm_block_tail_backward_reference", "nvae_cell_tail_backward_reference",
    "affine_swish_backward_reference",
]

# "auto": the kernel on every device (measured: benchmarks/results/auto_choices_cpu.md).
for _name in ("ebm_block_tail", "nvae_cell_tail", "affine_swish"):
    _dispatch.register_op(_name, native=f"vaebm_fast::{_name}", triton=True)


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


# ------------------------------------------------------------------------- validation
# One function per op: the public wrapper's argument check and the body of the op's fake kernel,
# returning the output shape(s). TypeError for a non-tensor, ValueError for wrong shapes,
# dtypes and devices.

def _check_tensor(op: str, name: str, t) -> None:
    torch._check_type(isinstance(t, Tensor),
                      explain(op, ": ", name, " must be a torch.Tensor (got ",
                              type(t).__name__, ")"))
    torch._check_value(t.is_floating_point(),
                       explain(op, ": ", name, " must be a floating tensor (got ", t.dtype, ")"))


def _check_like(op: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """Every tensor of ``others`` has ``ref``'s dtype and device."""
    for name, t in others.items():
        torch._check_value(t.dtype == ref.dtype, explain(op, ": ", name, " has dtype ", t.dtype,
                                                         " but ", ref_name, " has ", ref.dtype))
        torch._check_value(t.device == ref.device, explain(op, ": ", name, " is on ", t.device,
                                                           " but ", ref_name, " is on ",
                                                           ref.device))


def _check_nchw_pair(op: str, a_name: str, a, b_name: str, b) -> None:
    """Two NCHW tensors of one shape, dtype and device."""
    _check_tensor(op, a_name, a)
    _check_tensor(op, b_name, b)
    torch._check_value(a.dim() == 4, explain(op, ": ", a_name, " must be NCHW [B, C, H, W] "
                                                 "(got shape ", tuple(a.shape), ")"))
    torch._check_value(b.shape == a.shape, explain(op, ": ", b_name, " has shape ",
                                                   tuple(b.shape), " but ", a_name, " has ",
                                                   tuple(a.shape), "; they must match"))
    _check_like(op, a_name, a, **{b_name: b})


def _pooled(op: str, t: Tensor, downsample: bool) -> tuple:
    b, c, hh, ww = t.shape
    if not downsample:
        return b, c, hh, ww
    torch._check_value(hh % 2 == 0 and ww % 2 == 0,
                       explain(op, ": downsample needs even H and W (got ", hh, "x", ww, ")"))
    return b, c, hh // 2, ww // 2


def _check_downsample(op: str, downsample) -> None:
    # A truthy string or tensor would silently pick a branch: only a bool says which.
    torch._check_type(isinstance(downsample, (bool, np.bool_)), explain(
        op, ": downsample must be a bool (got ", type(downsample).__name__, ")"))


def _check_ebm(h, skip, downsample) -> tuple:
    """ebm_block_tail(h [B, C, H, W], skip [same], downsample) -> (out, pre), each
    [B, C, H/2, W/2] when downsampling, else [B, C, H, W]: returns that shape."""
    _check_downsample("ebm_block_tail", downsample)
    _check_nchw_pair("ebm_block_tail", "h", h, "skip", skip)
    return _pooled("ebm_block_tail", h, downsample)


def _check_ebm_backward(grad, pre, downsample) -> tuple:
    """ebm_block_tail_backward(grad, pre [B, C, h, w], downsample) -> d [B, C, 2h, 2w] when
    downsampling, else [B, C, h, w]: returns that shape."""
    _check_downsample("ebm_block_tail_backward", downsample)
    _check_nchw_pair("ebm_block_tail_backward", "pre", pre, "grad", grad)
    b, c, hh, ww = pre.shape
    return (b, c, 2 * hh, 2 * ww) if downsample else (b, c, hh, ww)


def _check_gate(op: str, gate, h: Tensor) -> None:
    _check_tensor(op, "gate", gate)
    torch._check_value(gate.shape == h.shape[:2], explain(
        op, ": gate must have shape [B, C] = ", tuple(h.shape[:2]), " (got ",
        tuple(gate.shape), ")"))
    _check_like(op, "h", h, gate=gate)


def _check_scale(op: str, scale) -> float:
    return check_real(scale, f"{op}: scale", finite=True)


def _check_cell(skip, h, gate, scale) -> float:
    """nvae_cell_tail(skip [B, C, H, W], h [same], gate [B, C] or None, scale finite) -> out
    [B, C, H, W]; returns scale as a float."""
    scale = _check_scale("nvae_cell_tail", scale)
    _check_nchw_pair("nvae_cell_tail", "h", h, "skip", skip)
    if gate is not None:
        _check_gate("nvae_cell_tail", gate, h)
    return scale


def _check_cell_backward(grad, h, gate, scale) -> None:
    """nvae_cell_tail_backward(grad, h [B, C, H, W], gate [B, C], scale) -> (dh like h,
    dgate like gate)."""
    _check_scale("nvae_cell_tail_backward", scale)
    _check_nchw_pair("nvae_cell_tail_backward", "h", h, "grad", grad)
    _check_gate("nvae_cell_tail_backward", gate, h)


def _check_affine(x, scale, shift, op: str = "affine_swish") -> None:
    """affine_swish(x [N, C, ...], scale [C], shift [C]) -> out [N, C, ...]."""
    for name, t in (("x", x), ("scale", scale), ("shift", shift)):
        _check_tensor(op, name, t)
    torch._check_value(x.dim() >= 2, explain(op, ": x must have at least 2 dims [N, C, ...] "
                                                 "(got shape ", tuple(x.shape), ")"))
    c = x.shape[1]
    for name, v in (("scale", scale), ("shift", shift)):
        torch._check_value(v.shape == (c,), explain(op, ": ", name, " must have shape [C] = [",
                                                    c, "] (got ", tuple(v.shape), ")"))
    _check_like(op, "x", x, scale=scale, shift=shift)


def _check_affine_backward(grad, x, scale, shift) -> None:
    """affine_swish_backward(grad, x [N, C, ...], scale [C], shift [C]) -> (dx like x, dscale,
    dshift)."""
    op = "affine_swish_backward"
    _check_affine(x, scale, shift, op)
    _check_tensor(op, "grad", grad)
    torch._check_value(grad.shape == x.shape, explain(op, ": grad has shape ",
                                                      tuple(grad.shape), " but x has ",
                                                      tuple(x.shape)))
    _check_like(op, "x", x, grad=grad)


def _triton():
    from ..triton_kernels import epilogues as kernels
    return kernels


def _fake_ebm(h, skip, downsample):
    shape = _check_ebm(h, skip, downsample)
    return h.new_empty(shape), h.new_empty(shape)


def _fake_ebm_backward(grad, pre, downsample):
    return pre.new_empty(_check_ebm_backward(grad, pre, downsample))


def _fake_cell(skip, h, gate, scale):
    _check_cell(skip, h, gate, scale)
    return h.new_empty(h.shape)


def _fake_cell_backward(grad, h, gate, scale):
    _check_cell_backward(grad, h, gate, scale)
    return h.new_empty(h.shape), gate.new_empty(gate.shape)


def _fake_affine(x, scale, shift):
    _check_affine(x, scale, shift)
    return x.new_empty(x.shape)


def _fake_affine_backward(grad, x, scale, shift):
    _check_affine_backward(grad, x, scale, shift)
    return x.new_empty(x.shape), scale.new_empty(scale.shape), shift.new_empty(shift.shape)


for _schema, _fake in (
        ("ebm_block_tail(Tensor h, Tensor skip, bool downsample) -> (Tensor, Tensor)",
         _fake_ebm),
        ("ebm_block_tail_backward(Tensor grad, Tensor pre, bool downsample) -> Tensor",
         _fake_ebm_backward),
        ("nvae_cell_tail(Tensor skip, Tensor h, Tensor gate, float scale) -> Tensor",
         _fake_cell),
        ("nvae_cell_tail_backward(Tensor grad, Tensor h, Tensor gate, float scale) "
         "-> (Tensor, Tensor)", _fake_cell_backward),
        ("affine_swish(Tensor x, Tensor scale, Tensor shift) -> Tensor", _fake_affine),
        ("affine_swish_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) "
         "-> (Tensor, Tensor, Tensor)", _fake_affine_backward)):
    _op_name = _schema.split("(", 1)[0]
    _library.define(_schema, fake=_fake,
                    triton=lambda name=_op_name: getattr(_triton(), name))


def _kernel_ns(op: str, backend: str, x: Tensor):
    """The ``torch.ops`` namespace whose kernel runs ``op`` on ``x``, or None for the eager
    reference.

    Channels-last x (a model prepared in channels-last, FastSampler's default on the CPU):
    ``"auto"`` runs the eager reference, whose torch ops keep the layout. The kernels index
    channels in row-major NCHW, so they would read channels-last inputs through row-major
    copies and hand the next convolution row-major outputs to convert back; a named backend
    still runs its kernel that way (same results). In a CIFAR-10 chain step the eager
    epilogues take ~5% of the time (benchmarks/results/auto_choices_cpu.md).
    """
    chosen = _dispatch.resolve_backend(op, backend, x.device, unsupported=dtype_reason(x.dtype))
    if chosen == "eager" or (backend == "auto" and
                             activation_format(x) == torch.channels_last):
        return None
    return _library.namespace(chosen)


# ------------------------------------------------------------------------- public ops

def ebm_block_tail(h: Tensor, skip: Tensor, *, downsample: bool = False,
                   backend: str = "auto") -> Tensor:
    """``lip_swish(avg_pool2d(h + skip, 2) if downsample else h + skip)`` in one pass.

    h, skip: [B, C, H, W], same shape, dtype and device (H, W even when downsampling);
    downsample: a bool.
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

    skip, h: [B, C, H, W]; gate: [B, C]; same dtype and device; scale: a finite real.
    Returns [B, C, H, W].
    Autograd on the kernel backends saves h and gate. Raises as :func:`ebm_block_tail`.
    """
    scale = _check_cell(skip, h, gate, scale)
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


# ------------------------------------------------------------------------- autograd
# One set of formulas for both namespaces: `ns` is the namespace whose backward op is called.

def _pool_adjoint(d: Tensor) -> Tensor:
    return (d * 0.25).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _lipswish_d1(p: Tensor) -> Tensor:
    s = torch.sigmoid(p)
    return LIPSWISH_SCALE * (s + p * s * (1 - s))


def _lipswish_d2(p: Tensor) -> Tensor:
    s = torch.sigmoid(p)
    return LIPSWISH_SCALE * s * (1 - s) * (2 + p * (1 - 2 * s))


def _ebm_autograd(ns):
    """ebm_block_tail saves pre only."""
    def setup_context(ctx, inputs, output):
        _, _, downsample = inputs
        ctx.downsample = downsample
        # An unused output gradient stays None: materialised, the zeros of pre's gradient
        # were spread (repeat_interleave) and added to d on every backward, ~3x the
        # kernel's own time on the CPU.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_out, grad_pre):
        (pre,) = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(pre)
        d = ns.ebm_block_tail_backward(grad_out, pre, ctx.downsample)
        if grad_pre is not None:  # pre used directly (not by the public wrapper)
            d = d + (_pool_adjoint(grad_pre) if ctx.downsample else grad_pre)
        return d, d, None

    return backward, setup_context


def _ebm_backward_autograd(ns):
    """d = U(grad * f'(pre)), U = adjoint of the 2x2 average (or identity)."""
    def setup_context(ctx, inputs, output):
        grad, pre, downsample = inputs
        ctx.downsample = downsample
        ctx.save_for_backward(grad, pre)

    def backward(ctx, gg):
        grad, pre = ctx.saved_tensors
        p_gg = F.avg_pool2d(gg, 2) if ctx.downsample else gg
        d_grad = p_gg * _lipswish_d1(pre) if ctx.needs_input_grad[0] else None
        d_pre = p_gg * grad * _lipswish_d2(pre) if ctx.needs_input_grad[1] else None
        return d_grad, d_pre, None

    return backward, setup_context


def _cell_autograd(ns):
    """nvae_cell_tail saves h and gate."""
    def setup_context(ctx, inputs, output):
        _, h, gate, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(h, gate)

    def backward(ctx, grad):
        h, gate = ctx.saved_tensors
        dh = dgate = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dh, dgate = ns.nvae_cell_tail_backward(grad, h, gate, ctx.scale)
        return (grad if ctx.needs_input_grad[0] else None,
                dh if ctx.needs_input_grad[1] else None,
                dgate if ctx.needs_input_grad[2] else None, None)

    return backward, setup_context


def _cell_backward_autograd(ns):
    """dh = c grad gate, dgate = c sum_hw(grad h): both bilinear."""
    def setup_context(ctx, inputs, output):
        grad, h, gate, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(grad, h, gate)

    def backward(ctx, gg_dh, gg_dgate):
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

    return backward, setup_context


def _affine_autograd(ns):
    """affine_swish saves x, scale and shift."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x, scale, shift = ctx.saved_tensors
        dx, dscale, dshift = ns.affine_swish_backward(grad, x, scale, shift)
        return (dx if ctx.needs_input_grad[0] else None,
                dscale if ctx.needs_input_grad[1] else None,
                dshift if ctx.needs_input_grad[2] else None)

    return backward, setup_context


def _affine_backward_autograd(ns):
    """Written in torch ops from the reference (rarely used: double backward only)."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, gg_dx, gg_dscale, gg_dshift):
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

    return backward, setup_context


for _name, _make in (("ebm_block_tail", _ebm_autograd),
                     ("ebm_block_tail_backward", _ebm_backward_autograd),
                     ("nvae_cell_tail", _cell_autograd),
                     ("nvae_cell_tail_backward", _cell_backward_autograd),
                     ("affine_swish", _affine_autograd),
                     ("affine_swish_backward", _affine_backward_autograd)):
    _library.register_autograd(_name, _make)
