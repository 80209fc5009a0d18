"""network_precision: the networks inside a chain at fp32 (default, the chain unchanged bitwise),
bf16 (autocast on the networks only: a float32 chain close to fp32's) or tf32 (CUDA only; the
process-wide TF32 switches set for the chain and restored after it). The TF32 switches can be
read and set without a GPU, so their handling is tested on the CPU with the CPU refusal
patched out; the CUDA tests (skipped without a GPU) run both precisions through the graphs."""
import warnings

import pytest
import torch
from torch import nn

from tests.sampling.test_fast_sampler import mlp_models
from tests.sampling.test_official_potential import ETA, start_states, tiny_models
from tests.sampling.test_sampler import BatchNormGenerator
from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import MLPVAE, MLPEnergy
from vaebm_fast.ops import langevin_step_
from vaebm_fast.sampling import langevin as langevin_module
from vaebm_fast.sampling.graphs import GraphedChain
from vaebm_fast.sampling.precision import NETWORK_PRECISIONS, tf32_window

pytestmark = pytest.mark.usefixtures("one_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SAMPLERS = [LangevinSampler, FastSampler]


class Scaled(nn.Module):
    """``scale`` times a network's output."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.scale * self.net(x)


def steep_models(scale=30.0):
    """The MLP toy pair with the energy scaled up, so that its gradient, not the prior pull or
    the noise, moves the chain: a change in the networks' precision shows in the states.
    Returns (vae, scaled energy, the unscaled energy network)."""
    vae, energy = mlp_models()
    return vae, Scaled(energy, scale), energy


def tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_off():
    """Both TF32 switches False for the test (a state a chain must restore), then as found."""
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------------------------
# fp32: the chain as before, bit for bit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_cls", SAMPLERS)
@pytest.mark.parametrize("space", ["eps", "data"])
def test_fp32_default_is_the_plain_float32_chain_bitwise(sampler_cls, space):
    """Against the chain written out with the public op: decode, energy, gradient, one fused
    update per step. No cast, no autocast: every value equal."""
    vae, energy = mlp_models()
    gen = vae if space != "data" else None
    sampler = sampler_cls(energy, gen, space=space, step_size=0.05, n_steps=6, data_shape=(2,),
                          output="sample")
    assert sampler.network_precision == "fp32"
    starts, offset = sampler.initial_states(16, seed=2, offset=0, device="cpu",
                                            dtype=torch.float32)
    got = sampler.sample(starts, seed=2, offset=offset, return_chain=True)

    states = [s.clone() for s in starts]
    energies = []
    for _ in range(6):
        leaves = [s.requires_grad_(True) for s in states]
        x = leaves[0] if space == "data" else vae.decode_eps([leaves[0]], leaves[1])
        E = energy(x)
        energies.append(E.detach())
        grads = torch.autograd.grad(E.sum(), leaves)
        states = [s.detach() for s in leaves]
        offset = langevin_step_(states, list(grads), step_size=0.05, seed=2, offset=offset,
                                prior_weight=0.0 if space == "data" else 1.0)
    with torch.no_grad():
        x = states[0] if space == "data" else vae.decode_eps([states[0]], states[1])
        energies.append(energy(x))
    assert got.next_offset == offset
    assert all(torch.equal(a, b) for a, b in zip(got.states, states))
    assert torch.equal(got.x, x) and torch.equal(got.energies, torch.stack(energies))


# --------------------------------------------------------------------------------------------
# bf16: autocast on the networks only, a float32 chain close to fp32's
# --------------------------------------------------------------------------------------------
class SpyVAE(MLPVAE):
    """Records, per decode, whether it ran under CPU autocast."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_per_call = []

    def decode_eps(self, eps_z, eps_x=None):
        self.autocast_per_call.append(torch.is_autocast_enabled("cpu"))
        return super().decode_eps(eps_z, eps_x)


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
def test_bf16_runs_the_networks_under_autocast_and_returns_float32(sampler_cls):
    torch.manual_seed(0)
    vae = SpyVAE(data_dim=2, latent_dim=2, hidden=16, depth=2)
    net = MLPEnergy(in_dim=2, hidden=16, depth=2)
    seen = []

    def energy(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        E = net(x)
        assert E.dtype == torch.bfloat16  # the last linear layer ran in bf16
        return E

    sampler = sampler_cls(energy, vae, space="eps", step_size=0.05, n_steps=4,
                          network_precision="bf16")
    r = sampler.sample(8, seed=1, return_chain=True)
    # K + 1 energy evaluations (K steps, the final potential), all in bf16 autocast ...
    assert seen == [(True, torch.bfloat16)] * 5
    # ... and the decoder too, except the decoder mean returned as the samples (float32).
    # (FastSampler runs a prepared copy of the decoder: its calls are recorded there.)
    decoder = vae if sampler_cls is LangevinSampler else sampler.prepared_models()[1]
    assert decoder.autocast_per_call == [True] * 5 + [False]
    assert not torch.is_autocast_enabled("cpu")  # left as found
    for t in (r.x, r.energies, r.potentials, *r.states):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
@pytest.mark.parametrize("space", ["eps", "latent", "data"])
def test_bf16_chain_stays_close_to_fp32_but_is_not_it(sampler_cls, space):
    """Same start and noise, 20 steps of a steep energy: bf16 networks move the samples by far
    less than the chain moves them, yet measurably (the option is not a no-op)."""
    vae, energy, _ = steep_models()
    gen = vae if space != "data" else None
    kw = dict(space=space, step_size=0.01, n_steps=20, data_shape=(2,), output="sample")
    a = sampler_cls(energy, gen, **kw).sample(64, seed=5, return_chain=True)
    b = sampler_cls(energy, gen, network_precision="bf16", **kw).sample(64, seed=5,
                                                                       return_chain=True)
    start = sampler_cls(energy, gen, **{**kw, "n_steps": 0}).sample(64, seed=5)
    moved = (a.x - start).abs().mean()
    diff = (a.x - b.x).abs()
    assert torch.isfinite(b.x).all() and torch.isfinite(b.potentials).all()
    assert diff.max() > 0
    # Measured: mean 8e-5 / 2e-6 / 7e-4 (eps / latent / data) against moves of 0.14 / 0.02 /
    # 0.35, and max differences 2e-4 / 5e-6 / 2e-3.
    assert diff.mean() < 0.01 * moved and diff.max() < 0.01 * (a.x - start).abs().max()
    # Energies recorded per step are float32 and close to fp32's along the whole chain.
    assert b.energies.dtype == torch.float32
    torch.testing.assert_close(b.energies, a.energies, rtol=0.02, atol=0.3)


def test_bf16_gradient_with_respect_to_the_float32_state_is_float32():
    """What the chain relies on: autocast casts the state down inside the networks and the
    gradient back up, so the fused update gets float32 gradients."""
    vae, _, net = steep_models()
    eps = [torch.randn(4, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)]
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        E = net(vae.decode_eps([eps[0]], eps[1]))
    grads = torch.autograd.grad(E.float().sum(), eps)
    assert E.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)


@pytest.mark.graphs
@pytest.mark.parametrize("graph_mode", ["unrolled", "step"])
def test_graphed_chain_code_runs_bf16_as_the_eager_chain(graph_mode):
    """The code a CUDA graph captures, run eagerly on the CPU: at bf16 it is the eager
    sampler's bf16 chain, not its fp32 one."""
    vae, energy, _ = steep_models()
    kw = dict(space="eps", step_size=0.01, n_steps=6, output="sample")
    eager = {p: LangevinSampler(energy, vae, network_precision=p, **kw).sample(
        16, seed=3, return_chain=True) for p in ("fp32", "bf16")}
    fast = FastSampler(energy, vae, network_precision="bf16", graph_mode=graph_mode, **kw)
    starts, offset = fast.initial_states(16, seed=3, offset=0, device="cpu",
                                         dtype=torch.float32)
    chain = GraphedChain(fast, *fast.prepared_models(torch.contiguous_format), starts,
                         graph_mode=graph_mode)
    states, x, energies, _, _ = chain.run(starts, seed=3, offset=offset)
    assert x.dtype == energies.dtype == torch.float32
    torch.testing.assert_close(x, eager["bf16"].x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(energies, eager["bf16"].energies, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x, eager["fp32"].x, rtol=0, atol=1e-6)


def test_fast_sampler_eager_path_honours_the_precision():
    """A generator in training mode sends FastSampler to LangevinSampler's chain: at bf16 it is
    the eager bf16 chain bitwise, and not the fp32 one."""
    torch.manual_seed(0)
    gen = BatchNormGenerator().train()
    energy = Scaled(MLPEnergy(in_dim=2, hidden=8, depth=1), 30.0)
    kw = dict(space="eps", step_size=0.01, n_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the training-mode warning
        eager = LangevinSampler(energy, gen, network_precision="bf16", **kw).sample(8, seed=0)
        fast = FastSampler(energy, gen, network_precision="bf16", **kw)
        got = fast.sample(8, seed=0)
        plain = FastSampler(energy, gen, **kw).sample(8, seed=0)
    assert fast.last_path == "eager"
    assert torch.equal(got, eager) and not torch.equal(got, plain)


def test_precision_is_part_of_the_graph_key():
    vae, energy = mlp_models()
    states = [torch.zeros(4, 2), torch.zeros(4, 2)]
    keys = {p: FastSampler(energy, vae, space="eps", step_size=0.01, n_steps=3,
                           network_precision=p)._graph_key(states, energy, vae, False)
            for p in NETWORK_PRECISIONS}
    assert len(set(keys.values())) == len(NETWORK_PRECISIONS)


# --------------------------------------------------------------------------------------------
# Bad values, and where a precision does not apply
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_cls", SAMPLERS)
@pytest.mark.parametrize("bad", ["fp16", "BF16", "float32", None, 16, torch.bfloat16])
def test_bad_precision_is_refused_naming_the_valid_values(sampler_cls, bad):
    vae, energy = mlp_models()
    with pytest.raises(ValueError, match=r"network_precision must be one of 'fp32', 'bf16', "
                                         r"'tf32' \(got "):
        sampler_cls(energy, vae, space="eps", step_size=0.01, n_steps=2, network_precision=bad)


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
def test_tf32_on_a_cpu_chain_is_refused(sampler_cls, tf32_off):
    """The CPU has no TF32: a chain that silently ran at fp32 would be measured as tf32."""
    vae, energy = mlp_models()
    sampler = sampler_cls(energy, vae, space="eps", step_size=0.01, n_steps=2,
                          network_precision="tf32")
    with pytest.raises(ValueError, match="'tf32' needs a CUDA chain .* on cpu"):
        sampler.sample(4, seed=0)
    assert tf32_flags() == (False, False)


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_lower_precision_of_a_float64_chain_is_refused(precision):
    """Autocast and TF32 leave float64 alone: the option would silently do nothing."""
    vae, energy = mlp_models()
    vae, energy = vae.double(), energy.double()
    sampler = LangevinSampler(energy, vae, space="eps", step_size=0.01, n_steps=2,
                              network_precision=precision)
    with pytest.raises(ValueError, match=f"network_precision='{precision}' applies to float32 "
                                         "chains \\(got torch.float64\\)"):
        sampler.sample(4, seed=0, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# tf32: the switches set for the chain only, restored after it
# --------------------------------------------------------------------------------------------
@pytest.fixture
def tf32_on_cpu(monkeypatch, tf32_off):
    """A tf32 chain allowed on the CPU (where the switches change nothing), so that what the
    chain does to them can be watched here."""
    monkeypatch.setattr(langevin_module, "check_chain_precision", lambda *args: None)


def flag_spy(net, fail_at=None):
    """An energy that records the TF32 switches at every call (and raises at call fail_at)."""
    seen = []

    def energy(x):
        if len(seen) == fail_at:
            raise RuntimeError("energy failed")
        seen.append(tf32_flags())
        return net(x)
    return energy, seen


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
@pytest.mark.parametrize("precision, inside", [("tf32", (True, True)), ("fp32", (False, False)),
                                               ("bf16", (False, False))])
def test_tf32_switches_are_on_during_the_chain_only(tf32_on_cpu, sampler_cls, precision,
                                                    inside):
    vae, net = mlp_models()
    energy, seen = flag_spy(net)
    sampler = sampler_cls(energy, vae, space="eps", step_size=0.01, n_steps=3,
                          network_precision=precision)
    sampler.sample(4, seed=0)
    assert seen == [inside] * 4
    assert tf32_flags() == (False, False)


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
def test_tf32_switches_are_restored_when_the_chain_raises(tf32_on_cpu, sampler_cls):
    vae, net = mlp_models()
    energy, seen = flag_spy(net, fail_at=2)
    sampler = sampler_cls(energy, vae, space="eps", step_size=0.01, n_steps=3,
                          network_precision="tf32")
    with pytest.raises(RuntimeError, match="energy failed"):
        sampler.sample(4, seed=0)
    assert seen == [(True, True)] * 2 and tf32_flags() == (False, False)


@pytest.mark.graphs
@pytest.mark.parametrize("graph_mode", ["unrolled", "step"])
def test_graphed_chain_code_sets_tf32_for_its_networks_only(tf32_on_cpu, graph_mode):
    vae, net = mlp_models()
    energy, seen = flag_spy(net)
    fast = FastSampler(energy, vae, space="eps", step_size=0.01, n_steps=3,
                       network_precision="tf32", graph_mode=graph_mode)
    starts, offset = fast.initial_states(4, seed=0, offset=0, device="cpu",
                                         dtype=torch.float32)
    chain = GraphedChain(fast, energy, vae, starts, graph_mode=graph_mode)
    chain.run(starts, seed=0, offset=offset)
    assert seen == [(True, True)] * 4 and tf32_flags() == (False, False)


def test_overlapping_tf32_windows_restore_when_the_last_one_closes(tf32_off):
    """Two chains overlapping in time (threads): the first to end must not switch TF32 off
    under the second; the last restores the values found before the first."""
    torch.backends.cudnn.allow_tf32 = True  # a mixed state, restored as it was
    first, second = tf32_window("tf32"), tf32_window("tf32")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert tf32_flags() == (True, True)
    second.__exit__(None, None, None)
    assert tf32_flags() == (False, True)
    with tf32_window("fp32"), tf32_window("bf16"):
        assert tf32_flags() == (False, True)


# --------------------------------------------------------------------------------------------
# CUDA: both precisions through the captured graphs
# --------------------------------------------------------------------------------------------
@pytest.mark.graphs
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("graph_mode", ["unrolled", "step"])
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_cuda_graph_captures_the_chain_at_its_precision(precision, graph_mode, tf32_off):
    vae, energy_net, _ = steep_models()
    vae, energy_net = vae.cuda(), energy_net.cuda()
    kw = dict(space="eps", step_size=0.01, n_steps=6, output="sample")
    eager = LangevinSampler(energy_net, vae, network_precision=precision, **kw).sample(
        64, seed=3, return_chain=True)
    fast = FastSampler(energy_net, vae, network_precision=precision, graph_mode=graph_mode,
                       **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the capture must succeed
        got = fast.sample(64, seed=3, return_chain=True)
        again = fast.sample(64, seed=3, return_chain=True)  # a replay of the captured graph
    assert fast.last_path == "graph" and tf32_flags() == (False, False)
    for r in (got, again):
        assert r.x.dtype == r.energies.dtype == torch.float32
        torch.testing.assert_close(r.x, eager.x, rtol=1e-3, atol=1e-3)
        # bf16 energies of ~10 sit on a grid of 0.06: one rounding may flip between the two.
        torch.testing.assert_close(r.energies, eager.energies, rtol=1e-2, atol=0.1)
    if precision == "bf16":  # measurably not the fp32 graph
        plain = FastSampler(energy_net, vae, graph_mode=graph_mode, **kw).sample(64, seed=3)
        assert not torch.allclose(plain, got.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
def test_bf16_runs_the_official_potential_in_float32_rows(sampler_cls):
    """potential="official": its correction (log sigmas, the decoder likelihood) is computed
    under autocast too and recorded float32; the chain stays finite and near fp32's."""
    vae, energy = tiny_models()
    eps = start_states(vae)
    kw = dict(space="eps", step_size=ETA, n_steps=3, potential="official", output="sample")
    a = sampler_cls(energy, vae, **kw).sample(eps, seed=5, return_chain=True)
    b = sampler_cls(energy, vae, network_precision="bf16", **kw).sample(eps, seed=5,
                                                                       return_chain=True)
    assert b.potentials.dtype == b.x.dtype == torch.float32
    assert torch.isfinite(b.potentials).all() and torch.isfinite(b.x).all()
    assert not torch.equal(a.potentials, b.potentials)
    # The potential sums thousands of pixel terms, each rounded to bf16: 1% of its size.
    torch.testing.assert_close(b.potentials, a.potentials, rtol=1e-2, atol=1.0)
    for s, t in zip(a.states, b.states):
        torch.testing.assert_close(t, s, rtol=1e-2, atol=1e-2)
