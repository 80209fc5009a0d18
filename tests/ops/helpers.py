"""Tensors and checks the op tests share (the ``kernel`` fixture is in conftest.py)."""
from __future__ import annotations

import contextlib

import torch

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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, msg: str = "") -> None:
    """``actual`` against ``expected`` (usually the float64 reference) within ``tol[dtype]``,
    compared on the CPU in float64; NaNs must sit at the same places."""
    atol, rtol = tol[actual.dtype]
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(),
                               atol=atol, rtol=rtol, equal_nan=True,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


# ------------------------------------------------------------------------------ CUDA graphs

def captured(fn, reset=lambda: None):
    """Run ``fn`` (a call of an op on fixed CUDA tensors; ``reset`` restores what it mutates)
    as PyTorch documents for graphs: warm up on a side stream, capture, replay. Returns the
    graph's outputs after one replay (from the reset state)."""
    stream = torch.cuda.Stream()
    reset()  # before the side stream waits for the current one, so the warm-up sees it
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
    """``fn()`` on a fresh CUDA stream, synchronised with the current one."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return out


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
