"""replay_gather / replay_scatter_: native kernels vs the eager references, noise numbering,
input errors, opcheck."""
import math

import pytest
import torch

from vaebm_fast.ops import (philox_normal, replay_gather, replay_gather_reference,
                            replay_scatter_, replay_scatter_reference)

SHAPES = [(3,), (2, 3, 5), (1,), (4, 1, 7), (0,)]  # per-row shapes S, odd sizes, an empty row
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Gathered rows are copies (bit-exact); fresh rows are float32 normals, whose native transform
# (csrc/common/normals.cpp) agrees with the eager one to a few ulp, then rounded to the dtype.
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-6), torch.float64: dict(atol=2e-6, rtol=0),
       torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1e-2)}


def assert_gather_equal(out, ref, reinit):
    """Bit-exact on gathered rows, close on fresh ones."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out[~reinit], ref[~reinit])
    torch.testing.assert_close(out[reinit], ref[reinit], **TOL[out.dtype])


def make(n, shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen, dtype=torch.float64).to(dtype)


def draw(n_rows, batch, seed=0, p=0.5):
    gen = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(0, max(n_rows, 1), (batch,), generator=gen)
    reinit = torch.rand(batch, generator=gen) < p
    return index, reinit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["mixed", "all", "none"])
def test_gather_native_matches_reference(native, dtype, shape, mode):
    buffer = make(11, shape, dtype)
    index, reinit = draw(11, 9)
    reinit = {"mixed": reinit, "all": torch.ones(9, dtype=torch.bool),
              "none": torch.zeros(9, dtype=torch.bool)}[mode]
    args = dict(seed=2**40 + 3, offset=2**33 + 1)
    ref, end_ref = replay_gather_reference(buffer, index, reinit, **args)
    out, end = replay_gather(buffer, index, reinit, backend="native", **args)
    assert end == end_ref == args["offset"] + 9 * math.prod(shape)
    assert out.shape == (9, *shape) and out.dtype == dtype and out.is_contiguous()
    assert_gather_equal(out, ref, reinit)


def test_gather_numbering():
    buffer = make(5, (2, 3))
    index = torch.tensor([4, 0, 2, 1])
    reinit = torch.tensor([False, True, False, True])
    for backend in ("eager", "auto"):
        out, end = replay_gather(buffer, index, reinit, seed=7, offset=10, backend=backend)
        assert end == 10 + 4 * 6
        noise = philox_normal(24, seed=7, offset=10, backend=backend).view(4, 2, 3)
        assert torch.equal(out[0], buffer[4]) and torch.equal(out[2], buffer[2])
        assert torch.equal(out[1], noise[1]) and torch.equal(out[3], noise[3])


def test_gather_reinit_rows_ignore_index_and_empty_buffer(native):
    buffer = make(0, (3,))
    index = torch.tensor([-5, 100])
    reinit = torch.ones(2, dtype=torch.bool)
    ref, _ = replay_gather_reference(buffer, index, reinit, seed=1, offset=0)
    out, _ = replay_gather(buffer, index, reinit, seed=1, offset=0, backend="native")
    assert_gather_equal(out, ref, reinit)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_gather_empty_batch(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    buffer = make(4, (2, 5))
    out, end = replay_gather(buffer, torch.zeros(0, dtype=torch.int64),
                             torch.zeros(0, dtype=torch.bool), seed=0, offset=3, backend=backend)
    assert out.shape == (0, 2, 5) and end == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_non_contiguous_buffer(native, dtype):
    base = make(6, (5, 8), dtype)
    index, reinit = draw(6, 7, p=0.4)
    for buffer in (base.transpose(1, 2), base[::2], base[:, :, ::3], base[:1].expand(6, 5, 8)):
        idx = index % buffer.shape[0]
        ref, e1 = replay_gather_reference(buffer, idx, reinit, seed=3, offset=5)
        out, e2 = replay_gather(buffer, idx, reinit, seed=3, offset=5, backend="native")
        assert e1 == e2
        assert_gather_equal(out, ref, reinit)


def test_gather_across_threads(native):
    # Enough rows that parallel_for splits them; a row longer than a noise block.
    buffer = make(50, (1500,))
    index, reinit = draw(50, 64, seed=5)
    ref, _ = replay_gather_reference(buffer, index, reinit, seed=9, offset=1)
    out, _ = replay_gather(buffer, index, reinit, seed=9, offset=1, backend="native")
    assert_gather_equal(out, ref, reinit)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scatter_native_matches_reference(native, dtype, shape):
    buffer = make(10, shape, dtype)
    index = torch.randperm(10, generator=torch.Generator().manual_seed(2))[:6]
    values = make(6, shape, dtype, seed=4)
    ref, nat = buffer.clone(), buffer.clone()
    replay_scatter_reference(ref, index, values)
    version = nat._version
    replay_scatter_(nat, index, values, backend="native")
    assert torch.equal(nat, ref)
    assert nat._version > version
    expected = buffer.clone()
    expected[index] = values
    assert torch.equal(ref, expected)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_scatter_empty_and_non_contiguous(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    buffer = make(4, (2, 5))
    before = buffer.clone()
    replay_scatter_(buffer, torch.zeros(0, dtype=torch.int64), make(0, (2, 5)), backend=backend)
    assert torch.equal(buffer, before)
    for view in (lambda b: b.transpose(1, 2), lambda b: b[::2]):
        base = make(8, (5, 2))
        target = view(base)
        index = torch.tensor([3, 0]) % target.shape[0]
        values = make(2, tuple(target.shape[1:]), seed=3)
        expected = target.clone()
        expected[index] = values
        replay_scatter_(target, index, values, backend=backend)
        assert torch.equal(target, expected)


def test_errors():
    buffer = make(4, (3,))
    idx = torch.tensor([0, 1])
    re = torch.tensor([False, True])
    cases = [
        (lambda: replay_gather([1.0], idx, re, seed=0, offset=0), TypeError, "buffer"),
        (lambda: replay_gather(buffer, [0, 1], re, seed=0, offset=0), TypeError, "index"),
        (lambda: replay_gather(buffer, idx.int(), re, seed=0, offset=0), ValueError, "int64"),
        (lambda: replay_gather(buffer, idx[:, None], re, seed=0, offset=0), ValueError, "1-D"),
        (lambda: replay_gather(buffer, idx, re.int(), seed=0, offset=0), ValueError, "bool"),
        (lambda: replay_gather(buffer, idx, re[:1], seed=0, offset=0), ValueError, "shape"),
        (lambda: replay_gather(buffer, torch.tensor([4, 0]), re, seed=0, offset=0), ValueError,
         r"\[0, 4\)"),
        (lambda: replay_gather(buffer, torch.tensor([-1, 0]), re, seed=0, offset=0), ValueError,
         "got -1"),
        (lambda: replay_gather(buffer.long(), idx, re, seed=0, offset=0), ValueError, "float"),
        (lambda: replay_gather(torch.tensor(1.0), idx, re, seed=0, offset=0), ValueError, "0-d"),
        (lambda: replay_gather(buffer, idx, re, seed=-1, offset=0), ValueError, "seed"),
        (lambda: replay_gather(buffer, idx, re, seed=0, offset=1.5), TypeError, "offset"),
        (lambda: replay_gather(buffer, idx, re, seed=0, offset=2**63 - 2), ValueError, "2\\*\\*63"),
        (lambda: replay_gather(buffer, idx, re, seed=0, offset=0, backend="gpu"), ValueError,
         "backend"),
        (lambda: replay_scatter_(buffer, idx, make(3, (3,))), ValueError, "shape"),
        (lambda: replay_scatter_(buffer, idx, make(2, (4,))), ValueError, "shape"),
        (lambda: replay_scatter_(buffer, idx, make(2, (3,), torch.float64)), ValueError, "dtype"),
        (lambda: replay_scatter_(buffer, torch.tensor([1, 1]), make(2, (3,))), ValueError,
         "duplicates"),
        (lambda: replay_scatter_(buffer, torch.tensor([0, 9]), make(2, (3,))), ValueError,
         "got 9"),
        (lambda: replay_scatter_(buffer, idx, "x"), TypeError, "values"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()


def test_native_direct_call_checks(native):
    buffer = make(4, (3,))
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.vaebm_fast.replay_gather(buffer, torch.tensor([7]), torch.tensor([False]), 0, 0)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.vaebm_fast.replay_scatter_(buffer, torch.tensor([-1]), make(1, (3,)))
    with pytest.raises(RuntimeError, match="sharing memory"):
        torch.ops.vaebm_fast.replay_scatter_(buffer[:1].expand(4, 3), torch.tensor([0]),
                                             make(1, (3,)))


def test_opcheck(native):
    gather = torch.ops.vaebm_fast.replay_gather.default
    scatter = torch.ops.vaebm_fast.replay_scatter_.default
    for dtype in (torch.float32, torch.float64):
        buffer = make(6, (2, 3), dtype)
        index, reinit = torch.tensor([5, 0, 2]), torch.tensor([False, True, False])
        torch.library.opcheck(gather, (buffer, index, reinit, 3, 5))
        torch.library.opcheck(gather, (buffer.transpose(1, 2), index, reinit, 3, 5))
        torch.library.opcheck(scatter, (buffer.clone(), index, make(3, (2, 3), dtype)))
