"""CUDA kernels of every vaebm_fast op (csrc/cuda) vs the eager references and the CPU kernels.

Skipped, with the reason, when there is no CUDA device or when the loaded library was built
without CUDA kernels (``vaebm_fast._native.status().has_cuda_kernels``; a CPU-only torch or no
nvcc at build time). ``VAEBM_FAST_REQUIRE_NATIVE=1`` turns the second skip into a failure.

Covered: every dtype (float16 / bfloat16 / float32 / float64); odd sizes; non-contiguous and
misaligned (storage offset 1, the kernels' scalar paths) inputs; empty tensors;
torch.library.opcheck. (The Philox and Langevin kernels are tested on every target, CUDA
included, in test_rng.py and test_langevin.py.)
"""
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


# ------------------------------------------------------------------------------------ Swish

SWISH_SHAPES = [(1031,), (3, 5, 7), (2, 64), (0, 4), (1,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SWISH_SHAPES, ids=str)
def test_swish(ops, dtype, shape):
    from vaebm_fast.ops import swish_backward_reference, swish_reference
    x64 = randn(shape, torch.float64, seed=1, scale=4.0)
    g64 = randn(shape, torch.float64, seed=2)
    x, g = x64.to(dtype), g64.to(dtype)
    for scale in (1.0, 1 / 1.1):
        y_ref = swish_reference(x.double(), scale).to(dtype)
        dx_ref = swish_backward_reference(g.double(), x.double(), scale).to(dtype)
        for name, xl in layouts(x):
            y = ops.swish_forward(xl, scale)
            assert y.is_contiguous() and y.dtype == dtype and y.shape == x.shape
            torch.testing.assert_close(y, y_ref, **TOL[dtype], msg=lambda m: f"{name}: {m}")
            for gname, gl in layouts(g):
                dx = ops.swish_backward(gl, xl, scale)
                assert dx.is_contiguous() and dx.shape == x.shape
                torch.testing.assert_close(dx, dx_ref, **TOL[dtype],
                                           msg=lambda m: f"x {name}, grad {gname}: {m}")


def test_swish_extremes(ops):
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, float("inf"), float("-inf"),
                      float("nan")], device="cuda")
    from vaebm_fast.ops import swish_reference
    torch.testing.assert_close(ops.swish_forward(x, 1.0), swish_reference(x), equal_nan=True)


# ------------------------------------------------------------------------------------ replay

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_shape", [(3, 5), (4, 8), (1,), (2, 2)], ids=str)
def test_replay_gather(ops, dtype, row_shape):
    from vaebm_fast.ops import replay_gather_reference
    N, B = 7, 9
    buffer = randn((N, *row_shape), dtype, seed=3)
    index = torch.tensor([6, 0, 2, 2, 5, 1, 3, 4, 0], device="cuda")
    reinit = torch.tensor([False, True, False, False, True, True, False, False, True],
                          device="cuda")
    index[reinit] = 123456  # not read for reinit rows
    P = math.prod(row_shape)
    tol = dict(atol=NORMAL_ATOL, rtol=0) if dtype in (torch.float32, torch.float64) else TOL[dtype]
    views = [("contiguous", buffer), ("row-strided", torch.stack([buffer, buffer], dim=1)[:, 0]),
             ("misaligned", misaligned(buffer))]
    if len(row_shape) == 2:
        views.append(("transposed rows", buffer.transpose(1, 2).contiguous().transpose(1, 2)))
    for offset in (0, 1, 2**33 + 3):
        expected, end = replay_gather_reference(buffer, index.masked_fill(reinit, 0), reinit,
                                                seed=11, offset=offset)
        assert end == offset + B * P
        for name, buf in views:
            out = ops.replay_gather(buf, index, reinit, 11, offset)
            assert out.is_contiguous() and out.shape == (B, *row_shape) and out.dtype == dtype
            keep = ~reinit
            assert torch.equal(out[keep], expected[keep]), name  # copies are bit-exact
            torch.testing.assert_close(out[reinit].double(), expected[reinit].double(), **tol,
                                       msg=lambda m: f"{name}, offset {offset}: {m}")
    # Empty batch and empty rows.
    assert ops.replay_gather(buffer, index[:0], reinit[:0], 1, 0).shape == (0, *row_shape)
    empty_rows = torch.empty(N, 0, dtype=dtype, device="cuda")
    assert ops.replay_gather(empty_rows, index, reinit, 1, 0).shape == (B, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_shape", [(3, 5), (4, 8), (1,)], ids=str)
def test_replay_scatter(ops, dtype, row_shape):
    N = 11
    index = torch.tensor([10, 0, 3, 7, 4], device="cuda")
    values = randn((5, *row_shape), dtype, seed=4)
    base = randn((N, *row_shape), dtype, seed=5)
    expected = base.clone().index_copy_(0, index, values)
    for vname, vals in layouts(values):
        for bname in ("contiguous", "misaligned", "row-strided", "transposed"):
            if bname == "contiguous":
                buf = base.clone()
            elif bname == "misaligned":
                buf = misaligned(base)
            elif bname == "row-strided":
                buf = torch.stack([base, base], dim=1)[:, 0]
            elif len(row_shape) == 2:
                buf = base.transpose(1, 2).contiguous().transpose(1, 2)
            else:
                continue
            ops.replay_scatter_(buf, index, vals)
            assert torch.equal(buf, expected), (vname, bname)
    buf = base.clone()
    ops.replay_scatter_(buf, index[:0], values[:0])
    assert torch.equal(buf, base)


# ------------------------------------------------------------------------------------ power iteration

def _unit_rows(shape, dtype, seed):
    v = randn(shape, torch.float64, seed=seed)
    return torch.nn.functional.normalize(v, dim=1).to(dtype)


PI_TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10),
          torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}
PI_SHAPES = [(3, 5, 7), (2, 64, 300), (1, 1, 1), (4, 33, 3), (2, 300, 20), (2, 0, 5), (0, 4, 4)]


def _eager_power_iteration(W, u, v, n_iter, eps=1e-3):
    from vaebm_fast.ops.power_iteration import _power_iteration_eager
    return _power_iteration_eager(W, u, v, n_iter, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PI_SHAPES, ids=str)
@pytest.mark.parametrize("n_iter", [0, 1, 5])
def test_power_iteration(ops, dtype, shape, n_iter):
    G, R, C = shape
    W = randn(shape, torch.float64, seed=6).to(dtype)
    u0, v0 = _unit_rows((G, R), dtype, 7), _unit_rows((G, C), dtype, 8)
    # Reference in float64 from the same (rounded) inputs: the kernel computes in float32 or
    # float64 and rounds u, v once per iteration, as the reference does in its dtype.
    u_ref, v_ref = u0.double().clone(), v0.double().clone()
    sigma_ref = _eager_power_iteration(W.double(), u_ref, v_ref, n_iter)
    for name, (u, v) in (("contiguous", (u0.clone(), v0.clone())),
                         ("transposed u/v", (non_contiguous(u0.clone()), non_contiguous(v0.clone())))):
        sigma = ops.power_iteration_(W, u, v, n_iter, 1e-3)
        assert sigma.shape == (G,) and sigma.dtype == dtype
        tol = PI_TOL[dtype]
        torch.testing.assert_close(sigma.double(), sigma_ref, **tol, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(u.double(), u_ref, **tol, msg=lambda m: f"{name} u: {m}")
        torch.testing.assert_close(v.double(), v_ref, **tol, msg=lambda m: f"{name} v: {m}")


def test_power_iteration_converges(ops):
    # A matrix with known singular values 3 > 2 > ... > 0.1: sigma -> 3.
    q1, _ = torch.linalg.qr(randn((40, 40), torch.float64, seed=9))
    q2, _ = torch.linalg.qr(randn((70, 40), torch.float64, seed=10))
    s = torch.cat([torch.tensor([3.0], dtype=torch.float64, device="cuda"),
                   torch.linspace(2.0, 0.1, 39, dtype=torch.float64, device="cuda")])
    W = (q1 @ torch.diag(s) @ q2.t()).unsqueeze(0).float()
    u, v = _unit_rows((1, 40), torch.float32, 11), _unit_rows((1, 70), torch.float32, 12)
    sigma = ops.power_iteration_(W, u, v, 200, 1e-3)
    assert abs(sigma.item() - 3.0) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_norms_one_launch_many_groups(ops, dtype):
    # 70 groups (> 64 per launch) of mixed shapes, some empty; the sigmas come back
    # concatenated in group order, [G_1 + ... + G_K].
    gen = torch.Generator().manual_seed(13)
    shapes = [(int(g), int(r), int(c)) for g, r, c in
              torch.randint(0, 5, (70, 3), generator=gen).add(torch.tensor([0, 1, 1])).tolist()]
    Ws = [randn(s, dtype, seed=k) for k, s in enumerate(shapes)]
    us = [_unit_rows(s[:2], dtype, 100 + k) for k, s in enumerate(shapes)]
    vs = [_unit_rows((s[0], s[2]), dtype, 200 + k) for k, s in enumerate(shapes)]
    refs = []
    for W, u, v in zip(Ws, us, vs):
        u_ref, v_ref = u.double().clone(), v.double().clone()
        refs.append((_eager_power_iteration(W.double(), u_ref, v_ref, 3), u_ref, v_ref))
    sigmas = ops.spectral_norms_(Ws, us, vs, 3, 1e-3)
    assert sigmas.dtype == dtype and sigmas.shape == (sum(s[0] for s in shapes),)
    tol = PI_TOL[dtype]
    for k, (sigma, (s_ref, u_ref, v_ref)) in enumerate(
            zip(sigmas.split([s[0] for s in shapes]), refs)):
        torch.testing.assert_close(sigma.double(), s_ref, **tol, msg=lambda m: f"group {k}: {m}")
        torch.testing.assert_close(us[k].double(), u_ref, **tol)
        torch.testing.assert_close(vs[k].double(), v_ref, **tol)
    # No groups at all: the public wrapper returns [] (the raw op, given only empty lists, has
    # no tensor to dispatch on).
    from vaebm_fast.ops import spectral_norms
    assert spectral_norms([], [], [], 3) == []
    other = torch.float64 if dtype == torch.float32 else torch.float32
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.spectral_norms_([Ws[0], Ws[1].to(other)], [us[0], us[1].to(other)],
                            [vs[0], vs[1].to(other)], 1, 1e-3)


def test_power_iteration_too_large_for_shared_memory_falls_back(ops):
    # R + C = 70001 float32 accumulators exceed every GPU's shared memory: ATen fallback.
    W = randn((1, 1, 70000), torch.float32, seed=14)
    u, v = torch.ones(1, 1, device="cuda"), _unit_rows((1, 70000), torch.float32, 15)
    u_ref, v_ref = u.double().clone(), v.double().clone()
    s_ref = _eager_power_iteration(W.double(), u_ref, v_ref, 2)
    sigma = ops.power_iteration_(W, u, v, 2, 1e-3)
    torch.testing.assert_close(sigma.double(), s_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(v.double(), v_ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ epilogues

def _epilogues():
    return pytest.importorskip("vaebm_fast.ops.epilogues",
                               reason="vaebm_fast.ops.epilogues (the eager references) is missing")


def _grads_of(fn, inputs, grad_outputs):
    """Gradients of fn(*inputs) (float64 copies) w.r.t. the inputs, by autograd."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    pairs = [(o, g.double()) for o, g in zip(outs, grad_outputs) if g is not None]
    return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                               allow_unused=True)


EBM_SHAPES = [((2, 3, 6, 10), True), ((2, 3, 6, 10), False), ((3, 5, 7, 9), False),
              ((1, 1, 2, 2), True), ((2, 4, 8, 16), True), ((0, 3, 4, 4), True),
              ((0, 3, 4, 4), False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, downsample", EBM_SHAPES, ids=str)
def test_ebm_block_tail(ops, dtype, shape, downsample):
    epi = _epilogues()
    h, skip = randn(shape, dtype, seed=16, scale=2.0), randn(shape, dtype, seed=17)
    out_ref, pre_ref = epi.ebm_block_tail_reference(h.double(), skip.double(), downsample)
    for hname, hl in layouts(h) + [("channels_last", h.contiguous(memory_format=torch.channels_last))]:
        out, pre = ops.ebm_block_tail(hl, non_contiguous(skip), downsample)
        assert out.is_contiguous() and pre.is_contiguous() and out.dtype == dtype
        assert out.shape == pre.shape == pre_ref.shape
        torch.testing.assert_close(pre, pre_ref.to(dtype), **TOL[dtype], msg=lambda m: f"{hname}: {m}")
        torch.testing.assert_close(out, out_ref.to(dtype), **TOL[dtype], msg=lambda m: f"{hname}: {m}")
    # Backward at the kernel's pre; reference: autograd through the eager forward in float64
    # (d h; d skip is the same), computed at float64 h + skip of the rounded inputs.
    grad = randn(pre_ref.shape, dtype, seed=18)
    (dh_ref,) = _grads_of(lambda a: epi.ebm_block_tail_reference(a, skip.double(), downsample)[0],
                          [h], [grad])
    pre_k = pre_ref.to(dtype)
    for name, gl in layouts(grad):
        d = ops.ebm_block_tail_backward(gl, pre_k, downsample)
        assert d.shape == h.shape and d.is_contiguous()
        # The kernel differentiates at the rounded pre; compare against the reference formula
        # at that pre (exact in float64) and against autograd for float32 / float64.
        d_formula = epi.ebm_block_tail_backward_reference(grad.double(), pre_k.double(), downsample)
        torch.testing.assert_close(d, d_formula.to(dtype), **TOL[dtype], msg=lambda m: f"{name}: {m}")
        if dtype in (torch.float32, torch.float64) and dh_ref is not None:
            torch.testing.assert_close(d.double(), dh_ref, atol=1e-5, rtol=1e-5)


NVAE_SHAPES = [(2, 3, 5, 7), (2, 4, 8, 8), (1, 1, 1, 1), (3, 2, 16, 16), (0, 3, 4, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NVAE_SHAPES, ids=str)
def test_nvae_cell_tail(ops, dtype, shape):
    epi = _epilogues()
    skip, h = randn(shape, dtype, seed=19), randn(shape, dtype, seed=20)
    gate = torch.sigmoid(randn(shape[:2], torch.float64, seed=21)).to(dtype)
    scale = 0.1
    ref = epi.nvae_cell_tail_reference(skip.double(), h.double(), gate.double(), scale)
    for name, hl in layouts(h):
        out = ops.nvae_cell_tail(non_contiguous(skip), hl, gate, scale)
        assert out.is_contiguous() and out.shape == h.shape and out.dtype == dtype
        torch.testing.assert_close(out, ref.to(dtype), **TOL[dtype], msg=lambda m: f"{name}: {m}")
    grad = randn(shape, dtype, seed=22)
    _, dh_ref, dgate_ref = _grads_of(lambda s, a, g: epi.nvae_cell_tail_reference(s, a, g, scale),
                                     [skip, h, gate], [grad])
    for name, gl in layouts(grad):
        for hname, hl in layouts(h):
            dh, dgate = ops.nvae_cell_tail_backward(gl, hl, non_contiguous(gate), scale)
            assert dh.shape == h.shape and dgate.shape == gate.shape and dgate.dtype == dtype
            torch.testing.assert_close(dh, dh_ref.to(dtype), **TOL[dtype],
                                       msg=lambda m: f"grad {name}, h {hname}: {m}")
            # dgate sums H*W products: tolerance grows with the sum's length.
            tol = dict(TOL[dtype])
            tol["atol"] *= max(1.0, math.sqrt(shape[2] * shape[3]))
            torch.testing.assert_close(dgate, dgate_ref.to(dtype), **tol,
                                       msg=lambda m: f"dgate, grad {name}, h {hname}: {m}")


AFFINE_SHAPES = [(2, 3, 5, 7), (4, 6), (2, 8, 4, 4), (3, 2, 2, 3, 5), (0, 3, 4), (64, 4, 32, 32)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", AFFINE_SHAPES, ids=str)
def test_affine_swish(ops, dtype, shape):
    epi = _epilogues()
    C = shape[1]
    x = randn(shape, dtype, seed=23, scale=2.0)
    scale = (1 + 0.3 * randn((C,), torch.float64, seed=24)).to(dtype)
    shift = (0.5 * randn((C,), torch.float64, seed=25)).to(dtype)
    ref = epi.affine_swish_reference(x.double(), scale.double(), shift.double())
    xs = layouts(x)
    if x.dim() == 4:
        xs.append(("channels_last", x.contiguous(memory_format=torch.channels_last)))
    for name, xl in xs:
        out = ops.affine_swish(xl, scale, shift)
        assert out.is_contiguous() and out.shape == x.shape and out.dtype == dtype
        torch.testing.assert_close(out, ref.to(dtype), **TOL[dtype], msg=lambda m: f"{name}: {m}")
    grad = randn(shape, dtype, seed=26)
    dx_ref, dscale_ref, dshift_ref = epi.affine_swish_backward_reference(
        grad.double(), x.double(), scale.double(), shift.double())
    per_channel = max(1, x.numel() // max(C, 1))
    sum_tol = dict(TOL[dtype])
    sum_tol["atol"] *= max(1.0, math.sqrt(per_channel))
    for name, xl in xs:
        dx, dscale, dshift = ops.affine_swish_backward(non_contiguous(grad) if grad.dim() >= 2
                                                       else grad, xl, scale, shift)
        assert dx.shape == x.shape and dscale.shape == dshift.shape == (C,)
        assert dscale.dtype == dshift.dtype == dtype
        torch.testing.assert_close(dx, dx_ref.to(dtype), **TOL[dtype], msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(dscale, dscale_ref.to(dtype), **sum_tol,
                                   msg=lambda m: f"dscale {name}: {m}")
        torch.testing.assert_close(dshift, dshift_ref.to(dtype), **sum_tol,
                                   msg=lambda m: f"dshift {name}: {m}")


def test_affine_swish_backward_deterministic(ops):
    x = randn((16, 8, 32, 32), torch.float32, seed=27)
    grad = randn(x.shape, torch.float32, seed=28)
    scale, shift = torch.ones(8, device="cuda"), torch.zeros(8, device="cuda")
    first = ops.affine_swish_backward(grad, x, scale, shift)
    for _ in range(3):
        again = ops.affine_swish_backward(grad, x, scale, shift)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ opcheck

def test_opcheck_swish_replay(ops):
    x = randn((3, 5), torch.float32, seed=1).requires_grad_()
    opcheck(ops.swish_forward.default, (x, 1.0))
    opcheck(ops.swish_backward.default, (randn((3, 5), seed=2), x.detach(), 1 / 1.1))
    buffer = randn((6, 2, 3), torch.float32, seed=3)
    index = torch.tensor([5, 0, 2], device="cuda")
    reinit = torch.tensor([False, True, False], device="cuda")
    opcheck(ops.replay_gather.default, (buffer, index, reinit, 3, 5))
    opcheck(ops.replay_scatter_.default, (buffer.clone(), index, randn((3, 2, 3), seed=4)))


def test_opcheck_power_iteration(ops):
    W = randn((2, 5, 7), torch.float32, seed=5)
    u, v = _unit_rows((2, 5), torch.float32, 6), _unit_rows((2, 7), torch.float32, 7)
    opcheck(ops.power_iteration_.default, (W, u, v, 2, 1e-3))
    W2 = randn((3, 4, 4), torch.float32, seed=8)
    opcheck(ops.spectral_norms_.default,
            ([W, W2], [u, _unit_rows((3, 4), torch.float32, 9)],
             [v, _unit_rows((3, 4), torch.float32, 10)], 2, 1e-3))


def test_opcheck_epilogues(ops):
    _epilogues()  # registers the fakes and autograd of the epilogue ops
    h = randn((2, 3, 4, 6), seed=11).requires_grad_()
    skip = randn((2, 3, 4, 6), seed=12).requires_grad_()
    opcheck(ops.ebm_block_tail.default, (h, skip, True))
    opcheck(ops.ebm_block_tail.default, (h, skip, False))
    opcheck(ops.ebm_block_tail_backward.default, (randn((2, 3, 2, 3), seed=13),
                                                  randn((2, 3, 2, 3), seed=14), True))
    gate = torch.rand(2, 3, device="cuda", requires_grad=True)
    opcheck(ops.nvae_cell_tail.default, (skip, h, gate, 0.1))
    opcheck(ops.nvae_cell_tail_backward.default, (randn((2, 3, 4, 6), seed=15), h.detach(),
                                                  gate.detach(), 0.1))
    scale = torch.rand(3, device="cuda", requires_grad=True)
    shift = torch.rand(3, device="cuda", requires_grad=True)
    opcheck(ops.affine_swish.default, (h, scale, shift))
    opcheck(ops.affine_swish_backward.default, (randn((2, 3, 4, 6), seed=16), h.detach(),
                                                scale.detach(), shift.detach()))
