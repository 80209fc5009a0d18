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
native kernel (``torch.ops.vaebm_fast.langevin_step_``: no noise tensor, one pass over memory),
the Triton kernel (``vaebm_fast.triton_kernels.langevin``, one launch for the whole list) or
the reference. The update is not differentiable and runs under ``torch.no_grad()``;
tensors in the list must not share memory with each other or with the gradients.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _native
from . import _dispatch
from .rng import check_stream_range, philox_normal_reference

__all__ = ["langevin_step_", "langevin_step_reference", "LangevinStepper"]

_dispatch.register_op("langevin_step_", native="vaebm_fast::langevin_step_", triton=True)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TensorOrList = Union[Tensor, Sequence[Tensor]]


def _as_list(value: TensorOrList, name: str) -> List[Tensor]:
    items = [value] if isinstance(value, Tensor) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} must be a tensor or a list of tensors "
                        f"(got {type(value).__name__})")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor (got {type(item).__name__})")
    return list(items)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (got {type(value).__name__} {value!r})")
    return float(value)


def _finite(value, name: str) -> float:
    value = _real(value, name)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value})")
    return value


def _check_args(tensors, grads, step_size, seed, offset, prior_weight, noise_scale,
                grad_clip, clamp):
    """Validate and normalise the arguments shared by the reference and the dispatcher.

    Returns (tensors, grads, step_size, seed, offset, prior_weight, sigma, grad_clip,
    low, high, total) with sigma resolved and absent clamp sides as None.
    """
    tensors = _as_list(tensors, "tensors")
    grads = _as_list(grads, "grads")
    if len(tensors) != len(grads):
        raise ValueError(f"tensors and grads must have the same length (got {len(tensors)} "
                         f"tensors and {len(grads)} grads)")
    if tensors:
        dtype, device = tensors[0].dtype, tensors[0].device
        if dtype not in _DTYPES:
            raise ValueError(f"tensors must be float16, bfloat16, float32 or float64 "
                             f"(got {dtype})")
        for i, (t, g) in enumerate(zip(tensors, grads)):
            if t.shape != g.shape:
                raise ValueError(f"grads[{i}] must have the shape of tensors[{i}] "
                                 f"{list(t.shape)} (got {list(g.shape)})")
            for name, x in ((f"tensors[{i}]", t), (f"grads[{i}]", g)):
                if x.dtype != dtype:
                    raise ValueError(f"{name} has dtype {x.dtype} but tensors[0] has {dtype}; "
                                     f"all tensors and grads must share one dtype")
                if x.device != device:
                    raise ValueError(f"{name} is on {x.device} but tensors[0] is on {device}; "
                                     f"all tensors and grads must be on one device")
    step_size = _finite(step_size, "step_size")
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0 (got {step_size})")
    prior_weight = _finite(prior_weight, "prior_weight")
    if noise_scale is None:
        sigma = math.sqrt(step_size)
    else:
        sigma = _finite(noise_scale, "noise_scale")
        if sigma < 0:
            raise ValueError(f"noise_scale must be >= 0 (got {sigma})")
    if grad_clip is not None:
        grad_clip = _real(grad_clip, "grad_clip")
        if not grad_clip > 0:  # also rejects NaN
            raise ValueError(f"grad_clip must be > 0 (got {grad_clip})")
    low = high = None
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be a pair (low, high) (got {clamp!r}); use None for "
                            f"an open side")
        low, high = (None if v is None else _real(v, f"clamp[{j}]") for j, v in enumerate(clamp))
        if any(v is not None and math.isnan(v) for v in (low, high)):
            raise ValueError(f"clamp bounds must not be NaN (got {clamp!r})")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"clamp must have low < high (got low={low}, high={high})")
    total = sum(t.numel() for t in tensors)
    seed, offset = check_stream_range(seed, offset, total)
    return (tensors, grads, step_size, seed, offset, prior_weight, sigma, grad_clip, low, high,
            total)


def _check_half_sq_norm(half_sq_norm, tensors) -> None:
    """Validate the optional ``half_sq_norm`` output against the (checked) tensors."""
    if half_sq_norm is None:
        return
    if not isinstance(half_sq_norm, Tensor):
        raise TypeError(f"half_sq_norm must be a torch.Tensor or None "
                        f"(got {type(half_sq_norm).__name__})")
    if not tensors:
        raise ValueError("half_sq_norm needs at least one tensor: B is the tensors' dim 0")
    for i, t in enumerate(tensors):
        if t.dim() == 0:
            raise ValueError(f"half_sq_norm needs tensors with dim >= 1 (tensors[{i}] is 0-d)")
        if t.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"half_sq_norm needs every tensor with the same dim 0 "
                             f"(tensors[0] has {tensors[0].shape[0]}, tensors[{i}] has "
                             f"{t.shape[0]})")
    expected = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    if half_sq_norm.dtype != expected:
        raise ValueError(f"half_sq_norm must be {expected} for {tensors[0].dtype} tensors "
                         f"(got {half_sq_norm.dtype})")
    if half_sq_norm.shape != (tensors[0].shape[0],):
        raise ValueError(f"half_sq_norm must have shape [B] = [{tensors[0].shape[0]}] "
                         f"(got {list(half_sq_norm.shape)})")
    if half_sq_norm.device != tensors[0].device:
        raise ValueError(f"half_sq_norm is on {half_sq_norm.device} but the tensors are on "
                         f"{tensors[0].device}")
    if not half_sq_norm.is_contiguous():
        raise ValueError("half_sq_norm must be contiguous")


def _update_reference(tensors, grads, step_size, seed, offset, prior_weight, sigma, grad_clip,
                      low, high, total, half_sq_norm) -> None:
    """The specification's arithmetic on checked, normalised arguments (``total`` > 0)."""
    half_step = step_size / 2
    noise = philox_normal_reference(total, seed=seed, offset=offset,
                                    device=tensors[0].device)  # float32 [total]
    start = 0
    for t, g in zip(tensors, grads):
        n = t.numel()
        compute = torch.float64 if t.dtype == torch.float64 else torch.float32
        xi = noise[start:start + n].reshape(t.shape).to(compute)
        x, gc = t.to(compute), g.to(compute)
        if grad_clip is not None:
            gc = gc.clamp(-grad_clip, grad_clip)
        new = x - half_step * (gc + prior_weight * x) + sigma * xi
        if low is not None or high is not None:
            new = new.clamp(low, high)
        t.copy_(new)
        start += n
    if half_sq_norm is not None:  # of the stored states, in the arithmetic dtype
        compute = half_sq_norm.dtype
        half_sq_norm.copy_(sum(0.5 * t.to(compute).reshape(t.shape[0], -1).square().sum(1)
                               for t in tensors))


def _run(chosen, tensors, grads, step_size, seed, offset, prior_weight, sigma, grad_clip, low,
         high, total, half_sq_norm) -> int:
    """One step on checked, normalised arguments with the chosen backend; the next offset."""
    if total == 0:
        if half_sq_norm is not None:
            half_sq_norm.zero_()
        return offset
    args = (tensors, grads, step_size, seed, offset, prior_weight, sigma, grad_clip, low, high)
    with torch.no_grad():
        if chosen == "eager":
            _update_reference(*args, total, half_sq_norm)
        elif chosen == "triton":
            from ..triton_kernels import langevin as _triton_langevin
            _triton_langevin.langevin_step_(*args, half_sq_norm)
        else:
            torch.ops.vaebm_fast.langevin_step_(*args, half_sq_norm)
    return offset + total


def langevin_step_reference(tensors: TensorOrList, grads: TensorOrList, *, step_size: float,
                            seed: int, offset: int, prior_weight: float = 1.0,
                            noise_scale: Optional[float] = None,
                            grad_clip: Optional[float] = None,
                            clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                            half_sq_norm: Optional[Tensor] = None) -> int:
    """Eager reference of :func:`langevin_step_` (same arguments, no ``backend``)."""
    checked = _check_args(tensors, grads, step_size, seed, offset, prior_weight, noise_scale,
                          grad_clip, clamp)
    _check_half_sq_norm(half_sq_norm, checked[0])
    return _run("eager", *checked, half_sq_norm)


def langevin_step_(tensors: TensorOrList, grads: TensorOrList, *, step_size: float, seed: int,
                   offset: int, prior_weight: float = 1.0, noise_scale: Optional[float] = None,
                   grad_clip: Optional[float] = None,
                   clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                   half_sq_norm: Optional[Tensor] = None, backend: str = "auto") -> int:
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
        backend: "auto" | "native" | "triton" | "eager" (see
            ``vaebm_fast.ops.set_default_backend``).
    Returns:
        ``offset + sum(t.numel() for t in tensors)``, the next free offset of the stream.
    Raises:
        TypeError / ValueError: invalid arguments (message says which and why).
        BackendUnavailableError: ``backend`` names a backend that cannot run here.
    """
    checked = _check_args(tensors, grads, step_size, seed, offset, prior_weight, noise_scale,
                          grad_clip, clamp)
    tensors = checked[0]
    _check_half_sq_norm(half_sq_norm, tensors)
    if not tensors:  # nothing runs, so no device to ask: only the name is checked
        _dispatch.check_choice(backend)
        return checked[4]
    chosen = _dispatch.resolve_backend("langevin_step_", backend, tensors[0].device)
    return _run(chosen, *checked, half_sq_norm)


class LangevinStepper:
    """:func:`langevin_step_` for a chain: the same tensors stepped many times, validated and
    dispatched once.

    ``LangevinStepper(tensors, step_size=..., ...)`` checks the state list and the options
    (as :func:`langevin_step_`) and picks the backend once; each ``stepper(grads, seed=...,
    offset=..., half_sq_norm=None)`` then runs one in-place step and returns the next offset,
    checking only the stream range and the output row. ``grads`` must be the gradients of
    these tensors (as autograd returns them: same shapes, dtype and device).
    """

    def __init__(self, tensors: Sequence[Tensor], *, step_size: float, prior_weight: float = 1.0,
                 noise_scale: Optional[float] = None, grad_clip: Optional[float] = None,
                 clamp: Optional[Tuple[Optional[float], Optional[float]]] = None,
                 backend: str = "auto"):
        (self.tensors, _, self.step_size, _, _, self.prior_weight, self.sigma, self.grad_clip,
         self.low, self.high, self.total) = _check_args(
            tensors, tensors, step_size, 0, 0, prior_weight, noise_scale, grad_clip, clamp)
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.backend = _dispatch.resolve_backend("langevin_step_", backend, device)
        self._norm_like: Optional[tuple] = None  # (shape, dtype, device) of a checked output

    def __call__(self, grads: Sequence[Tensor], *, seed: int, offset: int,
                 half_sq_norm: Optional[Tensor] = None) -> int:
        seed, offset = check_stream_range(seed, offset, self.total)
        if half_sq_norm is not None:
            like = (half_sq_norm.shape, half_sq_norm.dtype, half_sq_norm.device)
            if like != self._norm_like or not half_sq_norm.is_contiguous():
                _check_half_sq_norm(half_sq_norm, self.tensors)
                self._norm_like = like
        return _run(self.backend, self.tensors, list(grads), self.step_size, seed, offset,
                    self.prior_weight, self.sigma, self.grad_clip, self.low, self.high,
                    self.total, half_sq_norm)


def _register_fakes() -> None:
    # Shape-only implementation for FakeTensor / torch.compile: the op only mutates its inputs.
    @torch.library.register_fake("vaebm_fast::langevin_step_")
    def _langevin_step_fake(tensors, grads, step_size, seed, offset, prior_weight, noise_scale,
                            grad_clip, clamp_low, clamp_high, half_sq_norm=None) -> None:
        torch._check(len(tensors) == len(grads), lambda: "tensors and grads differ in length")
        for t, g in zip(tensors, grads):
            torch._check(t.shape == g.shape, lambda: "tensors and grads differ in shape")
        if half_sq_norm is not None:
            torch._check(len(tensors) > 0 and half_sq_norm.dim() == 1,
                         lambda: "half_sq_norm must be [B] with at least one tensor")
            for t in tensors:
                torch._check(t.dim() >= 1 and t.shape[0] == half_sq_norm.shape[0],
                             lambda: "half_sq_norm: every tensor must have dim 0 == B")
        return None


_native.on_load(_register_fakes)
