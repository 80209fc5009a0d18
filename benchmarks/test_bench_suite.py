"""pytest-benchmark suite over a few quick chain cases (not collected by the default test run,
whose testpaths are tests/):

    pip install pytest-benchmark && python -m pytest benchmarks/

Each benchmark times one call of a variant (a Langevin step or a 16-step chain) at the
``--quick`` sizes of :mod:`vaebm_fast.bench.chains`; ``--benchmark-compare`` etc. work as usual.
The full report with ratios and peak memory is ``vaebm-fast bench chains``.
"""
import pytest
import torch

pytest.importorskip("pytest_benchmark")

from vaebm_fast.bench import chains  # noqa: E402
from vaebm_fast.sampling.langevin import frozen  # noqa: E402

SIZES = chains.QUICK


@pytest.fixture(scope="module")
def toy():
    return chains.toy_setup(SIZES, "cpu")


@pytest.fixture(scope="module")
def igebm():
    return chains.igebm_setup(SIZES, "cpu")


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_step_toy(benchmark, toy, backend):
    step = chains.sampler_step_fn(toy, backend)
    with frozen(toy.energy, toy.generator):
        benchmark(step)


@pytest.mark.parametrize("variant", ["official-style", "eager", "fused"])
def test_chain16_toy(benchmark, toy, variant):
    if variant == "official-style":
        benchmark(lambda: chains.official_style_chain(toy.energy, toy.generator, toy.batch,
                                                      n_steps=chains.N_STEPS, **toy.sampler))
    else:
        sampler = chains._sampler(toy, "eager" if variant == "eager" else "native",
                                  chains.N_STEPS)
        benchmark(lambda: sampler.sample(toy.batch, seed=0))


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_chain16_igebm(benchmark, igebm, backend):
    sampler = chains._sampler(igebm, backend, chains.N_STEPS, igebm.make_buffer())
    benchmark(lambda: sampler.sample(igebm.batch, seed=0))


def test_update_cifar_state(benchmark):
    shapes = [(32, 3, 32, 32)] + [(32, 20, 16, 16)] * 30
    xs = [torch.randn(s) for s in shapes]
    gs = [torch.randn(s) for s in shapes]
    from vaebm_fast.ops import langevin_step_
    benchmark(lambda: langevin_step_(xs, gs, step_size=8e-5, seed=0, offset=0,
                                     backend="native"))
