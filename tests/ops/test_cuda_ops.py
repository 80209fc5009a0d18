"""CUDA kernels of every vaebm_fast op (csrc/cuda) vs the eager references and the CPU kernels.

Skipped, with the reason, when there is no CUDA device or when the loaded library was built
without CUDA kernels (``vaebm_fast._native.status().has_cuda_kernels``; a CPU-only torch or no
nvcc at build time). ``VAEBM_FAST_REQUIRE_NATIVE=1`` turns the second skip into a failure.

Covered: Philox words bit-exact; normals within 1e-5; every dtype (float16 / bfloat16 /
float32 / float64); odd sizes; non-contiguous and misaligned (storage offset 1, the kernels'
scalar paths) inputs; empty tensors; langevin_step_ with half_sq_norm; torch.library.opcheck.
The replay and power-iteration ops are tested on every target, CUDA included, in
test_replay.py and test_power_iteration.py.
"""
import inspect
import math
import os

import pytest
import torch

from vaebm_fast import _native

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Kernel (fp32 math, one rounding) vs the reference computed in float64 and rounded.
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.float64: dict(atol=1e-12, rtol=1e-12),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
NORMAL_ATOL = 1e-5


@pytest.fixture
def ops():
    """torch.ops.vaebm_fast when the loaded library has CUDA kernels, else skip (or fail with
    VAEBM_FAST_REQUIRE_NATIVE=1)."""
    import vaebm_fast.ops  # noqa: F401  (the op modules register fakes and autograd on load)
    st = _native.status()
    if not st.has_cuda_kernels:
        reason = (f"native extension unavailable: {st.reason}" if not st.loaded else
                  f"the native library {st.path} was built without CUDA kernels "
                  f"(build info cuda={st.build_info.get('cuda')!r}: CPU-only torch or no nvcc)")
        if os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return torch.ops.vaebm_fast


def randn(shape, dtype=torch.float32, seed=0, scale=1.0, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(
        device=device, dtype=dtype)


def misaligned(t):
    """A contiguous copy of t whose data starts one element into its storage."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = flat[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.storage_offset() == 1
    return out


def non_contiguous(t):
    """The values of t (dim >= 2) in a transposed (non-contiguous) layout."""
    out = t.transpose(0, 1).contiguous().transpose(0, 1)
    assert t.dim() < 2 or t.shape[0] <= 1 or t.shape[1] <= 1 or not out.is_contiguous()
    return out


def layouts(t):
    """(name, tensor) pairs with the values of t: contiguous, misaligned, non-contiguous."""
    out = [("contiguous", t), ("misaligned", misaligned(t))]
    if t.dim() >= 2:
        out.append(("transposed", non_contiguous(t)))
    return out


def _fake_kernel(qualname):
    try:
        from torch._library.simple_registry import singleton
        return singleton.find(qualname).fake_impl.kernel
    except Exception:  # private API moved: assume registered
        return True


def opcheck(op, args):
    """torch.library.opcheck, without the fake-tensor tests when no fake is registered yet
    (the Python wrappers register the fakes)."""
    qualname = op._schema.name
    if _fake_kernel(qualname) is None:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))
    else:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------------------------ Philox

def test_philox_words_bit_exact(ops):
    from vaebm_fast.ops import philox4x32_reference
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([
        torch.arange(0, 4099, dtype=torch.int64),
        torch.arange(2**32 - 1000, 2**32 + 1000, dtype=torch.int64),
        torch.randint(-2**63, 2**63 - 1, (10_001,), dtype=torch.int64, generator=gen),
    ])
    for seed in (0, 1, 0x123456789ABCDEF, 2**32 - 1, 2**32, 2**63 - 1):
        expected = philox4x32_reference(seed, offsets)
        got = ops.philox4x32(seed, offsets.cuda())
        assert got.dtype == torch.int64 and got.shape == (offsets.numel(), 4)
        assert torch.equal(got.cpu(), expected)
        assert torch.equal(got.cpu(), ops.philox4x32(seed, offsets))  # the CPU kernel
    # Known answer, shapes, non-contiguous offsets, empty.
    assert ops.philox4x32(0, torch.zeros(1, dtype=torch.int64, device="cuda"))[0].tolist() == [
        0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    grid = offsets[:35].view(5, 7).t()
    assert torch.equal(ops.philox4x32(9, grid.cuda()).cpu(), philox4x32_reference(9, grid))
    assert ops.philox4x32(9, torch.empty(0, 3, dtype=torch.int64, device="cuda")).shape == (0, 3, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_normal(ops, dtype):
    from vaebm_fast.ops import philox_normal_reference
    tol = dict(atol=NORMAL_ATOL, rtol=0) if dtype in (torch.float32, torch.float64) else TOL[dtype]
    for n in (1, 3, 1031, 4096):
        for offset in (0, 1, 2, 3, 2**33 + 1):
            expected = philox_normal_reference(n, seed=2**40 + 7, offset=offset, dtype=torch.float64)
            for name, out in (("aligned", torch.empty(n, dtype=dtype, device="cuda")),
                              ("misaligned", torch.empty(n + 1, dtype=dtype, device="cuda")[1:])):
                ops.philox_normal_(out, 2**40 + 7, offset)
                torch.testing.assert_close(out.cpu().double(), expected.to(dtype).double(),
                                           **tol, msg=lambda m: f"{name} n={n} offset={offset}: {m}")
    ops.philox_normal_(torch.empty(0, dtype=dtype, device="cuda"), 1, 5)  # empty: no launch


def test_philox_normal_large_matches_cpu_kernel(ops):
    n = (1 << 20) + 3
    gpu = torch.empty(n, device="cuda")
    cpu = torch.empty(n)
    ops.philox_normal_(gpu, 12345, 7)
    ops.philox_normal_(cpu, 12345, 7)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=NORMAL_ATOL, rtol=0)
    assert abs(gpu.mean().item()) < 5e-3 and abs(gpu.std().item() - 1) < 5e-3




# ------------------------------------------------------------------------------------ Langevin

LANGEVIN_TOL = {torch.float32: dict(atol=2e-6, rtol=1e-6), torch.float64: dict(atol=2e-6, rtol=0),
                torch.float16: dict(atol=2e-3, rtol=1e-3),
                torch.bfloat16: dict(atol=1.6e-2, rtol=1e-2)}


def _langevin_case(shapes, dtype, B):
    ts = [randn(s, dtype, seed=30 + i, scale=0.5) for i, s in enumerate(shapes)]
    gs = [randn(s, dtype, seed=60 + i, scale=3.0) for i, s in enumerate(shapes)]
    return ts, gs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [4, 1])
def test_langevin_half_sq_norm(ops, dtype, B):
    from vaebm_fast.ops import langevin_step_reference
    shapes = [(B, 3, 5), (B, 7), (B, 1), (B, 33, 3), (B, 0), (B, 1000), (B, 2, 2)]
    shapes += [(B, 1 + (7 * i) % 50) for i in range(30)]  # > 32 tensors: two launches
    ts, gs = _langevin_case(shapes, dtype, B)
    ts[3] = non_contiguous(ts[3])
    args = dict(step_size=0.02, seed=2**40 + 3, offset=2**33 + 1, prior_weight=0.5,
                grad_clip=1.0, clamp=(-0.7, 0.8))
    ref = [t.clone() for t in ts]
    langevin_step_reference(ref, gs, **args)
    expected = 0.5 * sum(t.double().reshape(B, -1).pow(2).sum(1) for t in ref)
    norm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    nat = [t.clone() for t in ts]
    nat[3] = non_contiguous(nat[3])
    norm = torch.full((B,), float("nan"), dtype=norm_dtype, device="cuda")
    ops.langevin_step_(nat, gs, 0.02, args["seed"], args["offset"], 0.5, math.sqrt(0.02),
                       1.0, -0.7, 0.8, norm)
    for r, n in zip(ref, nat):
        torch.testing.assert_close(n, r, **LANGEVIN_TOL[dtype])
    # The norm is of the stored values: exact up to the kernel-vs-reference rounding.
    mine = 0.5 * sum(t.double().reshape(B, -1).pow(2).sum(1) for t in nat)
    torch.testing.assert_close(norm.double(), mine, atol=1e-4, rtol=1e-5)
    close = (dict(atol=1e-4, rtol=1e-5) if dtype in (torch.float32, torch.float64)
             else dict(atol=1e-1, rtol=1e-2))
    torch.testing.assert_close(norm.double(), expected, **close)


def test_langevin_half_sq_norm_edge_cases(ops):
    # Rows without elements: zeros. Wrong dtype / shape / layout / batch size: errors (the
    # messages of the CPU kernel's checks).
    t = torch.empty(3, 0, device="cuda")
    norm = torch.full((3,), 7.0, device="cuda")
    ops.langevin_step_([t], [t.clone()], 0.1, 0, 0, 1.0, 0.3, None, None, None, norm)
    assert torch.equal(norm, torch.zeros(3, device="cuda"))
    ts = [torch.zeros(3, 4, device="cuda"), torch.zeros(3, 2, device="cuda")]
    gs = [t.clone() for t in ts]
    for bad in (torch.zeros(3, dtype=torch.float64, device="cuda"),  # dtype
                torch.zeros(4, device="cuda"),  # shape
                torch.zeros(6, device="cuda")[::2]):  # not contiguous
        with pytest.raises(RuntimeError, match="half_sq_norm must be a contiguous"):
            ops.langevin_step_(ts, gs, 0.1, 0, 0, 1.0, 0.3, None, None, None, bad)
    with pytest.raises(RuntimeError, match="dim 0 =="):
        ops.langevin_step_([ts[0], torch.zeros(2, 4, device="cuda")],
                           [gs[0], torch.zeros(2, 4, device="cuda")], 0.1, 0, 0, 1.0, 0.3,
                           None, None, None, torch.zeros(3, device="cuda"))
    # Without half_sq_norm the op is unchanged (and still matches the reference).
    from vaebm_fast.ops import langevin_step_reference
    a = [randn((5, 9), seed=1), randn((5, 3), seed=2)]
    g = [randn((5, 9), seed=3), randn((5, 3), seed=4)]
    b = [t.clone() for t in a]
    langevin_step_reference(a, g, step_size=0.1, seed=3, offset=1)
    ops.langevin_step_(b, g, 0.1, 3, 1, 1.0, math.sqrt(0.1), None, None, None)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------ opcheck

def test_opcheck_rng(ops):
    opcheck(ops.philox4x32.default, (5, torch.arange(7, device="cuda")))
    opcheck(ops.philox_normal_.default, (torch.empty(9, device="cuda"), 3, 2))


def test_opcheck_langevin(ops):
    op = ops.langevin_step_.default
    ts = [randn((3, 5), seed=17), randn((3, 7), seed=18)]
    gs = [randn((3, 5), seed=19), randn((3, 7), seed=20)]
    opcheck(op, (ts, gs, 0.1, 3, 5, 1.0, 0.3, None, None, None))
    opcheck(op, (ts, gs, 0.1, 3, 5, 0.0, 0.3, 0.5, -1.0, 1.0))
    fake = _fake_kernel("vaebm_fast::langevin_step_")
    if callable(fake) and len(inspect.signature(fake).parameters) < 11:
        pytest.skip("the registered fake of langevin_step_ does not take half_sq_norm yet")
    opcheck(op, (ts, gs, 0.1, 3, 5, 1.0, 0.3, None, None, None, torch.zeros(3, device="cuda")))
