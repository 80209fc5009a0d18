"""Triton kernels of the RNG ops: raw Philox4x32-10 words and a normal fill.

Ops (``torch.ops.vaebm_fast_triton.*``; specification: ``vaebm_fast.ops.rng``):

* ``philox4x32(seed, offsets) -> words``: ``offsets`` int64 [*] call indices (read as uint64),
  ``words`` int64 [*, 4] in [0, 2**32). Bit-exact with the reference.
* ``philox_normal_(out, seed, offset)``: fills the contiguous floating tensor ``out`` (read
  flat, any shape) with normals ``offset, offset + 1, ...``; float32 normals rounded to
  float16/bfloat16 or widened to float64.
* ``philox_normal_rows_(out, seed, offset, first_row)``: ``out`` [B, *] contiguous; row ``b``
  (read flat) gets normals ``offset, offset + 1, ...`` of row stream ``first_row + b``. One
  program per normal-aligned block of a row (a 1-D grid of ``B * blocks_per_row``, which has
  no 65535 limit), so a row costs at most one partly used Philox call at each end.

Memory traffic: ``philox4x32`` reads 8 bytes and writes 32 per call index; ``philox_normal_``
only writes (2-8 bytes per element). Both are compute-bound on a GPU: 10 rounds of two 32x32
multiplies per call, plus a log, sqrt, sin and cos per two normals.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .philox import (aligned_block, aligned_row_block, join64, philox_call, philox_key,
                     row_stream_words, to_storage)

__all__ = ["philox4x32", "philox_normal_", "philox_normal_rows_"]


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "n"])
def _philox4x32_kernel(offsets_ptr, out_ptr, seed_lo: tl.int32, seed_hi: tl.int32,
                       n: tl.int64, BLOCK: tl.constexpr):
    # One call index per element; the [BLOCK, 4] words are written as one contiguous
    # 4 * BLOCK run of int64 (interleaved w0 w1 w2 w3 per call).
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < n
    call = tl.load(offsets_ptr + i, mask=mask, other=0)
    k0, k1 = philox_key(seed_lo, seed_hi)
    w0, w1, w2, w3 = philox_call(k0, k1, call)
    words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3)).to(tl.int64)  # zext
    j = i * 4  # output position of word 0 of call i, as int64
    pos = tl.reshape(j[:, None] + tl.arange(0, 4)[None, :].to(tl.int64), (4 * BLOCK,))
    m4 = tl.reshape(tl.broadcast_to(mask[:, None], (BLOCK, 4)), (4 * BLOCK,))
    tl.store(out_ptr + pos, words, mask=m4)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "n"])
def _philox_normal_kernel(out_ptr, seed_lo: tl.int32, seed_hi: tl.int32, off_lo: tl.int32,
                          off_hi: tl.int32, n: tl.int64, BLOCK: tl.constexpr):
    # Normal-aligned blocks: element e = normal offset + e; write-only, one store per element.
    k0, k1 = philox_key(seed_lo, seed_hi)
    e, noise = aligned_block(k0, k1, join64(off_lo, off_hi), tl.program_id(0), BLOCK)
    tl.store(out_ptr + e, to_storage(noise, out_ptr.dtype.element_ty), mask=(e >= 0) & (e < n))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "row_lo", "row_hi",
                               "n", "blocks_per_row"])
def _philox_normal_rows_kernel(out_ptr, seed_lo: tl.int32, seed_hi: tl.int32, off_lo: tl.int32,
                               off_hi: tl.int32, row_lo: tl.int32, row_hi: tl.int32,
                               n: tl.int64, blocks_per_row: tl.int64, BLOCK: tl.constexpr):
    # Program p: block p % blocks_per_row of row b = p // blocks_per_row (n elements a row).
    pid = tl.program_id(0).to(tl.int64)
    b = pid // blocks_per_row
    k0, k1 = philox_key(seed_lo, seed_hi)
    s0, s1 = row_stream_words(join64(row_lo, row_hi) + b)
    e, noise = aligned_row_block(k0, k1, s0, s1, join64(off_lo, off_hi),
                                 pid - b * blocks_per_row, BLOCK)
    tl.store(out_ptr + b * n + e, to_storage(noise, out_ptr.dtype.element_ty),
             mask=(e >= 0) & (e < n))


@_launch.on_tensor_device
def philox4x32(seed: int, offsets: Tensor) -> Tensor:
    """Philox4x32-10 words: int64 [*] call indices -> int64 [*, 4] (see module docstring)."""
    if offsets.dtype != torch.int64:
        raise RuntimeError(f"philox4x32: offsets must be int64 (got {offsets.dtype})")
    flat = offsets.contiguous().reshape(-1)
    out = torch.empty((*offsets.shape, 4), dtype=torch.int64, device=offsets.device)
    n = flat.numel()
    if n:
        block = 256
        _philox4x32_kernel[(triton.cdiv(n, block),)](flat, out, *_launch.split64(seed), n,
                                                     BLOCK=block)
    return out



@_launch.on_tensor_device
def philox_normal_(out: Tensor, seed: int, offset: int) -> None:
    """Fill contiguous ``out`` (float16/bfloat16/float32/float64, any shape, read flat) with
    normals number ``offset .. offset + out.numel() - 1`` of the stream for ``seed``."""
    _launch.tl_dtype(out.dtype)  # raises for non-floating dtypes
    if not out.is_contiguous():
        raise RuntimeError("philox_normal_: out must be contiguous")
    n = out.numel()
    if n:
        _philox_normal_kernel[_launch.aligned_grid(n, offset)](
            out, *_launch.split64(seed), *_launch.split64(offset), n, BLOCK=_launch.BLOCK)


@_launch.on_tensor_device
def philox_normal_rows_(out: Tensor, seed: int, offset: int, first_row: int) -> None:
    """Fill contiguous ``out`` [B, *] (float16/bfloat16/float32/float64): row ``b`` read flat
    gets normals ``offset ..`` of row stream ``first_row + b``."""
    _launch.tl_dtype(out.dtype)  # raises for non-floating dtypes
    if not out.is_contiguous() or out.dim() == 0:
        raise RuntimeError("philox_normal_rows_: out must be contiguous with dim >= 1")
    if first_row < 0:
        raise RuntimeError(f"philox_normal_rows_: first_row must be >= 0 (got {first_row})")
    if out.numel() == 0:
        return
    rows = out.shape[0]
    n = out.numel() // rows
    blocks_per_row = _launch.aligned_grid(n, offset)[0]
    _philox_normal_rows_kernel[(rows * blocks_per_row,)](
        out, *_launch.split64(seed), *_launch.split64(offset), *_launch.split64(first_row), n,
        blocks_per_row, BLOCK=_launch.BLOCK)
