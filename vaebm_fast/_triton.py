"""Whether the Triton kernels (``vaebm_fast.triton_kernels``) can run, decided lazily.

Triton is imported on the first call of :func:`status` (an op asking for its Triton backend),
never at ``import vaebm_fast``, and no device is queried. Triton kernels run on CUDA tensors;
with ``TRITON_INTERPRET=1`` in the environment *before Python starts*, Triton's interpreter runs
them on CPU tensors instead (slowly, for tests: this is how CI checks the kernels without a
GPU). ``VAEBM_FAST_DISABLE_TRITON=1`` turns the backend off.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional

__all__ = ["TritonStatus", "status", "interpret_mode", "FIX"]

FIX = "install it with `pip install triton` (Linux, with a CUDA build of torch for GPUs)"


@dataclass(frozen=True)
class TritonStatus:
    """available: Triton imported; reason: why not (None when available); version."""

    available: bool
    reason: Optional[str] = None
    version: Optional[str] = None


_lock = threading.Lock()
_status: Optional[TritonStatus] = None


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _load() -> TritonStatus:
    if os.environ.get("VAEBM_FAST_DISABLE_TRITON", "") == "1":
        return TritonStatus(False, "disabled by VAEBM_FAST_DISABLE_TRITON=1")
    try:
        import triton  # the import is the check
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return TritonStatus(False, f"triton could not be imported ({type(exc).__name__}: "
                                   f"{exc}); {FIX}")
    return TritonStatus(True, None, getattr(triton, "__version__", "unknown"))


def status() -> TritonStatus:
    """Import Triton on first use and return how that went (cached afterwards)."""
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _load()
    return _status


def device_reason(device_type: str) -> Optional[str]:
    """None when Triton kernels can run on tensors of ``device_type``, else why not.

    The device type is checked first, so CPU-only use never imports Triton.
    """
    if not (device_type == "cuda" or (device_type == "cpu" and interpret_mode())):
        return (f"Triton kernels run on CUDA tensors (or on CPU tensors under "
                f"TRITON_INTERPRET=1, for testing), not on {device_type!r} tensors")
    st = status()
    return None if st.available else st.reason
