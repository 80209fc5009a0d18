r"""Replay-buffer ops: gather start states (with fresh rows), scatter final states back.

A replay buffer is a tensor ``buffer`` of shape ``[N, *S]`` (one row per stored chain);
``P = prod(S)`` is the number of elements of a row.

:func:`replay_gather` builds the start states of ``B`` chains in one pass:

.. math:: \text{out}[b] = \begin{cases} \xi_b & \text{reinit}[b] \\
          \text{buffer}[\text{index}[b]] & \text{otherwise} \end{cases}

where ``xi_b`` holds normals number ``offset + b*P .. offset + (b+1)*P - 1`` of the Philox
stream for ``seed`` (``vaebm_fast.ops.rng``), in the row's logical row-major order. The normals
of row ``b`` depend on ``b`` only, never on which other rows are reinitialised, so the op needs
no host synchronisation to number them; the noise positions of non-reinit rows are skipped.
It returns ``(out, offset + B*P)``: the next free offset. ``index[b]`` of a reinit row is not
read (any value is accepted); every other ``index[b]`` must be in ``[0, N)``. ``out`` is a new
contiguous tensor of ``buffer``'s dtype and device; fresh rows are float32 normals rounded
to the dtype (widened for float64).

:func:`replay_scatter_` writes ``buffer[index[b]] = values[b]`` in place. Indices must be
unique: the rows are written in parallel, so with duplicates which write lands would be
unspecified; the wrapper raises ``ValueError`` instead.

``*_reference`` are the specifications (plain PyTorch, any device; the gather reference
materialises the noise of all ``B`` rows). The wrappers validate with clear messages (shapes,
dtypes, devices, aliasing, index range — the range and uniqueness checks read ``index``, which
synchronises with a GPU, and are skipped while ``torch.compile`` traces or a CUDA graph is
being captured) and dispatch
to ``torch.ops.vaebm_fast.replay_gather`` / ``replay_scatter_``, to the Triton kernels
(``vaebm_fast.triton_kernels.replay``) or to the reference. Neither op is differentiable.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .._kernel_rules import KERNEL_DTYPE_NAMES, KERNEL_DTYPES, elements_share_memory
from ..validation import explain
from . import _dispatch, _library
from .rng import check_stream_range, philox_normal_reference

__all__ = ["replay_gather", "replay_gather_reference", "replay_scatter_",
           "replay_scatter_reference"]

_dispatch.register_op("replay_gather", native="vaebm_fast::replay_gather", triton=True)
_dispatch.register_op("replay_scatter_", native="vaebm_fast::replay_scatter_", triton=True)


# ------------------------------------------------------------------------- validation
# Shapes, dtypes and devices: the wrappers' checks and the fake kernels' bodies. The index
# range and uniqueness need the values (a host sync on a GPU): the wrappers check them too,
# outside the fakes.

def _check_buffer_index(op: str, buffer, index) -> None:
    for name, t in (("buffer", buffer), ("index", index)):
        torch._check_type(isinstance(t, Tensor), explain(op, ": ", name, " must be a "
                                                         "torch.Tensor (got ",
                                                         type(t).__name__, ")"))
    torch._check_value(buffer.dim() >= 1, explain(op, ": buffer must have shape [N, *S] (got "
                                                      "a 0-d tensor)"))
    torch._check_value(buffer.dtype in KERNEL_DTYPES, explain(
        op, ": buffer must be ", KERNEL_DTYPE_NAMES, " (got ", buffer.dtype, ")"))
    torch._check_value(index.dtype == torch.int64 and index.dim() == 1, explain(
        op, ": index must be a 1-D int64 tensor (got ", index.dtype, " of shape ",
        list(index.shape), "); convert it with .long()"))
    torch._check_value(index.device == buffer.device, explain(
        op, ": index is on ", index.device, " but buffer is on ", buffer.device))


def _check_gather_tensors(buffer, index, reinit) -> None:
    """replay_gather(buffer [N, *S], index int64 [B], reinit bool [B]) -> out [B, *S]."""
    _check_buffer_index("replay_gather", buffer, index)
    torch._check_type(isinstance(reinit, Tensor), explain(
        "replay_gather: reinit must be a torch.Tensor (got ", type(reinit).__name__, ")"))
    torch._check_value(reinit.dtype == torch.bool and reinit.shape == index.shape, explain(
        "replay_gather: reinit must be a bool tensor of the shape of index ",
        list(index.shape), " (got ", reinit.dtype, " of shape ", list(reinit.shape), ")"))
    torch._check_value(reinit.device == buffer.device, explain(
        "replay_gather: reinit is on ", reinit.device, " but buffer is on ", buffer.device))


def _check_scatter_tensors(buffer, index, values) -> None:
    """replay_scatter_(buffer [N, *S] written in place, index int64 [B], values [B, *S])."""
    _check_buffer_index("replay_scatter_", buffer, index)
    torch._check_type(isinstance(values, Tensor), explain(
        "replay_scatter_: values must be a torch.Tensor (got ", type(values).__name__, ")"))
    expected = [index.shape[0], *buffer.shape[1:]]
    torch._check_value(list(values.shape) == expected, explain(
        "replay_scatter_: values must have shape [B, *S] = ", expected, " (got ",
        list(values.shape), ")"))
    torch._check_value(values.dtype == buffer.dtype, explain(
        "replay_scatter_: values have dtype ", values.dtype, " but buffer has ", buffer.dtype,
        "; convert with .to(buffer.dtype)"))
    torch._check_value(values.device == buffer.device, explain(
        "replay_scatter_: values are on ", values.device, " but buffer is on ", buffer.device))
    # A buffer whose rows share memory (an expand) would take several writes per element.
    torch._check_value(not elements_share_memory(buffer), explain(
        "replay_scatter_: buffer has elements sharing memory (e.g. from expand); pass a "
        "buffer with distinct elements (.clone())"))
    # Rows are written in parallel: values read from rows being written would make the result
    # depend on the order of the writes. (Not while dynamo traces the wrapper, which cannot
    # trace the check; the fake kernel runs it on the traced tensors.)
    if not torch.compiler.is_compiling():
        torch._check_value(not torch._C._overlaps(values, buffer), explain(
            "replay_scatter_: values and buffer are sharing memory; pass values.clone()"))


def _fake_gather(buffer, index, reinit, seed, offset):
    _check_gather_tensors(buffer, index, reinit)
    return buffer.new_empty((index.shape[0], *buffer.shape[1:]))


def _fake_scatter(buffer, index, values):
    _check_scatter_tensors(buffer, index, values)


def _triton():
    from ..triton_kernels import replay as kernels
    return kernels


_library.define("replay_gather(Tensor buffer, Tensor index, Tensor reinit, int seed, "
                "int offset) -> Tensor", fake=_fake_gather,
                triton=lambda: _triton().replay_gather)
_library.define("replay_scatter_(Tensor(a!) buffer, Tensor index, Tensor values) -> ()",
                fake=_fake_scatter, triton=lambda: _triton().replay_scatter_)


def _values_unreadable(t: Tensor) -> bool:
    """True while ``torch.compile`` traces the op or ``t``'s device captures a CUDA graph: the
    values of ``t`` cannot be read then (a data-dependent branch; a host sync)."""
    return torch.compiler.is_compiling() or (
        t.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_range(index: Tensor, n: int, op: str) -> None:
    # Reads the values (a host sync on a GPU). Skipped while compiling or capturing a CUDA
    # graph, where values cannot be read: the kernels keep memory safe on their own (the native
    # kernels assert, the Triton kernels skip out-of-range rows).
    if index.numel() == 0 or _values_unreadable(index):
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: index values must be in [0, {n}) for a buffer of {n} rows "
                         f"(got {bad})")


def _check_gather(buffer, index, reinit, seed, offset) -> Tuple[int, int, int]:
    _check_gather_tensors(buffer, index, reinit)
    total = index.shape[0] * math.prod(buffer.shape[1:])
    seed, offset = check_stream_range(seed, offset, total)
    if not _values_unreadable(index):  # boolean indexing reads reinit: a host sync
        _check_range(index[~reinit], buffer.shape[0], "replay_gather")
    return seed, offset, total


def _check_scatter(buffer, index, values) -> None:
    _check_scatter_tensors(buffer, index, values)
    _check_range(index, buffer.shape[0], "replay_scatter_")
    if (index.numel() > 1 and not _values_unreadable(index)
            and torch.unique(index).numel() != index.numel()):
        raise ValueError("replay_scatter_: index must not contain duplicates (rows are written "
                         "in parallel, so which duplicate lands would be unspecified)")


def replay_gather_reference(buffer: Tensor, index: Tensor, reinit: Tensor, *, seed: int,
                            offset: int) -> Tuple[Tensor, int]:
    """Eager reference of :func:`replay_gather` (same arguments, no ``backend``)."""
    seed, offset, total = _check_gather(buffer, index, reinit, seed, offset)
    B, shape = index.shape[0], tuple(buffer.shape[1:])
    with torch.no_grad():
        noise = philox_normal_reference(total, seed=seed, offset=offset, device=buffer.device)
        noise = noise.view(B, *shape).to(buffer.dtype)
        if buffer.shape[0] == 0:  # every row is reinit (checked): nothing to gather
            return noise, offset + total
        safe = index.masked_fill(reinit, 0)  # reinit rows' index is not read
        gathered = buffer.index_select(0, safe)
        mask = reinit.view(B, *([1] * len(shape)))
        out = torch.where(mask, noise, gathered).contiguous()
    return out, offset + total


def replay_gather(buffer: Tensor, index: Tensor, reinit: Tensor, *, seed: int, offset: int,
                  backend: str = "auto") -> Tuple[Tensor, int]:
    """Start states ``out[b] = normals if reinit[b] else buffer[index[b]]`` (module docstring).

    Args:
        buffer: [N, *S] float16/bfloat16/float32/float64, any strides.
        index: int64 [B] rows to gather, in [0, N) where ``reinit`` is False.
        reinit: bool [B], True for rows that start from fresh N(0, 1) noise.
        seed: int in [0, 2**63); offset: int >= 0, the normal of row 0's first element.
        backend: "auto" | "native" | "triton" | "eager".
    Returns:
        ``(out, offset + B * prod(S))``: out is a new contiguous [B, *S] tensor.
    Raises:
        TypeError / ValueError: invalid arguments; BackendUnavailableError: see ``_dispatch``.
    """
    seed, offset, total = _check_gather(buffer, index, reinit, seed, offset)
    chosen = _dispatch.resolve_backend("replay_gather", backend, buffer.device)
    if chosen == "eager":
        return replay_gather_reference(buffer, index, reinit, seed=seed, offset=offset)
    with torch.no_grad():
        out = _library.namespace(chosen).replay_gather(buffer, index, reinit, seed, offset)
    return out, offset + total


def replay_scatter_reference(buffer: Tensor, index: Tensor, values: Tensor) -> None:
    """Eager reference of :func:`replay_scatter_` (same arguments, no ``backend``)."""
    _check_scatter(buffer, index, values)
    with torch.no_grad():
        buffer.index_copy_(0, index, values)


def replay_scatter_(buffer: Tensor, index: Tensor, values: Tensor, *,
                    backend: str = "auto") -> None:
    """``buffer[index[b]] = values[b]`` in place for every ``b``.

    Args:
        buffer: [N, *S] float16/bfloat16/float32/float64 (no elements sharing memory).
        index: int64 [B], unique values in [0, N).
        values: [B, *S] of buffer's dtype and device.
        backend: "auto" | "native" | "triton" | "eager".
    Raises:
        TypeError / ValueError: invalid arguments (duplicate indices included).
    """
    _check_scatter(buffer, index, values)
    chosen = _dispatch.resolve_backend("replay_scatter_", backend, buffer.device)
    if chosen == "eager":
        replay_scatter_reference(buffer, index, values)
        return
    with torch.no_grad():
        _library.namespace(chosen).replay_scatter_(buffer, index, values)
