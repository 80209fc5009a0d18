r"""Philox4x32-10 and the normal transform as ``@triton.jit`` helpers shared by every kernel
(plus two small numeric helpers: float64 arguments, rounding to the storage dtype).

The same stream as ``vaebm_fast.ops.rng`` (the specification) and ``csrc/common/philox.h``:

* key = ``(seed lo 32, seed hi 32)``, counter = ``(call lo 32, call hi 32, 0, 0)``; 10 rounds
  of ``(hi0, lo0) = 0xD2511F53 * x0``, ``(hi1, lo1) = 0xCD9E8D57 * x2``,
  ``x = (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)``, key bumped by ``(0x9E3779B9, 0xBB67AE85)``.
  All in uint32 (wrapping), the high halves of the products from ``tl.umulhi``: bit-exact.
* normal number ``m`` = lane ``m % 4`` of call ``m // 4``; ``u = fl(w) * 2^-32 + 2^-32`` and
  two Box-Muller pairs in float32, lanes (0, 1) from (u0, u1), lanes (2, 3) from (u2, u3).
* row stream ``r``: counter words 2, 3 = ``r + 1`` (:func:`row_stream_words`) instead of 0;
  :func:`normals_of_row_calls` and :func:`aligned_row_block` are the row versions of the
  range helpers below, with the same one Philox call per four normals.

64-bit quantities (stream offsets, call indices) are int64 inside kernels (kernel arguments
arrive as int32 halves, see :func:`join64`): every stream position is ``< 2**63`` (checked by
the public ops), so ``offset + k`` never overflows, and the 32-bit counter words are a
truncation (low) and an arithmetic shift + truncation (high) of the call index. A carry from
the low into the high word therefore happens in the int64 addition itself, never by hand.

Math functions. On a GPU, ``tl.log`` / ``tl.cos`` / ``tl.sin`` may lower to approximate
hardware instructions (``*.approx.f32``, errors of ~1e-6 absolute that ``r <= 6.66``
amplifies), so compiled kernels use libdevice's IEEE-accurate ``log`` / ``cos`` / ``sin`` and
``tl.sqrt_rn``. Triton's CPU interpreter (``TRITON_INTERPRET=1``, how the tests run without a
GPU) has no libdevice, so there the ``tl.*`` functions (numpy's float32 libm) are used; the
choice is the constexpr :data:`_LIBDEVICE`, fixed when this module is imported.

Kernels obtain normals in one of two ways:

* :func:`normals_of_calls` — ``4 * NCALLS`` consecutive normals starting at a multiple of 4,
  one Philox call per 4 normals (no redundant work). Kernels that walk a flat range
  ``offset + e`` use "normal-aligned blocks" (:func:`aligned_block`, or
  :func:`aligned_elements` to draw the normals only where needed): program ``p`` covers the
  normals ``4 * (offset // 4) + p * BLOCK ...``, i.e. elements shifted by ``offset % 4``, and
  masks the elements outside ``[0, n)``. Launch ``cdiv(n + offset % 4, BLOCK)`` programs
  (``_launch.aligned_grid``).
* :func:`normal_at` — normal number ``m`` for an arbitrary int64 tensor of positions (4x the
  Philox work per normal; for gathers with no contiguous structure).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import _triton

__all__ = ["philox4x32_10", "philox_key", "split_counter", "philox_call", "uniform",
           "box_muller", "normals_of_calls", "normal_at", "aligned_elements", "aligned_block",
           "row_stream_words", "normals_of_row_calls", "aligned_row_block", "join64",
           "from_f64_bits", "to_storage"]

# libdevice in compiled kernels, tl.* math in Triton's interpreter (which has no libdevice).
_LIBDEVICE = tl.constexpr(not _triton.interpret_mode())
_INTERPRETER = tl.constexpr(_triton.interpret_mode())
if not _triton.interpret_mode():
    from triton.language.extra import libdevice  # used under _LIBDEVICE

_MUL0 = tl.constexpr(0xD2511F53)  # multiplier of word 0
_MUL1 = tl.constexpr(0xCD9E8D57)  # multiplier of word 2
_BUMP0 = tl.constexpr(0x9E3779B9)  # key bumps: golden ratio, sqrt(3) - 1
_BUMP1 = tl.constexpr(0xBB67AE85)
_TWO_POW_M32 = tl.constexpr(2.3283064365386963e-10)  # 2^-32, exact in float32
_TWO_PI = tl.constexpr(6.2831855)  # 2 pi rounded to float32


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds. ``c*``: uint32 tensors (the counter), ``k*``: uint32 key
    (scalars or tensors broadcastable to the counter). Returns the four uint32 output words."""
    m0 = tl.full(c0.shape, _MUL0, tl.uint32)
    m1 = tl.full(c0.shape, _MUL1, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0  # uint32 multiply wraps: the low half of the 64-bit product
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _BUMP0  # uint32 + constant < 2^32: wraps in uint32
        k1 = k1 + _BUMP1
    return c0, c1, c2, c3


@triton.jit
def join64(lo, hi):
    """The int64 whose two's-complement halves are ``lo`` and ``hi`` (int32 scalars from
    ``_launch.split64``). 64-bit kernel arguments travel as two int32: Triton types a Python
    int by its value (int32, uint32 or int64), and its interpreter mishandles values in
    [2**31, 2**32) (uint32 data typed int64), so halves keep one signature and one meaning."""
    return (hi.to(tl.int64) << 32) | lo.to(tl.uint32).to(tl.int64)


@triton.jit
def philox_key(seed_lo, seed_hi):
    """Key words ``(seed lo 32, seed hi 32)`` from the halves of the seed (``split64``)."""
    return seed_lo.to(tl.uint32), seed_hi.to(tl.uint32)


@triton.jit
def split_counter(c):
    """Counter words ``(c lo 32, c hi 32)`` of an int64 tensor of call indices, read as their
    uint64 bit pattern (the arithmetic shift's sign bits are cut off by the truncation)."""
    return c.to(tl.uint32), (c >> 32).to(tl.uint32)


@triton.jit
def philox_call(k0, k1, call):
    """The four uint32 words of call indices ``call`` (int64 tensor) for key ``(k0, k1)``."""
    lo, hi = split_counter(call)
    zero = tl.zeros(lo.shape, tl.uint32)
    return philox4x32_10(lo, hi, zero, zero, k0, k1)


@triton.jit
def uniform(w):
    """uint32 word -> float32 uniform in (0, 1]: ``fl(w) * 2^-32 + 2^-32`` (the product is
    exact, so with or without FMA contraction this is one rounding of the sum)."""
    return w.to(tl.float32) * _TWO_POW_M32 + _TWO_POW_M32


@triton.jit
def box_muller(wa, wb):
    """One Box-Muller pair from two uint32 words: ``r = sqrt(-2 ln ua)``,
    ``theta = fl(6.2831855 * ub)``, returns ``(r cos theta, r sin theta)`` in float32."""
    ua = uniform(wa)
    theta = _TWO_PI * uniform(wb)
    if _LIBDEVICE:
        r = tl.sqrt_rn(-2.0 * libdevice.log(ua))
        return r * libdevice.cos(theta), r * libdevice.sin(theta)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(ua))
        return r * tl.cos(theta), r * tl.sin(theta)


@triton.jit
def normals_of_calls(k0, k1, first_call, NCALLS: tl.constexpr):
    """float32 [4 * NCALLS]: normals number ``4 * first_call + i`` for ``i < 4 * NCALLS``
    (``first_call``: int64 scalar), one Philox call per four normals."""
    call = first_call + tl.arange(0, NCALLS).to(tl.int64)
    w0, w1, w2, w3 = philox_call(k0, k1, call)
    n0, n1 = box_muller(w0, w1)
    n2, n3 = box_muller(w2, w3)
    # Lane order n0 n1 n2 n3 per call: interleave(n0, n2) = n0 n2 ..., interleave(n1, n3) =
    # n1 n3 ..., and interleaving those two gives n0 n1 n2 n3 n0' n1' ...
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit
def row_stream_words(row):
    """Counter words 2, 3 ``(s lo 32, s hi 32)`` of row stream ``row`` (int64 scalar in
    [0, 2**62)), ``s = row + 1``: word 2, 3 = 0 is the flat stream, which no row uses."""
    s = row.to(tl.int64) + 1
    return s.to(tl.uint32), (s >> 32).to(tl.uint32)


@triton.jit
def normals_of_row_calls(k0, k1, s0, s1, first_call, NCALLS: tl.constexpr):
    """:func:`normals_of_calls` of the row stream whose counter words 2, 3 are ``(s0, s1)``
    (:func:`row_stream_words`)."""
    call = first_call + tl.arange(0, NCALLS).to(tl.int64)
    lo, hi = split_counter(call)
    zero = tl.zeros(lo.shape, tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(lo, hi, zero + s0, zero + s1, k0, k1)
    n0, n1 = box_muller(w0, w1)
    n2, n3 = box_muller(w2, w3)
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))  # lane order


@triton.jit
def aligned_row_block(k0, k1, s0, s1, offset, pid, BLOCK: tl.constexpr):
    """:func:`aligned_block` of the row stream with counter words 2, 3 = ``(s0, s1)``:
    ``(e, noise)``, element ``e`` of the row using normal ``offset + e`` of that stream."""
    e, first_call = aligned_elements(offset, pid, BLOCK)
    return e, normals_of_row_calls(k0, k1, s0, s1, first_call, BLOCK // 4)


@triton.jit
def normal_at(k0, k1, m):
    """float32 normal number ``m`` (int64 tensor of positions >= 0), lane ``m % 4`` of call
    ``m // 4``. Computes a whole call per element: use :func:`normals_of_calls` for ranges."""
    w0, w1, w2, w3 = philox_call(k0, k1, m >> 2)
    n0, n1 = box_muller(w0, w1)
    n2, n3 = box_muller(w2, w3)
    lane = m & 3
    return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit
def aligned_elements(offset, pid, BLOCK: tl.constexpr):
    """Normal-aligned block ``pid`` of the flat range whose element ``e`` uses normal number
    ``offset + e``: returns ``(e, first_call)``, the int64 [BLOCK] element indices of the
    block (some may be < 0 or past the end: mask them) and the first Philox call of its
    normals (``normals_of_calls(k0, k1, first_call, BLOCK // 4)`` are the normals of ``e``).
    ``BLOCK`` is a multiple of 4; the grid is ``cdiv(n + offset % 4, BLOCK)`` programs."""
    offset = offset.to(tl.int64)
    first_call = offset // 4 + pid.to(tl.int64) * (BLOCK // 4)
    e = first_call * 4 + tl.arange(0, BLOCK).to(tl.int64) - offset
    return e, first_call


@triton.jit
def aligned_block(k0, k1, offset, pid, BLOCK: tl.constexpr):
    """:func:`aligned_elements` and the float32 [BLOCK] normals of the elements:
    ``(e, noise)``."""
    e, first_call = aligned_elements(offset, pid, BLOCK)
    return e, normals_of_calls(k0, k1, first_call, BLOCK // 4)


@triton.jit
def from_f64_bits(lo, hi):
    """A float64 passed as the halves of its bit pattern (``_launch.f64_args``): Triton passes
    Python floats as float32, which would round float64 coefficients."""
    return join64(lo, hi).to(tl.float64, bitcast=True)


@triton.jit
def to_storage(x, DTYPE: tl.constexpr):
    """Round a float32/float64 tensor to the storage dtype ``DTYPE``, to nearest even (as
    torch's ``.to``). Triton 3.9's interpreter rounds float32 -> bfloat16 toward zero, so there
    the bfloat16 rounding is done on the bits (quiet NaN kept); compiled kernels convert
    directly (``cvt.rn``)."""
    if _INTERPRETER and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # carries into the exponent
        half = tl.where(x != x, (bits >> 16) | 0x40, rounded)
        return half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)
