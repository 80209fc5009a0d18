"""Which backend runs an op: the registry of ops, their backends, and the default backend.

Backends, in the order ``"auto"`` tries them unless an op says otherwise:

* ``"native"``: the compiled kernels of ``vaebm_fast._C`` (``torch.ops.vaebm_fast.<op>``),
  available for a device type when the library is loaded and has a kernel for it.
* ``"triton"``: the Triton kernels of ``vaebm_fast.triton_kernels`` (``torch.ops.
  vaebm_fast_triton.<op>``), available on CUDA tensors when Triton imports, and on CPU tensors
  under ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests; ``"auto"`` never picks it on
  the CPU). See ``vaebm_fast._triton``.
* ``"eager"``: the plain-PyTorch reference of the op; always available.

Why native before Triton on CUDA: both are single fused kernels with the same memory traffic;
the native one has no Python launch overhead, which dominates at VAEBM's sizes. The op
benchmarks (``vaebm-fast bench ops --device cuda``) time both side by side; their GPU figures
are in ``benchmarks/results/``. The one measured exception to the order is a size below which
``"auto"`` passes over the native kernel (``register_op(auto_native_min_numel=...)``).

An op called with ``backend="auto"`` (the default) uses the default backend of the calling
thread (or asyncio task; a ``contextvars.ContextVar``), which is itself ``"auto"`` (the fastest
available backend for the tensors' device) unless changed with :func:`default_backend` or
:func:`set_default_backend`; no thread's setting changes another's. Naming a backend that is
unavailable raises :class:`BackendUnavailableError` with the reason; ``auto`` never raises.

Nothing here queries a device; availability is decided from the device type of the tensors an
op receives.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from .. import _native, _triton

__all__ = [
    "BACKENDS", "BackendUnavailableError", "register_op", "registered_ops",
    "backend_availability", "resolve_backend", "set_default_backend", "get_default_backend",
    "default_backend", "check_choice",
]

BACKENDS: Tuple[str, ...] = ("native", "triton", "eager")  # preference order of "auto"
# "auto" on the CPU: Triton only runs there in its (slow) interpreter, so never by choice.
_CPU_AUTO_ORDER: Tuple[str, ...] = ("native", "eager")
_CHOICES = ("auto",) + BACKENDS

DeviceLike = Union[str, torch.device]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run the op on that device."""


@dataclass(frozen=True)
class _OpSpec:
    name: str  # public name, e.g. "langevin_step_"
    native: Optional[str]  # qualified native op, e.g. "vaebm_fast::langevin_step_", or None
    triton: bool  # has a Triton implementation in vaebm_fast.triton_kernels
    # device type -> fewest elements for which "auto" takes the native kernel (by measurement)
    auto_native_min_numel: Dict[str, int]


_ops: Dict[str, _OpSpec] = {}
# The default backend is per thread and per asyncio task (a ContextVar): a new thread starts
# at "auto", and a `with default_backend(...)` in one thread changes nothing in another.
_default: "contextvars.ContextVar[str]" = contextvars.ContextVar("vaebm_fast_default_backend",
                                                                default="auto")
# (op, device type) -> reasons of (native, triton, eager), None where available; valid for one
# loading outcome of _native.
_cache: Dict[Tuple[str, str], Tuple[Optional[str], ...]] = {}
_cache_status: Optional[_native.NativeStatus] = None


def register_op(name: str, *, native: Optional[str] = None, triton: bool = False,
                auto_native_min_numel: Optional[Dict[str, int]] = None) -> None:
    """Declare an op and, when it has compiled kernels, the qualified name of its native op;
    ``triton=True`` when ``vaebm_fast.triton_kernels`` implements it.

    auto_native_min_numel: per device type, the size below which "auto" passes over the native
    kernel (its fixed cost measured larger than its gain there); needs ``numel`` in
    :func:`resolve_backend`.
    """
    _ops[name] = _OpSpec(name, native, triton, dict(auto_native_min_numel or {}))
    _cache.clear()


def registered_ops() -> List[str]:
    return sorted(_ops)


def _device_type(device: DeviceLike) -> str:
    return torch.device(device).type


def _native_reason(spec: _OpSpec, device_type: str, st: _native.NativeStatus) -> Optional[str]:
    if spec.native is None:
        return f"{spec.name} has no native kernels yet"
    if not st.loaded:
        return st.reason
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if dispatch_key is None:
        return f"no native kernels for device type {device_type!r}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(spec.native, dispatch_key):
        if device_type == "cuda" and not st.has_cuda_kernels:
            return ("vaebm_fast._C was built without CUDA kernels (needs a CUDA build of torch "
                    "and nvcc at install time; see setup.py)")
        return f"vaebm_fast._C has no {dispatch_key} kernel for {spec.name}"
    return None


def backend_availability(op: str, device: DeviceLike = "cpu") -> Dict[str, Optional[str]]:
    """``{backend: None if available else the reason}`` for ``op`` on ``device``'s type.

    Loads the native extension on first use (see vaebm_fast._native).
    """
    if op not in _ops:
        raise ValueError(f"unknown op {op!r}; registered: {', '.join(registered_ops())}")
    return dict(zip(BACKENDS, _availability(op, _device_type(device))))


# torch.compile calls this at trace time and keeps its result as a constant: the first look-up
# of an op loads the native library and asks the dispatcher, neither of which can be traced,
# and the answer does not change while the process runs (a reload clears the cache).
@torch.compiler.assume_constant_result
def _availability(op: str, device_type: str) -> Tuple[Optional[str], ...]:
    """(native, triton, eager) reasons (None: available) for ``op`` on ``device_type``."""
    global _cache_status
    st = _native.status()
    if st is not _cache_status:  # the extension was (re)loaded: recompute
        _cache.clear()
        _cache_status = st
    key = (op, device_type)
    if key not in _cache:
        spec = _ops[op]
        _cache[key] = (_native_reason(spec, device_type, st),
                       (_triton.device_reason(device_type) if spec.triton
                        else f"{op} has no Triton kernel"),
                       None)
    return _cache[key]


def check_choice(backend: str) -> None:
    """Raise ValueError unless ``backend`` is "auto" or a backend name."""
    if backend not in _CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _CHOICES))} "
                         f"(got {backend!r})")


def resolve_backend(op: str, backend: str, device: DeviceLike,
                    numel: Optional[int] = None, unsupported: Optional[str] = None) -> str:
    """The backend that will run ``op`` on ``device`` when the caller asked for ``backend``.

    ``"auto"`` means the default backend of the calling thread / task; a default of ``"auto"``
    picks the first available backend in the op's order for the device (:data:`BACKENDS`
    unless measured otherwise), skipping the native kernel for inputs of fewer than the op's
    ``auto_native_min_numel`` elements when ``numel`` is given.

    ``unsupported``: why the op's kernels (native and Triton) cannot take these inputs, phrased
    to follow "the <backend> kernel ..." (e.g. "takes float32 or float64 tensors (got
    torch.int64)"), or None when they can. The eager reference then runs under ``"auto"``;
    a kernel backend named by the caller raises.

    Raises:
        ValueError: unknown backend name, or a named kernel backend with ``unsupported``.
        BackendUnavailableError: a named backend cannot run ``op`` on that device.
    """
    check_choice(backend)
    named = backend != "auto"
    if backend == "auto":
        backend = _traced_default()
    availability = backend_availability(op, device)
    if backend == "auto":
        device_type = _device_type(device)
        spec = _ops[op]
        default = _CPU_AUTO_ORDER if device_type == "cpu" else BACKENDS
        order = default
        min_numel = spec.auto_native_min_numel.get(device_type)
        if numel is not None and min_numel is not None and numel < min_numel:
            order = tuple(b for b in order if b != "native")
        backend = next(b for b in order if availability[b] is None)
    else:
        reason = availability[backend]
        if reason is not None:
            raise BackendUnavailableError(f"backend {backend!r} cannot run {op} on "
                                          f"{_device_type(device)}: {reason}")
    if unsupported is not None and backend != "eager":
        if named:
            raise ValueError(f"{op}: the {backend} kernel {unsupported}; use backend='eager'")
        return "eager"
    return backend


def set_default_backend(backend: str) -> None:
    """Set the backend that ops called with ``backend="auto"`` use in the calling thread (or
    asyncio task): ``"auto"`` (fastest available, the initial setting), ``"native"``,
    ``"triton"`` or ``"eager"``. Other threads keep theirs; a thread started later starts at
    ``"auto"``. Prefer the :func:`default_backend` context manager, which undoes it."""
    check_choice(backend)
    _default.set(backend)


def get_default_backend() -> str:
    """The calling thread's (or task's) default backend."""
    return _default.get()


# torch.compile cannot trace ContextVar.get: it calls this when it traces and keeps the result
# as a constant, so a compiled function runs with the default backend of the thread that traced
# it (no guard notices a later change; pass backend= explicitly inside compiled code to vary
# it). Eagerly it is the plain look-up.
@torch.compiler.assume_constant_result
def _traced_default() -> str:
    return _default.get()


@contextlib.contextmanager
def default_backend(backend: str) -> Iterator[None]:
    """``with default_backend("eager"): ...``: the calling thread's (or task's) default backend
    for the block, restored after it; other threads are not affected."""
    check_choice(backend)
    token = _default.set(backend)
    try:
        yield
    finally:
        _default.reset(token)
