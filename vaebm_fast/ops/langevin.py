r"""Fused in-place Langevin update over a list of tensors.

One step of unadjusted Langevin dynamics (with the IGEBM extras) on every tensor ``t`` of a
list, given its gradient ``g`` of the potential's data term:

.. math::  t \leftarrow \mathrm{clamp}\big(t - \tfrac{\eta}{2}(\mathrm{clip}(g) + \lambda t)
           + \sigma \xi,\ \text{low},\ \text{high}\big)

* ``eta`` = ``step_size``; ``lambda`` = ``prior_weight`` (1 gives the VAEBM potential
  ``E(T(eps)) + ||eps||^2 / 2`` when ``g`` is the gradient of ``E(T(eps))`` only; 0 when ``g``
  already is the full gradient, as for pixel-space EBMs).
* ``sigma`` = ``noise_scale``, default ``sqrt(eta)`` (the Langevin value).
* ``clip(g)`` clips each element to ``[-grad_clip, grad_clip]``; ``clamp`` to ``[low, high]``;
  both skipped when None. NaN passes through both, as with ``torch.clamp``.
* ``xi``: element ``k`` of the flattened concatenation of the list (each tensor in its logical
  row-major order, tensors in list order; strides do not matter) uses normal number
  ``offset + k`` of the Philox stream for ``seed`` (``vaebm_fast.ops.rng``). The op returns
  ``offset + total_numel``, the next free offset, so consecutive steps never reuse noise and
  splitting a tensor into several list entries does not change the result.
* ``xi`` in **row mode** (``first_row`` given; every tensor has dim >= 1 and the same dim 0,
  ``B``): element ``j`` of row ``b`` of tensor ``g`` (``tensors[g][b]`` flattened) uses normal
  number ``offset + cum_g + j`` of row stream ``first_row + b`` (``vaebm_fast.ops.rng``), where
  ``cum_g`` is the sum of the per-row numels of the tensors before ``g``. The op returns
  ``offset + D``, ``D`` the sum of the per-row numels. A sample's noise then depends only on
  ``(seed, first_row + b, offset, element)``: a batch split into several calls (or processes)
  with matching ``first_row`` gets bit-identical noise, and, as in flat mode, splitting a
  tensor's trailing dims into list entries changes nothing.

Arithmetic: float32 for float32/float16/bfloat16 tensors (rounded once when stored), float64 for
float64 tensors (with the float32 normals widened), in the order
``t - (eta/2) * (clip(g) + lambda * t) + sigma * xi``.

Optional output ``half_sq_norm``: a float32 [B] tensor (float64 for float64 tensors), where
every tensor has dim >= 1 and the same dim 0, ``B``; it is overwritten with
``0.5 * sum_i ||t_i[b]||^2`` over all tensors of the updated (stored) states, computed in the
arithmetic dtype above -- the ``||eps||^2 / 2`` term of the VAEBM potential, for free while
the states are in registers.

:func:`langevin_step_reference` is the specification (plain PyTorch, any device; it
materialises the noise). :func:`langevin_step_` validates its inputs and dispatches to the
native kernel (no noise tensor, one pass over memory), the Triton kernel (one launch for the
whole list) or the reference. The update is not differentiable and runs under
``torch.no_grad()``. Tensors in the list must not share memory with each other or with
another tensor's gradient: a tensor whose own elements overlap (an ``expand``), one passed
twice (or as a view of another) and a gradient in another state's memory are refused.

:func:`langevin_step_graphed_` is the same step for a captured CUDA graph: it reads the
stream position ``(seed, offset)`` (row mode: ``(seed, offset, first_row)``) from a device
tensor ``rng_state`` when it runs, instead of taking it as arguments that a graph would freeze
at capture (Triton kernel; the eager reference reads ``rng_state`` on the host, which a graph
cannot capture).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._kernel_rules import (KERNEL_DTYPE_NAMES, KERNEL_DTYPES, compute_dtype,
                             elements_share_memory)
from ..validation import check_real, explain
from . import _dispatch, _library
from .rng import (check_first_row, check_stream_range, philox_normal_reference,
                  philox_normal_rows_reference)

__all__ = ["langevin_step_", "langevin_step_reference", "langevin_step_graphed_",
           "LangevinStepper"]

_dispatch.register_op("langevin_step_", native="vaebm_fast::langevin_step_", triton=True)
_dispatch.register_op("langevin_step_graphed_", triton=True)

TensorOrList = Union[Tensor, Sequence[Tensor]]


class _Options(NamedTuple):
    """The scalar options of a step, validated: sigma resolved, absent clamp sides None."""

    step_size: float
    prior_weight: float
    sigma: float
    grad_clip: Optional[float]
    low: Optional[float]
    high: Optional[float]


# ------------------------------------------------------------------------- validation

def _as_list(value: TensorOrList, name: str) -> List[Tensor]:
    items = [value] if isinstance(value, Tensor) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} must be a tensor or a list of tensors "
                        f"(got {type(value).__name__})")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor (got {type(item).__name__})")
    return list(items)


def _options(step_size, prior_weight, noise_scale, grad_clip, clamp) -> _Options:
    step_size = check_real(step_size, "step_size", finite=True)
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0 (got {step_size})")
    prior_weight = check_real(prior_weight, "prior_weight", finite=True)
    if noise_scale is None:
        sigma = math.sqrt(step_size)
    else:
        sigma = check_real(noise_scale, "noise_scale", finite=True)
        if sigma < 0:
            raise ValueError(f"noise_scale must be >= 0 (got {sigma})")
    if grad_clip is not None:
        grad_clip = check_real(grad_clip, "grad_clip")
        if not grad_clip > 0:  # also rejects NaN
            raise ValueError(f"grad_clip must be > 0 (got {grad_clip})")
    low = high = None
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be a pair (low, high) (got {clamp!r}); use None for "
                            f"an open side")
        low, high = (None if v is None else check_real(v, f"clamp[{j}]")
                     for j, v in enumerate(clamp))
        if any(v is not None and math.isnan(v) for v in (low, high)):
            raise ValueError(f"clamp bounds must not be NaN (got {clamp!r})")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"clamp must have low < high (got low={low}, high={high})")
    return _Options(step_size, prior_weight, sigma, grad_clip, low, high)


def _check_grads(tensors, grads) -> None:
    """grads[i] of tensors[i]'s shape, one floating dtype of KERNEL_DTYPES and one device for
    all: the part of :func:`_check_tensors` a :class:`LangevinStepper` repeats every step.

    Plain ifs rather than torch._check_value(cond, explain(...)): this runs every step of a
    chain, and explain() formats its message even when the check passes (~50 us a tensor).
    """
    if len(tensors) != len(grads):
        raise ValueError(f"tensors and grads must have the same length (got {len(tensors)} "
                         f"tensors and {len(grads)} grads)")
    if not tensors:
        return
    dtype, device = tensors[0].dtype, tensors[0].device
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"tensors must be {KERNEL_DTYPE_NAMES} (got {dtype})")
    for i, (t, g) in enumerate(zip(tensors, grads)):
        if not isinstance(g, Tensor):
            raise TypeError(f"grads[{i}] must be a torch.Tensor (got {type(g).__name__})")
        if t.shape != g.shape:
            raise ValueError(f"grads[{i}] must have the shape of tensors[{i}] {list(t.shape)} "
                             f"(got {list(g.shape)})")
        for name, x in ((f"tensors[{i}]", t), (f"grads[{i}]", g)):
            if x.dtype != dtype:
                raise ValueError(f"{name} has dtype {x.dtype} but tensors[0] has {dtype}; all "
                                 f"tensors and grads must share one dtype")
            if x.device != device:
                raise ValueError(f"{name} is on {x.device} but tensors[0] is on {device}; all "
                                 f"tensors and grads must be on one device")


def _check_tensors(tensors, grads, half_sq_norm) -> None:
    """The tensors of a step: tensors[i] [*] and grads[i] [same shape], one floating dtype of
    KERNEL_DTYPES and one device; no state passed twice, overlapping itself or sharing memory
    with another state, another state's gradient or half_sq_norm; the optional output
    half_sq_norm [B] (B = dim 0 of every tensor) contiguous, float32 (float64 for float64
    tensors). The wrappers' check and the fake kernels' body. The per-tensor and per-pair
    checks are plain ifs (see _check_grads): explain() would format a message for each."""
    _check_grads(tensors, grads)
    for i, t in enumerate(tensors):
        if elements_share_memory(t):
            raise ValueError(f"tensors[{i}] has elements sharing memory (e.g. from expand); "
                             f"pass a tensor with distinct elements (.clone())")
        if any(t is u for u in tensors[:i]):
            raise ValueError(f"tensors[{i}] is passed twice; each state must be its own tensor")
    # The kernels update every state in parallel: a state read or written through another
    # list entry (a view of it, or its memory as a gradient) races. A gradient that is exactly
    # its own state's elements is read and written element by element, which is safe.
    # (Not while dynamo traces the wrapper, which cannot trace the check; the fake kernel runs
    # it on the traced tensors.) O(len(tensors)^2) pointer comparisons.
    if not torch.compiler.is_compiling():
        for i, t in enumerate(tensors):
            for j, u in enumerate(tensors[:i]):
                if torch._C._overlaps(t, u):
                    raise ValueError(f"tensors[{i}] shares memory with tensors[{j}] (a view of "
                                     f"it?); each state must be its own tensor")
        for i, t in enumerate(tensors):
            for j, g in enumerate(grads):
                same_elements = (j == i and g.storage_offset() == t.storage_offset()
                                 and g.stride() == t.stride())
                if not same_elements and torch._C._overlaps(t, g):
                    raise ValueError(f"grads[{j}] shares memory with tensors[{i}]; pass "
                                     f"grads[{j}].clone()")
            if isinstance(half_sq_norm, Tensor) and torch._C._overlaps(t, half_sq_norm):
                raise ValueError(f"half_sq_norm shares memory with tensors[{i}]; pass its own "
                                 f"tensor")
    if half_sq_norm is None:
        return
    torch._check_type(isinstance(half_sq_norm, Tensor), explain(
        "half_sq_norm must be a torch.Tensor or None (got ", type(half_sq_norm).__name__, ")"))
    torch._check_value(len(tensors) > 0, explain(
        "half_sq_norm needs at least one tensor: B is the tensors' dim 0"))
    for i, t in enumerate(tensors):
        torch._check_value(t.dim() > 0, explain(
            "half_sq_norm needs tensors with dim >= 1 (tensors[", i, "] is 0-d)"))
        torch._check_value(t.shape[0] == tensors[0].shape[0], explain(
            "half_sq_norm needs every tensor with the same dim 0 (tensors[0] has ",
            tensors[0].shape[0], ", tensors[", i, "] has ", t.shape[0], ")"))
    expected = compute_dtype(tensors[0].dtype)
    torch._check_value(half_sq_norm.dtype == expected, explain(
        "half_sq_norm must be ", expected, " for ", tensors[0].dtype, " tensors (got ",
        half_sq_norm.dtype, ")"))
    torch._check_value(tuple(half_sq_norm.shape) == (tensors[0].shape[0],), explain(
        "half_sq_norm must have shape [B] = [", tensors[0].shape[0], "] (got ",
        list(half_sq_norm.shape), ")"))
    torch._check_value(half_sq_norm.device == tensors[0].device, explain(
        "half_sq_norm is on ", half_sq_norm.device, " but the tensors are on ",
        tensors[0].device))
    torch._check_value(half_sq_norm.is_contiguous(), explain("half_sq_norm must be contiguous"))


def _check_rows(tensors) -> int:
    """Row mode's shape rule: every tensor dim >= 1 with the same dim 0, B; returns D, the
    normals a row consumes (the sum of the per-row numels). The fake kernel's check too
    (first_row's range is check_first_row's). Plain ifs (see _check_grads): row mode checks
    this every step."""
    if not tensors:
        raise ValueError("first_row (row mode) needs at least one tensor: B is the tensors' "
                         "dim 0")
    batch = tensors[0].shape[0] if tensors[0].dim() > 0 else None
    for i, t in enumerate(tensors):
        if t.dim() == 0:
            raise ValueError(f"first_row (row mode) needs tensors with dim >= 1, samples along "
                             f"dim 0 (tensors[{i}] is 0-d); reshape it to [B, ...] or pass "
                             f"first_row=None")
        if t.shape[0] != batch:
            raise ValueError(f"first_row (row mode) needs every tensor with the same dim 0 = B "
                             f"(tensors[0] has {batch}, tensors[{i}] has {t.shape[0]})")
    return sum(math.prod(t.shape[1:]) for t in tensors)


def _stream_size(tensors, first_row) -> Tuple[int, Optional[int]]:
    """``(normals one step takes from each stream, first_row)``, validated: flat mode
    (first_row None) takes the total numel; row mode D, with first_row an int in
    [0, 2**62 - B]."""
    if first_row is None:
        return sum(t.numel() for t in tensors), None
    batch = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
    first_row = check_first_row(first_row, batch)
    return _check_rows(tensors), first_row


def _check_rng_state(rng_state, tensors, grads) -> None:
    """rng_state: int64 [2] (seed, offset), or [3] (seed, offset, first_row) for row mode
    (the tensors then follow row mode's shape rule), on the tensors' device; tensors and grads
    contiguous (the graphed kernel reads them in place)."""
    torch._check_type(isinstance(rng_state, Tensor), explain(
        "rng_state must be a torch.Tensor (got ", type(rng_state).__name__, ")"))
    torch._check_value(rng_state.dtype == torch.int64 and tuple(rng_state.shape) in ((2,), (3,)),
                       explain("rng_state must be an int64 tensor [2] = (seed, offset) or [3] = "
                               "(seed, offset, first_row) (got ", rng_state.dtype,
                               " of shape ", list(rng_state.shape), ")"))
    if tuple(rng_state.shape) == (3,):
        _check_rows(tensors)
    if tensors:
        torch._check_value(rng_state.device == tensors[0].device, explain(
            "rng_state is on ", rng_state.device, " but the tensors are on ",
            tensors[0].device))
    for name, items in (("tensors", tensors), ("grads", grads)):
        for i, t in enumerate(items):
            torch._check_value(t.is_contiguous(), explain(
                "langevin_step_graphed_ takes contiguous tensors and gradients (", name, "[",
                i, "] is not)"))


def _fake_step(tensors, grads, step_size, seed, offset, prior_weight, noise_scale, grad_clip,
               clamp_low, clamp_high, half_sq_norm=None, first_row=None):
    _check_tensors(tensors, grads, half_sq_norm)
    if first_row is not None:
        _check_rows(tensors)
        check_first_row(first_row, tensors[0].shape[0])


def _fake_graphed(tensors, grads, step_size, rng_state, offset_add, prior_weight, noise_scale,
                  grad_clip, clamp_low, clamp_high, half_sq_norm=None):
    _check_tensors(tensors, grads, half_sq_norm)
    _check_rng_state(rng_state, tensors, grads)


def _triton():
    from ..triton_kernels import langevin as kernels
    return kernels


_library.define(
    "langevin_step_(Tensor(a!)[] tensors, Tensor[] grads, float step_size, int seed, "
    "int offset, float prior_weight, float noise_scale, float? grad_clip, float? clamp_low, "
    "float? clamp_high, Tensor(b!)? half_sq_norm=None, int? first_row=None) -> ()",
    fake=_fake_step, triton=lambda: _triton().langevin_step_)
_library.define(
    "langevin_step_graphed_(Tensor(a!)[] tensors, Tensor[] grads, float step_size, "
    "Tensor rng_state, int offset_add, float prior_weight, float noise_scale, "
    "float? grad_clip, float? clamp_low, float? clamp_high, Tensor(b!)? half_sq_norm=None) "
    "-> ()", fake=_fake_graphed, triton=lambda: _triton().langevin_step_graphed_)


# ------------------------------------------------------------------------- specification

def _update_reference(tensors, grads, o: _Options, noise: Tensor, half_sq_norm) -> None:
    """The update on validated arguments, with ``noise`` float32 [R, D] the normals of each
    stream for the concatenation of the tensors' rows: flat mode R = 1 (the whole
    concatenation, D = total numel), row mode R = B (row b's stream, D = per-row numels)."""
    rows, start = noise.shape[0], 0
    for t, g in zip(tensors, grads):
        n = t.numel() // rows if rows else 0  # normals of t per stream
        compute = compute_dtype(t.dtype)
        xi = noise[:, start:start + n].reshape(t.shape).to(compute)
        x, gc = t.to(compute), g.to(compute)
        if o.grad_clip is not None:
            gc = gc.clamp(-o.grad_clip, o.grad_clip)
        new = x - (o.step_size / 2) * (gc + o.prior_weight * x) + o.sigma * xi
        if o.low is not None or o.high is not None:
            new = new.clamp(o.low, o.high)
        t.copy_(new)
        start += n
    if half_sq_norm is not None:  # of the stored states, in the arithmetic dtype
        compute = half_sq_norm.dtype
        half_sq_norm.copy_(sum(0.5 * t.to(compute).reshape(t.shape[0], -1).square().sum(1)
                               for t in tensors))


def _run(chosen: str, tensors, grads, o: _Options, seed: int, offset: int, total: int,
         half_sq_norm, first_row: Optional[int] = None) -> int:
    """One step on validated arguments with the chosen backend; the next offset. ``total``:
    the normals taken from each stream (:func:`_stream_size`)."""
    if total == 0 or (first_row is not None and tensors[0].shape[0] == 0):  # no elements
        if half_sq_norm is not None:
            half_sq_norm.zero_()
        return offset + total
    with torch.no_grad():
        if chosen == "eager":
            device = tensors[0].device
            if first_row is None:
                noise = philox_normal_reference(total, seed=seed, offset=offset,
                                                device=device).reshape(1, total)
            else:
                noise = philox_normal_rows_reference(tensors[0].shape[0], total, seed=seed,
                                                     offset=offset, first_row=first_row,
                                                     device=device)
            _update_reference(tensors, grads, o, noise, half_sq_norm)
        else:
            _library.namespace(chosen).langevin_step_(
                tensors, grads, o.step_size, seed, offset, o.prior_weight, o.sigma,
                o.grad_clip, o.low, o.high, half_sq_norm, first_row)
    return offset + total


def langevin_step_reference(tensors: TensorOrList, grads: TensorOrList, *, step_size: float,
                            seed: int, offset: int, prior_weight: float = 1.0,
                            noise_scale: Optional[float] = None,
                            grad_clip: Optional[float] = None,
                            clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                            half_sq_norm: Optional[Tensor] = None,
                            first_row: Optional[int] = None) -> int:
    """The specification of :func:`langevin_step_` in plain PyTorch (same arguments and result,
    no ``backend``)."""
    return langevin_step_(tensors, grads, step_size=step_size, seed=seed, offset=offset,
                          prior_weight=prior_weight, noise_scale=noise_scale,
                          grad_clip=grad_clip, clamp=clamp, half_sq_norm=half_sq_norm,
                          first_row=first_row, backend="eager")


# ------------------------------------------------------------------------- public ops

def langevin_step_(tensors: TensorOrList, grads: TensorOrList, *, step_size: float, seed: int,
                   offset: int, prior_weight: float = 1.0, noise_scale: Optional[float] = None,
                   grad_clip: Optional[float] = None,
                   clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                   half_sq_norm: Optional[Tensor] = None, first_row: Optional[int] = None,
                   backend: str = "auto") -> int:
    """One Langevin step on every tensor of ``tensors``, in place (see the module docstring).

    Args:
        tensors: the chain states, a list of tensors (or one tensor) of any shapes, one
            floating dtype (float16/bfloat16/float32/float64) and one device.
        grads: their gradients, same length, each of its tensor's shape, dtype and device.
        step_size: eta > 0, finite.
        seed: int in [0, 2**63); offset: first normal to use, int >= 0.
        prior_weight: lambda, the weight of the Gaussian prior's gradient ``t``.
        noise_scale: sigma >= 0; None means sqrt(step_size).
        grad_clip: clip each gradient element to [-grad_clip, grad_clip]; None: no clip.
        clamp: (low, high) applied to the result (either side may be None); None: no clamp.
        half_sq_norm: optional output, float32 [B] (float64 for float64 tensors), contiguous,
            on the tensors' device, where every tensor has dim >= 1 and dim 0 == B;
            overwritten with ``0.5 * sum_i ||tensors[i][b]||^2`` of the updated states.
        first_row: None (flat mode: noise from one stream over the whole list), or the global
            index of sample ``tensors[i][0]`` (row mode: row ``b`` draws from row stream
            ``first_row + b``; every tensor needs dim >= 1 and the same dim 0 = B), an int in
            [0, 2**62 - B].
        backend: "auto" | "native" | "triton" | "eager" (see
            ``vaebm_fast.ops.set_default_backend``).
    Returns:
        the next free offset: ``offset + sum(t.numel() for t in tensors)`` in flat mode,
        ``offset + D`` in row mode (``D = sum(t[0].numel() for t in tensors)``).
    Raises:
        TypeError / ValueError: invalid arguments (message says which and why).
        BackendUnavailableError: ``backend`` names a backend that cannot run here.
    """
    tensors, grads = _as_list(tensors, "tensors"), _as_list(grads, "grads")
    o = _options(step_size, prior_weight, noise_scale, grad_clip, clamp)
    _check_tensors(tensors, grads, half_sq_norm)
    total, first_row = _stream_size(tensors, first_row)
    seed, offset = check_stream_range(seed, offset, total)
    if not tensors:  # nothing runs, so no device to ask: only the name is checked
        _dispatch.check_choice(backend)
        return offset
    chosen = _dispatch.resolve_backend("langevin_step_", backend, tensors[0].device)
    return _run(chosen, tensors, grads, o, seed, offset, total, half_sq_norm, first_row)


def langevin_step_graphed_(tensors: TensorOrList, grads: TensorOrList, *, step_size: float,
                           rng_state: Tensor, offset_add: int = 0, prior_weight: float = 1.0,
                           noise_scale: Optional[float] = None,
                           grad_clip: Optional[float] = None,
                           clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                           half_sq_norm: Optional[Tensor] = None,
                           backend: str = "auto") -> None:
    """:func:`langevin_step_` for a captured CUDA graph: the noise is at
    ``(rng_state[0], rng_state[1] + offset_add)``, read when the step runs; with a third entry
    ``rng_state[2]``, in row mode with ``first_row = rng_state[2]`` (read when the step runs
    too, so the graph can be pointed at any batch of samples).

    A graph freezes every kernel argument at capture, so a chain captured with
    ``langevin_step_(..., seed=s, offset=o)`` would replay the same noise forever; with this
    op the host (or the graph itself, by an in-place add on ``rng_state[1]``) points each replay
    at any stream position. ``offset_add`` (e.g. ``k * numel`` for step ``k``) is frozen.
    ``rng_state`` is not advanced.

    Args:
        tensors, grads: as :func:`langevin_step_`, contiguous.
        rng_state: int64 [2], (seed, offset), or [3], (seed, offset, first_row), on the
            tensors' device. first_row must lie in [0, 2**62 - B]: read by the kernel, it is
            not checked (the eager backend checks it).
        offset_add: int >= 0 added to rng_state[1].
        backend: "auto" | "triton" | "eager" (the eager reference reads rng_state on the host:
            a device sync, not capturable).
    """
    tensors, grads = _as_list(tensors, "tensors"), _as_list(grads, "grads")
    o = _options(step_size, prior_weight, noise_scale, grad_clip, clamp)
    _check_tensors(tensors, grads, half_sq_norm)
    _check_rng_state(rng_state, tensors, grads)
    offset_add = check_stream_range(0, offset_add, 0)[1]
    if not tensors:
        _dispatch.check_choice(backend)
        return
    chosen = _dispatch.resolve_backend("langevin_step_graphed_", backend, tensors[0].device)
    if chosen == "eager":
        seed, offset, *first_row = (int(v) for v in rng_state.tolist())
        first_row = first_row[0] if first_row else None
        total, first_row = _stream_size(tensors, first_row)
        seed, offset = check_stream_range(seed, offset + offset_add, total)
        _run("eager", tensors, grads, o, seed, offset, total, half_sq_norm, first_row)
        return
    with torch.no_grad():
        _library.namespace(chosen).langevin_step_graphed_(
            tensors, grads, o.step_size, rng_state, offset_add, o.prior_weight, o.sigma,
            o.grad_clip, o.low, o.high, half_sq_norm)


class LangevinStepper:
    """:func:`langevin_step_` for a chain: the same tensors stepped many times, validated and
    dispatched once.

    ``LangevinStepper(tensors, step_size=..., ...)`` checks the state list and the options
    (as :func:`langevin_step_`) and picks the backend once; each ``stepper(grads, seed=...,
    offset=..., half_sq_norm=None)`` then runs one in-place step and returns the next offset,
    checking the stream range, the gradients (length, shapes, dtype, device; not their memory)
    and the output row. ``grads`` must be the gradients of these tensors (as autograd returns
    them: same shapes, dtype and device, memory of their own). ``first_row=`` selects row mode
    as in :func:`langevin_step_` (the row shape rule is checked on the first such call).
    """

    def __init__(self, tensors: Sequence[Tensor], *, step_size: float, prior_weight: float = 1.0,
                 noise_scale: Optional[float] = None, grad_clip: Optional[float] = None,
                 clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                 backend: str = "auto"):
        self.tensors = _as_list(tensors, "tensors")
        self.options = _options(step_size, prior_weight, noise_scale, grad_clip, clamp)
        _check_tensors(self.tensors, [t.detach() for t in self.tensors], None)
        self.total = sum(t.numel() for t in self.tensors)
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.backend = _dispatch.resolve_backend("langevin_step_", backend, device)
        self._norm_like: Optional[tuple] = None  # (shape, dtype, device) of a checked output
        self._row_total: Optional[int] = None  # D of row mode, once its shape rule is checked

    def __call__(self, grads: Sequence[Tensor], *, seed: int, offset: int,
                 half_sq_norm: Optional[Tensor] = None, first_row: Optional[int] = None
                 ) -> int:
        total = self.total
        if first_row is not None:
            if self._row_total is None:
                self._row_total = _stream_size(self.tensors, first_row)[0]
            first_row = check_first_row(first_row, self.tensors[0].shape[0])
            total = self._row_total
        seed, offset = check_stream_range(seed, offset, total)
        grads = _as_list(grads, "grads")
        # Every backend must refuse what the native kernel refuses: the eager update would
        # broadcast a wrong-shaped gradient, and zip() would skip states without one.
        _check_grads(self.tensors, grads)
        if half_sq_norm is not None:
            like = ((half_sq_norm.shape, half_sq_norm.dtype, half_sq_norm.device)
                    if isinstance(half_sq_norm, Tensor) else None)  # None: a TypeError below
            if like is None or like != self._norm_like or not half_sq_norm.is_contiguous():
                _check_tensors(self.tensors, grads, half_sq_norm)
                self._norm_like = like
        return _run(self.backend, self.tensors, grads, self.options, seed, offset, total,
                    half_sq_norm, first_row)
