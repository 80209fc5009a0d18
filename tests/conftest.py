"""Shared fixtures (opt-in: nothing here is autouse).

Triton: without a CUDA device the Triton kernels are tested in Triton's CPU interpreter, which
must be switched on before any kernel module is imported (``triton.jit`` reads the variable
when it decorates), so it is set here, first. The ``triton_device`` fixture gives the device
the Triton tests put their tensors on.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from vaebm_fast import _native, _triton


def pytest_sessionstart(session):
    """``VAEBM_FAST_REQUIRE_CUDA=1`` (a GPU machine's check): no CUDA device is a failure, not
    a suite of skipped CUDA tests."""
    if os.environ.get("VAEBM_FAST_REQUIRE_CUDA") == "1" and not torch.cuda.is_available():
        raise pytest.UsageError("VAEBM_FAST_REQUIRE_CUDA=1 but torch sees no CUDA device "
                                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: the CI machine has 2 shared cores, and tiny models are
    faster without intra-op parallelism."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def native():
    """Skip (or fail with VAEBM_FAST_REQUIRE_NATIVE=1) when the native extension is not loaded."""
    st = _native.status()
    if not st.loaded:
        if os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") == "1":
            pytest.fail(f"native extension required but unavailable: {st.reason}")
        pytest.skip(f"native extension unavailable: {st.reason}")


@pytest.fixture
def triton_device():
    """``"cuda"`` when a GPU is present, else ``"cpu"`` (Triton's interpreter); skips (or fails
    with VAEBM_FAST_REQUIRE_TRITON=1) when Triton cannot run here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = _triton.device_reason(device)
    if reason is not None:
        if os.environ.get("VAEBM_FAST_REQUIRE_TRITON") == "1":
            pytest.fail(f"Triton required but unavailable: {reason}")
        pytest.skip(f"Triton unavailable: {reason}")
    return device


@pytest.fixture
def no_tf32():
    """TF32 off for the test (PyTorch enables it for cuDNN convolutions by default): comparing a
    chain whose BatchNorms were folded into the convolutions with the unfolded one needs exact
    float32 convolutions."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
