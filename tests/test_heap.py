"""vaebm_fast._heap.heap_reuse: the malloc settings it makes and undoes (through a recording
stand-in for glibc's mallopt), its opt-outs, and that FastSampler's CPU chains run inside it."""
import sys

import pytest
import torch

from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import MLPEnergy, MLPVAE

heap = sys.modules["vaebm_fast._heap"]


@pytest.fixture
def recorded(monkeypatch):
    """Replace mallopt with a recorder; returns the list of (param, value) calls."""
    calls = []
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setattr(heap, "_malloc_trim", lambda pad: calls.append(("trim", pad)) or 1)
    monkeypatch.setattr(heap, "_depth", 0)
    return calls


AFTER = list(heap._AFTER.items()) + [("trim", 0)]  # defaults back, free pages to the kernel


def test_sets_then_restores_once_for_nested_blocks(recorded):
    with heap.heap_reuse():
        assert recorded == list(heap._DURING.items())
        with heap.heap_reuse():  # nested: nothing more
            pass
        assert recorded == list(heap._DURING.items())
    assert recorded == list(heap._DURING.items()) + AFTER
    assert dict(heap._DURING)[heap._M_MMAP_MAX] == 0  # no mmap: allocations stay in the heap


def test_restores_when_the_chain_raises(recorded):
    with pytest.raises(RuntimeError):
        with heap.heap_reuse():
            raise RuntimeError("diverged")
    assert recorded[-3:] == AFTER
    assert heap._depth == 0


@pytest.mark.parametrize("env", [("VAEBM_FAST_HEAP_REUSE", "0"), ("MALLOC_MMAP_MAX_", "0"),
                                 ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")])
def test_user_settings_are_left_alone(monkeypatch, env):
    monkeypatch.setenv(*env)
    monkeypatch.setattr(heap, "_mallopt", None)  # resolve again under this environment
    assert heap.heap_reuse_available() is not None
    with heap.heap_reuse():
        pass
    assert heap._mallopt is False


def test_fast_sampler_runs_cpu_chains_inside_it(recorded):
    torch.manual_seed(0)
    vae, energy = MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1), MLPEnergy(2, 8, 1)
    kw = dict(space="eps", step_size=0.05, n_steps=2)
    FastSampler(energy, vae, **kw).sample(4, seed=0)
    assert recorded == list(heap._DURING.items()) + AFTER
    recorded.clear()
    LangevinSampler(energy, vae, **kw).sample(4, seed=0)  # the eager baseline: untouched
    assert recorded == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_real_mallopt_round_trip():
    # On this (glibc) machine the real mallopt accepts the settings; memory still works.
    if heap.heap_reuse_available() is not None:
        pytest.skip(f"heap reuse unavailable here: {heap.heap_reuse_available()}")
    with heap.heap_reuse():
        a = torch.ones(16 << 20)  # 64 MB: above any mmap threshold
        del a
        b = torch.zeros(16 << 20)
        assert float(b.sum()) == 0.0


def test_trim_heap_calls_malloc_trim_even_with_heap_reuse_off(monkeypatch):
    calls = []

    class RecordingLibc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    monkeypatch.setenv("VAEBM_FAST_HEAP_REUSE", "0")
    monkeypatch.setattr(heap, "_mallopt", None)
    monkeypatch.setattr(heap, "_libc", RecordingLibc())
    assert heap.heap_reuse_available() == "VAEBM_FAST_HEAP_REUSE=0"
    assert heap.trim_heap() is True
    assert calls == [0]


def test_trim_heap_without_glibc_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_libc", False)
    monkeypatch.setattr(heap, "_libc_why", "the C library is not glibc")
    assert heap.trim_heap() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_real_trim_heap():
    if heap._load_glibc() is not None:
        pytest.skip(f"no glibc here: {heap._load_glibc()}")
    assert heap.trim_heap() is True
