r"""Triton Swish kernels: the launchers behind ``torch.ops.vaebm_fast_triton.swish_forward`` /
``swish_backward`` (the op, its specification and autograd: ``vaebm_fast.ops.swish``).

Backend specifics. Elementwise over the flattened tensor, one program per BLOCK elements
(int64 offsets); outputs are new tensors in x's layout (``activation_format``), inputs are read
through copies in that layout. Memory traffic: the forward reads x and writes y (2 itemsize
bytes per element), the backward reads grad and x and writes dx (3 itemsize bytes); one exp and
one division per element. Precision: float32 arithmetic for float16 / bfloat16 / float32 and
float64 for float64; ``scale`` arrives as the halves of its float64 bit pattern
(``_launch.f64_args``; a Python float would reach a compiled kernel as float32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._kernel_rules import activation_format
from . import _launch
from .philox import from_f64_bits

__all__ = ["swish_forward", "swish_backward"]

_BLOCK = _launch.BLOCK


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


def _run_elementwise(kernel, out: Tensor, *inputs: Tensor, scale: float) -> Tensor:
    """Run an elementwise kernel over copies of ``inputs`` in ``out``'s layout (free when they
    already have it) into ``out``: the flat index is the same memory position in all of them."""
    n = out.numel()
    if n:
        fmt = activation_format(out)
        args = [t.contiguous(memory_format=fmt) for t in inputs]
        kernel[(triton.cdiv(n, _BLOCK),)](*args, out, n, *_launch.f64_args(scale),
                                          BLOCK=_BLOCK, F64=out.dtype == torch.float64)
    return out


def _new_like(x: Tensor) -> Tensor:
    """The output for input x: x's shape and dtype, in x's layout (``activation_format``)."""
    return torch.empty_like(x, memory_format=activation_format(x))


@_launch.on_tensor_device
def swish_forward(x: Tensor, scale: float) -> Tensor:
    """y = scale * x * sigmoid(x): x [*] -> a new tensor of x's shape, dtype and layout."""
    _launch.check_dtype("swish_forward", x)
    return _run_elementwise(_swish_forward_kernel, _new_like(x), x, scale=scale)


@_launch.on_tensor_device
def swish_backward(grad: Tensor, x: Tensor, scale: float) -> Tensor:
    """dx = scale * grad * (s + x s (1 - s)), s = sigmoid(x): grad, x [*] (one shape and dtype)
    -> a new tensor in x's layout."""
    _launch.check_dtype("swish_backward", x, grad)
    _launch.check_same_shape("swish_backward", grad, x)
    return _run_elementwise(_swish_backward_kernel, _new_like(x), grad, x, scale=scale)
