"""Philox4x32-10 words and the normal transform: known answers, eager == native, statistics."""
import math

import pytest
import torch

from vaebm_fast.ops import (BackendUnavailableError, philox4x32, philox4x32_reference,
                            philox_normal, philox_normal_reference)
from vaebm_fast.ops.rng import _philox_rounds


def words(*hex_words):
    return [int(w, 16) for w in hex_words]


# Random123 kat_vectors for philox4x32_10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), words("6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8")),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, words("408f276d", "41c83b0e", "a20bc7c6", "6d5451fd")),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     words("d16cfe09", "94fdcceb", "5001e420", "24126ea1")),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_eager_rounds_known_answers(counter, key, expected):
    c = [torch.tensor([w], dtype=torch.int64) for w in counter]
    out = _philox_rounds(*c, *key)
    assert [int(w) for w in out] == expected


def test_seed_and_counter_packing():
    # key = (seed lo, seed hi), counter = (call lo, call hi, 0, 0)
    seed, call = 0x299F31D0A4093822, 0x85A308D3243F6A88 - 2**64  # as int64 bit pattern
    got = philox4x32_reference(seed, torch.tensor([call]))[0].tolist()
    c = [torch.tensor([w]) for w in (0x243F6A88, 0x85A308D3, 0, 0)]
    assert got == [int(w) for w in _philox_rounds(*c, 0xA4093822, 0x299F31D0)]
    assert philox4x32(0, [0], backend="eager")[0].tolist() == KNOWN_ANSWERS[0][2]


def test_native_known_answer(native):
    assert philox4x32(0, torch.tensor([0]), backend="native")[0].tolist() == KNOWN_ANSWERS[0][2]


def test_native_words_bit_exact(native):
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([  # 100k call indices: small, around 2^32, anywhere in int64/uint64
        torch.arange(0, 20_000, dtype=torch.int64),
        torch.arange(2**32 - 10_000, 2**32 + 10_000, dtype=torch.int64),
        torch.randint(-2**63, 2**63 - 1, (60_000,), dtype=torch.int64, generator=gen),
    ])
    eager = philox4x32(0x123456789ABCDEF, offsets, backend="eager")
    fast = philox4x32(0x123456789ABCDEF, offsets, backend="native")
    assert fast.dtype == torch.int64 and fast.shape == (100_000, 4)
    assert torch.equal(eager, fast)
    assert int(eager.min()) >= 0 and int(eager.max()) < 2**32
    for seed in (0, 1, 2**32 - 1, 2**32, 2**63 - 1):  # key words at their edges
        part = offsets[::20]
        assert torch.equal(philox4x32(seed, part, backend="eager"),
                           philox4x32(seed, part, backend="native"))


def test_words_shape_follows_offsets():
    out = philox4x32(5, torch.zeros(2, 3, dtype=torch.int64))
    assert out.shape == (2, 3, 4)
    assert torch.equal(out, out[:1, :1].expand(2, 3, 4))


def test_normal_lane_mapping():
    # Normal m is lane m % 4 of call m // 4, pairs (0, 1) and (2, 3) are Box-Muller pairs.
    w = philox4x32_reference(7, torch.tensor([3]))[0].double()
    u = (w.float() * 2.0**-32 + 2.0**-32).double()
    r0, r1 = torch.sqrt(-2 * torch.log(u[0])), torch.sqrt(-2 * torch.log(u[2]))
    expected = torch.stack([r0 * torch.cos(2 * math.pi * u[1]), r0 * torch.sin(2 * math.pi * u[1]),
                            r1 * torch.cos(2 * math.pi * u[3]), r1 * torch.sin(2 * math.pi * u[3])])
    got = philox_normal_reference(4, seed=7, offset=12)
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_normals_are_addressed_by_offset(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    full = philox_normal(1001, seed=3, offset=0, backend=backend)
    for offset, n in [(0, 1), (1, 7), (3, 4), (5, 996), (999, 2), (17, 0)]:
        part = philox_normal(n, seed=3, offset=offset, backend=backend)
        assert torch.equal(part, full[offset:offset + n])


def test_native_normals_match_eager(native):
    for seed, offset, n in [(0, 0, 100_003), (2**40 + 5, 2**33 + 3, 50_001), (1, 2**62, 4097)]:
        eager = philox_normal(n, seed=seed, offset=offset, backend="eager")
        fast = philox_normal(n, seed=seed, offset=offset, backend="native")
        assert fast.shape == (n,) and fast.dtype == torch.float32
        # Different log/sin/cos implementations: a few float32 ulps of |n| <= 6.66.
        torch.testing.assert_close(fast, eager, atol=5e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["eager", "native"])
def test_normal_dtypes_round_the_float32_normal(dtype, backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    ref = philox_normal(1000, seed=9, offset=2, backend=backend)
    got = philox_normal(1000, seed=9, offset=2, dtype=dtype, backend=backend)
    assert got.dtype == dtype
    assert torch.equal(got, ref.to(dtype))


def test_normal_statistics():
    x = philox_normal(1_000_000, seed=2024, offset=0).double()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x.abs() < 1).double().mean().item() - 0.682689) < 0.003
    assert abs((x ** 4).mean().item() - 3) < 0.05  # Gaussian kurtosis
    assert bool(torch.isfinite(x).all()) and x.abs().max().item() < 6.67
    # Neighbouring normals (same Box-Muller pair, same call, next call) are uncorrelated.
    for lag in (1, 2, 4):
        corr = (x[:-lag] * x[lag:]).mean().item()
        assert abs(corr) < 5 / math.sqrt(n)
    # Different seeds give different streams.
    y = philox_normal(1000, seed=2025, offset=0)
    assert not torch.equal(y, x[:1000].float())


def test_normal_device_and_empty():
    out = philox_normal(0, seed=0, offset=5)
    assert out.shape == (0,) and out.device.type == "cpu"
    assert philox_normal(3, seed=0, offset=0, device="cpu").device.type == "cpu"


@pytest.mark.parametrize("kwargs, error", [
    (dict(n=4, seed=-1, offset=0), ValueError),
    (dict(n=4, seed=2**63, offset=0), ValueError),
    (dict(n=4, seed=True, offset=0), TypeError),
    (dict(n=4, seed=1.5, offset=0), TypeError),
    (dict(n=4, seed=0, offset=-1), ValueError),
    (dict(n=-1, seed=0, offset=0), ValueError),
    (dict(n=4, seed=0, offset=2**63 - 2), ValueError),
    (dict(n=4, seed=0, offset=0, dtype=torch.int32), ValueError),
    (dict(n=4, seed=0, offset=0, backend="fast"), ValueError),
])
def test_normal_bad_arguments(kwargs, error):
    with pytest.raises(error):
        philox_normal(**kwargs)


def test_words_bad_arguments():
    with pytest.raises(ValueError, match="int64"):
        philox4x32(0, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError):
        philox4x32(-5, torch.zeros(3, dtype=torch.int64))


def test_unavailable_backend_names_the_reason():
    # CUDA kernels are not built here (or, on a CUDA build, meta has none): no device needed.
    with pytest.raises(BackendUnavailableError, match="native"):
        philox_normal(4, seed=0, offset=0, device="meta", backend="native")


def test_opcheck(native):
    torch.library.opcheck(torch.ops.vaebm_fast.philox4x32.default,
                          (123, torch.arange(10, dtype=torch.int64)))
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.vaebm_fast.philox_normal_.default,
                              (torch.empty(37, dtype=dtype), 5, 3))
