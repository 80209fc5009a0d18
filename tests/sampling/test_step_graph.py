"""GraphedChain's step mode (one Langevin step's graph replayed K times between a prologue and
an epilogue, its step index and noise offset advanced on the device) against the unrolled
K-step body: run eagerly on the CPU, the same code is bitwise the same chain, in flat and row
mode, with and without the prior term, with potential="official". On CUDA (skipped without a
GPU) the captured step graph against the captured unrolled graph; FastSampler's graph_mode."""
import warnings

import pytest
import torch

from tests.sampling.test_fast_sampler import assert_same_chain, mlp_models
from tests.sampling.test_official_potential import ETA, start_states, tiny_models
from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.sampling.graphs import GRAPH_MODES, GraphedChain

pytestmark = pytest.mark.usefixtures("one_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_chain(fast, starts, *, graph_mode, seed, offset, first_row=None, update_backend=None):
    """(run's outputs, the samples of a second chain from the device-side position the first
    one left, the device-side position after both) of one GraphedChain, run eagerly."""
    energy, generator = fast.prepared_models(torch.contiguous_format)
    chain = GraphedChain(fast, energy, generator, starts, row_mode=first_row is not None,
                         graph_mode=graph_mode)
    if update_backend is not None:
        chain.update_backend = update_backend
    out = chain.run(starts, seed=seed, offset=offset, first_row=first_row)
    again = chain.replay().clone()
    return out, again, chain.rng.tolist()


def assert_bitwise_same(a, b):
    (states_a, x_a, energies_a, half_sq_a, next_a), again_a, rng_a = a
    (states_b, x_b, energies_b, half_sq_b, next_b), again_b, rng_b = b
    assert next_a == next_b and rng_a == rng_b
    assert all(torch.equal(s, t) for s, t in zip(states_a, states_b))
    assert torch.equal(x_a, x_b) and torch.equal(energies_a, energies_b)
    assert (half_sq_a is None) == (half_sq_b is None)
    if half_sq_a is not None:
        assert torch.equal(half_sq_a, half_sq_b)
    assert torch.equal(again_a, again_b)


@pytest.mark.graphs
@pytest.mark.parametrize("row_mode", [False, True], ids=["flat", "rows"])
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_step_mode_is_the_unrolled_chain_bitwise_on_cpu(space, row_mode):
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=5, data_shape=(2,), output="sample",
              grad_clip=2.0)
    fast = FastSampler(energy, gen, **kw)
    first_row = 20 if row_mode else None
    starts, offset = fast.initial_states(9, seed=3, offset=11, device="cpu",
                                         dtype=torch.float32, first_row=first_row)
    unrolled, step = (run_chain(fast, starts, graph_mode=mode, seed=3, offset=offset,
                                first_row=first_row) for mode in GRAPH_MODES)
    assert_bitwise_same(step, unrolled)
    # Not equal no-ops: each step wrote its own energy row and drew fresh noise, and the
    # prior term (eps, latent) has a row per step too.
    (states, _, energies, half_sq, next_offset), _, rng = step
    assert len(set(energies[:, 0].tolist())) == kw["n_steps"] + 1
    assert (half_sq is None) == (space == "data")
    if half_sq is not None:
        assert len(set(half_sq[:, 0].tolist())) == kw["n_steps"] + 1
    # ... and it is the sampler's chain, whose next offset the device-side position reached
    # twice (two chains).
    ref = LangevinSampler(energy, gen, **kw).sample(starts, seed=3, offset=offset,
                                                   first_index=first_row, return_chain=True)
    assert next_offset == ref.next_offset
    assert rng[1] == offset + 2 * (ref.next_offset - offset)
    for s, t in zip(states, ref.states):
        torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)


@pytest.mark.graphs
@pytest.mark.parametrize("row_mode", [False, True], ids=["flat", "rows"])
def test_step_mode_runs_the_official_potential_as_the_unrolled_chain_on_cpu(row_mode):
    """potential="official" adds its correction to the half-norm row of the step's own index."""
    vae, energy = tiny_models()
    eps = start_states(vae)
    fast = FastSampler(energy, vae, space="eps", step_size=ETA, n_steps=3,
                       potential="official", output="sample")
    first_row = 7 if row_mode else None
    unrolled, step = (run_chain(fast, eps, graph_mode=mode, seed=5, offset=40,
                                first_row=first_row) for mode in GRAPH_MODES)
    assert_bitwise_same(step, unrolled)
    ref = LangevinSampler(energy, vae, space="eps", step_size=ETA, n_steps=3,
                          potential="official", output="sample").sample(
        eps, seed=5, offset=40, first_index=first_row, return_chain=True)
    _, _, energies, half_sq, _ = step[0]
    torch.testing.assert_close(energies + half_sq, ref.potentials, rtol=1e-4, atol=1e-3)


@pytest.mark.graphs
@pytest.mark.parametrize("n_steps", [0, 1])
def test_step_mode_with_no_step_or_one(n_steps):
    vae, energy = mlp_models()
    fast = FastSampler(energy, vae, space="eps", step_size=0.05, n_steps=n_steps,
                       output="mean")
    starts, offset = fast.initial_states(4, seed=1, offset=0, device="cpu", dtype=torch.float32)
    unrolled, step = (run_chain(fast, starts, graph_mode=mode, seed=1, offset=offset)
                      for mode in GRAPH_MODES)
    assert_bitwise_same(step, unrolled)
    assert step[0][2].shape == (n_steps + 1, 4)


@pytest.mark.graphs
@pytest.mark.parametrize("row_mode", [False, True], ids=["flat", "rows"])
def test_step_mode_with_the_triton_update_reading_the_device_position(triton_device, row_mode):
    """The update the step graph captures on CUDA (Triton's graphed kernel, in Triton's CPU
    interpreter without a GPU): offset_add 0, the noise at whatever rng[1] the previous step
    left, the prior term into the scratch row, copied to row step_index + 1."""
    vae, energy = mlp_models()
    vae, energy = vae.to(triton_device), energy.to(triton_device)
    fast = FastSampler(energy, vae, space="eps", step_size=0.05, n_steps=4, output="sample",
                       graphs=False)
    first_row = 3 if row_mode else None
    starts, offset = fast.initial_states(6, seed=2, offset=5, device=triton_device,
                                         dtype=torch.float32, first_row=first_row)
    (a, again_a, rng_a), (b, again_b, rng_b) = (
        run_chain(fast, starts, graph_mode=mode, seed=2, offset=offset, first_row=first_row,
                  update_backend=backend)
        for mode, backend in (("unrolled", "eager"), ("step", "triton")))
    assert rng_a == rng_b and a[4] == b[4]
    for s, t in zip(a[0], b[0]):
        torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[2], a[2], rtol=1e-5, atol=1e-5)  # energies [K + 1, B]
    torch.testing.assert_close(b[3], a[3], rtol=1e-5, atol=1e-5)  # half_sq [K + 1, B]
    torch.testing.assert_close(again_b, again_a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["steps", "Unrolled", None, 1])
def test_bad_graph_mode_is_a_clear_error(bad):
    vae, energy = mlp_models()
    with pytest.raises(ValueError, match=r"graph_mode must be one of 'unrolled', 'step' \(got"):
        FastSampler(energy, vae, space="eps", step_size=0.05, n_steps=1, graph_mode=bad)


def test_graph_mode_defaults_to_unrolled_and_step_mode_samples_the_same_on_cpu():
    vae, energy = mlp_models()
    kw = dict(space="eps", step_size=0.05, n_steps=3, output="sample")
    default = FastSampler(energy, vae, **kw)
    assert default.graph_mode == "unrolled"
    step = FastSampler(energy, vae, graph_mode="step", **kw)
    # No graph on the CPU: the mode is kept for CUDA chains and changes nothing here.
    assert torch.equal(step.sample(8, seed=4), default.sample(8, seed=4))
    assert step.last_path == "fast"


# --------------------------------------------------------------------------------------------
# CUDA: the captured step graph against the captured unrolled graph
# --------------------------------------------------------------------------------------------
@pytest.mark.graphs
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("space, first_index", [("eps", None), ("eps", 0), ("latent", None),
                                                ("data", None), ("data", 0)])
def test_cuda_step_graph_matches_the_unrolled_graph(space, first_index):
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=6, data_shape=(2,), output="sample")
    eager = LangevinSampler(energy, gen, **kw).sample(64, seed=3, first_index=first_index,
                                                      return_chain=True)
    samplers = {mode: FastSampler(energy, gen, graph_mode=mode, **kw) for mode in GRAPH_MODES}
    chains = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both captures must succeed here
        for mode, fast in samplers.items():
            chains[mode] = fast.sample(64, seed=3, first_index=first_index, return_chain=True)
            assert fast.last_path == "graph"
    captured = samplers["step"]._last_chain
    assert captured.graph_mode == "step" and captured.graph is None
    assert len(captured.step_graphs) == 3  # prologue, one step, epilogue
    # The same kernels on the same buffers: equal up to the half-norm rows' atomics.
    assert_same_chain(chains["step"], chains["unrolled"], rtol=1e-6, atol=1e-6)
    assert_same_chain(chains["step"], eager, rtol=1e-4, atol=1e-4)
    # A second chain without new host input continues from the device-side position both
    # modes advanced by the noise they drew.
    x0 = [s.clone() for s in chains["step"].states]
    again = {mode: fast.replay(x0).clone() for mode, fast in samplers.items()}
    torch.testing.assert_close(again["step"], again["unrolled"], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(again["step"], chains["step"].x, atol=1e-3)


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
def test_cuda_step_graph_runs_the_official_potential(no_tf32):
    vae, energy = tiny_models()
    vae, energy = vae.cuda(), energy.cuda()
    eps = [e.cuda() for e in start_states(vae)]
    kw = dict(space="eps", step_size=ETA, n_steps=3, potential="official", output="sample")
    eager = LangevinSampler(energy, vae, **kw).sample(eps, seed=5, offset=40,
                                                      return_chain=True)
    fast = FastSampler(energy, vae, graph_mode="step", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fast.sample(eps, seed=5, offset=40, return_chain=True)
    assert fast.last_path == "graph"
    assert_same_chain(got, eager, rtol=1e-4, atol=1e-3)
