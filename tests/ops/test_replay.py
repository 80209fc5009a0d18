"""replay_gather / replay_scatter_ (vaebm_fast.ops.replay) on every kernel target (the ``kernel``
fixture: native and Triton, CPU and CUDA) against the eager references.

Covered: agreement in every dtype the ops take, with odd, empty and long rows; fresh rows hold
their own normals of the Philox stream, whichever other rows are fresh, and an index that is
not read; gathered rows and scattered values are copied bit for bit (NaN and infinities
included); strided, misaligned, row-strided, transposed and expanded buffers (nothing outside a
view written); empty batches and buffers; the version-counter bump of the written buffer;
aliasing refused; the public ops' errors; the raw ops' own checks and their behaviour on an
out-of-range index; opcheck; torch.compile; CUDA-graph capture and a side stream.
"""
import math

import pytest
import torch

from vaebm_fast.ops import (BackendUnavailableError, philox_normal, replay_gather,
                            replay_gather_reference, replay_scatter_, replay_scatter_reference)

from .helpers import (DTYPES, LAYOUTS, assert_close, assert_same_bits, captured,
                      on_side_stream, randn, spaced, storage_outside, transposed)

# Fresh rows are float32 normals rounded to the dtype. The kernels' log/sin/cos differ from
# the reference's by a few float32 ulps of |n| <= 6.66 (held to 1e-5 on every target in
# test_rng.py); for float16 / bfloat16 such a difference can flip the rounding by one ulp.
# Everything else the ops move is a copy, compared bit for bit.
NOISE_TOL = {torch.float32: (1e-5, 0.0), torch.float64: (1e-5, 0.0),
             torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}

# Per-row shapes S: odd sizes, a single element, an empty row, a row longer than a Triton
# program (1024 elements), a size-1 inner dim.
ROW_SHAPES = [(3,), (2, 3, 5), (1,), (0,), (1100,), (4, 1, 7)]
N_ROWS, BATCH = 11, 9
# A seed using both 32-bit key words, and an offset whose calls cross 2**32 (the carry into
# the counter's upper word) and which is not a multiple of 4 (rows start mid-call).
SEED, OFFSET = 2**40 + 3, 4 * 2**32 - 5
# (mode, offset) of the calls of the agreement test: the offset modulo 4 decides where the
# first Philox call starts and, for gathered rows too, how the output splits into the
# kernels' 4-element units (on CUDA, whether their stores are aligned).
CALLS = [("mixed", OFFSET), ("mixed", 0), ("all", 2**33 + 2), ("none", 1)]
# Values a fresh row's index may hold: it is not read, so none of them may be dereferenced.
GARBAGE_INDEX = [-7, N_ROWS + 5, 2**40]


def make_buffer(n, shape, dtype, device, seed=0):
    """[n, *shape] normals with a NaN, +inf and -inf planted in rows 1, 2, 3 (when present),
    which copies must carry unchanged."""
    buffer = randn((n, *shape), dtype, device, seed=seed)
    rows = buffer.view(n, math.prod(shape))
    if rows.shape[1] > 0:
        for row, value in zip((1, 2, 3), (float("nan"), float("inf"), float("-inf"))):
            if row < n:
                rows[row, row % rows.shape[1]] = value
    return buffer


def draw(n_rows, batch, device, mode="mixed", seed=0):
    """(index, reinit) for a batch: random rows (repeats allowed for gathering), ``mode`` "mixed"
    (about half fresh), "all" or "none" fresh; fresh rows get garbage indices."""
    gen = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(0, max(n_rows, 1), (batch,), generator=gen)
    reinit = {"mixed": torch.rand(batch, generator=gen) < 0.5,
              "all": torch.ones(batch, dtype=torch.bool),
              "none": torch.zeros(batch, dtype=torch.bool)}[mode]
    if mode == "mixed":
        assert 0 < int(reinit.sum()) < batch, "draw another seed: the batch is not mixed"
    fresh = reinit.nonzero().flatten()
    index[fresh] = torch.tensor(GARBAGE_INDEX * batch)[:len(fresh)]
    return index.to(device), reinit.to(device)


def unique_index(n_rows, batch, device, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_rows, generator=gen)[:batch].to(device)


def assert_gathered(out, ref, reinit, msg=""):
    """Gathered rows bit for bit, fresh rows within NOISE_TOL of the reference's normals."""
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous(), msg
    assert out.device == ref.device, msg
    keep = ~reinit
    assert_same_bits(out[keep], ref[keep], f"{msg} gathered rows")
    assert_close(out[reinit], ref[reinit], NOISE_TOL, f"{msg} fresh rows")


# ------------------------------------------------------------------------------ replay_gather

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_gather_matches_reference(kernel, dtype, shape):
    kernel.require("replay_gather")
    buffer = make_buffer(N_ROWS, shape, dtype, kernel.device)
    for mode, offset in CALLS:
        index, reinit = draw(N_ROWS, BATCH, kernel.device, mode)
        ref, end_ref = replay_gather_reference(buffer, index, reinit, seed=SEED, offset=offset)
        out, end = replay_gather(buffer, index, reinit, seed=SEED, offset=offset,
                                 backend=kernel.backend)
        assert end == end_ref == offset + BATCH * math.prod(shape)
        assert out.shape == (BATCH, *shape)
        assert_gathered(out, ref, reinit, f"{mode}, offset {offset}")


def test_fresh_rows_hold_their_own_normals(kernel):
    # Row b of a batch draws normals offset + b*P .. offset + (b+1)*P - 1, the same numbers
    # philox_normal gives (bit for bit: one transform per backend), whichever other rows are
    # fresh; gathered rows skip theirs.
    kernel.require("replay_gather").require("philox_normal")
    index = torch.tensor([4, -3, 2, 99], device=kernel.device)
    reinit = torch.tensor([False, True, False, True], device=kernel.device)
    every = torch.ones_like(reinit)
    for dtype in DTYPES:
        buffer = make_buffer(5, (2, 3), dtype, kernel.device)
        noise = philox_normal(24, seed=7, offset=10, device=kernel.device, dtype=dtype,
                              backend=kernel.backend).view(4, 2, 3)
        out, end = replay_gather(buffer, index, reinit, seed=7, offset=10,
                                 backend=kernel.backend)
        assert end == 10 + 4 * 6
        assert_same_bits(out[0], buffer[4], f"{dtype} row 0")
        assert_same_bits(out[2], buffer[2], f"{dtype} row 2")
        assert_same_bits(out[1], noise[1], f"{dtype} row 1")
        assert_same_bits(out[3], noise[3], f"{dtype} row 3")
        out_all, _ = replay_gather(buffer, index, every, seed=7, offset=10,
                                   backend=kernel.backend)
        assert_same_bits(out_all, noise, f"{dtype} all fresh")


def test_gather_empty(kernel):
    kernel.require("replay_gather")
    buffer = make_buffer(4, (2, 5), torch.float32, kernel.device)
    none = torch.zeros(0, dtype=torch.int64, device=kernel.device)
    out, end = replay_gather(buffer, none, none.bool(), seed=0, offset=3,
                             backend=kernel.backend)
    assert out.shape == (0, 2, 5) and out.device.type == kernel.device and end == 3
    # A buffer with no rows yet: every row must be fresh, and their index is not read.
    empty = make_buffer(0, (3,), torch.float32, kernel.device)
    index = torch.tensor([-5, 100], device=kernel.device)
    reinit = torch.ones(2, dtype=torch.bool, device=kernel.device)
    ref, end_ref = replay_gather_reference(empty, index, reinit, seed=1, offset=0)
    out, end = replay_gather(empty, index, reinit, seed=1, offset=0, backend=kernel.backend)
    assert end == end_ref == 6
    assert_gathered(out, ref, reinit)


def test_many_long_rows(kernel):
    # Enough rows that the CPU kernels split them between threads (tasks of ~16K elements)
    # and the Triton kernels over many programs; rows longer than a Triton program and than
    # the block of 1024 normals in which the CPU kernel makes a float16 row's noise.
    kernel.require("replay_gather").require("replay_scatter_")
    buffer = make_buffer(50, (1500,), torch.float16, kernel.device)
    index, reinit = draw(50, 64, kernel.device, seed=5)
    ref, _ = replay_gather_reference(buffer, index, reinit, seed=9, offset=1)
    out, _ = replay_gather(buffer, index, reinit, seed=9, offset=1, backend=kernel.backend)
    assert_gathered(out, ref, reinit)
    rows = unique_index(50, 40, kernel.device)
    expected = buffer.clone()
    expected[rows] = out[:40]
    replay_scatter_(buffer, rows, out[:40], backend=kernel.backend)
    assert_same_bits(buffer, expected)


GATHER_LAYOUTS = {**LAYOUTS, "row-strided": spaced, "transposed": transposed,
                  "expanded": lambda t: t[:1].expand_as(t)}  # one row, stride 0


@pytest.mark.parametrize("layout", GATHER_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_layouts(kernel, layout, dtype):
    # Rows of 32 elements (the CUDA kernel's vector paths) and of 15 (its scalar ones).
    kernel.require("replay_gather")
    for shape in ((4, 8), (3, 5)):
        buffer = GATHER_LAYOUTS[layout](make_buffer(6, shape, dtype, kernel.device))
        index, reinit = draw(6, 7, kernel.device, seed=3)
        ref, end_ref = replay_gather_reference(buffer, index, reinit, seed=3, offset=5)
        out, end = replay_gather(buffer, index, reinit, seed=3, offset=5,
                                 backend=kernel.backend)
        assert end == end_ref
        assert_gathered(out, ref, reinit, f"{shape}")


# ----------------------------------------------------------------------------- replay_scatter_

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_scatter_matches_reference(kernel, dtype, shape):
    kernel.require("replay_scatter_")
    buffer = make_buffer(10, shape, dtype, kernel.device)
    index = unique_index(10, 6, kernel.device)
    values = make_buffer(6, shape, dtype, kernel.device, seed=4)  # NaN / inf among them
    # The specification, spelled out: buffer[index[b]] = values[b], other rows unchanged.
    expected = buffer.clone()
    expected[index] = values
    ref = buffer.clone()
    replay_scatter_reference(ref, index, values)
    assert_same_bits(ref, expected, "reference")
    out = buffer.clone()
    version = out._version
    replay_scatter_(out, index, values, backend=kernel.backend)
    assert_same_bits(out, expected, "public op")
    # Autograd must see the write (a saved buffer overwritten later is then refused).
    assert out._version > version
    raw = buffer.clone()
    version = raw._version
    kernel.ops.replay_scatter_(raw, index, values)
    assert_same_bits(raw, expected, "raw op")
    assert raw._version > version


def test_scatter_empty(kernel):
    kernel.require("replay_scatter_")
    buffer = make_buffer(4, (2, 5), torch.float32, kernel.device)
    before = buffer.clone()
    replay_scatter_(buffer, torch.zeros(0, dtype=torch.int64, device=kernel.device),
                    make_buffer(0, (2, 5), torch.float32, kernel.device),
                    backend=kernel.backend)
    assert_same_bits(buffer, before)


SCATTER_LAYOUTS = {**LAYOUTS, "row-strided": spaced, "transposed": transposed}


@pytest.mark.parametrize("layout", SCATTER_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_layouts(kernel, layout, dtype):
    # The buffer and the values in the layout; rows of 32 elements (the CUDA kernel's 16-byte
    # vector path when aligned) and of 15. The copy paths write back into the view only.
    kernel.require("replay_scatter_")
    to_layout = SCATTER_LAYOUTS[layout]
    for shape in ((4, 8), (3, 5)):
        buffer = to_layout(make_buffer(8, shape, dtype, kernel.device))
        values = to_layout(make_buffer(3, shape, dtype, kernel.device, seed=5))
        index = torch.tensor([7, 0, 3], device=kernel.device)
        expected = buffer.clone()
        expected[index] = values
        outside = storage_outside(buffer)
        replay_scatter_(buffer, index, values, backend=kernel.backend)
        assert_same_bits(buffer, expected, f"{shape}")
        assert_same_bits(storage_outside(buffer), outside, f"{shape} outside the view")


# ------------------------------------------------------------------------------ aliasing

@pytest.mark.parametrize("case", ["expanded buffer", "values overlap buffer"])
def test_scatter_refuses_aliasing(kernel, case):
    # Rows are written in parallel: a buffer whose rows share memory, or values read from rows
    # being written, would make the result depend on the order of the writes (the eager
    # reference's index_copy_ refuses both).
    kernel.require("replay_scatter_")
    device = kernel.device
    if case == "expanded buffer":
        buffer = torch.zeros(1, 3, device=device).expand(4, 3)
        index, values = torch.tensor([0], device=device), torch.ones(1, 3, device=device)
    else:
        buffer = torch.arange(15.0, device=device).view(5, 3)
        index, values = torch.tensor([1, 0], device=device), buffer[0:2]
    with pytest.raises((RuntimeError, ValueError), match="sharing memory|memory location"):
        replay_scatter_(buffer, index, values, backend=kernel.backend)
    with pytest.raises(RuntimeError, match="sharing memory|memory location"):
        kernel.ops.replay_scatter_(buffer, index, values)


# ------------------------------------------------------------------------------ errors

def error_cases(device):
    """(call, exception, message pattern) of the public ops' argument checks."""
    def t(*a, **k):
        return torch.tensor(*a, device=device, **k)

    buffer = make_buffer(4, (3,), torch.float32, device)
    idx, re = t([0, 1]), t([False, True])
    vals = make_buffer(2, (3,), torch.float32, device)

    def gather(buffer=buffer, index=idx, reinit=re, seed=0, offset=0, **kw):
        return lambda backend: replay_gather(buffer, index, reinit, seed=seed, offset=offset,
                                             backend=kw.get("name", backend))

    def scatter(buffer=buffer, index=idx, values=vals):
        return lambda backend: replay_scatter_(buffer, index, values, backend=backend)

    cases = [
        (gather(buffer=[1.0]), TypeError, "buffer must be a torch.Tensor"),
        (gather(index=[0, 1]), TypeError, "index must be a torch.Tensor"),
        (gather(reinit=[False, True]), TypeError, "reinit must be a torch.Tensor"),
        (gather(index=idx.int()), ValueError, "int64"),
        (gather(index=idx[:, None]), ValueError, "1-D"),
        (gather(reinit=re.int()), ValueError, "bool"),
        (gather(reinit=re[:1]), ValueError, "shape of index"),
        (gather(buffer=buffer.long()), ValueError, "float16, bfloat16, float32 or float64"),
        (gather(buffer=buffer[0, 0]), ValueError, "0-d"),
        (gather(index=t([4, 0])), ValueError, r"\[0, 4\) .*got 4"),
        (gather(index=t([-1, 0])), ValueError, "got -1"),
        # An empty buffer has no row to gather: only fresh rows are allowed.
        (gather(buffer=buffer[:0], reinit=t([False, True])), ValueError, r"\[0, 0\)"),
        (gather(seed=-1), ValueError, "seed"),
        (gather(seed=1.5), TypeError, "seed"),
        (gather(offset=1.5), TypeError, "offset"),
        (gather(offset=2**63 - 2), ValueError, r"2\*\*63"),
        (gather(name="gpu"), ValueError, "backend must be one of"),
        (scatter(values=vals[:1]), ValueError, "shape"),
        (scatter(values=make_buffer(2, (4,), torch.float32, device)), ValueError, "shape"),
        (scatter(values=vals.double()), ValueError, "dtype"),
        (scatter(index=t([1, 1])), ValueError, "duplicates"),
        (scatter(index=t([0, 9])), ValueError, "got 9"),
        (scatter(index=t([-2, 0])), ValueError, "got -2"),
        (scatter(values="x"), TypeError, "values must be a torch.Tensor"),
        (scatter(index=idx.int()), ValueError, "int64"),
    ]
    if device == "cuda":
        cases += [
            (gather(index=idx.cpu()), ValueError, "index is on cpu"),
            (gather(reinit=re.cpu()), ValueError, "reinit is on cpu"),
            (scatter(values=vals.cpu()), ValueError, "values are on cpu"),
        ]
    return cases


def test_public_ops_reject_bad_arguments(kernel):
    kernel.require("replay_gather").require("replay_scatter_")
    for call, error, match in error_cases(kernel.device):
        with pytest.raises(error, match=match):
            call(kernel.backend)


def test_unavailable_triton_raises_with_the_reason(monkeypatch):
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        replay_gather(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([False]), seed=0,
                      offset=0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        replay_scatter_(torch.zeros(2, 3), torch.tensor([0]), torch.zeros(1, 3),
                        backend="triton")


def test_raw_ops_refuse_what_would_break_memory(kernel):
    # The raw ops read and write through raw pointers: arguments of the wrong size, element
    # size or layout must be refused by the kernels themselves, not only by the wrappers.
    kernel.require("replay_gather").require("replay_scatter_")
    d = kernel.device
    ops = kernel.ops
    buffer = make_buffer(4, (3,), torch.float32, d)
    idx, re = torch.tensor([0, 1], device=d), torch.tensor([False, True], device=d)
    vals = make_buffer(2, (3,), torch.float32, d)
    cases = [
        lambda: ops.replay_gather(buffer, idx.int(), re, 0, 0),          # 4-byte indices
        lambda: ops.replay_gather(buffer, idx[:, None], re, 0, 0),
        lambda: ops.replay_gather(buffer, idx, re[:1], 0, 0),            # reinit too short
        lambda: ops.replay_gather(buffer, idx, re.to(torch.uint8), 0, 0),
        lambda: ops.replay_gather(buffer.long(), idx, re, 0, 0),
        lambda: ops.replay_scatter_(buffer, idx, vals[:1]),             # values too short
        lambda: ops.replay_scatter_(buffer, idx, make_buffer(2, (4,), torch.float32, d)),
        lambda: ops.replay_scatter_(buffer, idx, vals.double()),        # 8-byte values
        lambda: ops.replay_scatter_(buffer, idx.int(), vals),
    ]
    before = buffer.clone()
    for k, call in enumerate(cases):
        with pytest.raises(RuntimeError):
            call()
        assert_same_bits(buffer, before, f"case {k} wrote into the buffer")


def test_raw_ops_out_of_range_index(kernel):
    # Without the wrappers' range check, an out-of-range row must not be read or written: the
    # native CPU kernels raise; the Triton kernels (which cannot raise without a host sync)
    # gather such a row as zeros and skip it when scattering. The buffer is rows 1..4 of a
    # larger one, so index -1 and 4 would land on its guard rows 0 and 5.
    kernel.require("replay_gather").require("replay_scatter_")
    if kernel.backend == "native" and kernel.is_cuda:
        pytest.skip("the native CUDA kernels trip a device-side assertion on an out-of-range "
                    "index, which would end this process's CUDA context")
    d = kernel.device
    base = torch.full((6, 3), 7.0, device=d)
    buffer = base[1:5]
    buffer.copy_(randn((4, 3), device=d))
    before = base.clone()
    index = torch.tensor([-1, 4, 2], device=d)
    reinit = torch.zeros(3, dtype=torch.bool, device=d)
    values = torch.full((3, 3), -1.0, device=d)
    if kernel.backend == "native":
        with pytest.raises(RuntimeError, match="out of range"):
            kernel.ops.replay_gather(buffer, index, reinit, 0, 0)
        with pytest.raises(RuntimeError, match="out of range"):
            kernel.ops.replay_scatter_(buffer, index, values)
        assert_same_bits(base, before)
        return
    out = kernel.ops.replay_gather(buffer, index, reinit, 0, 0)
    assert_same_bits(out[:2], torch.zeros(2, 3, device=d))
    assert_same_bits(out[2], buffer[2])
    kernel.ops.replay_scatter_(buffer, index, values)
    expected = before.clone()
    expected[3] = -1.0  # row 2 of the view, the one valid index
    assert_same_bits(base, expected)


# ------------------------------------------------------------------------------ torch.library

def test_opcheck(kernel):
    kernel.require("replay_gather").require("replay_scatter_")
    gather, scatter = kernel.ops.replay_gather.default, kernel.ops.replay_scatter_.default
    index = torch.tensor([5, 0, 2], device=kernel.device)
    reinit = torch.tensor([False, True, False], device=kernel.device)
    for dtype in (torch.float32, torch.float64):
        buffer = make_buffer(6, (2, 3), dtype, kernel.device)
        values = make_buffer(3, (2, 3), dtype, kernel.device, seed=4)
        torch.library.opcheck(gather, (buffer, index, reinit, 3, 5))
        torch.library.opcheck(scatter, (buffer.clone(), index, values))
    # A buffer whose rows are not contiguous (the kernels' copy paths).
    torch.library.opcheck(gather, (transposed(buffer), index, reinit, 3, 5))
    torch.library.opcheck(scatter, (transposed(buffer.clone()), index, values))


def compiled(fn, fullgraph=True):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=fullgraph)


def round_trip(kernel, raw):
    """A sampler's use of the buffer: gather start states, run a (stand-in) chain, scatter the
    final states back; through the public ops or the raw ops of the target."""
    def step(buffer, index, reinit):
        if raw:
            batch = kernel.ops.replay_gather(buffer, index, reinit, 4, 0)
            kernel.ops.replay_scatter_(buffer, index, batch * 0.5)
        else:
            batch, _ = replay_gather(buffer, index, reinit, seed=4, offset=0,
                                     backend=kernel.backend)
            replay_scatter_(buffer, index, batch * 0.5, backend=kernel.backend)
        return batch
    return step


def check_compiled_round_trip(kernel, raw, fullgraph):
    kernel.require("replay_gather").require("replay_scatter_")
    buffer = make_buffer(6, (2, 3), torch.float32, kernel.device)
    index = torch.tensor([4, 0, 2], device=kernel.device)
    reinit = torch.tensor([False, True, False], device=kernel.device)
    eager_buffer = buffer.clone()
    expected = round_trip(kernel, raw)(eager_buffer, index, reinit)
    got = compiled(round_trip(kernel, raw), fullgraph)(buffer, index, reinit)
    assert_same_bits(got, expected)
    assert_same_bits(buffer, eager_buffer)


def test_public_ops_compile_to_one_graph(kernel):
    check_compiled_round_trip(kernel, raw=False, fullgraph=True)


def test_public_ops_compile_with_graph_breaks(kernel):
    check_compiled_round_trip(kernel, raw=False, fullgraph=False)


def test_raw_ops_compile_to_one_graph(kernel):
    check_compiled_round_trip(kernel, raw=True, fullgraph=True)


# ------------------------------------------------------------------------------ CUDA streams

@pytest.mark.graphs
def test_cuda_graph_capture(kernel):
    # While capturing, the public ops skip their host-side value checks (a sync is not allowed)
    # and must enqueue everything on the capturing stream; one replay gives the eager results.
    kernel.require("replay_gather").require("replay_scatter_")
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA device")
    buffer = make_buffer(N_ROWS, (4, 9), torch.float32, "cuda")
    index, reinit = draw(N_ROWS, BATCH, "cuda")
    ref, _ = replay_gather_reference(buffer, index, reinit, seed=SEED, offset=OFFSET)
    out = captured(lambda: replay_gather(buffer, index, reinit, seed=SEED, offset=OFFSET,
                                         backend=kernel.backend)[0])
    assert_gathered(out, ref, reinit, "gather")
    target, start = buffer.clone(), buffer.clone()
    scatter_index = unique_index(N_ROWS, 5, "cuda")
    values = make_buffer(5, (4, 9), torch.float32, "cuda", seed=6)
    expected = buffer.clone()
    expected[scatter_index] = values
    captured(lambda: replay_scatter_(target, scatter_index, values, backend=kernel.backend),
             reset=lambda: target.copy_(start))
    assert_same_bits(target, expected, "scatter")


@pytest.mark.graphs
def test_side_stream(kernel):
    # The kernels run on the caller's current stream. The public ops synchronise the host with
    # it to read index, so the raw ops are what can show a kernel on another stream (see
    # helpers.on_side_stream); both must give the eager results.
    kernel.require("replay_gather").require("replay_scatter_")
    if not kernel.is_cuda:
        pytest.skip("streams need a CUDA device")
    buffer = make_buffer(N_ROWS, (4, 9), torch.float32, "cuda")
    index, reinit = draw(N_ROWS, BATCH, "cuda")
    ref, _ = replay_gather_reference(buffer, index, reinit, seed=SEED, offset=OFFSET)
    scatter_index = unique_index(N_ROWS, 5, "cuda")
    values = make_buffer(5, (4, 9), torch.float32, "cuda", seed=6)
    expected = buffer.clone()
    expected[scatter_index] = values

    def raw():
        b, i, r = buffer.clone(), index.clone(), reinit.clone()  # made on the side stream
        out = kernel.ops.replay_gather(b, i, r, SEED, OFFSET)
        kernel.ops.replay_scatter_(b, scatter_index.clone(), values.clone())
        return out, b

    def public():
        b = buffer.clone()
        out, _ = replay_gather(b, index, reinit, seed=SEED, offset=OFFSET,
                               backend=kernel.backend)
        replay_scatter_(b, scatter_index, values.clone(), backend=kernel.backend)
        return out, b

    for name, fn in (("raw ops", raw), ("public ops", public)):
        out, scattered = on_side_stream(fn)
        assert_gathered(out, ref, reinit, name)
        assert_same_bits(scattered, expected, name)
