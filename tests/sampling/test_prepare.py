"""Frozen snapshots: vaebm_fast.nn.frozen_copy computes the original's eval-mode function and
leaves the original exactly as it was; the sampling side (prepare_for_sampling, prepared) honours
a model's ``sampling_drop`` and a user's own ``prepare_for_sampling()``."""
import pytest
import torch
from torch import nn

from vaebm_fast.models import MLPEnergy, MLPVAE, HierarchicalVAE, official_ebm, small_image_ebm
from vaebm_fast.nn import AffineSwish, BNSwish, WNConv2d, frozen_copy, is_frozen_copy
from vaebm_fast.sampling.prepare import prepare_for_sampling, prepared, state_key

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-5


def randomise_batchnorms(module, seed=0):
    """Non-trivial running statistics and affine parameters (fresh BNs fold to ~identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))


def snapshot(module):
    return ({k: v.detach().clone() for k, v in module.state_dict().items()},
            {n: p.requires_grad for n, p in module.named_parameters()},
            [(n, type(m)) for n, m in module.named_modules()],
            [m.training for m in module.modules()])


def assert_unchanged(module, before):
    after = snapshot(module)
    sd0, sd1 = before[0], after[0]
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert before[1:] == after[1:]


def assert_close_rel(a, b, rtol=RTOL):
    scale = a.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale) <= rtol, ((a - b).abs().max(), scale)


@pytest.mark.parametrize("preset", ["tiny", "digits"])
def test_nvae_prepared_decoder_matches_eval_and_folds_every_batchnorm(preset):
    torch.manual_seed(0)
    vae = HierarchicalVAE(preset)
    randomise_batchnorms(vae)
    vae.train()
    before = snapshot(vae)
    key = state_key(vae)
    fast = prepared(vae)
    assert_unchanged(vae, before)
    assert state_key(vae) == key
    assert vae.training and all(p.requires_grad for p in vae.parameters())

    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert not any(isinstance(m, (WNConv2d, nn.BatchNorm2d, BNSwish)) for m in fast.modules())
    assert fast.stem is None and fast.enc_tower is None  # sampling never runs the encoder
    # No storage shared with the original.
    ptrs = {t.data_ptr() for t in list(vae.parameters()) + list(vae.buffers())}
    assert not any(t.data_ptr() in ptrs for t in list(fast.parameters()) + list(fast.buffers()))

    eps = [torch.randn(5, *s) for s in vae.latent_shapes]
    eps_x = torch.randn(5, *vae.data_shape)
    vae.eval()
    with torch.no_grad():
        ref, got = vae.decode_eps_details(eps, eps_x), fast.decode_eps_details(eps, eps_x)
    assert_close_rel(ref.x_mu, got.x_mu)
    assert_close_rel(ref.x_sigma, got.x_sigma)
    assert_close_rel(ref.x, got.x)
    # Gradients with respect to the input agree as well.
    e1 = [t.clone().requires_grad_() for t in eps]
    e2 = [t.clone().requires_grad_() for t in eps]
    g1 = torch.autograd.grad(vae.decode_eps(e1, eps_x).square().sum(), e1)
    g2 = torch.autograd.grad(fast.decode_eps(e2, eps_x).square().sum(), e2)
    for a, b in zip(g1, g2):
        assert_close_rel(a, b, 1e-4)


@pytest.mark.parametrize("make", [
    lambda: official_ebm("cifar32", n_channel=8),
    lambda: official_ebm("mnist", n_channel=8),
    lambda: small_image_ebm(in_channels=1, n_channel=8),
])
def test_image_energies_prepared(make):
    torch.manual_seed(1)
    energy = make()
    with torch.no_grad():  # weight norms away from their construction value
        for m in energy.modules():
            if isinstance(m, WNConv2d):
                m.log_weight_norm.add_(0.3 * torch.randn_like(m.log_weight_norm))
    before = snapshot(energy)
    fast = prepared(energy)
    assert_unchanged(energy, before)
    assert not any(isinstance(m, WNConv2d) for m in fast.modules())
    assert fast.spectral is None
    size = energy.image_size
    x = torch.rand(3, energy.in_channels, size, size)
    assert_close_rel(energy(x).detach(), fast(x))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ga, = torch.autograd.grad(energy(xa).sum(), xa)
    gb, = torch.autograd.grad(fast(xb).sum(), xb)
    assert_close_rel(ga, gb, 1e-4)


def test_mlp_models_prepared():
    torch.manual_seed(2)
    energy, vae = MLPEnergy(in_dim=2, hidden=16, depth=2), MLPVAE(hidden=16, depth=2)
    e_before, v_before = snapshot(energy), snapshot(vae)
    fe, fv = prepared(energy), prepared(vae)
    assert_unchanged(energy, e_before)
    assert_unchanged(vae, v_before)
    x, z, ex = torch.randn(7, 2), torch.randn(7, 2), torch.randn(7, 2)
    assert torch.allclose(energy(x), fe(x), rtol=RTOL, atol=1e-7)
    assert torch.allclose(vae.decode_eps([z], ex), fv.decode_eps([z], ex), rtol=RTOL, atol=1e-7)
    assert fv.encoder is None


class UserNet(nn.Module):
    """A user's own network: conv -> BN -> ReLU, BN -> 1x1 conv (input fold), a grouped conv
    -> BN, a parametrised weight norm, Linear -> BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.BatchNorm2d(8), nn.Conv2d(8, 12, 1),
            nn.Conv2d(12, 12, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(12), nn.Tanh(),
            nn.BatchNorm2d(12), nn.Conv2d(12, 4, 3, padding=1),  # padded: BN must stay
        )
        self.wn = torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 1))
        self.head = nn.Sequential(nn.Linear(4 * 16, 5), nn.BatchNorm1d(5), nn.ReLU(),
                                  nn.Linear(5, 1))

    def forward(self, x):
        h = self.wn(self.features(x))
        return self.head(h.flatten(1)).squeeze(1)


def test_user_module_generic_path_folds_where_exact():
    torch.manual_seed(3)
    net = UserNet()
    randomise_batchnorms(net, seed=4)
    with torch.no_grad():
        net.wn.parametrizations.weight.original0.mul_(1.7)
    net.train()
    before = snapshot(net)
    fast = prepared(net)  # no method on the module: the generic path
    assert_unchanged(net, before)
    kinds = [type(m) for m in fast.features]
    assert kinds[1] is nn.Identity and kinds[3] is nn.Identity and kinds[6] is nn.Identity
    assert kinds[8] is nn.BatchNorm2d  # before a padded conv: not exact, kept
    assert type(fast.head[1]) is nn.Identity
    assert not torch.nn.utils.parametrize.is_parametrized(fast.wn)
    x = torch.randn(6, 3, 4, 4)
    net.eval()
    ref = net(x).detach()
    assert_close_rel(ref, fast(x))
    assert prepared(fast) is fast  # already prepared


def test_sequential_user_module_and_bn_swish():
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), BNSwish(6),
                        nn.Conv2d(6, 3, 3, padding=1))
    randomise_batchnorms(seq, seed=6)
    fast = frozen_copy(seq)
    assert type(fast[1]) is nn.Identity and type(fast[3]) is AffineSwish
    x = torch.randn(4, 2, 6, 6)
    assert_close_rel(seq.eval()(x).detach(), fast(x))


def test_batchnorm_without_running_stats_is_not_folded():
    seq = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    fast = frozen_copy(seq)
    assert isinstance(fast[1], nn.BatchNorm2d)
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(seq.eval()(x), fast(x), atol=1e-6)


def test_non_modules_pass_through():
    def energy(x):
        return x.sum(1)

    assert prepared(energy) is energy and prepare_for_sampling(energy) is energy
    assert frozen_copy(energy) is energy


def test_models_declare_what_sampling_drops():
    """Every model of the package names, as data, the submodules its snapshot leaves out; each
    name is a real submodule (frozen_copy rejects others) and is None in the snapshot."""
    models = [HierarchicalVAE("tiny"), MLPVAE(hidden=8, depth=1), MLPEnergy(hidden=8, depth=1),
              small_image_ebm(n_channel=4)]
    for model in models:
        assert not hasattr(model, "prepare_for_sampling")  # one path: the generic one
        drop = type(model).sampling_drop
        assert drop and all(name in model._modules for name in drop)
        fast = prepare_for_sampling(model)
        assert is_frozen_copy(fast)
        assert all(getattr(fast, name) is None for name in drop)
        # An explicit drop replaces the declaration.
        kept = prepare_for_sampling(model, drop=())
        assert all(getattr(kept, name) is not None for name in drop)


def test_frozen_copy_rejects_unknown_drop_names():
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no submodule 'encoder'"):
        frozen_copy(net, drop=("encoder",))
    assert frozen_copy(net, drop="0")[0] is None  # one name as a string


class Decoder(nn.Module):
    """A user's generator with an encoder that only training needs."""

    sampling_drop = ("encoder",)

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.decoder = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))

    def forward(self, z):
        return self.decoder(z)


def test_user_sampling_drop_and_own_method():
    torch.manual_seed(7)
    dec = Decoder()
    randomise_batchnorms(dec, seed=8)
    fast = prepared(dec)
    assert fast.encoder is None and type(fast.decoder[1]) is nn.Identity
    z = torch.randn(5, 2)
    assert_close_rel(dec.eval()(z).detach(), fast(z))

    class OwnSnapshot(Decoder):
        def prepare_for_sampling(self):
            return frozen_copy(self, drop=("encoder", "decoder"))

    own = prepared(OwnSnapshot())  # the module's own method wins over sampling_drop
    assert own.encoder is None and own.decoder is None
