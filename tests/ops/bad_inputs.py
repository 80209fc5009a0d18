"""Generated inputs for every public op: valid ones checked against the op's eager reference,
invalid ones that must raise a clear error. Shared by tests/ops/test_bad_inputs.py (hypothesis
properties) and scripts/bad_input_census.py (a count of outcomes per op and backend).

``VALID[op](backend, device)`` and ``INVALID[op](backend, device)`` are hypothesis strategies of
:class:`Valid` and :class:`Invalid` cases. A case holds closures that build fresh tensors every
time they run, so a case can run on the target backend and on the reference without one run
seeing the other's in-place writes.

What the valid inputs cover: odd and empty shapes (sizes 0..6, 0-d tensors where the op takes
them), layouts (contiguous, every-other-column, transposed, row-sliced, misaligned storage,
and expanded (stride 0) for tensors the op only reads), every kernel dtype, seeds in
[0, 2**63), stream offsets at the edges that matter (a call index's low word carrying at
2**34, 2**32, and the last offsets before 2**63 - 1), scalars as Python numbers, NumPy numbers
or 0-d tensors. The invalid inputs: wrong dtypes (int, bool, complex), wrong shapes, wrong
types (bool or str for a number, a list for a tensor), aliased or overlapping outputs, the same
tensor twice, seeds and offsets out of range (-1, 2**63, 2**64, offset + numel past 2**63 - 1),
NaN/inf scalars, mismatched list lengths; each with the exception type it must raise and a
pattern its message must contain (the argument's name).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence, Tuple, Type, Union

import numpy as np
import torch
from hypothesis import strategies as st

from vaebm_fast import ops
from vaebm_fast._kernel_rules import KERNEL_DTYPES, LIPSWISH_SCALE

from . import helpers

MAX = 2**63 - 1
ErrorTypes = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


# ------------------------------------------------------------------------------ cases

@dataclass
class Valid:
    """``check()`` runs the op on the target and its reference and raises AssertionError on a
    disagreement (any other exception is the op failing on a valid input)."""

    label: str
    check: Callable[[], None]


@dataclass
class Invalid:
    """``run()`` must raise ``error`` with a message matching ``match``; ``untouched()`` gives
    the tensors the failed call must not have written (compared before and after)."""

    label: str
    run: Callable[[], object]
    error: ErrorTypes
    match: str
    untouched: Callable[[], Sequence[torch.Tensor]] = field(default=lambda: ())


def invalid_outcome(case: Invalid) -> Tuple[str, str]:
    """("clear" | "unclear" | "silent", detail) of running an invalid case: clear is the
    expected exception type with a message naming the argument and nothing written."""
    watched = list(case.untouched())
    before = [t.clone() for t in watched]
    try:
        result = case.run()
    except case.error as error:
        message = str(error)
        if not re.search(case.match, message):
            return "unclear", f"{type(error).__name__}: {message!r} lacks /{case.match}/"
        if "\n" in message.strip():
            return "unclear", f"{type(error).__name__}: message spans lines: {message!r}"
        if not all(torch.equal(t, b) for t, b in zip(watched, before)):
            return "unclear", "raised as expected but wrote its inputs first"
        return "clear", ""
    except Exception as error:  # noqa: BLE001 - every other exception is the finding
        return "unclear", f"{type(error).__name__} (wanted {case.error}): {error}"
    return "silent", f"returned {type(result).__name__} instead of raising"


def valid_outcome(case: Valid) -> Tuple[str, str]:
    """("agreed" | "disagreed" | "errored", detail) of a valid case."""
    try:
        case.check()
    except AssertionError as error:
        return "disagreed", str(error)[:500]
    except Exception as error:  # noqa: BLE001
        return "errored", f"{type(error).__name__}: {error}"
    return "agreed", ""


# ------------------------------------------------------------------------------ tolerances
# The kernels compute float16/bfloat16/float32 in float32 and float64 in float64, as the
# references do; they differ in the normals (a few float32 ulps, tests/ops/test_rng.py) and the
# order of sums, and a float16/bfloat16 result can round one ulp apart.

ELEMENTWISE_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12),
                   torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
NOISE_TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-5, 0.0),
             torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}
# Sums of up to a few hundred terms (reductions in backward, power iteration).
SUM_TOL = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-9, 1e-9),
           torch.float16: (2e-2, 1e-2), torch.bfloat16: (0.2, 2e-2)}
# half_sq_norm, keyed by the states' dtype: sums of squares of states that differ by
# NOISE_TOL (the float32 normals' ulps reach float64 states too).
NORM_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-6, 1e-6),
            torch.float16: (1e-2, 1e-3), torch.bfloat16: (0.2, 1e-2)}


def close(actual, expected, tol, what: str) -> None:
    if isinstance(actual, torch.Tensor):
        assert isinstance(expected, torch.Tensor), what
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
        if not actual.is_floating_point():
            assert torch.equal(actual.cpu(), expected.cpu()), f"{what}: values differ"
            return
        helpers.assert_close(actual, expected, tol, what)
    elif isinstance(actual, (list, tuple)):
        assert len(actual) == len(expected), f"{what}: {len(actual)} vs {len(expected)} items"
        for i, (a, e) in enumerate(zip(actual, expected)):
            close(a, e, tol, f"{what}[{i}]")
    else:
        assert actual == expected, f"{what}: {actual!r} vs {expected!r}"


# ------------------------------------------------------------------------------ strategies

def _small(triton: bool) -> int:
    return 3 if triton else 6  # the Triton interpreter is slow: tiny sizes there


@st.composite
def shapes(draw, min_dims=0, max_dims=3, max_size=6, min_size=0):
    return tuple(draw(st.lists(st.integers(min_size, max_size), min_size=min_dims,
                               max_size=max_dims)))


def kernel_dtypes(backend: str, allowed=KERNEL_DTYPES):
    return st.sampled_from(list(allowed))


WRITABLE_LAYOUTS = ("contiguous", "strided", "transposed", "sliced", "misaligned")
READ_LAYOUTS = WRITABLE_LAYOUTS + ("expanded",)


def _expanded(t: torch.Tensor) -> torch.Tensor:
    """Same shape, every element of dim 0 the same memory (stride 0), when dim 0 > 1."""
    if t.dim() == 0 or t.shape[0] < 2:
        return t
    return t[:1].clone().expand(t.shape)


def lay_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A new tensor with t's values in ``layout`` (never t itself: some layouts of some shapes,
    a transposed 1-D tensor say, are t's own layout)."""
    t = t.clone()
    if t.dim() == 0 or layout == "contiguous":
        return t
    return {"strided": helpers.non_contiguous, "transposed": helpers.transposed,
            "sliced": helpers.spaced, "misaligned": helpers.misaligned,
            "expanded": _expanded}[layout](t)


@st.composite
def tensor_maker(draw, shape, dtype, device, writable=True, scale=1.0):
    """A zero-argument function making the same tensor (values, layout) afresh each call."""
    layout = draw(st.sampled_from(WRITABLE_LAYOUTS if writable else READ_LAYOUTS))
    seed = draw(st.integers(0, 2**16))
    base = helpers.randn(shape, dtype, device, seed=seed, scale=scale)
    if layout == "expanded":
        base = _expanded(base)
    return lambda: lay_out(base, layout)


def seeds():
    return st.one_of(st.integers(0, MAX), st.sampled_from([0, 2**32 - 1, 2**32, MAX]))


def offsets(total: int):
    """Stream offsets at the edges: small, around a call index's low-word carry (offset 2**34,
    call 2**32), around 2**32, and the last ones with offset + total <= 2**63 - 1."""
    last = MAX - total
    return st.one_of(st.integers(0, 2**20), st.integers(2**34 - 9, 2**34 + 9),
                     st.integers(2**32 - 9, 2**32 + 9), st.integers(max(0, last - 9), last))


@st.composite
def as_int(draw, value: int):
    """``value`` as a Python int, a NumPy integer or a 0-d int64 tensor."""
    form = draw(st.sampled_from(["python", "numpy", "tensor"]))
    if form == "numpy":
        return np.int64(value)
    if form == "tensor":
        return torch.tensor(value, dtype=torch.int64)
    return value


@st.composite
def as_real(draw, value: float):
    """``value`` as a Python float, a NumPy float64/float32 (when exact) or a 0-d tensor."""
    form = draw(st.sampled_from(["python", "numpy", "tensor"]))
    if form == "numpy":
        return np.float64(value)
    if form == "tensor":
        return torch.tensor(value, dtype=torch.float64)
    return value


def bad_ints():
    """(value, error type) of what an int argument in [0, 2**63) must refuse."""
    return st.sampled_from([(-1, ValueError), (2**63, ValueError), (2**64, ValueError),
                            (2**64 + 5, ValueError), (1.0, TypeError), (True, TypeError),
                            ("3", TypeError), (None, TypeError), (float("nan"), TypeError),
                            (torch.tensor([1, 2]), TypeError),
                            (torch.tensor(True), TypeError)])


def bad_positive_reals():
    """(value, error type) of what a finite real > 0 must refuse."""
    return st.sampled_from([(float("nan"), ValueError), (float("inf"), ValueError),
                            (-float("inf"), ValueError), (0.0, ValueError), (-1.0, ValueError),
                            (True, TypeError), ("0.1", TypeError), (None, TypeError),
                            (torch.tensor([0.1]), TypeError), (1j, TypeError)])


def bad_dtypes():
    return st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])


def bad_tensor_of(dtype, shape, device):
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device) + 1


def backend_names():
    return st.sampled_from(["cuda", "Native", "", "fast", None])


# ------------------------------------------------------------------------------ langevin

def _langevin_options(draw):
    opts = {"step_size": draw(as_real(draw(st.floats(1e-4, 1.0)))),
            "prior_weight": draw(as_real(draw(st.floats(-1.0, 2.0))))}
    if draw(st.booleans()):
        opts["noise_scale"] = draw(as_real(draw(st.floats(0.0, 2.0))))
    if draw(st.booleans()):
        opts["grad_clip"] = draw(st.floats(1e-3, 10.0))
    if draw(st.booleans()):
        low = draw(st.one_of(st.none(), st.floats(-3.0, 0.0)))
        high = draw(st.one_of(st.none(), st.floats(0.1, 3.0)))
        opts["clamp"] = (low, high)
    return opts


@st.composite
def langevin_valid(draw, backend, device, stepper=False):
    triton = backend == "triton"
    dtype = draw(kernel_dtypes(backend))
    with_norm = draw(st.booleans())
    rows = draw(st.integers(0, 4))
    n = draw(st.integers(1 if with_norm else 0, 3))
    shape_list = []
    for _ in range(n):
        s = draw(shapes(min_dims=1 if with_norm else 0, max_size=_small(triton)))
        shape_list.append((rows,) + s[1:] if with_norm and s else s)
    states = [draw(tensor_maker(s, dtype, device)) for s in shape_list]
    grads = [draw(tensor_maker(s, dtype, device, writable=False, scale=3.0))
             for s in shape_list]
    opts = _langevin_options(draw)
    total = sum(math.prod(s) for s in shape_list)
    seed, offset = draw(seeds()), draw(offsets(total))
    seed_arg, offset_arg = draw(as_int(seed)), draw(as_int(offset))
    norm_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def step(backend_name):
        ts, gs = [make() for make in states], [make() for make in grads]
        norm = torch.full((rows,), 7.0, dtype=norm_dtype, device=device) if with_norm else None
        if stepper:
            run = ops.LangevinStepper(ts, backend=backend_name, **opts)
            nxt = run(gs, seed=seed_arg, offset=offset_arg, half_sq_norm=norm)
        else:
            nxt = ops.langevin_step_(ts, gs, seed=seed_arg, offset=offset_arg,
                                     half_sq_norm=norm, backend=backend_name, **opts)
        return nxt, ts, norm

    def check():
        nxt, ts, norm = step(backend)
        want_nxt, want_ts, want_norm = step("eager")
        assert nxt == want_nxt == offset + total, f"next offset {nxt} vs {want_nxt}"
        close(ts, want_ts, NOISE_TOL, "tensors")
        if with_norm:
            close(norm, want_norm, {norm_dtype: NORM_TOL[dtype]}, "half_sq_norm")

    return Valid(f"{len(shape_list)} x {dtype} {shape_list} seed={seed} offset={offset} "
                 f"{opts} norm={with_norm}", check)


@st.composite
def langevin_invalid(draw, backend, device, stepper=False):
    dtype = draw(kernel_dtypes(backend))
    rows = draw(st.integers(1, 3))
    shape_list = [(rows,) + draw(shapes(min_dims=0, max_dims=2, min_size=1, max_size=4))
                  for _ in range(draw(st.integers(1, 3)))]
    ts = [helpers.randn(s, dtype, device, seed=i) for i, s in enumerate(shape_list)]
    gs = [helpers.randn(s, dtype, device, seed=10 + i) for i, s in enumerate(shape_list)]
    total = sum(t.numel() for t in ts)
    kw = {"step_size": 0.1}
    call = {"seed": 0, "offset": 0, "half_sq_norm": None}
    i = draw(st.integers(0, len(ts) - 1))
    kind = draw(st.sampled_from([
        "state dtype", "grad dtype", "grad shape", "grad broadcastable", "fewer grads",
        "more grads", "grad not tensor", "state not tensor", "tensors not list", "twice",
        "view twice", *([] if stepper else ["grad in other state"]), "expanded state",
        "mixed dtypes", "seed", "offset", "offset overflow", "step_size", "noise_scale",
        "prior_weight", "grad_clip", "clamp", "norm dtype", "norm shape", "norm strided",
        "norm aliases state", "norm without tensors", "backend"]))
    error, match = ValueError, None
    if kind == "state dtype":
        bad = draw(bad_dtypes())
        ts = [bad_tensor_of(bad, t.shape, device) for t in ts]
        gs = [bad_tensor_of(bad, t.shape, device) for t in ts]
        match = "tensors must be float16"
    elif kind == "grad dtype":
        other = draw(st.sampled_from([d for d in (*KERNEL_DTYPES, torch.int64, torch.bool)
                                      if d != dtype]))
        gs[i] = bad_tensor_of(other, gs[i].shape, device)
        match = rf"grads\[{i}\] has dtype"
    elif kind == "grad shape":
        gs[i] = helpers.randn(ts[i].shape + (2,), dtype, device)
        match = rf"grads\[{i}\] must have the shape of tensors\[{i}\]"
    elif kind == "grad broadcastable":  # [rows, 1] for [rows, 2]: eager would broadcast it
        ts[i] = helpers.randn((rows, 2), dtype, device)
        gs[i] = helpers.randn((rows, 1), dtype, device)
        match = rf"grads\[{i}\] must have the shape"
    elif kind == "fewer grads":
        gs = gs[:-1]
        match = "same length"
    elif kind == "more grads":
        gs = gs + [gs[0].clone()]
        match = "same length"
    elif kind == "grad not tensor":
        gs[i] = draw(st.sampled_from([None, 1.0, "g", np.zeros(3)]))
        error, match = TypeError, rf"grads\[{i}\] must be a torch.Tensor"
    elif kind == "state not tensor":
        ts[i] = draw(st.sampled_from([None, 2, "x"]))
        error, match = TypeError, rf"tensors\[{i}\] must be a torch.Tensor"
    elif kind == "tensors not list":
        ts = draw(st.sampled_from([{"a": ts[0]}, 3, (t for t in ts)]))
        error, match = TypeError, "tensors must be a tensor or a list"
    elif kind == "twice":
        ts = ts + [ts[i]]
        gs = gs + [gs[i].clone()]
        match = rf"tensors\[{len(ts) - 1}\] is passed twice"
    elif kind == "view twice":
        ts = ts + [draw(st.sampled_from([ts[i][:], ts[i].view(ts[i].shape),
                                         ts[i].reshape(-1)[: max(1, ts[i].numel() // 2)]]))]
        gs = gs + [torch.zeros_like(ts[-1])]
        match = rf"tensors\[{len(ts) - 1}\] shares memory with tensors\[{i}\]"
    elif kind == "grad in other state":  # a state's memory passed as another's gradient
        # (langevin_step_ only: a stepper checks its gradients' shapes per step, not their
        # memory, which autograd never shares with the states; see LangevinStepper)
        ts = [ts[0], torch.zeros_like(ts[0])]
        gs = [gs[0], ts[0]]
        match = r"grads\[1\] shares memory with tensors\[0\]"
    elif kind == "expanded state":
        ts[i] = helpers.randn((1,) + ts[i].shape[1:], dtype, device).expand(
            (max(2, rows),) + ts[i].shape[1:])
        gs[i] = torch.zeros(ts[i].shape, dtype=dtype, device=device)
        match = rf"tensors\[{i}\] has elements sharing memory"
    elif kind == "mixed dtypes":
        if len(ts) < 2:
            ts, gs = ts + [ts[0].clone()], gs + [gs[0].clone()]
        other = draw(st.sampled_from([d for d in KERNEL_DTYPES if d != dtype]))
        ts[1], gs[1] = ts[1].to(other), gs[1].to(other)
        match = r"tensors\[1\] has dtype"
    elif kind == "seed":
        call["seed"], error = draw(bad_ints())
        match = "seed"
    elif kind == "offset":
        call["offset"], error = draw(bad_ints())
        match = "offset"
    elif kind == "offset overflow":
        call["offset"] = MAX - total + draw(st.integers(1, 2**20))
        match = "offset"  # past 2**63 - 1 itself, or with the normals
    elif kind in ("step_size", "noise_scale"):
        kw[kind], error = draw(bad_positive_reals())
        if kind == "noise_scale" and (kw[kind] is None or kw[kind] == 0.0):
            kw[kind] = -0.5  # valid for a noise scale: None (sqrt(step_size)), 0 (no noise)
            error = ValueError
        match = kind
    elif kind == "prior_weight":
        kw[kind], error = draw(st.sampled_from([(float("nan"), ValueError),
                                                (float("inf"), ValueError), (True, TypeError),
                                                ("1", TypeError), (None, TypeError)]))
        match = kind
    elif kind == "grad_clip":
        kw[kind], error = draw(st.sampled_from([(float("nan"), ValueError), (0.0, ValueError),
                                                (-1.0, ValueError), ("1", TypeError),
                                                (True, TypeError)]))
        match = kind
    elif kind == "clamp":
        kw[kind], error, match = draw(st.sampled_from([
            ((float("nan"), 1.0), ValueError, "clamp"), ((1.0, 0.0), ValueError, "clamp"),
            ((0.5, 0.5), ValueError, "clamp"), ("ab", TypeError, "clamp"),
            ((0.0,), TypeError, "clamp"), ((0.0, "1"), TypeError, r"clamp\[1\]"),
            (0.0, TypeError, "clamp"), ((True, 1.0), TypeError, r"clamp\[0\]")]))
    elif kind == "norm dtype":
        call["half_sq_norm"] = torch.zeros(rows, dtype=draw(st.sampled_from(
            [torch.float16, torch.int64] + ([torch.float32] if dtype == torch.float64 else
                                            [torch.float64]))), device=device)
        match = "half_sq_norm must be"
    elif kind == "norm shape":
        call["half_sq_norm"] = torch.zeros(draw(st.sampled_from([(rows + 1,), (rows, 1), ()])),
                                           dtype=ops_norm_dtype(dtype), device=device)
        match = "half_sq_norm must have shape"
    elif kind == "norm strided":
        call["half_sq_norm"] = torch.zeros(2 * rows, dtype=ops_norm_dtype(dtype),
                                           device=device)[::2]
        match = "half_sq_norm must be contiguous" if rows > 1 else None
        if match is None:  # a 1-element slice is contiguous: a non-tensor instead
            call["half_sq_norm"], error, match = [0.0], TypeError, "half_sq_norm must be"
    elif kind == "norm aliases state":  # the output row in a state's memory
        flat = torch.zeros(2 * rows, dtype=ops_norm_dtype(dtype), device=device)
        ts = [flat.view(rows, 2)]
        gs = [torch.zeros(rows, 2, dtype=flat.dtype, device=device)]
        call["half_sq_norm"] = flat[:rows]
        match = r"half_sq_norm shares memory with tensors\[0\]"
    elif kind == "norm without tensors":  # an empty list is a no-op, but has no B for the row
        ts, gs = [], []
        call["half_sq_norm"] = torch.zeros(rows, device=device)
        match = "half_sq_norm needs at least one tensor"
    elif kind == "backend":
        backend = draw(backend_names())
        match = "backend must be one of"
    assert match is not None

    states = [t for t in ts if isinstance(t, torch.Tensor)] if isinstance(ts, list) else []

    def run():
        if stepper:
            run_step = ops.LangevinStepper(ts, backend=backend, **kw)
            return run_step(gs, **call)
        return ops.langevin_step_(ts, gs, backend=backend, **kw, **call)

    return Invalid(f"{kind}: {len(shape_list)} x {dtype} {shape_list} kw={kw} call="
                   f"{ {k: v for k, v in call.items() if k != 'half_sq_norm'} }",
                   run, error, match, untouched=lambda: states)


def ops_norm_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------ rng

@st.composite
def philox_normal_valid(draw, backend, device):
    n = draw(st.integers(0, 9 if backend == "triton" else 70))
    dtype = draw(st.sampled_from(list(KERNEL_DTYPES)))
    seed, offset = draw(seeds()), draw(offsets(n))
    args = {"seed": draw(as_int(seed)), "offset": draw(as_int(offset))}
    n_arg = draw(as_int(n))

    def check():
        got = ops.philox_normal(n_arg, dtype=dtype, device=device, backend=backend, **args)
        want = ops.philox_normal_reference(n, seed=seed, offset=offset, device=device,
                                           dtype=dtype)
        close(got, want, NOISE_TOL, "normals")

    return Valid(f"n={n} {dtype} seed={seed} offset={offset}", check)


@st.composite
def philox_normal_invalid(draw, backend, device):
    kw = {"seed": 0, "offset": 0, "dtype": torch.float32, "device": device, "backend": backend}
    n = 5
    kind = draw(st.sampled_from(["n", "seed", "offset", "overflow", "dtype", "backend"]))
    if kind == "n":
        n, error = draw(bad_ints())
        match = r"\bn\b"
    elif kind in ("seed", "offset"):
        kw[kind], error = draw(bad_ints())
        match = kind
    elif kind == "overflow":
        n = draw(st.integers(1, 100))
        kw["offset"], error = MAX - n + draw(st.integers(1, 100)), ValueError
        match = "offset"
    elif kind == "dtype":
        kw["dtype"], error = draw(st.sampled_from([(torch.int32, ValueError),
                                                   (torch.bool, ValueError),
                                                   (torch.complex64, ValueError),
                                                   ("float32", TypeError),
                                                   (np.float32, TypeError)]))
        match = "dtype"
    else:
        kw["backend"], error, match = draw(backend_names()), ValueError, "backend must be one"
    return Invalid(f"{kind}: n={n!r} {kw}", lambda: ops.philox_normal(n, **kw), error, match)


@st.composite
def philox4x32_valid(draw, backend, device):
    shape = draw(shapes(max_dims=2, max_size=_small(backend == "triton")))
    values = draw(st.lists(st.one_of(st.integers(-2**63, MAX),
                                     st.sampled_from([0, 2**32 - 1, 2**32, -1, -2**63, MAX])),
                           min_size=math.prod(shape), max_size=math.prod(shape)))
    base = torch.tensor(values, dtype=torch.int64, device=device).reshape(shape)
    layout = draw(st.sampled_from(READ_LAYOUTS))
    seed = draw(seeds())
    seed_arg = draw(as_int(seed))

    def check():
        offs = lay_out(base, layout)  # "expanded" repeats row 0: the reference reads the same
        got = ops.philox4x32(seed_arg, offs, backend=backend)
        close(got, ops.philox4x32_reference(seed, offs), None, "words")

    return Valid(f"seed={seed} offsets {layout} {values}", check)


@st.composite
def philox4x32_invalid(draw, backend, device):
    kind = draw(st.sampled_from(["dtype", "list", "seed", "backend", "not tensor"]))
    seed, offs = 0, torch.arange(3, device=device)
    if kind == "dtype":
        offs = bad_tensor_of(draw(st.sampled_from([torch.int32, torch.float32, torch.bool,
                                                    torch.uint8, torch.complex64])), (3,), device)
        error, match = ValueError, "offsets must be an int64 tensor"
    elif kind == "list":
        offs = draw(st.sampled_from([[2**64], [-2**63 - 1], [1.5], [[1], [2, 3]], [True],
                                     [1, 2.0]]))
        error, match = ValueError, "offsets must be an int64 tensor"
    elif kind == "not tensor":
        offs = draw(st.sampled_from(["abc", None, object()]))
        error, match = ValueError, "offsets must be an int64 tensor"
    elif kind == "seed":
        seed, error = draw(bad_ints())
        match = "seed"
    else:
        backend, error, match = draw(backend_names()), ValueError, "backend must be one"
    return Invalid(f"{kind}: seed={seed!r} offsets={offs!r}",
                   lambda: ops.philox4x32(seed, offs, backend=backend), error, match)


# ------------------------------------------------------------------------------ swish

def _forward_and_grad(fn, x_maker, g_maker, backend):
    """fn(x) and d(sum(fn(x) * g))/dx, for floating x (no grad for float16/bfloat16 on
    the CPU eager path is fine too: autograd supports them)."""
    x = x_maker().detach().requires_grad_()
    y = fn(x, backend)
    (dx,) = torch.autograd.grad(y, x, g_maker())
    return y.detach(), dx


@st.composite
def swish_valid(draw, backend, device, lip=False):
    func = ops.lip_swish if lip else ops.swish
    dtype = draw(kernel_dtypes(backend))
    shape = draw(shapes(max_size=_small(backend == "triton")))
    x = draw(tensor_maker(shape, dtype, device, writable=False, scale=4.0))
    g = draw(tensor_maker(shape, dtype, device, writable=False))

    def check():
        got = _forward_and_grad(lambda t, b: func(t, backend=b), x, g, backend)
        xr = x().double().requires_grad_()
        y = ops.swish_reference(xr, LIPSWISH_SCALE if lip else 1.0)
        (dx,) = torch.autograd.grad(y, xr, g().double())
        close(list(got), [y.detach().to(dtype), dx.to(dtype)], ELEMENTWISE_TOL, "y, dx")

    return Valid(f"{dtype} {shape}", check)


@st.composite
def swish_invalid(draw, backend, device, lip=False):
    func = ops.lip_swish if lip else ops.swish
    kind = draw(st.sampled_from(["dtype", "not tensor", "backend"]))
    x = torch.zeros(3, device=device)
    if kind == "dtype":
        x = bad_tensor_of(draw(bad_dtypes()), draw(shapes(max_size=3)), device)
        error, match = ValueError, "x must be a floating tensor"
    elif kind == "not tensor":
        x = draw(st.sampled_from([[1.0, 2.0], 1.0, None, np.zeros(3)]))
        error, match = TypeError, "x must be a torch.Tensor"
    else:
        backend, error, match = draw(backend_names()), ValueError, "backend must be one"
    return Invalid(f"{kind}: {x!r}", lambda: func(x, backend=backend), error, match)


# ------------------------------------------------------------------------------ epilogues

def _grads_of(outputs_fn, inputs, g):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = outputs_fn(*inputs)
    grads = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return [out.detach(), *grads]


@st.composite
def nchw(draw, backend, even=False):
    m = 3 if backend == "triton" else 4
    b, c = draw(st.integers(0, m)), draw(st.integers(0, m))
    h, w = draw(st.integers(0, m)), draw(st.integers(0, m))
    if even:
        h, w = 2 * (h // 2), 2 * (w // 2)
    return b, c, h, w


@st.composite
def ebm_valid(draw, backend, device):
    dtype = draw(kernel_dtypes(backend))
    downsample = draw(st.sampled_from([False, True, np.bool_(True)]))
    shape = draw(nchw(backend, even=bool(downsample)))
    h = draw(tensor_maker(shape, dtype, device, writable=False, scale=3.0))
    s = draw(tensor_maker(shape, dtype, device, writable=False))
    out_shape = (*shape[:2], shape[2] // 2, shape[3] // 2) if downsample else shape
    g = helpers.randn(out_shape, dtype, device, seed=5)

    def check():
        got = _grads_of(lambda a, b: ops.ebm_block_tail(a, b, downsample=downsample,
                                                        backend=backend), [h(), s()], g)
        want = _grads_of(lambda a, b: ops.ebm_block_tail_reference(a, b, bool(downsample))[0],
                         [h().double(), s().double()], g.double())
        close(got, [t.to(dtype) for t in want], SUM_TOL, "out, dh, dskip")

    return Valid(f"{dtype} {shape} downsample={downsample}", check)


@st.composite
def ebm_invalid(draw, backend, device):
    shape = (2, 3, 4, 4)
    h, s = torch.zeros(shape, device=device), torch.ones(shape, device=device)
    downsample = False
    kind = draw(st.sampled_from(["ndim", "shape", "dtype", "int", "odd", "downsample",
                                 "not tensor", "backend"]))
    error = ValueError
    if kind == "ndim":
        h = s = torch.zeros(draw(st.sampled_from([(3,), (2, 3, 4), (1, 2, 3, 4, 5)])),
                            device=device)
        match = r"h must be NCHW"
    elif kind == "shape":
        s = torch.zeros(2, 3, 4, 2, device=device)
        match = "skip has shape"
    elif kind == "dtype":
        s = s.double()
        match = "skip has dtype"
    elif kind == "int":
        h = bad_tensor_of(draw(bad_dtypes()), shape, device)
        match = "h must be a floating tensor"
    elif kind == "odd":
        h, s, downsample = torch.zeros(1, 1, 3, 4, device=device), torch.zeros(
            1, 1, 3, 4, device=device), True
        match = "downsample needs even H and W"
    elif kind == "downsample":
        downsample, error = draw(st.sampled_from(["yes", 1, None, torch.tensor(True)])), TypeError
        match = "downsample must be a bool"
    elif kind == "not tensor":
        s, error, match = draw(st.sampled_from([1.0, None, [0.0]])), TypeError, "skip must be a"
    else:
        backend, match = draw(backend_names()), "backend must be one"
    return Invalid(f"{kind}", lambda: ops.ebm_block_tail(h, s, downsample=downsample,
                                                         backend=backend), error, match)


@st.composite
def cell_valid(draw, backend, device):
    dtype = draw(kernel_dtypes(backend))
    shape = draw(nchw(backend))
    skip = draw(tensor_maker(shape, dtype, device, writable=False))
    h = draw(tensor_maker(shape, dtype, device, writable=False))
    gate = draw(st.one_of(st.none(), tensor_maker(shape[:2], dtype, device, writable=False)))
    scale = draw(st.floats(-2.0, 2.0))
    scale_arg = draw(as_real(scale))
    g = helpers.randn(shape, dtype, device, seed=6)

    def check():
        made = [skip(), h()] + ([gate()] if gate else [])
        got = _grads_of(lambda *t: ops.nvae_cell_tail(t[0], t[1], t[2] if gate else None,
                                                      scale=scale_arg, backend=backend),
                        made, g)
        if gate is None:
            want = _grads_of(lambda a, b: a.double() + scale * b.double(), made, g)
            want = [want[0].to(dtype), *want[1:]]
        else:
            want = _grads_of(lambda a, b, c: ops.nvae_cell_tail_reference(a, b, c, scale),
                             [t.double() for t in made], g.double())
            want = [t.to(dtype) for t in want]
        close(got, want, SUM_TOL, "out and grads")

    return Valid(f"{dtype} {shape} gate={gate is not None} scale={scale}", check)


@st.composite
def cell_invalid(draw, backend, device):
    shape = (2, 3, 4, 5)
    skip, h = torch.zeros(shape, device=device), torch.ones(shape, device=device)
    gate, scale = torch.ones(2, 3, device=device), 0.1
    kind = draw(st.sampled_from(["gate shape", "gate dtype", "gate not tensor", "scale",
                                 "h shape", "h int", "backend"]))
    error = ValueError
    if kind == "gate shape":
        gate = torch.ones(draw(st.sampled_from([(3, 2), (2, 3, 1), (2,)])), device=device)
        match = "gate must have shape"
    elif kind == "gate dtype":
        gate = gate.double()
        match = "gate has dtype"
    elif kind == "gate not tensor":
        gate, error, match = draw(st.sampled_from([1.0, [1.0]])), TypeError, "gate must be a"
    elif kind == "scale":
        scale, error = draw(st.sampled_from([(float("nan"), ValueError),
                                             (float("inf"), ValueError), ("0.1", TypeError),
                                             (True, TypeError), (None, TypeError),
                                             (torch.ones(2), TypeError)]))
        match = "scale"
        gate = draw(st.sampled_from([gate, None]))
    elif kind == "h shape":
        h = torch.ones(2, 3, 4, 4, device=device)
        match = "skip has shape"
    elif kind == "h int":
        h = skip = bad_tensor_of(draw(bad_dtypes()), shape, device)
        match = "h must be a floating tensor"
    else:
        backend, match = draw(backend_names()), "backend must be one"
    return Invalid(kind, lambda: ops.nvae_cell_tail(skip, h, gate, scale=scale,
                                                    backend=backend), error, match)


@st.composite
def affine_valid(draw, backend, device):
    dtype = draw(kernel_dtypes(backend))
    shape = draw(shapes(min_dims=2, max_dims=4, max_size=_small(backend == "triton") - 1))
    x = draw(tensor_maker(shape, dtype, device, writable=False, scale=2.0))
    scale = draw(tensor_maker(shape[1:2], dtype, device, writable=False))
    shift = draw(tensor_maker(shape[1:2], dtype, device, writable=False))
    g = helpers.randn(shape, dtype, device, seed=7)

    def check():
        made = [x(), scale(), shift()]
        got = _grads_of(lambda *t: ops.affine_swish(*t, backend=backend), made, g)
        want = _grads_of(ops.affine_swish_reference, [t.double() for t in made], g.double())
        close(got, [t.to(dtype) for t in want], SUM_TOL, "out and grads")

    return Valid(f"{dtype} {shape}", check)


@st.composite
def affine_invalid(draw, backend, device):
    x = torch.zeros(2, 3, 4, device=device)
    scale, shift = torch.ones(3, device=device), torch.zeros(3, device=device)
    kind = draw(st.sampled_from(["x 1-d", "scale shape", "shift dtype", "int", "not tensor",
                                 "backend"]))
    error = ValueError
    if kind == "x 1-d":
        x = torch.zeros(draw(st.sampled_from([(3,), ()])), device=device)
        match = "x must have at least 2 dims"
    elif kind == "scale shape":
        scale = torch.ones(draw(st.sampled_from([(2,), (1, 3), (4,)])), device=device)
        match = "scale must have shape"
    elif kind == "shift dtype":
        shift = shift.to(draw(st.sampled_from([torch.float64, torch.float16])))
        match = "shift has dtype"
    elif kind == "int":
        x = bad_tensor_of(draw(bad_dtypes()), (2, 3, 4), device)
        match = "x must be a floating tensor"
    elif kind == "not tensor":
        scale, error, match = [1.0, 1.0, 1.0], TypeError, "scale must be a torch.Tensor"
    else:
        backend, match = draw(backend_names()), "backend must be one"
    return Invalid(kind, lambda: ops.affine_swish(x, scale, shift, backend=backend), error,
                   match)


# ------------------------------------------------------------------------------ replay

@st.composite
def gather_valid(draw, backend, device):
    dtype = draw(kernel_dtypes(backend))
    small = _small(backend == "triton")
    n_rows = draw(st.integers(0, small))
    row = draw(shapes(max_dims=2, max_size=small))
    buffer = draw(tensor_maker((n_rows, *row), dtype, device, writable=False))
    b = draw(st.integers(0, small))
    reinit = draw(st.lists(st.booleans(), min_size=b, max_size=b))
    if n_rows == 0:
        reinit = [True] * b
    index = [draw(st.integers(0, n_rows - 1)) if not r else
             draw(st.sampled_from([0, -1, 10**9, -2**63])) for r in reinit]
    total = b * math.prod(row)
    seed, offset = draw(seeds()), draw(offsets(total))
    call = {"seed": draw(as_int(seed)), "offset": draw(as_int(offset))}

    def check():
        idx = torch.tensor(index, dtype=torch.int64, device=device)
        mask = torch.tensor(reinit, dtype=torch.bool, device=device)
        got = ops.replay_gather(buffer(), idx, mask, backend=backend, **call)
        want = ops.replay_gather_reference(buffer(), idx, mask, seed=seed, offset=offset)
        close(got, want, NOISE_TOL, "out, next offset")

    return Valid(f"{dtype} N={n_rows} S={row} index={index} reinit={reinit} seed={seed} "
                 f"offset={offset}", check)


@st.composite
def gather_invalid(draw, backend, device):
    buffer = torch.zeros(4, 3, device=device)
    index = torch.tensor([0, 3], device=device)
    reinit = torch.tensor([False, False], device=device)
    call = {"seed": 0, "offset": 0}
    kind = draw(st.sampled_from(["index dtype", "index 2-d", "index range", "reinit dtype",
                                 "reinit shape", "buffer 0-d", "buffer dtype", "seed",
                                 "offset", "overflow", "not tensor", "backend"]))
    error = ValueError
    if kind == "index dtype":
        index = bad_tensor_of(draw(st.sampled_from([torch.int32, torch.float32, torch.bool])),
                              (2,), device)
        match = "index must be a 1-D int64 tensor"
    elif kind == "index 2-d":
        index, reinit = index.view(1, 2), reinit.view(1, 2)
        match = "index must be a 1-D int64 tensor"
    elif kind == "index range":
        index = torch.tensor([0, draw(st.sampled_from([4, -1, 2**62, -2**63]))], device=device)
        match = r"index values must be in \[0, 4\)"
    elif kind == "reinit dtype":
        reinit = bad_tensor_of(draw(st.sampled_from([torch.uint8, torch.int64,
                                                      torch.float32])), (2,), device)
        match = "reinit must be a bool tensor"
    elif kind == "reinit shape":
        reinit = torch.zeros(3, dtype=torch.bool, device=device)
        match = "reinit must be a bool tensor of the shape of index"
    elif kind == "buffer 0-d":
        buffer = torch.zeros((), device=device)
        match = "buffer must have shape"
    elif kind == "buffer dtype":
        buffer = bad_tensor_of(draw(bad_dtypes()), (4, 3), device)
        match = "buffer must be float16"
    elif kind in ("seed", "offset"):
        call[kind], error = draw(bad_ints())
        match = kind
    elif kind == "overflow":
        call["offset"] = MAX - 6 + draw(st.integers(1, 1000))
        match = "offset"
    elif kind == "not tensor":
        index, error, match = [0, 3], TypeError, "index must be a torch.Tensor"
    else:
        backend, match = draw(backend_names()), "backend must be one"
    return Invalid(kind, lambda: ops.replay_gather(buffer, index, reinit, backend=backend,
                                                   **call), error, match)


@st.composite
def scatter_valid(draw, backend, device):
    dtype = draw(kernel_dtypes(backend))
    small = _small(backend == "triton")
    n_rows = draw(st.integers(0, small))
    row = draw(shapes(max_dims=2, max_size=small))
    buffer = draw(tensor_maker((n_rows, *row), dtype, device))
    index = draw(st.permutations(range(n_rows)))[: draw(st.integers(0, n_rows))]
    values = draw(tensor_maker((len(index), *row), dtype, device, writable=False))

    def check():
        idx = torch.tensor(index, dtype=torch.int64, device=device)
        got, want = buffer(), buffer()
        assert ops.replay_scatter_(got, idx, values(), backend=backend) is None
        ops.replay_scatter_reference(want, idx, values())
        close(got, want, {dtype: (0.0, 0.0)}, "buffer")

    return Valid(f"{dtype} N={n_rows} S={row} index={index}", check)


@st.composite
def scatter_invalid(draw, backend, device):
    buffer = helpers.randn((5, 3), device=device)
    index = torch.tensor([0, 2], device=device)
    values = torch.ones(2, 3, device=device)
    kind = draw(st.sampled_from(["duplicate", "range", "values shape", "values dtype",
                                 "aliased values", "expanded buffer", "buffer dtype",
                                 "index dtype", "not tensor", "backend"]))
    error = ValueError
    if kind == "duplicate":
        index = torch.tensor(draw(st.sampled_from([[1, 1], [4, 4]])), device=device)
        match = "index must not contain duplicates"
    elif kind == "range":
        index = torch.tensor([0, draw(st.sampled_from([5, -1, 2**40]))], device=device)
        match = r"index values must be in \[0, 5\)"
    elif kind == "values shape":
        values = torch.ones(draw(st.sampled_from([(2, 4), (3, 3), (2,)])), device=device)
        match = "values must have shape"
    elif kind == "values dtype":
        values = values.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64])))
        match = "values have dtype"
    elif kind == "aliased values":
        values = draw(st.sampled_from([buffer[1:3], buffer[3:5], buffer[:2]]))
        match = "values and buffer are sharing memory"
    elif kind == "expanded buffer":
        buffer = helpers.randn((1, 3), device=device).expand(5, 3)
        match = "buffer has elements sharing memory"
    elif kind == "buffer dtype":
        buffer = bad_tensor_of(draw(bad_dtypes()), (5, 3), device)
        values = bad_tensor_of(buffer.dtype, (2, 3), device)
        match = "buffer must be float16"
    elif kind == "index dtype":
        index = index.to(draw(st.sampled_from([torch.int32, torch.float32])))
        match = "index must be a 1-D int64 tensor"
    elif kind == "not tensor":
        values, error, match = [[1.0] * 3] * 2, TypeError, "values must be a torch.Tensor"
    else:
        backend, match = draw(backend_names()), "backend must be one"
    return Invalid(kind, lambda: ops.replay_scatter_(buffer, index, values, backend=backend),
                   error, match, untouched=lambda: [buffer])


# ------------------------------------------------------------------------------ power iteration

PI_DTYPES = (torch.float32, torch.float64)  # the kernels' ("auto" runs eager for others)


@st.composite
def group_makers(draw, backend, device, dtype):
    small = _small(backend == "triton")
    g, r, c = (draw(st.integers(0, 3)), draw(st.integers(1, small)),
               draw(st.integers(1, small)))
    W = draw(tensor_maker((g, r, c), dtype, device, writable=False))
    u = draw(tensor_maker((g, r), dtype, device))
    v = draw(tensor_maker((g, c), dtype, device))
    return (g, r, c), W, u, v


@st.composite
def power_valid(draw, backend, device, spectral=False):
    dtype = draw(st.sampled_from(PI_DTYPES))
    groups = [draw(group_makers(backend, device, dtype))
              for _ in range(draw(st.integers(0 if spectral else 1, 3 if spectral else 1)))]
    n_iter = draw(st.integers(0, 3))
    eps = draw(st.sampled_from([1e-3, 1e-12, 0.5, 10.0]))
    args = (draw(as_int(n_iter)), draw(as_real(eps)))

    def run(backend_name):
        made = [(W(), u(), v()) for _, W, u, v in groups]
        Ws, us, vs = ([m[k] for m in made] for k in range(3))
        if spectral:
            sigmas = ops.spectral_norms(Ws, us, vs, *args, backend=backend_name)
        else:
            sigmas = [ops.power_iteration_(Ws[0], us[0], vs[0], *args, backend=backend_name)]
        return [sigmas, us, vs]

    def check():
        close(run(backend), run("eager"), SUM_TOL, "sigmas, us, vs")

    return Valid(f"{dtype} {[g[0] for g in groups]} n_iter={n_iter} eps={eps}", check)


@st.composite
def power_invalid(draw, backend, device, spectral=False):
    W = helpers.randn((2, 3, 4), device=device)
    u, v = helpers.randn((2, 3), device=device, seed=1), helpers.randn((2, 4), device=device,
                                                                         seed=2)
    Ws, us, vs = [W], [u], [v]
    n_iter, eps = 2, 1e-3
    kinds = ["eps", "n_iter", "W 2-d", "W int", "u shape", "u grad", "u is v", "expanded u",
             "W not tensor", "backend"]
    if spectral:
        kinds += ["lengths", "shared u", "shared v", "not list"]
    kind = draw(st.sampled_from(kinds))
    error = ValueError
    if kind == "eps":
        eps, error = draw(bad_positive_reals())
        match = "eps"
    elif kind == "n_iter":
        n_iter, error = draw(bad_ints())
        match = "n_iter"
    elif kind == "W 2-d":
        Ws = [W[0]]
        match = r"W must be \[G, R, C\]"
    elif kind == "W int":
        Ws = [bad_tensor_of(draw(bad_dtypes()), (2, 3, 4), device)]
        match = "W must be a floating tensor"
    elif kind == "u shape":
        us = [helpers.randn((2, 4), device=device)]
        match = r"u must be \[G, R\]"
    elif kind == "u grad":
        us = [u.clone().requires_grad_()]
        match = "u must not require grad"
    elif kind == "u is v":
        W = helpers.randn((2, 3, 3), device=device)
        Ws, us, vs = [W], [u], [u[:, :3] if draw(st.booleans()) else u]
        match = "u and v are sharing memory"
    elif kind == "expanded u":
        us = [helpers.randn((1, 3), device=device).expand(2, 3)]
        match = "u has elements sharing memory"
    elif kind == "W not tensor":
        Ws, error = [draw(st.sampled_from([1.0, None, W.tolist()]))], TypeError
        match = "W must be a torch.Tensor"
    elif kind == "lengths":
        Ws, us, vs = draw(st.sampled_from([([W], [u], []), ([W, W], [u], [v]), ([], [u], [v])]))
        match = "one u and one v per weight group"
    elif kind in ("shared u", "shared v"):
        Ws, us, vs = [W, W.clone()], [u, u.clone()], [v, v.clone()]
        if kind == "shared u":
            us[1] = u
            match = r"us\[1\] shares memory with us\[0\]"
        else:
            vs[1] = v
            match = r"vs\[1\] shares memory with vs\[0\]"
    elif kind == "not list":
        Ws, error, match = W, TypeError, "weights_by_group must be a list"
    else:
        backend, match = draw(backend_names()), "backend must be one"

    def run():
        if spectral:
            return ops.spectral_norms(Ws, us, vs, n_iter, eps, backend=backend)
        return ops.power_iteration_(Ws[0], us[0], vs[0], n_iter, eps, backend=backend)

    watched = [t for t in (*us, *vs) if isinstance(t, torch.Tensor)]
    return Invalid(f"{kind}: n_iter={n_iter!r} eps={eps!r}", run, error, match,
                   untouched=lambda: [t.detach() for t in watched])


# ------------------------------------------------------------------------------ registry
# op -> (name of its kernel in the dispatch registry, valid strategy, invalid strategy); each
# strategy is called with (backend, device).

def _bind(fn, **fixed):
    return lambda backend, device: fn(backend, device, **fixed)


OPS = {
    "langevin_step_": ("langevin_step_", langevin_valid, langevin_invalid),
    "LangevinStepper": ("langevin_step_", _bind(langevin_valid, stepper=True),
                        _bind(langevin_invalid, stepper=True)),
    "philox_normal": ("philox_normal", philox_normal_valid, philox_normal_invalid),
    "philox4x32": ("philox4x32", philox4x32_valid, philox4x32_invalid),
    "swish": ("swish", swish_valid, swish_invalid),
    "lip_swish": ("lip_swish", _bind(swish_valid, lip=True), _bind(swish_invalid, lip=True)),
    "ebm_block_tail": ("ebm_block_tail", ebm_valid, ebm_invalid),
    "nvae_cell_tail": ("nvae_cell_tail", cell_valid, cell_invalid),
    "affine_swish": ("affine_swish", affine_valid, affine_invalid),
    "replay_gather": ("replay_gather", gather_valid, gather_invalid),
    "replay_scatter_": ("replay_scatter_", scatter_valid, scatter_invalid),
    "power_iteration_": ("power_iteration_", power_valid, power_invalid),
    "spectral_norms": ("spectral_norms", _bind(power_valid, spectral=True),
                       _bind(power_invalid, spectral=True)),
}


def kernel_name(op: str) -> str:
    return OPS[op][0]


def valid_cases(op: str, backend: str, device: str) -> st.SearchStrategy:
    return OPS[op][1](backend, device)


def invalid_cases(op: str, backend: str, device: str) -> st.SearchStrategy:
    return OPS[op][2](backend, device)
