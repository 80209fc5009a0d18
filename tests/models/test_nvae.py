"""Tests of the NVAE-style HierarchicalVAE (vaebm_fast.models.nvae)."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vaebm_fast.models.nvae import HierarchicalVAE, HierarchicalVAEConfig
from vaebm_fast.nn import WNConv2d


# Tiny models are hundreds of small ops: one intra-op thread is faster on 2 shared cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE(HierarchicalVAEConfig.preset("tiny", **overrides))


def random_eps(model, batch, generator=None):
    eps_z = [torch.randn(batch, *s, generator=generator) for s in model.latent_shapes]
    eps_x = torch.randn(batch, *model.data_shape, generator=generator)
    return eps_z, eps_x


def warm_up_bn(model, batches=3):
    """A few training-mode ELBO passes so BN running statistics are not the init values."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model.elbo_terms(torch.rand(8, *model.data_shape))
    model.eval()


# -- configuration and shapes -------------------------------------------------------------
def test_tiny_and_digits_latent_groups():
    model = tiny()
    assert model.data_shape == (1, 8, 8)
    assert model.latent_shapes == [(2, 2, 2)] * 2 + [(2, 4, 4)] * 2
    digits = HierarchicalVAEConfig.preset("digits")
    assert digits.groups_per_scale == (4, 2)  # NVAE's adaptive groups: halved at the coarser
    assert digits.latent_shapes == [(4, 2, 2)] * 2 + [(4, 4, 4)] * 4
    assert len(HierarchicalVAE(digits).enc_sampler) == 6


def test_cifar10_preset_shapes_and_batch_one_forward():
    config = HierarchicalVAEConfig.preset("cifar10")
    assert config.latent_shapes == [(20, 16, 16)] * 30
    assert config.data_shape == (3, 32, 32)
    torch.manual_seed(0)
    model = HierarchicalVAE(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"cifar10 preset: {n_params:,} parameters, {len(model.latent_shapes)} groups of "
          f"{list(model.latent_shapes[0])}")
    assert len(model.enc_sampler) == 30 and len(model.dec_sampler) == 29
    assert tuple(model.prior_ftr0.shape) == (256, 16, 16)
    model.eval()
    with torch.no_grad():
        x = model.sample(1)
    assert x.shape == (1, 3, 32, 32)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_from_nvae_args_matches_vaebm_cifar10_backbone():
    args = SimpleNamespace(  # official VAEBM's CIFAR-10 NVAE command line
        dataset="cifar10", num_channels_enc=128, num_channels_dec=128, num_preprocess_blocks=1,
        num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=1, num_groups_per_scale=30, num_latent_per_group=20,
        num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, use_se=True, res_dist=True,
        ada_groups=False, min_groups_per_scale=1, num_nf=1, num_mixture_dec=1,
        arch_instance="res_mbconv")
    assert HierarchicalVAEConfig.from_nvae_args(args) == HierarchicalVAEConfig.preset(
        "cifar10", top_prior_std=1.01, num_nf=1)
    config = HierarchicalVAEConfig.from_nvae_args(args, drop_flows=True)
    assert config == HierarchicalVAEConfig.preset("cifar10", top_prior_std=1.01)
    with pytest.raises(ValueError, match="num_mixture_dec"):
        HierarchicalVAEConfig.from_nvae_args(
            SimpleNamespace(**{**vars(args), "num_mixture_dec": 10}))
    with pytest.raises(ValueError, match="res_mbconv"):
        HierarchicalVAEConfig.from_nvae_args(
            SimpleNamespace(**{**vars(args), "arch_instance": "res_elu"}))
    celeba = HierarchicalVAEConfig.from_nvae_args(
        SimpleNamespace(**{**vars(args), "dataset": "celeba_64", "num_latent_scales": 3,
                           "num_groups_per_scale": 5, "num_channels_enc": 48,
                           "num_channels_dec": 48}), drop_flows=True)
    assert celeba.latent_shapes == [(20, 8, 8)] * 5 + [(20, 16, 16)] * 5 + [(20, 32, 32)] * 5


def test_other_layouts_build_and_run():
    # Three channels, two pre/post blocks, three scales, no SE, a plain (non-residual)
    # posterior, no encoder cells between combiners.
    config = HierarchicalVAEConfig.preset(
        "tiny", image_channels=3, image_size=16, num_preprocess_blocks=2,
        num_postprocess_blocks=2, num_postprocess_cells=2, num_latent_scales=2,
        num_groups_per_scale=3, ada_groups=True, use_se=False, res_dist=False,
        num_cell_per_cond_enc=0, num_cell_per_cond_dec=2)
    assert config.latent_shapes == [(2, 2, 2)] + [(2, 4, 4)] * 3
    torch.manual_seed(0)
    model = HierarchicalVAE(config)
    warm_up_bn(model)  # leaves it in eval mode
    x = torch.rand(2, 3, 16, 16)
    recon, kl = model.elbo_terms(x)
    assert recon.shape == (2,) and len(kl) == 4
    check_elbo_terms_against_components(model, x)
    with torch.no_grad():
        assert model.sample(2).shape == (2, 3, 16, 16)


def check_elbo_terms_against_components(model, x, seed=1):
    """The ELBO terms of one (eval-mode) pass recomputed from its parts: record the posterior
    latents z and each group's posterior Normal (mu_q, sigma_q) as the pass uses them, then
    - recon_nll = -log N(2x - 1; mu_x, sigma_x) summed, with the decoder Normal of
      decode_eps_details at the eps that reproduce z under the conditional priors;
    - kl[g] = KL(N(mu_q, sigma_q) || p(z_g | z_<g)) summed over the group (torch.distributions),
      with the prior teacher-forced at the same z by prior_params.
    """
    import vaebm_fast.models.nvae as nvae

    z, posteriors = [], []
    original_tower, original_kl = model._decode_tower, nvae._normal_kl

    def recording_tower(batch, choose_latent):
        def record(g, s, prior_raw):
            z.append(choose_latent(g, s, prior_raw).detach())
            return z[-1]
        return original_tower(batch, record)

    def recording_kl(mu_q, sigma_q, mu_p, sigma_p):
        posteriors.append((mu_q.detach(), sigma_q.detach()))
        return original_kl(mu_q, sigma_q, mu_p, sigma_p)

    model._decode_tower, nvae._normal_kl = recording_tower, recording_kl
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            recon, kl = model.elbo_terms(x)
    finally:
        del model._decode_tower
        nvae._normal_kl = original_kl
    assert len(z) == len(posteriors) == len(kl) == len(model.latent_shapes)

    normal, kl_divergence = torch.distributions.Normal, torch.distributions.kl_divergence
    with torch.no_grad():
        priors = model.prior_params(z)
        for g, ((mu_q, sigma_q), (mu_p, sigma_p)) in enumerate(zip(posteriors, priors)):
            expected = kl_divergence(normal(mu_q, sigma_q), normal(mu_p, sigma_p))
            torch.testing.assert_close(kl[g], expected.flatten(1).sum(1), rtol=1e-4, atol=1e-4,
                                       msg=f"KL of group {g}")
            assert (kl[g] > 0).all()  # an untrained encoder's posterior is not the prior
        eps = [(zg - mu) / sigma for zg, (mu, sigma) in zip(z, priors)]
        out = model.decode_eps_details(eps)
    for zg, got in zip(z, out.z):
        torch.testing.assert_close(got, zg, rtol=1e-4, atol=1e-5)
    expected = -normal(out.x_mu, out.x_sigma).log_prob(2 * x - 1).flatten(1).sum(1)
    torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-3)


# -- the generator contract ---------------------------------------------------------------
def test_decode_eps_is_deterministic_and_none_gives_the_clamped_mean():
    model = tiny()
    warm_up_bn(model)
    eps_z, eps_x = random_eps(model, 5)
    with torch.no_grad():
        x1 = model.decode_eps(eps_z, eps_x)
        x2 = model.decode_eps(eps_z, eps_x)
        mean = model.decode_eps(eps_z)
        details = model.decode_eps_details(eps_z)
        zero_noise = model.decode_eps(eps_z, torch.zeros_like(eps_x))
    assert x1.shape == (5, *model.data_shape)
    assert torch.equal(x1, x2)
    assert torch.allclose(mean, details.x_mu.clamp(-1, 1) / 2 + 0.5)
    assert torch.allclose(mean, zero_noise)
    expected = (details.x_mu + details.x_sigma * eps_x).clamp(-1, 1) / 2 + 0.5
    assert torch.allclose(x1, expected, atol=1e-6)
    assert not torch.allclose(x1, mean)
    assert x1.min() >= 0 and x1.max() <= 1


def test_eval_mode_decoding_is_per_sample():
    # Eval-mode BN uses running statistics, so a sample does not depend on its batch.
    model = tiny()
    warm_up_bn(model)
    eps_z, eps_x = random_eps(model, 4)
    with torch.no_grad():
        batch = model.decode_eps(eps_z, eps_x)
        single = model.decode_eps([e[2:3] for e in eps_z], eps_x[2:3])
    assert torch.allclose(batch[2:3], single, atol=1e-5)


def test_reparameterisation_matches_the_conditional_priors():
    # z_g = mu_g(z_<g) + sigma_g(z_<g) * eps_g, with the priors evaluated teacher-forced.
    model = tiny(top_prior_std=1.01)
    warm_up_bn(model)
    eps_z, _ = random_eps(model, 3)
    with torch.no_grad():
        out = model.decode_eps_details(eps_z)
        priors = model.prior_params(out.z)
    assert len(priors) == len(eps_z)
    log_p = torch.zeros(3)
    for g, ((mu, sigma), z, eps) in enumerate(zip(priors, out.z, eps_z)):
        assert torch.allclose((z - mu) / sigma, eps, atol=1e-4), f"group {g}"
        log_p += torch.distributions.Normal(mu, sigma).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(priors[0][1], torch.full_like(eps_z[0], 1.01))
    assert torch.allclose(out.log_p_z, log_p, atol=1e-3)


def test_sample_is_decode_eps_of_the_generators_noise():
    model = tiny()
    warm_up_bn(model)
    model.train()  # sample() must switch BN to eval itself, and restore the mode
    running_mean = model.dec_tower[1]._ops[0].conv[0].bn.running_mean.clone()
    x = model.sample(6, generator=torch.Generator().manual_seed(7))
    noisy = model.sample(6, generator=torch.Generator().manual_seed(7), mean=False)
    assert model.training
    assert torch.equal(model.dec_tower[1]._ops[0].conv[0].bn.running_mean, running_mean)
    model.eval()
    gen = torch.Generator().manual_seed(7)
    eps_z = [torch.randn(6, *s, generator=gen) for s in model.latent_shapes]
    eps_x = torch.randn(6, *model.data_shape, generator=gen)
    with torch.no_grad():
        assert torch.allclose(x, model.decode_eps(eps_z))
        assert torch.allclose(noisy, model.decode_eps(eps_z, eps_x))


def test_sample_temperature_scales_each_groups_prior_std():
    model = tiny()
    warm_up_bn(model)
    model.eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(3), temperature=0.7)
    gen = torch.Generator().manual_seed(3)
    eps_z = [torch.randn(5, *s, generator=gen) for s in model.latent_shapes]
    with torch.no_grad():
        out = model.decode_eps_details([0.7 * e for e in eps_z])
        priors = model.prior_params(out.z)
    assert torch.allclose(x, out.x)
    # z_g = mu_g + t * sigma_g * eps_g under each group's conditional prior (top: 1.01 t eps).
    for g, ((mu, sigma), z, eps) in enumerate(zip(priors, out.z, eps_z)):
        assert torch.allclose(z, mu + 0.7 * sigma * eps, atol=1e-4), f"group {g}"
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            model.sample(2, temperature=bad)


def test_decode_eps_gradients_reach_every_group():
    model = tiny()
    warm_up_bn(model)
    for p in model.parameters():
        p.requires_grad_(False)
    eps_z, eps_x = random_eps(model, 2)
    eps_z = [e.requires_grad_() for e in eps_z]
    eps_x.requires_grad_()
    # A smooth function of x (sum of x would have zero gradient where the clamp saturates).
    x = model.decode_eps(eps_z, eps_x)
    (x * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
    for g, e in enumerate(eps_z + [eps_x]):
        assert e.grad is not None, f"group {g}"
        assert torch.isfinite(e.grad).all(), f"group {g}"
        assert e.grad.abs().sum() > 0, f"group {g}"


# -- training terms -----------------------------------------------------------------------
def test_kl_is_zero_when_posterior_equals_prior():
    # Residual Normal: zero encoder deltas give q_g = p_g for g >= 1; the top posterior is then
    # N(0, 1.01^2) (NVAE's soft clamp of log sigma = 0), equal to the prior at top_prior_std=1.01.
    model = tiny(top_prior_std=1.01)
    x = torch.rand(4, *model.data_shape)
    _, kl = model.elbo_terms(x)
    assert all((k > 0).all() for k in kl)
    with torch.no_grad():
        for head in model.enc_sampler:
            head.weight.zero_()
            head.bias.zero_()
    _, kl = model.elbo_terms(x)
    assert len(kl) == len(model.latent_shapes)
    for k in kl:
        assert k.shape == (4,) and k.abs().max() < 1e-4
    # With the stated N(0, 1) top prior the top group keeps KL(N(0, 1.01^2) || N(0, 1)).
    model_n01 = tiny(top_prior_std=1.0)
    model_n01.load_state_dict(model.state_dict())
    _, kl = model_n01.elbo_terms(x)
    per_dim = 0.5 * 1.01 ** 2 - 0.5 - math.log(1.01)
    dims = math.prod(model.latent_shapes[0])
    assert torch.allclose(kl[0], torch.full((4,), per_dim * dims), rtol=1e-4)
    assert all(k.abs().max() < 1e-4 for k in kl[1:])


def test_recon_nll_is_the_normal_decoder_density_on_the_pm1_scale():
    model = tiny()
    model.eval()
    x = torch.rand(3, *model.data_shape)
    torch.manual_seed(1)
    recon, _ = model.elbo_terms(x)
    # Same posterior noise, replayed: the latents of the ELBO pass, then the decoder by hand.
    torch.manual_seed(1)
    z = []
    original = model._decode_tower

    def recording(batch, choose_latent):
        def record(g, s, prior_raw):
            z.append(choose_latent(g, s, prior_raw))
            return z[-1]
        return original(batch, record)

    model._decode_tower = recording
    model.elbo_terms(x)
    del model._decode_tower
    with torch.no_grad():
        eps = [(zg - mu) / sigma for zg, (mu, sigma) in zip(z, model.prior_params(z))]
        out = model.decode_eps_details(eps)
    normal = torch.distributions.Normal(out.x_mu, out.x_sigma)
    expected = -normal.log_prob(2 * x - 1).flatten(1).sum(1)
    assert torch.allclose(recon, expected, rtol=1e-4, atol=1e-3)


def test_elbo_terms_equal_their_components():
    # The residual-Normal posterior of the tiny preset (the other layout above has a plain one).
    model = tiny()
    warm_up_bn(model)
    check_elbo_terms_against_components(model, torch.rand(3, *model.data_shape))


def test_a_few_elbo_steps_decrease_the_loss():
    model = tiny()
    torch.manual_seed(0)
    data = (torch.rand(16, *model.data_shape) > 0.5).float() * 0.8 + 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        recon, kl = model.elbo_terms(data)
        loss = (recon + torch.stack(kl).sum(0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses


def test_regularization_terms_are_nvaes():
    model = tiny()
    terms = model.regularization_terms()
    assert set(terms) == {"spectral", "batchnorm"}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # BN weights start at 1, so sum_layers max|gamma| = number of BN layers.
    assert terms["batchnorm"].item() == pytest.approx(len(bns))
    convs = [m for m in model.modules() if isinstance(m, WNConv2d)]
    exact = sum(torch.linalg.matrix_norm(c.normalized_weight().flatten(1), ord=2).item()
                for c in convs)
    sigma = model.regularization_terms()["spectral"]  # power iteration: a lower bound
    assert 0.95 * exact <= sigma.item() <= exact * (1 + 1e-4)
    (sigma + terms["batchnorm"]).backward()
    assert model.stem.log_weight_norm.grad is not None
    assert torch.isfinite(model.stem.log_weight_norm.grad).all()


def test_official_style_state_dict_loads_strictly():
    """An NVAE-named state dict (flat BN-Swish keys, `weight_normalized` aliases, no
    spectral-regulariser vectors) loads into a fresh model with strict=True."""
    source = tiny()
    warm_up_bn(source)
    official = {}
    for key, value in source.state_dict().items():
        if key.startswith("spectral_regularizer."):
            continue
        key = re.sub(r"\.bn_act\.bn\.", ".bn_act.", key)            # SyncBatchNormSwish
        key = re.sub(r"(\.conv\.\d+\.conv\.1)\.bn\.", r"\1.", key)  # ConvBNSwish's BN-Swish
        official[key] = value
    for name, module in source.named_modules():
        if isinstance(module, WNConv2d) and not module.weight_norm:
            official[name + ".weight_normalized"] = module.weight.detach()
    target = tiny()
    target.load_state_dict(official, strict=True)
    target.eval()
    eps_z, eps_x = random_eps(source, 2)
    with torch.no_grad():
        assert torch.equal(source.decode_eps(eps_z, eps_x), target.decode_eps(eps_z, eps_x))


# -- bad inputs ---------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors():
    model = tiny()
    model.eval()
    eps_z, eps_x = random_eps(model, 2)
    with pytest.raises(ValueError, match="4 tensors, one per latent group"):
        model.decode_eps(eps_z[:3])
    with pytest.raises(TypeError, match="list of tensors"):
        model.decode_eps(eps_z[0])
    with pytest.raises(ValueError, match=r"eps_z\[2\] must have shape \[2, 2, 4, 4\]"):
        model.decode_eps(eps_z[:2] + [eps_z[2][:, :, :2, :2]] + eps_z[3:])
    with pytest.raises(ValueError, match=r"eps_z\[1\] must have shape \[2, "):
        model.decode_eps([eps_z[0], eps_z[1][:1]] + eps_z[2:])
    with pytest.raises(ValueError, match="eps_x must have shape"):
        model.decode_eps(eps_z, eps_x[:, :, :4])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\]"):
        model.elbo_terms(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model.elbo_terms(torch.rand(2, 1, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="floating-point"):
        model.elbo_terms(torch.ones(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0)


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=10), "divisible by"),
    (dict(num_latent_scales=1, num_groups_per_scale=1), "vanilla VAE"),
    (dict(num_postprocess_blocks=2), "must equal num_preprocess_blocks"),
    (dict(num_channels_enc=0), "num_channels_enc must be >= 1"),
    (dict(num_latent_per_group=2.5), "must be an int"),
    (dict(top_prior_std=0.0), "top_prior_std must be > 0"),
])
def test_bad_configs_give_clear_errors(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        HierarchicalVAEConfig.preset("tiny", **overrides)


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        HierarchicalVAEConfig.preset("cifar")
    with pytest.raises(TypeError, match="HierarchicalVAEConfig or a preset name"):
        HierarchicalVAE(3)
