"""langevin_step_, langevin_step_graphed_ and LangevinStepper (vaebm_fast.ops.langevin) on every
kernel target, against langevin_step_reference.

Each property is written once and runs on each (backend, device) target of the ``kernel``
fixture (tests/ops/conftest.py), for both step ops where it applies (the ``step`` fixture);
langevin_step_graphed_ has no native kernel, so its native targets skip with the op's reason.
The reference runs on CPU copies of the inputs, so every target is compared with the same
numbers. Sizes are small but odd, because Triton's CPU interpreter runs the Triton targets
without a GPU: tensors ending mid-block, one spanning several 1024-element programs, empty
ones, rows shorter and longer than a program.
"""
import math
from dataclasses import dataclass

import pytest
import torch

from vaebm_fast import _native
from vaebm_fast.ops import (BackendUnavailableError, LangevinStepper, default_backend,
                            langevin_step_, langevin_step_graphed_, langevin_step_reference,
                            philox_normal_reference)
import vaebm_fast.ops.langevin as langevin_module

from . import helpers
from .conftest import Kernel
from .helpers import DTYPES, LAYOUTS

# States vs the reference: the kernels compute as the reference does (float32 for float16,
# bfloat16 and float32 states, float64 for float64 ones, one rounding on store) and differ only
# in the normals (a few float32 ulps, see test_rng.NORMAL_TOL, times sigma ~ 0.14) and, for
# float16/bfloat16, in a rounding that such a difference can flip by one ulp.
TOL = {torch.float32: (2e-6, 1e-6), torch.float64: (2e-6, 0.0),
       torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}
# half_sq_norm vs the reference's, keyed by the states' dtype: sums of ~1.4k squares of states
# that differ as above (sums of ~200 for the shapes below).
HSN_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-6, 1e-6),
           torch.float16: (1e-2, 1e-3), torch.bfloat16: (0.2, 1e-2)}
# half_sq_norm vs the squares of the states the op stored, keyed by its own (arithmetic) dtype:
# only the order and precision of the summation differ.
OWN_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-9, 1e-9)}
# Noise read back from a step with sigma = 1 vs the stream's normals (test_rng.NORMAL_TOL).
NOISE_TOL = {torch.float64: (1e-5, 0.0)}

# Shapes sharing dim 0 (B = 2), so half_sq_norm applies: odd sizes, an empty tensor, rows
# shorter (342) and longer (1031, over three 1024-element Triton programs) than a program, a
# 1-d tensor.
SHAPES = [(2, 7), (2,), (2, 0), (2, 2, 171), (2, 1), (2, 1031)]

# Together they take every option on and off: sigma default (sqrt(eta)) / given / 0, lambda
# 1 / 0 / 0.5 / 2, gradient clip, both one-sided clamps and a two-sided one. The last has every
# option on, with distinct values: the graphed op shares the update's arithmetic with
# langevin_step_ and runs with that one only, which still checks how its launcher passes each
# option.
OPTIONS = [
    dict(),
    dict(prior_weight=0.0, grad_clip=0.3, clamp=(None, 0.6)),
    dict(prior_weight=0.5, noise_scale=0.0, clamp=(-0.1, None)),
    dict(prior_weight=2.0, noise_scale=0.05, grad_clip=1.0, clamp=(-0.4, 0.2)),
]
STEP_OPTIONS = ([("langevin_step_", o) for o in OPTIONS]
                + [("langevin_step_graphed_", OPTIONS[-1])])
STEP_OPTIONS_IDS = [f"{'graphed' if 'graphed' in op else 'step'}-{','.join(o) or 'defaults'}"
                    for op, o in STEP_OPTIONS]


def make(shapes, dtype=torch.float32, seed=0, grad_scale=3.0):
    """CPU states ~ N(0, 0.25) and gradients ~ N(0, grad_scale^2) (beyond the clip values)."""
    ts = [helpers.randn(s, dtype, seed=seed + 2 * i, scale=0.5) for i, s in enumerate(shapes)]
    gs = [helpers.randn(s, dtype, seed=seed + 2 * i + 1, scale=grad_scale)
          for i, s in enumerate(shapes)]
    return ts, gs


def on(device, tensors):
    """Copies on ``device`` (copies on the CPU too: the inputs stay as they were)."""
    return [t.to(device, copy=True) for t in tensors]


def hsn_buffer(tensors, device):
    """A half_sq_norm output for ``tensors`` (their B and dtype) on ``device``, filled with
    garbage: the ops overwrite it, they do not add to it."""
    compute = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return torch.full((tensors[0].shape[0],), 7.0, dtype=compute, device=device)


def own_half_sq_norm(tensors, hsn):
    """0.5 * sum_i ||t_i[b]||^2 of the given (stored) states, in float64."""
    return sum(0.5 * t.detach().cpu().double().reshape(hsn.shape[0], -1).square().sum(1)
               for t in tensors)


def check_half_sq_norm(hsn, ref_hsn, tensors, dtype):
    """hsn against the reference's and against the states the op stored."""
    helpers.assert_close(hsn, ref_hsn, {hsn.dtype: HSN_TOL[dtype]}, "half_sq_norm vs reference")
    helpers.assert_close(hsn, own_half_sq_norm(tensors, hsn), OWN_TOL,
                         "half_sq_norm vs the stored states")


@dataclass(frozen=True)
class Step:
    """One of the two public step ops on a target, called alike:
    ``step(tensors, grads, seed=, offset=, **options)`` returns the next free offset. (The
    graphed op itself returns nothing: for it, the wrapper puts the stream position in
    ``rng_state``, checks that the op left it alone and returns ``offset + numel``.)"""

    op: str
    kernel: Kernel  # the target

    @property
    def graphed(self) -> bool:
        return self.op == "langevin_step_graphed_"

    def __call__(self, tensors, grads, *, seed, offset, backend=None, **options) -> int:
        backend = self.kernel.backend if backend is None else backend
        if not self.graphed:
            return langevin_step_(tensors, grads, seed=seed, offset=offset, backend=backend,
                                  **options)
        # The stream position from a device tensor, split between rng_state[1] and offset_add
        # so that the kernel must add both.
        add = offset // 3
        rng_state = torch.tensor([seed, offset - add], device=self.kernel.device)
        langevin_step_graphed_(tensors, grads, rng_state=rng_state, offset_add=add,
                               backend=backend, **options)
        assert rng_state.tolist() == [seed, offset - add]  # not advanced: the caller does that
        listed = [tensors] if isinstance(tensors, torch.Tensor) else tensors
        return offset + sum(t.numel() for t in listed)

    def raw(self, tensors, grads, half_sq_norm=None, rng_state=None):
        """The target's raw op (no public validation) with fixed options."""
        op = getattr(self.kernel.ops, self.op)
        if not self.graphed:
            return op(tensors, grads, 0.1, 3, 5, 1.0, 0.3, None, None, None, half_sq_norm)
        if rng_state is None:
            rng_state = torch.tensor([3, 5], device=self.kernel.device)
        return op(tensors, grads, 0.1, rng_state, 0, 1.0, 0.3, None, None, None, half_sq_norm)

    def __str__(self) -> str:
        return f"{self.op} on {self.kernel}"


@pytest.fixture(params=["langevin_step_", "langevin_step_graphed_"], ids=["step", "graphed"])
def step(request, kernel) -> Step:
    kernel.require(request.param)
    return Step(request.param, kernel)


def reference(tensors, grads, **args):
    """The reference step on CPU copies; returns (states, half_sq_norm or None, next offset)."""
    ts = [t.detach().cpu().clone() for t in tensors]
    gs = [g.detach().cpu() for g in grads]
    hsn = args.pop("half_sq_norm", None)
    hsn = None if hsn is None else torch.empty(hsn.shape, dtype=hsn.dtype)
    end = langevin_step_reference(ts, gs, half_sq_norm=hsn, **args)
    return ts, hsn, end


# ------------------------------------------------------------------------------ the reference

def test_reference_formula():
    # t <- clamp(t - eta/2 (clip(g) + lambda t) + sigma xi): spelled out in float64.
    t = torch.linspace(-1, 1, 11, dtype=torch.float64)
    g = torch.linspace(-4, 4, 11, dtype=torch.float64)
    out = t.clone()
    end = langevin_step_reference([out], [g], step_size=0.1, seed=5, offset=9, prior_weight=0.5,
                                  noise_scale=0.2, grad_clip=2.0, clamp=(-0.9, 0.8))
    xi = philox_normal_reference(11, seed=5, offset=9).double()
    expected = (t - 0.05 * (g.clamp(-2, 2) + 0.5 * t) + 0.2 * xi).clamp(-0.9, 0.8)
    assert end == 20
    torch.testing.assert_close(out, expected, atol=1e-15, rtol=0)
    # Default sigma is sqrt(step_size); prior_weight defaults to 1.
    out = t.clone()
    langevin_step_reference([out], [g], step_size=0.1, seed=5, offset=9)
    torch.testing.assert_close(out, t - 0.05 * (g + t) + math.sqrt(0.1) * xi, atol=1e-15, rtol=0)


def test_reference_half_sq_norm_formula():
    # 0.5 * sum over tensors of ||t[b]||^2 of the updated states, spelled out.
    ts = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 2, dtype=torch.float64)]
    gs = [torch.randn_like(t) for t in ts]
    hsn = torch.full((4,), 3.0, dtype=torch.float64)
    langevin_step_reference(ts, gs, step_size=0.1, seed=3, offset=1, half_sq_norm=hsn)
    expected = 0.5 * (ts[0].square().sum(1) + ts[1].square().sum((1, 2)))
    torch.testing.assert_close(hsn, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_takes_any_layout(layout):
    # The reference steps non-contiguous and misaligned tensors as their contiguous copies,
    # bit for bit (the targets are compared with it on contiguous copies).
    ts, gs = make([(3, 5, 7), (3, 343)], seed=4)
    args = dict(step_size=0.1, seed=1, offset=3, grad_clip=0.5)
    want = [t.clone() for t in ts]
    langevin_step_reference(want, gs, **args)
    got = [LAYOUTS[layout](t) for t in ts]
    langevin_step_reference(got, [LAYOUTS[layout](g) for g in gs], **args)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_reference_bookkeeping():
    # The reference's own bookkeeping, as the targets' below: a list steps as its
    # concatenation, nothing to step returns the offset, and a leaf's version is bumped.
    ts, gs = make([(3, 4), (5,), (2, 2, 2)], seed=3)
    flat_t = torch.cat([t.reshape(-1) for t in ts])
    flat_g = torch.cat([g.reshape(-1) for g in gs])
    args = dict(step_size=0.05, seed=11, offset=6, prior_weight=0.7, grad_clip=1.0)
    assert langevin_step_reference(ts, gs, **args) == langevin_step_reference(flat_t, flat_g,
                                                                               **args) == 31
    assert torch.equal(torch.cat([t.reshape(-1) for t in ts]), flat_t)
    assert langevin_step_reference([], [], step_size=0.1, seed=0, offset=17) == 17
    empty = torch.empty(0, 3)
    assert langevin_step_reference([empty], [empty], step_size=0.1, seed=0, offset=4) == 4
    x = torch.randn(4, 3, requires_grad=True)
    version = x._version
    langevin_step_reference([x], [torch.ones(4, 3)], step_size=0.1, seed=0, offset=0)
    assert x._version > version


# ------------------------------------------------------------------------------ values

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step, opts", STEP_OPTIONS, indirect=["step"], ids=STEP_OPTIONS_IDS)
def test_matches_reference(step, dtype, opts):
    ts, gs = make(SHAPES, dtype)
    args = dict(step_size=0.02, seed=2**40 + 3, offset=2**33 + 1, **opts)
    ref_ts, ref_hsn, ref_end = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"), **args)
    got_ts, hsn = on(step.kernel.device, ts), hsn_buffer(ts, step.kernel.device)
    end = step(got_ts, on(step.kernel.device, gs), half_sq_norm=hsn, **args)
    assert end == ref_end == args["offset"] + sum(math.prod(s) for s in SHAPES)
    for i, (got, want, before) in enumerate(zip(got_ts, ref_ts, ts)):
        assert got.dtype == dtype and got.shape == before.shape
        helpers.assert_close(got, want, TOL, f"tensors[{i}]")
    assert not torch.equal(got_ts[-1].cpu(), ts[-1])  # the states did move
    check_half_sq_norm(hsn, ref_hsn, got_ts, dtype)


def test_offsets_near_carries(step):
    # The list's normals cross the carry of the Philox counter's low word into its high word
    # (inside the second tensor for the first two offsets). Without half_sq_norm, the tensors
    # need not share dim 0.
    for offset in [4 * 2**32 - 9, 4 * 2**34 - 6, 2**62 + 1]:
        with helpers.case(f"offset {offset}"):
            ts, gs = make([(5,), (2, 3, 3), (1019,)], seed=offset % 7)
            args = dict(step_size=0.1, seed=5, offset=offset, grad_clip=2.0)
            ref_ts, _, ref_end = reference(ts, gs, **args)
            got_ts = on(step.kernel.device, ts)
            assert step(got_ts, on(step.kernel.device, gs), **args) == ref_end
            for got, want in zip(got_ts, ref_ts):
                helpers.assert_close(got, want, TOL)


def _untouched(view):
    """The bits of the elements of the view's base buffer outside the view (a copy; bits, since
    that memory may hold any pattern, NaN included)."""
    base = view._base if view._base is not None else view
    inside = torch.zeros(base.numel(), dtype=torch.bool, device=base.device)
    inside.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(True)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[base.element_size()]
    return base.reshape(-1)[~inside].view(bits).clone()


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "contiguous"])
def test_layouts(step, layout):
    # Non-contiguous states and gradients (every other column of a wider buffer) and
    # misaligned ones (storage offset 1: the kernels' scalar paths) give the reference's values
    # on the logical elements, in every dtype, and leave the rest of their buffers alone. The
    # graphed op takes contiguous tensors only (its pointer table is captured in a graph) and
    # says so. (Contiguous tensors: every other test.)
    args = dict(step_size=0.1, seed=1, offset=3, prior_weight=0.5, grad_clip=0.5)
    for dtype in DTYPES:
        with helpers.case(dtype):
            ts, gs = make([(3, 5, 67)], dtype, seed=4)
            ref_ts, ref_hsn, _ = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"), **args)
            got_ts = [LAYOUTS[layout](t) for t in on(step.kernel.device, ts)]
            got_gs = [LAYOUTS[layout](g) for g in on(step.kernel.device, gs)]
            hsn = hsn_buffer(ts, step.kernel.device)
            if step.graphed and layout == "strided":
                with pytest.raises(ValueError, match="contiguous"):
                    step(got_ts, got_gs, half_sq_norm=hsn, **args)
                continue
            outside = [_untouched(t) for t in got_ts]
            step(got_ts, got_gs, half_sq_norm=hsn, **args)
            for i, (got, want) in enumerate(zip(got_ts, ref_ts)):
                helpers.assert_close(got, want, TOL, f"tensors[{i}]")
                assert torch.equal(_untouched(got), outside[i])
            check_half_sq_norm(hsn, ref_hsn, got_ts, dtype)


def test_many_tensors(step, monkeypatch):
    # 33 tensors: more than a native CUDA launch takes (32), six levels of the Triton kernel's
    # binary search over its table (the last tensor, number 32, which only a six-level search
    # reaches, is not empty); every other one empty (an empty tensor ties with its successor
    # for a program in that search), the others shorter and longer than a program; ~12k
    # elements, so the native CPU kernel's 8192-element tasks end inside tensors and split rows
    # of half_sq_norm between threads. The Triton kernel takes the whole list in one launch.
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(100, 600, (33,), generator=gen).tolist()
    sizes[1::2] = [0] * 16
    sizes[6] = 700
    shapes = [(2, n) for n in sizes]
    ts, gs = make(shapes, seed=2)
    args = dict(step_size=0.05, seed=77, offset=3, prior_weight=0.3, clamp=(-1.0, 1.0))
    ref_ts, ref_hsn, ref_end = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"), **args)
    launches = []
    if step.kernel.backend == "triton":
        from vaebm_fast.triton_kernels import langevin as tl_langevin
        name = "_langevin_graphed_kernel" if step.graphed else "_langevin_kernel"
        monkeypatch.setattr(tl_langevin, name, _Counting(getattr(tl_langevin, name), launches))
    got_ts, hsn = on(step.kernel.device, ts), hsn_buffer(ts, step.kernel.device)
    assert step(got_ts, on(step.kernel.device, gs), half_sq_norm=hsn, **args) == ref_end
    if step.kernel.backend == "triton":
        assert len(launches) == 1
    for i, (got, want) in enumerate(zip(got_ts, ref_ts)):
        helpers.assert_close(got, want, TOL, f"tensors[{i}]")
    check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)


class _Counting:
    """A Triton kernel stand-in that records launches and forwards them."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.kernel[grid]


def test_half_sq_norm_rows(step):
    # One long row (B = 1: a row spanning many Triton programs, and longer than the native CPU
    # kernel's 8192-element grain, so its threads add to the same row) and rows of one
    # element (B = 5: each element its own row).
    for shapes in [[(1, 8300), (1, 3, 7)], [(5,), (5, 1), (5, 0)]]:
        with helpers.case(shapes):
            ts, gs = make(shapes, seed=6)
            ref_ts, ref_hsn, _ = reference(ts, gs, step_size=0.1, seed=2, offset=1,
                                           half_sq_norm=hsn_buffer(ts, "cpu"))
            got_ts, hsn = on(step.kernel.device, ts), hsn_buffer(ts, step.kernel.device)
            step(got_ts, on(step.kernel.device, gs), step_size=0.1, seed=2, offset=1,
                 half_sq_norm=hsn)
            for got, want in zip(got_ts, ref_ts):
                helpers.assert_close(got, want, TOL)
            check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)


def test_empty(step):
    device = step.kernel.device
    # No tensors: nothing to do; only the empty list's offset comes back.
    assert step([], [], step_size=0.1, seed=0, offset=17) == 17
    # Only empty tensors: no normal is used, and half_sq_norm is a sum over nothing.
    ts = [torch.empty(4, 0, device=device), torch.empty(4, 0, 3, device=device)]
    hsn = hsn_buffer(ts, device)
    assert step(ts, [t.clone() for t in ts], step_size=0.1, seed=0, offset=4,
                half_sq_norm=hsn) == 4
    assert torch.equal(hsn.cpu(), torch.zeros(4))
    # The raw kernel too (the public op does not call it without elements).
    hsn.fill_(7.0)
    step.raw(ts, [t.clone() for t in ts], half_sq_norm=hsn)
    assert torch.equal(hsn.cpu(), torch.zeros(4))


def test_nan_passes_through(step):
    # NaN in a gradient and in a state stays NaN through the clip and the clamp (as
    # torch.clamp), in its element only, and makes its row's half_sq_norm NaN; in every dtype.
    args = dict(step_size=0.1, seed=0, offset=0, grad_clip=1.0, clamp=(-1.0, 1.0))
    nan = torch.zeros(3, 9, dtype=torch.bool)
    nan[0, 4] = nan[2, 6] = True
    for dtype in DTYPES:
        with helpers.case(dtype):
            ts, gs = make([(3, 9)], dtype, seed=7)
            gs[0][0, 4] = float("nan")
            ts[0][2, 6] = float("nan")
            ref_ts, ref_hsn, _ = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"), **args)
            got_ts, hsn = on(step.kernel.device, ts), hsn_buffer(ts, step.kernel.device)
            step(got_ts, on(step.kernel.device, gs), half_sq_norm=hsn, **args)
            got = got_ts[0].cpu()
            assert torch.equal(got.isnan(), nan)
            helpers.assert_close(got, ref_ts[0], TOL)  # NaNs in the same places
            assert torch.equal(hsn.cpu().isnan(), torch.tensor([True, False, True]))
            helpers.assert_close(hsn, ref_hsn, {hsn.dtype: HSN_TOL[dtype]})


def test_noise_addressing(step):
    # With g = 0, lambda = 0 and sigma = 1 a step adds exactly its noise: element k of the
    # list's concatenation gets normal offset + k (tensors in list order, each row-major), and
    # the next step, at the returned offset, the following ones.
    device = step.kernel.device
    ts = [torch.zeros(3, 5, dtype=torch.float64, device=device),
          torch.zeros(4, dtype=torch.float64, device=device)]
    zeros = [torch.zeros_like(t) for t in ts]
    args = dict(step_size=1.0, seed=42, prior_weight=0.0)
    assert step(ts, zeros, offset=10, **args) == 29
    first = torch.cat([t.reshape(-1) for t in ts])
    assert step(ts, zeros, offset=29, **args) == 48
    second = torch.cat([t.reshape(-1) for t in ts]) - first
    stream = philox_normal_reference(38, seed=42, offset=10).double()
    helpers.assert_close(first, stream[:19], NOISE_TOL)
    helpers.assert_close(second, stream[19:], NOISE_TOL)


def test_split_list_equals_concatenation(step):
    # Splitting a tensor into several list entries changes nothing, bit for bit.
    ts, gs = make([(3, 4), (5,), (2, 2, 2)], seed=3)
    ts, gs = on(step.kernel.device, ts), on(step.kernel.device, gs)
    flat_t = torch.cat([t.reshape(-1) for t in ts])
    flat_g = torch.cat([g.reshape(-1) for g in gs])
    args = dict(step_size=0.05, seed=11, offset=6, prior_weight=0.7, grad_clip=1.0)
    end_list = step(ts, gs, **args)
    end_flat = step(flat_t, flat_g, **args)  # one tensor, not a list
    assert end_list == end_flat == 6 + 25
    assert torch.equal(torch.cat([t.reshape(-1) for t in ts]), flat_t)


def test_leaf_tensors_requiring_grad(step):
    # The update runs under no_grad, in place on a leaf that requires grad, and bumps its
    # version, so autograd refuses a graph that saved the old value.
    x = torch.randn(4, 3, device=step.kernel.device, requires_grad=True)
    y = (x ** 2).sum()
    y.backward(retain_graph=True)
    version = x._version
    step([x], [x.grad], step_size=0.1, seed=0, offset=0)
    assert x._version > version and x.requires_grad
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_stepper_matches_the_op(kernel):
    # A chain's stepper (validated and dispatched once) gives the op's steps and offsets.
    kernel.require("langevin_step_")
    ts, gs = make([(3, 7), (3, 0), (3, 2, 41)], seed=4)
    ref_ts, ref_gs = [t.clone() for t in ts], gs
    got_ts, got_gs = on(kernel.device, ts), on(kernel.device, gs)
    args = dict(step_size=0.05, prior_weight=0.5, grad_clip=1.0, clamp=(-2.0, None))
    stepper = LangevinStepper(got_ts, backend=kernel.backend, **args)
    assert stepper.backend == kernel.backend
    hsn, ref_hsn = hsn_buffer(ts, kernel.device), hsn_buffer(ts, "cpu")
    offset = ref_offset = 7
    for _ in range(3):
        offset = stepper(got_gs, seed=11, offset=offset, half_sq_norm=hsn)
        ref_offset = langevin_step_reference(ref_ts, ref_gs, seed=11, offset=ref_offset,
                                             half_sq_norm=ref_hsn, **args)
    assert offset == ref_offset
    for got, want in zip(got_ts, ref_ts):
        helpers.assert_close(got, want, TOL)
    check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)
    with pytest.raises(ValueError, match="half_sq_norm must have shape"):
        stepper(got_gs, seed=11, offset=offset, half_sq_norm=torch.empty(4, device=kernel.device))
    # Its construction validates as the op does.
    with pytest.raises(ValueError, match="step_size"):
        LangevinStepper(got_ts, step_size=0.0, backend=kernel.backend)
    with pytest.raises(ValueError, match="sharing memory"):
        LangevinStepper([got_ts[0][:1].expand(3, 7)], step_size=0.1, backend=kernel.backend)


# ------------------------------------------------------------------------------ refusals

def test_overlapping_states_are_refused(step):
    # A state whose elements share memory (an expand) would be written twice per element, and
    # one passed twice would be stepped twice.
    device = step.kernel.device
    t = torch.zeros(1, 3, device=device).expand(4, 3)
    g = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match="sharing memory"):
        step([t], [g], step_size=0.1, seed=0, offset=0)
    with pytest.raises(RuntimeError, match="sharing memory"):  # the raw kernel on its own
        step.raw([t], [g])
    u = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match="passed twice"):
        step([u, u], [g, g], step_size=0.1, seed=0, offset=0)


# (changed arguments, error, message): every argument a step takes, beyond the stream position.
BAD_ARGUMENTS = {
    "grads length": (dict(grads=lambda d: [torch.zeros(3, 2, device=d)]), ValueError,
                     "same length"),
    "grads shape": (dict(grads=lambda d: [torch.zeros(3, 2, device=d), torch.zeros(4, device=d)]),
                    ValueError, r"grads\[1\] must have the shape"),
    "grads dtype": (dict(grads=lambda d: [torch.zeros(3, 2, device=d),
                                          torch.zeros(3, dtype=torch.float64, device=d)]),
                    ValueError, "dtype"),
    "grads device": (dict(grads=lambda d: [torch.zeros(3, 2, device=d),
                                           torch.zeros(3, device="meta")]), ValueError, "device"),
    "int tensors": (dict(tensors=lambda d: [torch.zeros(3, 2, dtype=torch.int64, device=d)],
                         grads=lambda d: [torch.zeros(3, 2, dtype=torch.int64, device=d)]),
                    ValueError, "float"),
    "not a tensor": (dict(tensors=lambda d: [torch.zeros(3, 2, device=d), [1.0, 2.0, 3.0]]),
                     TypeError, r"tensors\[1\]"),
    "not a list": (dict(tensors=lambda d: "x"), TypeError, "list of tensors"),
    "step_size 0": (dict(step_size=0.0), ValueError, "step_size must be > 0"),
    "step_size < 0": (dict(step_size=-1e-3), ValueError, "step_size"),
    "step_size nan": (dict(step_size=float("nan")), ValueError, "finite"),
    "step_size inf": (dict(step_size=float("inf")), ValueError, "finite"),
    "step_size str": (dict(step_size="0.1"), TypeError, "step_size"),
    "noise_scale < 0": (dict(noise_scale=-1.0), ValueError, "noise_scale"),
    "prior_weight nan": (dict(prior_weight=float("nan")), ValueError, "prior_weight"),
    "grad_clip 0": (dict(grad_clip=0.0), ValueError, "grad_clip"),
    "grad_clip nan": (dict(grad_clip=float("nan")), ValueError, "grad_clip"),
    "clamp low > high": (dict(clamp=(1.0, 0.0)), ValueError, "low < high"),
    "clamp low = high": (dict(clamp=(0.5, 0.5)), ValueError, "low < high"),
    "clamp not a pair": (dict(clamp=(0.0,)), TypeError, "pair"),
    "clamp nan": (dict(clamp=(float("nan"), 1.0)), ValueError, "NaN"),
    "backend": (dict(backend="cuda"), ValueError, "backend must be one of"),
    # half_sq_norm: float32 [B] (float64 for float64 states), contiguous, on the states' device,
    # where every state has dim >= 1 and dim 0 == B.
    "hsn float64": (dict(half_sq_norm=lambda d: torch.zeros(3, dtype=torch.float64, device=d)),
                    ValueError, "float32"),
    "hsn float16": (dict(half_sq_norm=lambda d: torch.zeros(3, dtype=torch.float16, device=d)),
                    ValueError, "float32"),
    "hsn shape": (dict(half_sq_norm=lambda d: torch.zeros(4, device=d)), ValueError,
                  r"shape \[B\] = \[3\]"),
    "hsn 2-d": (dict(half_sq_norm=lambda d: torch.zeros(3, 1, device=d)), ValueError, "shape"),
    "hsn strided": (dict(half_sq_norm=lambda d: torch.zeros(6, device=d)[::2]), ValueError,
                    "contiguous"),
    "hsn device": (dict(half_sq_norm=lambda d: torch.zeros(3, device="meta")), ValueError,
                   "is on meta"),
    "hsn a list": (dict(half_sq_norm=lambda d: [0.0, 0.0, 0.0]), TypeError,
                   "half_sq_norm must be a torch.Tensor"),
    "hsn dim 0": (dict(tensors=lambda d: [torch.zeros(3, 2, device=d), torch.zeros(2, device=d)],
                       grads=lambda d: [torch.zeros(3, 2, device=d), torch.zeros(2, device=d)],
                       half_sq_norm=lambda d: torch.zeros(3, device=d)), ValueError,
                  "same dim 0"),
    "hsn 0-d state": (dict(tensors=lambda d: [torch.zeros(3, device=d), torch.zeros((), device=d)],
                           grads=lambda d: [torch.zeros(3, device=d), torch.zeros((), device=d)],
                           half_sq_norm=lambda d: torch.zeros(3, device=d)), ValueError,
                      "dim >= 1"),
    "hsn no states": (dict(tensors=lambda d: [], grads=lambda d: [],
                           half_sq_norm=lambda d: torch.zeros(3, device=d)), ValueError,
                      "at least one tensor"),
    "hsn of float64": (dict(tensors=lambda d: [torch.zeros(3, dtype=torch.float64, device=d)],
                            grads=lambda d: [torch.zeros(3, dtype=torch.float64, device=d)],
                            half_sq_norm=lambda d: torch.zeros(3, device=d)), ValueError,
                       "float64"),
}


def test_bad_arguments(step):
    d = step.kernel.device
    for name, (change, error, match) in BAD_ARGUMENTS.items():
        args = dict(tensors=[torch.zeros(3, 2, device=d), torch.zeros(3, device=d)],
                    grads=[torch.zeros(3, 2, device=d), torch.zeros(3, device=d)],
                    step_size=0.1, seed=1, offset=0)
        args.update({k: v(d) if callable(v) else v for k, v in change.items()})
        with helpers.case(name), pytest.raises(error, match=match):
            step(args.pop("tensors"), args.pop("grads"), **args)


def test_bad_stream_position(kernel):
    kernel.require("langevin_step_")
    d = kernel.device
    for change, error, match in [
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**63), ValueError, "seed"),
        (dict(seed=1.0), TypeError, "seed"),
        (dict(offset=-3), ValueError, "offset"),
        (dict(offset=2**63 - 5), ValueError, "offset"),  # the 6 normals would pass 2**63 - 1
    ]:
        args = dict(dict(step_size=0.1, seed=1, offset=0, backend=kernel.backend), **change)
        with helpers.case(change), pytest.raises(error, match=match):
            langevin_step_([torch.zeros(3, 2, device=d)], [torch.zeros(3, 2, device=d)], **args)


def test_graphed_bad_stream_position(kernel):
    kernel.require("langevin_step_graphed_")
    d = kernel.device
    for name, rng_state, offset_add, error, match in [
        ("int32", torch.zeros(2, dtype=torch.int32, device=d), 0, ValueError, "int64"),
        ("shape", torch.zeros(4, dtype=torch.int64, device=d), 0, ValueError, "int64"),
        ("device", torch.zeros(2, dtype=torch.int64, device="meta"), 0, ValueError,
         "is on meta"),
        ("a list", [0, 0], 0, TypeError, "rng_state must be a torch.Tensor"),
        ("offset_add < 0", torch.zeros(2, dtype=torch.int64, device=d), -1, ValueError,
         "offset"),
    ]:
        with helpers.case(name), pytest.raises(error, match=match):
            langevin_step_graphed_([torch.zeros(3, 2, device=d)], [torch.zeros(3, 2, device=d)],
                                   step_size=0.1, rng_state=rng_state, offset_add=offset_add,
                                   backend=kernel.backend)


def test_graphed_refuses_a_non_contiguous_gradient(kernel):
    kernel.require("langevin_step_graphed_")
    d = kernel.device
    with pytest.raises(ValueError, match="contiguous"):
        langevin_step_graphed_([torch.zeros(3, 4, device=d)], [torch.zeros(4, 3, device=d).t()],
                               step_size=0.1, rng_state=torch.zeros(2, dtype=torch.int64,
                                                                    device=d),
                               backend=kernel.backend)


# (raw-op arguments, message): what the kernels would read or write out of bounds, or with
# the wrong element size, if they took it.
RAW_REFUSALS = {
    "grads length": (lambda d: dict(tensors=[torch.zeros(3, 4, device=d)], grads=[]),
                     r"tensors.*grads"),
    "grads shape": (lambda d: dict(tensors=[torch.zeros(3, 4, device=d)],
                                   grads=[torch.zeros(3, 2, device=d)]), r"grads\[0\]"),
    "int tensors": (lambda d: dict(tensors=[torch.zeros(3, 4, dtype=torch.int64, device=d)],
                                   grads=[torch.zeros(3, 4, dtype=torch.int64, device=d)]),
                    "float"),
    "hsn dtype": (lambda d: dict(half_sq_norm=torch.zeros(3, dtype=torch.float64, device=d)),
                  "half_sq_norm must be a contiguous"),
    "hsn shape": (lambda d: dict(half_sq_norm=torch.zeros(2, device=d)),
                  "half_sq_norm must be a contiguous"),
    "hsn strided": (lambda d: dict(half_sq_norm=torch.zeros(6, device=d)[::2]),
                    "half_sq_norm must be a contiguous"),
    "hsn dim 0": (lambda d: dict(tensors=[torch.zeros(3, 4, device=d), torch.zeros(2, 4, device=d)],
                                 grads=[torch.zeros(3, 4, device=d), torch.zeros(2, 4, device=d)],
                                 half_sq_norm=torch.zeros(3, device=d)), "half_sq_norm needs"),
    "grads on the CPU": (lambda d: dict(grads=[torch.zeros(3, 4)]), "device|must be on"),
}


def test_raw_op_refuses_what_would_break_memory(step):
    d = step.kernel.device
    for name, (make_args, match) in RAW_REFUSALS.items():
        if name == "grads on the CPU" and not step.kernel.is_cuda:
            continue  # needs states on a second device type
        args = dict(tensors=[torch.zeros(3, 4, device=d)], grads=[torch.zeros(3, 4, device=d)])
        args.update(make_args(d))
        # The Triton launcher raises ValueError for mixed devices, RuntimeError otherwise.
        with helpers.case(name), pytest.raises((RuntimeError, ValueError), match=match):
            step.raw(**args)


def test_graphed_raw_op_refuses_what_would_break_memory(kernel):
    # Its stream position is read as two int64 from rng_state, and its table holds one
    # pointer per tensor and gradient, read flat.
    kernel.require("langevin_step_graphed_")
    d = kernel.device
    raw = Step("langevin_step_graphed_", kernel).raw
    t, g = torch.zeros(3, 4, device=d), torch.zeros(3, 4, device=d)
    for name, call, match in [
        ("rng_state of one element",
         lambda: raw([t], [g], rng_state=torch.zeros(1, dtype=torch.int64, device=d)),
         "rng_state"),
        ("int32 rng_state",
         lambda: raw([t], [g], rng_state=torch.zeros(2, dtype=torch.int32, device=d)),
         "rng_state"),
        ("transposed state", lambda: raw([torch.zeros(4, 3, device=d).t()], [g]),
         "contiguous"),
        ("transposed gradient", lambda: raw([t], [torch.zeros(4, 3, device=d).t()]),
         "contiguous"),
    ]:
        with helpers.case(name), pytest.raises(RuntimeError, match=match):
            call()


def test_default_backend_controls_auto(monkeypatch):
    calls = []
    real = langevin_module._update_reference  # the eager path's arithmetic

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(langevin_module, "_update_reference", spy)
    t = torch.zeros(5)
    with default_backend("eager"):
        langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=0)
    assert calls == [1]
    if _native.is_loaded():  # "auto" prefers native on the CPU
        langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=0)
        assert calls == [1]


def test_unavailable_backend_raises_with_reason(monkeypatch):
    t = torch.zeros(3, device="meta")
    with pytest.raises(BackendUnavailableError, match="native.*meta"):
        langevin_step_([t], [t], step_size=0.1, seed=0, offset=0, backend="native")
    with pytest.raises(BackendUnavailableError, match="native.*no native kernels"):
        langevin_step_graphed_([torch.zeros(3)], [torch.zeros(3)], step_size=0.1,
                               rng_state=torch.zeros(2, dtype=torch.int64), backend="native")
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    t = torch.zeros(3)
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        LangevinStepper([t], step_size=0.1, backend="triton")


# ------------------------------------------------------------------------------ torch integration

def test_opcheck(step):
    # Schema, fake kernel (with and without half_sq_norm), version bumps and autograd
    # registration of the target's raw op.
    op = getattr(step.kernel.ops, step.op).default
    d = step.kernel.device
    ts, gs = on(d, make([(3, 5), (3, 4)])[0]), on(d, make([(3, 5), (3, 4)], seed=9)[0])
    if not step.graphed:
        ts[1] = ts[1].t().contiguous().t()  # column-major: updated through a copy
        position = (3, 5)
    else:
        position = (torch.tensor([3, 5], device=d), 2)
    torch.library.opcheck(op, (ts, gs, 0.1, *position, 0.5, 0.3, 0.5, -1.0, 1.0,
                               torch.empty(3, device=d)))
    # float64, the optional arguments absent; the compiled-graph check (the slow one) ran above.
    ts64 = [t.double() for t in ts]
    torch.library.opcheck(op, (ts64, [g.double() for g in gs], 0.1, *position, 1.0, 0.3, None,
                               None, None),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def check_chain_compiles(graphed, backend, device):
    """A short chain through the public op compiles to one graph (fullgraph=True: no break)
    with the values of the same chain run eagerly. aot_eager traces the op through its fake
    kernel and functionalizes it (the schema writes the states), without generating code."""

    def chain(xs, gs, rng_state, half):
        offset = 0
        for k in range(2):  # the offsets advance: no noise is reused
            if graphed:
                langevin_step_graphed_(xs, gs, step_size=0.05, rng_state=rng_state,
                                       offset_add=k * 30, grad_clip=1.0, half_sq_norm=half,
                                       backend=backend)
            else:
                offset = langevin_step_(xs, gs, step_size=0.05, seed=9, offset=offset,
                                        grad_clip=1.0, half_sq_norm=half, backend=backend)
        return xs[0] * 2 + half[:, None]  # reads the updated states after the in-place op

    ts, gs = make([(3, 5), (3, 5)], seed=5)
    rng_state = torch.tensor([9, 0], device=device)
    eager_ts, eager_half = on(device, ts), torch.empty(3, device=device)
    # Eagerly first: that fills the op's dispatch cache, whose first fill (a dispatcher query)
    # Dynamo cannot trace.
    expected = chain(eager_ts, on(device, gs), rng_state, eager_half)
    got_ts, half = on(device, ts), torch.empty(3, device=device)
    torch._dynamo.reset()
    out = torch.compile(chain, backend="aot_eager", fullgraph=True)(got_ts, on(device, gs),
                                                                     rng_state, half)
    helpers.assert_close(out, expected, TOL)
    for got, want in zip(got_ts, eager_ts):
        helpers.assert_close(got, want, TOL)
    helpers.assert_close(half, eager_half, OWN_TOL)
    assert rng_state.tolist() == [9, 0]


def test_compiles_to_one_graph(step):
    check_chain_compiles(step.graphed, step.kernel.backend, step.kernel.device)


def test_reference_compiles_to_one_graph(one_thread):
    # The eager reference is what "auto" runs on a CPU without the native library. (One torch
    # thread: faster for these tiny tensors on a shared 2-core machine.)
    check_chain_compiles(False, "eager", "cpu")


def test_compiles_before_any_eager_call(native, monkeypatch):
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(_dispatch, "_cache", {})  # as in a fresh process

    def chain(xs, gs):
        offset = langevin_step_(xs, gs, step_size=0.05, seed=9, offset=0, backend="native")
        return langevin_step_(xs, gs, step_size=0.05, seed=9, offset=offset, backend="native")

    ts, gs = make([(3, 5)], seed=5)
    torch._dynamo.reset()
    assert torch.compile(chain, backend="aot_eager", fullgraph=True)(ts, gs) == 30


# ------------------------------------------------------------------------------ CUDA streams

@pytest.mark.graphs
@pytest.mark.cuda
def test_runs_on_the_current_stream(step):
    # The states are written on the side stream after a delay, so a kernel launched on any
    # other stream would step the old (NaN) states or be overwritten by the late copy.
    if not step.kernel.is_cuda:
        pytest.skip("streams need a CUDA target")
    ts, gs = make(SHAPES, seed=8)
    args = dict(step_size=0.02, seed=5, offset=2**33 + 1, grad_clip=1.0)
    ref_ts, ref_hsn, _ = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"), **args)
    starts, got_gs = on("cuda", ts), on("cuda", gs)
    got_ts = [torch.full_like(t, float("nan")) for t in starts]
    hsn = hsn_buffer(ts, "cuda")
    # Made here, not by Step: a copy from pageable host memory inside run() would wait for
    # the side stream (the delay and the copies) and hide a kernel on the wrong stream.
    rng_state = torch.tensor([args["seed"], args["offset"]], device="cuda")

    def run():
        torch.cuda._sleep(50_000_000)
        for t, s in zip(got_ts, starts):
            t.copy_(s)
        if step.graphed:
            langevin_step_graphed_(got_ts, got_gs, step_size=args["step_size"],
                                   rng_state=rng_state, grad_clip=args["grad_clip"],
                                   half_sq_norm=hsn, backend=step.kernel.backend)
        else:
            langevin_step_(got_ts, got_gs, half_sq_norm=hsn, backend=step.kernel.backend,
                           **args)

    helpers.on_side_stream(run)
    for got, want in zip(got_ts, ref_ts):
        helpers.assert_close(got, want, TOL)
    check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)


@pytest.mark.graphs
@pytest.mark.cuda
def test_cuda_graph_replays_the_step(kernel):
    # A captured langevin_step_ replays the step at the stream position it was captured with
    # (from the states as they are at replay).
    kernel.require("langevin_step_")
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA target")
    ts, gs = make(SHAPES, seed=9)
    args = dict(step_size=0.02, seed=5, offset=2**33 + 1, prior_weight=0.5, grad_clip=1.0,
                clamp=(-0.7, 0.8))
    ref_ts, ref_hsn, ref_end = reference(ts, gs, half_sq_norm=hsn_buffer(ts, "cpu"),
                                         **args)
    starts, got_gs = on("cuda", ts), on("cuda", gs)
    got_ts = [s.clone() for s in starts]
    hsn = hsn_buffer(ts, "cuda")

    def reset():
        for t, s in zip(got_ts, starts):
            t.copy_(s)
        hsn.fill_(7.0)

    end = helpers.captured(
        lambda: langevin_step_(got_ts, got_gs, half_sq_norm=hsn, backend=kernel.backend, **args),
        reset)
    assert end == ref_end
    for got, want in zip(got_ts, ref_ts):
        helpers.assert_close(got, want, TOL)
    check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)


@pytest.mark.graphs
@pytest.mark.cuda
def test_cuda_graph_reads_the_graphed_stream_position_at_replay(kernel):
    # What langevin_step_graphed_ is for: a graph captured with one rng_state, replayed after
    # the host moved it, steps with the noise at the new position (+ offset_add), not the
    # captured one.
    kernel.require("langevin_step_graphed_")
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA target")
    ts, gs = make(SHAPES, seed=10)
    seed, add = 2**40 + 5, 37
    starts, got_gs = on("cuda", ts), on("cuda", gs)
    got_ts = [s.clone() for s in starts]
    hsn = hsn_buffer(ts, "cuda")
    rng_state = torch.tensor([seed, 0], device="cuda")
    # helpers.captured resets before the warm-up, the capture and the replay: each reset moves
    # the stream position, so the replay's (the last) differs from the captured one.
    positions = iter([1000, 2000, 4 * 2**32 - 40])

    def reset():
        for t, s in zip(got_ts, starts):
            t.copy_(s)
        rng_state[1] = next(positions)

    helpers.captured(lambda: langevin_step_graphed_(
        got_ts, got_gs, step_size=0.02, rng_state=rng_state, offset_add=add, grad_clip=1.0,
        half_sq_norm=hsn, backend=kernel.backend), reset)
    assert rng_state.tolist() == [seed, 4 * 2**32 - 40]  # the op does not advance it
    ref_ts, ref_hsn, _ = reference(ts, gs, step_size=0.02, seed=seed, offset=4 * 2**32 - 40 + add,
                                   grad_clip=1.0, half_sq_norm=hsn_buffer(ts, "cpu"))
    for got, want in zip(got_ts, ref_ts):
        helpers.assert_close(got, want, TOL)
    check_half_sq_norm(hsn, ref_hsn, got_ts, torch.float32)
