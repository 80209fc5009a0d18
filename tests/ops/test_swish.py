"""swish / lip_swish (vaebm_fast.ops.swish) and their raw ops swish_forward / swish_backward.

Every property of the kernels is written once and runs on each kernel target of the ``kernel``
fixture (tests/ops/conftest.py: native and Triton, CPU and CUDA), against the eager references
``swish_reference`` / ``swish_backward_reference`` computed in float64 from the same (rounded)
inputs. After them: what belongs to no kernel target ("auto", the eager path, registration).

Tolerances (kernel vs that float64 reference): float16 / bfloat16 / float32 are computed in
float32 and rounded once when stored, float64 in float64; the CPU kernels' float32 exp is good
to ~2 ulp. So a few float32 ulps, and about one rounding step of float16 (2^-11) and bfloat16
(2^-8) with margin.
"""
import importlib

import pytest
import torch

from vaebm_fast.nn import LipSwish, Swish, activations
from vaebm_fast.ops import (default_backend, lip_swish, registered_ops, swish,
                            swish_backward_reference, swish_reference)

from . import helpers
from .helpers import DTYPES, LAYOUTS, assert_close, randn

swish_module = importlib.import_module("vaebm_fast.ops.swish")
LIP = swish_module.LIPSWISH_SCALE

TOL = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-13, 1e-13),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}

# (public op, its scale); the raw ops take the scale as an argument.
FUNCS = {"swish": (swish, 1.0), "lip_swish": (lip_swish, LIP)}

# Sizes, each for a code path: (1,) is below every vector width (the CUDA kernels' scalar tail
# only); (2, 64) a multiple of every vector width (no tail); (1031,) spans two float blocks of
# the CPU kernels' float16 / bfloat16 path (1024 elements) and is no multiple of any vector
# width; (2, 1025) needs 3 Triton programs; (33001,) is two parallel tasks of the CPU kernels
# (32768 elements each).
SHAPES = [(7,), (3, 5), (1,), (2, 64), (2, 3, 33), (1031,), (2, 1025), (33001,)]

# Values from every regime of the sigmoid: saturated at both ends (exp(-x) overflows float32
# below x = -88), tiny, zero; infinities (swish(inf) = inf, swish(-inf) = -inf * 0 = NaN, as
# in torch) and NaN. The CPU kernels vectorise by 4 to 16 elements: 5 copies of the 12 values
# put every value in the vector loops and in the scalar tail.
EXTREMES = [-1e4, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e4,
            float("inf"), float("-inf"), float("nan")] * 5


def reference(x, g, scale):
    """``(y, dx)`` of the specification in float64 at x's values (autograd through
    ``swish_reference``, so the backward formula is checked too)."""
    x64 = x.detach().double().requires_grad_()
    y = swish_reference(x64, scale)
    (dx,) = torch.autograd.grad(y, x64, g.double())
    return y.detach(), dx


def run(func, x, g, backend):
    """``(y, dx)`` of the public op with the named backend, dx by autograd (the backward op)."""
    xl = x.detach().requires_grad_()
    y = func(xl, backend=backend)
    (dx,) = torch.autograd.grad(y, xl, g)
    return y.detach(), dx


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=True)


# =============================================================================== every target

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FUNCS)
def test_matches_reference(kernel, name, dtype, shape):
    func, scale = FUNCS[name]
    kernel.require(name)
    x = randn(shape, dtype, kernel.device, seed=1, scale=4.0)
    g = randn(shape, dtype, kernel.device, seed=2)
    y, dx = run(func, x, g, kernel.backend)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device and y.is_contiguous()
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    want_y, want_dx = reference(x, g, scale)
    assert_close(y, want_y, TOL, "y")
    assert_close(dx, want_dx, TOL, "dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_raw_ops_take_any_scale(kernel, dtype):
    # The scale reaches the kernels unrounded: float64 at 1e-13 tells 1 / 1.1 from its float32
    # rounding (1e-8 apart); a negative scale has no special case.
    kernel.require("swish")
    x = randn((4, 257), dtype, kernel.device, seed=3, scale=4.0)
    g = randn((4, 257), dtype, kernel.device, seed=4)
    for scale in (1.0, LIP, -0.3):
        assert_close(kernel.ops.swish_forward(x, scale), swish_reference(x.double(), scale),
                     TOL, f"forward, scale {scale}")
        assert_close(kernel.ops.swish_backward(g, x, scale),
                     swish_backward_reference(g.double(), x.double(), scale), TOL,
                     f"backward, scale {scale}")


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2, 5), (2, 0, 3, 3)], ids=str)
def test_empty(kernel, shape):
    kernel.require("swish")
    x = torch.empty(shape, device=kernel.device)
    for name, (func, scale) in FUNCS.items():
        y, dx = run(func, x, x, kernel.backend)
        assert y.shape == dx.shape == shape, name
        assert kernel.ops.swish_forward(x, scale).shape == shape
        assert kernel.ops.swish_backward(x, x, scale).shape == shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_layouts(kernel, x_layout, dtype):
    # Misaligned data sends the CUDA kernels down their scalar path; strided inputs are read
    # through copies. Every layout of x with every layout of the output gradient.
    kernel.require("swish")
    x = randn((3, 257), dtype, kernel.device, seed=5, scale=4.0)
    g = randn((3, 257), dtype, kernel.device, seed=6)
    xl = LAYOUTS[x_layout](x)
    for name, (func, scale) in FUNCS.items():
        want_y, want_dx = reference(x, g, scale)
        for g_layout, make_layout in LAYOUTS.items():
            y, dx = run(func, xl, make_layout(g), kernel.backend)
            assert y.is_contiguous() and dx.is_contiguous()
            assert_close(y, want_y, TOL, f"{name}, x {x_layout}")
            assert_close(dx, want_dx, TOL, f"{name}, x {x_layout}, grad {g_layout}")


def test_views(kernel):
    # Views that are neither a slice nor a plain offset: a transpose, and an expand whose
    # elements share memory (stride 0).
    kernel.require("swish")
    base = randn((6, 10, 9), device=kernel.device, seed=7, scale=4.0)
    views = {"transposed": base.transpose(0, 2), "expanded":
             randn((4, 1), device=kernel.device, seed=8).expand(4, 5)}
    for view_name, x in views.items():
        g = randn(x.shape, device=kernel.device, seed=9)
        for name, (func, scale) in FUNCS.items():
            y, dx = run(func, x, g, kernel.backend)
            want_y, want_dx = reference(x, g, scale)
            assert_close(y, want_y, TOL, f"{name}, {view_name}")
            assert_close(dx, want_dx, TOL, f"{name}, {view_name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_channels_last_keeps_the_layout(kernel, dtype):
    # A channels-last model's activations (FastSampler on the CPU): the output and the input
    # gradient stay channels-last, so the next convolution converts nothing. The input gradient
    # follows x whatever the layout of the output gradient.
    kernel.require("swish")
    cl = torch.channels_last
    x = randn((3, 5, 4, 7), dtype, kernel.device, seed=10, scale=4.0).contiguous(memory_format=cl)
    for name, (func, scale) in FUNCS.items():
        for g_layout in (torch.contiguous_format, cl):
            g = randn(x.shape, dtype, kernel.device, seed=11).contiguous(memory_format=g_layout)
            y, dx = run(func, x, g, kernel.backend)
            raw = (kernel.ops.swish_forward(x, scale), kernel.ops.swish_backward(g, x, scale))
            for t in (y, dx) + raw:
                assert t.is_contiguous(memory_format=cl) and not t.is_contiguous(), name
            want_y, want_dx = reference(x, g, scale)
            assert_close(y, want_y, TOL, name)
            assert_close(dx, want_dx, TOL, name)
            assert_close(raw[0], want_y, TOL, name)
            assert_close(raw[1], want_dx, TOL, name)
    # Ambiguous strides (C == 1: both layouts at once) count as row-major.
    one = randn((2, 1, 3, 3), dtype, kernel.device).contiguous(memory_format=cl)
    assert swish(one, backend=kernel.backend).is_contiguous()


# Triton's interpreter computes with numpy, which warns where exp overflows or inf * 0 is NaN.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extremes_and_nan(kernel, dtype):
    kernel.require("swish")
    x = torch.tensor(EXTREMES, dtype=torch.float64).to(device=kernel.device, dtype=dtype)
    for scale in (1.0, LIP):
        assert_close(kernel.ops.swish_forward(x, scale), swish_reference(x.double(), scale), TOL,
                     f"forward, scale {scale}")
    # The backward: NaN from x and from the gradient passes through (at +-inf the formula is
    # inf * 0, NaN as well).
    g = randn(x.shape, dtype, kernel.device, seed=27)
    g[1::7] = float("nan")
    assert_close(kernel.ops.swish_backward(g, x, LIP),
                 swish_backward_reference(g.double(), x.double(), LIP), TOL, "backward")


SAVERS = {
    "swish": lambda backend: (lambda x: swish(x, backend=backend), 1.0),
    "lip_swish": lambda backend: (lambda x: lip_swish(x, backend=backend), LIP),
    "nn.activations.swish": lambda backend: (activations.swish, 1.0),
    "nn.activations.lip_swish": lambda backend: (activations.lip_swish, LIP),
    "nn.Swish": lambda backend: (Swish(), 1.0),
    "nn.LipSwish": lambda backend: (LipSwish(), LIP),
}


@pytest.mark.parametrize("saver", SAVERS)
def test_backward_saves_only_the_input(kernel, saver):
    # One saved tensor per activation (x; the sigmoid is recomputed), by the public ops and by
    # the activations of vaebm_fast.nn, which run the op under the default backend.
    kernel.require("swish")
    fn, scale = SAVERS[saver](kernel.backend)
    x = randn((8, 33), device=kernel.device, seed=12, scale=4.0).requires_grad_()
    with default_backend(kernel.backend):
        y, saved = helpers.saved_tensors(fn, x)
    assert len(saved) == 1 and saved[0] is x
    y.sum().backward()
    assert_close(x.grad, swish_backward_reference(torch.ones_like(x).double(), x.double(),
                                                  scale), TOL)


@pytest.mark.parametrize("name", FUNCS)
def test_gradcheck_float64(kernel, name):
    # First and second order through the public op (the second order is the backward op's own
    # autograd). 5 elements: a float64 vector of 2 on CUDA, plus a scalar tail.
    func, _ = FUNCS[name]
    kernel.require(name)
    x = randn((5,), torch.float64, kernel.device, seed=13, scale=3.0).requires_grad_()
    f = lambda t: func(t, backend=kernel.backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradcheck_backward_op(kernel):
    kernel.require("swish")
    x = randn((5,), torch.float64, kernel.device, seed=14, scale=3.0).requires_grad_()
    g = randn((5,), torch.float64, kernel.device, seed=15).requires_grad_()
    f = lambda g_, x_: kernel.ops.swish_backward(g_, x_, LIP)  # noqa: E731
    assert torch.autograd.gradcheck(f, (g, x))
    assert torch.autograd.gradgradcheck(f, (g, x))


def _opcheck_cases(device):
    x = randn((3, 5), device=device, seed=16).requires_grad_()
    g = randn((3, 5), device=device, seed=17).requires_grad_()
    x4 = randn((2, 3, 4, 5), device=device, seed=18).contiguous(memory_format=torch.channels_last)
    x64 = randn((3, 5), torch.float64, device, seed=19).requires_grad_()
    return {
        "forward": ("swish_forward", (x, 1.0)),
        "forward transposed": ("swish_forward", (x.detach().t(), LIP)),
        "forward empty": ("swish_forward", (torch.empty(0, 2, device=device), 1.0)),
        # the fake kernel must give the real kernel's channels-last strides
        "forward channels-last": ("swish_forward", (x4.requires_grad_(), 1.0)),
        "backward": ("swish_backward", (g, x, LIP)),
        "backward float64": ("swish_backward", (x64.detach().clone().requires_grad_(), x64, 1.0)),
        "backward channels-last": ("swish_backward",
                                   (randn((2, 3, 4, 5), device=device, seed=20), x4.detach(),
                                    LIP)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases("cpu")))
def test_opcheck(kernel, case):
    kernel.require("swish")
    op, args = _opcheck_cases(kernel.device)[case]
    torch.library.opcheck(getattr(kernel.ops, op).default, args)


def test_compiles_to_one_graph(kernel):
    # torch.compile traces the public ops (dispatch included) and their autograd into one
    # graph; "aot_eager" runs the ops' fake kernels and skips code generation.
    kernel.require("swish")

    def loss(x):
        return (swish(x, backend=kernel.backend) * lip_swish(x, backend=kernel.backend)).sum()

    x = randn((4, 7), torch.float64, kernel.device, seed=21, scale=3.0).requires_grad_()
    (expected,) = torch.autograd.grad(loss(x), x)
    value = compiled(loss)(x)
    (got,) = torch.autograd.grad(value, x)
    assert_close(value, loss(x), TOL)
    assert_close(got, expected, TOL)


def _step_on_fixed_tensors(kernel, name):
    """``(x, step, want)``: step() runs the public op and its backward on x (fixed CUDA
    tensors, as a graph needs; 3 x 1031 elements: vectors and a tail); want(values) is the
    reference ``(y, dx)`` at those values of x."""
    func, scale = FUNCS[name]
    x = torch.empty(3, 1031, device=kernel.device, requires_grad=True)
    g = randn((3, 1031), device=kernel.device, seed=22)

    def step():
        y = func(x, backend=kernel.backend)
        (dx,) = torch.autograd.grad(y, x, g)
        return y, dx

    return x, step, lambda values: reference(values, g, scale)


@pytest.mark.graphs
@pytest.mark.parametrize("name", FUNCS)
def test_captured_in_a_cuda_graph(kernel, name):
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA device")
    kernel.require(name)
    x, step, want = _step_on_fixed_tensors(kernel, name)
    # Each reset (before the warm-up, the capture and the replay) writes other values: the
    # outputs hold the replay's results only if the kernels were captured, not run at capture.
    values = [randn(x.shape, device=kernel.device, seed=s, scale=4.0) for s in (23, 24, 25)]
    states = iter(values)

    def reset():
        with torch.no_grad():
            x.copy_(next(states))

    y, dx = helpers.captured(step, reset)
    want_y, want_dx = want(values[2])
    assert_close(y, want_y, TOL, "y")
    assert_close(dx, want_dx, TOL, "dx")


@pytest.mark.graphs
@pytest.mark.parametrize("name", FUNCS)
def test_runs_on_the_current_stream(kernel, name):
    if not kernel.is_cuda:
        pytest.skip("streams are CUDA's")
    kernel.require(name)
    x, step, want = _step_on_fixed_tensors(kernel, name)
    values = randn(x.shape, device=kernel.device, seed=26, scale=4.0)
    with torch.no_grad():
        x.fill_(float("nan"))

    def on_side_stream():
        # The side stream spins, then writes x: a kernel launched on any other stream would
        # read the NaNs still there.
        torch.cuda._sleep(20_000_000)
        with torch.no_grad():
            x.copy_(values)
        return step()

    y, dx = helpers.on_side_stream(on_side_stream)
    want_y, want_dx = want(values)
    assert_close(y, want_y, TOL, "y")
    assert_close(dx, want_dx, TOL, "dx")


def test_bad_inputs(kernel):
    kernel.require("swish")
    dev, backend = kernel.device, kernel.backend
    # The public ops: clear errors before any kernel runs.
    with pytest.raises(TypeError, match="torch.Tensor"):
        swish([1.0, 2.0], backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        lip_swish(torch.zeros(3, device=dev), backend="cuda")
    # Integer, bool and complex tensors are refused by every backend, as F.silu refuses them
    # (an activation of such a tensor is a bug upstream).
    for bad in (torch.zeros(3, dtype=torch.complex64, device=dev),
                torch.arange(-3, 4, device=dev), torch.ones(2, dtype=torch.bool, device=dev)):
        for func in (swish, lip_swish):
            with pytest.raises(ValueError, match=r"x must be a floating tensor \(got torch\."):
                func(bad, backend=backend)
    # The raw ops refuse what would make the kernels read past a tensor or misread its bytes.
    ops = kernel.ops
    with pytest.raises(RuntimeError, match="shape"):
        ops.swish_backward(torch.zeros(3, device=dev), torch.zeros(4, device=dev), 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.swish_backward(torch.zeros(3, device=dev),
                           torch.zeros(3, dtype=torch.float64, device=dev), 1.0)
    for bad in (torch.zeros(3, dtype=torch.int64, device=dev),
                torch.zeros(3, dtype=torch.complex64, device=dev)):
        with pytest.raises(RuntimeError, match="float16"):
            ops.swish_forward(bad, 1.0)
        with pytest.raises(RuntimeError, match="float16"):
            ops.swish_backward(bad, bad, 1.0)


# =============================================================================== no kernel target

def test_auto_follows_the_measured_cpu_preference(native):
    # On the CPU the native kernel measured slower below _CPU_NATIVE_MIN_NUMEL elements, so
    # "auto" runs the eager expression there (it saves x and the sigmoid) and the native kernel
    # from that size on (it saves only x); a named backend or default overrides the size rule.
    threshold = swish_module._CPU_NATIVE_MIN_NUMEL
    small = randn((3,)).requires_grad_()
    large = randn((threshold,)).requires_grad_()
    assert len(helpers.saved_tensors(swish, small)[1]) > 1
    assert len(helpers.saved_tensors(swish, large)[1]) == 1
    assert len(helpers.saved_tensors(lambda t: swish(t, backend="native"), small)[1]) == 1
    with default_backend("native"):
        assert len(helpers.saved_tensors(swish, small)[1]) == 1


def test_meta_and_no_grad_through_eager_and_no_int():
    x = randn((9,))
    with torch.no_grad():
        assert_close(swish(x), swish_reference(x.double()), TOL)
    # Meta tensors have no kernel: "auto" runs the reference, which propagates shapes.
    meta = swish(torch.zeros(3, 4, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (3, 4)
    # An int tensor is refused under "auto" and "eager" too, not promoted by the reference.
    for backend in ("auto", "eager"):
        for func in (swish, lip_swish):
            with pytest.raises(ValueError, match="x must be a floating tensor"):
                func(torch.arange(-3, 4), backend=backend)


def test_eager_and_auto_keep_channels_last():
    # Below the CPU size threshold "auto" runs the eager expression: it keeps channels-last
    # activations channels-last too, as the kernels do.
    x = randn((3, 5, 4, 7), seed=28).contiguous(memory_format=torch.channels_last)
    assert x.numel() < swish_module._CPU_NATIVE_MIN_NUMEL
    for backend in ("eager", "auto"):
        for name, (func, scale) in FUNCS.items():
            y = func(x, backend=backend)
            assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
            assert_close(y, swish_reference(x.double(), scale), TOL, f"{name}, {backend}")


def test_eager_path_is_plain_torch():
    # The eager fallback is an ordinary torch expression: autograd saves x and sigmoid(x) (what
    # the kernels' autograd avoids), with or without the default backend, and differentiates
    # twice by itself.
    x = randn((5,), torch.float64).requires_grad_()
    _, saved = helpers.saved_tensors(lambda t: swish(t, backend="eager"), x)
    assert len(saved) > 1 and any(s is x for s in saved)
    with default_backend("eager"):
        y, saved_default = helpers.saved_tensors(activations.swish, x)
    assert len(saved_default) == len(saved)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(d2, s * (1 - s) * (2 + x.detach() * (1 - 2 * s)))


def test_registered_for_info():
    assert {"swish", "lip_swish"} <= set(registered_ops())
    from vaebm_fast.info import format_info
    text = format_info()
    assert "swish" in text and "lip_swish" in text
