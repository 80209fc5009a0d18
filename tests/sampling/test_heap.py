"""vaebm_fast._heap.heap_reuse: the malloc settings it makes and undoes (through a recording
stand-in for glibc's mallopt), its opt-outs, that FastSampler's CPU chains run inside it only
when asked to, and, with the real glibc, that the settings take effect (read back through
mallinfo2)."""
import ctypes
import ctypes.util
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


AFTER = list(heap._DEFAULTS.items()) + [("trim", 0)]  # defaults back, free pages to the kernel


def test_restores_glibcs_documented_defaults():
    """mallopt(3): M_MMAP_MAX 65536, M_TRIM_THRESHOLD 128 KiB (glibc cannot report the values
    in force, so these are what the block writes back)."""
    assert heap._DEFAULTS == {heap._M_MMAP_MAX: 65536, heap._M_TRIM_THRESHOLD: 128 * 1024}


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


def test_fast_sampler_uses_it_only_when_asked(recorded, monkeypatch):
    torch.manual_seed(0)
    vae, energy = MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1).eval(), MLPEnergy(2, 8, 1)
    kw = dict(space="eps", step_size=0.05, n_steps=2)
    monkeypatch.delenv("VAEBM_FAST_HEAP_REUSE", raising=False)
    default = FastSampler(energy, vae, **kw).sample(4, seed=0)  # off by default
    assert recorded == []
    on = FastSampler(energy, vae, heap_reuse=True, **kw).sample(4, seed=0)
    assert recorded == list(heap._DURING.items()) + AFTER
    assert torch.equal(default, on)  # the same chain either way
    recorded.clear()
    monkeypatch.setenv("VAEBM_FAST_HEAP_REUSE", "1")  # the switch turns the default on ...
    FastSampler(energy, vae, **kw).sample(4, seed=0)
    assert recorded == list(heap._DURING.items()) + AFTER
    recorded.clear()
    FastSampler(energy, vae, heap_reuse=False, **kw).sample(4, seed=0)  # ... not a False
    LangevinSampler(energy, vae, **kw).sample(4, seed=0)  # the eager baseline: never
    assert recorded == []


def test_bad_switch_values_are_rejected(monkeypatch):
    monkeypatch.setenv("VAEBM_FAST_HEAP_REUSE", "yes")
    with pytest.raises(ValueError, match="VAEBM_FAST_HEAP_REUSE must be 0 or 1 \\(got 'yes'\\)"):
        FastSampler(MLPEnergy(2, 8, 1), space="data", step_size=0.1, n_steps=1)
    with pytest.raises(TypeError, match="heap_reuse must be None, True or False"):
        FastSampler(MLPEnergy(2, 8, 1), space="data", step_size=0.1, n_steps=1, heap_reuse=1)


class _Mallinfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h, glibc >= 2.33): every field a size_t."""
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_real_mallopt_keeps_large_blocks_in_the_heap_and_restores_after():
    """The settings take effect, read back through mallinfo2: inside the block a 64 MiB malloc
    comes from the heap (arena) instead of mmap (hblkhd) and stays there when freed; on leaving,
    malloc_trim hands it back and large blocks are mmapped again."""
    if heap.heap_reuse_available() is not None:
        pytest.skip(f"heap reuse unavailable here: {heap.heap_reuse_available()}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("this glibc has no mallinfo2 (added in 2.33)")
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20  # above any mmap threshold glibc would pick on its own (at most 32 MiB)
    # Other threads of the process (pytest-xdist's, torch's) may allocate or free a little
    # meanwhile, and the heap may already have some free space at its top: counts are compared
    # with a slack far below the 64 MiB that each property moves.
    slack = size // 8

    def malloc_free():
        """mallinfo2 before, while holding, and after freeing a block of ``size`` bytes."""
        before = libc.mallinfo2()
        block = libc.malloc(size)
        assert block
        held = libc.mallinfo2()
        libc.free(block)
        return before, held, libc.mallinfo2()

    with heap.heap_reuse():
        before, held, freed = malloc_free()
        assert held.hblkhd - before.hblkhd < slack  # not mmapped (M_MMAP_MAX = 0) ...
        assert held.uordblks - before.uordblks > size - slack  # ... but from the heap
        # Freed, it stays in the heap as free space (M_TRIM_THRESHOLD). Compared with the
        # held state, not the start: the block may have come from free space the heap already
        # had (earlier tests in this process), so the arena need not have grown.
        assert freed.fordblks - held.fordblks > size - slack
        assert freed.arena > held.arena - slack
    # On leaving, malloc_trim(0) trimmed the heap's top: no releasable chunk is left there.
    assert libc.mallinfo2().keepcost < slack
    # mmap is allowed again: a block larger than all the heap's free space cannot be served
    # from it (a freed 64 MiB chunk may sit in the middle of the heap, where trimming cannot
    # reach), so it is mmapped.
    big = libc.mallinfo2().fordblks + size
    before = libc.mallinfo2()
    block = libc.malloc(big)
    assert block
    held = libc.mallinfo2()
    libc.free(block)
    assert held.hblkhd - before.hblkhd >= big


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
