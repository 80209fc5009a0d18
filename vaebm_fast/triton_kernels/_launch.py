"""Host-side helpers shared by the Triton launchers: grid of normal-aligned blocks, 64-bit
arguments as int32 halves (float64 ones as their bit patterns), the Triton dtype of a torch
dtype, and argument checks."""
from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl

from .._kernel_rules import (KERNEL_DTYPE_NAMES, KERNEL_DTYPES, compute_dtype,
                             elements_share_memory)

__all__ = ["BLOCK", "aligned_grid", "split64", "f64_args", "tl_dtype", "compute_dtype",
           "check_device", "check_dtype", "check_same_shape", "no_internal_overlap",
           "on_tensor_device"]

# Elements per program. 1024 elements = 256 Philox calls per program: enough independent work
# per warp to hide memory latency on a GPU, and few programs in the (per-program slow) CPU
# interpreter. A multiple of 4, as normal-aligned blocks need.
BLOCK = 1024

_TL_DTYPES = dict(zip(KERNEL_DTYPES, (tl.float16, tl.bfloat16, tl.float32, tl.float64)))


def aligned_grid(n: int, offset: int, block: int = BLOCK) -> tuple:
    """Grid of normal-aligned blocks (``philox.aligned_block``) covering ``n`` elements whose
    element ``e`` uses normal ``offset + e``: the first block starts ``offset % 4`` elements
    early, so ``cdiv(n + offset % 4, block)`` programs."""
    return (triton.cdiv(n + offset % 4, block),)


def split64(x: int) -> tuple:
    """The two's-complement halves ``(lo, hi)`` of a 64-bit int as signed int32 values
    (``philox.join64`` joins them in a kernel): see there why 64-bit arguments are split."""
    x &= 0xFFFFFFFFFFFFFFFF
    lo, hi = x & 0xFFFFFFFF, x >> 32
    return tuple(v - (1 << 32) if v >= 1 << 31 else v for v in (lo, hi))


def f64_args(x: float) -> tuple:
    """The IEEE float64 bit pattern of ``x`` as int32 halves (``philox.from_f64_bits`` undoes
    it in a kernel), so float64 coefficients reach kernels unrounded."""
    return split64(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def tl_dtype(dtype: torch.dtype):
    """Triton dtype of a floating torch dtype (float16/bfloat16/float32/float64)."""
    if dtype not in _TL_DTYPES:
        raise RuntimeError(f"expected {KERNEL_DTYPE_NAMES} (got {dtype})")
    return _TL_DTYPES[dtype]


def check_device(op: str, *tensors: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors (or CPU tensors in the interpreter), all on one."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{op}: all tensors must be on one device (got "
                         f"{', '.join(sorted(map(str, devices)))})")


def no_internal_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """Refuse a tensor written in place whose elements share memory (e.g. an ``expand``):
    which write lands would be unspecified."""
    if elements_share_memory(t):
        raise RuntimeError(f"{op}: {name} has elements sharing memory (e.g. from expand); "
                           f"pass a tensor with distinct elements (.clone())")


def check_dtype(op: str, *tensors: torch.Tensor, allowed=KERNEL_DTYPES) -> None:
    """The kernels index memory by element size: refuse a dtype they were not written for, and
    tensors of different dtypes."""
    dtype = tensors[0].dtype
    if dtype not in allowed or any(t.dtype != dtype for t in tensors):
        raise RuntimeError(f"{op} (Triton): tensors must share one dtype of {allowed} (got "
                         f"{[t.dtype for t in tensors]})")


def check_same_shape(op: str, *tensors: torch.Tensor) -> None:
    """Tensors read with one index must have one shape."""
    if any(t.shape != tensors[0].shape for t in tensors):
        raise RuntimeError(f"{op} (Triton): tensors must have one shape (got "
                         f"{[tuple(t.shape) for t in tensors]})")


def _first_tensor(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor):
            return v[0]
    return None


def on_tensor_device(fn):
    """Run ``fn`` with its first tensor argument's CUDA device current: Triton launches on the
    current device's stream, not on the tensors' device (a no-op for CPU tensors and when that
    device is current already)."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        t = _first_tensor(list(args) + list(kwargs.values()))
        if t is None or not t.is_cuda:
            return fn(*args, **kwargs)
        with torch.cuda.device(t.device):
            return fn(*args, **kwargs)
    return guarded
