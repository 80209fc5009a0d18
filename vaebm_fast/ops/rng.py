r"""Counter-based random numbers: one Philox stream for every backend.

Noise is addressed by ``(seed, offset)`` instead of being drawn from a stateful generator, so
the CPU kernels, CUDA kernels, Triton kernels, this eager reference and a replayed CUDA graph
all produce the same noise, and a chain that advances its offset by the number of normals it
drew never reuses any.

**Integer words** (bit-exact in every backend). Philox4x32 with 10 rounds, the Random123
generator (the one Triton's ``tl.randint4x`` computes): key ``(seed & 0xffffffff, seed >> 32)``,
counter ``(c & 0xffffffff, c >> 32, 0, 0)`` for call index ``c``; round multipliers
``0xD2511F53`` (word 0) and ``0xCD9E8D57`` (word 2), key bumps ``0x9E3779B9`` / ``0xBB67AE85``.
Known answer: seed 0, call 0 -> ``6627e8d5 e169c58d bc57ac4c 9b00dbd8``.

**Row streams** (scale-invariant noise). Row stream ``r`` (``0 <= r < 2**62``) of ``seed`` is
the same generator with counter ``(c & 0xffffffff, c >> 32, (r + 1) & 0xffffffff, (r + 1) >>
32)``; the flat stream above has words 2 and 3 zero, so no row stream coincides with it. Ops
in row mode give sample ``b`` of a batch the row stream ``first_row + b``: a sample's noise
then depends on its global index, never on the batch or process it was drawn in.

**Normals** (agree across backends to float tolerance, ~1e-6; math libraries differ by ulps).
Normal number ``m`` of a stream (flat or row) is lane ``m % 4`` of call ``c = m // 4``. The
call's words ``(w0, w1, w2, w3)`` become uniforms, in float32,

.. math::  u_i = \mathrm{fl}(w_i) \cdot 2^{-32} + 2^{-32} \in (0, 1]

(``fl`` rounds the integer to the nearest float32; the product is exact, so the result is the
single rounding of the sum, with or without FMA), and two Box-Muller pairs, in float32:

.. math::  r = \sqrt{-2 \ln u_a}, \quad n_a = r \cos(\theta), \quad n_b = r \sin(\theta),
           \quad \theta = \mathrm{fl}(6.2831855 \cdot u_b)

with ``(a, b) = (0, 1)`` giving lanes 0 and 1 and ``(a, b) = (2, 3)`` lanes 2 and 3. Since
``u >= 2^-32`` every normal is finite, ``|n| <= 6.66``. Other dtypes are produced by rounding
the float32 normal. ``csrc/common/philox.h`` is the C++/CUDA statement of the same transform.

Public functions (``seed`` in ``[0, 2**63)``; offsets and counts are Python ints):

* :func:`philox4x32` — the raw words of a set of call indices.
* :func:`philox_normal` — ``n`` consecutive normals starting at ``offset``.
* :func:`philox_normal_rows_` — fills ``out [B, *]``: row ``b`` (flattened) holds normals
  ``offset, offset + 1, ...`` of row stream ``first_row + b``.

Both dispatch like every op (``backend="auto" | "native" | "triton" | "eager"``, see
``_dispatch``; the Triton kernels are ``vaebm_fast.triton_kernels.rng``);
``*_reference`` are the eager specifications, written in plain int64/float32 torch arithmetic
so they run on any device.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..validation import check_int, explain
from . import _dispatch, _library

__all__ = [
    "philox4x32", "philox_normal", "philox_normal_rows_", "philox4x32_reference",
    "philox_normal_reference", "philox_normal_rows_reference", "MAX_SEED", "MAX_ROW",
    "check_stream_range", "check_first_row",
]

MAX_SEED = 2**63 - 1  # seeds and offsets travel through torch op schemas as int64
# Row streams r in [0, 2**62): r + 1 fills counter words 2 and 3, and first_row + B stays far
# from int64 overflow in every kernel's index arithmetic.
MAX_ROW = 2**62 - 1

_MASK32 = 0xFFFFFFFF
_MUL0, _MUL1 = 0xD2511F53, 0xCD9E8D57
_BUMP0, _BUMP1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_TWO_POW_M32 = 2.0**-32
_TWO_PI = 2 * math.pi  # rounded to float32 (6.2831855) when multiplied with a float32

_dispatch.register_op("philox4x32", native="vaebm_fast::philox4x32", triton=True)
_dispatch.register_op("philox_normal", native="vaebm_fast::philox_normal_", triton=True)
_dispatch.register_op("philox_normal_rows_", native="vaebm_fast::philox_normal_rows_",
                      triton=True)


# --------------------------------------------------------------------------------------------
# Argument checks shared with the ops that consume noise.

def check_stream_range(seed, offset, n: int) -> tuple:
    """Validate ``seed``, ``offset`` and that normals ``offset .. offset + n - 1`` exist."""
    seed = check_int(seed, "seed")
    offset = check_int(offset, "offset")
    if n > MAX_SEED - offset:
        raise ValueError(f"offset + number of normals must be <= 2**63 - 1 (got {offset} + {n})")
    return seed, offset


def check_first_row(first_row, rows: int) -> int:
    """Validate the first row stream of a batch of ``rows`` rows: an int with
    ``0 <= first_row`` and ``first_row + rows - 1 <= MAX_ROW``."""
    first_row = check_int(first_row, "first_row", low=-2**63)  # the type; the range below
    if first_row < 0 or first_row > MAX_ROW - max(rows - 1, 0):
        raise ValueError(f"first_row must be an int in [0, 2**62 - rows] (got {first_row} for "
                         f"{rows} rows); it is the global index of the batch's first sample")
    return first_row


def _default_device() -> torch.device:
    """torch's default device (``torch.set_default_device``), found in a way torch.compile can
    trace (``torch.get_default_device`` breaks a graph)."""
    return torch.empty(0).device


# --------------------------------------------------------------------------------------------
# Eager reference.

def _mulhilo(a: int, b: Tensor):
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` holding
    values in [0, 2^32), without overflowing int64: split ``b`` into 16-bit halves so every
    partial product stays below 2^49."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo = a * b_lo  # < 2^48
    t = a * b_hi + (p_lo >> 16)  # a * b = t * 2^16 + (p_lo & 0xFFFF), t < 2^49
    return t >> 16, ((t & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox4x32_reference(seed: int, offsets: Tensor, rows: Optional[Tensor] = None) -> Tensor:
    """Philox4x32-10 words, eager reference.

    Args:
        seed: int in [0, 2**63).
        offsets: int64 [*] call indices (counters); read as their uint64 bit pattern.
        rows: None for the flat stream (counter words 2, 3 zero), else int64 row streams
            ``r`` in [0, 2**62) broadcastable to ``offsets``: counter words 2, 3 hold ``r + 1``.
    Returns:
        int64 [*, 4] (``*``: the broadcast shape) on ``offsets.device``, values in [0, 2**32).
    """
    seed = check_int(seed, "seed")
    _check_offsets(offsets)
    # Counter words from the uint64 bit pattern: & and >> on two's complement int64 agree
    # with uint64 for the low word, and masking the arithmetic shift gives the high word.
    if rows is None:
        c2 = c3 = torch.zeros_like(offsets)
    else:
        torch._check_value(rows.dtype == torch.int64, explain(
            "rows must be an int64 tensor (got ", rows.dtype, ")"))
        offsets, stream = torch.broadcast_tensors(offsets, rows + 1)
        c2, c3 = stream & _MASK32, stream >> 32  # stream in [1, 2**62]: no sign bits
    words = _philox_rounds(offsets & _MASK32, (offsets >> 32) & _MASK32, c2, c3,
                           seed & _MASK32, seed >> 32)
    return torch.stack(words, dim=-1)


def _philox_rounds(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int):
    """Philox4x32-10 on a full counter (int64 tensors holding 32-bit words) and key (ints).
    Returns the four output words as int64 tensors."""
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(_MUL0, c0)
        hi1, lo1 = _mulhilo(_MUL1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _BUMP0) & _MASK32, (k1 + _BUMP1) & _MASK32
    return c0, c1, c2, c3


def _normals_from_words(words: Tensor) -> Tensor:
    """int64 [C, 4] words -> float32 [C, 4] normals (the transform in the module docstring)."""
    u = words.to(torch.float32) * _TWO_POW_M32 + _TWO_POW_M32  # (0, 1]
    r = torch.sqrt(-2.0 * torch.log(u[:, 0::2]))  # [C, 2]: from u0, u2
    theta = u[:, 1::2] * _TWO_PI  # [C, 2]: from u1, u3
    # [C, 2, 2] -> [C, 4] in lane order (n0, n1, n2, n3) = (r0 cos, r0 sin, r1 cos, r1 sin)
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1).reshape(-1, 4)


def philox_normal_reference(n: int, *, seed: int, offset: int,
                            device: Optional[Union[str, torch.device]] = None,
                            dtype: torch.dtype = torch.float32) -> Tensor:
    """Normals number ``offset .. offset + n - 1`` of the stream for ``seed``, eager reference.

    Returns:
        [n] tensor of ``dtype`` on ``device`` (default: torch's default device).
    """
    n = check_int(n, "n")
    seed, offset = check_stream_range(seed, offset, n)
    device = torch.device(device) if device is not None else _default_device()
    if n == 0:
        return torch.empty(0, dtype=dtype, device=device)
    first, last = offset // 4, (offset + n - 1) // 4
    calls = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    normals = _normals_from_words(philox4x32_reference(seed, calls)).reshape(-1)
    skip = offset - 4 * first
    return normals[skip:skip + n].to(dtype)


def philox_normal_rows_reference(rows: int, n: int, *, seed: int, offset: int, first_row: int,
                                 device: Optional[Union[str, torch.device]] = None,
                                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Normals number ``offset .. offset + n - 1`` of row streams ``first_row .. first_row +
    rows - 1``, eager reference.

    Returns:
        [rows, n] tensor of ``dtype`` on ``device``: entry ``[b, j]`` is normal number
        ``offset + j`` of row stream ``first_row + b``.
    """
    rows, n = check_int(rows, "rows"), check_int(n, "n")
    if rows < 0 or n < 0:
        raise ValueError(f"rows and n must be >= 0 (got rows={rows}, n={n})")
    seed, offset = check_stream_range(seed, offset, n)
    first_row = check_first_row(first_row, rows)
    device = torch.device(device) if device is not None else _default_device()
    if n == 0 or rows == 0:
        return torch.empty(rows, n, dtype=dtype, device=device)
    first, last = offset // 4, (offset + n - 1) // 4
    calls = torch.arange(first, last + 1, dtype=torch.int64, device=device)  # [C]
    streams = torch.arange(first_row, first_row + rows, dtype=torch.int64, device=device)
    words = philox4x32_reference(seed, calls[None, :], streams[:, None])  # [rows, C, 4]
    normals = _normals_from_words(words.reshape(-1, 4)).reshape(rows, -1)  # [rows, 4 C]
    skip = offset - 4 * first
    return normals[:, skip:skip + n].to(dtype)


# --------------------------------------------------------------------------------------------
# The ops: validation (the fake kernels' bodies) and schemas.

def _offsets_from_ints(values) -> Tensor:
    """A list (or array) of ints as an int64 tensor; floats and bools are refused rather than
    truncated (``torch.as_tensor([1.5], dtype=torch.int64)`` would give 1)."""
    try:
        offsets = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(f"offsets must be an int64 tensor or a list of ints in "
                         f"[-2**63, 2**63) (got {type(values).__name__}: {error})") from None
    if offsets.numel() == 0:  # [] has no element to type it: torch's default float dtype
        offsets = offsets.long()
    return offsets


def _check_offsets(offsets) -> None:
    """philox4x32(seed, offsets int64 [*]) -> words int64 [*, 4]."""
    torch._check_value(offsets.dtype == torch.int64, explain(
        "offsets must be an int64 tensor (got ", offsets.dtype, "); convert it with .long()"))


def _check_normal_out(out) -> None:
    """philox_normal_(out [*] floating, contiguous, written flat, seed, offset)."""
    torch._check_value(out.dtype.is_floating_point, explain(
        "philox_normal_: out must be floating (got ", out.dtype, ")"))
    torch._check_value(out.is_contiguous(), explain("philox_normal_: out must be contiguous"))


def _check_rows_out(out, first_row) -> None:
    """philox_normal_rows_(out [B, *] floating, contiguous, seed, offset, first_row >= 0)."""
    _check_normal_out(out)
    torch._check_value(out.dim() >= 1, explain(
        "philox_normal_rows_: out must have dim >= 1 (rows along dim 0; got a 0-d tensor)"))
    torch._check_value(0 <= first_row <= MAX_ROW - max(out.shape[0] - 1, 0), explain(
        "philox_normal_rows_: first_row must be in [0, 2**62 - B] (got ", first_row, ")"))


def _fake_philox4x32(seed, offsets):
    _check_offsets(offsets)
    return offsets.new_empty((*offsets.shape, 4))


def _fake_philox_normal(out, seed, offset):
    _check_normal_out(out)


def _fake_philox_normal_rows(out, seed, offset, first_row):
    _check_rows_out(out, first_row)


def _triton():
    from ..triton_kernels import rng as kernels
    return kernels


_library.define("philox4x32(int seed, Tensor offsets) -> Tensor", fake=_fake_philox4x32,
                triton=lambda: _triton().philox4x32)
_library.define("philox_normal_(Tensor(a!) out, int seed, int offset) -> ()",
                fake=_fake_philox_normal, triton=lambda: _triton().philox_normal_)
_library.define("philox_normal_rows_(Tensor(a!) out, int seed, int offset, int first_row) -> ()",
                fake=_fake_philox_normal_rows, triton=lambda: _triton().philox_normal_rows_)


# --------------------------------------------------------------------------------------------
# Dispatching entry points.

def philox4x32(seed: int, offsets: Tensor, *, backend: str = "auto") -> Tensor:
    """Philox4x32-10 words of call indices ``offsets`` for ``seed``.

    Args:
        seed: int in [0, 2**63).
        offsets: int64 [*] call indices (counters), read as their uint64 bit pattern; a list of
            ints is accepted too.
        backend: "auto" | "native" | "triton" | "eager".
    Returns:
        int64 [*, 4]: the four 32-bit words of each call, values in [0, 2**32).
    """
    if not isinstance(offsets, Tensor):
        offsets = _offsets_from_ints(offsets)
    seed = check_int(seed, "seed")
    _check_offsets(offsets)
    chosen = _dispatch.resolve_backend("philox4x32", backend, offsets.device)
    if chosen == "eager":
        return philox4x32_reference(seed, offsets)
    return _library.namespace(chosen).philox4x32(seed, offsets)


def philox_normal(n: int, *, seed: int, offset: int,
                  device: Optional[Union[str, torch.device]] = None,
                  dtype: torch.dtype = torch.float32, backend: str = "auto") -> Tensor:
    """Standard normals number ``offset, offset + 1, ..., offset + n - 1`` of the stream for
    ``seed`` (position ``i`` holds number ``offset + i``).

    Args:
        n: how many (int >= 0).
        seed: int in [0, 2**63).
        offset: index of the first normal (int >= 0). The next free offset is ``offset + n``.
        device: where to put them (default: torch's default device).
        dtype: a floating dtype; normals are computed in float32 and rounded to it.
        backend: "auto" | "native" | "triton" | "eager".
    Returns:
        [n] tensor.
    """
    n = check_int(n, "n")
    seed, offset = check_stream_range(seed, offset, n)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32 (got "
                        f"{type(dtype).__name__} {dtype!r})")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (got {dtype})")
    device = torch.device(device) if device is not None else _default_device()
    chosen = _dispatch.resolve_backend("philox_normal", backend, device)
    if chosen == "eager":
        return philox_normal_reference(n, seed=seed, offset=offset, device=device, dtype=dtype)
    out = torch.empty(n, dtype=dtype, device=device)
    _library.namespace(chosen).philox_normal_(out, seed, offset)
    return out


def philox_normal_rows_(out: Tensor, *, seed: int, offset: int, first_row: int,
                        backend: str = "auto") -> Tensor:
    """Fill ``out`` [B, *] in place with row-stream normals: ``out[b].flatten()[j]`` is normal
    number ``offset + j`` of row stream ``first_row + b`` (see the module docstring), so the
    noise of a sample depends on its global index ``first_row + b`` only, not on ``B``.

    Args:
        out: a contiguous floating tensor with dim >= 1 (rows along dim 0); normals are
            computed in float32 and rounded to its dtype.
        seed: int in [0, 2**63); offset: first normal of every row, int >= 0. The next free
            offset is ``offset + out[0].numel()``.
        first_row: row stream of ``out[0]``, int in [0, 2**62 - B].
        backend: "auto" | "native" | "triton" | "eager".
    Returns:
        ``out``.
    """
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor (got {type(out).__name__})")
    if out.dim() == 0:
        raise ValueError("out must have dim >= 1: rows (samples) along dim 0 (got a 0-d "
                         "tensor); use out.reshape(1) for one sample")
    _check_normal_out(out)
    rows = out.shape[0]
    per_row = out[0].numel() if rows else 0
    seed, offset = check_stream_range(seed, offset, per_row)
    first_row = check_first_row(first_row, rows)
    chosen = _dispatch.resolve_backend("philox_normal_rows_", backend, out.device)
    if out.numel() == 0:
        return out
    if chosen == "eager":
        out.copy_(philox_normal_rows_reference(rows, per_row, seed=seed, offset=offset,
                                               first_row=first_row, device=out.device,
                                               dtype=out.dtype).reshape(out.shape))
    else:
        _library.namespace(chosen).philox_normal_rows_(out, seed, offset, first_row)
    return out
