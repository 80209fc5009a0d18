"""Fused epilogues (ebm_block_tail, nvae_cell_tail, affine_swish): native CPU kernels and Triton
kernels (in Triton's interpreter without a GPU) against the eager references; autograd (first
and second order, saved tensors), opcheck, errors, and the models that use them.

Tolerances (kernel output vs the float64 reference rounded to the dtype, on values ~N(0, 4)):
float64 1e-12 (same maths, other summation order); float32 1e-5 (sigmoid from another exp, sums
in another order); float16 4e-3 and bfloat16 3e-2 relative (the kernels compute in float32 and
round once; the reference rounds the exact value once -- one rounding step apart at most, plus
the backward reads the stored, rounded pre-activation / inputs).
"""
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaebm_fast.ops import (affine_swish, affine_swish_reference, default_backend,
                            ebm_block_tail, ebm_block_tail_backward_reference,
                            ebm_block_tail_reference, nvae_cell_tail,
                            nvae_cell_tail_backward_reference, nvae_cell_tail_reference,
                            registered_ops)
from vaebm_fast.ops import _dispatch

epi = sys.modules["vaebm_fast.ops.epilogues"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12),
       torch.float16: dict(atol=4e-3, rtol=4e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
BACKENDS = ["native", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """(backend name, device): the native kernels on the CPU, Triton on its device."""
    if request.param == "native":
        request.getfixturevalue("native")
        return "native", "cpu"
    return "triton", request.getfixturevalue("triton_device")


def make(shape, dtype=torch.float32, seed=0, device="cpu", scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def non_contiguous(t):
    """The same values in a non-contiguous layout (a slice of a wider, transposed buffer)."""
    base = torch.zeros(t.shape[:-1] + (2 * t.shape[-1] + 1,), dtype=t.dtype, device=t.device)
    view = base[..., 1::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


LAYOUTS = {"contig": lambda t: t, "strided": non_contiguous, "chlast": channels_last}


def grads_of(fn, inputs, grad_out, dtype):
    """(output, input grads) of fn(*inputs) in `dtype` for the given output gradient."""
    ins = [t.detach().to(dtype).requires_grad_() for t in inputs]
    out = fn(*ins)
    grads = torch.autograd.grad(out, ins, grad_out.to(dtype))
    return out.detach(), grads


def assert_close(actual, expected_fp64, dtype):
    torch.testing.assert_close(actual, expected_fp64.to(dtype), **TOL[dtype])


def _saved(fn, *args):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*args)
    return y, saved


# ------------------------------------------------------------------- ebm_block_tail

EBM_SHAPES = [(2, 3, 6, 10), (1, 5, 4, 2), (3, 1, 2, 2), (0, 3, 4, 6), (2, 0, 4, 4), (1, 3, 6, 14)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("downsample", [False, True], ids=["flat", "down"])
@pytest.mark.parametrize("shape", EBM_SHAPES, ids=str)
def test_ebm_block_tail_matches_reference(backend, dtype, downsample, shape):
    name, device = backend
    h, s = make(shape, dtype, 0, device), make(shape, dtype, 1, device)
    out_shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2) if downsample else shape
    g = make(out_shape, dtype, 2, device)
    out, (dh, ds) = grads_of(lambda a, b: ebm_block_tail(a, b, downsample=downsample,
                                                         backend=name), (h, s), g, dtype)
    assert out.shape == out_shape and out.dtype == dtype and out.is_contiguous()
    ref, (rh, rs) = grads_of(lambda a, b: ebm_block_tail_reference(a, b, downsample)[0], (h, s),
                             g, torch.float64)
    assert_close(out, ref, dtype)
    assert_close(dh, rh, dtype)
    assert_close(ds, rs, dtype)
    # The raw op's second output is the pre-activation.
    ns = getattr(torch.ops, "vaebm_fast" if name == "native" else "vaebm_fast_triton")
    if name == "triton":
        from vaebm_fast.triton_kernels import epilogues  # noqa: F401
    _, pre = ns.ebm_block_tail(h, s, downsample)
    assert_close(pre, ebm_block_tail_reference(h.double(), s.double(), downsample)[1], dtype)


@pytest.mark.parametrize("layout", ["strided", "chlast"])
@pytest.mark.parametrize("downsample", [False, True], ids=["flat", "down"])
def test_ebm_block_tail_non_contiguous(backend, layout, downsample):
    name, device = backend
    shape = (2, 3, 6, 10)
    h, s = make(shape, seed=3, device=device), make(shape, seed=4, device=device)
    hn, sn = LAYOUTS[layout](h), non_contiguous(s)
    g = make((2, 3, 3, 5) if downsample else shape, seed=5, device=device)
    out, grads = grads_of(lambda a, b: ebm_block_tail(a, b, downsample=downsample, backend=name),
                          (hn, sn), g, torch.float32)
    ref, rgrads = grads_of(lambda a, b: ebm_block_tail_reference(a, b, downsample)[0], (h, s),
                           g, torch.float32)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("downsample", [False, True], ids=["flat", "down"])
def test_ebm_block_tail_backward_op(backend, downsample):
    name, device = backend
    ns = torch.ops.vaebm_fast if name == "native" else _triton_ns()
    pre = make((2, 3, 3, 5), torch.float64, 6, device)
    g = make((2, 3, 3, 5), torch.float64, 7, device)
    torch.testing.assert_close(ns.ebm_block_tail_backward(g, pre, downsample),
                               ebm_block_tail_backward_reference(g, pre, downsample),
                               **TOL[torch.float64])


def test_ebm_block_tail_extreme_values(native):
    v = torch.tensor([-1e4, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e4, 3.0])
    h = v.reshape(1, 1, 2, 5).repeat(2, 3, 2, 2)
    s = torch.zeros_like(h)
    for ds in (False, True):
        out, pre = torch.ops.vaebm_fast.ebm_block_tail(h, s, ds)
        rout, rpre = ebm_block_tail_reference(h, s, ds)
        torch.testing.assert_close(out, rout, atol=1e-6, rtol=1e-6)
        d = torch.ops.vaebm_fast.ebm_block_tail_backward(torch.ones_like(pre), pre, ds)
        torch.testing.assert_close(d, ebm_block_tail_backward_reference(torch.ones_like(pre),
                                                                        pre, ds))
        assert torch.isfinite(d).all()
    nan = torch.full((1, 2, 2, 10), float("nan"))
    for ds in (False, True):
        assert torch.isnan(torch.ops.vaebm_fast.ebm_block_tail(nan, nan, ds)[0]).all()
    assert torch.isnan(torch.ops.vaebm_fast.affine_swish(nan, torch.ones(2),
                                                         torch.zeros(2))).all()
    x = v.reshape(1, 1, 10).repeat(2, 3, 1)
    torch.testing.assert_close(
        torch.ops.vaebm_fast.affine_swish(x, torch.ones(3), torch.zeros(3)),
        affine_swish_reference(x, torch.ones(3), torch.zeros(3)), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------- nvae_cell_tail

CELL_SHAPES = [(2, 3, 5, 7), (1, 4, 3, 3), (3, 2, 1, 1), (0, 3, 4, 5), (2, 3, 0, 4),
               (1, 2, 33, 35)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CELL_SHAPES, ids=str)
def test_nvae_cell_tail_matches_reference(backend, dtype, shape):
    name, device = backend
    s, h = make(shape, dtype, 0, device), make(shape, dtype, 1, device)
    gate = torch.sigmoid(make(shape[:2], torch.float64, 2)).to(dtype).to(device)
    g = make(shape, dtype, 3, device)
    for scale in (0.1, -1.7):
        out, grads = grads_of(lambda a, b, c: nvae_cell_tail(a, b, c, scale=scale, backend=name),
                              (s, h, gate), g, dtype)
        assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
        ref, rgrads = grads_of(lambda a, b, c: nvae_cell_tail_reference(a, b, c, scale),
                               (s, h, gate), g, torch.float64)
        assert_close(out, ref, dtype)
        for a, b in zip(grads, rgrads):
            assert_close(a, b, dtype)


@pytest.mark.parametrize("layout", ["strided", "chlast"])
def test_nvae_cell_tail_non_contiguous(backend, layout):
    name, device = backend
    shape = (2, 3, 5, 7)
    s, h = make(shape, seed=4, device=device), make(shape, seed=5, device=device)
    gate = make((3, 2), seed=6, device=device).t()  # [B, C] view of a [C, B] tensor
    assert not gate.is_contiguous()
    g = non_contiguous(make(shape, seed=7, device=device))
    out, grads = grads_of(lambda a, b, c: nvae_cell_tail(a, b, c, scale=0.1, backend=name),
                          (non_contiguous(s), LAYOUTS[layout](h), gate), g, torch.float32)
    ref, rgrads = grads_of(lambda a, b, c: nvae_cell_tail_reference(a, b, c, 0.1),
                           (s, h, gate.contiguous()), g, torch.float32)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_nvae_cell_tail_backward_op(backend):
    name, device = backend
    ns = torch.ops.vaebm_fast if name == "native" else _triton_ns()
    g, h = make((2, 3, 5, 7), torch.float64, 1, device), make((2, 3, 5, 7), torch.float64, 2,
                                                               device)
    gate = make((2, 3), torch.float64, 3, device)
    for a, b in zip(ns.nvae_cell_tail_backward(g, h, gate, 0.3),
                    nvae_cell_tail_backward_reference(g, h, gate, 0.3)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_nvae_cell_tail_without_gate():
    s, h = make((2, 3, 4, 5), seed=1), make((2, 3, 4, 5), seed=2)
    for backend in ("auto", "eager"):
        torch.testing.assert_close(nvae_cell_tail(s, h, None, scale=0.1, backend=backend),
                                   s + 0.1 * h)
    with pytest.raises(ValueError, match="backend must be one of"):
        nvae_cell_tail(s, h, backend="gpu")


# ------------------------------------------------------------------- affine_swish

AFFINE_SHAPES = [(2, 3, 5, 7), (1, 4, 3, 3), (5, 3), (2, 3, 11), (0, 3, 4, 4), (3, 1, 2, 2),
                 (1, 2, 33, 35), (2, 3, 2, 3, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AFFINE_SHAPES, ids=str)
def test_affine_swish_matches_reference(backend, dtype, shape):
    name, device = backend
    x = make(shape, dtype, 0, device)
    sc = make(shape[1:2], dtype, 1, device, scale=1.0)
    sh = make(shape[1:2], dtype, 2, device, scale=1.0)
    g = make(shape, dtype, 3, device)
    out, grads = grads_of(lambda a, b, c: affine_swish(a, b, c, backend=name), (x, sc, sh), g,
                          dtype)
    assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
    ref, rgrads = grads_of(affine_swish_reference, (x, sc, sh), g, torch.float64)
    assert_close(out, ref, dtype)
    for a, b in zip(grads, rgrads):
        # dscale / dshift are sums over N*H*W terms: relative to the sum of |terms|.
        if b.dim() == 1 and dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(a, b.to(dtype), atol=TOL[dtype]["atol"] * 8,
                                       rtol=TOL[dtype]["rtol"])
        else:
            assert_close(a, b, dtype)


@pytest.mark.parametrize("layout", ["strided", "chlast"])
def test_affine_swish_non_contiguous(backend, layout):
    name, device = backend
    x = make((2, 3, 5, 7), seed=8, device=device)
    sc = make((6,), seed=9, device=device)[::2]  # strided [3]
    sh = make((3,), seed=10, device=device)
    g = non_contiguous(make((2, 3, 5, 7), seed=11, device=device))
    out, grads = grads_of(lambda a, b, c: affine_swish(a, b, c, backend=name),
                          (LAYOUTS[layout](x), sc, sh), g, torch.float32)
    ref, rgrads = grads_of(affine_swish_reference, (x, sc.contiguous(), sh), g, torch.float32)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_affine_swish_empty_batch_gives_zero_parameter_grads(backend):
    name, device = backend
    x = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    sc = torch.ones(3, device=device, requires_grad=True)
    sh = torch.ones(3, device=device, requires_grad=True)
    affine_swish(x, sc, sh, backend=name).sum().backward()
    assert torch.equal(sc.grad, torch.zeros(3, device=device))
    assert torch.equal(sh.grad, torch.zeros(3, device=device))


# ------------------------------------------------------------------- BNSwish (eval)

def _bn(c=3, affine=True, seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c, affine=affine)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    if affine:
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


def test_bnswish_module_uses_the_fused_op_in_eval_only(native):
    from vaebm_fast.nn import BNSwish
    m = BNSwish(3)
    m.bn.load_state_dict(_bn().state_dict())
    x = make((2, 3, 5, 7)).requires_grad_()
    with default_backend("native"):
        m.train()
        y_train, saved_train = _saved(m, x)
        m.eval()
        y_eval, saved_eval = _saved(m, x)
    # Eval: of x's size the fused op's autograd saves only x itself (the eager path saves the
    # BN output or the sigmoid as well); the rest are [C] vectors of the folding.
    big = [t for t in saved_eval if t.numel() == x.numel()]
    assert len(big) == 1 and big[0] is x
    assert all(t.numel() == 3 for t in saved_eval if t is not x)
    assert len([t for t in saved_train if t.numel() == x.numel()]) > 1
    torch.testing.assert_close(y_eval, F.silu(m.bn(x)), atol=1e-6, rtol=1e-5)
    # Training: batch statistics (not an affine map of x with the running stats).
    m.train()
    torch.testing.assert_close(y_train, F.silu(F.batch_norm(x, None, None, m.bn.weight,
                                                            m.bn.bias, training=True)),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------- autograd, saved tensors

def _triton_ns():
    from vaebm_fast.triton_kernels import epilogues  # noqa: F401  (registers the ops)
    return torch.ops.vaebm_fast_triton


def _fp64_cases(device):
    h = make((2, 3, 4, 6), torch.float64, 0, device).requires_grad_()
    s = make((2, 3, 4, 6), torch.float64, 1, device).requires_grad_()
    gate = make((2, 3), torch.float64, 2, device).requires_grad_()
    sc = make((3,), torch.float64, 3, device).requires_grad_()
    sh = make((3,), torch.float64, 4, device).requires_grad_()
    return [
        ("ebm_flat", lambda b: (lambda a, c: ebm_block_tail(a, c, backend=b)), (h, s)),
        ("ebm_down", lambda b: (lambda a, c: ebm_block_tail(a, c, downsample=True, backend=b)),
         (h, s)),
        ("cell", lambda b: (lambda a, c, d: nvae_cell_tail(a, c, d, scale=0.3, backend=b)),
         (s, h, gate)),
        ("affine", lambda b: (lambda a, c, d: affine_swish(a, c, d, backend=b)), (h, sc, sh)),
    ]


@pytest.mark.parametrize("case", range(4), ids=["ebm_flat", "ebm_down", "cell", "affine"])
@pytest.mark.parametrize("be", ["eager", "native", "triton"])
def test_gradcheck_fp64(be, case, request):
    device = "cpu"
    if be == "native":
        request.getfixturevalue("native")
    elif be == "triton":
        device = request.getfixturevalue("triton_device")
    _, make_fn, inputs = _fp64_cases(device)[case]
    fn = make_fn(be)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_saved_tensors_are_minimal(backend):
    name, device = backend
    h = make((2, 3, 4, 6), device=device).requires_grad_()
    s = make((2, 3, 4, 6), seed=1, device=device).requires_grad_()
    gate = make((2, 3), seed=2, device=device).requires_grad_()
    sc, sh = make((3,), seed=3, device=device).requires_grad_(), make((3,), seed=4,
                                                                      device=device)
    for ds in (False, True):
        out, saved = _saved(lambda a, b: ebm_block_tail(a, b, downsample=ds, backend=name), h, s)
        assert len(saved) == 1 and saved[0].shape == out.shape  # pre only
        if ds:
            assert saved[0].numel() * 4 == h.numel()
    _, saved = _saved(lambda a, b, c: nvae_cell_tail(a, b, c, backend=name), s, h, gate)
    assert len(saved) == 2 and saved[0] is h and saved[1] is gate
    _, saved = _saved(lambda a, b, c: affine_swish(a, b, c, backend=name), h, sc, sh)
    assert len(saved) == 3 and saved[0] is h and saved[1] is sc and saved[2] is sh
    # The eager reference saves more (h + skip and the sigmoid, at least).
    _, saved = _saved(lambda a, b: ebm_block_tail(a, b, backend="eager"), h, s)
    assert len(saved) > 1


def test_pre_output_gradient_flows(native):
    # Gradients through both outputs of the raw op (the wrapper only uses `out`).
    h = make((2, 3, 4, 6), torch.float64).requires_grad_()
    s = make((2, 3, 4, 6), torch.float64, 1).requires_grad_()
    for ds in (False, True):
        def f(a, b):
            out, pre = torch.ops.vaebm_fast.ebm_block_tail(a, b, ds)
            return out * 2 + pre ** 2
        assert torch.autograd.gradcheck(f, (h, s))


def test_channels_last_auto_keeps_the_layout(native):
    # FastSampler's CPU models run channels-last; there "auto" takes the eager references
    # (the kernels would hand back row-major outputs), which keep the layout.
    cl = torch.channels_last
    h = make((2, 6, 4, 6)).contiguous(memory_format=cl)
    s = make((2, 6, 4, 6), seed=1).contiguous(memory_format=cl)
    gate, sc, sh = make((2, 6), seed=2), make((6,), seed=3), make((6,), seed=4)
    cases = [(lambda: ebm_block_tail(h, s), ebm_block_tail_reference(h, s, False)[0]),
             (lambda: ebm_block_tail(h, s, downsample=True),
              ebm_block_tail_reference(h, s, True)[0]),
             (lambda: nvae_cell_tail(s, h, gate), nvae_cell_tail_reference(s, h, gate, 0.1)),
             (lambda: affine_swish(h, sc, sh), affine_swish_reference(h, sc, sh))]
    for fn, want in cases:
        out = fn()
        assert out.is_contiguous(memory_format=cl) and not out.is_contiguous()
        torch.testing.assert_close(out, want, **TOL[torch.float32])
    # A named kernel backend still runs (through row-major copies), with the same values.
    out = nvae_cell_tail(s, h, gate, backend="native")
    torch.testing.assert_close(out, cases[2][1], **TOL[torch.float32])


# ------------------------------------------------------------------- opcheck

def _opcheck_cases(device):
    h = make((2, 3, 4, 6), device=device).requires_grad_()
    s = make((2, 3, 4, 6), seed=1, device=device).requires_grad_()
    g_pre = make((2, 3, 2, 3), seed=2, device=device).requires_grad_()
    pre = make((2, 3, 2, 3), seed=3, device=device).requires_grad_()
    gate = make((2, 3), seed=4, device=device).requires_grad_()
    sc = make((3,), seed=5, device=device).requires_grad_()
    sh = make((3,), seed=6, device=device).requires_grad_()
    x2 = make((5, 3), seed=7, device=device).requires_grad_()
    return [
        ("ebm_block_tail", (h, s, True)),
        ("ebm_block_tail", (h.detach().transpose(2, 3), s.detach().transpose(2, 3), False)),
        ("ebm_block_tail_backward", (g_pre, pre, True)),
        ("ebm_block_tail_backward", (h, s, False)),
        ("nvae_cell_tail", (s, h, gate, 0.1)),
        ("nvae_cell_tail_backward", (s, h, gate, 0.1)),
        ("affine_swish", (h, sc, sh)),
        ("affine_swish", (x2, sc, sh)),
        ("affine_swish_backward", (s, h, sc, sh)),
    ]


def test_opcheck_native(native):
    for name, args in _opcheck_cases("cpu"):
        torch.library.opcheck(getattr(torch.ops.vaebm_fast, name).default, args)


def test_opcheck_triton(triton_device):
    ns = _triton_ns()
    for name, args in _opcheck_cases(triton_device):
        torch.library.opcheck(getattr(ns, name).default, args)


# ------------------------------------------------------------------- errors and dispatch

def test_bad_inputs():
    h = torch.zeros(2, 3, 4, 6)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ebm_block_tail(h, [0.0])
    with pytest.raises(ValueError, match="shape"):
        ebm_block_tail(h, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="dtype"):
        ebm_block_tail(h, h.double())
    with pytest.raises(ValueError, match="even H and W"):
        ebm_block_tail(torch.zeros(2, 3, 5, 6), torch.zeros(2, 3, 5, 6), downsample=True)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ebm_block_tail(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="is on meta"):
        ebm_block_tail(h, torch.zeros(2, 3, 4, 6, device="meta"))
    with pytest.raises(ValueError, match="floating"):
        ebm_block_tail(h.long(), h.long())
    with pytest.raises(ValueError, match="gate must have shape"):
        nvae_cell_tail(h, h, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="dtype"):
        nvae_cell_tail(h, h, torch.zeros(2, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="scale must have shape"):
        affine_swish(h, torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 dims"):
        affine_swish(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        affine_swish(h, torch.zeros(3), torch.zeros(3), backend="cuda")


def test_native_ops_check_their_arguments(native):
    ops = torch.ops.vaebm_fast
    h = torch.zeros(2, 3, 4, 6)
    with pytest.raises(RuntimeError, match="even H and W"):
        ops.ebm_block_tail(torch.zeros(2, 3, 5, 6), torch.zeros(2, 3, 5, 6), True)
    with pytest.raises(RuntimeError, match="shape"):
        ops.ebm_block_tail(h, torch.zeros(2, 3, 4, 5), False)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.ebm_block_tail_backward(h, h.double(), False)
    with pytest.raises(RuntimeError, match="gate must have shape"):
        ops.nvae_cell_tail(h, h, torch.zeros(3, 2), 0.1)
    with pytest.raises(RuntimeError, match="float"):
        ops.nvae_cell_tail(h.long(), h.long(), torch.zeros(2, 3).long(), 0.1)
    with pytest.raises(RuntimeError, match="shift must have shape"):
        ops.affine_swish(h, torch.zeros(3), torch.zeros(2))
    with pytest.raises(RuntimeError, match="shape"):
        ops.affine_swish_backward(torch.zeros(2, 3), h, torch.zeros(3), torch.zeros(3))


def test_registered_with_native_and_triton():
    assert {"ebm_block_tail", "nvae_cell_tail", "affine_swish"} <= set(registered_ops())
    for op in ("ebm_block_tail", "nvae_cell_tail", "affine_swish"):
        spec = _dispatch._ops[op]
        assert spec.native == f"vaebm_fast::{op}" and spec.triton
        # "auto" on the CPU never picks the Triton interpreter.
        assert _dispatch.resolve_backend(op, "auto", "cpu") in ("native", "eager")


def test_auto_follows_the_measured_cpu_preference(native):
    # See the measurements next to _AUTO_ORDER_* in vaebm_fast/ops/epilogues.py.
    for op in ("nvae_cell_tail", "ebm_block_tail", "affine_swish"):
        assert _dispatch.resolve_backend(op, "auto", "cpu") == "native"
    h = make((2, 3, 4, 6)).requires_grad_()
    gate = make((2, 3), seed=1).requires_grad_()
    assert len(_saved(lambda a, b: nvae_cell_tail(a, a, b), h, gate)[1]) == 2  # the op's autograd
    assert len(_saved(lambda a: ebm_block_tail(a, a), h)[1]) == 1  # pre only: the op's autograd


def test_eager_backend_with_int_and_meta():
    # The reference runs for any device; backend="native" refuses dtypes it does not take.
    h = torch.zeros(2, 3, 4, 6, device="meta")
    assert ebm_block_tail(h, h, downsample=True, backend="eager").shape == (2, 3, 2, 3)


# ------------------------------------------------------------------- models

def _compare_backends(run, backends=("native", "eager"), atol=1e-5, rtol=1e-4):
    results = []
    for be in backends:
        with default_backend(be):
            results.append(run())
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=rtol)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_energy_model_native_matches_eager(native, one_thread):
    from vaebm_fast.models import official_ebm
    torch.manual_seed(0)
    model = official_ebm("cifar32", n_channel=8)
    x = torch.rand(2, 3, 32, 32)

    def run():
        xi = x.clone().requires_grad_()
        energy = model(xi).sum()
        return energy.detach(), torch.autograd.grad(energy, [xi] + list(model.parameters()))
    _compare_backends(run)


def test_resblock_tail_is_the_fused_op(native):
    from vaebm_fast.models.energy import ResBlock
    torch.manual_seed(0)
    block = ResBlock(4, 6, downsample=True)
    x = torch.randn(2, 4, 6, 6)
    with default_backend("native"):
        y = block(x)
    h = block.conv2(F.silu(block.conv1(x)) / 1.1)
    expected = F.avg_pool2d(h + block.skip(x), 2)
    torch.testing.assert_close(y, F.silu(expected) / 1.1, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_nvae_native_matches_eager(native, one_thread, train):
    from vaebm_fast.models.nvae import HierarchicalVAE, HierarchicalVAEConfig
    torch.manual_seed(0)
    model = HierarchicalVAE(HierarchicalVAEConfig.preset("tiny"))
    model.train()
    with torch.no_grad():  # BN running statistics away from their init values
        for _ in range(2):
            model.elbo_terms(torch.rand(8, *model.data_shape))
    model.train(train)
    gen = torch.Generator().manual_seed(1)
    eps_z = [torch.randn(3, *s, generator=gen) for s in model.latent_shapes]
    eps_x = torch.randn(3, *model.data_shape, generator=gen)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(state)  # training mode updates BN statistics: start alike
        ez = [e.clone().requires_grad_() for e in eps_z]
        x = model.decode_eps(ez, eps_x)
        loss = (x * torch.linspace(-1, 1, x.numel()).view_as(x)).sum()
        return x.detach(), torch.autograd.grad(loss, ez + [p for p in model.parameters()],
                                               allow_unused=True)
    _compare_backends(run)


def test_se_module_api_and_keys():
    from vaebm_fast.nn import SE
    se = SE(8, 8)
    assert set(se.state_dict()) == {"se.0.weight", "se.0.bias", "se.2.weight", "se.2.bias"}
    x = make((2, 8, 3, 5))
    gate = se.gate(x)
    assert gate.shape == (2, 8)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    torch.testing.assert_close(gate, torch.sigmoid(se.se[2](torch.relu(se.se[0](x.mean((2, 3)))))))
