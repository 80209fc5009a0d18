"""langevin_step_: native kernel vs the eager reference, noise bookkeeping, input errors."""
import math

import pytest
import torch

from vaebm_fast import _native
from vaebm_fast.ops import (BackendUnavailableError, default_backend, langevin_step_,
                            langevin_step_reference, philox_normal)
import vaebm_fast.ops.langevin as langevin_module


SHAPES = [(7,), (3, 5), (0,), (2, 3, 33), (1,), (1031,)]  # odd sizes, an empty tensor

OPTIONS = [
    dict(),
    dict(prior_weight=0.0, grad_clip=0.3),
    dict(prior_weight=0.5, clamp=(-0.4, 0.6)),
    dict(prior_weight=2.0, noise_scale=0.05, grad_clip=1.0, clamp=(None, 0.2)),
    dict(noise_scale=0.0, clamp=(-0.1, None)),
]

TOL = {torch.float32: dict(atol=2e-6, rtol=1e-6), torch.float64: dict(atol=2e-6, rtol=0),
       torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1e-2)}


def make(shapes, dtype, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    ts = [(torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).to(dtype) for s in shapes]
    gs = [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype) for s in shapes]
    return ts, gs


def clone(ts):
    return [t.clone() for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_native_matches_reference(native, dtype, opts):
    ts, gs = make(SHAPES, dtype, scale=3.0)
    ref_ts, nat_ts = clone(ts), clone(ts)
    args = dict(step_size=0.02, seed=2**40 + 3, offset=2**33 + 1, **opts)
    end_ref = langevin_step_reference(ref_ts, gs, **args)
    end_nat = langevin_step_(nat_ts, gs, backend="native", **args)
    total = sum(math.prod(s) for s in SHAPES)
    assert end_ref == end_nat == args["offset"] + total
    for r, n, t in zip(ref_ts, nat_ts, ts):
        assert n.dtype == dtype and n.shape == t.shape
        torch.testing.assert_close(n, r, **TOL[dtype])
    assert any(not torch.equal(n, t) for n, t in zip(nat_ts, ts) if n.numel())


# Shapes sharing dim 0 (B = 3) for half_sq_norm: odd rows, an empty tensor, and enough elements
# (~60k) that the CPU kernel's thread chunks split rows and tensors.
BATCHED_SHAPES = [(3, 7), (3,), (3, 0), (3, 2, 401), (3, 1), (3, 19031)]
HSN_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-5), torch.float64: dict(atol=1e-9, rtol=1e-9),
           torch.float16: dict(atol=1e-2, rtol=1e-3), torch.bfloat16: dict(atol=0.2, rtol=1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_native_half_sq_norm(native, dtype):
    ts, gs = make(BATCHED_SHAPES, dtype, scale=3.0)
    ref_ts, nat_ts = clone(ts), clone(ts)
    hsn_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ref_hsn, nat_hsn = torch.full((3,), 7.0, dtype=hsn_dtype), torch.full((3,), 7.0, dtype=hsn_dtype)
    args = dict(step_size=0.02, seed=5, offset=11, grad_clip=1.0)
    langevin_step_reference(ref_ts, gs, half_sq_norm=ref_hsn, **args)
    langevin_step_(nat_ts, gs, half_sq_norm=nat_hsn, backend="native", **args)
    for r, n in zip(ref_ts, nat_ts):
        torch.testing.assert_close(n, r, **TOL[dtype])
    torch.testing.assert_close(nat_hsn, ref_hsn, **HSN_TOL[dtype])  # overwritten, not added to
    own = sum(0.5 * t.to(hsn_dtype).reshape(3, -1).square().sum(1) for t in nat_ts)
    torch.testing.assert_close(nat_hsn, own, **HSN_TOL[hsn_dtype])


def test_native_half_sq_norm_of_non_contiguous_state(native):
    # A transposed state is updated through a contiguous copy; the norms are of its rows.
    t = torch.randn(5, 4).t()  # [4, 5], rows are not contiguous in memory
    g = torch.randn(4, 5)
    ref_t, hsn, ref_hsn = t.clone(), torch.empty(4), torch.empty(4)
    langevin_step_reference([ref_t], [g], step_size=0.1, seed=1, offset=0, half_sq_norm=ref_hsn)
    langevin_step_([t], [g], step_size=0.1, seed=1, offset=0, half_sq_norm=hsn, backend="native")
    torch.testing.assert_close(t, ref_t, **TOL[torch.float32])
    torch.testing.assert_close(hsn, 0.5 * ref_t.square().sum(1), atol=1e-5, rtol=1e-6)


def many_shapes(count=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 3000, (count,), generator=gen).tolist()
    return [(n,) if i % 3 else (1, n) for i, n in enumerate(sizes)]  # ~60k elements, 0-sized too


def test_native_many_tensors_across_threads(native):
    # More tensors than a CUDA launch takes, and a total above the CPU grain, so task and
    # chunk boundaries fall inside tensors and between Philox calls.
    shapes = many_shapes()
    ts, gs = make(shapes, torch.float32, seed=1)
    ref_ts, nat_ts = clone(ts), clone(ts)
    args = dict(step_size=1e-3, seed=77, offset=3, grad_clip=2.0)
    assert langevin_step_reference(ref_ts, gs, **args) == langevin_step_(
        nat_ts, gs, backend="native", **args)
    for r, n in zip(ref_ts, nat_ts):
        torch.testing.assert_close(n, r, **TOL[torch.float32])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    from vaebm_fast.ops import backend_availability
    reason = backend_availability("langevin_step_", "cuda")["native"]
    if reason is not None:
        pytest.skip(reason)
    shapes = SHAPES + many_shapes(seed=2)
    ts, gs = make(shapes, dtype, scale=3.0)
    ts, gs = [t.cuda() for t in ts], [g.cuda() for g in gs]
    ts[3] = ts[3].transpose(0, 2).contiguous().transpose(0, 2)  # non-contiguous
    ref_ts, nat_ts = clone(ts), clone(ts)
    args = dict(step_size=0.02, seed=2**40 + 3, offset=2**33 + 1, prior_weight=0.5,
                grad_clip=1.0, clamp=(-0.7, 0.8))
    end_ref = langevin_step_reference(ref_ts, gs, **args)
    assert langevin_step_(nat_ts, gs, backend="native", **args) == end_ref
    for r, n in zip(ref_ts, nat_ts):
        torch.testing.assert_close(n, r, **TOL[dtype])


def test_reference_formula():
    # t <- clamp(t - eta/2 (clip(g) + lambda t) + sigma xi): spelled out in float64.
    t = torch.linspace(-1, 1, 11, dtype=torch.float64)
    g = torch.linspace(-4, 4, 11, dtype=torch.float64)
    out = t.clone()
    end = langevin_step_reference([out], [g], step_size=0.1, seed=5, offset=9, prior_weight=0.5,
                                  noise_scale=0.2, grad_clip=2.0, clamp=(-0.9, 0.8))
    xi = philox_normal(11, seed=5, offset=9, backend="eager").double()
    expected = (t - 0.05 * (g.clamp(-2, 2) + 0.5 * t) + 0.2 * xi).clamp(-0.9, 0.8)
    assert end == 20
    torch.testing.assert_close(out, expected, atol=1e-15, rtol=0)
    # Default sigma is sqrt(step_size); prior_weight defaults to 1.
    out = t.clone()
    langevin_step_reference([out], [g], step_size=0.1, seed=5, offset=9)
    torch.testing.assert_close(out, t - 0.05 * (g + t) + math.sqrt(0.1) * xi, atol=1e-15, rtol=0)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_non_contiguous_tensors(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    base = torch.randn(6, 10)
    view = base[:, ::3]  # [6, 4], strided
    transposed = torch.randn(5, 7).t()  # [7, 5], column-major
    grads = [torch.randn(4, 6).t(), torch.randn(7, 5)]  # non-contiguous grad too
    expected = [view.contiguous(), transposed.contiguous()]
    langevin_step_reference(expected, [g.contiguous() for g in grads], step_size=0.1, seed=1,
                            offset=3, grad_clip=0.5)
    before = base.clone()
    end = langevin_step_([view, transposed], grads, step_size=0.1, seed=1, offset=3,
                         grad_clip=0.5, backend=backend)
    assert end == 3 + 24 + 35
    torch.testing.assert_close(view, expected[0], atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(transposed, expected[1], atol=2e-6, rtol=1e-6)
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[:, ::3] = False
    assert torch.equal(base[untouched], before[untouched])  # columns outside the view


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_empty_inputs(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    assert langevin_step_([], [], step_size=0.1, seed=0, offset=17, backend=backend) == 17
    t = torch.empty(0, 3)
    assert langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=4,
                          backend=backend) == 4


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_split_list_equals_concatenation(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    ts, gs = make([(3, 4), (5,), (2, 2, 2)], torch.float32, seed=3)
    flat_t = torch.cat([t.reshape(-1) for t in ts])
    flat_g = torch.cat([g.reshape(-1) for g in gs])
    args = dict(step_size=0.05, seed=11, offset=6, prior_weight=0.7, grad_clip=1.0)
    end_list = langevin_step_(ts, gs, backend=backend, **args)
    end_flat = langevin_step_(flat_t, flat_g, backend=backend, **args)  # one tensor, no list
    assert end_list == end_flat == 6 + 25
    assert torch.equal(torch.cat([t.reshape(-1) for t in ts]), flat_t)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_consecutive_steps_use_fresh_noise(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    # With g = 0, lambda = 0 and sigma = 1 a step adds exactly its noise.
    t = torch.zeros(1001, dtype=torch.float64)
    zeros = torch.zeros_like(t)
    args = dict(step_size=1.0, seed=42, prior_weight=0.0, backend=backend)
    offset = langevin_step_([t], [zeros], offset=10, **args)
    first = t.clone()
    offset2 = langevin_step_([t], [zeros], offset=offset, **args)
    second = t - first
    assert offset == 1011 and offset2 == 2012
    stream = philox_normal(2002, seed=42, offset=10).double()
    torch.testing.assert_close(first, stream[:1001], atol=1e-6, rtol=0)
    torch.testing.assert_close(second, stream[1001:], atol=1e-6, rtol=0)
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 0.15


def test_nan_gradient_propagates(native):
    t = torch.zeros(9)
    g = torch.zeros(9)
    g[4] = float("nan")
    langevin_step_([t], [g], step_size=0.1, seed=0, offset=0, grad_clip=1.0, clamp=(0, 1),
                   backend="native")
    assert torch.isnan(t[4]) and torch.isfinite(t[torch.arange(9) != 4]).all()


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_leaf_tensors_requiring_grad(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    x = torch.randn(4, 3, requires_grad=True)
    y = (x ** 2).sum()
    y.backward(retain_graph=True)
    version = x._version
    langevin_step_([x], [x.grad], step_size=0.1, seed=0, offset=0, backend=backend)  # no_grad
    assert x._version > version and x.requires_grad
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()  # x was saved for backward and has been overwritten


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


def test_internal_overlap_is_rejected(native):
    t = torch.zeros(1, 3).expand(4, 3)
    with pytest.raises(ValueError, match="sharing memory"):
        langevin_step_([t], [torch.zeros(4, 3)], step_size=0.1, seed=0, offset=0,
                       backend="native")
    # The kernel refuses it too when called directly (it would write one element twice).
    with pytest.raises(RuntimeError, match="sharing memory|overlap"):
        torch.ops.vaebm_fast.langevin_step_([t], [torch.zeros(4, 3)], 0.1, 0, 0, 1.0, 0.3,
                                            None, None, None)


def _ok_args():
    return dict(tensors=[torch.zeros(3), torch.zeros(2, 2)],
                grads=[torch.zeros(3), torch.zeros(2, 2)], step_size=0.1, seed=1, offset=0)


@pytest.mark.parametrize("change, error, match", [
    (dict(grads=[torch.zeros(3)]), ValueError, "same length"),
    (dict(grads=[torch.zeros(3), torch.zeros(4)]), ValueError, r"grads\[1\] must have the shape"),
    (dict(grads=[torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)]), ValueError, "dtype"),
    (dict(grads=[torch.zeros(3), torch.zeros(2, 2, device="meta")]), ValueError, "device"),
    (dict(tensors=[torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)],
          grads=[torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)]),
     ValueError, "float"),
    (dict(tensors=[torch.zeros(3), [1.0, 2.0]]), TypeError, r"tensors\[1\]"),
    (dict(tensors="x"), TypeError, "list of tensors"),
    (dict(step_size=0.0), ValueError, "step_size must be > 0"),
    (dict(step_size=-1e-3), ValueError, "step_size"),
    (dict(step_size=float("nan")), ValueError, "finite"),
    (dict(step_size=float("inf")), ValueError, "finite"),
    (dict(step_size="0.1"), TypeError, "step_size"),
    (dict(noise_scale=-1.0), ValueError, "noise_scale"),
    (dict(prior_weight=float("nan")), ValueError, "prior_weight"),
    (dict(grad_clip=0.0), ValueError, "grad_clip"),
    (dict(grad_clip=float("nan")), ValueError, "grad_clip"),
    (dict(clamp=(1.0, 0.0)), ValueError, "low < high"),
    (dict(clamp=(0.5, 0.5)), ValueError, "low < high"),
    (dict(clamp=(0.0,)), TypeError, "pair"),
    (dict(clamp=(float("nan"), 1.0)), ValueError, "NaN"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**63), ValueError, "seed"),
    (dict(offset=-3), ValueError, "offset"),
    (dict(offset=2**63 - 5), ValueError, "offset"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_inputs(change, error, match):
    args = {**_ok_args(), **change}
    tensors, grads = args.pop("tensors"), args.pop("grads")
    with pytest.raises(error, match=match):
        langevin_step_(tensors, grads, **args)


def test_unavailable_backend_raises_with_reason():
    t = torch.zeros(3, device="meta")
    with pytest.raises(BackendUnavailableError, match="native.*meta"):
        langevin_step_([t], [t], step_size=0.1, seed=0, offset=0, backend="native")


def test_opcheck(native):
    op = torch.ops.vaebm_fast.langevin_step_.default
    for dtype in (torch.float32, torch.float64):
        ts, gs = make([(3, 5), (7,)], dtype)
        torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 1.0, 0.3, None, None, None))
        torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 0.0, 0.3, 0.5, -1.0, 1.0))
    ts, gs = make([(4, 4)], torch.float32)
    torch.library.opcheck(op, ([ts[0].t()], [gs[0]], 0.2, 0, 0, 1.0, 0.1, None, None, 0.0))
    ts, gs = make([(3, 5), (3, 2, 2)], torch.float32)
    torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 1.0, 0.3, None, None, None, torch.empty(3)))


@pytest.mark.parametrize("backend", ["native", "eager"])
def test_stepper_matches_the_op(backend, request):
    # A chain's stepper (validated and dispatched once) gives the op's steps and offsets.
    if backend == "native":
        request.getfixturevalue("native")
    from vaebm_fast.ops import LangevinStepper
    ts, gs = make(BATCHED_SHAPES, torch.float32, seed=4)
    ref_ts = clone(ts)
    args = dict(step_size=0.05, prior_weight=0.5, grad_clip=1.0, clamp=(-2.0, None))
    step = LangevinStepper(ts, backend=backend, **args)
    hsn, ref_hsn = torch.empty(3), torch.empty(3)
    offset = ref_offset = 7
    for _ in range(3):
        offset = step(gs, seed=11, offset=offset, half_sq_norm=hsn)
        ref_offset = langevin_step_reference(ref_ts, gs, seed=11, offset=ref_offset,
                                             half_sq_norm=ref_hsn, **args)
    assert offset == ref_offset
    for a, b in zip(ts, ref_ts):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    torch.testing.assert_close(hsn, ref_hsn, **HSN_TOL[torch.float32])
    with pytest.raises(ValueError, match="half_sq_norm must have shape"):
        step(gs, seed=11, offset=offset, half_sq_norm=torch.empty(4))
