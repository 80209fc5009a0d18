"""Samples that do not depend on the batch: ``sample(n, seed=, first_index=)`` gives sample i
the row stream i of the seed (its start draw and every step's noise), so N samples drawn in one
call equal the same N drawn in pieces, as processes of a distributed job draw them."""
import math

import pytest
import torch

from tests.sampling.test_fast_sampler import mlp_models
from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import HierarchicalVAE, small_image_ebm

pytestmark = pytest.mark.usefixtures("one_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def image_models():
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny").eval()
    return vae, small_image_ebm(in_channels=vae.data_shape[0], n_channel=8,
                                image_size=vae.data_shape[1])


def pieces(sampler, sizes, **kw):
    """The samples of consecutive index ranges of the given sizes, concatenated, with the
    next offsets the calls returned."""
    start, xs, offsets = 0, [], set()
    for size in sizes:
        result = sampler.sample(size, first_index=start, return_chain=True, **kw)
        xs.append(result.x)
        offsets.add(result.next_offset)
        start += size
    return torch.cat(xs), offsets


@pytest.mark.parametrize("cls", [LangevinSampler, FastSampler])
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_samples_do_not_depend_on_how_the_indices_are_split(cls, space):
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    sampler = cls(energy, gen, space=space, step_size=0.05, n_steps=4, data_shape=(2,),
                  output="sample")
    whole = sampler.sample(11, seed=7, offset=3, first_index=0, return_chain=True)
    split, next_offsets = pieces(sampler, [4, 1, 6], seed=7, offset=3)
    # The noise is bit-identical (tests/ops/test_row_streams.py); the networks' matrix products
    # may block a batch differently by its size, so the samples agree to rounding.
    torch.testing.assert_close(split, whole.x, rtol=1e-6, atol=1e-6)
    # Each call consumed the per-sample size D of the state once per draw: start + 4 steps.
    d = sum(math.prod(s) for s in sampler.state_shapes())
    assert next_offsets == {whole.next_offset} == {3 + 5 * d}
    # A later range is a later part of the same population: indices [5, 11) alone.
    tail = sampler.sample(6, seed=7, offset=3, first_index=5)
    torch.testing.assert_close(tail, whole.x[5:], rtol=1e-6, atol=1e-6)
    # The flat stream (no first_index) is another draw, as before.
    assert not torch.allclose(sampler.sample(11, seed=7, offset=3), whole.x)


@pytest.mark.parametrize("space", ["eps", "data"])
def test_image_chains_split_equal_the_whole_to_float_tolerance(space):
    vae, energy = image_models()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=1e-3, n_steps=3, output="mean",
              data_shape=vae.data_shape, clamp=(0.0, 1.0) if space == "data" else None)
    for cls in (LangevinSampler, FastSampler):
        sampler = cls(energy, gen, **kw)
        whole = sampler.sample(6, seed=1, first_index=10)
        start, parts = 10, []
        for size in (2, 4):
            parts.append(sampler.sample(size, seed=1, first_index=start))
            start += size
        # Convolutions may block a batch differently by its size: equal to rounding.
        torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)


def test_fast_and_eager_samplers_agree_in_row_mode():
    vae, energy = image_models()
    kw = dict(space="eps", step_size=1e-3, n_steps=3, output="mean")
    a = LangevinSampler(energy, vae, **kw).sample(5, seed=2, first_index=4, return_chain=True)
    b = FastSampler(energy, vae, **kw).sample(5, seed=2, first_index=4, return_chain=True)
    assert a.next_offset == b.next_offset
    torch.testing.assert_close(b.x, a.x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.potentials, a.potentials, rtol=1e-5, atol=1e-4)


@pytest.mark.graphs
def test_graphed_chain_body_in_row_mode_matches_the_sampler_on_cpu():
    from vaebm_fast.sampling.graphs import GraphedChain
    vae, energy = mlp_models()
    kw = dict(space="eps", step_size=0.05, n_steps=5, output="sample")
    a = LangevinSampler(energy, vae, **kw).sample(9, seed=3, offset=11, first_index=20,
                                                 return_chain=True)
    fast = FastSampler(energy, vae, **kw)
    e, g = fast.prepared_models(torch.contiguous_format)
    starts, offset = fast.initial_states(9, seed=3, offset=11, device="cpu",
                                         dtype=torch.float32, first_row=20)
    chain = GraphedChain(fast, e, g, starts, row_mode=True)
    states, x, energies, _, next_offset = chain.run(starts, seed=3, offset=offset, first_row=20)
    assert next_offset == a.next_offset
    torch.testing.assert_close(x, a.x, rtol=1e-5, atol=1e-5)
    # The device-side position holds the rows, and advanced by the per-sample size per step.
    assert chain.rng.tolist() == [3, next_offset, 20]
    with pytest.raises(ValueError, match="captured in row mode"):
        chain.run(starts, seed=3, offset=offset)
    flat = GraphedChain(fast, e, g, starts)
    with pytest.raises(ValueError, match="captured without row mode"):
        flat.run(starts, seed=3, offset=offset, first_row=0)


@pytest.mark.parametrize("bad, match", [(-1, "first_row must be an int in"),
                                        (2 ** 62, "first_row must be an int in"),
                                        (1.5, "first_row")])
def test_bad_first_index_is_a_clear_error(bad, match):
    vae, energy = mlp_models()
    sampler = LangevinSampler(energy, vae, space="eps", step_size=0.05, n_steps=1)
    with pytest.raises((ValueError, TypeError), match=match):
        sampler.sample(3, seed=0, first_index=bad)


@cuda
@pytest.mark.cuda
@pytest.mark.graphs
def test_cuda_graph_in_row_mode_matches_eager_and_split_batches():
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    kw = dict(space="eps", step_size=0.05, n_steps=6, output="sample")
    eager = LangevinSampler(energy, vae, **kw).sample(64, seed=3, first_index=0)
    fast = FastSampler(energy, vae, **kw)
    whole = fast.sample(64, seed=3, first_index=0)
    assert fast.last_path == "graph"
    torch.testing.assert_close(whole, eager, rtol=1e-4, atol=1e-4)
    halves = torch.cat([fast.sample(32, seed=3, first_index=0),
                        fast.sample(32, seed=3, first_index=32)])
    torch.testing.assert_close(halves, whole, rtol=1e-4, atol=1e-4)
