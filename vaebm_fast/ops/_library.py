"""The two operator namespaces, and how an op module declares an op in both.

Every kernel op exists twice, with one schema:

* ``torch.ops.vaebm_fast.<op>``: the compiled kernels (``csrc/<op>/``), which the native library
  registers for the CPU and CUDA dispatch keys when it loads (``vaebm_fast._native``);
* ``torch.ops.vaebm_fast_triton.<op>``: the Triton kernels (``vaebm_fast.triton_kernels``),
  registered here for CUDA (and for CPU tensors, which Triton runs only in its interpreter,
  ``TRITON_INTERPRET=1``). Triton is imported the first time such an op runs.

An op module (``vaebm_fast/ops/<op>.py``) calls :func:`define` once per op with the schema
string, the fake kernel (which is the op's argument validation, written with ``torch._check``
so it runs on real and fake tensors alike) and the Triton launcher; and :func:`register_autograd`
with one formula for both namespaces. Nothing here loads native code or queries a device.

Why schemas live in Python: an op is then declared where its specification, reference,
validation and autograd are, and exists (for ``torch.compile``, ``opcheck`` and the fake
kernels) whether or not the native library is installed. The native library only adds kernels.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import _triton

__all__ = ["NATIVE", "TRITON", "NAMESPACES", "define", "register_autograd", "namespace"]

NATIVE, TRITON = "vaebm_fast", "vaebm_fast_triton"
NAMESPACES = (NATIVE, TRITON)

# The Library objects must live as long as the process: registrations vanish with them.
_libraries: Dict[str, torch.library.Library] = {}


def _library(ns: str) -> torch.library.Library:
    if ns not in _libraries:
        _libraries[ns] = torch.library.Library(ns, "FRAGMENT")
    return _libraries[ns]


def namespace(backend: str):
    """``torch.ops.vaebm_fast`` for ``"native"``, ``torch.ops.vaebm_fast_triton`` for
    ``"triton"``."""
    return getattr(torch.ops, NATIVE if backend == "native" else TRITON)


def define(schema: str, *, fake: Callable, triton: Optional[Callable[[], Callable]] = None
           ) -> None:
    """Declare ``schema`` (e.g. ``"swish_forward(Tensor x, float scale) -> Tensor"``) in both
    namespaces, with ``fake`` as its fake kernel and, when the schema writes an argument
    (``Tensor(a!)``), the version-counter bump of those arguments.

    ``triton``: a function returning the Triton launcher (called on first use, so Triton is
    imported only then); the launcher takes the schema's arguments.
    """
    name = schema.split("(", 1)[0].strip()
    for ns in NAMESPACES:
        lib = _library(ns)
        lib.define(schema)
        torch.library.register_fake(f"{ns}::{name}", fake, lib=lib)
        op = getattr(getattr(torch.ops, ns), name).default
        written = [(i, a.name) for i, a in enumerate(op._schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write]
        if written:
            lib.impl(name, _version_bump(op, written), "ADInplaceOrView", with_keyset=True)
    if triton is not None:
        impl = _triton_kernel(name, triton)
        for key in ("CUDA", "CPU"):
            _library(TRITON).impl(name, impl, key)


def register_autograd(name: str, make: Callable[[object], Tuple[Callable, Callable]]) -> None:
    """Autograd of op ``name`` in both namespaces from one formula: ``make(ns)`` returns
    ``(backward, setup_context)`` for namespace ``ns`` (``torch.ops.vaebm_fast`` or
    ``torch.ops.vaebm_fast_triton``), whose ops the backward may call."""
    for ns in NAMESPACES:
        backward, setup_context = make(getattr(torch.ops, ns))
        torch.library.register_autograd(f"{ns}::{name}", backward,
                                        setup_context=setup_context, lib=_library(ns))


def _version_bump(op, written):
    """ADInplaceOrView kernel of ``op``: bump the version counter of every argument its schema
    marks as written, as built-in in-place ops do, so autograd refuses a value that was
    overwritten after it was saved. ``written``: (position, name) pairs."""

    def kernel(keyset, *args, **kwargs):
        for i, arg_name in written:
            # A trailing argument equal to its default may be missing from args.
            value = args[i] if i < len(args) else kwargs.get(arg_name)
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, Tensor):
                    torch.autograd.graph.increment_version(t)
        with torch._C._AutoDispatchBelowADInplaceOrView():
            return op.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, *args,
                                 **kwargs)

    return kernel


def _triton_kernel(name: str, launcher: Callable[[], Callable]) -> Callable:
    """The kernel registered for ``vaebm_fast_triton::<name>``: imports the launcher on first
    use and refuses tensors Triton cannot run on with the reason."""
    loaded = []

    def kernel(*args, **kwargs):
        device = _first_tensor(args).device
        reason = _triton.device_reason(device.type)
        if reason is not None:
            raise RuntimeError(f"{TRITON}::{name}: {reason}")
        if not loaded:
            loaded.append(launcher())
        return loaded[0](*args, **kwargs)

    return kernel


def _first_tensor(args) -> Tensor:
    for a in args:
        if isinstance(a, Tensor):
            return a
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], Tensor):
            return a[0]
    raise RuntimeError("a Triton op was called without tensors")
