"""The fused epilogues (vaebm_fast.ops.epilogues): ebm_block_tail (with and without the 2x2
downsampling), nvae_cell_tail and affine_swish, their raw ops and backward ops.

Every property of the kernels is written once, for the four cases of ``CASES``, and runs on
each kernel target of the ``kernel`` fixture (tests/ops/conftest.py: native and Triton, CPU
and CUDA), against the eager references (``*_reference``, ``*_backward_reference``) computed in
float64 from the same (rounded) inputs. After them: what belongs to no kernel target ("auto",
channels-last under "auto", meta and int inputs), and the models that use the ops.

Tolerances (kernel vs that float64 reference): float16 / bfloat16 / float32 are computed in
float32 and rounded once when stored, float64 in float64, sums in another order than torch's;
the backward ops read the stored (rounded) pre-activation. So float32 1e-5, and a few rounding
steps of float16 (2^-11) and bfloat16 (2^-8). A sum over n terms (dgate, dscale, dshift) gets
an absolute tolerance sqrt(n) times larger: rounding errors of a sum add like a random walk.
"""
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaebm_fast.ops import (affine_swish, affine_swish_backward_reference,
                            affine_swish_reference, default_backend, ebm_block_tail,
                            ebm_block_tail_backward_reference, ebm_block_tail_reference,
                            nvae_cell_tail, nvae_cell_tail_backward_reference,
                            nvae_cell_tail_reference, registered_ops)

from . import helpers
from .helpers import DTYPES, LAYOUTS, assert_close, randn

_dispatch = importlib.import_module("vaebm_fast.ops._dispatch")

TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12),
       torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}

# NVAE's residual scale. Not a float32 number: float64 results at 1e-12 show whether the
# kernels received it unrounded.
CELL_SCALE = 0.1
OPS = ("ebm_block_tail", "nvae_cell_tail", "affine_swish")


def sum_tol(n_terms: float) -> dict:
    """TOL for a sum of ``n_terms`` terms (see the module docstring)."""
    k = math.sqrt(max(n_terms, 1.0))
    return {dtype: (atol * k, rtol) for dtype, (atol, rtol) in TOL.items()}


# =============================================================================== the cases

@dataclass(frozen=True)
class Case:
    """One public op (in one mode) with its raw ops and specification.

    inputs(shape, dtype, device, seed): the op's tensor arguments for an input of ``shape``
    (the NCHW tensors, the gate [B, C], the scale and shift [C]);
    call(inputs, backend): the public op; reference(inputs): its specification;
    raw(ops, inputs) / raw_reference(inputs): the forward raw op's outputs (a tuple);
    backward_inputs(grad, inputs): the backward raw op's tensor arguments for output
    gradient ``grad``; backward(ops, *args) / backward_reference(*args): its outputs;
    shapes: input shapes, each for a code path of some kernel (see the comments at them).
    """

    name: str
    op: str
    inputs: Callable
    call: Callable
    reference: Callable
    raw: Callable
    raw_reference: Callable
    backward_inputs: Callable
    backward: Callable
    backward_reference: Callable
    shapes: Tuple[tuple, ...]

    def out_shape(self, shape):
        if self.name == "ebm_block_tail_down":
            return shape[:2] + (shape[2] // 2, shape[3] // 2)
        return shape


def _ebm_inputs(shape, dtype, device, seed=0):
    return randn(shape, dtype, device, seed, 2.0), randn(shape, dtype, device, seed + 1, 2.0)


def _cell_inputs(shape, dtype, device, seed=0):
    gate = torch.sigmoid(randn(shape[:2], torch.float64, seed=seed + 2)).to(device, dtype)
    return randn(shape, dtype, device, seed), randn(shape, dtype, device, seed + 1), gate


def _affine_inputs(shape, dtype, device, seed=0):
    c = shape[1]
    scale = (1 + 0.3 * randn((c,), torch.float64, seed=seed + 1)).to(device, dtype)
    shift = (0.5 * randn((c,), torch.float64, seed=seed + 2)).to(device, dtype)
    return randn(shape, dtype, device, seed, 2.0), scale, shift


def _ebm_case(down: bool) -> Case:
    def pre_of(inputs):
        # The backward op differentiates at the pre-activation the forward stored (rounded).
        h, skip = inputs
        return ebm_block_tail_reference(h.double(), skip.double(), down)[1].to(h.dtype)

    return Case(
        name="ebm_block_tail_down" if down else "ebm_block_tail", op="ebm_block_tail",
        inputs=_ebm_inputs,
        call=lambda ins, backend: ebm_block_tail(*ins, downsample=down, backend=backend),
        reference=lambda ins: ebm_block_tail_reference(*ins, down)[0],
        raw=lambda ops, ins: ops.ebm_block_tail(*ins, down),
        raw_reference=lambda ins: ebm_block_tail_reference(*ins, down),
        backward_inputs=lambda grad, ins: (grad, pre_of(ins)),
        backward=lambda ops, grad, pre: (ops.ebm_block_tail_backward(grad, pre, down),),
        backward_reference=lambda grad, pre: (ebm_block_tail_backward_reference(grad, pre,
                                                                                down),),
        # (3, 1, 2, 2): one 2x2 window per plane, fewer elements than a float16 vector.
        # (1, 2, 4, 514): rows wider than the CPU kernels' float16 / bfloat16 pooling segments
        # (256 outputs); (1, 1, 2, 2050): wider than their backward's (1024).
        # (2, 7, 50, 6): more pooled rows than one CPU block holds (341).
        # (2, 4, 64, 66): several parallel tasks of the CPU kernels (32768 elements each).
        # Without pooling, odd H and W too: (3, 5, 7, 9) leaves a tail after every CUDA vector.
        shapes=((2, 3, 6, 10), (3, 1, 2, 2), (1, 2, 4, 514), (1, 1, 2, 2050), (2, 7, 50, 6),
                (2, 4, 64, 66)) + (() if down else ((3, 5, 7, 9),)))


CASES = {c.name: c for c in (
    _ebm_case(False),
    _ebm_case(True),
    Case(
        name="nvae_cell_tail", op="nvae_cell_tail", inputs=_cell_inputs,
        call=lambda ins, backend: nvae_cell_tail(*ins, scale=CELL_SCALE, backend=backend),
        reference=lambda ins: nvae_cell_tail_reference(*ins, CELL_SCALE),
        raw=lambda ops, ins: (ops.nvae_cell_tail(*ins, CELL_SCALE),),
        raw_reference=lambda ins: (nvae_cell_tail_reference(*ins, CELL_SCALE),),
        backward_inputs=lambda grad, ins: (grad, ins[1], ins[2]),
        backward=lambda ops, grad, h, gate: ops.nvae_cell_tail_backward(grad, h, gate,
                                                                        CELL_SCALE),
        backward_reference=lambda grad, h, gate: nvae_cell_tail_backward_reference(
            grad, h, gate, CELL_SCALE),
        # (3, 2, 1, 1): planes of one element; (1, 2, 33, 35): planes longer than a Triton
        # block and the CPU kernels' float blocks (1024), of odd length (their 16-lane sums
        # have a tail); (2, 4, 8, 8): planes a multiple of every CUDA vector width.
        shapes=((2, 3, 5, 7), (1, 4, 3, 3), (3, 2, 1, 1), (1, 2, 33, 35), (2, 4, 8, 8))),
    Case(
        name="affine_swish", op="affine_swish", inputs=_affine_inputs,
        call=lambda ins, backend: affine_swish(*ins, backend=backend),
        reference=lambda ins: affine_swish_reference(*ins),
        raw=lambda ops, ins: (ops.affine_swish(*ins),),
        raw_reference=lambda ins: (affine_swish_reference(*ins),),
        backward_inputs=lambda grad, ins: (grad,) + tuple(ins),
        backward=lambda ops, *args: ops.affine_swish_backward(*args),
        backward_reference=affine_swish_backward_reference,
        # 2-D, 3-D and 5-D x; (3, 1, 2, 2): one channel; (1, 2, 33, 35): planes longer than a
        # Triton block and the CPU float blocks, odd; (2, 8, 4, 4): planes a multiple of every
        # CUDA vector width; (9, 2, 30, 30): several CUDA reduction splits (4096 elements each)
        # of unequal length.
        shapes=((2, 3, 5, 7), (5, 3), (2, 3, 11), (2, 3, 2, 3, 3), (3, 1, 2, 2),
                (1, 2, 33, 35), (2, 8, 4, 4), (9, 2, 30, 30))),
)}

def value_and_grads(case, inputs, grad, backend=None):
    """``(out, input gradients)`` of the public op with ``backend``, or of the reference in
    float64 (backend None), for output gradient ``grad``; autograd either way."""
    if backend is None:
        leaves = [t.detach().double().requires_grad_() for t in inputs]
        out = case.reference(leaves)
        grad = grad.double()
    else:
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = case.call(leaves, backend)
    return out.detach(), torch.autograd.grad(out, leaves, grad)


def assert_grads_close(got, want, out_numel, what=""):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"{what} input {i}"
        assert_close(a, b, sum_tol(out_numel / max(b.numel(), 1)), f"{what} grad of input {i}")


def cases_and_shapes():
    return [pytest.param(name, shape, id=f"{name}-{shape}")
            for name, case in CASES.items() for shape in case.shapes]


# =============================================================================== every target

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, shape", cases_and_shapes())
def test_matches_reference(kernel, name, shape, dtype):
    case = CASES[name]
    kernel.require(case.op)
    inputs = case.inputs(shape, dtype, kernel.device)
    grad = randn(case.out_shape(shape), dtype, kernel.device, seed=9)
    out, grads = value_and_grads(case, inputs, grad, kernel.backend)
    assert out.shape == case.out_shape(shape) and out.dtype == dtype and out.is_contiguous()
    want, want_grads = value_and_grads(case, inputs, grad)
    assert_close(out, want, TOL, "out")
    assert_grads_close(grads, want_grads, out.numel())
    # The raw op's outputs (ebm_block_tail also returns the pre-activation it saves).
    for i, (a, b) in enumerate(zip(case.raw(kernel.ops, inputs), case.raw_reference(
            [t.double() for t in inputs]))):
        assert a.is_contiguous()
        assert_close(a, b, TOL, f"raw output {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_backward_op_matches_its_reference(kernel, name, dtype):
    # The backward op at inputs no forward produced (the reference formula takes any).
    case = CASES[name]
    kernel.require(case.op)
    shape = case.shapes[0]
    inputs = case.inputs(shape, dtype, kernel.device, seed=10)
    grad = randn(case.out_shape(shape), dtype, kernel.device, seed=11)
    args = case.backward_inputs(grad, inputs)
    got = case.backward(kernel.ops, *args)
    want = case.backward_reference(*[t.double() for t in args])
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == dtype and a.is_contiguous()
        assert_close(a, b, sum_tol(grad.numel() / max(b.numel(), 1)), f"output {i}")


EMPTY_SHAPES = [(0, 3, 4, 6), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_empty(kernel, name, shape):
    # No element: right shapes, and the sums over nothing (dgate with H * W = 0, dscale and
    # dshift with N = 0) are zeros, not uninitialised memory.
    case = CASES[name]
    kernel.require(case.op)
    inputs = case.inputs(shape, torch.float32, kernel.device)
    # Fresh memory is often zero already: freeing NaNs first makes an unwritten sum show.
    torch.full((4096,), float("nan"), device=kernel.device)
    grad = torch.ones(case.out_shape(shape), device=kernel.device)
    out, grads = value_and_grads(case, inputs, grad, kernel.backend)
    want, want_grads = value_and_grads(case, inputs, grad)
    assert out.shape == want.shape
    for a, b in zip(grads, want_grads):
        assert a.shape == b.shape
        assert torch.equal(a.cpu().double(), b.cpu()), "the grad of an empty sum is zero"
    for a, b in zip(case.backward(kernel.ops, *case.backward_inputs(grad, inputs)),
                    case.backward_reference(*[t.double() for t in
                                              case.backward_inputs(grad, inputs)])):
        assert a.shape == b.shape and torch.equal(a.cpu().double(), b.cpu())


def _variants(tensors, make_layout):
    """(label, tensors) with one tensor at a time in the layout, then all of them."""
    for i in range(len(tensors)):
        yield f"argument {i}", tuple(make_layout(t) if j == i else t
                                     for j, t in enumerate(tensors))
    yield "all arguments", tuple(make_layout(t) for t in tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
def test_layouts(kernel, name, layout, dtype):
    # Strided inputs are read through their strides (Triton) or copies (native); misaligned
    # data sends the CUDA kernels down their scalar paths (any one misaligned pointer does).
    # The forward and the backward op, each argument alone in the layout and all together.
    case = CASES[name]
    kernel.require(case.op)
    make_layout = LAYOUTS[layout]
    shape = (2, 4, 6, 8)
    inputs = case.inputs(shape, dtype, kernel.device, seed=12)
    grad = randn(case.out_shape(shape), dtype, kernel.device, seed=13)
    want, want_grads = value_and_grads(case, inputs, grad)
    for label, args in _variants(inputs + (grad,), make_layout):
        out, grads = value_and_grads(case, args[:-1], args[-1], kernel.backend)
        assert out.is_contiguous()
        assert_close(out, want, TOL, label)
        assert_grads_close(grads, want_grads, out.numel(), label)
    bargs = case.backward_inputs(grad, inputs)
    want = case.backward_reference(*[t.double() for t in bargs])
    for label, args in _variants(bargs, make_layout):
        for i, (a, b) in enumerate(zip(case.backward(kernel.ops, *args), want)):
            assert a.is_contiguous()
            assert_close(a, b, sum_tol(grad.numel() / b.numel()), f"backward op, {label}")


@pytest.mark.parametrize("name", CASES)
def test_channels_last_through_a_named_backend(kernel, name):
    # A named kernel backend runs its kernel on channels-last inputs too (through strided reads
    # or row-major copies): the reference's values, in a new row-major output. ("auto" runs the
    # eager reference there instead: test_auto_keeps_channels_last.)
    case = CASES[name]
    kernel.require(case.op)
    shape = (2, 6, 4, 6)
    inputs = case.inputs(shape, torch.float32, kernel.device, seed=14)
    cl = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
               for t in inputs)
    assert not cl[0].is_contiguous()
    grad = randn(case.out_shape(shape), device=kernel.device, seed=15).contiguous(
        memory_format=torch.channels_last)
    out, grads = value_and_grads(case, cl, grad, kernel.backend)
    assert out.is_contiguous()
    want, want_grads = value_and_grads(case, inputs, grad)
    assert_close(out, want, TOL)
    assert_grads_close(grads, want_grads, out.numel())


def _with_extremes(t):
    """t with a value of every regime of the sigmoid at 12 spread positions: saturated at both
    ends (capped so that float16 sums stay finite), tiny, zero, +inf, -inf, NaN. In the
    [2, 6, 4, 10] inputs below each lands in a plane of its own (the last three in channels
    3, 4, 5), so a NaN that leaks out of its window, plane or channel shows."""
    big = min(1e4, torch.finfo(t.dtype).max / 64)
    values = torch.tensor([-big, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, big,
                           float("inf"), float("-inf"), float("nan")], dtype=torch.float64)
    flat = t.detach().clone().reshape(-1)
    step = flat.numel() // len(values)
    flat[7::step][:len(values)] = values.to(t)
    return flat.reshape(t.shape)


# Triton's interpreter computes with numpy, which warns where exp overflows or inf * 0 is NaN.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_extremes_and_nan(kernel, name, dtype):
    # The raw ops forward and backward at extreme values, which pass NaNs through where the
    # reference has them (the window, plane or channel of a NaN), and no others.
    case = CASES[name]
    kernel.require(case.op)
    shape = (2, 6, 4, 10)
    inputs = list(case.inputs(shape, dtype, kernel.device, seed=16))
    inputs[0] = _with_extremes(inputs[0])
    if len(inputs) == 3:  # a NaN in the gate / the scale: one plane / channel turns NaN
        inputs[1 if case.op == "affine_swish" else 2][..., 0] = float("nan")
    grad = randn(case.out_shape(shape), dtype, kernel.device, seed=17)
    grad.view(-1)[5] = float("nan")
    for i, (a, b) in enumerate(zip(case.raw(kernel.ops, inputs),
                                   case.raw_reference([t.double() for t in inputs]))):
        assert_close(a, b, TOL, f"forward output {i}")
    bargs = case.backward_inputs(grad, inputs)
    for i, (a, b) in enumerate(zip(case.backward(kernel.ops, *bargs),
                                   case.backward_reference(*[t.double() for t in bargs]))):
        assert_close(a, b, sum_tol(grad.numel() / b.numel()), f"backward output {i}")


@pytest.mark.parametrize("name", CASES)
def test_autograd_saves_little(kernel, name):
    # ebm_block_tail saves only its pre-activation (a quarter of h when downsampling), never h,
    # skip or the sigmoid; nvae_cell_tail saves h and gate; affine_swish x, scale and shift.
    case = CASES[name]
    kernel.require(case.op)
    inputs = [t.requires_grad_() for t in case.inputs((2, 3, 4, 6), torch.float32,
                                                      kernel.device)]
    out, saved = helpers.saved_tensors(lambda *ts: case.call(ts, kernel.backend), *inputs)
    if case.op == "ebm_block_tail":
        assert len(saved) == 1 and saved[0].shape == out.shape
        assert saved[0].numel() * (4 if name.endswith("down") else 1) == inputs[0].numel()
        _, eager_saved = helpers.saved_tensors(lambda *ts: case.call(ts, "eager"), *inputs)
        assert len(eager_saved) > 1  # what the fused op spares: h + skip and the sigmoid
    else:
        expected = inputs[1:] if case.op == "nvae_cell_tail" else inputs
        assert len(saved) == len(expected) and all(a is b for a, b in zip(saved, expected))


def _gradcheck_cases():
    """name -> (op, make(kernel) -> (fn, float64 inputs)): the public ops, the raw
    ebm_block_tail with its second output used (which the public op drops; alone, the first
    output's gradient is None), and inputs that do not all require grad (only the gate; only
    x, as with a frozen BatchNorm's scale and shift). Tiny shapes: each gradcheck evaluates
    the op twice per input element, in Triton's interpreter too."""
    def f64(shape, seed, scale=2.0):
        return randn(shape, torch.float64, "cpu", seed, scale)

    def public(name, requires=None):
        case = CASES[name]

        def make(kernel):
            shape = (2, 2, 2) if case.op == "affine_swish" else (1, 2, 2, 2)
            inputs = [t.to(kernel.device) for t in case.inputs(shape, torch.float64, "cpu")]
            live = [i for i in range(len(inputs)) if requires is None or i in requires]
            for i in live:
                inputs[i].requires_grad_()

            def fn(*ts):
                args = list(inputs)
                for i, t in zip(live, ts):
                    args[i] = t
                return case.call(args, kernel.backend)
            return fn, [inputs[i] for i in live]
        return case.op, make

    def raw(down, use_out):
        def make(kernel):
            h, s = (f64((1, 2, 2, 2), seed).to(kernel.device).requires_grad_() for seed in (0, 1))

            def fn(a, b):
                out, pre = kernel.ops.ebm_block_tail(a, b, down)
                return out * 2 + pre ** 2 if use_out else pre ** 2
            return fn, [h, s]
        return "ebm_block_tail", make

    return {
        "ebm_block_tail": public("ebm_block_tail"),
        "ebm_block_tail_down": public("ebm_block_tail_down"),
        "ebm_block_tail raw, out and pre": raw(False, True),
        "ebm_block_tail_down raw, out and pre": raw(True, True),
        "ebm_block_tail_down raw, pre only": raw(True, False),
        "nvae_cell_tail": public("nvae_cell_tail"),
        "nvae_cell_tail, gate only": public("nvae_cell_tail", requires=(2,)),
        "affine_swish": public("affine_swish"),
        "affine_swish, x only": public("affine_swish", requires=(0,)),
    }


GRADCHECKS = _gradcheck_cases()


@pytest.mark.parametrize("name", GRADCHECKS)
def test_gradcheck_float64(kernel, name):
    # First and second order (the second is the backward ops' own autograd).
    op, make = GRADCHECKS[name]
    kernel.require(op)
    fn, inputs = make(kernel)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def _opcheck_cases(device):
    def t(shape, seed, grad=True):
        return randn(shape, device=device, seed=seed).requires_grad_(grad)

    cl = torch.channels_last
    h, s = t((2, 3, 4, 6), 0), t((2, 3, 4, 6), 1)
    gate, sc, sh = t((2, 3), 2), t((3,), 3), t((3,), 4)
    h_cl = t((2, 3, 4, 6), 5, False).contiguous(memory_format=cl).requires_grad_()
    s_cl = t((2, 3, 4, 6), 6, False).contiguous(memory_format=cl).requires_grad_()
    return {
        "ebm_block_tail down": ("ebm_block_tail", (h, s, True)),
        "ebm_block_tail transposed": ("ebm_block_tail", (h.detach().transpose(2, 3),
                                                         s.detach().transpose(2, 3), False)),
        # channels-last inputs, row-major outputs: the fake must give the real strides
        "ebm_block_tail channels-last": ("ebm_block_tail", (h_cl, s_cl, True)),
        "ebm_block_tail_backward down": ("ebm_block_tail_backward",
                                         (t((2, 3, 2, 3), 7), t((2, 3, 2, 3), 8), True)),
        "ebm_block_tail_backward": ("ebm_block_tail_backward", (h, s, False)),
        "nvae_cell_tail": ("nvae_cell_tail", (s, h, gate, CELL_SCALE)),
        "nvae_cell_tail channels-last": ("nvae_cell_tail", (s_cl, h_cl, gate, CELL_SCALE)),
        "nvae_cell_tail_backward": ("nvae_cell_tail_backward", (s, h, gate, CELL_SCALE)),
        "affine_swish": ("affine_swish", (h, sc, sh)),
        "affine_swish 2-D": ("affine_swish", (t((5, 3), 9), sc, sh)),
        "affine_swish channels-last": ("affine_swish", (h_cl, sc, sh)),
        "affine_swish empty": ("affine_swish", (torch.zeros(0, 3, 2, 2, device=device), sc, sh)),
        "affine_swish_backward": ("affine_swish_backward", (s, h, sc, sh)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases("cpu")))
def test_opcheck(kernel, case):
    op, args = _opcheck_cases(kernel.device)[case]
    kernel.require(op.replace("_backward", ""))
    torch.library.opcheck(getattr(kernel.ops, op).default, args)


@pytest.mark.parametrize("name", CASES)
def test_compiles_to_one_graph(kernel, name):
    # torch.compile traces the public op (its checks and dispatch included) and its autograd
    # into one graph; "aot_eager" runs the ops' fake kernels and skips code generation.
    case = CASES[name]
    kernel.require(case.op)
    inputs = [t.requires_grad_() for t in case.inputs((2, 3, 4, 6), torch.float64,
                                                      kernel.device)]

    def loss(*ts):
        return (case.call(ts, kernel.backend) ** 2).sum()

    torch._dynamo.reset()
    value = torch.compile(loss, backend="aot_eager", fullgraph=True)(*inputs)
    got = torch.autograd.grad(value, inputs)
    expected_value = loss(*inputs)
    expected = torch.autograd.grad(expected_value, inputs)
    assert_close(value, expected_value, TOL)
    for a, b in zip(got, expected):
        assert_close(a, b, TOL)


def _step_on_fixed_tensors(case, kernel):
    """``(inputs, step, want)``: step() runs the public op and its backward on fixed CUDA
    tensors (as a graph needs); want(values) the reference ``(out, grads)`` at those values."""
    shape = (2, 4, 8, 8)  # planes a multiple of every vector width: the CUDA vector paths
    inputs = [t.requires_grad_() for t in case.inputs(shape, torch.float32, kernel.device)]
    grad = randn(case.out_shape(shape), device=kernel.device, seed=18)

    def step():
        out = case.call(inputs, kernel.backend)
        return (out,) + torch.autograd.grad(out, inputs, grad)

    return inputs, step, lambda values: value_and_grads(case, values, grad)


def _assert_step(got, want):
    out, grads = got[0], got[1:]
    assert_close(out, want[0], TOL, "out")
    assert_grads_close(grads, want[1], out.numel())


@pytest.mark.graphs
@pytest.mark.parametrize("name", CASES)
def test_captured_in_a_cuda_graph(kernel, name):
    if not kernel.is_cuda:
        pytest.skip("CUDA graphs need a CUDA device")
    case = CASES[name]
    kernel.require(case.op)
    inputs, step, want = _step_on_fixed_tensors(case, kernel)
    # Each reset (before the warm-up, the capture and the replay) writes other values: the
    # outputs hold the replay's results only if the kernels were captured, not run at capture.
    states = [case.inputs(tuple(inputs[0].shape), torch.float32, kernel.device, seed=20 + k)
              for k in range(3)]
    it = iter(states)

    def reset():
        with torch.no_grad():
            for t, v in zip(inputs, next(it)):
                t.copy_(v)

    _assert_step(helpers.captured(step, reset), want(states[2]))


@pytest.mark.graphs
@pytest.mark.parametrize("name", CASES)
def test_runs_on_the_current_stream(kernel, name):
    if not kernel.is_cuda:
        pytest.skip("streams are CUDA's")
    case = CASES[name]
    kernel.require(case.op)
    inputs, step, want = _step_on_fixed_tensors(case, kernel)
    values = case.inputs(tuple(inputs[0].shape), torch.float32, kernel.device, seed=30)
    with torch.no_grad():
        for t in inputs:
            t.fill_(float("nan"))

    def on_side_stream():
        # The side stream spins, then writes the inputs: a kernel launched on any other
        # stream would read the NaNs still there.
        torch.cuda._sleep(20_000_000)
        with torch.no_grad():
            for t, v in zip(inputs, values):
                t.copy_(v)
        return step()

    _assert_step(helpers.on_side_stream(on_side_stream), want(values))


@pytest.mark.parametrize("name", ["affine_swish", "nvae_cell_tail"])
def test_reductions_are_deterministic(kernel, name):
    # dscale, dshift and dgate are sums in an order the kernels fix (per-plane partial sums,
    # no atomics): the same bits on every call and, on the CPU, for any thread count.
    # 40 planes of 900: two parallel tasks of the CPU kernels, five CUDA reduction splits.
    case = CASES[name]
    kernel.require(case.op)
    shape = (20, 2, 30, 30)
    inputs = case.inputs(shape, torch.float32, kernel.device, seed=40)
    args = case.backward_inputs(randn(shape, device=kernel.device, seed=41), inputs)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = case.backward(kernel.ops, *args)
        torch.set_num_threads(3)
        for _ in range(2):
            for a, b in zip(case.backward(kernel.ops, *args), first):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_bad_inputs_to_the_public_ops(kernel):
    # TypeError for a non-tensor, ValueError for shapes, dtypes, devices and backends, before
    # any kernel runs.
    for op in OPS:
        kernel.require(op)
    dev, backend = kernel.device, kernel.backend

    def z(*shape, dtype=torch.float32, device=dev):
        return torch.zeros(shape, dtype=dtype, device=device)

    h = z(2, 3, 4, 6)
    bad = [
        (TypeError, "torch.Tensor", lambda: ebm_block_tail(h, [0.0], backend=backend)),
        (ValueError, "shape", lambda: ebm_block_tail(h, z(2, 3, 4, 5), backend=backend)),
        (ValueError, "dtype", lambda: ebm_block_tail(h, h.double(), backend=backend)),
        (ValueError, "even H and W", lambda: ebm_block_tail(z(2, 3, 5, 6), z(2, 3, 5, 6),
                                                            downsample=True, backend=backend)),
        (ValueError, r"\[B, C, H, W\]", lambda: ebm_block_tail(z(3, 4), z(3, 4),
                                                              backend=backend)),
        (ValueError, "is on meta", lambda: ebm_block_tail(h, z(2, 3, 4, 6, device="meta"),
                                                          backend=backend)),
        (ValueError, "floating", lambda: ebm_block_tail(h.long(), h.long(), backend=backend)),
        (TypeError, "torch.Tensor", lambda: nvae_cell_tail(h, h, [[1.0]], backend=backend)),
        (ValueError, "gate must have shape", lambda: nvae_cell_tail(h, h, z(3, 2),
                                                                    backend=backend)),
        (ValueError, "dtype", lambda: nvae_cell_tail(h, h, z(2, 3, dtype=torch.float16),
                                                     backend=backend)),
        (ValueError, "floating", lambda: nvae_cell_tail(h, h, z(2, 3, dtype=torch.complex64),
                                                        backend=backend)),
        (ValueError, "scale must have shape", lambda: affine_swish(h, z(4), z(3),
                                                                   backend=backend)),
        (ValueError, "at least 2 dims", lambda: affine_swish(z(3), z(3), z(3), backend=backend)),
        (ValueError, "dtype", lambda: affine_swish(h, z(3), z(3, dtype=torch.float64),
                                                   backend=backend)),
        (ValueError, "backend must be one of", lambda: affine_swish(h, z(3), z(3),
                                                                    backend="cuda")),
        (ValueError, "backend must be one of", lambda: nvae_cell_tail(h, h, backend="gpu")),
    ]
    for error, match, call in bad:
        with pytest.raises(error, match=match):
            call()


def test_raw_ops_refuse_what_breaks_memory(kernel):
    # The raw ops check what keeps the kernels inside their tensors and reading the right
    # element type: shapes (one shape for tensors read with one index, even H and W when
    # pooling, gate [B, C], scale and shift [C]), dtypes (one kernel dtype).
    for op in OPS:
        kernel.require(op)
    ops, dev = kernel.ops, kernel.device

    def z(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=dev)

    h, gate, c = z(2, 3, 4, 6), z(2, 3), z(3)
    bad = [
        ("shape", lambda: ops.ebm_block_tail(h, z(2, 3, 4, 5), False)),
        ("even H and W", lambda: ops.ebm_block_tail(z(2, 3, 5, 6), z(2, 3, 5, 6), True)),
        (r"\[B, C, H, W\]", lambda: ops.ebm_block_tail(z(3, 4), z(3, 4), False)),
        ("dtype", lambda: ops.ebm_block_tail(h, h.double(), False)),
        ("float16", lambda: ops.ebm_block_tail(h.long(), h.long(), False)),
        ("shape", lambda: ops.ebm_block_tail_backward(z(2, 3, 2, 3), h, True)),
        ("dtype", lambda: ops.ebm_block_tail_backward(h, h.double(), False)),
        ("shape", lambda: ops.nvae_cell_tail(z(2, 3, 4, 5), h, gate, 0.1)),
        ("gate must have shape", lambda: ops.nvae_cell_tail(h, h, z(3, 2), 0.1)),
        ("dtype", lambda: ops.nvae_cell_tail(h, h, gate.double(), 0.1)),
        ("float16", lambda: ops.nvae_cell_tail(h.long(), h.long(), gate.long(), 0.1)),
        ("shape", lambda: ops.nvae_cell_tail_backward(z(2, 3, 4, 5), h, gate, 0.1)),
        ("gate must have shape", lambda: ops.nvae_cell_tail_backward(h, h, z(2, 4), 0.1)),
        ("shift", lambda: ops.affine_swish(h, c, z(2))),
        (r"\[N, C, \.\.\.\]", lambda: ops.affine_swish(z(3), c, c)),
        ("dtype", lambda: ops.affine_swish(h, c.double(), c)),
        ("float16", lambda: ops.affine_swish(h.long(), c.long(), c.long())),
        ("shape", lambda: ops.affine_swish_backward(z(2, 3), h, c, c)),
        ("dtype", lambda: ops.affine_swish_backward(h.double(), h, c, c)),
    ]
    for match, call in bad:
        with pytest.raises(RuntimeError, match=match):
            call()


# =============================================================================== no kernel target

def test_registered_with_native_and_triton():
    assert set(OPS) <= set(registered_ops())
    for op in OPS:
        spec = _dispatch._ops[op]
        assert spec.native == f"vaebm_fast::{op}" and spec.triton
        # "auto" on the CPU never picks the Triton interpreter.
        assert _dispatch.resolve_backend(op, "auto", "cpu") in ("native", "eager")


def test_auto_runs_the_native_kernels_on_the_cpu(native):
    # Measured faster at every size (benchmarks/results/ops_cpu.md): "auto" takes the kernel
    # for row-major inputs, small ones included.
    for name, case in CASES.items():
        assert _dispatch.resolve_backend(case.op, "auto", "cpu") == "native"
        inputs = case.inputs((1, 2, 2, 2), torch.float32, "cpu")
        _, calls = helpers.op_calls(case.call, inputs, "auto")
        assert calls[f"vaebm_fast::{case.op}"] == 1, name


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_keeps_channels_last(device):
    # FastSampler's CPU models run channels-last; there "auto" takes the eager references (the
    # kernels would hand back row-major outputs for the next convolution to convert), which
    # keep the layout. No kernel runs.
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for name, case in CASES.items():
        inputs = case.inputs((2, 6, 4, 6), torch.float32, device, seed=50)
        cl = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                   for t in inputs)
        out, calls = helpers.op_calls(case.call, cl, "auto")
        assert not [op for op in calls if op.startswith("vaebm_fast")], name
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert_close(out, case.reference([t.double() for t in inputs]), TOL, name)


def test_nvae_cell_tail_without_gate():
    # Without a gate the tail is one eager op, torch.add(skip, h, alpha=scale), for any backend
    # name (validated all the same).
    s, h = randn((2, 3, 4, 5), seed=1), randn((2, 3, 4, 5), seed=2)
    for backend in ("auto", "eager", "native", "triton"):
        torch.testing.assert_close(nvae_cell_tail(s, h, None, scale=0.3, backend=backend),
                                   s + 0.3 * h)
    with pytest.raises(ValueError, match="backend must be one of"):
        nvae_cell_tail(s, h, backend="gpu")


def test_meta_and_int_inputs():
    # Meta tensors (shape propagation) run the references, under "auto" as under "eager"; int
    # tensors are refused whatever the backend (the references would round them).
    h = torch.zeros(2, 3, 4, 6, device="meta")
    gate, c = torch.zeros(2, 3, device="meta"), torch.zeros(3, device="meta")
    for backend in ("auto", "eager"):
        assert ebm_block_tail(h, h, downsample=True, backend=backend).shape == (2, 3, 2, 3)
        assert nvae_cell_tail(h, h, gate, backend=backend).shape == h.shape
        assert affine_swish(h, c, c, backend=backend).device.type == "meta"
        hi = torch.zeros(2, 3, 4, 6, dtype=torch.int64)
        with pytest.raises(ValueError, match="floating"):
            ebm_block_tail(hi, hi, backend=backend)
        with pytest.raises(ValueError, match="floating"):
            affine_swish(hi, torch.ones(3), torch.zeros(3), backend=backend)


# =============================================================================== models

def _kernel_ran(calls, kernel, *ops):
    """The target's kernels of ``ops`` ran (a comparison with eager would be void otherwise)."""
    ns = "vaebm_fast" if kernel.backend == "native" else "vaebm_fast_triton"
    missing = [op for op in ops if not calls[f"{ns}::{op}"]]
    assert not missing, f"{kernel}: {missing} never ran"


def _compare_with_eager(kernel, run, ops, atol=1e-5, rtol=1e-4):
    """run() -> (output, grads) under the target's backend and under eager: equal. (The model
    tests turn TF32 off: on a GPU, TF32 convolutions would round inputs that differ in their
    last float32 bits to different 10-bit mantissas.)"""
    with default_backend(kernel.backend):
        (out_k, grads_k), calls = helpers.op_calls(run)
    _kernel_ran(calls, kernel, *ops)
    with default_backend("eager"):
        out_e, grads_e = run()
    torch.testing.assert_close(out_k, out_e, atol=atol, rtol=rtol)
    assert len(grads_k) == len(grads_e)
    for a, b in zip(grads_k, grads_e):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_energy_model_matches_eager(kernel, one_thread, no_tf32):
    # The sampler's input gradient and the training weight gradients of an EBM (LipSwish and
    # the block tails everywhere) equal the eager model's.
    from vaebm_fast.models import official_ebm
    for op in ("lip_swish", "ebm_block_tail"):
        kernel.require(op)
    torch.manual_seed(0)
    model = official_ebm("cifar32", n_channel=8).to(kernel.device)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(kernel.device)

    def run():
        xi = x.clone().requires_grad_()
        energy = model(xi).sum()
        return energy.detach(), torch.autograd.grad(energy, [xi] + list(model.parameters()))

    _compare_with_eager(kernel, run, ("swish_forward", "swish_backward", "ebm_block_tail",
                                      "ebm_block_tail_backward"))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_nvae_matches_eager(kernel, one_thread, train, no_tf32):
    # The decoder's output and gradients: training mode (nvae_cell_tail, Swish) and eval mode
    # (BatchNorm + Swish as affine_swish too).
    if kernel.backend == "triton" and kernel.device == "cpu":
        pytest.skip("~1000 Triton programs per pass (one per plane of the reductions), ~15 s "
                    "in the interpreter; the ops are covered one by one above")
    from vaebm_fast.models.nvae import HierarchicalVAE, HierarchicalVAEConfig
    ops = ("nvae_cell_tail", "nvae_cell_tail_backward") + (
        () if train else ("affine_swish", "affine_swish_backward"))
    for op in OPS:
        kernel.require(op)
    torch.manual_seed(0)
    model = HierarchicalVAE(HierarchicalVAEConfig.preset("tiny")).to(kernel.device)
    model.train()
    with torch.no_grad():  # BN running statistics away from their init values
        for _ in range(2):
            model.elbo_terms(torch.rand(8, *model.data_shape, device=kernel.device))
    model.train(train)
    gen = torch.Generator().manual_seed(1)
    eps_z = [torch.randn(3, *s, generator=gen).to(kernel.device) for s in model.latent_shapes]
    eps_x = torch.randn(3, *model.data_shape, generator=gen).to(kernel.device)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(state)  # training mode updates BN statistics: start alike
        ez = [e.clone().requires_grad_() for e in eps_z]
        x = model.decode_eps(ez, eps_x)
        weights = torch.linspace(-1, 1, x.numel(), device=x.device).view_as(x)
        return x.detach(), torch.autograd.grad((x * weights).sum(), ez + list(model.parameters()),
                                               allow_unused=True)

    _compare_with_eager(kernel, run, ops)


def test_resblock_tail_is_the_fused_op(kernel, no_tf32):
    from vaebm_fast.models.energy import ResBlock
    kernel.require("ebm_block_tail")
    torch.manual_seed(0)
    block = ResBlock(4, 6, downsample=True).to(kernel.device)
    x = randn((2, 4, 6, 6), device=kernel.device, seed=60)
    with default_backend(kernel.backend):
        y, calls = helpers.op_calls(block, x)
    _kernel_ran(calls, kernel, "ebm_block_tail")
    with torch.no_grad():
        h = block.conv2(F.silu(block.conv1(x)) / 1.1)
        expected = F.silu(F.avg_pool2d(h + block.skip(x), 2)) / 1.1
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)


def _bn(c=3, seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


def test_bnswish_uses_the_fused_op_in_eval_only(kernel):
    from vaebm_fast.nn import BNSwish
    kernel.require("affine_swish")
    m = BNSwish(3)
    m.bn.load_state_dict(_bn().state_dict())
    m.to(kernel.device)
    x = randn((2, 3, 5, 7), device=kernel.device).requires_grad_()
    with default_backend(kernel.backend):
        m.train()
        y_train, saved_train = helpers.saved_tensors(m, x)
        m.eval()
        (y_eval, saved_eval), calls = helpers.op_calls(helpers.saved_tensors, m, x)
    _kernel_ran(calls, kernel, "affine_swish")
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


def test_se_module_api_and_keys():
    # The SE gate NVAE's cells feed to nvae_cell_tail: its state-dict keys and the gate alone.
    from vaebm_fast.nn import SE
    se = SE(8, 8)
    assert set(se.state_dict()) == {"se.0.weight", "se.0.bias", "se.2.weight", "se.2.bias"}
    x = randn((2, 8, 3, 5))
    gate = se.gate(x)
    assert gate.shape == (2, 8)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    torch.testing.assert_close(gate, torch.sigmoid(se.se[2](torch.relu(se.se[0](x.mean((2, 3)))))))
