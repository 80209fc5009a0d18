"""power_iteration_ / spectral_norms (vaebm_fast.ops.power_iteration) on every kernel target (the
``kernel`` fixture: native and Triton, CPU and CUDA) against the eager specification.

Covered: sigma, u and v against the specification in float64 (float32 and float64, odd and
empty shapes, 0, 1 and 5 iterations), updated in place; convergence to the matrix 2-norm;
strided, misaligned, row-strided and transposed tensors (nothing outside a view written); norms
below eps; NaN; many groups in one call (more than a CUDA launch takes), mixed dtypes; other
dtypes (eager under "auto", refused by a named kernel backend, the raw ops' own dtypes); the
gradient d sigma / d W = u v^T; version-counter bumps of u and v; vectors sharing memory
refused; errors of the public ops and the raw ops' own checks; a matrix too long for a CUDA
block's shared memory; opcheck; torch.compile; CUDA-graph capture and a side stream; the
spectral regulariser of the energy models on the target.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from vaebm_fast.models.energy import small_image_ebm
from vaebm_fast.ops import BackendUnavailableError, default_backend
from vaebm_fast.ops import _dispatch
from vaebm_fast.ops.power_iteration import (DEFAULT_EPS, _power_iteration_eager,
                                            power_iteration_, spectral_norms)

from .helpers import (LAYOUTS, assert_close, assert_same_bits, captured, on_side_stream,
                      spaced, storage_outside, transposed)

OPS = ("power_iteration_", "spectral_norms")
KERNEL_DTYPES = [torch.float32, torch.float64]
# Kernel (arithmetic in the tensors' dtype, or float32 for float16 / bfloat16 on CUDA) against
# the specification in float64 from the same rounded inputs, after a few iterations.
TOL = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-10, 1e-10),
       torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 6e-2)}

# (G, R, C): R < C and R > C, G = 1, a single row / column / element, sizes that are not a
# multiple of any vector width or tile (CPU: 8 lanes; CUDA: 32-column tiles, fewer or more than
# 8 of them, more rows than threads; Triton: 32 x 128 tiles), and empty groups, rows, columns.
SHAPES = [(1, 7, 12), (3, 13, 5), (2, 33, 65), (1, 1, 9), (2, 5, 1), (1, 1, 1), (1, 128, 27),
          (1, 64, 300), (1, 300, 20), (1, 37, 301), (3, 33, 3), (2, 0, 5), (2, 5, 0), (0, 4, 4)]
# n_iter = 0 only evaluates sigma; 2 runs the native CPU kernel's first, middle and last passes.
N_ITERS = [0, 2]


def make_group(G, R, C, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    """W [G, R, C] normals and unit u [G, R], v [G, C] (drawn in float64 on the CPU, then
    rounded and moved: the same values on every target)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(G, R, C, generator=gen, dtype=torch.float64) * scale
    u = F.normalize(torch.randn(G, R, generator=gen, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(G, C, generator=gen, dtype=torch.float64), dim=1)
    return tuple(t.to(device=device, dtype=dtype) for t in (W, u, v))


def reference(W, u, v, n_iter, eps=DEFAULT_EPS):
    """(sigma, u, v) of the specification, in float64, on copies of the inputs."""
    u, v = u.detach().double().clone(), v.detach().double().clone()
    return _power_iteration_eager(W.detach().double(), u, v, n_iter, eps), u, v


def assert_matches(got, want, msg=""):
    """(sigma, u, v) of a kernel against those of :func:`reference`, within TOL[dtype]."""
    for name, a, b in zip(("sigma", "u", "v"), got, want):
        assert_close(a, b, TOL, f"{msg} {name}")


def clones(ts):
    return [t.clone() for t in ts]


# ------------------------------------------------------------------------------ values

@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("n_iter", N_ITERS)
def test_matches_reference(kernel, dtype, n_iter):
    kernel.require("power_iteration_")
    for shape in SHAPES:
        W, u, v = make_group(*shape, dtype=dtype, device=kernel.device, seed=sum(shape))
        want = reference(W, u, v, n_iter)
        u0, v0 = u.clone(), v.clone()
        u_ptr, v_ptr = u.data_ptr(), v.data_ptr()
        sigma = power_iteration_(W, u, v, n_iter, backend=kernel.backend)
        assert sigma.shape == (shape[0],) and sigma.dtype == dtype
        assert sigma.device.type == kernel.device
        assert u.data_ptr() == u_ptr and v.data_ptr() == v_ptr  # updated in place
        assert_matches((sigma, u, v), want, f"{shape}")
        if n_iter > 0 and shape[0] > 0 and min(shape[1:]) > 1:  # (a 1-vector stays +-1)
            assert not torch.equal(u, u0) and not torch.equal(v, v0), f"{shape}"


def gapped(G, R, C, dtype, device, top=3.0):
    """[G, R, C] matrices with singular values top, 1, ..., 1/k (so the power iteration
    converges by a factor 1/top**2 per iteration) and 2-norm ``top``."""
    gen = torch.Generator().manual_seed(9)
    k = min(R, C)
    U = torch.linalg.qr(torch.randn(G, R, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(G, C, k, generator=gen, dtype=torch.float64))[0]
    s = torch.cat([torch.tensor([top], dtype=torch.float64),
                   1.0 / torch.arange(1, k, dtype=torch.float64)])
    return (U @ torch.diag(s) @ V.transpose(1, 2)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_converges_to_the_matrix_2_norm(kernel, dtype):
    # 20 iterations leave an error of about (1/9)**20 on sigma: below either dtype's rounding.
    kernel.require("power_iteration_")
    W = gapped(2, 9, 23, dtype, kernel.device)
    _, u, v = make_group(2, 9, 23, dtype=dtype, device=kernel.device)
    sigma = power_iteration_(W, u, v, 20, backend=kernel.backend)
    assert_close(sigma, torch.linalg.matrix_norm(W.double(), ord=2), TOL)


LAYOUT_FNS = {**LAYOUTS, "row-strided": lambda t: spaced(t, t.dim() - 2),
              "transposed": transposed}


@pytest.mark.parametrize("layout", LAYOUT_FNS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_layouts(kernel, layout, dtype):
    # W, u and v in the layout (the same values): strided columns, misaligned data, rows apart
    # (W's row stride 2C; u's, v's group stride 2R, 2C), transposed (W's column stride > 1).
    # The kernels read W through its strides or a copy, and write u and v in place or into
    # copies written back: into the views only.
    kernel.require("power_iteration_")
    to_layout = LAYOUT_FNS[layout]
    for shape in ((2, 12, 22), (3, 11, 7)):
        W, u, v = (to_layout(t) for t in make_group(*shape, dtype=dtype, device=kernel.device,
                                                     seed=3))
        want = reference(W, u, v, 2)
        outside = [storage_outside(u), storage_outside(v)]
        sigma = power_iteration_(W, u, v, 2, backend=kernel.backend)
        assert_matches((sigma, u, v), want, f"{shape}")
        assert_same_bits(storage_outside(u), outside[0], "outside u")
        assert_same_bits(storage_outside(v), outside[1], "outside v")


def test_tiny_norms_hit_eps(kernel):
    # ||W^T u|| and ||W v|| below eps = 1e-3: normalize divides by eps, not by the norm.
    kernel.require("power_iteration_")
    for scale in (0.0, 1e-7, 1e-4):
        W, u, v = make_group(2, 5, 7, dtype=torch.float64, device=kernel.device, scale=scale)
        want = reference(W, u, v, 2)
        sigma = power_iteration_(W, u, v, 2, backend=kernel.backend)
        assert_matches((sigma, u, v), want, f"scale {scale}")
        assert torch.isfinite(sigma).all() and torch.isfinite(u).all()
        if scale > 0:
            assert u.norm(dim=1).max() < 0.5  # the vectors shrank: eps was the divisor
    # eps reaches the kernel: a huge one shrinks u by the same factor as the reference's.
    W, u, v = make_group(2, 5, 7, dtype=torch.float64, device=kernel.device)
    want = reference(W, u, v, 1, eps=1e6)
    sigma = power_iteration_(W, u, v, 1, eps=1e6, backend=kernel.backend)
    assert_matches((sigma, u, v), want, "eps 1e6")
    assert u.norm(dim=1).max() < 1e-3


def test_nan_passes_through(kernel):
    # A NaN in one matrix makes its sigma NaN (a diverged weight must not look finite) and,
    # as in the reference's normalize, its u and v all NaN from the first normalisation on;
    # the other matrices of the group are unaffected.
    kernel.require("power_iteration_")
    W, u, v = make_group(3, 4, 5, dtype=torch.float64, device=kernel.device)
    W[0, 1, 2] = float("nan")
    for n_iter in (0, 1, 2):
        uu, vv = u.clone(), v.clone()
        want = reference(W, uu, vv, n_iter)
        sigma = power_iteration_(W, uu, vv, n_iter, backend=kernel.backend)
        assert_matches((sigma, uu, vv), want, f"n_iter {n_iter}")
        assert torch.isnan(sigma[0]) and torch.isfinite(sigma[1:]).all()


def test_spectral_norms_many_groups(kernel):
    # 67 groups (a CUDA launch takes 64: two launches) of mixed shapes, some with no matrix:
    # the raw op returns the sigmas concatenated in group order, [G_1 + ... + G_K], and the
    # public op splits them per group. (Small matrices, float32 only: the Triton backend
    # launches once per group, and its CPU interpreter takes ~10 ms per matrix and iteration.)
    kernel.require("spectral_norms")
    gen = torch.Generator().manual_seed(13)
    shapes = [tuple(s) for s in
              (torch.randint(0, 3, (66, 3), generator=gen) + torch.tensor([0, 1, 1])).tolist()]
    shapes.append((3, 40, 70))
    assert any(s[0] == 0 for s in shapes)
    groups = [make_group(*s, device=kernel.device, seed=k) for k, s in enumerate(shapes)]
    Ws, us, vs = (list(t) for t in zip(*groups))
    wants = [reference(W, u, v, 1) for W, u, v in groups]
    starts = [(u.clone(), v.clone()) for u, v in zip(us, vs)]
    sigma = kernel.ops.spectral_norms_(Ws, us, vs, 1, DEFAULT_EPS)
    assert sigma.shape == (sum(s[0] for s in shapes),) and sigma.dtype == torch.float32
    for k, (s, u, v, want) in enumerate(zip(sigma.split([s[0] for s in shapes]), us, vs,
                                            wants)):
        assert_matches((s, u, v), want, f"group {k} {shapes[k]}")
    # The public op on a few of them, an empty group among them.
    few = [k for k, s in enumerate(shapes) if s[0] == 0][:1] + [0, 1, len(shapes) - 1]
    us, vs = [starts[k][0] for k in few], [starts[k][1] for k in few]
    sigmas = spectral_norms([Ws[k] for k in few], us, vs, 1, backend=kernel.backend)
    assert len(sigmas) == len(few)
    for k, s, u, v in zip(few, sigmas, us, vs):
        assert s.shape == (shapes[k][0],)
        assert_matches((s, u, v), wants[k], f"public op, group {k} {shapes[k]}")


def test_groups_of_mixed_dtypes(kernel):
    # One call of the kernels takes one dtype: the raw op refuses a mix, a named kernel
    # backend raises ValueError, and "auto" runs the reference (every group in its own dtype).
    kernel.require("spectral_norms")
    groups = [make_group(2, 6, 11, dtype=torch.float32, device=kernel.device),
              make_group(1, 9, 4, dtype=torch.float64, device=kernel.device, seed=1)]
    Ws, us, vs = (list(t) for t in zip(*groups))
    before = clones(us) + clones(vs)
    with pytest.raises(RuntimeError, match="one dtype"):
        kernel.ops.spectral_norms_(Ws, us, vs, 2, DEFAULT_EPS)
    with pytest.raises(ValueError, match="one dtype"):
        spectral_norms(Ws, us, vs, 2, backend=kernel.backend)
    for got, old in zip(us + vs, before):
        assert_same_bits(got, old)  # refused before anything was written
    expected = [_power_iteration_eager(W, u, v, 2, DEFAULT_EPS)
                for W, u, v in zip(Ws, clones(us), clones(vs))]
    with default_backend(kernel.backend):
        sigmas = spectral_norms(Ws, us, vs, 2)  # "auto", the default set to this backend
    for s, e in zip(sigmas, expected):
        assert_same_bits(s, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_other_dtypes_run_the_reference(kernel, dtype):
    # The kernels take float32 and float64: "auto" (set to this backend) runs the reference
    # for other dtypes, in their own dtype; naming the backend raises ValueError.
    kernel.require("power_iteration_").require("spectral_norms")
    W, u, v = make_group(2, 6, 11, dtype=dtype, device=kernel.device)
    eu, ev = u.clone(), v.clone()
    expected = _power_iteration_eager(W, eu, ev, 2, DEFAULT_EPS)
    with default_backend(kernel.backend):
        sigma = power_iteration_(W, u, v, 2)
        (sigma_list,) = spectral_norms([W], [u.clone()], [v.clone()], 0)
    assert_same_bits(sigma, expected)
    assert_same_bits(u, eu)
    assert_same_bits(v, ev)
    assert_same_bits(sigma_list, _power_iteration_eager(W, u, v, 0, DEFAULT_EPS))
    for call in (lambda: power_iteration_(W, u, v, 2, backend=kernel.backend),
                 lambda: spectral_norms([W], [u], [v], 2, backend=kernel.backend)):
        with pytest.raises(ValueError, match="float32 or float64"):
            call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_raw_op_dtypes(kernel, dtype):
    # The raw ops' own dtypes: the native CUDA kernel also takes float16 / bfloat16 (computing
    # in float32, rounding u and v to the dtype after each normalisation); the native CPU and
    # the Triton kernels refuse them.
    kernel.require("power_iteration_")
    if not (kernel.backend == "native" and kernel.is_cuda):
        W, u, v = make_group(2, 33, 65, dtype=dtype, device=kernel.device, seed=6)
        with pytest.raises(RuntimeError, match="float32 or (all )?float64"):
            kernel.ops.power_iteration_(W, u, v, 2, DEFAULT_EPS)
        return
    for shape in SHAPES:
        W, u, v = make_group(*shape, dtype=dtype, device=kernel.device, seed=sum(shape))
        for n_iter in N_ITERS:
            uu, vv = u.clone(), v.clone()
            want = reference(W, uu, vv, n_iter)
            sigma = kernel.ops.power_iteration_(W, uu, vv, n_iter, DEFAULT_EPS)
            assert sigma.dtype == dtype
            assert_matches((sigma, uu, vv), want, f"{shape}, n_iter {n_iter}")


def test_long_matrix_beyond_shared_memory(kernel):
    # R + C = 70001 float32 accumulators: more than a CUDA block's shared memory holds on any
    # GPU, where the native CUDA op falls back to ATen (the Triton kernel keeps no vector in
    # shared memory, and takes it like any matrix).
    kernel.require("power_iteration_")
    if not kernel.is_cuda:
        pytest.skip("the shared-memory limit is the CUDA kernels'")
    W, _, v = make_group(1, 1, 70000, device=kernel.device, seed=14)
    u = torch.ones(1, 1, device=kernel.device)
    want = reference(W, u, v, 2)
    sigma = power_iteration_(W, u, v, 2, backend=kernel.backend)
    assert_matches((sigma, u, v), want)


# ------------------------------------------------------------------------------ autograd

def test_gradient_is_u_v_transpose(kernel):
    # d sigma_g / d W_g = u_g v_g^T with u, v as the iterations left them (snapshots: a later
    # in-place update of the caller's u, v before backward must not change the gradient); u
    # and v get no gradient.
    kernel.require("power_iteration_")
    W0, u, v = make_group(3, 6, 11, dtype=torch.float64, device=kernel.device)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=kernel.device)
    grads = []
    for backend in (kernel.backend, "eager"):
        W = W0.clone().requires_grad_()
        uu, vv = u.clone(), v.clone()
        sigma = power_iteration_(W * 2.0, uu, vv, 3, backend=backend)  # W through a graph
        assert sigma.requires_grad
        u_used, v_used = uu.clone(), vv.clone()
        power_iteration_(W.detach(), uu, vv, 2, backend=backend)  # overwrites u, v
        (sigma * weights).sum().backward()
        assert not uu.requires_grad and uu.grad is None and vv.grad is None
        expected = 2.0 * weights[:, None, None] * u_used[:, :, None] * v_used[:, None, :]
        assert_close(W.grad, expected, TOL, backend)
        grads.append(W.grad)
    assert_close(grads[0], grads[1], TOL, "kernel vs eager")


def test_no_graph_without_grad(kernel):
    kernel.require("power_iteration_")
    W, u, v = make_group(2, 4, 5, device=kernel.device)
    W.requires_grad_()
    with torch.no_grad():
        assert not power_iteration_(W, u, v, 1, backend=kernel.backend).requires_grad
    assert not power_iteration_(W.detach(), u, v, 1, backend=kernel.backend).requires_grad


def test_version_counters_of_u_and_v(kernel):
    # u and v are written in place: their version counters must move (autograd then refuses
    # a saved u or v that was overwritten), through the public and the raw ops.
    kernel.require("power_iteration_").require("spectral_norms")
    W, u, v = make_group(2, 4, 5, device=kernel.device)
    W2, u2, v2 = make_group(1, 3, 6, device=kernel.device, seed=1)
    calls = [
        lambda: power_iteration_(W, u, v, 1, backend=kernel.backend),
        lambda: spectral_norms([W, W2], [u, u2], [v, v2], 1, backend=kernel.backend),
        lambda: kernel.ops.power_iteration_(W, u, v, 1, DEFAULT_EPS),
        lambda: kernel.ops.spectral_norms_([W, W2], [u, u2], [v, v2], 1, DEFAULT_EPS),
    ]
    for k, call in enumerate(calls):
        before = [t._version for t in (u, v, u2, v2)]
        call()
        after = [t._version for t in (u, v, u2, v2)]
        written = 4 if k % 2 else 2
        assert all(a > b for a, b in zip(after[:written], before)), f"call {k}"


# ------------------------------------------------------------------------------ aliasing

ALIASING = {
    "u rows share memory": lambda u, v: (u[:1].expand_as(u), v),
    "v rows share memory": lambda u, v: (u, v[:1].expand_as(v)),
    "u and v share memory": lambda u, v: (u, u),  # a square W, so u and v have one shape
}


@pytest.mark.parametrize("case", ALIASING)
def test_vectors_sharing_memory_are_refused(kernel, case):
    # The matrices of a group run in parallel, each writing its own row of u and v, and v is
    # written while u is read: rows sharing memory would race, and u aliasing v breaks the
    # recurrence (the schema declares them distinct, Tensor(a!) u, Tensor(b!) v).
    kernel.require("power_iteration_")
    W, u, v = make_group(3, 4, 4, device=kernel.device)
    u, v = ALIASING[case](u, v)
    with pytest.raises((RuntimeError, ValueError), match="sharing memory|memory location"):
        power_iteration_(W, u, v, 1, backend=kernel.backend)
    with pytest.raises(RuntimeError, match="sharing memory|memory location"):
        kernel.ops.power_iteration_(W, u, v, 1, DEFAULT_EPS)


# ------------------------------------------------------------------------------ errors

def test_public_ops_reject_bad_arguments(kernel):
    kernel.require("power_iteration_").require("spectral_norms")
    d, b = kernel.device, kernel.backend
    W, u, v = make_group(2, 3, 4, device=d)
    pi = power_iteration_
    cases = [
        (lambda: pi(W, torch.zeros(2, 4, device=d), v, 1, backend=b), ValueError,
         r"u must be \[G, R\]"),
        (lambda: pi(W, u, torch.zeros(3, 4, device=d), 1, backend=b), ValueError,
         r"v must be \[G, C\]"),
        (lambda: pi(W[0], u[0], v[0], 1, backend=b), ValueError, r"W must be \[G, R, C\]"),
        (lambda: pi(W, u.double(), v, 1, backend=b), ValueError, "u is torch.float64"),
        (lambda: pi(W, u.clone().requires_grad_(), v, 1, backend=b), ValueError,
         "must not require grad"),
        (lambda: pi(W, u, v, -1, backend=b), ValueError, "n_iter"),
        (lambda: pi(W, u, v, 1.0, backend=b), TypeError, "n_iter"),
        (lambda: pi(W, u, v, True, backend=b), TypeError, "n_iter"),
        (lambda: pi(W, u, v, 1, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: spectral_norms([W], [u], [], 1, backend=b), ValueError, "one u and one v"),
        (lambda: spectral_norms([W, W], [u, u], [v, torch.zeros(2, 5, device=d)], 1,
                                backend=b), ValueError, "group 1"),
        (lambda: spectral_norms([], [], [], 3, backend="bogus"), ValueError,
         "backend must be one of"),
        (lambda: spectral_norms([W], [u], [v], -2, backend=b), ValueError, "n_iter"),
    ]
    if kernel.is_cuda:
        cases += [(lambda: pi(W, u.cpu(), v, 1, backend=b), ValueError, "u is .* on cpu")]
    for k, (call, error, match) in enumerate(cases):
        with pytest.raises(error, match=match):
            call()


def test_no_groups(kernel):
    # Nothing to run: an empty list of sigmas, with any backend that runs on this machine.
    kernel.require("spectral_norms")
    assert spectral_norms([], [], [], 3, backend=kernel.backend) == []


def test_raw_ops_refuse_what_would_break_memory(kernel):
    # The raw ops write u and v through raw pointers: shapes, dtypes and group counts that do
    # not match must be refused by the kernels themselves, before anything is written.
    kernel.require("power_iteration_").require("spectral_norms")
    ops = kernel.ops
    W, u, v = make_group(2, 4, 5, device=kernel.device)
    # (A bad later group of spectral_norms_ is refused too, but the Triton launcher may have
    # run the groups before it: only single-group calls are checked for writing nothing.)
    with pytest.raises(RuntimeError):
        ops.spectral_norms_([W, W], [u.clone(), u.clone()], [v.clone(), v[:1].clone()], 1,
                            DEFAULT_EPS)
    cases = [
        lambda: ops.power_iteration_(W, v, v.clone(), 1, DEFAULT_EPS),          # u [G, C]
        lambda: ops.power_iteration_(W, u, u.clone(), 1, DEFAULT_EPS),          # v [G, R]
        lambda: ops.power_iteration_(W[:1], u, v, 1, DEFAULT_EPS),              # G differs
        lambda: ops.power_iteration_(W, u.double(), v, 1, DEFAULT_EPS),         # 8-byte u
        lambda: ops.power_iteration_(W, u, v, -1, DEFAULT_EPS),
        lambda: ops.spectral_norms_([W], [u], [], 1, DEFAULT_EPS),
    ]
    before = (u.clone(), v.clone())
    for k, call in enumerate(cases):
        with pytest.raises(RuntimeError):
            call()
        assert_same_bits(u, before[0], f"case {k} wrote u")
        assert_same_bits(v, before[1], f"case {k} wrote v")


def test_unavailable_triton_raises_with_the_reason(monkeypatch):
    import vaebm_fast._triton as triton_status
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    W, u, v = make_group(1, 3, 4)
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        power_iteration_(W, u, v, 1, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        spectral_norms([W], [u], [v], 1, backend="triton")


def test_auto_takes_the_native_kernels_on_the_cpu(native):
    # Measured faster than the reference (benchmarks/results/ops_cpu.md); Triton only runs on
    # the CPU in its interpreter, which "auto" never picks.
    for op in OPS:
        assert _dispatch.resolve_backend(op, "auto", "cpu") == "native"


# ------------------------------------------------------------------------------ torch.library

def test_opcheck(kernel):
    kernel.require("power_iteration_").require("spectral_norms")
    for dtype in KERNEL_DTYPES:
        W, u, v = make_group(2, 5, 7, dtype=dtype, device=kernel.device)
        torch.library.opcheck(kernel.ops.power_iteration_.default, (W, u, v, 3, DEFAULT_EPS))
    W2, u2, v2 = make_group(1, 3, 9, dtype=dtype, device=kernel.device, seed=1)
    torch.library.opcheck(kernel.ops.power_iteration_.default,
                          (transposed(W), u.clone(), v.clone(), 0, DEFAULT_EPS))
    torch.library.opcheck(kernel.ops.spectral_norms_.default,
                          ([W, W2], [u, u2], [v, v2], 2, DEFAULT_EPS))


def regulariser_step(backend):
    """A training step's use: sigmas of two groups in one call, a weighted loss."""
    def step(W1, W2, us, vs):
        s1, s2 = spectral_norms([W1, W2], us, vs, 2, backend=backend)
        sigma = power_iteration_(W1, us[0], vs[0], 1, backend=backend)
        return s1.sum() + 0.5 * s2.sum() + sigma.sum()
    return step


def test_compiles_to_one_graph(kernel):
    # torch.compile (fullgraph, aot_eager: tracing through the fake kernels and the in-place
    # ops' functionalisation) of both public ops, forward and backward, gives the eager
    # results and writes u and v as eager does.
    kernel.require("power_iteration_").require("spectral_norms")
    W1, u1, v1 = make_group(2, 5, 7, dtype=torch.float64, device=kernel.device)
    W2, u2, v2 = make_group(3, 4, 4, dtype=torch.float64, device=kernel.device, seed=1)
    results = []
    for compile_it in (False, True):
        Ws = [W1.clone().requires_grad_(), W2.clone().requires_grad_()]
        us, vs = [u1.clone(), u2.clone()], [v1.clone(), v2.clone()]
        step = regulariser_step(kernel.backend)
        if compile_it:
            torch._dynamo.reset()
            step = torch.compile(step, backend="aot_eager", fullgraph=True)
        loss = step(*Ws, us, vs)
        loss.backward()
        results.append([loss.detach(), Ws[0].grad, Ws[1].grad, *us, *vs])
    for k, (got, want) in enumerate(zip(results[1], results[0])):
        assert_close(got, want, TOL, f"result {k}")


def test_compiles_before_any_eager_call(kernel, monkeypatch):
    kernel.require("power_iteration_")
    monkeypatch.setattr(_dispatch, "_cache", {})  # as in a fresh process
    W, u, v = make_group(2, 5, 7, device=kernel.device)
    fn = torch.compile(lambda W, u, v: power_iteration_(W, u, v, 2, backend=kernel.backend),
                       backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    want = reference(W, u, v, 2)
    assert_matches((fn(W, u, v), u, v), want)


# ------------------------------------------------------------------------------ CUDA streams

@pytest.mark.graphs
def test_cuda_graph_capture(kernel):
    # Both public ops enqueue everything on the capturing stream (no host sync, no
    # allocation outside the graph's pool); one replay from the reset vectors gives the eager
    # results (the native op's shared-memory limit is read from the device, not the stream).
    kernel.require("power_iteration_").require("spectral_norms")
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA device")
    W, u0, v0 = make_group(3, 33, 65, device="cuda")
    W2, u20, v20 = make_group(2, 7, 5, device="cuda", seed=1)
    u, v, u2, v2 = u0.clone(), v0.clone(), u20.clone(), v20.clone()

    def reset():
        for t, start in ((u, u0), (v, v0), (u2, u20), (v2, v20)):
            t.copy_(start)

    sigma = captured(lambda: power_iteration_(W, u, v, 5, backend=kernel.backend), reset)
    assert_matches((sigma, u, v), reference(W, u0, v0, 5), "power_iteration_")
    sigmas = captured(lambda: spectral_norms([W, W2], [u, u2], [v, v2], 3,
                                             backend=kernel.backend), reset)
    assert_matches((sigmas[0], u, v), reference(W, u0, v0, 3), "group 0")
    assert_matches((sigmas[1], u2, v2), reference(W2, u20, v20, 3), "group 1")


@pytest.mark.graphs
def test_side_stream(kernel):
    # The kernels run on the caller's current stream: inputs made on a busy side stream are
    # read only once written (see helpers.on_side_stream).
    kernel.require("power_iteration_").require("spectral_norms")
    if not kernel.is_cuda:
        pytest.skip("streams need a CUDA device")
    W, u, v = make_group(3, 33, 65, device="cuda")
    W2, u2, v2 = make_group(2, 7, 5, device="cuda", seed=1)

    def run():
        uu, vv, uu2, vv2 = u.clone(), v.clone(), u2.clone(), v2.clone()
        s1 = power_iteration_(W.clone(), uu, vv, 5, backend=kernel.backend)
        s2 = spectral_norms([W.clone(), W2.clone()], [uu.clone(), uu2], [vv.clone(), vv2], 3,
                            backend=kernel.backend)
        return s1, uu, vv, s2, uu2, vv2

    s1, uu, vv, s2, uu2, vv2 = on_side_stream(run)
    assert_matches((s1, uu, vv), reference(W, u, v, 5), "power_iteration_")
    assert_matches((s2[1], uu2, vv2), reference(W2, u2, v2, 3), "spectral_norms group 1")
    assert_close(s2[0], reference(W, u, v, 8)[0], TOL, "spectral_norms group 0")


# ------------------------------------------------------------------------------ regulariser

def regulariser_model(device):
    torch.manual_seed(0)
    return small_image_ebm(in_channels=3, n_channel=8).to(device)


def test_spectral_regulariser_on_the_target(kernel):
    # The energy model's regulariser with this backend as the default: all its shape groups in
    # one spectral_norms_ call of the target's namespace (no eager matrix products), and the
    # eager loss, gradients and stored vectors over a first call (5 iterations instead of 40:
    # Triton's interpreter is slow; the schedule is tested in tests/nn) and a warm one (4).
    kernel.require("spectral_norms")
    base = regulariser_model(kernel.device)
    qualified = kernel.ops.spectral_norms_.default._schema.name  # "<namespace>::spectral_norms_"
    results = []
    for backend in (kernel.backend, "eager"):
        model = copy.deepcopy(base)
        with default_backend(backend):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                loss = model.spectral_norm_loss(n_iter=5)
            loss = loss + model.spectral_norm_loss()
        if backend == kernel.backend:
            names = [event.name for event in prof.events()]
            assert names.count(qualified) == 1, sorted({n for n in names if "spectral" in n})
            assert "aten::bmm" not in names
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads, model.state_dict()))
    (loss_k, grads_k, state_k), (loss_e, grads_e, state_e) = results
    assert any(key.startswith("spectral.u_") for key in state_k)
    assert_close(loss_k, loss_e, TOL, "loss")
    assert len(grads_k) == len(grads_e) > 0
    for k, (a, b) in enumerate(zip(grads_k, grads_e)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"gradient {k}")
    for key in state_k:
        if key.startswith("spectral."):
            torch.testing.assert_close(state_k[key], state_e[key], atol=1e-5, rtol=1e-4,
                                       msg=key)
