"""Triton kernels of langevin_step_ (one launch per list, half_sq_norm) vs its eager reference;
the public op's "triton" backend and half_sq_norm argument; opcheck. (The replay ops' tests,
on every target: test_replay.py.)

Runs in Triton's CPU interpreter without a GPU (tests/conftest.py), so sizes are small but
odd: several programs per launch, unaligned offsets, tensors ending mid-block."""
import math

import pytest
import torch

from vaebm_fast.ops import (BackendUnavailableError, langevin_step_, langevin_step_reference,
                            philox_normal_reference)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Same arithmetic as the reference; differences come from the normals (a few float32 ulps)
# and, for float16/bfloat16, a rounding that a tiny difference can flip by one ulp.
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-6), torch.float64: dict(atol=2e-6, rtol=0),
       torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1e-2)}
HSN_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-5), torch.float64: dict(atol=1e-6, rtol=1e-7),
           torch.float16: dict(atol=1e-2, rtol=1e-3), torch.bfloat16: dict(atol=0.2, rtol=1e-2)}

# Shapes with a shared dim 0 (B = 3), so half_sq_norm applies: odd sizes, an empty tensor,
# one spanning several 1024-element programs, rows shorter and longer than a program.
SHAPES = [(3, 7), (3,), (3, 0), (3, 2, 401), (3, 1), (3, 1031)]

OPTIONS = [
    dict(),
    dict(prior_weight=0.0, grad_clip=0.3),
    dict(prior_weight=2.0, noise_scale=0.05, grad_clip=1.0, clamp=(None, 0.2)),
    dict(prior_weight=0.5, noise_scale=0.0, clamp=(-0.1, None)),
    dict(prior_weight=0.5, clamp=(-0.4, 0.6)),
]


@pytest.fixture
def tl_langevin(triton_device):
    from vaebm_fast.triton_kernels import langevin
    return langevin


def make(shapes, dtype, device, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    ts = [(torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).to(dtype).to(device)
          for s in shapes]
    gs = [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
          for s in shapes]
    return ts, gs


def clone(ts):
    return [t.clone() for t in ts]


def hsn_buffer(dtype, device, b=3):
    # Filled with garbage: the op must overwrite, not accumulate.
    return torch.full((b,), 7.0, dtype=torch.float64 if dtype == torch.float64 else
                      torch.float32, device=device)


# ----------------------------------------------------------------------------- langevin_step_

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_langevin_matches_reference(triton_device, dtype, opts):
    ts, gs = make(SHAPES, dtype, triton_device, scale=3.0)
    ref_ts, tri_ts = clone(ts), clone(ts)
    ref_hsn, tri_hsn = hsn_buffer(dtype, triton_device), hsn_buffer(dtype, triton_device)
    args = dict(step_size=0.02, seed=2**40 + 3, offset=2**33 + 1, **opts)
    end_ref = langevin_step_reference(ref_ts, gs, half_sq_norm=ref_hsn, **args)
    end_tri = langevin_step_(tri_ts, gs, half_sq_norm=tri_hsn, backend="triton", **args)
    assert end_ref == end_tri == args["offset"] + sum(math.prod(s) for s in SHAPES)
    for r, n, t in zip(ref_ts, tri_ts, ts):
        assert n.dtype == dtype and n.shape == t.shape
        torch.testing.assert_close(n, r, **TOL[dtype])
    assert any(not torch.equal(n, t) for n, t in zip(tri_ts, ts) if n.numel())
    torch.testing.assert_close(tri_hsn, ref_hsn, **HSN_TOL[dtype])
    # half_sq_norm is of the states the op stored, whatever the backend's rounding.
    compute = tri_hsn.dtype
    own = sum(0.5 * t.to(compute).reshape(3, -1).square().sum(1) for t in tri_ts)
    torch.testing.assert_close(tri_hsn, own, **HSN_TOL[torch.float32 if compute ==
                                                        torch.float32 else torch.float64])


def test_langevin_without_half_sq_norm_and_offsets_near_carries(triton_device):
    # Stream offsets whose calls cross 2**32 and 2**34 inside the list; no half_sq_norm; tensors
    # with different dim 0 (allowed without half_sq_norm).
    shapes = [(5,), (2, 3, 3), (1029,)]
    for offset in (4 * 2**32 - 9, 4 * 2**34 - 6, 3):
        ts, gs = make(shapes, torch.float32, triton_device, seed=offset % 7)
        ref_ts, tri_ts = clone(ts), clone(ts)
        args = dict(step_size=0.1, seed=5, offset=offset, grad_clip=2.0)
        assert (langevin_step_reference(ref_ts, gs, **args)
                == langevin_step_(tri_ts, gs, backend="triton", **args))
        for r, n in zip(ref_ts, tri_ts):
            torch.testing.assert_close(n, r, **TOL[torch.float32])


def test_langevin_adds_exactly_its_noise(triton_device):
    # g = 0, lambda = 0, sigma = 1: a step adds normals offset .. offset + n - 1, in list order.
    ts = [torch.zeros(3, 5, dtype=torch.float64, device=triton_device),
          torch.zeros(4, dtype=torch.float64, device=triton_device)]
    end = langevin_step_(ts, [torch.zeros_like(t) for t in ts], step_size=1.0, seed=42,
                         offset=10, prior_weight=0.0, backend="triton")
    assert end == 29
    stream = philox_normal_reference(19, seed=42, offset=10).double()
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in ts]).cpu(), stream,
                               atol=1e-6, rtol=0)


def test_langevin_many_tensors_one_launch(triton_device, tl_langevin, monkeypatch):
    # 37 tensors (binary search over 6 levels), sizes around the 1024-element program.
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(0, 90, (37,), generator=gen).tolist()
    sizes[5], sizes[20] = 1030, 0
    shapes = [(2, n) for n in sizes]
    ts, gs = make(shapes, torch.float32, triton_device, seed=2)
    ref_ts, tri_ts = clone(ts), clone(ts)
    ref_hsn, tri_hsn = hsn_buffer(torch.float32, triton_device, 2), hsn_buffer(
        torch.float32, triton_device, 2)
    launches = []
    kernel = tl_langevin._langevin_kernel
    monkeypatch.setattr(tl_langevin, "_langevin_kernel", _Counting(kernel, launches))
    args = dict(step_size=0.05, seed=77, offset=3, prior_weight=0.3, clamp=(-1.0, 1.0))
    langevin_step_reference(ref_ts, gs, half_sq_norm=ref_hsn, **args)
    langevin_step_(tri_ts, gs, half_sq_norm=tri_hsn, backend="triton", **args)
    assert len(launches) == 1
    for r, n in zip(ref_ts, tri_ts):
        torch.testing.assert_close(n, r, **TOL[torch.float32])
    torch.testing.assert_close(tri_hsn, ref_hsn, **HSN_TOL[torch.float32])


class _Counting:
    """A kernel stand-in that records launches and forwards them."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.kernel[grid]


def test_langevin_non_contiguous(triton_device):
    base = torch.randn(6, 10, device=triton_device)
    view = base[:, ::3]  # [6, 4], strided
    transposed = torch.randn(5, 6, device=triton_device).t()  # [6, 5], column-major
    grads = [torch.randn(4, 6, device=triton_device).t(), torch.randn(6, 5, device=triton_device)]
    expected = [view.contiguous(), transposed.contiguous()]
    ref_hsn, hsn = hsn_buffer(torch.float32, triton_device, 6), hsn_buffer(
        torch.float32, triton_device, 6)
    langevin_step_reference(expected, [g.contiguous() for g in grads], step_size=0.1, seed=1,
                            offset=3, grad_clip=0.5, half_sq_norm=ref_hsn)
    before = base.clone()
    end = langevin_step_([view, transposed], grads, step_size=0.1, seed=1, offset=3,
                         grad_clip=0.5, half_sq_norm=hsn, backend="triton")
    assert end == 3 + 24 + 30
    torch.testing.assert_close(view, expected[0], **TOL[torch.float32])
    torch.testing.assert_close(transposed, expected[1], **TOL[torch.float32])
    torch.testing.assert_close(hsn, ref_hsn, **HSN_TOL[torch.float32])
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[:, ::3] = False
    assert torch.equal(base[untouched], before[untouched])


def test_langevin_empty(triton_device):
    assert langevin_step_([], [], step_size=0.1, seed=0, offset=17, backend="triton") == 17
    t = torch.empty(4, 0, device=triton_device)
    hsn = hsn_buffer(torch.float32, triton_device, 4)
    assert langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=4, half_sq_norm=hsn,
                          backend="triton") == 4
    assert torch.equal(hsn, torch.zeros(4, device=triton_device))  # sum over no elements


def test_langevin_nan_passes_through(triton_device):
    t = torch.zeros(9, device=triton_device)
    g = torch.zeros(9, device=triton_device)
    g[4] = float("nan")
    langevin_step_([t], [g], step_size=0.1, seed=0, offset=0, grad_clip=1.0, clamp=(0, 1),
                   backend="triton")
    assert torch.isnan(t[4]) and torch.isfinite(t[torch.arange(9) != 4]).all()


def test_langevin_overlapping_tensor_is_rejected(triton_device):
    t = torch.zeros(1, 3, device=triton_device).expand(4, 3)
    with pytest.raises(ValueError, match="sharing memory"):
        langevin_step_([t], [torch.zeros(4, 3, device=triton_device)], step_size=0.1, seed=0,
                       offset=0, backend="triton")
    with pytest.raises(RuntimeError, match="sharing memory"):  # the kernel on its own
        torch.ops.vaebm_fast_triton.langevin_step_(
            [t], [torch.zeros(4, 3, device=triton_device)], 0.1, 0, 0, 1.0, 0.3, None, None,
            None)


def _hsn_case():
    return dict(tensors=[torch.zeros(3, 2), torch.zeros(3)], grads=[torch.zeros(3, 2),
                torch.zeros(3)], step_size=0.1, seed=1, offset=0)


@pytest.mark.parametrize("half_sq_norm, change, error, match", [
    (torch.zeros(3, dtype=torch.float64), {}, ValueError, "float32"),
    (torch.zeros(3, dtype=torch.float16), {}, ValueError, "float32"),
    (torch.zeros(4), {}, ValueError, r"shape \[B\] = \[3\]"),
    (torch.zeros(3, 1), {}, ValueError, "shape"),
    (torch.zeros(6)[::2], {}, ValueError, "contiguous"),
    (torch.zeros(3, device="meta"), {}, ValueError, "is on meta"),
    ([0.0, 0.0, 0.0], {}, TypeError, "half_sq_norm must be a torch.Tensor"),
    (torch.zeros(3), dict(tensors=[torch.zeros(3, 2), torch.zeros(2)],
                          grads=[torch.zeros(3, 2), torch.zeros(2)]), ValueError, "same dim 0"),
    (torch.zeros(3), dict(tensors=[torch.zeros(3), torch.tensor(1.0)],
                          grads=[torch.zeros(3), torch.tensor(1.0)]), ValueError, "dim >= 1"),
    (torch.zeros(3), dict(tensors=[], grads=[]), ValueError, "at least one tensor"),
    (torch.zeros(3), dict(tensors=[torch.zeros(3, dtype=torch.float64)],
                          grads=[torch.zeros(3, dtype=torch.float64)]), ValueError, "float64"),
])
@pytest.mark.parametrize("fn", ["reference", "eager", "triton"])
def test_half_sq_norm_bad_arguments(fn, half_sq_norm, change, error, match, request):
    if fn == "triton":
        request.getfixturevalue("triton_device")
    args = {**_hsn_case(), **change}
    tensors, grads = args.pop("tensors"), args.pop("grads")
    with pytest.raises(error, match=match):
        if fn == "reference":
            langevin_step_reference(tensors, grads, half_sq_norm=half_sq_norm, **args)
        else:
            langevin_step_(tensors, grads, half_sq_norm=half_sq_norm, backend=fn, **args)


def test_half_sq_norm_reference_formula():
    # 0.5 * sum over tensors of ||t[b]||^2 of the updated states, spelled out.
    ts = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 2, dtype=torch.float64)]
    gs = [torch.randn_like(t) for t in ts]
    hsn = torch.full((4,), 3.0, dtype=torch.float64)
    langevin_step_reference(ts, gs, step_size=0.1, seed=3, offset=1, half_sq_norm=hsn)
    expected = 0.5 * (ts[0].square().sum(1) + ts[1].square().sum((1, 2)))
    torch.testing.assert_close(hsn, expected, atol=1e-12, rtol=0)
    # The eager dispatch path gives the same.
    ts2 = [torch.zeros(4, 3, dtype=torch.float64)]
    hsn2 = hsn.clone()
    langevin_step_(ts2, [torch.zeros_like(ts2[0])], step_size=1.0, seed=3, offset=1,
                   prior_weight=0.0, half_sq_norm=hsn2, backend="eager")
    torch.testing.assert_close(hsn2, 0.5 * ts2[0].square().sum(1), atol=1e-12, rtol=0)


def test_native_fake_accepts_half_sq_norm():
    # torch.compile / FakeTensor tracing of the native op with the new trailing argument.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from vaebm_fast import _native
    if not _native.status().loaded:
        pytest.skip("native extension not loaded")
    with FakeTensorMode():
        t = torch.empty(3, 4)
        torch.ops.vaebm_fast.langevin_step_([t], [t.clone()], 0.1, 0, 0, 1.0, 0.3, None, None,
                                            None, torch.empty(3))


def test_langevin_opcheck(triton_device, tl_langevin):
    op = torch.ops.vaebm_fast_triton.langevin_step_.default
    for dtype in (torch.float32, torch.float64):
        ts, gs = make([(3, 5), (3,)], dtype, triton_device)
        torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 1.0, 0.3, None, None, None, None))
        torch.library.opcheck(op, (ts, gs, 0.1, 3, 5, 0.0, 0.3, 0.5, -1.0, 1.0,
                                   hsn_buffer(dtype, triton_device)))
    ts, gs = make([(4, 4)], torch.float32, triton_device)
    torch.library.opcheck(op, ([ts[0].t()], [gs[0]], 0.2, 0, 0, 1.0, 0.1, None, None, 0.0, None))


def test_unavailable_triton_raises_with_reason(monkeypatch):
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    t = torch.zeros(3)
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        langevin_step_([t], [t.clone()], step_size=0.1, seed=0, offset=0, backend="triton")
