"""Tensors and checks the op tests share (the ``kernel`` fixture is in conftest.py)."""
from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ------------------------------------------------------------------------------ tensors

def randn(shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0) -> torch.Tensor:
    """Normal values drawn in float64 on the CPU (the same values on every target), then cast."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(
        device=device, dtype=dtype)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: every other column of a wider buffer."""
    if t.dim() == 0:
        return t
    base = torch.zeros(t.shape[:-1] + (2 * t.shape[-1] + 1,), dtype=t.dtype, device=t.device)
    view = base[..., 1::2]
    view.copy_(t)
    return view


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data starts one element into its storage (the kernels'
    unaligned, scalar paths)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = flat[1:].view(t.shape)
    out.copy_(t)
    return out


LAYOUTS = {"contiguous": lambda t: t, "strided": non_contiguous, "misaligned": misaligned}


def spaced(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The same values with the slices along ``dim`` spaced apart: every other slice of a
    buffer twice as long along ``dim``. Each slice keeps its contiguous layout, so this is the
    layout of a row slice ``buffer[::2]``, which kernels addressing rows by a row stride take in
    place."""
    shape = list(t.shape)
    shape[dim] *= 2
    base = torch.zeros(shape, dtype=t.dtype, device=t.device)
    view = base[(slice(None),) * (dim % t.dim()) + (slice(None, None, 2),)]
    view.copy_(t)
    return view


def transposed(t: torch.Tensor) -> torch.Tensor:
    """The same values stored with the first and last dims swapped (column-major for a
    matrix): the elements of a slice along dim 0 lie apart, which sends kernels that copy
    rows to their contiguous-copy paths."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def storage_outside(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t``'s storage that ``t`` does not cover (1-D, in storage order): take
    them before and after an in-place op and compare with :func:`assert_same_bits` to check that
    the op wrote nothing outside ``t``."""
    full = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage())
    outside = torch.ones(full.shape, dtype=torch.bool, device=t.device)
    outside.as_strided(t.shape, t.stride(), t.storage_offset()).fill_(False)
    return full[outside].clone()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, msg: str = "") -> None:
    """``actual`` against ``expected`` (usually the float64 reference) within ``tol[dtype]``,
    compared on the CPU in float64; NaNs must sit at the same places."""
    atol, rtol = tol[actual.dtype]
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(),
                               atol=atol, rtol=rtol, equal_nan=True,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """``actual`` is a bit-for-bit copy of ``expected`` (same shape and dtype; NaN payloads and
    the sign of zero included): for values an op only moves, never computes."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{msg}: {actual.dtype} {tuple(actual.shape)} vs {expected.dtype} "
        f"{tuple(expected.shape)}")
    bits = _BITS[actual.element_size()]
    a = actual.detach().cpu().contiguous().view(bits)
    e = expected.detach().cpu().contiguous().view(bits)
    if not torch.equal(a, e):
        where = (a != e).nonzero()[:5].tolist()
        raise AssertionError(f"{msg}: {int((a != e).sum())} of {a.numel()} elements differ, "
                             f"first at {where}")


# ------------------------------------------------------------------------------ CUDA graphs

def captured(fn, reset=lambda: None):
    """Run ``fn`` (a call of an op on fixed CUDA tensors; ``reset`` restores what it mutates)
    as PyTorch documents for graphs: warm up on a side stream, capture, replay. Returns the
    graph's outputs after one replay (from the reset state)."""
    stream = torch.cuda.Stream()
    reset()  # before the side stream waits, so the warm-up sees the reset state
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    reset()
    with torch.cuda.graph(graph):
        out = fn()
    reset()
    graph.replay()
    torch.cuda.synchronize()
    return out


def on_side_stream(fn):
    """``fn()`` on a fresh CUDA stream, synchronised with the current one.

    The stream is first held busy for a while (``torch.cuda._sleep``): inputs that ``fn`` makes
    on it (clones, say) are written only after that, so an op that launched its kernel on some
    other stream would read them unwritten and give a wrong result (an op that synchronises
    the host with the stream first, e.g. to read index values, waits them out)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # ~25 ms at 2 GHz, far longer than a kernel launch
        out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return out


# ------------------------------------------------------------------------------ autograd, dispatch

def saved_tensors(fn, *args):
    """``(fn(*args), [the tensors autograd saved for the backward while fn ran])``."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, saved


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def op_calls(fn, *args):
    """``(fn(*args), Counter of the operators it dispatched, by qualified name)``, e.g.
    ``calls["vaebm_fast_triton::swish_forward"]``: which kernels a model or wrapper really ran."""
    with _OpLog() as log:
        out = fn(*args)
    return out, log.calls


# ------------------------------------------------------------------------------ loops over cases

@contextlib.contextmanager
def case(name):
    """``with case(name): ...`` in a loop over cheap cases of one test (one test item per
    target instead of one per case and target): a failure inside names the case."""
    try:
        yield
    except BaseException as exc:  # pytest's failures (pytest.raises, pytest.fail) included
        exc.add_note(f"case: {name}")
        raise
