"""Triton swish / lip_swish (vaebm_fast_triton::swish_forward / swish_backward) vs the eager
reference: odd sizes, dtypes, non-contiguous and empty inputs, autograd (saves only x, first and
second order), opcheck, errors. Without a GPU the kernels run in Triton's interpreter."""
import sys

import pytest
import torch

from vaebm_fast.ops import lip_swish, swish, swish_backward_reference, swish_reference

SCALE = sys.modules["vaebm_fast.ops.swish"].LIPSWISH_SCALE
SHAPES = [(7,), (3, 5), (0,), (2, 3, 33), (1,), (1031,), (5, 0, 2), (2, 1025)]
FUNCS = [(swish, 1.0), (lip_swish, SCALE)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Against a float64 reference rounded once to the dtype.
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-6), torch.float64: dict(atol=1e-13, rtol=1e-13),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture
def ops(triton_device):
    """The Triton op namespace (importing the kernel module registers the ops)."""
    from vaebm_fast.triton_kernels import swish as _  # noqa: F401
    return torch.ops.vaebm_fast_triton


def make(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)


def reference(x, g, scale):
    """(y, dx) in float64."""
    xd = x.detach().double().requires_grad_()
    y = swish_reference(xd, scale)
    (dx,) = torch.autograd.grad(y, xd, g.double())
    return y.detach(), dx


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("func, scale", FUNCS, ids=["swish", "lip_swish"])
def test_matches_reference(triton_device, dtype, func, scale):
    for i, shape in enumerate(SHAPES):
        x = make(shape, dtype, triton_device, seed=i).requires_grad_()
        g = make(shape, dtype, triton_device, seed=100 + i)
        y = func(x, backend="triton")
        assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
        (dx,) = torch.autograd.grad(y, x, g)
        want_y, want_dx = reference(x, g, scale)
        torch.testing.assert_close(y, want_y.to(dtype), **TOL[dtype])
        torch.testing.assert_close(dx, want_dx.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ops_directly_with_other_scales(ops, triton_device, dtype):
    x, g = make((4, 257), dtype, triton_device), make((4, 257), dtype, triton_device, seed=2)
    for scale in (1.0, SCALE, -0.3):
        torch.testing.assert_close(ops.swish_forward(x, scale), swish_reference(x, scale),
                                   **TOL[dtype])
        torch.testing.assert_close(ops.swish_backward(g, x, scale),
                                   swish_backward_reference(g, x, scale), **TOL[dtype])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # exp(1e4) = inf
def test_extreme_values(ops, triton_device):
    x = torch.tensor([-1e4, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e4],
                     device=triton_device)
    torch.testing.assert_close(ops.swish_forward(x, 1.0), swish_reference(x), atol=1e-6,
                               rtol=1e-6)
    torch.testing.assert_close(ops.swish_backward(torch.ones_like(x), x, 1.0),
                               swish_backward_reference(torch.ones_like(x), x), atol=1e-6,
                               rtol=1e-6)
    assert torch.isnan(ops.swish_forward(torch.full((3,), float("nan"), device=triton_device),
                                         1.0)).all()


def test_non_contiguous_inputs(triton_device):
    base = make((6, 10, 9), torch.float32, triton_device)
    views = (base[:, ::3], base.transpose(0, 2), base[..., 1],
             make((4, 1), torch.float32, triton_device).expand(4, 5))
    for x in views:
        assert not x.is_contiguous()
        xt = x.detach().requires_grad_()
        g = make(x.shape, torch.float32, triton_device, seed=3).transpose(0, -1).contiguous() \
            .transpose(0, -1)  # a non-contiguous gradient too (for dim >= 2)
        for func, scale in FUNCS:
            y = func(xt, backend="triton")
            assert y.is_contiguous() and y.shape == x.shape
            (dx,) = torch.autograd.grad(y, xt, g)
            want_y, want_dx = reference(x, g, scale)
            torch.testing.assert_close(y, want_y.float(), **TOL[torch.float32])
            torch.testing.assert_close(dx, want_dx.float(), **TOL[torch.float32])


def test_channels_last_keeps_the_layout(ops, triton_device):
    x = make((3, 5, 4, 7), torch.float32, triton_device).contiguous(
        memory_format=torch.channels_last)
    g = make(x.shape, torch.float32, triton_device, seed=3)  # row-major gradient
    for func, scale in FUNCS:
        xt = x.detach().requires_grad_()
        y = func(xt, backend="triton")
        (dx,) = torch.autograd.grad(y, xt, g)
        for t in (y, dx):
            assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        want_y, want_dx = reference(x, g, scale)
        torch.testing.assert_close(y, want_y.float(), **TOL[torch.float32])
        torch.testing.assert_close(dx, want_dx.float(), **TOL[torch.float32])
    torch.library.opcheck(ops.swish_forward.default, (x, 1.0))
    torch.library.opcheck(ops.swish_backward.default, (g, x, SCALE))


def test_empty(ops, triton_device):
    for shape in [(0,), (3, 0), (0, 2, 5)]:
        x = torch.empty(shape, device=triton_device)
        assert ops.swish_forward(x, 1.0).shape == shape
        assert ops.swish_backward(x, x, 1.0).shape == shape


@pytest.mark.parametrize("func", [swish, lip_swish])
def test_gradcheck_fp64(triton_device, func):
    x = make((3, 7), torch.float64, triton_device).requires_grad_()
    f = lambda t: func(t, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradcheck_backward_op(ops, triton_device):
    x = make((2, 9), torch.float64, triton_device).requires_grad_()
    g = make((2, 9), torch.float64, triton_device, seed=4).requires_grad_()
    f = lambda g_, x_: ops.swish_backward(g_, x_, SCALE)  # noqa: E731
    assert torch.autograd.gradcheck(f, (g, x))
    assert torch.autograd.gradgradcheck(f, (g, x))


def test_backward_saves_only_the_input(triton_device):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = make((8, 33), torch.float32, triton_device).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = lip_swish(x, backend="triton")
    assert len(saved) == 1 and saved[0] is x
    y.sum().backward()
    torch.testing.assert_close(x.grad, swish_backward_reference(torch.ones_like(x), x.detach(),
                                                                SCALE))


def test_opcheck(ops, triton_device):
    for dtype in (torch.float32, torch.float64):
        x = make((3, 5), dtype, triton_device).requires_grad_()
        g = make((3, 5), dtype, triton_device, seed=1).requires_grad_()
        torch.library.opcheck(ops.swish_forward.default, (x, 1.0))
        torch.library.opcheck(ops.swish_forward.default, (x.detach().t(), SCALE))
        torch.library.opcheck(ops.swish_forward.default, (make((0, 2), dtype, triton_device), 1.0))
        torch.library.opcheck(ops.swish_backward.default, (g, x, SCALE))


def test_bad_inputs(ops, triton_device):
    with pytest.raises(ValueError, match="triton kernel takes"):
        swish(torch.zeros(3, dtype=torch.complex64, device=triton_device), backend="triton")
    with pytest.raises(RuntimeError, match="shape"):
        ops.swish_backward(torch.zeros(3, device=triton_device),
                           torch.zeros(4, device=triton_device), 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.swish_backward(torch.zeros(3, device=triton_device),
                           torch.zeros(3, dtype=torch.float64, device=triton_device), 1.0)
    with pytest.raises(RuntimeError, match="float"):
        ops.swish_forward(torch.zeros(3, dtype=torch.int64, device=triton_device), 1.0)
