"""Keep freed CPU memory in the process heap while a Langevin chain runs (glibc only).

Why: every CPU step of a chain allocates and frees the same large activation tensors (forward
and backward of the decoder and the energy). glibc serves allocations above its mmap
threshold (at most 32 MB) with a fresh ``mmap`` and returns them to the kernel on ``free``,
so every step page-faults its activations in again. At CIFAR-10 scale (batch 32, official
widths, 2-core AMD EPYC) that kernel time was larger than the computation: 17 s of system
time against 15 s of user time per step; with the heap kept, 0.4 s.

:func:`heap_reuse` sets ``M_MMAP_MAX = 0`` (allocations come from the heap) and a 2 GiB
``M_TRIM_THRESHOLD`` (freed memory stays in it) for the duration of a ``with`` block. These are
process-wide: while a block is open, every thread's large frees stay in the heap too. So it is
opt-in: FastSampler uses it only with ``heap_reuse=True`` or ``VAEBM_FAST_HEAP_REUSE=1``
(:func:`heap_reuse_requested`); ``VAEBM_FAST_HEAP_REUSE=0`` keeps it off everywhere.

What it restores. glibc has no getter for mallopt parameters, so the values in force before
the block cannot be read back. It changes nothing when the environment tunes malloc
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_THRESHOLD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``): an
application's own settings are never overridden. Otherwise the two parameters were at glibc's
documented defaults (mallopt(3): ``M_MMAP_MAX = 65536``, ``M_TRIM_THRESHOLD = 128 KiB``) unless
the application changed them by calling ``mallopt`` itself, which cannot be detected; when the
last block exits it writes those defaults back and calls ``malloc_trim(0)``, which hands the
heap's free pages back to the kernel, so a chain's memory is not kept after it (the next chain
page-faults its first step in again, not every step). The limits, then: a value an application
set through ``mallopt`` is replaced by glibc's default, and setting either parameter stops
glibc's dynamic adjustment of the mmap threshold (and of the trim threshold with it) at its
current value for the rest of the process. It does nothing (and costs nothing) when the C
library is not glibc. Nested and concurrent blocks are counted: the defaults come back when the
last one exits.

:func:`trim_heap` hands the heap's free pages back to the kernel on its own, whatever the
environment says about heap reuse (the chain benchmarks call it before measuring peak memory).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Iterator, Optional

__all__ = ["heap_reuse", "heap_reuse_available", "heap_reuse_requested", "trim_heap"]

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DURING = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2 ** 31 - 1}
# glibc's documented defaults (mallopt(3)), written back when the last block exits.
_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}
_SWITCH = "VAEBM_FAST_HEAP_REUSE"
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_THRESHOLD_")

_lock = threading.Lock()
_depth = 0
_mallopt = None  # resolved on first use; False when unavailable (_why says why)
_malloc_trim = None
_why: Optional[str] = None
_libc = None  # glibc once loaded; False when there is none (_libc_why says why)
_libc_why: Optional[str] = None


def _load_glibc() -> Optional[str]:
    """Load glibc (mallopt and malloc_trim typed) into ``_libc``; returns why not, or None."""
    global _libc, _libc_why
    if _libc is not None:
        return None if _libc else _libc_why
    reason = None
    if not sys.platform.startswith("linux"):
        reason = "not Linux"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if not hasattr(libc, "gnu_get_libc_version"):
                reason = "the C library is not glibc"
            else:
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.mallopt.restype = ctypes.c_int
                libc.malloc_trim.argtypes = (ctypes.c_size_t,)
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
        except OSError as exc:
            reason = f"libc could not be loaded ({exc})"
    if reason is not None:
        _libc, _libc_why = False, reason
    return reason


def _resolve_mallopt() -> Optional[str]:
    """Load glibc's mallopt; returns why it cannot be used, or None."""
    global _mallopt, _malloc_trim, _why
    if _mallopt is not None:
        return None if _mallopt else _why
    if os.environ.get(_SWITCH) == "0":
        reason = f"{_SWITCH}=0"
    elif any(name in os.environ for name in _USER_SETTINGS) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        reason = "malloc is tuned through the environment"
    else:
        reason = _load_glibc()
    if reason is None:
        _mallopt, _malloc_trim = _libc.mallopt, _libc.malloc_trim
    else:
        _mallopt, _why = False, reason
    return reason


def heap_reuse_available() -> Optional[str]:
    """None when :func:`heap_reuse` takes effect here, else why not."""
    return _resolve_mallopt()


def heap_reuse_requested(flag: Optional[bool] = None) -> bool:
    """Whether a sampler asked with ``flag`` uses :func:`heap_reuse`: ``flag`` itself when
    given, else the environment switch (``VAEBM_FAST_HEAP_REUSE=1``: on; unset or ``0``: off).
    ``VAEBM_FAST_HEAP_REUSE=0`` also makes :func:`heap_reuse` itself do nothing."""
    if flag is not None:
        return bool(flag)
    value = os.environ.get(_SWITCH, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{_SWITCH} must be 0 or 1 (got {value!r})")
    return value == "1"


def trim_heap() -> bool:
    """Return the heap's free pages to the kernel (glibc's ``malloc_trim(0)``), so that the
    resident set counts only memory in use. False (nothing done) without glibc."""
    if _load_glibc() is not None:
        return False
    _libc.malloc_trim(0)
    return True


def _set(params: dict) -> None:
    for param, value in params.items():
        _mallopt(param, value)


@contextlib.contextmanager
def heap_reuse() -> Iterator[None]:
    """Within the block, freed CPU memory stays in the heap for the next allocation."""
    global _depth
    if _resolve_mallopt() is not None:
        yield
        return
    with _lock:
        if _depth == 0:
            _set(_DURING)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(_DEFAULTS)
                _malloc_trim(0)
