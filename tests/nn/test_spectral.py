"""Batched power iteration and the spectral regulariser."""
import pytest
import torch
import torch.nn.functional as F

import vaebm_fast.nn.spectral as spectral_mod
from vaebm_fast.models.energy import official_ebm, small_image_ebm
from vaebm_fast.nn import SpectralRegularizer, WNConv2d
from vaebm_fast.ops.power_iteration import power_iteration_, spectral_norms


def _matrices_with_gap(G, R, C, seed=0):
    """[G, R, C] float64 matrices whose top singular value is well separated."""
    g = torch.Generator().manual_seed(seed)
    k = min(R, C)
    U = torch.linalg.qr(torch.randn(G, R, k, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(G, C, k, generator=g, dtype=torch.float64))[0]
    s = torch.linspace(1.0, 0.1, k, dtype=torch.float64) * torch.rand(G, 1, generator=g,
                                                                     dtype=torch.float64).add(1)
    return U @ torch.diag_embed(s) @ V.transpose(1, 2)


def _unit(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def test_sigma_converges_to_matrix_2_norm():
    torch.manual_seed(0)
    W = _matrices_with_gap(3, 7, 12)
    u, v = _unit(3, 7), _unit(3, 12)
    sigma = power_iteration_(W, u, v, n_iter=100)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(W, ord=2), rtol=1e-8, atol=0)


def test_random_gaussian_weights_float32():
    torch.manual_seed(1)
    W = torch.randn(4, 16, 40)
    u, v = _unit(4, 16, dtype=torch.float32), _unit(4, 40, dtype=torch.float32)
    sigma = power_iteration_(W, u, v, n_iter=500)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(W, ord=2), rtol=2e-3, atol=0)


def test_updates_in_place_and_follows_the_recurrence():
    torch.manual_seed(0)
    W = torch.randn(2, 5, 6, dtype=torch.float64)
    u, v = _unit(2, 5), _unit(2, 6)
    u_ref, v_ref = u.clone(), v.clone()
    u_ptr, v_ptr = u.data_ptr(), v.data_ptr()
    sigma = power_iteration_(W, u, v, n_iter=3)
    for _ in range(3):
        v_ref = F.normalize(torch.einsum("gr,grc->gc", u_ref, W), dim=1, eps=1e-3)
        u_ref = F.normalize(torch.einsum("grc,gc->gr", W, v_ref), dim=1, eps=1e-3)
    assert u.data_ptr() == u_ptr and v.data_ptr() == v_ptr
    torch.testing.assert_close(u, u_ref)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(sigma, torch.einsum("gr,grc,gc->g", u_ref, W, v_ref))
    # n_iter=0 only evaluates.
    power_iteration_(W, u, v, n_iter=0)
    torch.testing.assert_close(u, u_ref)


def test_gradient_flows_into_W_only():
    torch.manual_seed(0)
    W = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    u, v = _unit(3, 4), _unit(3, 5)
    sigma = power_iteration_(W, u, v, n_iter=5)
    assert sigma.requires_grad
    # A later in-place update of u, v must not break the pending backward.
    u_used, v_used = u.clone(), v.clone()
    power_iteration_(W, u, v, n_iter=2)
    sigma.sum().backward()
    torch.testing.assert_close(W.grad, u_used[:, :, None] * v_used[:, None, :])
    assert u.grad is None and v.grad is None and not u.requires_grad


def test_zero_matrix_uses_eps_not_nan():
    W = torch.zeros(1, 3, 4)
    u, v = _unit(1, 3, dtype=torch.float32), _unit(1, 4, dtype=torch.float32)
    sigma = power_iteration_(W, u, v, n_iter=2)
    assert torch.isfinite(sigma).all() and sigma.item() == 0.0


def test_shape_validation():
    W = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"u must be \[G, R\]"):
        power_iteration_(W, torch.randn(2, 4), torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match=r"v must be \[G, C\]"):
        power_iteration_(W, torch.randn(2, 3), torch.randn(3, 4), 1)
    with pytest.raises(ValueError, match=r"W must be \[G, R, C\]"):
        power_iteration_(torch.randn(3, 4), torch.randn(3), torch.randn(4), 1)
    with pytest.raises(ValueError, match="n_iter"):
        power_iteration_(W, torch.randn(2, 3), torch.randn(2, 4), -1)
    with pytest.raises(ValueError, match="dtype|float64"):
        power_iteration_(W, torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match="one u and one v"):
        spectral_norms([W], [torch.randn(2, 3)], [], 1)
    with pytest.raises(ValueError, match="group 1"):
        spectral_norms([W, W], [torch.randn(2, 3)] * 2, [torch.randn(2, 4), torch.randn(2, 5)], 1)


def test_spectral_norms_matches_per_group_calls():
    torch.manual_seed(0)
    Ws = [torch.randn(2, 3, 4), torch.randn(1, 5, 2)]
    us = [_unit(2, 3, dtype=torch.float32), _unit(1, 5, dtype=torch.float32)]
    vs = [_unit(2, 4, dtype=torch.float32), _unit(1, 2, dtype=torch.float32)]
    us2, vs2 = [u.clone() for u in us], [v.clone() for v in vs]
    out = spectral_norms(Ws, us, vs, 3)
    for W, u, v, sigma in zip(Ws, us2, vs2, out):
        torch.testing.assert_close(power_iteration_(W, u, v, 3), sigma)


def test_cifar32_has_16_convs_in_7_groups():
    model = official_ebm("cifar32")
    assert len(model.spectral._layers) == 16
    assert model.spectral.num_groups == 7
    assert sum(G for G, _, _ in model.spectral.group_shapes) == 16
    assert (1, 128, 27) in model.spectral.group_shapes          # head conv 3->128, 3x3
    assert (7, 256, 2304) in model.spectral.group_shapes
    assert all(isinstance(m, WNConv2d) for m in model.spectral._layers)  # head excluded


def _small_model(seed=0):
    torch.manual_seed(seed)
    return small_image_ebm(in_channels=1, n_channel=4).double()


def test_regulariser_sum_matches_exact_norms_and_grads_reach_weights():
    model = _small_model()
    loss = model.spectral_norm_loss(n_iter=300)
    exact = sum(torch.linalg.matrix_norm(c.normalized_weight().flatten(1), ord=2)
                for c in model.modules() if isinstance(c, WNConv2d))
    torch.testing.assert_close(loss, exact, rtol=1e-5, atol=0)
    loss.backward()
    assert all(c.weight.grad is not None and c.log_weight_norm.grad is not None
               for c in model.modules() if isinstance(c, WNConv2d))
    assert model.linear.weight.grad is None


def test_iteration_schedule_40_then_4(monkeypatch):
    calls = []
    real = spectral_mod.spectral_norms

    def recording(weights, us, vs, n_iter, eps):
        calls.append(n_iter)
        return real(weights, us, vs, n_iter, eps)

    monkeypatch.setattr(spectral_mod, "spectral_norms", recording)
    model = _small_model()
    model.spectral_norm_loss()
    model.spectral_norm_loss()
    assert calls == [40, 4]
    # Vectors restored from our own checkpoint are warm: no 40-iteration restart.
    fresh = _small_model(seed=1)
    fresh.load_state_dict(model.state_dict())
    fresh.spectral_norm_loss()
    assert calls == [40, 4, 4]


def test_vectors_survive_state_dict_round_trip():
    model = _small_model()
    model.spectral_norm_loss()
    sd = model.state_dict()
    assert any(k.startswith("spectral.u_") for k in sd)
    restored = _small_model(seed=3)
    restored.load_state_dict(sd, strict=True)
    for k in range(model.spectral.num_groups):
        torch.testing.assert_close(getattr(restored.spectral, f"u_{k}"),
                                   getattr(model.spectral, f"u_{k}"))
        torch.testing.assert_close(getattr(restored.spectral, f"v_{k}"),
                                   getattr(model.spectral, f"v_{k}"))
    torch.testing.assert_close(restored.spectral_norm_loss(), model.spectral_norm_loss())


def test_official_state_dict_without_vectors_loads_strict():
    model = _small_model()
    official = {k: v for k, v in model.state_dict().items() if not k.startswith("spectral.")}
    target = _small_model(seed=5)
    u0 = target.spectral.u_0.clone()
    result = target.load_state_dict(official, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(target.spectral.u_0, u0)      # fresh vectors kept
    assert not target.spectral._warm
    # Other missing keys are still reported.
    del official["conv1.weight"]
    with pytest.raises(RuntimeError, match="conv1.weight"):
        target.load_state_dict(official, strict=True)


def test_regulariser_validates_layers():
    with pytest.raises(ValueError):
        SpectralRegularizer([])
