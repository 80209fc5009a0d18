"""Shared fixtures (opt-in: nothing here is autouse)."""
import os

import pytest
import torch

from vaebm_fast import _native


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
