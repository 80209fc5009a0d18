r"""Triton kernels of the replay-buffer ops (specification: ``vaebm_fast.ops.replay``).

A buffer is ``[N, *S]``, ``P = prod(S)`` elements per row.

* ``replay_gather(buffer, index, reinit, seed, offset) -> out`` [B, *S], new and contiguous:
  ``out[b] = normals offset + b*P ... offset + (b+1)*P - 1`` where ``reinit[b]``, else
  ``buffer[index[b]]``. Seen flat, element ``e`` of ``out`` uses normal ``offset + e``, so the
  kernel walks ``out`` in normal-aligned blocks (``philox.aligned_elements``) and draws the
  normals of a block only when one of its rows is fresh.
* ``replay_scatter_(buffer, index, values)``: ``buffer[index[b]] = values[b]`` in place.

Memory traffic: gather reads ``B*P`` elements (gathered rows only) and writes ``B*P``; scatter
reads and writes ``B*P``; ``index[b]`` / ``reinit[b]`` are re-read per element from cache.
Rows are addressed as ``base + index * row_stride + j``, so buffers whose rows are contiguous
(any row stride: a row slice ``buffer[::2]``, an ``expand`` for gathering) are used in place;
any other layout is gathered from a contiguous copy / scattered into one that is copied back
(a full pass over the buffer: avoid such layouts for large buffers).

Indices are not range-checked here (that would need a host sync); the public ops raise
``ValueError`` first. A direct call with an out-of-range index stays in bounds: its row
gathers as zeros / is not written.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .philox import aligned_elements, join64, normals_of_calls, philox_key, to_storage

__all__ = ["replay_gather", "replay_scatter_"]


@triton.jit(do_not_specialize=["row_stride", "n_rows", "P", "n", "seed_lo", "seed_hi",
                               "off_lo", "off_hi"])
def _gather_kernel(buf_ptr, row_stride, n_rows, index_ptr, reinit_ptr, out_ptr, P, n,
                   seed_lo: tl.int32, seed_hi: tl.int32, off_lo: tl.int32, off_hi: tl.int32,
                   BLOCK: tl.constexpr):
    e, first_call = aligned_elements(join64(off_lo, off_hi), tl.program_id(0), BLOCK)
    mask = (e >= 0) & (e < n)
    b = tl.where(mask, e, 0) // P
    j = tl.where(mask, e, 0) - b * P
    fresh = tl.load(reinit_ptr + b, mask=mask, other=0) != 0
    src = tl.load(index_ptr + b, mask=mask & ~fresh, other=0)
    keep = mask & ~fresh
    ok = keep & (src >= 0) & (src < n_rows)
    old = tl.load(buf_ptr + src * row_stride + j, mask=ok, other=0.0)
    tl.store(out_ptr + e, old, mask=keep)
    if tl.max(tl.where(mask & fresh, 1, 0), axis=0) > 0:  # a fresh row in this block
        k0, k1 = philox_key(seed_lo, seed_hi)
        noise = normals_of_calls(k0, k1, first_call, BLOCK // 4)
        tl.store(out_ptr + e, to_storage(noise, out_ptr.dtype.element_ty), mask=mask & fresh)


@triton.jit(do_not_specialize=["row_stride", "n_rows", "P", "n"])
def _scatter_kernel(buf_ptr, row_stride, n_rows, index_ptr, values_ptr, P, n,
                    BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = e < n
    b = tl.where(mask, e, 0) // P
    j = tl.where(mask, e, 0) - b * P
    dst = tl.load(index_ptr + b, mask=mask, other=0)
    ok = mask & (dst >= 0) & (dst < n_rows)
    tl.store(buf_ptr + dst * row_stride + j, tl.load(values_ptr + e, mask=ok), mask=ok)


def _rows(buffer: Tensor):
    """``(rows, in_place)``: ``buffer`` as [N, P] with unit stride inside a row, a view of it
    when its layout allows (``in_place``), else a contiguous copy."""
    n, p = buffer.shape[0], math.prod(buffer.shape[1:])
    try:
        rows = buffer.view(n, p)
    except RuntimeError:  # the row dims cannot be merged into one
        return buffer.contiguous().view(n, p), False
    if p > 1 and rows.stride(1) != 1:
        return rows.contiguous(), False
    return rows, True


def _check(op: str, buffer: Tensor, index: Tensor) -> None:
    _launch.tl_dtype(buffer.dtype)
    if buffer.dim() < 1:
        raise RuntimeError(f"{op}: buffer must have shape [N, *S]")
    if index.dtype != torch.int64 or index.dim() != 1:
        raise RuntimeError(f"{op}: index must be a 1-D int64 tensor")


@_launch.on_tensor_device
def replay_gather(buffer: Tensor, index: Tensor, reinit: Tensor, seed: int,
                  offset: int) -> Tensor:
    """buffer [N, *S], index int64 [B], reinit bool [B] -> new contiguous [B, *S]."""
    _check("replay_gather", buffer, index)
    if reinit.dtype != torch.bool or reinit.shape != index.shape:
        raise RuntimeError("replay_gather: reinit must be a bool tensor of index's shape")
    _launch.check_device("replay_gather", buffer, index, reinit)
    batch, p = index.shape[0], math.prod(buffer.shape[1:])
    out = torch.empty((batch, *buffer.shape[1:]), dtype=buffer.dtype, device=buffer.device)
    n = batch * p
    if n == 0:
        return out
    rows, _ = _rows(buffer)
    _gather_kernel[_launch.aligned_grid(n, offset)](
        rows if rows.numel() else out,  # an empty buffer is never read: any valid pointer
        rows.stride(0), rows.shape[0], index.contiguous(), reinit.contiguous(), out, p, n,
        *_launch.split64(seed), *_launch.split64(offset), BLOCK=_launch.BLOCK)
    return out



@_launch.on_tensor_device
def replay_scatter_(buffer: Tensor, index: Tensor, values: Tensor) -> None:
    """buffer [N, *S] (written in place), index int64 [B] (unique), values [B, *S]."""
    _check("replay_scatter_", buffer, index)
    if values.dtype != buffer.dtype or values.shape != (index.shape[0], *buffer.shape[1:]):
        raise RuntimeError("replay_scatter_: values must be [B, *S] of buffer's dtype")
    _launch.check_device("replay_scatter_", buffer, index, values)
    _launch.no_internal_overlap("replay_scatter_", "buffer", buffer)
    if torch._C._overlaps(values, buffer):  # rows written in parallel would race with reads
        raise RuntimeError("replay_scatter_: values and buffer are sharing memory; pass "
                           "values.clone()")
    n = values.numel()
    if n == 0:
        return
    rows, in_place = _rows(buffer)
    _scatter_kernel[(triton.cdiv(n, _launch.BLOCK),)](
        rows, rows.stride(0), rows.shape[0], index.contiguous(), values.contiguous(),
        n // index.shape[0], n, BLOCK=_launch.BLOCK)
    if not in_place:
        buffer.copy_(rows.view(buffer.shape))
