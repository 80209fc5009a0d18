r"""Triton ``langevin_step_`` whose Philox seed and offset are read from device memory.

For CUDA graphs: a graph bakes every kernel argument in at capture, so a chain captured with
``langevin_step_(..., seed=s, offset=o)`` would replay the same noise forever. This variant
reads ``seed = rng_state[0]`` and ``offset = rng_state[1] + offset_add`` (``rng_state``: a
device int64 [2] tensor; ``offset_add`` a host int baked in at capture, e.g. ``k * numel`` for
step ``k`` of a chain), so a replayed graph draws the noise of whatever (seed, offset) the
device holds when it runs. The graph itself advances ``rng_state[1]`` (an ordinary in-place
add captured at its end), so consecutive replays never reuse noise, and the host may rewrite
``rng_state`` before a replay to pick any address of the stream (``FastSampler`` does, so a
replay gives the same samples as the eager chain for the same seed and offset).

Everything else is the op of :mod:`vaebm_fast.triton_kernels.langevin` (same update, same
numbering: element ``k`` of the flattened concatenation uses normal ``offset + k``, the same
normal-aligned blocks, the same per-tensor table, ``half_sq_norm``); the grid does not depend
on the offset (``cdiv(numel + 3, BLOCK)`` programs per tensor), so one launch configuration
serves every offset.

Graph capture: the table of pointers (``langevin.pointer_table``) is built on the host and
copied to the device, which capture does not allow: build it before the capture, keep it alive
as long as the graph, and pass it as ``table``.

There is no native (C++/CUDA) kernel of this op yet. What one would need (csrc is not edited
here): ``vaebm_fast::langevin_step_dev_(Tensor(a!)[] tensors, Tensor[] grads, float step_size,
Tensor rng_state, int offset_add, float prior_weight, float noise_scale, float? grad_clip,
float? clamp_low, float? clamp_high, Tensor(b!)? half_sq_norm) -> ()`` with ``rng_state`` an
int64 [2] tensor on the tensors' device read by the kernel (never by the host), and otherwise
the semantics of ``vaebm_fast::langevin_step_``; a CPU kernel reads rng_state on the host.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from .langevin import _check, find_tensor, pointer_table, update_block
from .philox import aligned_block, join64

__all__ = ["langevin_step_device_"]


@triton.jit(do_not_specialize=[
    "n_tensors", "n_rows", "add_lo", "add_hi", "half_step_lo", "half_step_hi", "prior_lo",
    "prior_hi", "sigma_lo", "sigma_hi", "clip_lo", "clip_hi", "low_lo", "low_hi", "high_lo",
    "high_hi"])
def _langevin_device_kernel(table_ptr, n_tensors, hsn_ptr, n_rows, rng_ptr,
                            add_lo: tl.int32, add_hi: tl.int32,
                            half_step_lo: tl.int32, half_step_hi: tl.int32,
                            prior_lo: tl.int32, prior_hi: tl.int32,
                            sigma_lo: tl.int32, sigma_hi: tl.int32,
                            clip_lo: tl.int32, clip_hi: tl.int32,
                            low_lo: tl.int32, low_hi: tl.int32, high_lo: tl.int32,
                            high_hi: tl.int32,
                            DTYPE: tl.constexpr, COMPUTE: tl.constexpr, HAS_HSN: tl.constexpr,
                            SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr):
    i, t_ptr, g_ptr, start, numel, block_of_tensor = find_tensor(
        table_ptr, n_tensors, tl.program_id(0), DTYPE, SEARCH_STEPS)
    # The stream address from device memory: key = (seed lo, seed hi), offset + offset_add.
    seed = tl.load(rng_ptr)
    k0 = seed.to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    offset = tl.load(rng_ptr + 1) + join64(add_lo, add_hi)
    j, noise = aligned_block(k0, k1, offset + start, block_of_tensor, BLOCK)
    mask = (j >= 0) & (j < numel)
    update_block(table_ptr, n_tensors, i, t_ptr, g_ptr, j, mask, noise, hsn_ptr, n_rows,
                 half_step_lo, half_step_hi, prior_lo, prior_hi, sigma_lo, sigma_hi,
                 clip_lo, clip_hi, low_lo, low_hi, high_lo, high_hi,
                 DTYPE, COMPUTE, HAS_HSN, BLOCK)


@_launch.on_tensor_device
def langevin_step_device_(tensors: List[Tensor], grads: List[Tensor], *, step_size: float,
                          rng_state: Tensor, offset_add: int = 0, prior_weight: float = 1.0,
                          noise_scale: Optional[float] = None, grad_clip: Optional[float] = None,
                          clamp: Optional[tuple] = None, half_sq_norm: Optional[Tensor] = None,
                          table: Optional[tuple] = None) -> None:
    """One in-place Langevin step (as ``vaebm_fast.ops.langevin_step_``) on contiguous
    ``tensors`` [*] with ``grads`` [same shapes], noise at ``(rng_state[0], rng_state[1] +
    offset_add)``. rng_state: int64 [2] on the tensors' device. ``table``: a prebuilt
    ``langevin.pointer_table(...)`` result for these exact tensors and grads (required under graph
    capture). Does not advance ``rng_state``: the caller adds the total numel per step."""
    if not tensors:
        return
    n_rows = _check(tensors, grads, half_sq_norm)
    if rng_state.dtype != torch.int64 or rng_state.shape != (2,) or \
            rng_state.device != tensors[0].device:
        raise ValueError("langevin_step_device_: rng_state must be an int64 [2] tensor on the "
                         "tensors' device")
    if any(not t.is_contiguous() for t in list(tensors) + list(grads)):
        raise ValueError("langevin_step_device_: tensors and grads must be contiguous")
    if half_sq_norm is not None:
        half_sq_norm.zero_()
    if table is None:
        table = pointer_table(tensors, grads, n_rows, _launch.BLOCK)
    device_table, programs = table
    if programs == 0:
        return
    sigma = math.sqrt(step_size) if noise_scale is None else noise_scale
    low, high = (None, None) if clamp is None else clamp
    inf = math.inf
    f64 = _launch.f64_args
    dtype = tensors[0].dtype
    _langevin_device_kernel[(programs,)](
        device_table, len(tensors), half_sq_norm if half_sq_norm is not None else device_table,
        n_rows, rng_state, *_launch.split64(offset_add), *f64(step_size / 2), *f64(prior_weight),
        *f64(sigma), *f64(inf if grad_clip is None else grad_clip),
        *f64(-inf if low is None else low), *f64(inf if high is None else high),
        DTYPE=_launch.tl_dtype(dtype), COMPUTE=_launch.tl_dtype(_launch.compute_dtype(dtype)),
        HAS_HSN=half_sq_norm is not None, SEARCH_STEPS=max(1, (len(tensors) - 1).bit_length()),
        BLOCK=_launch.BLOCK)
