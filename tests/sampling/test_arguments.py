"""What the samplers accept and refuse: numbers as a user has them (NumPy scalars, 0-d
tensors), and one clear error per broken contract (argument types, the energy's output, the
generator's use of its inputs, dtypes, non-finite initial states)."""
import numpy as np
import pytest
import torch
from torch import nn

from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import MLPEnergy, MLPVAE
from vaebm_fast.sampling import ChainDivergedError

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLERS = [LangevinSampler, FastSampler]


def models():
    torch.manual_seed(0)
    return (MLPVAE(data_dim=2, latent_dim=2, hidden=8, depth=1).eval(),
            MLPEnergy(in_dim=2, hidden=8, depth=1))


def data_sampler(cls, energy, **kw):
    args = dict(space="data", step_size=0.01, n_steps=3, data_shape=(2,))
    args.update(kw)
    return cls(energy, **args)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_numpy_scalars_and_0d_tensors_are_numbers(cls):
    vae, energy = models()
    plain = cls(energy, vae, space="eps", step_size=0.01, n_steps=3, noise_scale=0.05,
                grad_clip=2.0).sample(4, seed=7, offset=100)
    for number in (np.float32, np.float64, torch.tensor):
        integer = torch.tensor if number is torch.tensor else np.int64
        sampler = cls(energy, vae, space="eps", step_size=number(0.01), n_steps=integer(3),
                      noise_scale=number(0.05), grad_clip=number(2.0))
        got = sampler.sample(integer(4), seed=integer(7), offset=integer(100))
        assert torch.equal(got, plain), number
    reuse = cls(energy, space="data", step_size=0.01, n_steps=1, data_shape=(2,),
                reuse_prob=np.float64(0.5), clamp=(np.float32(-1), torch.tensor(1.0)))
    assert reuse.reuse_prob == 0.5 and reuse.clamp == (-1.0, 1.0)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_bools_strings_and_fractions_are_refused_naming_the_argument(cls):
    vae, energy = models()
    for name, bad, kind in [("step_size", True, "bool"), ("n_steps", True, "bool"),
                            ("n_steps", 2.0, "float"), ("grad_clip", "1", "str"),
                            ("noise_scale", "0.1", "str"), ("reuse_prob", None, "NoneType"),
                            ("clamp", "ab", "str"), ("clamp", ("a", "b"), "str")]:
        with pytest.raises(TypeError, match=rf"^{name} must be .*\(got {kind} "):
            data_sampler(cls, energy, **{name: bad})
    sampler = data_sampler(cls, energy)
    for bad, kind in [(True, "bool"), (2.7, "float"), ("4", "str"), (None, "NoneType"),
                      (np.float64(4.0), "float64")]:
        with pytest.raises(TypeError, match=rf"^the number of chains must be a positive int "
                                            rf".*\(got {kind} "):
            sampler.sample(bad, seed=0)
    for name, bad, kind in [("seed", True, "bool"), ("seed", np.float64(1), "float64"),
                            ("offset", 1.5, "float"), ("offset", "0", "str")]:
        with pytest.raises(TypeError, match=rf"^{name} must be .*\(got {kind} "):
            sampler.sample(4, **{"seed": 0, name: bad})
    with pytest.raises(ValueError, match=r"offset must be an int in \[0, 2\*\*63\)"):
        sampler.sample(4, seed=0, offset=-1)


def eps_sampler(cls, energy, generator, space="eps", **kw):
    return cls(energy, generator, space=space, step_size=0.01, n_steps=3, **kw)


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize("energy, error, message", [
    (lambda x: x.sum().item(), TypeError,
     r"energy must return a tensor of shape \[B\] = \[4\] \(got float at step 0\)"),
    (lambda x: x.sum(1).detach(), ValueError,
     r"energy's output does not depend on its input through autograd at step 0"),
    (lambda x: torch.zeros(x.shape[0]), ValueError, r"does not depend on its input"),
    (lambda x: (x * 100).sum(1).long(), TypeError,
     r"energy must return a real floating-point tensor \(got torch.int64 at step 0\)"),
    (lambda x: x.sum(1).to(torch.complex64), TypeError,
     r"real floating-point tensor \(got torch.complex64"),
])
def test_energy_contract_errors(cls, energy, error, message):
    with pytest.raises(error, match=message):
        data_sampler(cls, energy).sample(4, seed=0)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_energy_ignoring_its_input_with_parameters_of_its_own(cls):
    """A module energy that ignores x still has an autograd graph (through its weights): the
    missing gradient with respect to the state is what gives it away."""
    _, inner = models()

    class Ignoring(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.zeros_like(x))

    with pytest.raises(ValueError, match="does not depend on its input"):
        data_sampler(cls, Ignoring()).sample(4, seed=0)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_energy_output_shape_checked_at_every_step(cls):
    calls = {"n": 0}

    def energy(x):
        calls["n"] += 1
        e = (x ** 2).sum(1)
        return e if calls["n"] == 1 else e[:1]  # [B] at step 0, then [1] (would broadcast)

    with pytest.raises(ValueError, match=r"energy must return shape \[B\] = \[4\] \(got \[1\] "
                                         r"at step 1\); its shape must not change"):
        data_sampler(cls, energy).sample(4, seed=0)


class DeterministicDecoder(nn.Module):
    """decode_eps ignores eps_x: a deterministic decoder, meant for space='latent'."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.latent_shapes, self.data_shape = [(2,)], (2,)

    def decode_eps(self, eps_z, eps_x=None):
        return self.lin(eps_z[0])


@pytest.mark.parametrize("cls", SAMPLERS)
def test_generator_ignoring_eps_x_points_to_latent_space(cls):
    _, energy = models()
    gen = DeterministicDecoder()
    with pytest.raises(ValueError, match="decode_eps ignores eps_x in space='eps'.*use "
                                         "space='latent' for a deterministic decoder"):
        eps_sampler(cls, energy, gen).sample(4, seed=0)
    eps_sampler(cls, energy, gen, space="latent").sample(4, seed=0)  # the fix works


@pytest.mark.parametrize("cls", SAMPLERS)
def test_sample_dtype_must_match_the_model(cls):
    vae, energy = models()
    with pytest.raises(TypeError, match=r"the chain state is torch.float64 but the generator's "
                                        r"parameters are torch.float32: pass "
                                        r"dtype=torch.float32"):
        eps_sampler(cls, energy, vae).sample(4, seed=0, dtype=torch.float64)
    with pytest.raises(TypeError, match="but the energy's parameters are torch.float32"):
        data_sampler(cls, energy).sample(torch.zeros(4, 2, dtype=torch.float64), seed=0)
    x = eps_sampler(cls, energy.double(), vae.double()).sample(4, seed=0, dtype=torch.float64)
    assert x.dtype == torch.float64


@pytest.mark.parametrize("cls", SAMPLERS)
def test_non_finite_initial_states_are_bad_input_not_divergence(cls):
    vae, energy = models()
    x0 = torch.zeros(4, 2)
    x0[2, 1] = float("nan")
    x0[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"x0 hold NaN/Inf in 2 of 4 chains: start the chains "
                                         r"from finite states") as info:
        data_sampler(cls, energy).sample(x0, seed=0)
    assert not isinstance(info.value, ChainDivergedError)
    states = [torch.zeros(4, 2), torch.zeros(4, 2)]
    states[1][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"initial states hold NaN/Inf in 1 of 4 chains"):
        eps_sampler(cls, energy, vae).sample(states, seed=0)
    # Without the check the chain runs and returns what it computed.
    assert not torch.isfinite(data_sampler(cls, energy).sample(x0, seed=0,
                                                               check_finite=False)).all()
