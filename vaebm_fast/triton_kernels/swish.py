r"""Triton Swish: ``vaebm_fast_triton::swish_forward`` and ``::swish_backward``.

Same semantics as the native kernels (csrc/cpu/swish.cpp) and the references in
``vaebm_fast/ops/swish.py``, for x (and grad) of any shape:

    forward:   y  = scale * x * s,                      s = sigmoid(x) = 1 / (1 + exp(-x))
    backward:  dx = scale * grad * (s + x s (1 - s))    (s recomputed from x)

Arithmetic in float32 for float16 / bfloat16 / float32 inputs (rounded once when stored) and in
float64 for float64; ``scale`` reaches the kernels as the halves of its float64 bit pattern
(``_launch.f64_args``: a plain Python float would be passed as float32) and is rounded to the
math dtype there. Outputs are new tensors in x's layout (``activation_format``: channels-last
or row-major); inputs are read through copies in that layout. Autograd is the native ops'
(``register_swish_autograd``): the forward saves only x, and the backward op is itself
differentiable (double backward).

Kernels: elementwise over the flattened tensor, one program per BLOCK elements (int64
offsets). Memory traffic: forward reads x and writes y (2 * itemsize B/elem), backward reads
grad and x and writes dx (3 * itemsize B/elem); one exp and one division per element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .philox import from_f64_bits

from ..ops.swish import activation_format, register_swish_autograd

__all__ = ["swish_forward", "swish_backward"]

_BLOCK = 1024
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _load_math(ptr, offs, ok, F64: tl.constexpr):
    """Elements ptr[offs] in the math dtype (float64 for float64 tensors, else float32)."""
    x = tl.load(ptr + offs, mask=ok, other=0.0)
    # if/else, not an early return: the compiler generates code after a constexpr `if` that
    # returns, and two returns of different types do not compile.
    if F64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    return x


@triton.jit(do_not_specialize=["scale_lo", "scale_hi"])
def _swish_forward_kernel(x, y, n, scale_lo: tl.int32, scale_hi: tl.int32, BLOCK: tl.constexpr,
                          F64: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    xv = _load_math(x, offs, ok, F64)
    scale = from_f64_bits(scale_lo, scale_hi).to(xv.dtype)
    s = 1.0 / (1.0 + tl.exp(-xv))
    tl.store(y + offs, (scale * (xv * s)).to(y.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["scale_lo", "scale_hi"])
def _swish_backward_kernel(g, x, dx, n, scale_lo: tl.int32, scale_hi: tl.int32,
                           BLOCK: tl.constexpr, F64: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    xv = _load_math(x, offs, ok, F64)
    scale = from_f64_bits(scale_lo, scale_hi).to(xv.dtype)
    gv = _load_math(g, offs, ok, F64)
    s = 1.0 / (1.0 + tl.exp(-xv))
    tl.store(dx + offs, (scale * gv * (s + xv * s * (1.0 - s))).to(dx.dtype.element_ty),
             mask=ok)


def _check(t: Tensor, op: str, name: str) -> None:
    torch._check(t.dtype in _DTYPES, lambda: f"{op}: {name} must be float16, bfloat16, float32 "
                                             f"or float64, got {t.dtype}")


def _new_like(x: Tensor) -> Tensor:
    """The output for input x: x's shape and dtype, in x's layout (``activation_format``)."""
    return torch.empty_like(x, memory_format=activation_format(x))


def _run_elementwise(kernel, out: Tensor, *inputs: Tensor, scale: float) -> Tensor:
    """Run an elementwise kernel over copies of ``inputs`` in ``out``'s layout (free when they
    already have it) into ``out``: the flat index is the same memory position in all of them."""
    n = out.numel()
    if n:
        fmt = activation_format(out)
        args = [t.contiguous(memory_format=fmt) for t in inputs]
        kernel[(triton.cdiv(n, _BLOCK),)](*args, out, n, *_launch.f64_args(scale), BLOCK=_BLOCK,
                                          F64=out.dtype == torch.float64)
    return out


@torch.library.custom_op("vaebm_fast_triton::swish_forward", mutates_args=())
@_launch.on_tensor_device
def swish_forward(x: Tensor, scale: float) -> Tensor:
    """y = scale * x * sigmoid(x), a new tensor of x's shape, dtype and layout."""
    _check(x, "swish_forward", "x")
    return _run_elementwise(_swish_forward_kernel, _new_like(x), x, scale=scale)


@swish_forward.register_fake
def _swish_forward_fake(x, scale):
    return _new_like(x)


@torch.library.custom_op("vaebm_fast_triton::swish_backward", mutates_args=())
@_launch.on_tensor_device
def swish_backward(grad: Tensor, x: Tensor, scale: float) -> Tensor:
    """dx = scale * grad * (s + x s (1 - s)), s = sigmoid(x); a new tensor in x's layout."""
    _check(x, "swish_backward", "x")
    _check(grad, "swish_backward", "grad")
    torch._check(grad.dtype == x.dtype, lambda: f"swish_backward: grad has dtype {grad.dtype} "
                                                f"but x has dtype {x.dtype}")
    torch._check(grad.shape == x.shape, lambda: f"swish_backward: grad has shape "
                                                f"{tuple(grad.shape)} but x has shape "
                                                f"{tuple(x.shape)}")
    return _run_elementwise(_swish_backward_kernel, _new_like(x), grad, x, scale=scale)


@swish_backward.register_fake
def _swish_backward_fake(grad, x, scale):
    torch._check(grad.shape == x.shape, lambda: "swish_backward: grad and x differ in shape")
    return _new_like(x)


register_swish_autograd("vaebm_fast_triton")
