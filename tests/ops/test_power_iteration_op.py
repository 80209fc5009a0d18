"""power_iteration_ / spectral_norms: native CPU and Triton kernels vs the eager specification
(values, in-place updates, strides, eps, groups, gradients), opcheck of the ops, dispatch, and
the spectral regulariser on the native path. Triton runs in its interpreter without a GPU, so
its cases are few and small."""
import copy

import pytest
import torch
import torch.nn.functional as F

from vaebm_fast.models.energy import small_image_ebm
from vaebm_fast.ops import BackendUnavailableError, default_backend
from vaebm_fast.ops import _dispatch
from vaebm_fast.ops.power_iteration import (DEFAULT_EPS, _power_iteration_eager,
                                            power_iteration_, spectral_norms)

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


@pytest.fixture(params=["native", "triton"])
def kernel(request):
    """(backend, device) of a kernel backend that can run here (else skipped)."""
    if request.param == "native":
        request.getfixturevalue("native")
        return "native", "cpu"
    return "triton", request.getfixturevalue("triton_device")


def make_group(G, R, C, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    """W [G, R, C] and unit u [G, R], v [G, C] (generated on the CPU, then moved)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(G, R, C, generator=gen, dtype=torch.float64) * scale
    u = F.normalize(torch.randn(G, R, generator=gen, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(G, C, generator=gen, dtype=torch.float64), dim=1)
    return tuple(t.to(device=device, dtype=dtype) for t in (W, u, v))


def eager_result(W, u, v, n_iter, eps=DEFAULT_EPS):
    """(sigma, u, v) of the specification, on copies."""
    u, v = u.clone(), v.clone()
    return _power_iteration_eager(W.detach(), u, v, n_iter, eps), u, v


def assert_matches_eager(W, u0, v0, sigma, u, v, n_iter, eps=DEFAULT_EPS):
    want_sigma, want_u, want_v = eager_result(W, u0, v0, n_iter, eps)
    tol = TOL[W.dtype]
    torch.testing.assert_close(sigma, want_sigma, **tol)
    torch.testing.assert_close(u, want_u, **tol)
    torch.testing.assert_close(v, want_v, **tol)


# (G, R, C): R != C both ways, G = 1, a single row / column, C not a multiple of the vector width
NATIVE_SHAPES = [(1, 7, 12), (3, 13, 5), (2, 33, 65), (1, 1, 9), (2, 5, 1), (4, 128, 27),
                 (1, 37, 301)]
TRITON_SHAPES = [(1, 7, 12), (3, 13, 5), (2, 37, 131)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n_iter", [0, 1, 5])
def test_matches_eager_spec(kernel, dtype, n_iter):
    backend, device = kernel
    for shape in NATIVE_SHAPES if backend == "native" else TRITON_SHAPES:
        W, u, v = make_group(*shape, dtype=dtype, device=device, seed=sum(shape))
        u0, v0 = u.clone(), v.clone()
        u_ptr, v_ptr = u.data_ptr(), v.data_ptr()
        sigma = power_iteration_(W, u, v, n_iter, backend=backend)
        assert sigma.shape == (shape[0],) and sigma.dtype == dtype
        assert u.data_ptr() == u_ptr and v.data_ptr() == v_ptr  # updated in place
        assert_matches_eager(W, u0, v0, sigma, u, v, n_iter)
        if n_iter > 0 and min(shape[1:]) > 1:  # (a 1-vector stays +-1)
            assert not torch.equal(u, u0) and not torch.equal(v, v0)


def test_converges_to_the_matrix_2_norm(kernel):
    backend, device = kernel
    W, u, v = make_group(2, 9, 23, dtype=torch.float64, device=device)
    sigma = power_iteration_(W, u, v, 200, backend=backend)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(W, ord=2), rtol=1e-6, atol=0)


def _strided_cases(device, dtype):
    """(W, u, v) with non-contiguous W (rows strided, columns strided, transposed) and
    non-contiguous u / v."""
    W, u, v = make_group(2, 12, 22, dtype=dtype, device=device, seed=3)
    Wt, ut, vt = make_group(2, 11, 12, dtype=dtype, device=device, seed=4)
    u_wide = torch.zeros(2, 24, dtype=dtype, device=device)
    u_wide[:, ::2] = u
    v_wide = torch.zeros(2, 11, 2, dtype=dtype, device=device)
    v_wide[..., 1] = vt[:, :11]
    return [
        (W[:, ::2, :], u[:, ::2].contiguous(), v),          # row stride 2 C
        (W[:, :, ::2], u, v[:, ::2].contiguous()),          # column stride 2
        (Wt.transpose(1, 2), vt, ut),                       # W^T: column stride C
        (W, u_wide[:, ::2], v),                             # strided u
        (Wt[:, :, :11], ut, v_wide[..., 1]),                # strided v
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_non_contiguous_tensors(kernel, dtype):
    backend, device = kernel
    for W, u, v in _strided_cases(device, dtype):
        u0, v0 = u.clone(), v.clone()
        sigma = power_iteration_(W, u, v, 3, backend=backend)
        assert_matches_eager(W, u0, v0, sigma, u, v, 3)


@pytest.mark.parametrize("scale", [0.0, 1e-7, 1e-4])
def test_tiny_norms_hit_eps(kernel, scale):
    # ||W^T u|| and ||W v|| fall below eps = 1e-3: normalize divides by eps, not by the norm.
    backend, device = kernel
    W, u, v = make_group(2, 5, 7, dtype=torch.float64, device=device, scale=scale)
    u0, v0 = u.clone(), v.clone()
    sigma = power_iteration_(W, u, v, 2, backend=backend)
    assert torch.isfinite(sigma).all() and torch.isfinite(u).all()
    assert_matches_eager(W, u0, v0, sigma, u, v, 2)
    if scale > 0:
        assert u.norm(dim=1).max() < 0.5  # the vectors shrank: eps was the divisor
    # A larger eps changes the answer (so eps really reaches the kernel).
    u1, v1 = u0.clone(), v0.clone()
    power_iteration_(make_group(2, 5, 7, dtype=torch.float64, device=device)[0], u1, v1, 1,
                     eps=1e6, backend=backend)
    assert u1.norm(dim=1).max() < 1e-3


def test_spectral_norms_several_groups(kernel):
    backend, device = kernel
    shapes = [(1, 7, 12), (3, 13, 5), (2, 9, 9)]
    if backend == "native":
        shapes += [(7, 64, 130), (1, 128, 27)]
    for dtype in (torch.float32, torch.float64):
        groups = [make_group(*s, dtype=dtype, device=device, seed=i) for i, s in enumerate(shapes)]
        Ws, us, vs = (list(t) for t in zip(*groups))
        us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
        sigmas = spectral_norms(Ws, us, vs, 4, backend=backend)
        assert len(sigmas) == len(shapes)
        for W, u0, v0, s, u, v in zip(Ws, us0, vs0, sigmas, us, vs):
            assert_matches_eager(W, u0, v0, s, u, v, 4)


def test_groups_of_mixed_dtypes(native):
    groups = [make_group(2, 6, 11, dtype=torch.float32), make_group(1, 9, 4, dtype=torch.float64)]
    Ws, us, vs = (list(t) for t in zip(*groups))
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.vaebm_fast.spectral_norms_(Ws, us, vs, 2, DEFAULT_EPS)
    with pytest.raises(ValueError, match="one dtype"):
        spectral_norms(Ws, us, vs, 2, backend="native")
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = spectral_norms(Ws, us, vs, 2)  # "auto": the reference
    for W, u0, v0, s, u, v in zip(Ws, us0, vs0, sigmas, us, vs):
        assert s.dtype == W.dtype
        assert_matches_eager(W, u0, v0, s, u, v, 2)


def test_native_spectral_norms_returns_one_concatenated_tensor(native):
    groups = [make_group(2, 6, 11, seed=1), make_group(3, 9, 4, seed=2)]
    Ws, us, vs = (list(t) for t in zip(*groups))
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    sigma = torch.ops.vaebm_fast.spectral_norms_(Ws, us, vs, 2, DEFAULT_EPS)
    assert sigma.shape == (5,)
    want = torch.cat([eager_result(W, u, v, 2)[0] for W, u, v in zip(Ws, us0, vs0)])
    torch.testing.assert_close(sigma, want, **TOL[torch.float32])


def test_gradient_wrt_W_matches_eager(kernel):
    backend, device = kernel
    W0, u, v = make_group(3, 6, 11, dtype=torch.float64, device=device)
    grads, sigmas = [], []
    for b in (backend, "eager"):
        W = W0.clone().requires_grad_()
        uu, vv = u.clone(), v.clone()
        sigma = power_iteration_(W * 2.0, uu, vv, 3, backend=b)  # W enters through a graph
        assert sigma.requires_grad
        power_iteration_(W.detach(), uu, vv, 2, backend=b)  # later in-place update of u, v
        weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=device)
        (sigma * weights).sum().backward()
        grads.append(W.grad)
        sigmas.append(sigma.detach())
        assert not uu.requires_grad and uu.grad is None
    torch.testing.assert_close(sigmas[0], sigmas[1], **TOL[torch.float64])
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


def test_no_graph_without_grad(native):
    W, u, v = make_group(2, 4, 5)
    W.requires_grad_()
    with torch.no_grad():
        assert not power_iteration_(W, u, v, 1, backend="native").requires_grad
    assert not power_iteration_(W.detach(), u, v, 1, backend="native").requires_grad


def test_native_bumps_versions_of_u_and_v(native):
    W, u, v = make_group(2, 4, 5)
    before = (u._version, v._version)
    power_iteration_(W, u, v, 1, backend="native")
    assert u._version > before[0] and v._version > before[1]


def test_opcheck_native_ops(native):
    for dtype in (torch.float32, torch.float64):
        W, u, v = make_group(2, 5, 7, dtype=dtype)
        torch.library.opcheck(torch.ops.vaebm_fast.power_iteration_.default,
                              (W, u, v, 3, DEFAULT_EPS))
        torch.library.opcheck(torch.ops.vaebm_fast.power_iteration_.default,
                              (W.transpose(1, 2), v.clone(), u.clone(), 0, DEFAULT_EPS))
        W2, u2, v2 = make_group(1, 3, 9, dtype=dtype, seed=1)
        torch.library.opcheck(torch.ops.vaebm_fast.spectral_norms_.default,
                              ([W, W2], [u, u2], [v, v2], 2, DEFAULT_EPS))


def test_opcheck_triton_ops(triton_device):
    from vaebm_fast.triton_kernels import power_iteration as tk  # noqa: F401 (registers)
    W, u, v = make_group(2, 5, 7, device=triton_device)
    W2, u2, v2 = make_group(1, 3, 9, device=triton_device, seed=1)
    torch.library.opcheck(torch.ops.vaebm_fast_triton.power_iteration_.default,
                          (W, u, v, 2, DEFAULT_EPS))
    torch.library.opcheck(torch.ops.vaebm_fast_triton.spectral_norms_.default,
                          ([W, W2], [u, u2], [v, v2], 1, DEFAULT_EPS))


def test_native_op_rejects_bad_arguments(native):
    W, u, v = make_group(2, 4, 5)
    op = torch.ops.vaebm_fast.power_iteration_
    with pytest.raises(RuntimeError, match=r"u must be \[G, R\]"):
        op(W, v, v, 1, DEFAULT_EPS)
    with pytest.raises(RuntimeError, match="n_iter"):
        op(W, u, v, -1, DEFAULT_EPS)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(W.half(), u.half(), v.half(), 1, DEFAULT_EPS)
    with pytest.raises(RuntimeError, match="one dtype"):
        op(W, u.double(), v, 1, DEFAULT_EPS)
    with pytest.raises(RuntimeError, match="one u and one v"):
        torch.ops.vaebm_fast.spectral_norms_([W], [u], [], 1, DEFAULT_EPS)


def test_dispatch(native):
    assert _dispatch.resolve_backend("spectral_norms", "auto", "cpu") == "native"
    assert _dispatch.resolve_backend("power_iteration_", "auto", "cpu") == "native"
    W, u, v = make_group(2, 4, 5)
    with pytest.raises(ValueError, match="backend must be one of"):
        power_iteration_(W, u, v, 1, backend="cuda")
    with pytest.raises(ValueError, match="float32 or float64"):
        power_iteration_(W.bfloat16(), u.bfloat16(), v.bfloat16(), 1, backend="native")
    # "auto" falls back to the reference for dtypes the kernels do not take.
    Wb, ub, vb = W.bfloat16(), u.bfloat16(), v.bfloat16()
    ub0, vb0 = ub.clone(), vb.clone()
    sigma = power_iteration_(Wb, ub, vb, 2)
    torch.testing.assert_close(sigma, eager_result(Wb, ub0, vb0, 2)[0])
    assert spectral_norms([], [], [], 3, backend="native") == []
    with pytest.raises(ValueError, match="backend must be one of"):
        spectral_norms([], [], [], 3, backend="bogus")


def test_triton_unavailable_on_cpu_without_interpreter(monkeypatch, native):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _dispatch._cache.clear()
    try:
        W, u, v = make_group(1, 3, 4)
        with pytest.raises(BackendUnavailableError, match="triton"):
            power_iteration_(W, u, v, 1, backend="triton")
    finally:
        _dispatch._cache.clear()


def _regulariser_model(seed=0):
    torch.manual_seed(seed)
    return small_image_ebm(in_channels=3, n_channel=8)


def test_spectral_regulariser_same_loss_native_and_eager(native):
    base = _regulariser_model()
    results = []
    for backend in ("native", "eager"):
        model = copy.deepcopy(base)
        with default_backend(backend):
            loss = model.spectral_norm_loss()       # 40 iterations
            loss = loss + model.spectral_norm_loss()  # then 4
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads, model.state_dict()))
    (l_n, g_n, sd_n), (l_e, g_e, sd_e) = results
    assert sd_n.keys() == sd_e.keys()
    assert any(k.startswith("spectral.u_") for k in sd_n)
    torch.testing.assert_close(l_n, l_e, atol=1e-5, rtol=1e-5)
    assert len(g_n) == len(g_e) > 0
    for a, b in zip(g_n, g_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for key in sd_n:
        if key.startswith("spectral."):
            torch.testing.assert_close(sd_n[key], sd_e[key], atol=1e-5, rtol=1e-4)


def test_spectral_regulariser_uses_the_native_op(native):
    model = _regulariser_model()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.spectral_norm_loss()
    names = [event.name for event in prof.events()]
    assert names.count("vaebm_fast::spectral_norms_") == 1  # all groups in one call
    assert "aten::bmm" not in names


def test_native_rejects_rows_sharing_memory(native):
    # Matrices run in parallel, each writing its own row of u and v: an expanded u would race.
    W = torch.randn(3, 4, 5)
    u = torch.randn(1, 4).expand(3, 4)
    v = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="sharing memory"):
        torch.ops.vaebm_fast.power_iteration_(W, u, v, 1, 1e-3)
