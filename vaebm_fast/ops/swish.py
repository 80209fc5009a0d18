r"""Swish and LipSwish with a fused kernel and a memory-light backward.

.. math::  \mathrm{swish}_c(x) = c\,x\,\sigma(x), \qquad
           \frac{d}{dx}\mathrm{swish}_c(x) = c\,\big(s + x\,s\,(1 - s)\big),\ s = \sigma(x)

with ``c = 1`` for :func:`swish` (SiLU) and ``c = 1/1.1`` for :func:`lip_swish` (1-Lipschitz).

Ops (both namespaces, see ``_library``): ``swish_forward(x, scale) -> y`` and
``swish_backward(grad, x, scale) -> dx``, x and grad of any shape, one floating dtype of
``KERNEL_DTYPES``; outputs are new tensors of x's shape in x's layout (``activation_format``:
channels-last for a channels-last 4-D x, row-major otherwise); any strides are accepted.
Autograd saves **only x** and recomputes the sigmoid in the backward op: one saved tensor per
activation instead of x and sigmoid(x). The backward op is differentiable in turn (double
backward).

:func:`swish_reference` / :func:`swish_backward_reference` are the specification (plain
differentiable PyTorch, any device and dtype). ``backend="auto"`` runs the kernel for tensors of
at least ``_CPU_NATIVE_MIN_NUMEL`` elements on the CPU (below, the Python autograd formula's
fixed cost loses; measured: ``benchmarks/results/auto_choices_cpu.md``) and the reference for
floating dtypes the kernels do not take; integer, bool and complex tensors are refused.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._kernel_rules import LIPSWISH_SCALE, activation_format, dtype_reason
from ..validation import explain
from . import _dispatch, _library

__all__ = ["swish", "lip_swish", "swish_reference", "swish_backward_reference",
           "LIPSWISH_SCALE"]

_CPU_NATIVE_MIN_NUMEL = 1 << 16
for _name in ("swish", "lip_swish"):
    _dispatch.register_op(_name, native="vaebm_fast::swish_forward", triton=True,
                          auto_native_min_numel={"cpu": _CPU_NATIVE_MIN_NUMEL})


# ------------------------------------------------------------------------- specification

def swish_reference(x: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * x * sigmoid(x)`` in plain (differentiable) PyTorch."""
    out = x * torch.sigmoid(x)
    return out if scale == 1.0 else out * scale


def swish_backward_reference(grad: Tensor, x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient of :func:`swish_reference` w.r.t. ``x``: ``scale * grad * (s + x s (1 - s))``."""
    s = torch.sigmoid(x)
    return grad * (scale * (s + x * s * (1 - s)))


# ------------------------------------------------------------------------- validation
# The public wrapper's check and the body of the fake kernel (which adds the output's like).

def _check_forward(x, scale) -> None:
    """swish_forward(x [*] floating, scale) -> y [*] in x's layout."""
    torch._check_type(isinstance(x, Tensor),
                      explain("swish: x must be a torch.Tensor (got ", type(x).__name__, ")"))
    # An activation of an integer, bool or complex tensor is a bug upstream, not a request.
    torch._check_value(x.is_floating_point(), explain(
        "swish: x must be a floating tensor (got ", x.dtype, "); convert it with .float()"))


def _check_backward(grad, x, scale) -> None:
    """swish_backward(grad [*], x [same], scale) -> dx [*] in x's layout."""
    for name, t in (("grad", grad), ("x", x)):
        torch._check_type(isinstance(t, Tensor), explain(
            "swish_backward: ", name, " must be a torch.Tensor (got ", type(t).__name__, ")"))
    torch._check_value(x.is_floating_point(), explain(
        "swish_backward: x must be a floating tensor (got ", x.dtype, ")"))
    torch._check_value(grad.dtype == x.dtype, explain("swish_backward: grad has dtype ",
                                                      grad.dtype, " but x has ", x.dtype))
    torch._check_value(grad.shape == x.shape, explain("swish_backward: grad has shape ",
                                                      tuple(grad.shape), " but x has ",
                                                      tuple(x.shape)))
    torch._check_value(grad.device == x.device, explain("swish_backward: grad is on ",
                                                        grad.device, " but x is on ",
                                                        x.device))


def _fake_forward(x, scale):
    _check_forward(x, scale)
    return torch.empty_like(x, memory_format=activation_format(x))


def _fake_backward(grad, x, scale):
    _check_backward(grad, x, scale)
    return torch.empty_like(x, memory_format=activation_format(x))


def _triton():
    from ..triton_kernels import swish as kernels
    return kernels


_library.define("swish_forward(Tensor x, float scale) -> Tensor", fake=_fake_forward,
                triton=lambda: _triton().swish_forward)
_library.define("swish_backward(Tensor grad, Tensor x, float scale) -> Tensor",
                fake=_fake_backward, triton=lambda: _triton().swish_backward)


# ------------------------------------------------------------------------- autograd

def _forward_autograd(ns):
    """The forward saves only x; its backward is the backward op."""
    def setup_context(ctx, inputs, output) -> None:
        x, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ns.swish_backward(grad, x, ctx.scale), None

    return backward, setup_context


def _backward_autograd(ns):
    """Double backward: d/dgrad is the backward op itself (linear in grad), and
    d/dx = scale * gg * grad * s (1 - s) (2 + x (1 - 2 s))."""
    def setup_context(ctx, inputs, output) -> None:
        grad, x, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(grad, x)

    def backward(ctx, gg):
        grad, x = ctx.saved_tensors
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = ns.swish_backward(gg, x, ctx.scale)
        if ctx.needs_input_grad[1]:
            s = torch.sigmoid(x)
            d_x = gg * grad * (ctx.scale * s * (1 - s) * (2 + x * (1 - 2 * s)))
        return d_grad, d_x, None

    return backward, setup_context


_library.register_autograd("swish_forward", _forward_autograd)
_library.register_autograd("swish_backward", _backward_autograd)


# ------------------------------------------------------------------------- public ops

def _apply(op: str, x: Tensor, scale: float, backend: str) -> Tensor:
    _check_forward(x, scale)
    chosen = _dispatch.resolve_backend(op, backend, x.device, numel=x.numel(),
                                       unsupported=dtype_reason(x.dtype))
    if chosen == "eager":
        return swish_reference(x, scale)
    return _library.namespace(chosen).swish_forward(x, scale)


def swish(x: Tensor, backend: str = "auto") -> Tensor:
    """Swish / SiLU, ``x * sigmoid(x)``: x [*] -> [*]; autograd saves only ``x`` on the kernel
    backends.

    Raises:
        TypeError: ``x`` is not a tensor. ValueError: ``x`` is not floating, an unknown
        backend, or a named kernel backend with a dtype the kernels do not take.
        BackendUnavailableError: the named backend cannot run here.
    """
    return _apply("swish", x, 1.0, backend)


def lip_swish(x: Tensor, backend: str = "auto") -> Tensor:
    """LipSwish, ``x * sigmoid(x) / 1.1`` (1-Lipschitz); same backends and errors as swish."""
    return _apply("lip_swish", x, LIPSWISH_SCALE, backend)
