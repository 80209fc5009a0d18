"""Triton RNG kernels (vaebm_fast.triton_kernels.rng / .philox) vs the eager specification:
words bit-exact (Random123 known answers, counters across 2**32 and 2**34 calls), normals to
float tolerance, dtypes, the public ops' "triton" backend, opcheck.

Runs in Triton's CPU interpreter without a GPU (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports Triton), so sizes are small."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from .test_rng import KNOWN_ANSWERS  # noqa: E402
from vaebm_fast.ops import (BackendUnavailableError, philox4x32,  # noqa: E402
                            philox4x32_reference, philox_normal, philox_normal_reference)
from vaebm_fast.triton_kernels._launch import split64  # noqa: E402
from vaebm_fast.triton_kernels.philox import normal_at, philox4x32_10, philox_key  # noqa: E402

# Interpreter (numpy) or libdevice float32 log/cos/sin vs torch's: a few ulps of |n| <= 6.66.
NORMAL_TOL = dict(atol=2e-6, rtol=1e-6)
SEED = 0x123456789ABCDEF


@triton.jit
def _rounds_kernel(c_ptr, k_ptr, out_ptr):
    # One Philox4x32-10 evaluation on an explicit counter (4 words) and key (2 words).
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
def _normal_at_kernel(m_ptr, out_ptr, seed_lo, seed_hi, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    k0, k1 = philox_key(seed_lo, seed_hi)
    m = tl.load(m_ptr + i, mask=i < n, other=0)
    tl.store(out_ptr + i, normal_at(k0, k1, m), mask=i < n)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_rounds_known_answers(triton_device, counter, key, expected):
    out = torch.empty(4, dtype=torch.int64, device=triton_device)
    _rounds_kernel[(1,)](torch.tensor(counter, dtype=torch.int64, device=triton_device),
                         torch.tensor(key, dtype=torch.int64, device=triton_device), out)
    assert out.tolist() == expected


def test_words_known_answer_and_bit_exact(triton_device):
    from vaebm_fast.triton_kernels import rng
    assert rng.philox4x32(0, torch.zeros(1, dtype=torch.int64, device=triton_device)
                          )[0].tolist() == KNOWN_ANSWERS[0][2]
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([
        torch.arange(0, 333, dtype=torch.int64),
        torch.arange(2**32 - 7, 2**32 + 6, dtype=torch.int64),  # high counter word 0 -> 1
        torch.arange(2**34 - 5, 2**34 + 4, dtype=torch.int64),
        torch.tensor([-1, -2**63, 2**63 - 1, 2**32 - 1, -2**32], dtype=torch.int64),
        torch.randint(-2**63, 2**63 - 1, (300,), dtype=torch.int64, generator=gen),
    ]).to(triton_device)
    for seed in (SEED, 0, 2**32 - 1, 2**32, 2**63 - 1):  # key words at their edges
        got = rng.philox4x32(seed, offsets)
        assert got.dtype == torch.int64 and got.shape == (offsets.numel(), 4)
        assert torch.equal(got, philox4x32_reference(seed, offsets)), seed
    shaped = offsets[:12].reshape(3, 4)  # the words' shape follows the offsets'
    assert torch.equal(rng.philox4x32(7, shaped), philox4x32_reference(7, shaped))
    assert rng.philox4x32(7, shaped[:, :0]).shape == (3, 0, 4)


@pytest.mark.parametrize("offset, n", [
    (0, 1),
    (3, 1001),  # odd length, unaligned start
    (2, 2050),  # several programs
    (4 * 2**32 - 6, 37),  # call index crosses 2**32: counter high word 0 -> 1
    (2**34 - 3, 29),  # and 2**34 (call 2**32 exactly within)
    (4 * 2**34 - 1, 9),  # call index crosses 2**34
    (2**62 + 1, 5),
])
def test_normals_match_reference(triton_device, offset, n):
    from vaebm_fast.triton_kernels import rng
    out = torch.empty(n, device=triton_device)
    rng.philox_normal_(out, SEED, offset)
    ref = philox_normal_reference(n, seed=SEED, offset=offset, device=triton_device)
    torch.testing.assert_close(out, ref, **NORMAL_TOL)


def test_normal_at_helper(triton_device):
    # The per-element helper: arbitrary positions, every lane, across the 2**32-call carry.
    m = torch.tensor([0, 1, 2, 3, 17, 4 * 2**32 - 1, 4 * 2**32, 4 * 2**32 + 3, 2**62 + 2, 5],
                     dtype=torch.int64, device=triton_device)
    out = torch.empty(m.numel(), device=triton_device)
    _normal_at_kernel[(1,)](m, out, *split64(SEED), m.numel(), BLOCK=16)
    ref = torch.stack([philox_normal_reference(1, seed=SEED, offset=int(v))[0] for v in m])
    torch.testing.assert_close(out.cpu(), ref, **NORMAL_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_normal_dtypes_round_the_float32_normal(triton_device, dtype):
    from vaebm_fast.triton_kernels import rng
    f32 = torch.empty(999, device=triton_device)
    rng.philox_normal_(f32, 9, 2)
    out = torch.empty(999, dtype=dtype, device=triton_device)
    rng.philox_normal_(out, 9, 2)
    assert torch.equal(out, f32.to(dtype))  # rounded to nearest even, as torch does
    torch.testing.assert_close(out.cpu(), philox_normal_reference(999, seed=9, offset=2,
                                                                dtype=dtype),
                               atol=NORMAL_TOL["atol"], rtol=0 if dtype == torch.float64
                               else 1e-2)


def test_normal_fill_any_shape_and_errors(triton_device):
    from vaebm_fast.triton_kernels import rng
    out = torch.empty(3, 5, 7, device=triton_device)
    rng.philox_normal_(out, 1, 6)
    torch.testing.assert_close(out.reshape(-1).cpu(), philox_normal_reference(105, seed=1,
                                                                              offset=6),
                               **NORMAL_TOL)
    rng.philox_normal_(torch.empty(0, device=triton_device), 1, 6)  # nothing to do
    with pytest.raises(RuntimeError, match="contiguous"):
        rng.philox_normal_(torch.empty(4, 6, device=triton_device).t(), 1, 0)
    with pytest.raises(RuntimeError, match="float"):
        rng.philox_normal_(torch.empty(4, dtype=torch.int32, device=triton_device), 1, 0)
    with pytest.raises(RuntimeError, match="int64"):
        rng.philox4x32(0, torch.zeros(3, dtype=torch.int32, device=triton_device))


def test_public_ops_triton_backend(triton_device):
    offsets = torch.arange(2**32 - 3, 2**32 + 3, dtype=torch.int64, device=triton_device)
    assert torch.equal(philox4x32(5, offsets, backend="triton"),
                       philox4x32(5, offsets, backend="eager"))
    for dtype in (torch.float32, torch.bfloat16):
        got = philox_normal(77, seed=3, offset=2**33 + 1, device=triton_device, dtype=dtype,
                            backend="triton")
        ref = philox_normal(77, seed=3, offset=2**33 + 1, device=triton_device, dtype=dtype,
                            backend="eager")
        assert got.shape == (77,) and got.dtype == dtype
        torch.testing.assert_close(got.float(), ref.float(), atol=2e-6,
                                   rtol=1e-6 if dtype == torch.float32 else 1e-2)
    assert philox_normal(0, seed=3, offset=5, device=triton_device, backend="triton").shape == (0,)


def test_unavailable_triton_raises_with_reason(monkeypatch):
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        philox_normal(4, seed=0, offset=0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        philox4x32(0, torch.zeros(2, dtype=torch.int64), backend="triton")


def test_opcheck(triton_device):
    from vaebm_fast.triton_kernels import rng  # noqa: F401 (registers the ops)
    torch.library.opcheck(torch.ops.vaebm_fast_triton.philox4x32.default,
                          (123, torch.arange(10, dtype=torch.int64, device=triton_device)))
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.vaebm_fast_triton.philox_normal_.default,
                              (torch.empty(37, dtype=dtype, device=triton_device), 5, 3))
