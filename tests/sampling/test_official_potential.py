"""potential="official": the official VAEBM eps-space potential, against its closed form written
out here by hand (decode, clamp, the likelihood's second decoder std, the sums) and against a
hand-rolled Langevin loop on it with the sampler's Philox noise, for LangevinSampler,
FastSampler and the CUDA-graph chain body (run eagerly on the CPU)."""
import math

import pytest
import torch
from torch import nn

from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import MLPVAE, HierarchicalVAE, small_image_ebm
from vaebm_fast.ops import philox_normal

pytestmark = pytest.mark.usefixtures("one_thread")

ETA = 1e-3


def tiny_models():
    """A tiny NVAE whose decoder puts the likelihood's clamp (log sigma_x < -2) and the
    sample's clamp (|x| > 1 in [-1, 1] scale) both in play, with random BatchNorm statistics,
    in eval mode; and a small image EBM."""
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny")
    head = vae.image_conditional[1]  # channel 0: mu_raw, channel 1: log_sigma_raw
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
        head.bias[1] = -2.2
        head.log_weight_norm += 1.5
    vae.eval()
    return vae, small_image_ebm(in_channels=1, n_channel=8)


def start_states(vae, batch=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s, generator=gen)
            for s in [*vae.latent_shapes, vae.data_shape]]


def official_potential(vae, energy, eps):
    """U_off(eps) [B] as the official code's E(x) - log p(z) - log p(x|z) less the Gaussian
    normalisers, from public decoder outputs only, and the pixel masks (clamped, log sigma below
    the likelihood's floor)."""
    eps_z, eps_x = eps[:-1], eps[-1]
    details = vae.decode_eps_details(eps_z, None)  # z, mu_x, sigma_x at these eps_z
    log_sigma_g = sum(torch.log(sigma).expand_as(z).flatten(1).sum(1)
                      for (_, sigma), z in zip(vae.prior_params(details.z), details.z))
    mu_x, sigma_x = details.x_mu, details.x_sigma
    log_sigma_x = torch.log(sigma_x - 0.01)  # the decoder's log std before exp and + 0.01
    x_pm = torch.clamp(mu_x + sigma_x * eps_x, -1.0, 1.0)
    sigma_1 = torch.exp(torch.clamp(log_sigma_x, min=-2.0)) + 0.01
    u = (x_pm - mu_x) / sigma_1
    x = x_pm / 2 + 0.5
    U = (energy(x) + sum(0.5 * e.pow(2).flatten(1).sum(1) for e in eps_z) + log_sigma_g
         + (0.5 * u * u + torch.log(sigma_1)).flatten(1).sum(1))
    clamped = (mu_x + sigma_x * eps_x).abs() > 1
    return U, clamped, log_sigma_x < -2.0


def official_grad(vae, energy, eps):
    eps = [e.detach().clone().requires_grad_(True) for e in eps]
    U, clamped, floored = official_potential(vae, energy, eps)
    return [g.detach() for g in torch.autograd.grad(U.sum(), eps)], U.detach(), clamped, floored


def reference_chain(vae, energy, eps, *, n_steps, seed, offset, noise_scale=None):
    """eps <- eps - (eta/2) grad U_off(eps) + sigma xi, xi the sampler's Philox normals: each
    step draws the next sum(numel) normals, laid over the state groups in order."""
    sigma = math.sqrt(ETA) if noise_scale is None else noise_scale
    eps = [e.clone() for e in eps]
    numel = sum(e.numel() for e in eps)
    potentials = []
    for k in range(n_steps):
        grads, U, _, _ = official_grad(vae, energy, eps)
        potentials.append(U)
        xi = philox_normal(numel, seed=seed, offset=offset + k * numel).split(
            [e.numel() for e in eps])
        eps = [e - ETA / 2 * g + sigma * n.view_as(e) for e, g, n in zip(eps, grads, xi)]
    potentials.append(official_grad(vae, energy, eps)[1])
    return eps, torch.stack(potentials)


def test_the_models_exercise_both_clamps():
    """The test models reach every branch of the official likelihood."""
    vae, energy = tiny_models()
    _, _, clamped, floored = official_grad(vae, energy, start_states(vae))
    assert 0 < clamped.float().mean() < 1 and 0 < floored.float().mean() < 1


def test_one_noiseless_step_is_minus_half_eta_grad_of_the_official_potential():
    vae, energy = tiny_models()
    eps = start_states(vae)
    grads, U, clamped, _ = official_grad(vae, energy, eps)
    sampler = LangevinSampler(energy, vae, space="eps", step_size=ETA, n_steps=1,
                              noise_scale=0.0, potential="official")
    r = sampler.sample(eps, seed=0, return_chain=True)
    for got, e, g in zip(r.states, eps, grads):
        assert torch.allclose(got, e - ETA / 2 * g, atol=1e-6)
    # Where x clamps the official gradient in eps_x is zero: no pull back to 0 either.
    assert torch.equal(grads[-1][clamped], torch.zeros_like(grads[-1][clamped]))
    assert torch.allclose(r.states[-1][clamped], eps[-1][clamped], atol=1e-7)
    # The reported potential is U_off without constants; energies are E alone.
    assert torch.allclose(r.potentials[0], U, rtol=1e-5, atol=1e-4)
    U_at, E_at, _ = sampler.potential(eps)
    assert torch.allclose(U_at, U, rtol=1e-5, atol=1e-4)
    assert torch.allclose(r.energies[0], E_at.detach(), atol=1e-5)
    # The paper's potential moves eps_x differently (the clamped pixels' prior pull, at least).
    paper = LangevinSampler(energy, vae, space="eps", step_size=ETA, n_steps=1,
                            noise_scale=0.0).sample(eps, seed=0, return_chain=True)
    assert not torch.allclose(paper.states[-1], r.states[-1], atol=1e-6)


@pytest.mark.parametrize("cls", [LangevinSampler, FastSampler])
def test_chain_matches_the_hand_rolled_official_loop(cls):
    vae, energy = tiny_models()
    eps = start_states(vae)
    want, want_u = reference_chain(vae, energy, eps, n_steps=3, seed=5, offset=40)
    sampler = cls(energy, vae, space="eps", step_size=ETA, n_steps=3, potential="official",
                  output="sample")
    r = sampler.sample(eps, seed=5, offset=40, return_chain=True)
    if cls is FastSampler:
        assert sampler.last_path == "fast"
    for got, ref in zip(r.states, want):
        assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(r.potentials, want_u, rtol=1e-4, atol=1e-3)
    assert torch.allclose(r.x, vae.decode_eps(want[:-1], want[-1]).detach(), atol=1e-5)


@pytest.mark.graphs
def test_graphed_chain_body_runs_the_official_potential_on_cpu():
    from vaebm_fast.sampling.graphs import GraphedChain
    vae, energy = tiny_models()
    eps = start_states(vae)
    want, want_u = reference_chain(vae, energy, eps, n_steps=3, seed=5, offset=40)
    fast = FastSampler(energy, vae, space="eps", step_size=ETA, n_steps=3,
                       potential="official")
    e, g = fast.prepared_models(torch.contiguous_format)
    chain = GraphedChain(fast, e, g, eps)
    states, _, energies, half_sq, _ = chain.run(eps, seed=5, offset=40)
    for got, ref in zip(states, want):
        assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(energies + half_sq, want_u, rtol=1e-4, atol=1e-3)


def test_paper_stays_the_default():
    vae, energy = tiny_models()
    eps = start_states(vae)
    kw = dict(space="eps", step_size=ETA, n_steps=2)
    default = LangevinSampler(energy, vae, **kw)
    assert default.potential_kind == "paper"
    a = default.sample(eps, seed=2, return_chain=True)
    b = LangevinSampler(energy, vae, potential="paper", **kw).sample(eps, seed=2,
                                                                     return_chain=True)
    assert all(torch.equal(s, t) for s, t in zip(a.states, b.states))
    assert torch.equal(a.potentials, b.potentials)


@pytest.mark.parametrize("cls", [LangevinSampler, FastSampler])
def test_bad_potential_arguments(cls):
    vae, energy = tiny_models()
    kw = dict(step_size=ETA, n_steps=1)
    with pytest.raises(ValueError, match="potential must be one of 'paper', 'official'"):
        cls(energy, vae, space="eps", potential="bogus", **kw)
    with pytest.raises(ValueError, match="needs space='eps'"):
        cls(energy, vae, space="latent", potential="official", **kw)
    with pytest.raises(ValueError, match="drop grad_clip"):
        cls(energy, vae, space="eps", potential="official", grad_clip=1.0, **kw)
    mlp = MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1)
    with pytest.raises(TypeError, match="MLPVAE lacks it"):
        cls(energy, mlp, space="eps", potential="official", **kw)


def test_decode_eps_log_sigmas_agrees_with_decode_eps_details():
    """The generator method the official potential reads: the same x as decode_eps, sigma_x =
    exp(x_log_sigma) + 0.01, and sum log sigma_g = -log p(z) - 1/2 ||eps_z||^2 - normalisers."""
    vae, _ = tiny_models()
    eps = start_states(vae)
    out = vae.decode_eps_log_sigmas(eps[:-1], eps[-1])
    details = vae.decode_eps_details(eps[:-1], eps[-1])
    assert torch.allclose(out.x, details.x, atol=1e-6)
    assert torch.allclose(out.x_mu, details.x_mu, atol=1e-6)
    assert torch.allclose(torch.exp(out.x_log_sigma) + 0.01, details.x_sigma, atol=1e-6)
    n_latent = sum(math.prod(s) for s in vae.latent_shapes)
    expected = (-details.log_p_z - sum(0.5 * e.pow(2).flatten(1).sum(1) for e in eps[:-1])
                - 0.5 * math.log(2 * math.pi) * n_latent)
    assert len(out.log_sigma_z) == len(vae.latent_shapes)
    assert torch.allclose(torch.stack(out.log_sigma_z).sum(0), expected, atol=1e-4)
