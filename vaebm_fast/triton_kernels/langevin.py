r"""Triton kernels of the Langevin update: the launchers behind
``torch.ops.vaebm_fast_triton.langevin_step_`` and ``langevin_step_graphed_`` (the ops and
their specification: ``vaebm_fast.ops.langevin``).

One launch for the whole list of tensors. Per-launch overhead (~5-20 us of Python and driver
per Triton launch) would dominate VAEBM's many small latent groups if each tensor had its own
launch, so a device table describes the list and one grid covers it:

* ``table`` int64 [6, n]: per tensor its data pointer, its gradient's pointer, its start in
  the concatenation, its numel, the first program that works on it, and its row length
  ``numel / B`` (for ``half_sq_norm``). Tensor ``i`` gets ``cdiv(numel + 3, BLOCK)``
  programs (room for any alignment of its first normal; empty tensors get none), so the grid
  does not depend on the offset.
* Program ``p`` finds its tensor by a binary search over the first-program column
  (``ceil(log2 n)`` scalar loads, cached), then handles a normal-aligned block of it
  (``philox.aligned_block``: one Philox call per four elements, no redundant noise).
* The table depends only on the pointers, numels and B, so it is cached (a chain updates the
  same tensors every step); a miss costs one small host-to-device copy, which a CUDA graph
  cannot hold safely: the table must exist before a capture (a warm-up call with the same
  tensors builds it), and a table a graph used is kept for the process's life.

Row mode (``first_row`` given; every tensor [B, ...]): tensor ``i`` gets ``B *
cdiv(row_len + 3, BLOCK)`` programs, program ``q`` of it handling block ``q % blocks_per_row``
of row ``q // blocks_per_row``, with the normals of row stream ``first_row + b``
(``philox.aligned_row_block``) and the start column holding the tensor's start within a row.
The noise stays one Philox call per four elements; a row costs at most one partly used call at
each end, and rows shorter than a block leave lanes idle (a [B, 4] tensor: 4 of 1024 lanes
busy). The row mode lives in the table key, so flat and row steps of the same tensors have
tables of their own.

``langevin_step_graphed_`` reads the stream's seed and offset from device memory
(``rng_state`` int64 [2]; [3] adds the first row stream and selects row mode) instead of
kernel arguments, which a graph would freeze at capture.

Memory traffic per element: read t and g, write t (3 x dtype size; 12 bytes in float32); the
noise never touches memory. ``half_sq_norm`` adds a block-level reduction and one or two
atomic adds per program when a row is at least a block long (a per-element atomic add
otherwise), so its sums are not bit-reproducible across runs. Non-contiguous tensors are
updated on a contiguous copy that is copied back (``langevin_step_`` only; the graphed op takes
contiguous tensors). Precision: float32 arithmetic for float16 / bfloat16 / float32 tensors
(one rounding on store), float64 for float64 (float32 normals widened); float coefficients
arrive as float64 bit patterns (``_launch.f64_args``).
"""
from __future__ import annotations

import collections
import math
from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .philox import (aligned_block, aligned_row_block, from_f64_bits, join64, philox_key,
                     row_stream_words, to_storage)

__all__ = ["langevin_step_", "langevin_step_graphed_", "pointer_table"]

# Rows of the per-tensor table.
_T_PTR, _G_PTR, _START, _NUMEL, _FIRST_PROGRAM, _ROW_LEN = (tl.constexpr(r) for r in range(6))
_TABLE_CACHE_SIZE = 64
# key -> (device table, the pinned host tensor it was copied from): the host copy lives as long
# as the table, since a CUDA graph that captured the copy re-reads it on every replay.
_table_cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
# Entries a CUDA graph captured: never evicted (the graph reads their memory on every replay).
_graph_tables: dict = {}


@triton.jit
def find_tensor(table_ptr, n_tensors, pid, DTYPE: tl.constexpr, SEARCH_STEPS: tl.constexpr):
    """The tensor program ``pid`` works on: (index i, t pointer, g pointer, start of i in the
    concatenation, numel of i, block number of pid within i)."""
    # The last i with first_program[i] <= pid (empty tensors share their successor's first
    # program and lose the tie). Branch-free binary lifting over i.
    first_col = table_ptr + _FIRST_PROGRAM * n_tensors
    i = 0
    for s in tl.static_range(SEARCH_STEPS):
        cand = i + (1 << (SEARCH_STEPS - 1 - s))
        ok = cand < n_tensors
        first = tl.load(first_col + tl.where(ok, cand, 0))
        i = tl.where(ok & (first <= pid), cand, i)
    t_ptr = tl.load(table_ptr + _T_PTR * n_tensors + i).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(table_ptr + _G_PTR * n_tensors + i).to(tl.pointer_type(DTYPE))
    start = tl.load(table_ptr + _START * n_tensors + i)
    numel = tl.load(table_ptr + _NUMEL * n_tensors + i)
    return i, t_ptr, g_ptr, start, numel, pid - tl.load(first_col + i)


@triton.jit
def noise_block(table_ptr, n_tensors, i, start, numel, block_of_tensor, k0, k1, offset,
                first_row, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The elements of tensor ``i`` that block ``block_of_tensor`` of it updates and their
    normals: ``(j, mask, noise)``, int64 [BLOCK] element numbers (valid where ``mask``) and
    float32 [BLOCK] normals. Flat mode: element j uses normal offset + start + j of the flat
    stream. Row mode (``ROWS``): the tensor's blocks go row by row, and element jr of row b
    uses normal offset + start + jr of row stream first_row + b (start: the tensor's start
    within a row)."""
    if ROWS:
        row_len = tl.load(table_ptr + _ROW_LEN * n_tensors + i)
        blocks_per_row = (row_len + 3 + BLOCK - 1) // BLOCK
        block = block_of_tensor.to(tl.int64)
        b = block // blocks_per_row
        s0, s1 = row_stream_words(first_row + b)
        jr, noise = aligned_row_block(k0, k1, s0, s1, offset + start,
                                      block - b * blocks_per_row, BLOCK)
        mask = (jr >= 0) & (jr < row_len)
        j = b * row_len + jr
    else:
        j, noise = aligned_block(k0, k1, offset + start, block_of_tensor, BLOCK)
        mask = (j >= 0) & (j < numel)
    return j, mask, noise


@triton.jit
def update_block(table_ptr, n_tensors, i, t_ptr, g_ptr, j, mask, noise, hsn_ptr, n_rows,
                 half_step_lo, half_step_hi, prior_lo, prior_hi, sigma_lo, sigma_hi,
                 clip_lo, clip_hi, low_lo, low_hi, high_lo, high_hi,
                 DTYPE: tl.constexpr, COMPUTE: tl.constexpr, HAS_HSN: tl.constexpr,
                 BLOCK: tl.constexpr):
    """The update of elements ``j`` (where ``mask``) of tensor ``i`` with their normals, and
    their share of ``half_sq_norm``; coefficients arrive as float64 bit halves."""
    # Coefficients rounded once to the arithmetic dtype, as torch does with Python scalars.
    half_step = from_f64_bits(half_step_lo, half_step_hi).to(COMPUTE)
    prior = from_f64_bits(prior_lo, prior_hi).to(COMPUTE)
    sigma = from_f64_bits(sigma_lo, sigma_hi).to(COMPUTE)
    clip = from_f64_bits(clip_lo, clip_hi).to(COMPUTE)  # +inf: no clip
    low = from_f64_bits(low_lo, low_hi).to(COMPUTE)  # -inf / +inf: open sides
    high = from_f64_bits(high_lo, high_hi).to(COMPUTE)

    x = tl.load(t_ptr + j, mask=mask, other=0.0).to(COMPUTE)
    g = tl.load(g_ptr + j, mask=mask, other=0.0).to(COMPUTE)
    # Comparisons written so that NaN passes through (as torch.clamp).
    g = tl.where(g < -clip, -clip, tl.where(g > clip, clip, g))
    new = x - half_step * (g + prior * x) + sigma * noise.to(COMPUTE)
    new = tl.where(new < low, low, tl.where(new > high, high, new))
    stored = to_storage(new, DTYPE)
    tl.store(t_ptr + j, stored, mask=mask)

    if HAS_HSN:
        # 0.5 * ||t[b]||^2 of the stored values; rows of this tensor are row_len long.
        v = stored.to(COMPUTE)
        sq = tl.where(mask, 0.5 * v * v, 0.0)
        row_len = tl.load(table_ptr + _ROW_LEN * n_tensors + i)
        row = tl.where(mask, j, 0) // row_len
        if row_len >= BLOCK:
            # The block's elements lie in at most two consecutive rows: two reductions, two
            # atomics per program.
            row0 = tl.min(tl.where(mask, row, n_rows), axis=0)
            s0 = tl.sum(tl.where(row == row0, sq, 0.0), axis=0)
            s1 = tl.sum(tl.where(row == row0 + 1, sq, 0.0), axis=0)
            tl.atomic_add(hsn_ptr + row0, s0, mask=row0 < n_rows)
            tl.atomic_add(hsn_ptr + row0 + 1, s1, mask=row0 + 1 < n_rows)
        else:
            tl.atomic_add(hsn_ptr + row, sq, mask=mask)


@triton.jit(do_not_specialize=[
    "n_tensors", "n_rows", "seed_lo", "seed_hi", "off_lo", "off_hi", "row_lo", "row_hi",
    "half_step_lo", "half_step_hi", "prior_lo", "prior_hi", "sigma_lo", "sigma_hi", "clip_lo",
    "clip_hi", "low_lo", "low_hi", "high_lo", "high_hi"])
def _langevin_kernel(table_ptr, n_tensors, hsn_ptr, n_rows,
                     seed_lo: tl.int32, seed_hi: tl.int32, off_lo: tl.int32, off_hi: tl.int32,
                     row_lo: tl.int32, row_hi: tl.int32,
                     half_step_lo: tl.int32, half_step_hi: tl.int32,
                     prior_lo: tl.int32, prior_hi: tl.int32,
                     sigma_lo: tl.int32, sigma_hi: tl.int32, clip_lo: tl.int32, clip_hi: tl.int32,
                     low_lo: tl.int32, low_hi: tl.int32, high_lo: tl.int32, high_hi: tl.int32,
                     DTYPE: tl.constexpr, COMPUTE: tl.constexpr, HAS_HSN: tl.constexpr,
                     ROWS: tl.constexpr, SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr):
    # 64-bit scalars (seed, offset, first row, float64 coefficients) arrive as int32 halves
    # (join64).
    i, t_ptr, g_ptr, start, numel, block_of_tensor = find_tensor(
        table_ptr, n_tensors, tl.program_id(0), DTYPE, SEARCH_STEPS)
    k0, k1 = philox_key(seed_lo, seed_hi)
    j, mask, noise = noise_block(table_ptr, n_tensors, i, start, numel, block_of_tensor, k0, k1,
                                 join64(off_lo, off_hi), join64(row_lo, row_hi), ROWS, BLOCK)
    update_block(table_ptr, n_tensors, i, t_ptr, g_ptr, j, mask, noise, hsn_ptr, n_rows,
                 half_step_lo, half_step_hi, prior_lo, prior_hi, sigma_lo, sigma_hi,
                 clip_lo, clip_hi, low_lo, low_hi, high_lo, high_hi,
                 DTYPE, COMPUTE, HAS_HSN, BLOCK)


def pointer_table(work: List[Tensor], grads: List[Tensor], n_rows: int, block: int,
                  rows: bool = False) -> tuple:
    """(device table int64 [6, n], number of programs); cached on pointers/numels/B/mode.
    ``rows``: row mode (B = n_rows rows per tensor, each its own normal-aligned blocks).

    Under CUDA-graph capture the table must already exist (the same tensors stepped once
    before the capture, as a warm-up does): building it copies from the host, which a graph
    cannot do safely. A table a graph captured is kept for the life of the process."""
    numels = [t.numel() for t in work]
    key = (work[0].device, tuple(t.data_ptr() for t in work),
           tuple(g.data_ptr() for g in grads), tuple(numels), n_rows, block, rows)
    row_lens = [n // n_rows if n_rows else 1 for n in numels]
    if rows:  # B rows of row_len elements, each rounded up to whole blocks
        programs = [n_rows * triton.cdiv(r + 3, block) if n else 0
                    for n, r in zip(numels, row_lens)]
    else:
        programs = [triton.cdiv(n + 3, block) if n else 0 for n in numels]
    total_programs = sum(programs)
    capturing = work[0].is_cuda and torch.cuda.is_current_stream_capturing()
    entry = _table_cache.get(key)
    if entry is not None:
        _table_cache.move_to_end(key)
        if capturing:
            _graph_tables[key] = entry
        return entry[0], total_programs
    if capturing:
        raise RuntimeError(
            "langevin_step_ (Triton): these tensors and gradients were not stepped before the "
            "CUDA graph capture began, so their pointer table would be copied from the host "
            "inside the graph. Run one step on the same tensors and gradient buffers before "
            "capturing (a warm-up), and keep them (static buffers) for the graph's life.")
    starts, firsts, s, f = [], [], 0, 0
    for n, r, p in zip(numels, row_lens, programs):
        starts.append(s)  # start in the concatenation (flat), or within a row (row mode)
        firsts.append(f)
        s, f = s + (r if rows else n), f + p
    host = torch.tensor([list(key[1]), list(key[2]), starts, numels, firsts, row_lens],
                        dtype=torch.int64)
    if work[0].device.type == "cuda":
        host = host.pin_memory()  # lets the copy below run asynchronously
    table = host.to(work[0].device, non_blocking=True)
    _table_cache[key] = (table, host)
    while len(_table_cache) > _TABLE_CACHE_SIZE:
        _table_cache.popitem(last=False)
    return table, total_programs


def _check_rows(tensors, first_row) -> int:
    """Row mode's minimal checks; returns B."""
    if first_row < 0:
        raise RuntimeError(f"langevin_step_: first_row must be >= 0 (got {first_row})")
    n_rows = tensors[0].shape[0] if tensors[0].dim() else -1
    if any(t.dim() == 0 or t.shape[0] != n_rows for t in tensors):
        raise RuntimeError("langevin_step_: first_row (row mode) needs every tensor with "
                           "dim >= 1 and the same dim 0")
    return n_rows


def _check(tensors, grads, half_sq_norm) -> int:
    """Minimal checks that keep the kernel in bounds; returns B (0 without half_sq_norm).
    The public op (vaebm_fast.ops.langevin) validates everything with friendlier messages."""
    if len(tensors) != len(grads):
        raise RuntimeError("langevin_step_: tensors and grads must have the same length")
    dtype = tensors[0].dtype
    _launch.tl_dtype(dtype)
    _launch.check_device("langevin_step_", *tensors, *grads,
                         *([half_sq_norm] if half_sq_norm is not None else []))
    for i, (t, g) in enumerate(zip(tensors, grads)):
        if t.shape != g.shape or t.dtype != dtype or g.dtype != dtype:
            raise RuntimeError(f"langevin_step_: grads[{i}] must have the shape and dtype of "
                             f"tensors[{i}], and all tensors one dtype")
        _launch.no_internal_overlap("langevin_step_", f"tensors[{i}]", t)
    if half_sq_norm is None:
        return 0
    n_rows = tensors[0].shape[0] if tensors[0].dim() else -1
    if any(t.dim() == 0 or t.shape[0] != n_rows for t in tensors):
        raise RuntimeError("langevin_step_: half_sq_norm needs every tensor with dim >= 1 and "
                         "the same dim 0")
    if (half_sq_norm.dtype != _launch.compute_dtype(dtype) or half_sq_norm.dim() != 1
            or half_sq_norm.shape[0] != n_rows or not half_sq_norm.is_contiguous()):
        raise RuntimeError(f"langevin_step_: half_sq_norm must be a contiguous "
                         f"{_launch.compute_dtype(dtype)} tensor of shape [{n_rows}]")
    return n_rows


@_launch.on_tensor_device
def langevin_step_(tensors: List[Tensor], grads: List[Tensor], step_size: float, seed: int,
                   offset: int, prior_weight: float, noise_scale: float,
                   grad_clip: Optional[float], clamp_low: Optional[float],
                   clamp_high: Optional[float], half_sq_norm: Optional[Tensor] = None,
                   first_row: Optional[int] = None) -> None:
    """In-place Langevin step on every ``tensors[i]`` [*] given ``grads[i]`` [same shape], noise
    at (seed, offset), from row streams ``first_row + b`` in row mode (``first_row`` not
    None); ``half_sq_norm`` [B] optional output (None for none)."""
    if not tensors:
        if half_sq_norm is not None:
            raise RuntimeError("langevin_step_: half_sq_norm needs at least one tensor (B is "
                             "their dim 0)")
        return
    n_rows = _check(tensors, grads, half_sq_norm)
    rows = first_row is not None
    if rows:
        n_rows = _check_rows(tensors, first_row)
    if half_sq_norm is not None:
        half_sq_norm.zero_()  # the kernel accumulates into it
    work = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    gwork = [g.contiguous() for g in grads]
    if sum(t.numel() for t in work) == 0:
        return
    table, programs = pointer_table(work, gwork, n_rows, _launch.BLOCK, rows)
    inf = math.inf
    f64 = _launch.f64_args
    dtype = tensors[0].dtype
    _langevin_kernel[(programs,)](
        table, len(work), half_sq_norm if half_sq_norm is not None else table, n_rows,
        *_launch.split64(seed), *_launch.split64(offset), *_launch.split64(first_row or 0),
        *f64(step_size / 2),
        *f64(prior_weight), *f64(noise_scale), *f64(inf if grad_clip is None else grad_clip),
        *f64(-inf if clamp_low is None else clamp_low),
        *f64(inf if clamp_high is None else clamp_high),
        DTYPE=_launch.tl_dtype(dtype), COMPUTE=_launch.tl_dtype(_launch.compute_dtype(dtype)),
        HAS_HSN=half_sq_norm is not None, ROWS=rows,
        SEARCH_STEPS=max(1, (len(work) - 1).bit_length()),
        BLOCK=_launch.BLOCK)
    for t, w in zip(tensors, work):
        if w is not t:
            t.copy_(w)


@triton.jit(do_not_specialize=[
    "n_tensors", "n_rows", "add_lo", "add_hi", "half_step_lo", "half_step_hi", "prior_lo",
    "prior_hi", "sigma_lo", "sigma_hi", "clip_lo", "clip_hi", "low_lo", "low_hi", "high_lo",
    "high_hi"])
def _langevin_graphed_kernel(table_ptr, n_tensors, hsn_ptr, n_rows, rng_ptr,
                            add_lo: tl.int32, add_hi: tl.int32,
                            half_step_lo: tl.int32, half_step_hi: tl.int32,
                            prior_lo: tl.int32, prior_hi: tl.int32,
                            sigma_lo: tl.int32, sigma_hi: tl.int32,
                            clip_lo: tl.int32, clip_hi: tl.int32,
                            low_lo: tl.int32, low_hi: tl.int32, high_lo: tl.int32,
                            high_hi: tl.int32,
                            DTYPE: tl.constexpr, COMPUTE: tl.constexpr, HAS_HSN: tl.constexpr,
                            ROWS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                            BLOCK: tl.constexpr):
    i, t_ptr, g_ptr, start, numel, block_of_tensor = find_tensor(
        table_ptr, n_tensors, tl.program_id(0), DTYPE, SEARCH_STEPS)
    # The stream address from device memory: key = (seed lo, seed hi), offset + offset_add,
    # and in row mode the first row stream, rng_state[2].
    seed = tl.load(rng_ptr)
    k0 = seed.to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    offset = tl.load(rng_ptr + 1) + join64(add_lo, add_hi)
    if ROWS:
        first_row = tl.load(rng_ptr + 2)
    else:
        first_row = offset  # unused
    j, mask, noise = noise_block(table_ptr, n_tensors, i, start, numel, block_of_tensor, k0, k1,
                                 offset, first_row, ROWS, BLOCK)
    update_block(table_ptr, n_tensors, i, t_ptr, g_ptr, j, mask, noise, hsn_ptr, n_rows,
                 half_step_lo, half_step_hi, prior_lo, prior_hi, sigma_lo, sigma_hi,
                 clip_lo, clip_hi, low_lo, low_hi, high_lo, high_hi,
                 DTYPE, COMPUTE, HAS_HSN, BLOCK)


@_launch.on_tensor_device
@_launch.on_tensor_device
def langevin_step_graphed_(tensors: List[Tensor], grads: List[Tensor], step_size: float,
                           rng_state: Tensor, offset_add: int, prior_weight: float,
                           noise_scale: float, grad_clip: Optional[float],
                           clamp_low: Optional[float], clamp_high: Optional[float],
                           half_sq_norm: Optional[Tensor] = None) -> None:
    """As :func:`langevin_step_` on contiguous tensors, noise at ``(rng_state[0], rng_state[1]
    + offset_add)`` read by the kernel; ``rng_state`` int64 [2] is not advanced. An int64 [3]
    ``rng_state`` selects row mode with ``first_row = rng_state[2]`` (read by the kernel too,
    so its range cannot be checked here)."""
    if not tensors:
        return
    n_rows = _check(tensors, grads, half_sq_norm)
    if rng_state.dtype != torch.int64 or rng_state.shape not in ((2,), (3,)) or \
            rng_state.device != tensors[0].device:
        raise RuntimeError("langevin_step_graphed_: rng_state must be an int64 [2] or [3] "
                           "tensor on the tensors' device")
    rows = rng_state.shape == (3,)
    if rows:
        n_rows = _check_rows(tensors, 0)
    if any(not t.is_contiguous() for t in list(tensors) + list(grads)):
        raise RuntimeError("langevin_step_graphed_: tensors and grads must be contiguous")
    if half_sq_norm is not None:
        half_sq_norm.zero_()  # the kernel accumulates into it
    table, programs = pointer_table(tensors, grads, n_rows, _launch.BLOCK, rows)
    if programs == 0:
        return
    inf = math.inf
    f64 = _launch.f64_args
    dtype = tensors[0].dtype
    _langevin_graphed_kernel[(programs,)](
        table, len(tensors), half_sq_norm if half_sq_norm is not None else table, n_rows,
        rng_state, *_launch.split64(offset_add), *f64(step_size / 2), *f64(prior_weight),
        *f64(noise_scale), *f64(inf if grad_clip is None else grad_clip),
        *f64(-inf if clamp_low is None else clamp_low),
        *f64(inf if clamp_high is None else clamp_high),
        DTYPE=_launch.tl_dtype(dtype), COMPUTE=_launch.tl_dtype(_launch.compute_dtype(dtype)),
        HAS_HSN=half_sq_norm is not None, ROWS=rows,
        SEARCH_STEPS=max(1, (len(tensors) - 1).bit_length()),
        BLOCK=_launch.BLOCK)
