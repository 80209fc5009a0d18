"""No hidden global state: samplers leave the caller's modules as they found them, even when
two threads sample with one module at once; the default backend is per thread."""
import threading

import torch
from torch import nn

from vaebm_fast import FastSampler, LangevinSampler
from vaebm_fast.models import MLPEnergy, MLPVAE


class _Gate(nn.Module):
    """Wraps an energy; before its ``n``-th call (1-based) ``actions[n]`` runs (sets or waits
    for an event): the two threads' chains are made to overlap in a fixed order."""

    def __init__(self, energy, actions):
        super().__init__()
        self.energy, self.actions, self.calls = energy, actions, 0

    def forward(self, x):
        self.calls += 1
        if self.calls in self.actions:
            self.actions[self.calls]()
        return self.energy(x)


def _overlapping_chains(make_sampler, energy, generator, n=8):
    """Two chains on one shared energy in two threads, overlapping as A starts, B starts,
    A ends, B ends (the order that left a saved-and-restored flag wrong for good)."""
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    wait = lambda event: (lambda: assert_set(event.wait(timeout=60)))  # noqa: E731
    errors, results = [], {}

    def run(name, seed, actions, before=None, after=None):
        try:
            if before is not None:
                before.wait(timeout=60)
            results[name] = make_sampler(_Gate(energy, actions), generator).sample(n, seed=seed)
        except Exception as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)
        finally:
            if after is not None:
                after.set()

    threads = [threading.Thread(target=run, args=("a", 0, {1: a_in.set, 2: wait(b_in)}),
                                kwargs=dict(after=a_done)),
               threading.Thread(target=run, args=("b", 1, {1: b_in.set, 2: wait(a_done)}),
                                kwargs=dict(before=a_in))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def assert_set(flag):
    assert flag, "the other thread's chain never got there"


def test_two_threads_sharing_an_energy_leave_it_trainable():
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2).eval()
    energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
    flags = [p.requires_grad for p in energy.parameters()]
    vae_flags = [p.requires_grad for p in vae.parameters()]
    _overlapping_chains(lambda e, g: LangevinSampler(e, g, space="eps", step_size=0.01,
                                                     n_steps=4), energy, vae)
    assert [p.requires_grad for p in energy.parameters()] == flags
    assert [p.requires_grad for p in vae.parameters()] == vae_flags
    assert all(p.grad is None for p in [*energy.parameters(), *vae.parameters()])
    energy(torch.randn(8, 2)).mean().backward()  # still trainable
    assert all(p.grad is not None for p in energy.parameters() if p.requires_grad)


def test_two_threads_sharing_both_modules_give_the_sequential_samples():
    """Fast and eager chains, one energy and one generator shared by two threads at once: each
    thread gets the samples it gets alone, and the modules come out as they went in."""
    torch.manual_seed(0)
    vae = MLPVAE(data_dim=2, latent_dim=2, hidden=16, depth=2).eval()
    energy = MLPEnergy(in_dim=2, hidden=16, depth=2)
    state = {k: v.clone() for k, v in [*energy.state_dict().items(), *vae.state_dict().items()]}
    flags = [p.requires_grad for p in [*energy.parameters(), *vae.parameters()]]
    for cls in (LangevinSampler, FastSampler):
        def make(e, g, cls=cls):
            return cls(e, g, space="eps", step_size=0.01, n_steps=4)
        alone = {name: make(energy, vae).sample(8, seed=seed)
                 for name, seed in (("a", 0), ("b", 1))}
        together = _overlapping_chains(make, energy, vae)
        assert all(torch.equal(together[k], alone[k]) for k in alone), cls.__name__
    assert [p.requires_grad for p in [*energy.parameters(), *vae.parameters()]] == flags
    assert not vae.training and energy.training
    after = {k: v for k, v in [*energy.state_dict().items(), *vae.state_dict().items()]}
    assert all(torch.equal(after[k], v) for k, v in state.items())
