"""What every op test module shares: the kernel targets and the tensor layouts.

``kernel`` yields each (backend, device) pair a kernel can run on, and every test that takes it
runs once per pair: ``native/cpu`` (the compiled CPU kernels), ``native/cuda`` (the compiled
CUDA kernels), ``triton/cuda`` (Triton compiled for the GPU) and ``triton/cpu`` (Triton's
interpreter, used without a GPU). A pair whose device is absent is skipped; a pair whose device
is present but whose backend is not is skipped with the reason, or fails when the matching
switch asks for it:

* ``VAEBM_FAST_REQUIRE_NATIVE=1``: the native kernels must load (CPU, and CUDA on a GPU machine);
* ``VAEBM_FAST_REQUIRE_TRITON=1``: Triton must run on the machine's device (the interpreter on
  a CPU-only machine, the GPU otherwise; ``triton/cpu`` is always skipped on a GPU machine,
  where the interpreter is off);
* ``VAEBM_FAST_REQUIRE_CUDA=1``: a CUDA device must be present (checked in tests/conftest.py).

Each property of an op is written once, against the op's eager reference, and runs on every
target; an op without a backend (say no Triton kernel) skips with the op's own reason from
``kernel.require(op)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from vaebm_fast import _native, _triton
from vaebm_fast.ops import backend_availability

TARGETS = [("native", "cpu"), ("native", "cuda"), ("triton", "cuda"), ("triton", "cpu")]


def _switch(name: str) -> bool:
    return os.environ.get(name) == "1"


def _skip_or_fail(required: bool, reason: str):
    if required:
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Kernel:
    """A (backend, device) target; ``backend`` is the name the public ops take."""

    backend: str
    device: str

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def require(self, op: str) -> "Kernel":
        """Skip (or fail, under the REQUIRE switch of the backend) when ``op`` has no kernel of
        this backend on this device; returns self."""
        reason = backend_availability(op, self.device)[self.backend]
        if reason is not None:
            switch = {"native": "VAEBM_FAST_REQUIRE_NATIVE",
                      "triton": "VAEBM_FAST_REQUIRE_TRITON"}[self.backend]
            # An op that simply has no kernel of this backend is a skip, whatever the switch.
            missing_kernel = reason.endswith("no Triton kernel") or "has no native" in reason
            _skip_or_fail(_switch(switch) and not missing_kernel, f"{op}: {reason}")
        return self

    @property
    def ops(self):
        """The raw op namespace of this backend (``torch.ops.vaebm_fast[_triton]``)."""
        return getattr(torch.ops, "vaebm_fast" if self.backend == "native" else
                       "vaebm_fast_triton")

    def __str__(self) -> str:
        return f"{self.backend}/{self.device}"


@pytest.fixture(params=TARGETS, ids=[f"{b}-{d}" for b, d in TARGETS])
def kernel(request) -> Kernel:
    backend, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "native":
        st = _native.status()
        if not st.loaded:
            _skip_or_fail(_switch("VAEBM_FAST_REQUIRE_NATIVE"),
                          f"native extension unavailable: {st.reason}")
        if device == "cuda" and not st.has_cuda_kernels:
            _skip_or_fail(_switch("VAEBM_FAST_REQUIRE_NATIVE"),
                          f"{st.path} was built without CUDA kernels")
    else:
        if device == "cpu" and torch.cuda.is_available():
            pytest.skip("Triton's CPU interpreter is off on a GPU machine (TRITON_INTERPRET)")
        reason = _triton.device_reason(device)
        if reason is not None:
            _skip_or_fail(_switch("VAEBM_FAST_REQUIRE_TRITON"), f"Triton unavailable: {reason}")
    return Kernel(backend, device)
