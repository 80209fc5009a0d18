"""NVAE's posterior flows (vaebm_fast.models.nvae_flows) and the ELBO that uses them."""
from __future__ import annotations

import pytest
import torch

from vaebm_fast.models import HierarchicalVAE, HierarchicalVAEConfig
from vaebm_fast.models.nvae_flows import ARCell, PairedARCell, autoregressive_mask


# Tiny models are hundreds of small ops: one intra-op thread is faster on 2 shared cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def _order(n_z: int, size: int, mirror: bool) -> torch.Tensor:
    """Position of each (c, i, j) of z [n_z, size, size] in the cell's autoregressive order:
    pixels in raster order (reversed when mirrored), channels in order within a pixel."""
    c, i, j = torch.meshgrid(torch.arange(n_z), torch.arange(size), torch.arange(size),
                             indexing="ij")
    pixel = i * size + j
    if mirror:
        pixel = size * size - 1 - pixel
    return (pixel * n_z + c).flatten()


@pytest.mark.parametrize("mirror", [False, True])
def test_a_cell_is_autoregressive_with_unit_diagonal(mirror):
    """d(z - mu(z))/dz is the identity plus a strictly lower-triangular part in the cell's
    order, so the flow is invertible and its log-determinant is 0 (as NVAE assumes)."""
    torch.manual_seed(0)
    n_z, size = 3, 4
    cell = ARCell(n_z, mirror=mirror).double()
    z = torch.randn(1, n_z, size, size, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda v: cell(v.view_as(z)).flatten(),
                                             z.flatten())
    by_order = torch.argsort(_order(n_z, size, mirror))
    jac = jac[by_order][:, by_order]  # rows and columns in the cell's order
    assert torch.equal(torch.diagonal(jac), torch.ones(n_z * size * size, dtype=torch.double))
    assert torch.count_nonzero(torch.triu(jac, diagonal=1)) == 0
    assert torch.count_nonzero(torch.tril(jac, diagonal=-1)) > 0  # mu does depend on the past


def test_masks_follow_the_construction_rule_and_are_not_saved():
    mask = autoregressive_mask(3, 2, 4, zero_diag=True)  # 2 outputs per input channel
    assert torch.equal(mask[:, :, 0, :], torch.ones(4, 2, 3))      # the row above: open
    assert torch.equal(mask[:, :, 1, 0], torch.ones(4, 2))         # left of the centre: open
    assert torch.equal(mask[:, :, 1, 2], torch.zeros(4, 2))        # right of it: closed
    assert torch.equal(mask[:, :, 2, :], torch.zeros(4, 2, 3))     # the row below: closed
    assert torch.equal(mask[:, :, 1, 1], torch.tensor([[0., 0.], [0., 0.], [1., 0.], [1., 0.]]))
    mirrored = autoregressive_mask(3, 2, 4, zero_diag=True, mirror=True)
    assert torch.equal(mirrored, mask.flip(2, 3))
    assert torch.equal(autoregressive_mask(5, 6, 6, groups=6)[:, :, 2, 2], torch.ones(6, 1))
    # The official key names, and no mask among them.
    assert sorted(PairedARCell(2).state_dict()) == sorted(
        f"{cell}.{key}" for cell in ("cell1", "cell2") for key in (
            "conv.convz.0.weight", "conv.convz.0.log_weight_norm",
            "conv.convz.2.weight", "conv.convz.2.log_weight_norm",
            "mu.conv_0.weight", "mu.conv_0.bias", "mu.conv_0.log_weight_norm"))


def flow_model(num_nf=1, **overrides) -> HierarchicalVAE:
    torch.manual_seed(0)
    config = HierarchicalVAEConfig.preset("tiny", num_nf=num_nf, **overrides)
    return HierarchicalVAE(config)


def test_sampling_never_runs_the_flows():
    model = flow_model(num_nf=2).eval()
    assert len(model.nf_cells) == model.config.num_groups * 2
    eps_z = [torch.randn(2, *s) for s in model.latent_shapes]
    with torch.no_grad():
        before = model.decode_eps(eps_z)
        for param in model.nf_cells.parameters():
            param.add_(1.0)
        assert torch.equal(model.decode_eps(eps_z), before)


def test_elbo_with_identity_flows_is_the_one_sample_kl_estimate():
    """Flows whose mu is 0 leave z alone: the reconstruction equals the flow-free model's for
    the same noise, and each group's KL is log q(z) - log p(z), an unbiased estimate of the
    flow-free analytic KL (checked to 5 standard errors over a batch)."""
    with_flows, without = flow_model(num_nf=1), flow_model(num_nf=0)
    without.load_state_dict(with_flows.state_dict(), strict=False)
    with torch.no_grad():
        for cell in with_flows.nf_cells.modules():
            if isinstance(cell, ARCell):
                cell.mu.conv_0.weight.zero_()
                cell.mu.conv_0.bias.zero_()
    x = torch.rand(1, *with_flows.data_shape).expand(4000, -1, -1, -1)
    with torch.no_grad():
        torch.manual_seed(1)
        recon_f, kl_f = with_flows.elbo_terms(x)
        torch.manual_seed(1)
        recon, kl = without.elbo_terms(x)
    assert torch.allclose(recon_f, recon, rtol=1e-5, atol=1e-5)
    for estimate, exact in zip(kl_f, kl):
        error = (estimate - exact).mean()
        standard_error = (estimate - exact).std() / len(x) ** 0.5
        assert abs(error) < 5 * standard_error + 1e-6
        assert not torch.allclose(estimate, exact)  # one-sample, not analytic


def test_elbo_gradient_reaches_the_flows():
    model = flow_model(num_nf=1).train()
    recon, kl = model.elbo_terms(torch.rand(4, *model.data_shape))
    (recon.mean() + torch.stack(kl).sum(0).mean()).backward()
    for name, param in model.nf_cells.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name


def test_the_sampling_snapshot_of_a_flow_model_leaves_the_flows_out():
    from vaebm_fast.sampling import prepare_for_sampling  # the consumer of sampling_drop
    model = flow_model(num_nf=1).eval()
    snapshot = prepare_for_sampling(model)
    assert snapshot.nf_cells is None
    eps_z = [torch.randn(2, *s) for s in model.latent_shapes]
    with torch.no_grad():
        assert torch.allclose(snapshot.decode_eps(eps_z), model.decode_eps(eps_z), atol=1e-5)
