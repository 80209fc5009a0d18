"""swish / lip_swish: native kernels vs the eager reference, autograd (first and second order,
saved tensors), opcheck, errors, and the activations of vaebm_fast.nn using the op."""
import sys

import pytest
import torch

from vaebm_fast.nn import LipSwish, Swish, activations
from vaebm_fast.ops import (default_backend, lip_swish, registered_ops, swish,
                            swish_backward_reference, swish_reference)

swish_module = sys.modules["vaebm_fast.ops.swish"]
SCALE = swish_module.LIPSWISH_SCALE

SHAPES = [(7,), (3, 5), (0,), (2, 3, 33), (1,), (1031,), (5, 0, 2), (70001,)]
FUNCS = [(swish, 1.0), (lip_swish, SCALE)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-6), torch.float64: dict(atol=1e-13, rtol=1e-13),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def make(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func, scale", FUNCS, ids=["swish", "lip_swish"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_native_matches_reference(native, dtype, func, scale, shape):
    x = make(shape, dtype)
    g = make(shape, dtype, seed=1)
    xn = x.clone().requires_grad_()
    y = func(xn, backend="native")
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    y.backward(g)
    # Reference in float64, rounded once: the native kernel computes fp16/bf16 in float32.
    xd = x.double().clone().requires_grad_()
    yd = swish_reference(xd, scale)
    yd.backward(g.double())
    torch.testing.assert_close(y, yd.to(dtype), **TOL[dtype])
    torch.testing.assert_close(xn.grad, xd.grad.to(dtype), **TOL[dtype])
    # And the eager path of the same call agrees with the reference in the tensor's own dtype.
    xe = x.clone().requires_grad_()
    ye = func(xe, backend="eager")
    ye.backward(g)
    loose = dict(atol=TOL[dtype]["atol"] * 4, rtol=TOL[dtype]["rtol"] * 4)
    torch.testing.assert_close(y, ye.detach(), **loose)
    torch.testing.assert_close(xn.grad, xe.grad, **loose)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_backward_op_matches_reference(native, dtype):
    x, g = make((4, 257), dtype), make((4, 257), dtype, seed=2)
    for scale in (1.0, SCALE, -0.3):
        torch.testing.assert_close(torch.ops.vaebm_fast.swish_backward(g, x, scale),
                                   swish_backward_reference(g, x, scale), **TOL[dtype])
        torch.testing.assert_close(torch.ops.vaebm_fast.swish_forward(x, scale),
                                   swish_reference(x, scale), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values(native, dtype):
    x = torch.tensor([-1e4, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e4] * 3, dtype=dtype)
    g = torch.ones_like(x)
    torch.testing.assert_close(swish(x, backend="native"), swish_reference(x), atol=1e-6,
                               rtol=1e-6)
    torch.testing.assert_close(torch.ops.vaebm_fast.swish_backward(g, x, 1.0),
                               swish_backward_reference(g, x), atol=1e-6, rtol=1e-6)
    nan = torch.full((9,), float("nan"), dtype=dtype)
    assert torch.isnan(swish(nan, backend="native")).all()
    # Infinities as in torch: swish(inf) = inf, swish(-inf) = -inf * 0 = NaN (9 of each, so the
    # vectorised loop sees them, not only the scalar tail).
    inf = torch.tensor([float("inf"), float("-inf")] * 9, dtype=dtype)
    torch.testing.assert_close(swish(inf, backend="native"), swish_reference(inf), equal_nan=True)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_non_contiguous_inputs(backend, request):
    if backend == "native":
        request.getfixturevalue("native")
    base = make((6, 10, 9), torch.float32)
    for x in (base[:, ::3], base.transpose(0, 2), base[..., 1], make((4, 1), torch.float32)
              .expand(4, 5)):
        xr = x.detach().clone().requires_grad_()
        xn = x.detach().requires_grad_()
        for func, scale in FUNCS:
            y = func(xn, backend=backend)
            assert y.shape == x.shape and (backend == "eager" or y.is_contiguous())
            torch.testing.assert_close(y, swish_reference(xr, scale), atol=1e-6, rtol=1e-6)
            g = make(y.shape, torch.float32, seed=3).t().contiguous().t() if y.dim() == 2 \
                else make(y.shape, torch.float32, seed=3)
            (dx,) = torch.autograd.grad(y, xn, g)
            (dr,) = torch.autograd.grad(swish_reference(xr, scale), xr, g)
            torch.testing.assert_close(dx, dr, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["eager", "native"])
def test_channels_last_keeps_the_layout(backend, dtype, request):
    # A channels-last model's activations (FastSampler on the CPU): output and input gradient
    # stay channels-last, so the next convolution needs no conversion. The kernel's input
    # gradient follows x whatever the output gradient's layout; eager's follows the latter.
    if backend == "native":
        request.getfixturevalue("native")
    x = make((3, 5, 4, 7), torch.float32).contiguous(memory_format=torch.channels_last)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for func, scale in FUNCS:
        for g in (make(x.shape, torch.float32, seed=5),
                  make(x.shape, torch.float32, seed=5).contiguous(memory_format=torch.channels_last)):
            xn = x.detach().to(dtype).requires_grad_()
            y = func(xn, backend=backend)
            (dx,) = torch.autograd.grad(y, xn, g.to(dtype))
            g_cl = not g.is_contiguous()
            for t in (y, dx) if backend == "native" or g_cl else (y,):
                assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
            xr = x.double().requires_grad_()
            (dr,) = torch.autograd.grad(swish_reference(xr, scale), xr, g.double())
            torch.testing.assert_close(y, swish_reference(x.double(), scale).to(dtype), **tol)
            torch.testing.assert_close(dx, dr.to(dtype), **tol)
    # Ambiguous strides (C == 1: both layouts at once) count as row-major.
    one = make((2, 1, 3, 3), torch.float32).contiguous(memory_format=torch.channels_last)
    assert swish(one, backend=backend).is_contiguous()


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("func", [swish, lip_swish])
def test_gradcheck_fp64(backend, func, request):
    if backend == "native":
        request.getfixturevalue("native")
    x = make((3, 7), torch.float64).requires_grad_()
    f = lambda t: func(t, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradcheck_backward_op(native):
    x = make((2, 9), torch.float64).requires_grad_()
    g = make((2, 9), torch.float64, seed=4).requires_grad_()
    f = lambda g_, x_: torch.ops.vaebm_fast.swish_backward(g_, x_, SCALE)  # noqa: E731
    assert torch.autograd.gradcheck(f, (g, x))
    assert torch.autograd.gradgradcheck(f, (g, x))


def _saved(fn, x):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, saved


@pytest.mark.parametrize("fn, scale", [(lambda x: swish(x, backend="native"), 1.0),
                                       (lambda x: lip_swish(x, backend="native"), SCALE),
                                       (activations.swish, 1.0), (activations.lip_swish, SCALE),
                                       (Swish(), 1.0), (LipSwish(), SCALE)])
def test_backward_saves_only_the_input(native, fn, scale):
    x = make((8, 33), torch.float32).requires_grad_()
    with default_backend("native"):  # the claim is the native path's; "auto" may prefer eager
        y, saved = _saved(fn, x)
    assert len(saved) == 1 and saved[0] is x
    y.sum().backward()
    torch.testing.assert_close(x.grad, swish_backward_reference(torch.ones_like(x), x.detach(),
                                                                scale))


def test_eager_path_is_plain_torch():
    # The eager fallback is an ordinary torch expression: x and sigmoid(x) are saved.
    x = make((5,), torch.float64).requires_grad_()
    _, saved = _saved(lambda t: swish(t, backend="eager"), x)
    assert any(s is x for s in saved)
    with default_backend("eager"):
        y, saved_default = _saved(activations.swish, x)
    assert len(saved_default) == len(saved)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)  # double backward
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(d2, s * (1 - s) * (2 + x.detach() * (1 - 2 * s)))


def test_activations_use_the_op_when_native(native):
    x = make((4, 4), torch.float32).requires_grad_()
    with default_backend("native"):
        assert len(_saved(activations.swish, x)[1]) == 1  # the op's autograd, not x * sigmoid(x)
    torch.testing.assert_close(activations.lip_swish(x), swish_reference(x, SCALE))
    torch.testing.assert_close(LipSwish()(x), swish_reference(x, SCALE))
    torch.testing.assert_close(Swish()(x), swish_reference(x))


def test_no_grad_and_int_inputs(monkeypatch):
    x = make((9,), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(swish(x), swish_reference(x))
    assert swish(torch.zeros(3, device="meta")).device.type == "meta"

    # An int tensor: "auto" runs the eager reference (the kernels take floating dtypes only),
    # whose sigmoid promotes to the default float dtype. 70 000 elements is above the size from
    # which "auto" would pick the native kernel on the CPU, so only the dtype rule sends it to
    # eager; the spy proves which backend ran.
    chosen = []
    resolve = swish_module._dispatch.resolve_backend

    def spy(*args, **kwargs):
        chosen.append(resolve(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(swish_module._dispatch, "resolve_backend", spy)
    xi = torch.arange(-35_000, 35_000) // 5_000  # int64, values -7 .. 6
    assert xi.numel() > swish_module._CPU_NATIVE_MIN_NUMEL
    for func, scale in FUNCS:
        got = func(xi)
        assert chosen[-1] == "eager"
        assert got.dtype == torch.get_default_dtype() and got.shape == xi.shape
        # Independent values: scale * v / (1 + e^-v) for each integer v, in float64.
        v = torch.arange(-7, 7, dtype=torch.float64)
        table = scale * v / (1 + torch.exp(-v))
        torch.testing.assert_close(got, table[xi + 7].to(got.dtype), rtol=1e-6, atol=1e-6)


def test_bad_inputs(native):
    with pytest.raises(TypeError, match="torch.Tensor"):
        swish([1.0, 2.0])
    with pytest.raises(ValueError, match="backend must be one of"):
        lip_swish(torch.zeros(3), backend="cuda")
    with pytest.raises(ValueError, match="native kernel takes"):
        swish(torch.zeros(3, dtype=torch.complex64), backend="native")
    # An int tensor, which "auto" sends to the eager reference, is refused by the named kernel.
    with pytest.raises(ValueError, match="takes float16, bfloat16, float32 or float64 tensors "
                                         r"\(got torch.int64\); use backend='eager'"):
        swish(torch.arange(-3, 4), backend="native")
    with pytest.raises(RuntimeError, match="shape"):
        torch.ops.vaebm_fast.swish_backward(torch.zeros(3), torch.zeros(4), 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.vaebm_fast.swish_backward(torch.zeros(3), torch.zeros(3).double(), 1.0)
    with pytest.raises(RuntimeError, match="float"):
        torch.ops.vaebm_fast.swish_forward(torch.zeros(3, dtype=torch.int64), 1.0)


def test_registered_for_info():
    assert {"swish", "lip_swish"} <= set(registered_ops())
    from vaebm_fast.info import format_info
    text = format_info()
    assert "swish" in text and "lip_swish" in text


def test_opcheck(native):
    fwd = torch.ops.vaebm_fast.swish_forward.default
    bwd = torch.ops.vaebm_fast.swish_backward.default
    for dtype in (torch.float32, torch.float64):
        x = make((3, 5), dtype).requires_grad_()
        g = make((3, 5), dtype, seed=1).requires_grad_()
        torch.library.opcheck(fwd, (x, 1.0))
        torch.library.opcheck(fwd, (x.detach().t(), SCALE))
        torch.library.opcheck(fwd, (make((0, 2), dtype), 1.0))
        torch.library.opcheck(bwd, (g, x, SCALE))
        torch.library.opcheck(bwd, (g.detach(), x.detach().t().contiguous().t(), 1.0))
        # channels-last: the fake kernel must give the real kernel's strides.
        x4 = make((2, 3, 4, 5), dtype).contiguous(memory_format=torch.channels_last)
        torch.library.opcheck(fwd, (x4.requires_grad_(), 1.0))
        torch.library.opcheck(bwd, (make((2, 3, 4, 5), dtype, seed=2), x4.detach(), SCALE))


def test_auto_follows_the_measured_cpu_preference(native):
    # On the CPU the native kernel measured slower below 64K elements, so "auto" runs the eager
    # expression there (it saves more than x) and the native kernel from 64K elements on (it
    # saves only x); a named backend or default overrides the size rule.
    threshold = sys.modules["vaebm_fast.ops.swish"]._CPU_NATIVE_MIN_NUMEL  # the module
    small = make((3,), torch.float32).requires_grad_()
    large = make((threshold,), torch.float32).requires_grad_()
    assert len(_saved(swish, small)[1]) > 1
    assert len(_saved(swish, large)[1]) == 1
    assert len(_saved(lambda t: swish(t, backend="native"), small)[1]) == 1
    with default_backend("native"):
        assert len(_saved(swish, small)[1]) == 1


def test_energy_model_native_matches_eager(native):
    # The sampler's first-order input gradient and the training weight gradients of an EBM
    # (LipSwish everywhere) agree between the native op and the eager expression.
    from vaebm_fast.models import official_ebm
    torch.manual_seed(0)
    model = official_ebm("cifar32", n_channel=16)
    x = torch.randn(2, 3, 32, 32)
    results = []
    for backend in ("native", "eager"):
        with default_backend(backend):
            xi = x.clone().requires_grad_()
            energy = model(xi).sum()
            grads = torch.autograd.grad(energy, [xi] + list(model.parameters()),
                                        allow_unused=True)
        results.append((energy.detach(), grads))
    (e_nat, g_nat), (e_eag, g_eag) = results
    torch.testing.assert_close(e_nat, e_eag, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_nat, g_eag):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
