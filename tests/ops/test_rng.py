"""philox4x32 and philox_normal (vaebm_fast.ops.rng) on every kernel target, against their
eager references; the references themselves against the Random123 known answers and the
transform of the module docstring.

Each property runs once per (backend, device) target of the ``kernel`` fixture (see
tests/ops/conftest.py): words bit-exact (counters across the 2**32 carry of the call index,
key words at their edges), normals within NORMAL_TOL, every dtype, odd sizes, empty outputs,
misaligned and non-contiguous tensors, the raw kernels' refusals, opcheck, torch.compile,
CUDA graphs and side streams. NaN pass-through does not apply: the ops read no floating input.
Sizes stay small because Triton's CPU interpreter runs the Triton targets without a GPU.
"""
import itertools
import math

import pytest
import torch

from vaebm_fast.ops import (BackendUnavailableError, philox4x32, philox4x32_reference,
                            philox_normal, philox_normal_reference)
from vaebm_fast.ops import _dispatch
from vaebm_fast.ops.rng import _philox_rounds

from . import helpers
from .helpers import DTYPES, LAYOUTS


def words(*hex_words):
    return [int(w, 16) for w in hex_words]


# Random123 kat_vectors for philox4x32_10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), words("6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8")),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, words("408f276d", "41c83b0e", "a20bc7c6", "6d5451fd")),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     words("d16cfe09", "94fdcceb", "5001e420", "24126ea1")),
]

# Normals vs the reference: the words are bit-exact, the float32 log/cos/sin of the backends
# (numpy in the interpreter, libdevice, the C library, CUDA's logf/cosf/sinf) differ by a few
# ulps of |n| <= 6.66 (an ulp there is 4.8e-7); float16/bfloat16 round the float32 normal, and
# such a tiny difference can flip that rounding by one ulp (relative 2**-10 / 2**-7).
NORMAL_TOL = {torch.float32: (1e-5, 0.0), torch.float64: (1e-5, 0.0),
              torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}

SEED = 0x123456789ABCDEF  # both key words non-zero
# Key words at their edges: (0, 0), (1, 0), (2**32 - 1, 0), (0, 1), (2**32 - 1, 2**31 - 1).
SEEDS = [SEED, 0, 1, 2**32 - 1, 2**32, 2**63 - 1]


def call_indices():
    """int64 call indices (read as uint64): a run longer than the CPU kernel's 2048-call task
    and the Triton kernel's 256-call block, runs across the carry of the counter's low word
    into its high word (2**32) and at 2**34, the int64 edges, and random ones anywhere."""
    gen = torch.Generator().manual_seed(0)
    return torch.cat([
        torch.arange(0, 2100, dtype=torch.int64),
        torch.arange(2**32 - 50, 2**32 + 50, dtype=torch.int64),
        torch.arange(2**34 - 5, 2**34 + 4, dtype=torch.int64),
        torch.tensor([-1, -2**63, 2**63 - 1, 2**32 - 1, -2**32], dtype=torch.int64),
        torch.randint(-2**63, 2**63 - 1, (500,), dtype=torch.int64, generator=gen),
    ])


# ------------------------------------------------------------------------------ references

@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_reference_rounds_known_answers(counter, key, expected):
    c = [torch.tensor([w], dtype=torch.int64) for w in counter]
    assert [int(w) for w in _philox_rounds(*c, *key)] == expected


def test_reference_seed_and_counter_packing():
    # key = (seed lo, seed hi), counter = (call lo, call hi, 0, 0), the call index read as the
    # uint64 bit pattern of an int64.
    seed, call = 0x299F31D0A4093822, 0x85A308D3243F6A88 - 2**64
    got = philox4x32_reference(seed, torch.tensor([call]))[0].tolist()
    c = [torch.tensor([w]) for w in (0x243F6A88, 0x85A308D3, 0, 0)]
    assert got == [int(w) for w in _philox_rounds(*c, 0xA4093822, 0x299F31D0)]
    assert philox4x32_reference(0, torch.tensor([0]))[0].tolist() == KNOWN_ANSWERS[0][2]


def test_reference_normal_lane_mapping():
    # Normal m is lane m % 4 of call m // 4; lanes (0, 1) and (2, 3) are Box-Muller pairs of
    # (u0, u1) and (u2, u3), spelled out here in float64 from the float32 uniforms.
    w = philox4x32_reference(7, torch.tensor([3]))[0].double()
    u = (w.float() * 2.0**-32 + 2.0**-32).double()
    r0, r1 = torch.sqrt(-2 * torch.log(u[0])), torch.sqrt(-2 * torch.log(u[2]))
    expected = torch.stack([r0 * torch.cos(2 * math.pi * u[1]), r0 * torch.sin(2 * math.pi * u[1]),
                            r1 * torch.cos(2 * math.pi * u[3]), r1 * torch.sin(2 * math.pi * u[3])])
    got = philox_normal_reference(4, seed=7, offset=12)
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=0)


def test_reference_normal_statistics():
    # The stream's statistics, once, from the fastest backend here ("auto": the native CPU
    # kernel, or the reference without it): every target matches the reference to NORMAL_TOL
    # (below), so these hold for all of them.
    x = philox_normal(1_000_000, seed=2024, offset=0, device="cpu").double()
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
    y = philox_normal(1000, seed=2025, offset=0, device="cpu")
    assert not torch.equal(y, x[:1000].float())


# ------------------------------------------------------------------------------ words

def test_words_bit_exact(kernel):
    kernel.require("philox4x32")
    for seed in SEEDS:
        with helpers.case(f"seed {seed:#x}"):
            # Every call index for one seed; for the key-word edges, every 16th (both sides of
            # the carries still).
            offsets = call_indices() if seed == SEED else call_indices()[::16]
            got = philox4x32(seed, offsets.to(kernel.device), backend=kernel.backend)
            assert got.dtype == torch.int64 and got.shape == (offsets.numel(), 4)
            assert got.device.type == kernel.device
            assert torch.equal(got.cpu(), philox4x32_reference(seed, offsets))
            assert int(got.min()) >= 0 and int(got.max()) < 2**32


def test_words_known_answer(kernel):
    # The one Random123 vector an op can reach (its counter words 2 and 3 are 0).
    kernel.require("philox4x32")
    got = philox4x32(0, torch.zeros(1, dtype=torch.int64, device=kernel.device),
                     backend=kernel.backend)
    assert got[0].tolist() == KNOWN_ANSWERS[0][2]


def test_words_follow_the_offsets_shape_and_layout(kernel):
    kernel.require("philox4x32")
    grid = call_indices()[2143:2158].view(3, 5)  # 2**32 - 7 ... 2**32 + 7
    for layout, arrange in LAYOUTS.items():
        with helpers.case(layout):
            got = philox4x32(9, arrange(grid.to(kernel.device)), backend=kernel.backend)
            assert got.shape == (3, 5, 4)
            assert torch.equal(got.cpu(), philox4x32_reference(9, grid))
    # Equal call indices give equal words.
    same = philox4x32(5, torch.zeros(2, 3, dtype=torch.int64, device=kernel.device),
                      backend=kernel.backend)
    assert torch.equal(same, same[:1, :1].expand(2, 3, 4))


def test_words_empty(kernel):
    kernel.require("philox4x32")
    for shape in [(0,), (3, 0)]:
        got = philox4x32(7, torch.zeros(shape, dtype=torch.int64, device=kernel.device),
                         backend=kernel.backend)
        assert got.shape == (*shape, 4) and got.dtype == torch.int64


# ------------------------------------------------------------------------------ normals

# (offset, n): odd lengths, unaligned starts, several 1024-element programs / CPU noise blocks,
# and runs whose call index crosses 2**32 (the counter's high word goes 0 -> 1) and 2**34.
NORMAL_CASES = [(0, 1), (3, 1001), (2, 2050), (4 * 2**32 - 6, 37), (2**34 - 3, 29),
                (4 * 2**34 - 1, 9), (2**62 + 1, 5)]


def test_normals_match_reference(kernel):
    kernel.require("philox_normal")
    for (offset, n), dtype in itertools.product(NORMAL_CASES, DTYPES):
        with helpers.case(f"{n} {dtype} normals at {offset}"):
            got = philox_normal(n, seed=SEED, offset=offset, device=kernel.device, dtype=dtype,
                                backend=kernel.backend)
            assert got.shape == (n,) and got.dtype == dtype
            assert got.device.type == kernel.device
            helpers.assert_close(got, philox_normal_reference(n, seed=SEED, offset=offset,
                                                              dtype=dtype), NORMAL_TOL)


def test_normal_dtypes_round_the_float32_normal(kernel):
    # Bit for bit: the float32 normal of the same target, rounded to nearest even (widened
    # for float64), as torch's .to does.
    kernel.require("philox_normal")
    args = dict(seed=9, offset=2, device=kernel.device, backend=kernel.backend)
    f32 = philox_normal(999, **args)
    for dtype in [torch.float64, torch.float16, torch.bfloat16]:
        with helpers.case(dtype):
            assert torch.equal(philox_normal(999, dtype=dtype, **args), f32.to(dtype))


def test_normals_are_addressed_by_offset(kernel):
    # Number offset + i of one stream, wherever a request starts: sub-ranges are bit-exact.
    kernel.require("philox_normal")
    args = dict(seed=3, device=kernel.device, backend=kernel.backend)
    full = philox_normal(1001, offset=0, **args)
    for offset, n in [(0, 1), (1, 7), (3, 4), (5, 996), (999, 2), (17, 0)]:
        assert torch.equal(philox_normal(n, offset=offset, **args), full[offset:offset + n])


def test_normals_empty(kernel):
    kernel.require("philox_normal")
    out = philox_normal(0, seed=0, offset=5, device=kernel.device, backend=kernel.backend)
    assert out.shape == (0,) and out.device.type == kernel.device
    kernel.ops.philox_normal_(torch.empty(0, 3, device=kernel.device), 1, 5)  # nothing to do


def test_normals_default_to_the_default_device():
    # Without a device, on torch's default device (here meta, where only the reference runs).
    with torch.device("meta"):
        out = philox_normal(3, seed=0, offset=0)
    assert out.device.type == "meta" and out.shape == (3,)


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "contiguous"])
def test_normal_fill_layouts(kernel, layout):
    # The raw op fills any contiguous tensor flat, whatever its shape, dtype or alignment
    # (storage offset 1: the CUDA kernels' scalar path), from any offset modulo 4; a
    # non-contiguous one would be filled out of order or past its elements, so it is refused.
    # (Contiguous, aligned outputs: the public op's, in the tests above.)
    kernel.require("philox_normal")
    for dtype in DTYPES:
        for shape, offset in [((3, 5, 7), 3), ((1,), 2), ((9,), 2**33 + 1), ((203,), 0)]:
            with helpers.case(f"{dtype} {shape} at {offset}"):
                out = LAYOUTS[layout](torch.zeros(shape, dtype=dtype, device=kernel.device))
                if not out.is_contiguous():  # strided, except for the one-element shape
                    with pytest.raises(RuntimeError, match="contiguous"):
                        kernel.ops.philox_normal_(out, SEED, offset)
                    assert not out.any()  # refused before writing
                    continue
                kernel.ops.philox_normal_(out, SEED, offset)
                expected = philox_normal_reference(out.numel(), seed=SEED, offset=offset,
                                                   dtype=dtype)
                helpers.assert_close(out.reshape(-1), expected, NORMAL_TOL)


@pytest.mark.cuda
def test_normals_many_waves(kernel):
    # More normals than one wave of the CUDA grid-stride loops covers; the CPU targets' chunk
    # and program boundaries are crossed by the sizes above already.
    kernel.require("philox_normal")
    if not kernel.is_cuda:
        pytest.skip("a CUDA grid-size property")
    n = (1 << 20) + 3
    got = philox_normal(n, seed=12345, offset=7, device="cuda", backend=kernel.backend)
    helpers.assert_close(got, philox_normal_reference(n, seed=12345, offset=7), NORMAL_TOL)


# ------------------------------------------------------------------------------ bad inputs

def test_normal_bad_arguments(kernel):
    kernel.require("philox_normal")
    for name, kwargs, error, match in [
        ("seed < 0", dict(n=4, seed=-1, offset=0), ValueError, "seed"),
        ("seed = 2**63", dict(n=4, seed=2**63, offset=0), ValueError, "seed"),
        ("seed True", dict(n=4, seed=True, offset=0), TypeError, "seed"),
        ("seed 1.5", dict(n=4, seed=1.5, offset=0), TypeError, "seed"),
        ("offset < 0", dict(n=4, seed=0, offset=-1), ValueError, "offset"),
        ("n < 0", dict(n=-1, seed=0, offset=0), ValueError, "n"),
        ("past 2**63", dict(n=4, seed=0, offset=2**63 - 2), ValueError,
         r"offset \+ number of normals"),
        ("int dtype", dict(n=4, seed=0, offset=0, dtype=torch.int32), ValueError,
         "floating dtype"),
        ("backend", dict(n=4, seed=0, offset=0, backend="fast"), ValueError,
         "backend must be one of"),
    ]:
        kwargs = dict(dict(device=kernel.device, backend=kernel.backend), **kwargs)
        with helpers.case(name), pytest.raises(error, match=match):
            philox_normal(**kwargs)


def test_words_bad_arguments(kernel):
    kernel.require("philox4x32")
    int64 = torch.zeros(3, dtype=torch.int64, device=kernel.device)
    for name, seed, offsets, error, match in [
        ("int32 offsets", 0, int64.int(), ValueError, "int64"),
        ("seed < 0", -5, int64, ValueError, "seed"),
        ("seed = 2**63", 2**63, int64, ValueError, "seed"),
        ("float seed", 1.0, int64, TypeError, "seed"),
    ]:
        with helpers.case(name), pytest.raises(error, match=match):
            philox4x32(seed, offsets, backend=kernel.backend)


def test_raw_ops_refuse_what_would_break_memory(kernel):
    kernel.require("philox4x32").require("philox_normal")
    ops, d = kernel.ops, kernel.device
    for name, call, match in [
        # Read or written with the wrong element size.
        ("int32 offsets", lambda: ops.philox4x32(0, torch.zeros(3, dtype=torch.int32, device=d)),
         "int64"),
        ("int out", lambda: ops.philox_normal_(torch.empty(4, dtype=torch.int32, device=d), 1, 0),
         "float"),
        # Filled flat: a non-contiguous out would be written outside its elements, and the
        # elements of an expanded one overlap.
        ("transposed out", lambda: ops.philox_normal_(torch.empty(4, 6, device=d).t(), 1, 0),
         "contiguous"),
        ("expanded out", lambda: ops.philox_normal_(torch.empty(1, device=d).expand(4), 1, 0),
         "contiguous"),
    ]:
        with helpers.case(name), pytest.raises(RuntimeError, match=match):
            call()


def test_unavailable_backend_names_the_reason(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="native.*meta"):
        philox_normal(4, seed=0, offset=0, device="meta", backend="native")
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        philox_normal(4, seed=0, offset=0, device="cpu", backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        philox4x32(0, torch.zeros(2, dtype=torch.int64), backend="triton")


# ------------------------------------------------------------------------------ torch integration

def test_opcheck(kernel):
    kernel.require("philox4x32").require("philox_normal")
    torch.library.opcheck(kernel.ops.philox4x32.default,
                          (123, torch.arange(10, dtype=torch.int64, device=kernel.device)))
    torch.library.opcheck(kernel.ops.philox_normal_.default,
                          (torch.empty(37, device=kernel.device), 5, 3))
    # float64 too; the compiled-graph check (the slow one) ran above.
    torch.library.opcheck(kernel.ops.philox_normal_.default,
                          (torch.empty(37, dtype=torch.float64, device=kernel.device), 5, 3),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_compiles_to_one_graph(kernel, monkeypatch):
    # aot_eager traces the ops through their fake kernels (the in-place philox_normal_
    # functionalized) without generating code, which keeps the test fast on a CPU.
    kernel.require("philox4x32").require("philox_normal")

    def draw(offsets):
        # Two consecutive requests (the second starts where the first ended) and the words,
        # used by later operations (which trace with the fake kernels' shapes).
        a = philox_normal(5, seed=SEED, offset=3, device=kernel.device, backend=kernel.backend)
        b = philox_normal(6, seed=SEED, offset=8, device=kernel.device, dtype=torch.float64,
                          backend=kernel.backend)
        words_ = philox4x32(SEED, offsets, backend=kernel.backend)
        return torch.cat([a.double(), b]) * 2, words_, words_[..., 3] - words_[..., 0]

    offsets = torch.arange(2**32 - 3, 2**32 + 3, device=kernel.device)
    # The first look-up of a backend happens inside the trace (kept as a constant there).
    monkeypatch.setattr(_dispatch, "_cache", {})
    torch._dynamo.reset()
    got_first = torch.compile(draw, backend="aot_eager", fullgraph=True)(offsets)
    expected = draw(offsets)
    for g, e in zip(got_first, expected):
        assert torch.equal(g, e)
    torch._dynamo.reset()
    got = torch.compile(draw, backend="aot_eager", fullgraph=True)(offsets)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert torch.equal(got[1].cpu(), philox4x32_reference(SEED, offsets.cpu()))


@pytest.mark.graphs
@pytest.mark.cuda
def test_cuda_graph_replays_the_draw(kernel):
    kernel.require("philox4x32").require("philox_normal")
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA target")
    offsets = call_indices()[2100:2200].cuda()  # 2**32 - 50 ... 2**32 + 49

    def draw():
        return (philox_normal(1031, seed=SEED, offset=2**33 + 1, device="cuda",
                              backend=kernel.backend),
                philox4x32(SEED, offsets, backend=kernel.backend))

    normals, words_ = helpers.captured(draw)  # the graph's outputs after one replay
    helpers.assert_close(normals, philox_normal_reference(1031, seed=SEED, offset=2**33 + 1),
                         NORMAL_TOL)
    assert torch.equal(words_.cpu(), philox4x32_reference(SEED, offsets.cpu()))


@pytest.mark.graphs
@pytest.mark.cuda
def test_runs_on_the_current_stream(kernel):
    # The inputs are written on the side stream after a delay, so a kernel launched on any
    # other stream would read the old offsets or be overwritten by the late zero fill.
    kernel.require("philox4x32").require("philox_normal")
    if not kernel.is_cuda:
        pytest.skip("streams need a CUDA target")
    wanted = call_indices()[:4096].cuda()
    offsets = torch.zeros_like(wanted)
    out = torch.full((4099,), float("nan"), device="cuda")

    def draw():
        torch.cuda._sleep(50_000_000)
        offsets.copy_(wanted)
        out.zero_()
        kernel.ops.philox_normal_(out, SEED, 5)
        return philox4x32(SEED, offsets, backend=kernel.backend)

    got = helpers.on_side_stream(draw)
    assert torch.equal(got.cpu(), philox4x32_reference(SEED, wanted.cpu()))
    helpers.assert_close(out, philox_normal_reference(4099, seed=SEED, offset=5), NORMAL_TOL)


# ------------------------------------------------------------------------------ Triton helpers

def test_triton_rounds_known_answers(kernel):
    # The device function on full four-word counters, which the ops never pass (their counter
    # words 2 and 3 are 0); the native one is checked by tests/cpp/test_philox.cpp.
    if kernel.backend != "triton":
        pytest.skip("the Triton device function philox4x32_10")
    from ._triton_philox import rounds_kernel
    for counter, key, expected in KNOWN_ANSWERS:
        out = torch.empty(4, dtype=torch.int64, device=kernel.device)
        rounds_kernel[(1,)](torch.tensor(counter, dtype=torch.int64, device=kernel.device),
                            torch.tensor(key, dtype=torch.int64, device=kernel.device), out)
        assert out.tolist() == expected, counter


def test_triton_normal_at(kernel):
    # The per-element helper the gathers use: arbitrary positions, every lane, across the
    # 2**32-call carry.
    if kernel.backend != "triton":
        pytest.skip("the Triton device function normal_at")
    from vaebm_fast.triton_kernels._launch import split64

    from ._triton_philox import normal_at_kernel
    m = torch.tensor([0, 1, 2, 3, 17, 4 * 2**32 - 1, 4 * 2**32, 4 * 2**32 + 3, 2**62 + 2, 5],
                     dtype=torch.int64)
    out = torch.empty(m.numel(), device=kernel.device)
    normal_at_kernel[(1,)](m.to(kernel.device), out, *split64(SEED), m.numel(), BLOCK=16)
    ref = torch.stack([philox_normal_reference(1, seed=SEED, offset=int(v))[0] for v in m])
    helpers.assert_close(out, ref, NORMAL_TOL)


def test_default_device_compiles_to_one_graph():
    # Without device=, the normals go to torch's default device, found in a way Dynamo traces.
    fn = torch.compile(lambda: philox_normal(7, seed=SEED, offset=2, backend="eager"),
                       backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    assert torch.equal(fn(), philox_normal_reference(7, seed=SEED, offset=2))
