"""pytest-benchmark suite over a few quick chain cases (not collected by the default test run,
whose testpaths are tests/):

    pip install pytest-benchmark && python -m pytest benchmarks/

Each benchmark times one call of a variant (a Langevin step or a 16-step chain) at the
``--quick`` sizes of :mod:`vaebm_fast.bench.chains`, the plain PyTorch loop (the baseline of
``vaebm-fast bench``) among them; ``--benchmark-compare`` etc. work as usual. The full report
with ratios and peak memory is ``vaebm-fast bench chains``.

Before timing, each variant other than the eager baseline is checked once, untimed, against
the eager sampler at a fixed seed: a broken fast path fails here instead of being timed.
``backend="native"`` skips with the reason when the extension is not loaded, or fails with
``VAEBM_FAST_REQUIRE_NATIVE=1`` (as the ``native`` fixture of tests/conftest.py).
"""
import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from vaebm_fast import LangevinSampler, _native
from vaebm_fast.bench import chains
from vaebm_fast.ops import langevin_step_
from vaebm_fast.sampling import frozen

SIZES = chains.QUICK
# Native kernels against the eager reference: float32 chains agree to rounding.
TOL = dict(rtol=1e-5, atol=1e-5)


def require(backend):
    """Skip, or fail with VAEBM_FAST_REQUIRE_NATIVE=1, when ``backend`` cannot run here."""
    if backend != "native":
        return
    status = _native.status()
    if not status.loaded:
        if os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") == "1":
            pytest.fail(f"native extension required but unavailable: {status.reason}")
        pytest.skip(f"native extension unavailable: {status.reason}")


def sampler(setup, backend, n_steps, buffer=None, **overrides):
    """The benchmark's LangevinSampler for ``setup`` (a replay buffer in pixel space)."""
    kw = {**setup.sampler, **overrides}
    return LangevinSampler(setup.energy, setup.generator, n_steps=n_steps, backend=backend,
                           replay_buffer=buffer, reuse_prob=setup.reuse_prob if buffer else 0.0,
                           **kw)


def start_states(setup, seed=0):
    """Start states as the benchmark's chains draw them (Philox at (seed, 0))."""
    return sampler(setup, "eager", 0).sample(setup.batch, seed=seed, return_chain=True).states


def assert_same_states(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.fixture(scope="module")
def toy():
    return chains.toy_setup(SIZES, "cpu")


@pytest.fixture(scope="module")
def igebm():
    return chains.igebm_setup(SIZES, "cpu")


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_step_toy(benchmark, toy, backend):
    require(backend)
    if backend != "eager":  # one step from the same start: the update the timed step makes
        starts = start_states(toy)
        got = sampler(toy, backend, 1).sample(starts, seed=0, return_chain=True)
        want = sampler(toy, "eager", 1).sample(starts, seed=0, return_chain=True)
        assert_same_states(got.states, want.states)
    step = chains.sampler_step_fn(toy, backend)
    with frozen(toy.energy, toy.generator):
        benchmark(step)


@pytest.mark.parametrize("variant", ["plain PyTorch", "official-style", "eager", "fused"])
def test_chain16_toy(benchmark, toy, variant):
    n = chains.N_STEPS
    if variant == "plain PyTorch":  # the baseline: the textbook loop (its own noise)
        chain = chains.plain_chain_fn(toy, chains.plain_step(toy), n)
        assert chain().shape == sampler(toy, "eager", n).sample(toy.batch, seed=0).shape
        benchmark(chain)
        return
    if variant == "official-style":
        # Its noise comes from torch's generator, so it is compared with the noise off and the
        # same start states: then its steps must be the sampler's steps.
        torch.manual_seed(0)
        got = chains.official_style_chain(toy.energy, toy.generator, toy.batch, n_steps=n,
                                          **{**toy.sampler, "noise_scale": 0.0})
        torch.manual_seed(0)  # the loop's start draws, in its order
        starts = [torch.randn(toy.batch, *s) for s in toy.state_shapes()]
        want = sampler(toy, "eager", n, noise_scale=0.0).sample(starts, seed=0)
        torch.testing.assert_close(got, want, **TOL)
        benchmark(lambda: chains.official_style_chain(toy.energy, toy.generator, toy.batch,
                                                      n_steps=n, **toy.sampler))
        return
    backend = "eager" if variant == "eager" else "native"
    require(backend)
    timed = sampler(toy, backend, n)
    if backend != "eager":
        torch.testing.assert_close(timed.sample(toy.batch, seed=0),
                                   sampler(toy, "eager", n).sample(toy.batch, seed=0), **TOL)
    benchmark(lambda: timed.sample(toy.batch, seed=0))


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_chain16_igebm(benchmark, igebm, backend):
    require(backend)
    n = chains.N_STEPS
    if backend != "eager":  # each side with its own buffer of the same stored chains
        got = sampler(igebm, backend, n, igebm.make_buffer()).sample(igebm.batch, seed=0)
        want = sampler(igebm, "eager", n, igebm.make_buffer()).sample(igebm.batch, seed=0)
        torch.testing.assert_close(got, want, **TOL)
    timed = sampler(igebm, backend, n, igebm.make_buffer())
    benchmark(lambda: timed.sample(igebm.batch, seed=0))


def test_update_cifar_state(benchmark):
    require("native")
    shapes = [(32, 3, 32, 32)] + [(32, 20, 16, 16)] * 30
    xs = [torch.randn(s) for s in shapes]
    gs = [torch.randn(s) for s in shapes]
    kw = dict(step_size=8e-5, seed=0, offset=0)
    got, want = [x.clone() for x in xs], [x.clone() for x in xs]
    assert langevin_step_(got, gs, backend="native", **kw) == langevin_step_(want, gs,
                                                                             backend="eager", **kw)
    assert_same_states(got, want)
    benchmark(lambda: langevin_step_(xs, gs, backend="native", **kw))


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("key", ["train_toy", "sample_toy"])
def test_scaling_round(benchmark, key, processes):
    """One round of the scaling suite's quick toy workloads on a group of ``processes``
    (gloo), after the group's check against one process (samples bitwise, weights to
    tolerance). ``vaebm-fast bench scaling`` reports the ratios."""
    from vaebm_fast.bench import scaling
    workload = scaling.QUICK[key]
    with scaling.ProcessGroupPool(processes, workload) as pool:
        result = pool.check()
        if processes > 1:
            with scaling.ProcessGroupPool(1, workload) as single:
                assert scaling.disagreement(single.check(), result, workload.task) is None
        benchmark(pool.round)
