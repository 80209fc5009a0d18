"""LangevinSampler against analytic targets, its bookkeeping, and its error handling.

The Gaussian checks compare with the exact stationary law of *unadjusted* Langevin: for a
quadratic potential U(y) = 1/2 (y - mu)^T Q (y - mu) the update y <- y - (eta/2) Q (y - mu) +
sqrt(eta) xi is a linear AR(1) process whose stationary law is N(mu, S) with
S = (Q (I - eta Q / 4))^{-1}: the mean is exact and the covariance carries an O(eta) bias.
"""
import math
import warnings

import pytest
import torch
from torch import nn

from vaebm_fast.models.energy import MLPEnergy
from vaebm_fast.models.mlp_vae import MLPVAE
from vaebm_fast.models.nvae import HierarchicalVAE
from vaebm_fast.ops import philox_normal
from vaebm_fast.sampling import (ChainDivergedError, ChainResult, LangevinSampler, ReplayBuffer,
                                 ReparameterizedGenerator, frozen, reinit_probability)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Analytic models
# --------------------------------------------------------------------------------------------
class QuadraticEnergy(nn.Module):
    """E(x) = 1/2 (x - m)^T P (x - m)."""

    def __init__(self, m, P):
        super().__init__()
        self.register_buffer("m", torch.as_tensor(m, dtype=torch.float32))
        self.register_buffer("P", torch.as_tensor(P, dtype=torch.float32))

    def forward(self, x):
        d = x - self.m
        return 0.5 * ((d @ self.P) * d).sum(1)


class LinearGaussianVAE(nn.Module):
    """x = A [eps_z1; eps_z2] + b + s * eps_x, latent groups of shapes (2,) and (1,), data (2,)."""

    def __init__(self, A, b, s):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float32))
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.float32))
        self.log_s = nn.Parameter(torch.tensor(math.log(s)))
        self.latent_shapes = [(2,), (1,)]
        self.data_shape = (2,)
        self.training_flags = []  # self.training at every decode (for the eval-mode test)

    def decode_eps(self, eps_z, eps_x=None):
        self.training_flags.append(self.training)
        z = torch.cat(list(eps_z), dim=1)
        x = z @ self.A.T + self.b
        return x if eps_x is None else x + self.log_s.exp() * eps_x

    def jacobian(self, with_eps_x=True):
        A = self.A.detach().to(F64)
        if not with_eps_x:
            return A
        return torch.cat([A, self.log_s.detach().exp().to(F64) * torch.eye(2, dtype=F64)], dim=1)


M = [1.0, -2.0]
SIGMA = [[1.0, 0.6], [0.6, 0.5]]  # non-diagonal covariance; precision eigenvalues 0.71 and 10
P = torch.linalg.inv(torch.tensor(SIGMA, dtype=F64))


def linear_vae():
    return LinearGaussianVAE(A=[[1.0, 0.5, -0.4], [-0.3, 0.8, 0.6]], b=[0.5, -0.5], s=0.7)


def eps_energy():
    return QuadraticEnergy([1.0, 1.0], [[0.8, 0.3], [0.3, 0.5]])


def ula_covariance(Q, eta):
    eye = torch.eye(Q.shape[0], dtype=F64)
    return torch.linalg.inv(Q @ (eye - eta * Q / 4))


def assert_gaussian(samples, mean, cov, n_sigma=5.0):
    """Sample mean and covariance within n_sigma standard errors of (mean, cov)."""
    samples = samples.to(F64)
    n = samples.shape[0]
    var = torch.diagonal(cov)
    mean_tol = n_sigma * (var / n).sqrt()
    got_mean = samples.mean(0)
    assert ((got_mean - mean).abs() <= mean_tol).all(), (got_mean, mean, mean_tol)
    cov_tol = n_sigma * ((var[:, None] * var[None, :] + cov ** 2) / n).sqrt()
    got_cov = torch.cov(samples.T)
    assert ((got_cov - cov).abs() <= cov_tol).all(), (got_cov, cov, cov_tol)


def flat(states):
    return torch.cat([s.flatten(1) for s in states], dim=1)


# --------------------------------------------------------------------------------------------
# 1. Stationary laws on analytic targets
# --------------------------------------------------------------------------------------------
def test_data_space_gaussian_mean_and_covariance():
    eta = 0.1
    energy = QuadraticEnergy(M, P)
    sampler = LangevinSampler(energy, space="data", step_size=eta, n_steps=300, data_shape=(2,))
    x = sampler.sample(20000, seed=1)
    assert x.shape == (20000, 2) and torch.isfinite(x).all()
    S = ula_covariance(P, eta)
    assert_gaussian(x, torch.tensor(M, dtype=F64), S)
    # The ULA covariance is within ~35% of the target Sigma here (the bias is O(eta)) ...
    assert torch.allclose(torch.cov(x.T.to(F64)), torch.tensor(SIGMA, dtype=F64), rtol=0.35)
    # ... and with a 10x smaller step the chain matches Sigma itself.
    slow = LangevinSampler(energy, space="data", step_size=eta / 10, n_steps=1500,
                           data_shape=(2,))
    x_small = slow.sample(8000, seed=2)
    assert_gaussian(x_small, torch.tensor(M, dtype=F64), ula_covariance(P, eta / 10))
    got = torch.cov(x_small.T.to(F64))
    assert torch.allclose(got, torch.tensor(SIGMA, dtype=F64), atol=0.06), got


def test_eps_space_linear_gaussian_vae():
    """Target over eps = (eps_z, eps_x): precision Q = I + J^T P J, mean -Q^-1 J^T P (b - m)."""
    eta = 0.1
    vae, energy = linear_vae(), eps_energy()
    J = vae.jacobian()
    Pe, me, b = energy.P.to(F64), energy.m.to(F64), vae.b.detach().to(F64)
    Q = torch.eye(5, dtype=F64) + J.T @ Pe @ J
    mu = -torch.linalg.solve(Q, J.T @ Pe @ (b - me))
    sampler = LangevinSampler(energy, vae, space="eps", step_size=eta, n_steps=300)
    r = sampler.sample(20000, seed=3, return_chain=True)
    assert [tuple(s.shape) for s in r.states] == [(20000, 2), (20000, 1), (20000, 2)]
    assert_gaussian(flat(r.states), mu, ula_covariance(Q, eta))
    # The reported x is the decoder mean at the final eps_z (the default output="mean").
    z = torch.cat(r.states[:2], 1)
    assert torch.allclose(r.x, z @ vae.A.detach().T + vae.b.detach(), atol=1e-5)


def test_eps_space_output_sample_is_the_draw_of_h():
    vae, energy = linear_vae(), eps_energy()
    sampler = LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=5, output="sample")
    r = sampler.sample(16, seed=0, return_chain=True)
    expected = vae.decode_eps(r.states[:2], r.states[2]).detach()
    assert torch.allclose(r.x, expected, atol=1e-6)


def test_latent_space_linear_gaussian_vae():
    """eps_x dropped: precision I + A^T P A over eps_z, x = A eps_z + b."""
    eta = 0.1
    vae, energy = linear_vae(), eps_energy()
    A = vae.jacobian(with_eps_x=False)
    Pe, me, b = energy.P.to(F64), energy.m.to(F64), vae.b.detach().to(F64)
    Q = torch.eye(3, dtype=F64) + A.T @ Pe @ A
    mu = -torch.linalg.solve(Q, A.T @ Pe @ (b - me))
    sampler = LangevinSampler(energy, vae, space="latent", step_size=eta, n_steps=300)
    r = sampler.sample(20000, seed=4, return_chain=True)
    assert [tuple(s.shape) for s in r.states] == [(20000, 2), (20000, 1)]
    assert_gaussian(flat(r.states), mu, ula_covariance(Q, eta))
    # The decoded samples are Gaussian with mean A mu + b and covariance A S A^T.
    assert_gaussian(r.x, A @ mu + b, A @ ula_covariance(Q, eta) @ A.T)


# --------------------------------------------------------------------------------------------
# 2. The update the sampler applies is the gradient of the right potential
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad_clip", [None, 0.3])
def test_one_noiseless_eps_step_matches_closed_form(grad_clip):
    """eps' = eps - (eta/2) (clip(J^T grad E(x)) + eps): the prior term enters once, unclipped."""
    eta = 0.2
    vae, energy = linear_vae(), eps_energy()
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(7, *s, generator=gen) for s in [(2,), (1,), (2,)]]
    init_before = [t.clone() for t in init]
    sampler = LangevinSampler(energy, vae, space="eps", step_size=eta, n_steps=1, noise_scale=0.0,
                              grad_clip=grad_clip)
    r1 = sampler.sample(init, seed=0, return_chain=True)
    r2 = sampler.sample(init, seed=12345, return_chain=True)  # no noise: the seed is irrelevant
    for a, b in zip(r1.states, r2.states):
        assert torch.equal(a, b)

    J = vae.jacobian()
    eps = flat(init_before).to(F64)
    x = eps @ J.T + vae.b.detach().to(F64)
    grad_e = (x - energy.m.to(F64)) @ energy.P.to(F64) @ J  # J^T P (x - m), per row
    if grad_clip is not None:
        assert (grad_e.abs() > grad_clip).any()  # the clip is exercised
        grad_e = grad_e.clamp(-grad_clip, grad_clip)
    expected = eps - eta / 2 * (grad_e + eps)
    assert torch.allclose(flat(r1.states).to(F64), expected, atol=1e-5)
    # The input list is not modified in place (compared with its copy taken before sampling).
    assert all(torch.equal(t, u) for t, u in zip(init, init_before))


@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_one_noiseless_step_is_minus_half_eta_grad_U_for_a_nonlinear_model(space):
    """Against autograd of the full potential U = E(T(eps)) + 1/2 ||eps||^2 (or E(x) in data
    space), for an MLP VAE and an MLP energy."""
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2)
    energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
    eta = 0.05
    gen = torch.Generator().manual_seed(1)
    shapes = {"eps": [(2,), (2,)], "latent": [(2,)], "data": [(2,)]}[space]
    init = [torch.randn(5, *s, generator=gen) for s in shapes]

    eps = [t.clone().requires_grad_(True) for t in init]
    if space == "data":
        U = energy(eps[0])
    else:
        x = vae.decode_eps([eps[0]], eps[1] if space == "eps" else None)
        U = energy(x) + sum(0.5 * e.pow(2).sum(1) for e in eps)
    grads = torch.autograd.grad(U.sum(), eps)
    expected = [e.detach() - eta / 2 * g for e, g in zip(eps, grads)]

    sampler = LangevinSampler(energy, vae if space != "data" else None, space=space,
                              step_size=eta, n_steps=1, noise_scale=0.0)
    r = sampler.sample(init[0] if space == "data" else init, seed=0, return_chain=True)
    for got, want in zip(r.states, expected):
        assert torch.allclose(got, want, atol=1e-6)
    # U reported before the step is the potential at the start.
    assert torch.allclose(r.potentials[0], U.detach(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# 3. Reproducibility and the noise stream
# --------------------------------------------------------------------------------------------
def small_mlp_models():
    torch.manual_seed(0)
    return (MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2),
            MLPEnergy(in_dim=2, hidden=16, depth=2))


@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_same_seed_same_samples_different_seed_different(space):
    vae, energy = small_mlp_models()
    sampler = LangevinSampler(energy, vae if space != "data" else None, space=space,
                              step_size=0.05, n_steps=8, data_shape=(2,), output="mean")
    a = sampler.sample(32, seed=7)
    b = sampler.sample(32, seed=7)
    c = sampler.sample(32, seed=8)
    d = sampler.sample(32, seed=7, offset=10_000)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert not torch.allclose(a, d, atol=1e-3)


@pytest.mark.parametrize("space", ["eps", "data"])
def test_native_and_eager_backends_give_the_same_chain(native, space):
    vae, energy = small_mlp_models()
    kw = dict(space=space, step_size=0.05, n_steps=10, data_shape=(2,), grad_clip=2.0)
    gen = vae if space != "data" else None
    nat = LangevinSampler(energy, gen, backend="native", **kw).sample(64, seed=3, return_chain=True)
    eag = LangevinSampler(energy, gen, backend="eager", **kw).sample(64, seed=3, return_chain=True)
    assert nat.next_offset == eag.next_offset
    assert torch.allclose(nat.x, eag.x, atol=1e-5, rtol=1e-5)
    for a, b in zip(nat.states, eag.states):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_noise_addresses_and_next_offset():
    """With E = 0 in data space the chain is x0 + sqrt(eta) * sum of its normals, so the exact
    Philox numbers it consumed can be read off: step t uses offset + t*numel ... + numel - 1."""
    B, D, n_steps, eta = 6, 3, 4, 0.01

    def zero_energy(x):
        return (0.0 * x).sum(1)

    sampler = LangevinSampler(zero_energy, space="data", step_size=eta, n_steps=n_steps)
    x0 = torch.linspace(-1, 1, B * D).view(B, D)
    seed, offset = 99, 1_000
    r1 = sampler.sample(x0, seed=seed, offset=offset, return_chain=True)
    numel = B * D
    assert r1.next_offset == offset + n_steps * numel
    noise = philox_normal(n_steps * numel, seed=seed, offset=offset).view(n_steps, B, D)
    assert torch.allclose(r1.x, x0 + math.sqrt(eta) * noise.sum(0), atol=1e-6)

    # The next chain starts where this one stopped: fresh, non-overlapping noise.
    r2 = sampler.sample(x0, seed=seed, offset=r1.next_offset, return_chain=True)
    assert r2.next_offset == offset + 2 * n_steps * numel
    noise2 = philox_normal(n_steps * numel, seed=seed, offset=r1.next_offset).view(n_steps, B, D)
    assert torch.allclose(r2.x, x0 + math.sqrt(eta) * noise2.sum(0), atol=1e-6)
    assert not torch.allclose(r1.x, r2.x, atol=1e-3)


@pytest.mark.parametrize("space,per_chain", [("eps", 4), ("latent", 2), ("data", 2)])
def test_fresh_start_consumes_its_draws_too(space, per_chain):
    vae, energy = small_mlp_models()
    n_steps, B = 3, 5
    sampler = LangevinSampler(energy, vae if space != "data" else None, space=space,
                              step_size=0.01, n_steps=n_steps, data_shape=(2,))
    r = sampler.sample(B, seed=1, offset=17, return_chain=True)
    assert r.next_offset == 17 + (n_steps + 1) * B * per_chain
    # The start states are the first normals of the stream at (seed, offset), group by group.
    r0 = LangevinSampler(energy, vae if space != "data" else None, space=space, step_size=0.01,
                         n_steps=0, data_shape=(2,)).sample(B, seed=1, offset=17, return_chain=True)
    assert r0.next_offset == 17 + B * per_chain
    assert torch.equal(torch.cat([s.flatten() for s in r0.states]),
                       philox_normal(B * per_chain, seed=1, offset=17))


def gaussian_chain_potential_moments(m, P, eta, n_steps):
    """Exact mean and variance of U = 1/2 (x - m)^T P (x - m) after every step of an ULA chain
    in data space started at x_0 ~ N(0, I): with y = x - m the chain is y' = A y + sqrt(eta) xi,
    A = I - (eta/2) P, so y_n ~ N(mu_n, C_n) with mu_n = A^n (-m) and C_{n+1} = A C_n A^T +
    eta I; then E[U] = 1/2 (mu^T P mu + tr(P C)) and Var[U] = 1/2 tr((P C)^2) + mu^T P C P mu.
    Returns two [n_steps + 1] float64 tensors."""
    P = torch.as_tensor(P, dtype=F64)
    eye = torch.eye(P.shape[0], dtype=F64)
    A = eye - eta / 2 * P
    mu, C = -torch.as_tensor(m, dtype=F64), eye.clone()
    means, variances = [], []
    for _ in range(n_steps + 1):
        PC = P @ C
        means.append(0.5 * (mu @ P @ mu + torch.trace(PC)))
        variances.append(0.5 * torch.trace(PC @ PC) + mu @ PC @ P @ mu)
        mu, C = A @ mu, A @ C @ A.T + eta * eye
    return torch.stack(means), torch.stack(variances)


def test_chain_result_potentials_shape_and_decrease():
    # 250 steps: the slowest mode contracts by 1 - (eta/2) 0.71 per step, so the start's
    # offset from the mode (|m| = 5) shrinks by a factor ~1e-4 and the chain is stationary at
    # the end (checked below).
    eta, n_steps, B = 0.1, 250, 20000
    m = torch.tensor([4.0, -3.0])
    energy = QuadraticEnergy(m, P)
    sampler = LangevinSampler(energy, space="data", step_size=eta, n_steps=n_steps,
                              data_shape=(2,))
    r = sampler.sample(B, seed=5, return_chain=True)
    assert isinstance(r, ChainResult)
    assert r.potentials.shape == (n_steps + 1, B) and r.energies.shape == (n_steps + 1, B)
    assert torch.equal(r.potentials, r.energies)  # no prior term in data space
    mean_u = r.potentials.to(F64).mean(1)
    assert mean_u[0] > 20 * mean_u[-1]  # starts far from the mode
    assert (mean_u[1:6] < mean_u[:5]).all()  # the transient descends step by step
    # Every step's average over the B independent chains against its exact law, within 5
    # standard errors: the transient as well as the end.
    expected, variance = gaussian_chain_potential_moments(m, P, eta, n_steps)
    se = (variance / B).sqrt()
    worst = ((mean_u - expected).abs() / se).max().item()
    assert worst < 5.0, worst
    # At stationarity E[U] = 1/2 tr(P S) for the ULA covariance S (about d/2 = 1). The exact
    # law at the last step is that value (what is left of the transient is far below one
    # standard error), and the final states' average matches it within 5 standard errors.
    stationary = 0.5 * torch.trace(P @ ula_covariance(P, eta)).item()
    assert abs(expected[-1].item() - stationary) < 0.01 * se[-1].item()
    assert abs(mean_u[-1].item() - stationary) < 5 * se[-1].item()
    # The last row is U at the returned state.
    assert torch.allclose(r.potentials[-1], energy(r.x), atol=1e-5)


def test_eps_potential_adds_the_prior_term():
    vae, energy = linear_vae(), eps_energy()
    r = LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=3).sample(
        8, seed=0, return_chain=True)
    prior = 0.5 * flat(r.states).pow(2).sum(1)
    assert torch.allclose(r.potentials[-1] - r.energies[-1], prior, atol=1e-5)
    decoded = vae.decode_eps(r.states[:2], r.states[2])
    assert torch.allclose(r.energies[-1], energy(decoded).detach(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# 4. Divergence is reported, never returned
# --------------------------------------------------------------------------------------------
def test_nan_energy_raises_naming_the_step():
    """E = -2 x_0 pushes x_0 up by eta/2 * 2 = 0.1 per step (no noise); E is NaN once x_0 > 0.45,
    i.e. at the potential evaluated before step 5, for the 3 chains starting at 0 only."""

    def energy(x):
        e = -2.0 * x[:, 0]
        return torch.where(x[:, 0] > 0.45, torch.full_like(e, float("nan")), e)

    x0 = torch.zeros(5, 2)
    x0[3:, 0] = -10.0
    sampler = LangevinSampler(energy, space="data", step_size=0.1, n_steps=20, noise_scale=0.0)
    with pytest.raises(ChainDivergedError, match=r"3 of 5 chains became NaN/Inf at step 5") as e:
        sampler.sample(x0, seed=0)
    assert e.value.step == 5 and e.value.n_chains == 3
    assert isinstance(e.value, FloatingPointError)
    # A NaN that appears only after the last potential is still caught.
    late = LangevinSampler(energy, space="data", step_size=0.1, n_steps=5, noise_scale=0.0)
    with pytest.raises(ChainDivergedError, match="at step 5"):
        late.sample(x0, seed=0, return_chain=True)
    # Before the threshold the chain is fine and returns finite samples.
    ok = LangevinSampler(energy, space="data", step_size=0.1, n_steps=4, noise_scale=0.0)
    assert torch.isfinite(ok.sample(x0, seed=0)).all()


@pytest.mark.parametrize("space", ["eps", "data"])
def test_huge_step_size_raises_instead_of_returning_inf(space):
    vae = linear_vae()
    energy = QuadraticEnergy([0.0, 0.0], 1e3 * torch.eye(2))
    sampler = LangevinSampler(energy, vae if space == "eps" else None, space=space,
                              step_size=10.0, n_steps=100, data_shape=(2,))
    with pytest.raises(ChainDivergedError, match="Lower step_size"):
        sampler.sample(8, seed=0)
    # check_finite=False is the explicit opt-out: then the non-finite samples come back.
    x = sampler.sample(8, seed=0, check_finite=False)
    assert not torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------
# 5. The caller's modules are left alone; the generator's mode is honoured
# --------------------------------------------------------------------------------------------
def test_modules_untouched_during_and_after_the_chain():
    """No requires_grad toggling, no mode switching, no parameter gradient: during the chain
    the modules look exactly as the caller left them (so another thread may train them)."""
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2, learn_decoder_std=False).eval()
    inner = MLPEnergy(in_dim=2, hidden=16, depth=2)  # training mode, as while being trained
    inner.out.bias.requires_grad_(False)  # a user's own choice that must survive
    flags = [p.requires_grad for p in [*vae.parameters(), *inner.parameters()]]
    seen = []

    def energy(x):
        seen.append((vae.training, inner.training,
                     [p.requires_grad for p in [*vae.parameters(), *inner.parameters()]]))
        return inner(x)

    sampler = LangevinSampler(energy, vae, space="eps", step_size=0.01, n_steps=4)
    sampler.sample(8, seed=0)
    assert len(seen) == 5 and all(s == (False, True, flags) for s in seen)
    assert not vae.training and inner.training
    assert [p.requires_grad for p in [*vae.parameters(), *inner.parameters()]] == flags
    assert all(p.grad is None for p in [*vae.parameters(), *inner.parameters()])


def test_frozen_context_freezes_and_restores():
    """``frozen`` (not used by the samplers any more) still restores the user's flags."""
    _, energy = small_mlp_models()
    energy.out.bias.requires_grad_(False)
    flags = [p.requires_grad for p in energy.parameters()]
    with frozen(energy):
        assert not any(p.requires_grad for p in energy.parameters())
    assert [p.requires_grad for p in energy.parameters()] == flags


class BatchNormGenerator(nn.Module):
    """x = BN(W eps_z) (+ eps_x): a generator whose forward depends on its mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.latent_shapes, self.data_shape = [(2,)], (2,)

    def decode_eps(self, eps_z, eps_x=None):
        x = self.bn(self.lin(eps_z[0]))
        return x if eps_x is None else x + 0.1 * eps_x


@pytest.mark.parametrize("space", ["eps", "latent"])
def test_generator_in_training_mode_is_honoured_with_one_warning(space):
    """Decision: the chain runs the generator in the mode the caller left it in. With
    BatchNorm/Dropout in training mode that means batch statistics and running-statistics
    updates, which is rarely what is wanted, so both samplers warn once with the fix;
    FastSampler then runs the same eager chain, so the two still agree bitwise."""
    from vaebm_fast import FastSampler
    torch.manual_seed(0)
    gen, energy = BatchNormGenerator().train(), MLPEnergy(in_dim=2, hidden=8, depth=1)
    kw = dict(space=space, step_size=0.01, n_steps=3)
    eager = LangevinSampler(energy, gen, **kw)
    with pytest.warns(RuntimeWarning, match=r"generator is in training mode .*\(bn\).*call "
                                            r"generator\.eval\(\) before sampling"):
        a = eager.sample(8, seed=0)
    assert gen.training and int(gen.bn.num_batches_tracked) == 3 + 1 + (space == "eps")
    fast = FastSampler(energy, gen, **kw)
    with pytest.warns(RuntimeWarning, match="FastSampler: the generator is in training mode"):
        b = fast.sample(8, seed=0)
    assert torch.equal(a, b) and fast.last_path == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per sampler
        eager.sample(8, seed=0)
        fast.sample(8, seed=0)
        gen.eval()  # the fix: running statistics, the fast path, no warning
        fresh = FastSampler(energy, gen, **kw)
        c = fresh.sample(8, seed=0)
        assert fresh.last_path == "fast"
        assert torch.allclose(c, LangevinSampler(energy, gen, **kw).sample(8, seed=0))


def test_generator_mode_matters_only_with_mode_dependent_layers():
    """A generator without BatchNorm/Dropout runs the same in either mode: no warning."""
    vae, energy = linear_vae(), eps_energy()
    vae.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=3).sample(4, seed=0)
    assert vae.training_flags and all(vae.training_flags) and vae.training


# --------------------------------------------------------------------------------------------
# 6. Replay buffer
# --------------------------------------------------------------------------------------------
def rows(values, shape=(2,)):
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, *shape).clone()


def test_replay_buffer_fifo_and_wrap():
    buf = ReplayBuffer(5, [(2,)])
    assert len(buf) == 0
    buf.push([rows([0, 1, 2])])
    assert len(buf) == 3 and buf.head == 3
    assert torch.equal(buf.storage[0][:3, 0], torch.tensor([0.0, 1, 2]))
    buf.push([rows([3, 4, 5])])  # wraps: 5 overwrites the oldest (0)
    assert len(buf) == 5 and buf.head == 1
    assert torch.equal(buf.storage[0][:, 0], torch.tensor([5.0, 1, 2, 3, 4]))
    buf.push([rows([6, 7])])  # overwrites 1 and 2, the oldest
    assert torch.equal(buf.storage[0][:, 0], torch.tensor([5.0, 6, 7, 3, 4]))
    buf.push([rows(list(range(10, 18)))])  # more than capacity: the last 5 are kept
    assert sorted(buf.storage[0][:, 0].tolist()) == [13.0, 14, 15, 16, 17]
    assert len(buf) == 5


def test_replay_buffer_reuse_probabilities():
    buf = ReplayBuffer(8, [(2,), (3,)])
    states, n_reused, nxt = buf.initial_states(10, 1.0, seed=0, offset=5)  # empty: all fresh
    assert n_reused == 0 and nxt == 5 + 10 * 5
    buf.push([rows(list(range(8))), rows(list(range(100, 108)), (3,))])

    states, n_reused, nxt = buf.initial_states(10, 0.0, seed=0, offset=5)
    assert n_reused == 0 and nxt == 5 + 10 * 5
    assert torch.equal(states[0].flatten(), philox_normal(20, seed=0, offset=5))
    assert torch.equal(states[1].flatten(), philox_normal(30, seed=0, offset=25))

    states, n_reused, nxt = buf.initial_states(10, 1.0, seed=0, offset=5)
    assert n_reused == 10 and nxt == 5  # no fresh draws
    ids = states[0][:, 0]
    assert set(ids.tolist()) <= set(range(8))
    # Groups are gathered with the same index: row i of group 1 belongs to row i of group 0.
    assert torch.equal(states[1][:, 0], ids + 100)

    # Intermediate p: Binomial(B, p) reused rows first, then fresh ones. Over 400 batches of
    # 100 the mean count has standard error sqrt(100 p (1 - p) / 400) = 0.23 (p = 0.3): within
    # 5 of those, p = 0.28 or 0.32 already fails. The sample variance, 21 for Binomial(100, 0.3),
    # has standard error about 21 sqrt(2 / 399) = 1.5; a count that did not vary would fail.
    counts = torch.tensor([float(buf.initial_states(100, 0.3, seed=s, offset=0)[1])
                           for s in range(400)], dtype=F64)
    n, p = 100, 0.3
    assert abs(counts.mean().item() - n * p) < 5 * math.sqrt(n * p * (1 - p) / len(counts))
    assert abs(counts.var().item() - n * p * (1 - p)) < 5 * n * p * (1 - p) * math.sqrt(2 / 399)


def test_replay_buffer_state_dict_round_trip():
    buf = ReplayBuffer(6, [(2,)])
    buf.push([rows([1, 2, 3, 4])])
    buf.push([rows([5, 6, 7])])
    other = ReplayBuffer(6, [(2,)])
    other.load_state_dict(buf.state_dict())
    assert (len(other), other.head) == (len(buf), buf.head)
    assert torch.equal(other.storage[0], buf.storage[0])
    a = buf.initial_states(9, 0.6, seed=3, offset=11)
    b = other.initial_states(9, 0.6, seed=3, offset=11)
    assert a[1:] == b[1:] and torch.equal(a[0][0], b[0][0])
    with pytest.raises(ValueError, match="replay buffer mismatch"):
        ReplayBuffer(7, [(2,)]).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="capacity must be positive"):
        ReplayBuffer(0, [(2,)])


def test_reinit_probability_ramp():
    assert reinit_probability(0) == 0.0
    assert reinit_probability(2500) == pytest.approx(0.3)
    assert reinit_probability(10**6) == 0.6
    assert reinit_probability(3, max_p=0.5, anneal_steps=0) == 0.5


def test_sampler_with_replay_buffer():
    vae, energy = linear_vae(), eps_energy()
    buf = ReplayBuffer(4, [tuple(s) for s in vae.latent_shapes])  # eps_z only
    sampler = LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=2,
                              replay_buffer=buf, reuse_prob=1.0)
    r = sampler.sample(4, seed=0, return_chain=True)  # empty buffer: fresh start, then pushed
    assert len(buf) == 4
    assert torch.equal(buf.storage[0], r.states[0]) and torch.equal(buf.storage[1], r.states[1])
    # Full buffer and reuse_prob=1: every chain restarts from a stored eps_z (0 steps: unchanged).
    sampler.n_steps = 0
    r2 = sampler.sample(6, seed=1, return_chain=True)
    stored = {tuple(row.tolist()) for row in torch.cat(r.states[:2], 1)}
    assert all(tuple(row.tolist()) in stored for row in torch.cat(r2.states[:2], 1))
    assert r2.states[2].shape == (6, 2)  # eps_x is always fresh


def test_data_space_replay_fresh_chains_start_inside_the_clamp_box():
    def energy(x):
        return x.flatten(1).sum(1)

    buf = ReplayBuffer(16, [(1, 2, 2)])
    sampler = LangevinSampler(energy, space="data", step_size=1e-3, n_steps=0, clamp=(0.0, 1.0),
                              data_shape=(1, 2, 2), replay_buffer=buf, reuse_prob=0.5)
    x = sampler.sample(16, seed=0)  # empty buffer: all fresh
    assert ((x >= 0) & (x <= 1)).all()
    plain = LangevinSampler(energy, space="data", step_size=1e-3, n_steps=0, clamp=(0.0, 1.0),
                            data_shape=(1, 2, 2))
    assert torch.equal(x, plain.sample(16, seed=0))  # same start law as without a buffer
    x2 = sampler.sample(16, seed=1)  # some stored, some fresh
    assert ((x2 >= 0) & (x2 <= 1)).all()


# --------------------------------------------------------------------------------------------
# 7. Bad input gives clear errors
# --------------------------------------------------------------------------------------------
def test_generator_contract_is_the_protocol():
    """One statement of the generator contract: the sampler checks the members of
    ReparameterizedGenerator, which the package's VAEs satisfy."""
    for vae in (linear_vae(), MLPVAE(hidden=8, depth=1), HierarchicalVAE("tiny")):
        assert isinstance(vae, ReparameterizedGenerator)

    class NoDecoder(nn.Module):
        latent_shapes, data_shape = [(2,)], (2,)

    assert not isinstance(NoDecoder(), ReparameterizedGenerator)
    with pytest.raises(TypeError, match=r"\(missing: decode_eps\)"):
        LangevinSampler(eps_energy(), NoDecoder(), space="eps", step_size=0.1, n_steps=1)


def test_bad_construction_arguments():
    vae, energy = linear_vae(), eps_energy()
    with pytest.raises(ValueError, match="unknown space 'pixel'; choose one of eps, latent, data"):
        LangevinSampler(energy, vae, space="pixel", step_size=0.1, n_steps=1)
    with pytest.raises(TypeError, match="space='eps' needs a generator exposing latent_shapes"):
        LangevinSampler(energy, space="eps", step_size=0.1, n_steps=1)
    with pytest.raises(TypeError, match="missing: latent_shapes, data_shape, decode_eps"):
        LangevinSampler(energy, nn.Linear(2, 2), space="latent", step_size=0.1, n_steps=1)
    for bad in (0.0, -1e-3, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="step_size must be a positive finite number"):
            LangevinSampler(energy, space="data", step_size=bad, n_steps=1)
    with pytest.raises(ValueError, match="n_steps must be a non-negative int"):
        LangevinSampler(energy, space="data", step_size=0.1, n_steps=-1)
    for bad in ((1.0, 0.0), (0.5, 0.5), (0.0,), (0.0, 0.5, 1.0)):
        with pytest.raises(ValueError, match="clamp must be a \\(low, high\\) pair"):
            LangevinSampler(energy, space="data", step_size=0.1, n_steps=1, clamp=bad)
    with pytest.raises(ValueError, match="grad_clip must be positive"):
        LangevinSampler(energy, space="data", step_size=0.1, n_steps=1, grad_clip=0.0)
    with pytest.raises(ValueError, match="reuse_prob must be in \\[0, 1\\]"):
        LangevinSampler(energy, space="data", step_size=0.1, n_steps=1, reuse_prob=1.5)
    with pytest.raises(ValueError, match="output must be 'mean' or 'sample'"):
        LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=1, output="median")
    with pytest.raises(TypeError, match="energy must be callable"):
        LangevinSampler(3.0, space="data", step_size=0.1, n_steps=1)


def test_bad_sample_arguments():
    vae, energy = linear_vae(), eps_energy()
    eps = LangevinSampler(energy, vae, space="eps", step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match=r"initial states must have per-sample shapes "
                                         r"\[\(2,\), \(1,\), \(2,\)\]"):
        eps.sample([torch.zeros(3, 2), torch.zeros(3, 1)], seed=0)
    with pytest.raises(ValueError, match="initial states must have per-sample shapes"):
        eps.sample([torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2)], seed=0)
    with pytest.raises(ValueError, match="same number of chains"):
        eps.sample([torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(4, 2)], seed=0)
    with pytest.raises(TypeError, match="starts from a count of chains"):
        eps.sample(torch.zeros(3, 2), seed=0)
    with pytest.raises(ValueError, match="number of chains must be positive"):
        eps.sample(0, seed=0)
    for bad in (-1, 2**63, 1.5):
        with pytest.raises(ValueError, match="seed must be an int"):
            eps.sample(2, seed=bad)
    data = LangevinSampler(energy, space="data", step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="pass data_shape"):
        data.sample(4, seed=0)
    with pytest.raises(TypeError, match="x0 must be a floating tensor"):
        data.sample(torch.zeros(4, 2, dtype=torch.long), seed=0)


@pytest.mark.parametrize("bad_energy", [
    lambda x: x.sum(1, keepdim=True),   # [B, 1]
    lambda x: x.sum(),                  # scalar
    lambda x: x[:-1].sum(1),            # [B - 1]
])
def test_energy_with_wrong_output_shape(bad_energy):
    sampler = LangevinSampler(bad_energy, space="data", step_size=0.1, n_steps=2, data_shape=(2,))
    with pytest.raises(ValueError, match=r"energy must return shape \[B\] = \[4\]"):
        sampler.sample(4, seed=0)


def test_open_sided_clamp_bounds_only_that_side():
    """clamp=(None, high) caps the state from above and leaves it free below."""
    from vaebm_fast import LangevinSampler
    sampler = LangevinSampler(lambda x: (x ** 2).sum(1) * 0.0, space="data", step_size=0.5,
                              n_steps=5, clamp=(None, 0.1), data_shape=(3,))
    x = sampler.sample(500, seed=3)
    assert x.max() <= 0.1
    assert x.min() < -1.0  # N(0, 1) start plus noise, unclamped below
