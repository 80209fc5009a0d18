"""No hidden global state: samplers leave the caller's modules as they found them, even when
two threads sample with one module at once; the default backend is per thread."""
import concurrent.futures
import copy
import multiprocessing
import os
import sys
import threading

import pytest
import torch
from torch import nn

from vaebm_fast import FastSampler, LangevinSampler, _heap, ops
from vaebm_fast.models import MLPEnergy, MLPVAE
from vaebm_fast.ops._dispatch import resolve_backend


class _Gate(nn.Module):
    """Wraps an energy; before its ``n``-th call (1-based) ``actions[n]`` runs (sets or waits
    for an event): the two threads' chains are made to overlap in a fixed order."""

    def __init__(self, energy, actions):
        super().__init__()
        self.energy, self.actions, self.calls = energy, actions, 0

    def __deepcopy__(self, memo):
        """FastSampler's snapshot: the energy copied, the same actions (events)."""
        return _Gate(copy.deepcopy(self.energy, memo), self.actions)

    def forward(self, x):
        self.calls += 1
        if self.calls in self.actions:
            self.actions[self.calls]()
        return self.energy(x)


def _overlapping_chains(make_sampler, energy, generator, n=8):
    """Two chains on one shared energy in two threads, overlapping as A starts, B starts,
    A ends, B ends (the order that left a saved-and-restored flag wrong for good)."""
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    wait = lambda event: (lambda: assert_set(event.wait(timeout=60)))  # noqa: E731
    errors, results = [], {}

    def run(name, seed, actions, before=None, after=None):
        try:
            if before is not None:
                before.wait(timeout=60)
            results[name] = make_sampler(_Gate(energy, actions), generator).sample(n, seed=seed)
        except Exception as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)
        finally:
            if after is not None:
                after.set()

    threads = [threading.Thread(target=run, args=("a", 0, {1: a_in.set, 2: wait(b_in)}),
                                kwargs=dict(after=a_done)),
               threading.Thread(target=run, args=("b", 1, {1: b_in.set, 2: wait(a_done)}),
                                kwargs=dict(before=a_in))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def assert_set(flag):
    assert flag, "the other thread's chain never got there"


def test_two_threads_sharing_an_energy_leave_it_trainable():
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2).eval()
    energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
    flags = [p.requires_grad for p in energy.parameters()]
    vae_flags = [p.requires_grad for p in vae.parameters()]
    _overlapping_chains(lambda e, g: LangevinSampler(e, g, space="eps", step_size=0.01,
                                                     n_steps=4), energy, vae)
    assert [p.requires_grad for p in energy.parameters()] == flags
    assert [p.requires_grad for p in vae.parameters()] == vae_flags
    assert all(p.grad is None for p in [*energy.parameters(), *vae.parameters()])
    energy(torch.randn(8, 2)).mean().backward()  # still trainable
    assert all(p.grad is not None for p in energy.parameters() if p.requires_grad)


def test_two_threads_sharing_both_modules_give_the_sequential_samples():
    """Fast and eager chains, one energy and one generator shared by two threads at once: each
    thread gets the samples it gets alone, and the modules come out as they went in."""
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2).eval()
    energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
    state = {k: v.clone() for k, v in [*energy.state_dict().items(), *vae.state_dict().items()]}
    flags = [p.requires_grad for p in [*energy.parameters(), *vae.parameters()]]
    for cls in (LangevinSampler, FastSampler):
        made = []

        def make(e, g, cls=cls):
            made.append(cls(e, g, space="eps", step_size=0.01, n_steps=4))
            return made[-1]
        alone = {name: make(energy, vae).sample(8, seed=seed)
                 for name, seed in (("a", 0), ("b", 1))}
        together = _overlapping_chains(make, energy, vae)
        assert all(torch.equal(together[k], alone[k]) for k in alone), cls.__name__
        if cls is FastSampler:
            assert [s.last_path for s in made] == ["fast"] * 4
    assert [p.requires_grad for p in [*energy.parameters(), *vae.parameters()]] == flags
    assert not vae.training and energy.training
    after = {k: v for k, v in [*energy.state_dict().items(), *vae.state_dict().items()]}
    assert all(torch.equal(after[k], v) for k, v in state.items())


def _in_thread(fn):
    """fn() run in a new thread; its result (or its exception, raised here)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 -- re-raised below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_default_backend_is_per_thread():
    """``with ops.default_backend(...)`` (here one that cannot run on the CPU) in one thread
    changes nothing for another thread's backend="auto" ops, nor for the main thread after."""
    x = torch.randn(1 << 17)  # above swish's native threshold
    auto = resolve_backend("swish", "auto", "cpu", numel=x.numel())
    inside, release = threading.Event(), threading.Event()

    def hold_triton():
        with ops.default_backend("triton"):
            assert ops.get_default_backend() == "triton"
            inside.set()
            assert release.wait(timeout=60)
        return ops.get_default_backend()

    holder = threading.Thread(target=lambda: results.append(hold_triton()))
    results = []
    holder.start()
    try:
        assert inside.wait(timeout=60)
        assert ops.get_default_backend() == "auto"
        assert resolve_backend("swish", "auto", "cpu", numel=x.numel()) == auto
        assert _in_thread(lambda: resolve_backend("swish", "auto", "cpu",
                                                      numel=x.numel())) == auto
        assert torch.equal(_in_thread(lambda: ops.swish(x)), ops.swish(x))
    finally:
        release.set()
        holder.join(timeout=60)
    assert results == ["auto"]  # restored in that thread too
    _in_thread(lambda: ops.set_default_backend("eager"))  # no `with`: stays in that thread
    assert ops.get_default_backend() == "auto"
    assert _in_thread(ops.get_default_backend) == "auto"  # a new thread starts at "auto"


def test_compiled_ops_trace_the_tracing_threads_default():
    """torch.compile(fullgraph=True) traces the dispatch (the ContextVar is read through a
    constant-result call) and uses the default of the thread that traced."""
    x = torch.randn(1 << 17)
    targets = []

    def record(gm, inputs):
        targets.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    with ops.default_backend("eager"):
        y = torch.compile(lambda t: ops.swish(t), fullgraph=True, backend=record)(x)
    assert torch.allclose(y, x * torch.sigmoid(x))
    assert not any("vaebm_fast" in t for t in targets[-1])  # the eager reference was traced


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_kept_by_other_thread(heap_reuse: bool, block=128 << 20, rounds=4) -> int:
    """While a FastSampler CPU chain runs (held at its second energy call), another thread
    allocates, touches and frees ``block`` bytes ``rounds`` times; returns the most resident
    memory that thread's freed blocks left behind (bytes above the RSS before each round)."""
    _, energy = MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1), MLPEnergy(2, 8, 1)
    in_chain, done = threading.Event(), threading.Event()
    gate = _Gate(energy, {2: lambda: (in_chain.set(), assert_set(done.wait(timeout=60)))})
    sampler = FastSampler(gate, space="data", step_size=0.01, n_steps=3, data_shape=(2,),
                          heap_reuse=heap_reuse)
    chain = threading.Thread(target=lambda: sampler.sample(4, seed=0))
    chain.start()
    kept = []
    try:
        assert in_chain.wait(timeout=60)
        for _ in range(rounds):
            before = _rss_bytes()
            t = torch.ones(block // 4)  # written: every page resident
            del t
            kept.append(_rss_bytes() - before)
    finally:
        done.set()
        chain.join(timeout=60)
    assert sampler.last_path == "fast"
    return max(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_default_chain_leaves_other_threads_memory_alone():
    """Heap reuse is off by default: a thread that frees 128 MiB while a chain runs gets its
    memory back to the kernel at once. With heap_reuse=True (opt-in, glibc) the same loop
    keeps it resident for as long as the chain runs, the process-wide effect it opts into."""
    # In a fresh process: what earlier tests did to this process's heap (its arenas, the
    # malloc thresholds glibc adapts as blocks come and go) must not decide the outcome.
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_rss_kept_by_other_thread, False).result(timeout=120) < (32 << 20)
        if _heap.heap_reuse_available() is None:
            assert pool.submit(_rss_kept_by_other_thread, True).result(timeout=120) > (96 << 20)
