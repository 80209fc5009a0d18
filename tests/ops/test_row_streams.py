"""Row streams (vaebm_fast.ops.rng, docs/design.md "Random numbers"): philox_normal_rows_ and the
row mode of langevin_step_ / LangevinStepper (``first_row=``), on every kernel target, against
their eager references.

The property users need is scale invariance: the noise sample ``i`` gets depends only on
(seed, i, step offset, element), so a batch drawn in one call, or split into pieces with
matching ``first_row`` (several calls, several processes), gets bit-identical noise. The
flat mode (``first_row=None``) is what the other op tests check, unchanged.
"""
import itertools
import math

import pytest
import torch

from vaebm_fast.ops import (LangevinStepper, langevin_step_, langevin_step_graphed_,
                            langevin_step_reference, philox4x32_reference,
                            philox_normal_reference, philox_normal_rows_,
                            philox_normal_rows_reference)
from vaebm_fast.ops.rng import MAX_ROW, _philox_rounds

from . import helpers
from .helpers import DTYPES, LAYOUTS
from .test_langevin import HSN_TOL, OWN_TOL, TOL, hsn_buffer, make, on, own_half_sq_norm
from .test_rng import NORMAL_TOL, SEED

# Shapes sharing dim 0 (B = 3): odd row lengths, an empty row, a 1-d tensor (one element a
# row), rows longer than a 1024-element Triton program.
SHAPES = [(3, 7), (3,), (3, 0), (3, 2, 19), (3, 1031)]
STEP = dict(step_size=0.02, prior_weight=0.5, grad_clip=1.0, clamp=(-0.9, None))


def per_row(shapes):
    return sum(math.prod(s[1:]) for s in shapes)


# ------------------------------------------------------------------------------ the reference

@pytest.mark.parametrize("row", [0, 1, 2**32 - 2, 2**32 - 1, 2**40 + 5, MAX_ROW])
def test_reference_row_stream_counter(row):
    # Row stream r: counter (c lo, c hi, (r + 1) lo, (r + 1) hi), r + 1 crossing into word 3.
    calls = torch.tensor([0, 5, 2**32 + 3, -1], dtype=torch.int64)
    got = philox4x32_reference(SEED, calls, torch.tensor(row))
    s = row + 1
    for call, words in zip(calls.tolist(), got.tolist()):
        c = call % 2**64
        counter = [torch.tensor([w]) for w in (c & 0xFFFFFFFF, c >> 32, s & 0xFFFFFFFF, s >> 32)]
        assert words == [int(w) for w in _philox_rounds(*counter, SEED & 0xFFFFFFFF,
                                                         SEED >> 32)]


def test_reference_rows_are_lanes_of_their_row_stream():
    # Entry [b, j] is lane (offset + j) % 4 of call (offset + j) // 4 of row stream
    # first_row + b, through the flat stream's words-to-normals transform.
    got = philox_normal_rows_reference(3, 9, seed=5, offset=6, first_row=10)
    for b, j in itertools.product(range(3), range(9)):
        m = 6 + j
        words = philox4x32_reference(5, torch.tensor([m // 4]), torch.tensor([10 + b]))
        flat_words = philox4x32_reference(5, torch.tensor([m // 4]))
        assert not torch.equal(words, flat_words)  # no row stream is the flat stream
        # The transform of these words: the flat normal at a call with the same words is
        # not available, so spell lane m % 4 out (test_rng checks the transform itself).
        u = words[0].float() * 2.0**-32 + 2.0**-32
        pair = m % 4 // 2
        r = torch.sqrt(-2.0 * torch.log(u[2 * pair]))
        theta = u[2 * pair + 1] * (2 * math.pi)
        want = r * (torch.cos(theta) if m % 2 == 0 else torch.sin(theta))
        torch.testing.assert_close(got[b, j], want, atol=1e-6, rtol=0)


def test_reference_rows_differ_from_each_other_and_from_flat():
    rows = philox_normal_rows_reference(4, 64, seed=1, offset=0, first_row=0)
    flat = philox_normal_reference(64, seed=1, offset=0)
    for b in range(4):
        assert not torch.equal(rows[b], flat)
        for c in range(b):
            assert not torch.equal(rows[b], rows[c])


def test_reference_row_mode_of_the_step_adds_row_noise():
    # g = 0, lambda = 0, sigma = 1: the step adds exactly its noise. Row b of tensor g gets
    # normals offset + cum_g .. of row stream first_row + b; the op returns offset + D.
    ts = [torch.zeros(2, 3, 5, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)]
    zeros = [torch.zeros_like(t) for t in ts]
    end = langevin_step_reference(ts, zeros, step_size=1.0, seed=42, offset=10,
                                  prior_weight=0.0, first_row=7)
    assert end == 10 + 19
    noise = philox_normal_rows_reference(2, 19, seed=42, offset=10, first_row=7).double()
    torch.testing.assert_close(ts[0].reshape(2, -1), noise[:, :15], atol=0, rtol=0)
    torch.testing.assert_close(ts[1], noise[:, 15:], atol=0, rtol=0)


# ------------------------------------------------------------------------------ rows of normals

# (shape, offset): one element, odd rows at every offset % 4, rows over a Triton program,
# rows of whole calls, an offset past the carry of the counter's low word.
ROW_CASES = [((1, 1), 0), ((3, 5), 3), ((4, 2, 3), 1), ((2, 1030), 2), ((5, 8), 4),
             ((2, 13), 2**34 + 1)]


def test_normal_rows_match_reference(kernel):
    kernel.require("philox_normal_rows_")
    for (shape, offset), dtype in itertools.product(ROW_CASES, DTYPES):
        with helpers.case(f"{shape} {dtype} at {offset}"):
            first_row = 2**40 + 11
            out = torch.full(shape, 99.0, dtype=dtype, device=kernel.device)
            assert philox_normal_rows_(out, seed=SEED, offset=offset, first_row=first_row,
                                       backend=kernel.backend) is out
            want = philox_normal_rows_reference(shape[0], math.prod(shape[1:]), seed=SEED,
                                                offset=offset, first_row=first_row,
                                                dtype=dtype)
            helpers.assert_close(out.reshape(shape[0], -1), want, NORMAL_TOL)


def test_normal_rows_at_the_last_rows(kernel):
    # The highest rows (r + 1 = 2**62 in counter word 3) and row streams across the carry of
    # r + 1 from word 2 into word 3.
    kernel.require("philox_normal_rows_")
    for first_row in (MAX_ROW - 2, 2**32 - 3):
        out = torch.empty(3, 6, device=kernel.device)
        philox_normal_rows_(out, seed=7, offset=1, first_row=first_row, backend=kernel.backend)
        want = philox_normal_rows_reference(3, 6, seed=7, offset=1, first_row=first_row)
        helpers.assert_close(out, want, NORMAL_TOL)


def test_normal_rows_are_scale_invariant(kernel):
    # Rows [0, B) in one call equal rows [0, k) and [k, B) in two, bit for bit.
    kernel.require("philox_normal_rows_")
    args = dict(seed=3, offset=5, backend=kernel.backend)
    whole = torch.empty(7, 2, 9, device=kernel.device)
    philox_normal_rows_(whole, first_row=100, **args)
    for k in (1, 3, 6):
        head, tail = torch.empty(k, 2, 9, device=kernel.device), \
            torch.empty(7 - k, 2, 9, device=kernel.device)
        philox_normal_rows_(head, first_row=100, **args)
        philox_normal_rows_(tail, first_row=100 + k, **args)
        helpers.assert_same_bits(torch.cat([head, tail]), whole, f"split at {k}")


def test_normal_rows_empty(kernel):
    kernel.require("philox_normal_rows_")
    for shape in [(0, 4), (3, 0), (0,)]:
        out = torch.empty(shape, device=kernel.device)
        philox_normal_rows_(out, seed=1, offset=2, first_row=0, backend=kernel.backend)


@pytest.mark.parametrize("bad, error, match", [
    (dict(first_row=-1), ValueError, "first_row must be an int in"),
    (dict(first_row=MAX_ROW), ValueError, r"2\*\*62 - rows"),  # 3 rows from the last one
    (dict(first_row=1.0), TypeError, "first_row"),
    (dict(first_row=True), TypeError, "first_row"),
    (dict(offset=-1), ValueError, "offset"),
])
def test_normal_rows_bad_arguments(bad, error, match):
    args = {**dict(seed=1, offset=0, first_row=0), **bad}
    with pytest.raises(error, match=match):
        philox_normal_rows_(torch.empty(3, 4), **args)


def test_normal_rows_bad_outputs():
    with pytest.raises(ValueError, match="dim >= 1"):
        philox_normal_rows_(torch.empty(()), seed=1, offset=0, first_row=0)
    with pytest.raises(ValueError, match="contiguous"):
        philox_normal_rows_(torch.empty(4, 6)[:, ::2], seed=1, offset=0, first_row=0)
    with pytest.raises(ValueError, match="floating"):
        philox_normal_rows_(torch.empty(4, 6, dtype=torch.int32), seed=1, offset=0,
                            first_row=0)


def test_normal_rows_raw_ops_refuse_a_negative_row(kernel):
    kernel.require("philox_normal_rows_")
    with pytest.raises(RuntimeError, match="first_row"):
        kernel.ops.philox_normal_rows_(torch.empty(2, 3, device=kernel.device), 1, 0, -1)


def test_normal_rows_opcheck(kernel):
    kernel.require("philox_normal_rows_")
    op = kernel.ops.philox_normal_rows_.default
    torch.library.opcheck(op, (torch.empty(3, 5, device=kernel.device), 1, 2, 4),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


# ------------------------------------------------------------------------------ langevin_step_

def reference_rows(tensors, grads, **args):
    """The reference step on CPU copies in row mode: (states, half_sq_norm or None, end)."""
    ts = [t.detach().cpu().clone() for t in tensors]
    gs = [g.detach().cpu() for g in grads]
    hsn = args.pop("half_sq_norm", None)
    hsn = None if hsn is None else torch.empty(hsn.shape, dtype=hsn.dtype)
    end = langevin_step_reference(ts, gs, half_sq_norm=hsn, **args)
    return ts, hsn, end


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_step_rows_match_reference(kernel, dtype):
    kernel.require("langevin_step_")
    ts, gs = make(SHAPES, dtype, seed=5)
    args = dict(seed=2**40 + 3, offset=2**33 + 1, first_row=2**35 + 9, **STEP)
    ref_ts, ref_hsn, ref_end = reference_rows(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"),
                                              **args)
    got_ts, hsn = on(kernel.device, ts), hsn_buffer(ts, kernel.device)
    end = langevin_step_(got_ts, on(kernel.device, gs), half_sq_norm=hsn,
                         backend=kernel.backend, **args)
    assert end == ref_end == args["offset"] + per_row(SHAPES)
    for i, (got, want) in enumerate(zip(got_ts, ref_ts)):
        helpers.assert_close(got, want, TOL, f"tensors[{i}]")
    assert not torch.equal(got_ts[-1].cpu(), ts[-1])
    helpers.assert_close(hsn, ref_hsn, {hsn.dtype: HSN_TOL[dtype]}, "half_sq_norm")
    helpers.assert_close(hsn, own_half_sq_norm(got_ts, hsn), OWN_TOL, "half_sq_norm vs states")


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "contiguous"])
def test_step_rows_layouts(kernel, layout):
    # Non-contiguous and misaligned states and gradients: the reference's values.
    kernel.require("langevin_step_")
    args = dict(seed=1, offset=3, first_row=5, **STEP)
    for dtype in DTYPES:
        with helpers.case(dtype):
            ts, gs = make([(3, 5, 67), (3, 4)], dtype, seed=4)
            ref_ts, _, _ = reference_rows(ts, gs, **args)
            got_ts = [LAYOUTS[layout](t) for t in on(kernel.device, ts)]
            got_gs = [LAYOUTS[layout](g) for g in on(kernel.device, gs)]
            langevin_step_(got_ts, got_gs, backend=kernel.backend, **args)
            for i, (got, want) in enumerate(zip(got_ts, ref_ts)):
                helpers.assert_close(got, want, TOL, f"tensors[{i}]")


SCALE_TARGETS = ["kernel", "eager"]


@pytest.mark.parametrize("target", SCALE_TARGETS)
def test_step_rows_are_scale_invariant(kernel, target):
    # A batch of 5 samples stepped in one call equals the same samples stepped in two calls,
    # rows [0, k) with first_row f and rows [k, 5) with first_row f + k, bit for bit, for a
    # list of several tensors, over two steps (the returned offsets agree too).
    kernel.require("langevin_step_")
    backend = kernel.backend if target == "kernel" else "eager"
    device = kernel.device if target == "kernel" else "cpu"
    shapes = [(5, 3, 7), (5, 2), (5, 1100)]
    ts, gs = make(shapes, seed=8)
    args = dict(seed=77, first_row=2**33 - 2, backend=backend, **STEP)
    whole = on(device, ts)
    grads = on(device, gs)
    offset = 9
    for _ in range(2):
        end = langevin_step_(whole, grads, offset=offset, **args)
        assert end == offset + per_row(shapes)
        offset = end
    for k in (1, 2, 4):
        with helpers.case(f"split at {k}"):
            head = [t[:k].clone() for t in on(device, ts)]
            tail = [t[k:].clone() for t in on(device, ts)]
            head_g = [g[:k].clone() for g in grads]
            tail_g = [g[k:].clone() for g in grads]
            offset = 9
            for _ in range(2):
                end_head = langevin_step_(head, head_g, offset=offset,
                                          **{**args, "first_row": args["first_row"]})
                end_tail = langevin_step_(tail, tail_g, offset=offset,
                                          **{**args, "first_row": args["first_row"] + k})
                assert end_head == end_tail
                offset = end_head
            for i, w in enumerate(whole):
                helpers.assert_same_bits(torch.cat([head[i], tail[i]]), w, f"tensors[{i}]")


def test_step_rows_split_trailing_dims_into_entries(kernel):
    # [B, 3, 4] as one entry, or as [B, 5] + [B, 7] (its row split in two), or one [B, 12]:
    # the same result, bit for bit, and the same next offset.
    kernel.require("langevin_step_")
    (t,), (g,) = make([(4, 3, 4)], seed=2)
    t, g = on(kernel.device, [t])[0], on(kernel.device, [g])[0]
    args = dict(seed=11, offset=6, first_row=3, backend=kernel.backend, **STEP)
    one = t.clone()
    end_one = langevin_step_(one, g, **args)
    flat = t.reshape(4, 12).clone()
    parts = [flat[:, :5].clone(), flat[:, 5:].clone()]
    gflat = g.reshape(4, 12)
    end_parts = langevin_step_(parts, [gflat[:, :5].clone(), gflat[:, 5:].clone()], **args)
    assert end_one == end_parts == 6 + 12
    helpers.assert_same_bits(torch.cat(parts, dim=1), one.reshape(4, 12))


def test_step_rows_noise_addressing(kernel):
    # With g = 0, lambda = 0, sigma = 1 a step adds its noise: row b of tensor g gets normals
    # offset + cum_g + j of row stream first_row + b, and the next step the following ones.
    kernel.require("langevin_step_")
    device = kernel.device
    ts = [torch.zeros(3, 2, 5, dtype=torch.float64, device=device),
          torch.zeros(3, 4, dtype=torch.float64, device=device)]
    zeros = [torch.zeros_like(t) for t in ts]
    args = dict(step_size=1.0, seed=42, prior_weight=0.0, first_row=6, backend=kernel.backend)
    assert langevin_step_(ts, zeros, offset=10, **args) == 24
    first = torch.cat([t.reshape(3, -1) for t in ts], dim=1)
    assert langevin_step_(ts, zeros, offset=24, **args) == 38
    second = torch.cat([t.reshape(3, -1) for t in ts], dim=1) - first
    stream = philox_normal_rows_reference(3, 28, seed=42, offset=10, first_row=6).double()
    helpers.assert_close(first, stream[:, :14], {torch.float64: (1e-5, 0.0)})
    helpers.assert_close(second, stream[:, 14:], {torch.float64: (1e-5, 0.0)})


def test_step_flat_mode_is_not_row_mode(kernel):
    # first_row=None keeps the flat stream (what every existing seed produced); row mode
    # draws other noise from the same seed and offset.
    kernel.require("langevin_step_")
    ts, gs = make([(2, 9)], seed=1)
    args = dict(seed=4, offset=0, backend=kernel.backend, **STEP)
    flat, rows = on(kernel.device, ts), on(kernel.device, ts)
    ref, _, _ = reference_rows(ts, gs, seed=4, offset=0, **STEP)
    assert langevin_step_(flat, on(kernel.device, gs), **args) == 18
    assert langevin_step_(rows, on(kernel.device, gs), first_row=0, **args) == 9
    helpers.assert_close(flat[0], ref[0], TOL)
    assert not torch.equal(flat[0].cpu(), rows[0].cpu())


def test_step_rows_empty(kernel):
    # No samples (B = 0) or empty rows: nothing moves, half_sq_norm is zeroed, and the offset
    # advances by D, the normals a row would take.
    kernel.require("langevin_step_")
    d = kernel.device
    ts = [torch.zeros(0, 3, device=d), torch.zeros(0, device=d)]
    hsn = torch.full((0,), 7.0, device=d)
    assert langevin_step_(ts, [t.clone() for t in ts], step_size=0.1, seed=1, offset=4,
                          first_row=0, half_sq_norm=hsn, backend=kernel.backend) == 4 + 3 + 1
    ts = [torch.ones(2, 0, device=d)]
    hsn = torch.full((2,), 7.0, device=d)
    assert langevin_step_(ts, [t.clone() for t in ts], step_size=0.1, seed=1, offset=4,
                          first_row=0, half_sq_norm=hsn, backend=kernel.backend) == 4
    assert hsn.tolist() == [0.0, 0.0]


def test_stepper_rows_match_the_op(kernel):
    kernel.require("langevin_step_")
    ts, gs = make([(3, 5), (3, 2, 2)], seed=6)
    a, b = on(kernel.device, ts), on(kernel.device, ts)
    grads = on(kernel.device, gs)
    stepper = LangevinStepper(a, backend=kernel.backend, **STEP)
    args = dict(seed=3, offset=1, first_row=12)
    assert stepper(grads, **args) == langevin_step_(b, grads, backend=kernel.backend,
                                                    **STEP, **args) == 1 + 9
    for x, y in zip(a, b):
        helpers.assert_same_bits(x, y)
    with pytest.raises(ValueError, match="first_row"):
        stepper(grads, seed=3, offset=1, first_row=-2)


@pytest.mark.parametrize("case, error, match", [
    ("negative", ValueError, "first_row must be an int in"),
    ("too large", ValueError, "first_row must be an int in"),
    ("float", TypeError, "first_row"),
    ("dim 0 differs", ValueError, r"same dim 0 = B \(tensors\[0\] has 3, tensors\[1\] has 2\)"),
    ("0-d", ValueError, r"dim >= 1.*tensors\[1\] is 0-d"),
    ("no tensors", ValueError, "needs at least one tensor"),
])
def test_step_rows_bad_arguments(case, error, match):
    ts = [torch.zeros(3, 4), torch.zeros(3)]
    first_row = 0
    if case == "negative":
        first_row = -1
    elif case == "too large":
        first_row = MAX_ROW - 1  # rows MAX_ROW - 1 .. MAX_ROW + 1: past the last row stream
    elif case == "float":
        first_row = 2.0
    elif case == "dim 0 differs":
        ts[1] = torch.zeros(2)
    elif case == "0-d":
        ts[1] = torch.zeros(())
    elif case == "no tensors":
        ts = []
    with pytest.raises(error, match=match):
        langevin_step_(ts, [t.clone() for t in ts], step_size=0.1, seed=1, offset=0,
                       first_row=first_row)


def test_step_rows_raw_ops_refuse_bad_rows(kernel):
    # Direct calls of the raw op (bypassing the wrapper) still refuse what would index out of
    # bounds: mismatched dim 0, a 0-d tensor, a negative first row.
    kernel.require("langevin_step_")
    d = kernel.device
    op = kernel.ops.langevin_step_
    for ts, first_row in [([torch.zeros(3, 4, device=d), torch.zeros(2, device=d)], 0),
                          ([torch.zeros((), device=d)], 0),
                          ([torch.zeros(3, device=d)], -1)]:
        with pytest.raises(RuntimeError, match="first_row"):
            op(ts, [t.clone() for t in ts], 0.1, 1, 0, 1.0, 0.3, None, None, None, None,
               first_row)


def test_step_rows_opcheck(kernel):
    kernel.require("langevin_step_")
    d = kernel.device
    op = kernel.ops.langevin_step_.default
    ts, gs = on(d, make([(3, 5), (3, 4)])[0]), on(d, make([(3, 5), (3, 4)], seed=9)[0])
    torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 0.5, 0.3, 0.5, -1.0, 1.0,
                               torch.empty(3, device=d), 7),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


# ------------------------------------------------------------------------------ graphed op

@pytest.mark.parametrize("target", SCALE_TARGETS)
def test_graphed_rows_match_the_step(kernel, target):
    # rng_state = (seed, offset, first_row) selects row mode: the graphed step equals
    # langevin_step_(first_row=...) of the same backend bit for bit (offset_add included),
    # and a batch split in two with rng_state[2] = f and f + k equals the whole batch.
    kernel.require("langevin_step_graphed_")
    backend = kernel.backend if target == "kernel" else "eager"
    device = kernel.device if target == "kernel" else "cpu"
    shapes = [(4, 3, 5), (4, 1031)]
    ts, gs = make(shapes, seed=12)
    grads = on(device, gs)
    want = on(device, ts)
    hsn_want = hsn_buffer(ts, device)
    assert langevin_step_(want, grads, seed=5, offset=9 + 4, first_row=30, backend=backend,
                          half_sq_norm=hsn_want, **STEP) == 13 + per_row(shapes)
    for k in (4, 1, 3):
        with helpers.case(f"first {k} rows"):
            parts, hsn_parts = [], []
            for lo, hi in ((0, k), (k, 4)):
                part = [t[lo:hi].clone() for t in on(device, ts)]
                hsn = hsn_buffer(part, device)
                rng_state = torch.tensor([5, 9, 30 + lo], dtype=torch.int64, device=device)
                langevin_step_graphed_(part, [g[lo:hi].clone() for g in grads],
                                       rng_state=rng_state, offset_add=4, half_sq_norm=hsn,
                                       backend=backend, **STEP)
                assert rng_state.tolist() == [5, 9, 30 + lo]  # not advanced
                parts.append(part)
                hsn_parts.append(hsn)
            for i, w in enumerate(want):
                helpers.assert_same_bits(torch.cat([p[i] for p in parts]), w, f"tensors[{i}]")
            helpers.assert_close(torch.cat(hsn_parts), hsn_want, OWN_TOL, "half_sq_norm")


def test_graphed_rows_refuse_tensors_without_rows(kernel):
    kernel.require("langevin_step_graphed_")
    d = kernel.device
    ts = [torch.zeros(3, 2, device=d), torch.zeros(2, device=d)]
    with pytest.raises(ValueError, match="same dim 0"):
        langevin_step_graphed_(ts, [t.clone() for t in ts], step_size=0.1,
                               rng_state=torch.zeros(3, dtype=torch.int64, device=d),
                               backend=kernel.backend)


def _row_chain(xs, gs, backend):
    """Two row-mode steps (the offset advancing by D) and a read of the updated states."""
    offset = 0
    for _ in range(2):
        offset = langevin_step_(xs, gs, step_size=0.05, seed=9, offset=offset, first_row=4,
                                grad_clip=1.0, backend=backend)
    return xs[0] * 2


@pytest.mark.parametrize("target", SCALE_TARGETS)
def test_step_rows_compile_to_one_graph(kernel, target):
    # torch.compile(fullgraph=True) traces row mode through the fake kernel without a break,
    # with the eager values.
    kernel.require("langevin_step_")
    backend = kernel.backend if target == "kernel" else "eager"
    device = kernel.device if target == "kernel" else "cpu"
    ts, gs = make([(3, 5), (3, 2, 2)], seed=5)
    eager_ts = on(device, ts)
    expected = _row_chain(eager_ts, on(device, gs), backend)  # fills the dispatch cache first
    got_ts = on(device, ts)
    torch._dynamo.reset()
    out = torch.compile(_row_chain, backend="aot_eager", fullgraph=True)(
        got_ts, on(device, gs), backend)
    helpers.assert_close(out, expected, TOL)
    for got, want in zip(got_ts, eager_ts):
        helpers.assert_close(got, want, TOL)
