r"""Swish and LipSwish with a fused native kernel and a memory-light backward.

.. math::  \mathrm{swish}_c(x) = c\,x\,\sigma(x), \qquad
           \frac{d}{dx}\mathrm{swish}_c(x) = c\,\big(s + x\,s\,(1 - s)\big),\ s = \sigma(x)

with ``c = 1`` for :func:`swish` (SiLU) and ``c = 1/1.1`` for :func:`lip_swish` (1-Lipschitz).

* :func:`swish_reference` / :func:`swish_backward_reference` are the specification (plain
  PyTorch, any device and dtype; the forward reference is an ordinary differentiable torch
  expression, so everything autograd supports works on it, double backward included).
* The native backend runs ``torch.ops.vaebm_fast.swish_forward(x, scale)`` whose autograd
  formula (registered here with :func:`torch.library.register_autograd`) saves **only x** and
  recomputes the sigmoid in ``torch.ops.vaebm_fast.swish_backward(grad, x, scale)``: one saved
  tensor per activation instead of x and sigmoid(x). The backward op is itself differentiable
  (its derivative is written in torch ops), so double backward works on the native path too.
* The Triton backend (``vaebm_fast/triton_kernels/swish.py``) runs custom ops
  ``torch.ops.vaebm_fast_triton.swish_forward`` / ``swish_backward`` with the same semantics
  and the same autograd (:func:`register_swish_autograd`).
* Dtypes of the kernels: float16 / bfloat16 / float32 (computed in float32, rounded once)
  and float64. Outputs are new tensors in x's layout (:func:`activation_format`: channels-last
  for a channels-last 4-D x, row-major otherwise); any strides are accepted.

``backend="auto"`` follows the measured preference (on the CPU: the native kernel from 64K
elements, eager below, see ``_CPU_NATIVE_MIN_NUMEL``), and the reference for dtypes the kernel
does not take.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _native
from . import _dispatch

__all__ = ["swish", "lip_swish", "swish_reference", "swish_backward_reference",
           "activation_format", "LIPSWISH_SCALE"]

# "auto" on the CPU: the native kernel for tensors of at least this many elements, eager below.
# Forward + backward, fp32, 2-core AMD EPYC (AVX-512), torch 2.13, medians of 41 calls,
# eager / native time: 0.60 at 4K, 0.82 at 16K, 0.99 at 32K, 1.08 at 64K, 1.01 at 128K,
# 1.57 at 256K, 3.24 at 1M, 2.94 at 4M elements. Small tensors lose to the fixed cost of the
# Python autograd formula; the EBM's activations at batch 32 are 0.5-4M elements.
_CPU_NATIVE_MIN_NUMEL = 1 << 16
for _name in ("swish", "lip_swish"):
    _dispatch.register_op(_name, native="vaebm_fast::swish_forward", triton=True,
                          auto_native_min_numel={"cpu": _CPU_NATIVE_MIN_NUMEL})

# LipSwish divides Swish by 1.1, an upper bound of Swish's slope, so it is 1-Lipschitz.
LIPSWISH_SCALE = 1.0 / 1.1
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kernel_dtype_reason(dtype: torch.dtype) -> Optional[str]:
    """Why the elementwise kernels (swish, epilogues) cannot take ``dtype``, or None."""
    if dtype in _KERNEL_DTYPES:
        return None
    return f"takes float16, bfloat16, float32 or float64 tensors (got {dtype})"


def activation_format(x: Tensor) -> torch.memory_format:
    """The layout of an elementwise kernel's output for input ``x`` (csrc/layout.h is the C++
    twin): ``torch.channels_last`` for a 4-D x stored channels-last (a prepared model's
    activations on the CPU), ``torch.contiguous_format`` otherwise."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def swish_reference(x: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * x * sigmoid(x)`` in plain (differentiable) PyTorch: the specification."""
    out = x * torch.sigmoid(x)
    return out if scale == 1.0 else out * scale


def swish_backward_reference(grad: Tensor, x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient of :func:`swish_reference` w.r.t. ``x``: ``scale * grad * (s + x s (1 - s))``."""
    s = torch.sigmoid(x)
    return grad * (scale * (s + x * s * (1 - s)))


def _apply(op: str, x: Tensor, scale: float, backend: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor (got {type(x).__name__})")
    chosen = _dispatch.resolve_backend(op, backend, x.device, numel=x.numel(),
                                       unsupported=kernel_dtype_reason(x.dtype))
    if chosen == "native":
        return torch.ops.vaebm_fast.swish_forward(x, scale)
    if chosen == "triton":
        from ..triton_kernels import swish as _triton_swish  # noqa: F401 (registers the op)
        return torch.ops.vaebm_fast_triton.swish_forward(x, scale)
    return swish_reference(x, scale)


def swish(x: Tensor, backend: str = "auto") -> Tensor:
    """Swish / SiLU, ``x * sigmoid(x)``; autograd saves only ``x`` on the native backend.

    Raises:
        TypeError: ``x`` is not a tensor. ValueError: unknown backend, or ``backend="native"``
        with a dtype the kernel does not take. BackendUnavailableError: named backend cannot run.
    """
    return _apply("swish", x, 1.0, backend)


def lip_swish(x: Tensor, backend: str = "auto") -> Tensor:
    """LipSwish, ``x * sigmoid(x) / 1.1`` (1-Lipschitz); same backends and errors as swish."""
    return _apply("lip_swish", x, LIPSWISH_SCALE, backend)


# ------------------------------------------------------------------ autograd and fake kernels

def register_swish_autograd(namespace: str) -> None:
    """Autograd of ``<namespace>::swish_forward`` / ``swish_backward`` (the native ops and the
    Triton custom ops share it): the forward saves only x and its backward is the backward op;
    the backward op is differentiable in turn (double backward), with
    d/dgrad = the backward op itself (it is linear in grad) and
    d/dx = scale * gg * grad * s (1 - s) (2 + x (1 - 2 s)).
    """
    ops = getattr(torch.ops, namespace)

    def forward_setup_context(ctx, inputs, output) -> None:
        x, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(x)  # only the input: the sigmoid is recomputed in the backward

    def forward_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops.swish_backward(grad, x, ctx.scale), None

    def backward_setup_context(ctx, inputs, output) -> None:
        grad, x, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(grad, x)

    def backward_backward(ctx, gg):
        grad, x = ctx.saved_tensors
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = ops.swish_backward(gg, x, ctx.scale)
        if ctx.needs_input_grad[1]:
            s = torch.sigmoid(x)
            d_x = gg * grad * (ctx.scale * s * (1 - s) * (2 + x * (1 - 2 * s)))
        return d_grad, d_x, None

    torch.library.register_autograd(f"{namespace}::swish_forward", forward_backward,
                                    setup_context=forward_setup_context)
    torch.library.register_autograd(f"{namespace}::swish_backward", backward_backward,
                                    setup_context=backward_setup_context)


def _register() -> None:
    @torch.library.register_fake("vaebm_fast::swish_forward")
    def _swish_forward_fake(x, scale):
        return torch.empty_like(x, memory_format=activation_format(x))

    @torch.library.register_fake("vaebm_fast::swish_backward")
    def _swish_backward_fake(grad, x, scale):
        torch._check(grad.shape == x.shape, lambda: "swish_backward: grad and x differ in shape")
        return torch.empty_like(x, memory_format=activation_format(x))

    register_swish_autograd("vaebm_fast")


_native.on_load(_register)
