"""Test-only Triton kernels around the Philox device functions of
``vaebm_fast.triton_kernels.philox``, which the ops cannot reach directly (a full four-word
counter, normals at arbitrary positions). Imported by test_rng.py only on Triton targets, so
the test modules import without Triton."""
import triton
import triton.language as tl

from vaebm_fast.triton_kernels.philox import normal_at, philox4x32_10, philox_key


@triton.jit
def rounds_kernel(c_ptr, k_ptr, out_ptr):
    # One Philox4x32-10 evaluation on an explicit counter (4 words) and key (2 words), all
    # passed as int64 holding 32-bit values.
    i = tl.arange(0, 1)
    w0, w1, w2, w3 = philox4x32_10(
        tl.load(c_ptr + i).to(tl.uint32), tl.load(c_ptr + i + 1).to(tl.uint32),
        tl.load(c_ptr + i + 2).to(tl.uint32), tl.load(c_ptr + i + 3).to(tl.uint32),
        tl.load(k_ptr).to(tl.uint32), tl.load(k_ptr + 1).to(tl.uint32))
    tl.store(out_ptr + i, w0.to(tl.int64))
    tl.store(out_ptr + i + 1, w1.to(tl.int64))
    tl.store(out_ptr + i + 2, w2.to(tl.int64))
    tl.store(out_ptr + i + 3, w3.to(tl.int64))


@triton.jit
def normal_at_kernel(m_ptr, out_ptr, seed_lo, seed_hi, n, BLOCK: tl.constexpr):
    # Normal number m_ptr[i] of the stream for the seed, for each of the n positions.
    i = tl.arange(0, BLOCK)
    k0, k1 = philox_key(seed_lo, seed_hi)
    m = tl.load(m_ptr + i, mask=i < n, other=0)
    tl.store(out_ptr + i, normal_at(k0, k1, m), mask=i < n)
