"""FastSampler against the eager LangevinSampler: same seed, same chains, in every space;
replay buffer; divergence; snapshot caching; CUDA graphs (skipped without a GPU); a user's
own energy and generator through the one public import."""
import math
import warnings

import pytest
import torch
from torch import nn

from vaebm_fast import ChainDivergedError, ChainResult, FastSampler, LangevinSampler, ReplayBuffer
from vaebm_fast.models import MLPEnergy, MLPVAE, HierarchicalVAE, small_image_ebm
from vaebm_fast.training import EBMTrainConfig, train_ebm

pytestmark = pytest.mark.usefixtures("one_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mlp_models(seed=0):
    torch.manual_seed(seed)
    return MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2), MLPEnergy(in_dim=2, hidden=16,
                                                                            depth=2)


def assert_same_chain(a: ChainResult, b: ChainResult, rtol=1e-5, atol=1e-5):
    assert a.next_offset == b.next_offset
    assert a.potentials.shape == b.potentials.shape and a.energies.shape == b.energies.shape
    assert torch.allclose(a.x, b.x, rtol=rtol, atol=atol)
    assert torch.allclose(a.energies, b.energies, rtol=rtol, atol=atol)
    assert torch.allclose(a.potentials, b.potentials, rtol=rtol, atol=atol)
    assert len(a.states) == len(b.states)
    for s, t in zip(a.states, b.states):
        assert torch.allclose(s, t, rtol=rtol, atol=atol)
        assert not t.requires_grad


@pytest.mark.parametrize("space", ["eps", "latent", "data"])
@pytest.mark.parametrize("output", ["mean", "sample"])
def test_fast_matches_eager_mlp(space, output):
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=8, data_shape=(2,), output=output,
              grad_clip=2.0, clamp=(-3.0, None) if space == "data" else None)
    a = LangevinSampler(energy, gen, **kw).sample(32, seed=3, offset=11, return_chain=True)
    fast = FastSampler(energy, gen, **kw)
    b = fast.sample(32, seed=3, offset=11, return_chain=True)
    assert fast.last_path == "fast"
    assert_same_chain(a, b)
    # Plain samples, a different seed differs.
    assert torch.allclose(fast.sample(32, seed=3, offset=11), a.x, atol=1e-5)
    assert not torch.allclose(fast.sample(32, seed=4, offset=11), a.x, atol=1e-3)


@pytest.mark.parametrize("memory_format", ["auto", "contiguous", "channels_last"])
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_fast_matches_eager_nvae(space, memory_format):
    """The NVAE decoder with folded BatchNorms and an image EBM: same chain within tolerance,
    whichever layout the prepared networks run in ("auto" is channels-last on the CPU)."""
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny")
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    vae.eval()  # running statistics: the ones FastSampler folds into the convs
    energy = small_image_ebm(in_channels=1, n_channel=8)
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=1e-3, n_steps=4, data_shape=tuple(vae.data_shape))
    a = LangevinSampler(energy, gen, **kw).sample(6, seed=1, return_chain=True)
    fast = FastSampler(energy, gen, memory_format=memory_format, **kw)
    b = fast.sample(6, seed=1, return_chain=True)
    assert_same_chain(a, b, rtol=1e-4, atol=1e-4)
    assert fast.last_path == "fast" and not vae.training  # the original's mode is untouched
    # The layout: the prepared convs' weights follow memory_format, what the user gets back
    # (samples, states) is row-major either way.
    want = torch.contiguous_format if memory_format == "contiguous" else torch.channels_last
    for model in fast.prepared_models():
        if model is None:
            continue
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)
                 and m.weight.shape[1] > 1 and m.weight.shape[2:] != (1, 1)]
        assert convs and all(c.weight.is_contiguous(memory_format=want) for c in convs)
    assert b.x.is_contiguous() and all(t.is_contiguous() for t in b.states)


def test_bad_memory_format_is_rejected():
    vae, energy = mlp_models()
    with pytest.raises(ValueError, match="memory_format must be one of"):
        FastSampler(energy, vae, memory_format="nhwc", space="eps", step_size=0.1, n_steps=1)


def test_zero_steps_and_explicit_initial_states():
    vae, energy = mlp_models()
    for n_steps in (0, 3):
        kw = dict(space="eps", step_size=0.05, n_steps=n_steps)
        x0 = [torch.randn(5, 2), torch.randn(5, 2)]
        before = [t.clone() for t in x0]
        a = LangevinSampler(energy, vae, **kw).sample(x0, seed=0, return_chain=True)
        b = FastSampler(energy, vae, **kw).sample(x0, seed=0, return_chain=True)
        assert_same_chain(a, b)
        # The caller's initial states are not updated in place.
        assert all(torch.equal(t, u) for t, u in zip(x0, before))
    x0 = torch.rand(4, 2)
    before = x0.clone()
    kw = dict(space="data", step_size=0.05, n_steps=3)
    a = LangevinSampler(energy, **kw).sample(x0, seed=2, return_chain=True)
    b = FastSampler(energy, **kw).sample(x0, seed=2, return_chain=True)
    assert_same_chain(a, b)
    assert not torch.equal(b.x, before)  # the chain moved, so an in-place update would show
    assert torch.equal(x0, before)  # the caller's x0 is not updated in place


@pytest.mark.parametrize("space", ["eps", "data"])
def test_fast_matches_eager_with_replay_buffer(space):
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    shapes = [tuple(s) for s in vae.latent_shapes] if space != "data" else [(2,)]
    bufs = [ReplayBuffer(48, shapes), ReplayBuffer(48, shapes)]
    kw = dict(space=space, step_size=0.05, n_steps=4, data_shape=(2,), reuse_prob=0.5)
    eager = LangevinSampler(energy, gen, replay_buffer=bufs[0], **kw)
    fast = FastSampler(energy, gen, replay_buffer=bufs[1], **kw)
    offset_a = offset_b = 0
    for _ in range(4):  # the buffer fills, then chains restart from it
        a = eager.sample(16, seed=5, offset=offset_a, return_chain=True)
        b = fast.sample(16, seed=5, offset=offset_b, return_chain=True)
        assert_same_chain(a, b)
        offset_a, offset_b = a.next_offset, b.next_offset
    assert len(bufs[0]) == len(bufs[1]) == 48
    for s, t in zip(bufs[0].storage, bufs[1].storage):
        assert torch.allclose(s, t, atol=1e-5)


def test_divergence_is_reported_with_its_step():
    """As the eager test: E = -2 x_0 pushes x_0 up by 0.1 per step; NaN once x_0 > 0.45."""

    def energy(x):
        e = -2.0 * x[:, 0]
        return torch.where(x[:, 0] > 0.45, torch.full_like(e, float("nan")), e)

    x0 = torch.zeros(5, 2)
    x0[3:, 0] = -10.0
    sampler = FastSampler(energy, space="data", step_size=0.1, n_steps=20, noise_scale=0.0)
    with pytest.raises(ChainDivergedError, match=r"3 of 5 chains became NaN/Inf at step 5") as e:
        sampler.sample(x0, seed=0)
    assert e.value.step == 5 and e.value.n_chains == 3
    late = FastSampler(energy, space="data", step_size=0.1, n_steps=5, noise_scale=0.0)
    with pytest.raises(ChainDivergedError, match="at step 5"):
        late.sample(x0, seed=0, return_chain=True)
    ok = FastSampler(energy, space="data", step_size=0.1, n_steps=4, noise_scale=0.0)
    assert torch.isfinite(ok.sample(x0, seed=0)).all()


def test_inf_from_a_huge_step_is_reported():
    vae, energy = mlp_models()

    class Steep(nn.Module):
        def forward(self, x):
            return 1e3 * x.square().sum(1)

    sampler = FastSampler(Steep(), vae, space="eps", step_size=10.0, n_steps=100)
    with pytest.raises(ChainDivergedError, match="Lower step_size"):
        sampler.sample(8, seed=0)
    x = sampler.sample(8, seed=0, check_finite=False)
    assert not torch.isfinite(x).all()


def test_originals_untouched_and_snapshots_follow_training():
    vae, energy = mlp_models()
    vae.train()
    sampler = FastSampler(energy, vae, space="eps", step_size=0.05, n_steps=3)
    flags = [p.requires_grad for p in energy.parameters()]
    a = sampler.sample(8, seed=0)
    assert [p.requires_grad for p in energy.parameters()] == flags and vae.training
    assert all(p.grad is None for p in energy.parameters())
    e_snap, g_snap = sampler.prepared_models()
    assert sampler.prepared_models()[1] is g_snap  # cached while nothing changed
    # An optimizer step on the energy is seen by the next chain, as by the eager sampler.
    opt = torch.optim.SGD(energy.parameters(), lr=0.5)
    energy(torch.randn(4, 2)).sum().backward()
    opt.step()
    e_new = sampler.prepared_models()[0]
    assert torch.equal(e_new.out.weight, energy.out.weight)  # re-snapshotted (in place)
    assert sampler.prepared_models()[1] is g_snap
    b = sampler.sample(8, seed=0)
    ref = LangevinSampler(energy, vae, space="eps", step_size=0.05, n_steps=3).sample(8, seed=0)
    assert torch.allclose(b, ref, atol=1e-6) and not torch.allclose(a, b, atol=1e-6)
    # load_state_dict is an in-place change too.
    energy.load_state_dict(MLPEnergy(in_dim=2, hidden=16, depth=2).state_dict())
    c = sampler.sample(8, seed=0)
    ref = LangevinSampler(energy, vae, space="eps", step_size=0.05, n_steps=3).sample(8, seed=0)
    assert torch.allclose(c, ref, atol=1e-5)


def test_user_energy_and_generator_with_one_import():
    """A user's own modules (conv + BatchNorm energy, linear generator): one import, the
    eager sampler's samples."""

    class MyEnergy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(),
                                     nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU())

        def forward(self, x):
            return self.net(x).square().mean(dim=(1, 2, 3))

    class MyGenerator(nn.Module):
        latent_shapes = [(3,)]
        data_shape = (1, 4, 4)

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 16)
            self.log_s = nn.Parameter(torch.tensor(-1.0))

        def decode_eps(self, eps_z, eps_x=None):
            x = torch.sigmoid(self.lin(eps_z[0])).view(-1, *self.data_shape)
            return x if eps_x is None else x + self.log_s.exp() * eps_x

    torch.manual_seed(7)
    energy, gen = MyEnergy(), MyGenerator()
    with torch.no_grad():
        for m in energy.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    energy.eval()  # the eager sampler does not change the energy's mode
    kw = dict(space="eps", step_size=0.01, n_steps=5, output="sample")
    a = LangevinSampler(energy, gen, **kw).sample(10, seed=9, return_chain=True)
    b = FastSampler(energy, gen, **kw).sample(10, seed=9, return_chain=True)
    assert_same_chain(a, b, rtol=1e-5, atol=1e-5)
    fast_energy, _ = FastSampler(energy, gen, **kw).prepared_models()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast_energy.modules())


def test_unpreparable_module_falls_back_to_eager_with_one_warning():
    class Uncopyable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x).squeeze(1)

        def __deepcopy__(self, memo):
            raise TypeError("cannot copy me")

    energy = Uncopyable()
    sampler = FastSampler(energy, space="data", step_size=0.05, n_steps=2, data_shape=(2,))
    with pytest.warns(RuntimeWarning, match="cannot copy me"):
        a = sampler.sample(4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = sampler.sample(4, seed=0)  # no second warning
    assert sampler.last_path == "eager" and torch.equal(a, b)


def test_train_ebm_fast_and_eager_negative_phase_agree():
    """Stage 2 with the fast negative phase gives the eager run's trajectory."""
    from vaebm_fast.data import TwentyFiveGaussians, batches

    toy = TwentyFiveGaussians()
    results = {}
    for kind in ("eager", "fast"):
        torch.manual_seed(0)
        vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2)
        energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
        cfg = EBMTrainConfig(steps=5, batch_size=16, lr=1e-3, beta1=0.5, langevin_steps=3,
                             step_size=2e-3, alpha_s=0.1, replay_capacity=32,
                             replay_anneal_steps=2, checkpoint_every=100, sampler=kind)
        torch.manual_seed(1)
        metrics = train_ebm(energy, vae, batches(toy, 16), cfg)
        results[kind] = (metrics, {k: v.clone() for k, v in energy.state_dict().items()})
    (m_e, sd_e), (m_f, sd_f) = results["eager"], results["fast"]
    # The final weights depend on every step's negatives: equal weights, equal trajectory.
    assert m_e.keys() == m_f.keys()
    for k in m_e:
        assert math.isclose(m_e[k], m_f[k], rel_tol=1e-4, abs_tol=1e-5), (k, m_e, m_f)
    for k in sd_e:
        assert torch.allclose(sd_e[k], sd_f[k], rtol=1e-4, atol=1e-6), k


# --------------------------------------------------------------------------------------------
# The graphed chain's body, without a GPU: GraphedChain runs the same code eagerly when it was
# not captured (the update reads its stream position from the rng_state tensor either way).
# --------------------------------------------------------------------------------------------
@pytest.mark.graphs
@pytest.mark.parametrize("space", ["eps", "data"])
def test_graphed_chain_body_matches_the_eager_sampler_on_cpu(space):
    from vaebm_fast.sampling.graphs import GraphedChain
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=5, data_shape=(2,), output="sample")
    a = LangevinSampler(energy, gen, **kw).sample(16, seed=3, offset=11, return_chain=True)
    fast = FastSampler(energy, gen, **kw)
    e, g = fast.prepared_models(torch.contiguous_format)
    starts, offset = fast.initial_states(16, seed=3, offset=11, device="cpu",
                                         dtype=torch.float32)
    chain = GraphedChain(fast, e, g, starts)
    states, x, energies, half_sq, next_offset = chain.run(starts, seed=3, offset=offset)
    assert next_offset == a.next_offset
    assert torch.allclose(x, a.x, atol=1e-5) and torch.allclose(energies, a.energies, atol=1e-5)
    for s, t in zip(states, a.states):
        assert torch.allclose(s, t, atol=1e-5)
    if half_sq is not None:  # the prior term of the potentials, from the update's output
        assert torch.allclose(energies + half_sq, a.potentials, atol=1e-5)
    # The chain advanced its device-side stream position past the noise it drew, so running
    # again without new host input continues with fresh noise: the chain from its last states.
    assert chain.rng.tolist() == [3, next_offset]
    again = chain.replay().clone()
    ref = LangevinSampler(energy, gen, **kw).sample(list(a.states), seed=3, offset=next_offset)
    assert torch.allclose(again, ref, atol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        chain.replay([torch.zeros(1, 2)] * len(starts))


@pytest.mark.graphs
def test_graphed_update_op_matches_the_step_at_the_device_offset(triton_device):
    """langevin_step_graphed_ (Triton, and the eager reference reading rng_state on the host)
    is langevin_step_ at offset rng_state[1] + offset_add, and does not advance rng_state."""
    from vaebm_fast.ops import langevin_step_graphed_, langevin_step_reference

    torch.manual_seed(0)
    ts = [torch.randn(3, 5, device=triton_device), torch.randn(3, 2, 7, device=triton_device)]
    gs = [torch.randn_like(t) for t in ts]
    a = [t.clone() for t in ts]
    ha = torch.empty(3, device=triton_device)
    seed = 2 ** 40 + 5
    langevin_step_reference(a, gs, step_size=0.1, seed=seed, offset=1237, grad_clip=0.5,
                            clamp=(-1.0, None), half_sq_norm=ha)
    for backend in ("triton", "eager"):
        b = [t.clone() for t in ts]
        hb = torch.empty(3, device=triton_device)
        rng = torch.tensor([seed, 1200], device=triton_device)
        langevin_step_graphed_(b, gs, step_size=0.1, rng_state=rng, offset_add=37,
                               grad_clip=0.5, clamp=(-1.0, None), half_sq_norm=hb,
                               backend=backend)
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-6), backend
        assert torch.allclose(ha, hb, rtol=1e-5), backend
        assert rng.tolist() == [seed, 1200]  # the caller advances it
    with pytest.raises(ValueError, match="rng_state must be an int64"):
        langevin_step_graphed_(a, gs, step_size=0.1, rng_state=torch.zeros(4, dtype=torch.int64,
                                                                         device=triton_device))


# --------------------------------------------------------------------------------------------
# CUDA graphs
# --------------------------------------------------------------------------------------------
@pytest.mark.graphs
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_cuda_graph_chain_matches_eager(space):
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=6, data_shape=(2,), output="sample")
    a = LangevinSampler(energy, gen, **kw).sample(64, seed=3, return_chain=True)
    fast = FastSampler(energy, gen, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # capture must succeed here
        b = fast.sample(64, seed=3, return_chain=True)
    assert fast.last_path == "graph"
    assert_same_chain(a, b, rtol=1e-4, atol=1e-4)
    c = fast.sample(64, seed=3, return_chain=True)  # a replay: same seed, same samples
    # States, samples and energies exactly; the potentials to float tolerance (their half-norm
    # rows are summed with atomics, in no fixed order).
    assert torch.equal(b.x, c.x) and torch.equal(b.energies, c.energies)
    assert all(torch.equal(s, t) for s, t in zip(b.states, c.states))
    assert_same_chain(b, c, rtol=1e-6, atol=1e-6)


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_cuda_graph_chain_matches_eager_on_image_models(space, no_tf32):
    """The NVAE decoder (folded BatchNorms, native swish and epilogues inside the graph) and a
    ResNet energy, captured: the eager sampler's chain to float tolerance."""
    torch.manual_seed(0)
    vae = HierarchicalVAE("tiny")
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    vae, energy = vae.cuda(), small_image_ebm(in_channels=1, n_channel=8).cuda()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=1e-3, n_steps=5, data_shape=tuple(vae.data_shape))
    a = LangevinSampler(energy, gen, **kw).sample(6, seed=1, return_chain=True)
    fast = FastSampler(energy, gen, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = fast.sample(6, seed=1, return_chain=True)
    assert fast.last_path == "graph"
    assert_same_chain(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
def test_cuda_graph_cache_is_bounded_and_replay_uses_the_last_chain():
    from vaebm_fast.sampling.fast import MAX_GRAPHS
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    kw = dict(space="eps", step_size=0.05, n_steps=3, output="sample")
    fast = FastSampler(energy, vae, **kw)
    for batch in (8, 4, 5, 8):
        fast.sample(batch, seed=0)
        assert len(fast._graph_chains) <= MAX_GRAPHS
    # replay() continues the most recently used chain (batch 8), not the last captured one.
    assert fast.replay().shape == (8, 2)
    with pytest.raises(ValueError, match="shapes"):
        fast.replay([torch.zeros(1, 2, device="cuda"), torch.zeros(1, 2, device="cuda")])


@cuda
@pytest.mark.cuda
def test_cuda_sampler_asked_for_another_update_backend_runs_eagerly():
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    kw = dict(space="eps", step_size=0.05, n_steps=3, output="sample")
    a = LangevinSampler(energy, vae, **kw).sample(8, seed=2)
    fast = FastSampler(energy, vae, backend="native", **kw)
    assert torch.allclose(fast.sample(8, seed=2), a, atol=1e-5)
    assert fast.last_path == "fast"


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
def test_cuda_graph_replay_advances_the_noise():
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    kw = dict(space="eps", step_size=0.05, n_steps=4, output="sample")
    fast = FastSampler(energy, vae, **kw)
    x0 = [torch.zeros(32, 2, device="cuda"), torch.zeros(32, 2, device="cuda")]
    first = fast.sample(x0, seed=1, offset=0, return_chain=True)
    again = fast.replay(x0).clone()  # same start, offset advanced on the device
    assert not torch.allclose(first.x, again, atol=1e-3)
    # ... and it is exactly the chain that starts at the advanced offset.
    ref = LangevinSampler(energy, vae, **kw).sample(x0, seed=1, offset=first.next_offset)
    assert torch.allclose(again, ref, atol=1e-4)


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
def test_cuda_graph_sees_training_between_chains_without_recapture():
    vae, energy = mlp_models()
    vae, energy = vae.cuda(), energy.cuda()
    kw = dict(space="eps", step_size=0.05, n_steps=3)
    fast = FastSampler(energy, vae, **kw)
    fast.sample(16, seed=0)
    chains = dict(fast._graph_chains)
    with torch.no_grad():
        for p in energy.parameters():
            p.mul_(1.1)
    b = fast.sample(16, seed=0)
    assert fast._graph_chains == chains  # refreshed in place, not recaptured
    ref = LangevinSampler(energy, vae, **kw).sample(16, seed=0)
    assert torch.allclose(b, ref, atol=1e-4)


@pytest.mark.graphs
@cuda
@pytest.mark.cuda
def test_cuda_uncapturable_energy_runs_eagerly_and_says_why_once():
    def energy(x):
        if float(x.sum()) > 1e30:  # a host sync: cannot be captured
            return x.sum(1) * 0
        return 0.5 * x.square().sum(1)

    fast = FastSampler(energy, space="data", step_size=0.05, n_steps=3, data_shape=(2,))
    with pytest.warns(RuntimeWarning, match="eagerly"):
        a = fast.sample(8, seed=0, device="cuda")
    # The failed capture left the caller on its own stream, not torch's capture stream, and
    # torch's CUDA generator usable (not stuck in capture mode).
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.randn(3, device="cuda").isfinite().all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = fast.sample(8, seed=0, device="cuda")
    assert fast.last_path == "fast" and torch.allclose(a, b)


@pytest.mark.parametrize("space", ["eps", "data"])
@pytest.mark.parametrize("cls", [LangevinSampler, FastSampler], ids=["langevin", "fast"])
def test_triton_backend_gives_the_eager_chain(triton_device, cls, space):
    """backend="triton" (the CPU interpreter without a GPU) runs the Triton update kernel with
    the same Philox addressing as the eager update: same seed, same chain. A grad clip and, in
    data space, a clamp box exercise every term of the fused update."""
    vae, energy = mlp_models()
    vae, energy = vae.to(triton_device), energy.to(triton_device)
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.05, n_steps=4, data_shape=(2,), output="sample",
              grad_clip=2.0, clamp=(-1.5, 1.5) if space == "data" else None)
    eager = cls(energy, gen, backend="eager", **kw).sample(16, seed=9, offset=5,
                                                           return_chain=True)
    triton = cls(energy, gen, backend="triton", **kw)
    got = triton.sample(16, seed=9, offset=5, return_chain=True)
    if cls is FastSampler:  # the prepared chain (or its CUDA graph on a GPU), not the eager one
        assert triton.last_path in ("fast", "graph")
    assert_same_chain(got, eager)
    # The chain moved away from its start draws (so equal chains are not equal no-ops).
    start = cls(energy, gen, backend="eager", **{**kw, "n_steps": 0}).sample(
        16, seed=9, offset=5, return_chain=True)
    assert not torch.allclose(start.states[0], eager.states[0], atol=1e-2)
