"""Chain benchmarks: the Langevin update alone, one Langevin step and a whole 16-step chain.

    vaebm-fast bench chains [--quick] [--only REGEX] [--set KEY=VALUE ...] [--out DIR]
    vaebm-fast bench chains --list                     # the cases
    python -m benchmarks.bench_chains --quick          # the same, from a checkout

Models (``setups``):

* ``toy``: the 2-D toy VAEBM as ``vaebm_fast.presets`` builds it for "25gaussians" (MLPVAE +
  MLPEnergy, hidden 128, depth 3), eps space, the preset's sampling step size, as many chains
  as the demo samples (5,000).
* ``cifar_b32`` / ``cifar_b64``: the official CIFAR-32 EBM (``official_ebm("cifar32")``) on a
  CIFAR-scale hierarchical VAE (``HierarchicalVAEConfig.preset("cifar10")``: 30 latent groups
  [20, 16, 16], 129M parameters at the official width 128), eps space, step size 8e-5 (the
  official CIFAR-10 test setting), batch 32 and 64. ``--set cifar_channels=N`` narrows both
  networks (the state shapes stay CIFAR-10's): at width 128 one step at batch 32 takes minutes
  on a 2-core CPU.
* ``igebm``: a pixel-space IGEBM chain (data space, [3, 32, 32] images, the CIFAR-32 EBM
  architecture at width ``igebm_channels``), x <- clamp(x - lambda clip(grad E, 0.01) + 0.005
  xi, 0, 1) with lambda = 10, started from a replay buffer of 10,000 chains (95% reused).

Cases: ``update_<setup>`` (the update op alone, on that setup's chain state), ``step_<setup>``
(one Langevin step: potential, gradient, update, on a persistent state) and ``chain16_<setup>``
(a whole chain as a user calls it: start draws, 16 steps, the returned samples).

Variants (every case lists all of them, timed or "not run" with the reason), by role:

* baselines, what a user would otherwise run: ``plain PyTorch``, the textbook loop
  (:func:`plain_step`: ``torch.randn`` start states, ``torch.autograd.grad`` of the potential,
  ``add_`` update with ``torch.randn_like`` noise; the models frozen as our samplers freeze
  them), the baseline of every speed-up; ``official-style``: :func:`official_style_chain`, the
  official VAEBM loop's per-step waste (docs/design.md#official-loop-waste) reproduced with
  our models (a second ratio, "vs official-style"); ``torch.compile`` of the plain step,
  skipped with the reason when compiling fails or takes longer than ``--compile-timeout``;
* reference: ``eager reference``, ``LangevinSampler(backend="eager")`` (Philox in int64 torch
  ops): a correctness oracle, timed for information, never a baseline;
* ours: ``fused`` (``LangevinSampler(backend="native")``, the fused C++/CUDA update), ``fast``
  (``vaebm_fast.FastSampler`` with ``graphs=False``), ``fast + CUDA graph`` (FastSampler
  with ``graphs=True``, its default: the whole chain unrolled into one graph; CUDA only) and
  ``fast + step graph`` (``graph_mode="step"``: one step's graph replayed K times; CUDA only).

Peak memory: on the CPU, the growth of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs`` after ``malloc_trim``) during the variant's first (warm-up) call; on
CUDA, ``torch.cuda.max_memory_allocated`` over that call minus the memory allocated before it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import math
import re
import resource
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._heap import trim_heap
from ..sampling import FastSampler
from ..sampling.potentials import OFFICIAL_METHOD, official_correction
from .harness import (Case, Variant, add_run_arguments, print_catalogue, run_case,
                      select_keys, torch_threads, usage_error)
from .profile import gpu_idle_share
from .record import Recorder
from .table import PLAIN

N_STEPS = 16
OFFICIAL, EAGER, FUSED, FAST, COMPILE, GRAPH, STEP_GRAPH = (
    "official-style", "eager reference", "fused", "fast", "torch.compile", "fast + CUDA graph",
    "fast + step graph")
VARIANTS = (PLAIN, OFFICIAL, COMPILE, EAGER, FUSED, FAST, GRAPH, STEP_GRAPH)
ROLE = {PLAIN: "baseline", OFFICIAL: "baseline", COMPILE: "baseline", EAGER: "reference",
        FUSED: "ours", FAST: "ours", GRAPH: "ours", STEP_GRAPH: "ours"}
PROG = "vaebm-fast bench chains"

# Sizes: full, and --quick (every case and variant in a few seconds). --set KEY=VALUE overrides.
FULL = {"toy_batch": 5000, "cifar_batches": (32, 64), "cifar_channels": 128,
        "cifar_ebm_channels": 128, "cifar_groups": 30, "igebm_batch": 64, "igebm_channels": 32,
        "replay_capacity": 10_000, "n_steps": N_STEPS,
        "repeats_toy": 7, "repeats_igebm": 3, "repeats_cifar": 1, "compile_setups": ".*",
        # a CIFAR-scale step / chain takes minutes on a CPU: one call, no warm-up
        "warmup_cifar": 0}
QUICK = {"toy_batch": 64, "cifar_batches": (2,), "cifar_channels": 8, "cifar_ebm_channels": 8,
         "cifar_groups": 3, "igebm_batch": 4, "igebm_channels": 4, "replay_capacity": 64,
         "n_steps": N_STEPS, "repeats_toy": 3, "repeats_igebm": 2, "repeats_cifar": 2,
         "compile_setups": ".*"}
TIMING_FULL = {"warmup": 1, "min_sample_s": 0.2}
TIMING_QUICK = {"warmup": 1, "min_sample_s": 0.001}
COMPILE_TIMEOUT_S = 300.0


# ------------------------------------------------------------------------------ models

@dataclass
class Setup:
    """One model configuration and how to sample it (``sampler`` kwargs of LangevinSampler)."""

    key: str
    title: str
    energy: nn.Module
    generator: Optional[nn.Module]
    batch: int
    sampler: Dict[str, Any]
    repeats: int
    device: str = "cpu"
    replay_capacity: int = 0
    reuse_prob: float = 0.0
    notes: List[str] = field(default_factory=list)
    size: str = ""  # the sizes in a few words (the results table's size column)
    compiled: Dict[str, Any] = field(default_factory=dict)  # cache shared by step/chain cases

    @property
    def space(self) -> str:
        return self.sampler["space"]

    def state_shapes(self) -> List[Tuple[int, ...]]:
        if self.space == "data":
            return [tuple(self.sampler["data_shape"])]
        return [tuple(s) for s in self.generator.latent_shapes] + [tuple(self.generator.data_shape)]

    def make_buffer(self):
        """A replay buffer filled with uniform [0, 1] images (each variant gets its own)."""
        from ..sampling import ReplayBuffer
        if not self.replay_capacity:
            return None
        buffer = ReplayBuffer(self.replay_capacity, self.state_shapes(), device=self.device)
        gen = torch.Generator().manual_seed(1)
        buffer.push([torch.rand(self.replay_capacity, *s, generator=gen).to(self.device)
                     for s in self.state_shapes()])
        return buffer


def toy_setup(sizes: dict, device: str) -> Setup:
    from ..presets import build_energy, build_vae, preset
    p = preset("25gaussians")
    vae, energy = build_vae(p["vae"]).to(device).eval(), build_energy(p["energy"]).to(device).eval()
    return Setup("toy", f"2-D toy VAEBM (25gaussians preset), batch {sizes['toy_batch']}",
                 energy, vae, sizes["toy_batch"],
                 dict(space="eps", step_size=p["sample_step_size"], output="sample"),
                 sizes["repeats_toy"], device, size=f"batch {sizes['toy_batch']}, 2-D",
                 notes=[f"MLPVAE {p['vae']} + MLPEnergy {p['energy']}, untrained weights; "
                        f"step size {p['sample_step_size']} (the preset's sampling setting)"])


def cifar_setup(sizes: dict, batch: int, device: str) -> Setup:
    from ..models import HierarchicalVAE, HierarchicalVAEConfig, official_ebm
    c, ce, groups = sizes["cifar_channels"], sizes["cifar_ebm_channels"], sizes["cifar_groups"]
    config = HierarchicalVAEConfig.preset("cifar10", num_channels_enc=c, num_channels_dec=c,
                                          num_groups_per_scale=groups)
    vae = HierarchicalVAE(config).to(device).eval()
    energy = official_ebm("cifar32", n_channel=ce).to(device).eval()
    n_vae = sum(p.numel() for p in vae.parameters())
    n_ebm = sum(p.numel() for p in energy.parameters())
    official = c == 128 and ce == 128 and groups == 30
    title = (f"CIFAR-32 EBM + CIFAR-scale hierarchical VAE, batch {batch}"
             + ("" if official else f" (narrowed: VAE width {c}, EBM width {ce}, {groups} groups)"))
    return Setup(f"cifar_b{batch}", title, energy, vae, batch,
                 dict(space="eps", step_size=8e-5, output="mean"), sizes["repeats_cifar"], device,
                 size=f"batch {batch}, VAE width {c} ({n_vae / 1e6:.3g}M), EBM width {ce}, "
                      f"{groups} groups",
                 notes=[f"HierarchicalVAE preset cifar10 with num_channels_enc/dec={c}, "
                        f"num_groups_per_scale={groups} ({n_vae:,} parameters; the official "
                        f"width 128 with 30 groups has 129,107,204); official_ebm('cifar32', "
                        f"n_channel={ce}) ({n_ebm:,} parameters; 128 is official); untrained "
                        f"weights; step size 8e-5 (official CIFAR-10 test setting)"])


def igebm_setup(sizes: dict, device: str) -> Setup:
    from ..models import official_ebm
    c = sizes["igebm_channels"]
    energy = official_ebm("cifar32", n_channel=c).to(device).eval()
    lam = 10.0
    return Setup("igebm", f"pixel-space IGEBM chain with a replay buffer, batch "
                 f"{sizes['igebm_batch']}", energy, None, sizes["igebm_batch"],
                 dict(space="data", step_size=2 * lam, noise_scale=0.005, grad_clip=0.01,
                      clamp=(0.0, 1.0), data_shape=(3, 32, 32)),
                 sizes["repeats_igebm"], device, replay_capacity=sizes["replay_capacity"],
                 reuse_prob=0.95, size=f"batch {sizes['igebm_batch']}, [3, 32, 32], EBM width {c}",
                 notes=[f"official_ebm('cifar32', n_channel={c}) on [3, 32, 32] images in data "
                        f"space: x <- clamp(x - {lam:g} clip(grad E, 0.01) + 0.005 xi, 0, 1); "
                        f"start states from a {sizes['replay_capacity']:,}-chain replay buffer "
                        f"(95% reused, the rest fresh uniform), final states pushed back"])


# ------------------------------------------------------------------------------ the official loop

def official_style_chain(energy: nn.Module, generator: Optional[nn.Module], n: int, *,
                         space: str, n_steps: int, step_size: float,
                         noise_scale: Optional[float] = None, grad_clip: Optional[float] = None,
                         clamp: Optional[Tuple[float, float]] = None,
                         data_shape: Optional[Sequence[int]] = None, output: str = "mean",
                         replay: Optional[list] = None, replay_capacity: int = 10_000,
                         reuse_prob: float = 0.0, device="cpu") -> torch.Tensor:
    """A Langevin chain written the way the official VAEBM code writes it, with the per-step
    waste listed in docs/design.md#official-loop-waste, so the benchmark shows what a
    user gains over the code they know. Same chain as ``LangevinSampler`` (same K = n_steps
    gradient steps, same output shape); the noise comes from torch's global generator.

    Reproduced, per step:

    * waste 1, EBM weight gradients in every Langevin backward: the energy's parameters
      keep ``requires_grad=True`` (the official freeze loops over a consumed parameter
      generator) and the step calls ``.backward()`` on the potential, which also accumulates
      the EBM's weight gradients (the VAE's parameters are frozen: waste 1 names only the EBM).
    * waste 2, weight-norm weights recomputed at every step: no ``frozen_normalized_weights``;
      every WNConv2d recomputes W_eff = exp(g) W / ||W|| in every forward, and for the EBM the
      backward flows through that computation too.
    * waste 3, two host-device syncs per step: ``x.min().item()`` and ``x.max().item()``
      asserting the decoded images' range ([0, 1] for images; finite for the toy).
    * waste 4, noise drawn on the host and copied: ``torch.randn(shape).to(device)`` per
      state group and step (and for the start states).
    * waste 5 (data space with ``replay``): a Python list of per-sample CPU tensors, read with
      ``torch.stack`` of list items, trimmed with ``pop(0)``, written one sample at a time.
    * The update as the official code writes it: per state tensor, separate in-place passes
      for the gradient term, the noise term, [the clip,] [the clamp], on ``.data``.
    * eps space with a hierarchical VAE: the official potential, E(x) - log p(z) - log p(x|z)
      at the reparameterised point (the samplers' ``potential="official"``, the formula in
      vaebm_fast/sampling/potentials.py); other generators: E(T(eps)) + 1/2 ||eps||^2, the
      prior differentiated by autograd.

    Not reproduced (they cost nothing in a single-process sampling chain): waste 6 (ranks
    seeded alike) and 7 (data-dependent init over loaded weights).

    Returns the samples: data space x; eps space the decoder mean at the final eps_z
    (``output="mean"``) or T(eps_z, eps_x) (``output="sample"``).
    """
    sigma = math.sqrt(step_size) if noise_scale is None else noise_scale

    def host_randn(*shape):
        return torch.randn(*shape).to(device)  # waste 4: drawn on the CPU, then copied

    if space == "data":
        shapes = [tuple(data_shape)]
    else:
        shapes = [tuple(s) for s in generator.latent_shapes] + [tuple(generator.data_shape)]

    # Start states.
    if space == "data":
        n_reused = 0
        if replay is not None and replay and reuse_prob > 0:
            n_reused = int(torch.distributions.Binomial(n, torch.tensor(reuse_prob)).sample())
        fresh = torch.rand(n - n_reused, *shapes[0]).to(device)
        if n_reused:
            index = torch.randint(len(replay), (n_reused,)).tolist()
            old = torch.stack([replay[i] for i in index]).to(device)  # waste 5
            states = [torch.cat([old, fresh])]
        else:
            states = [fresh]
    else:
        states = [host_randn(n, *s) for s in shapes]

    for p in energy.parameters():  # waste 1: the freeze does not happen
        p.requires_grad_(True)
    frozen_vae = []
    if generator is not None:
        for p in generator.parameters():
            frozen_vae.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        for _ in range(n_steps):
            _official_step(energy, generator, states, space=space, step_size=step_size,
                           sigma=sigma, grad_clip=grad_clip, clamp=clamp, device=device)
        energy.zero_grad(set_to_none=True)
        with torch.no_grad():
            if space == "data":
                x = states[0].detach()
            elif output == "mean":
                x = generator.decode_eps(states[:-1], None)
            else:
                x = generator.decode_eps(states[:-1], states[-1])
    finally:
        for p, flag in frozen_vae:
            p.requires_grad_(flag)
    if replay is not None and space == "data":
        for row in states[0].detach().cpu():  # waste 5: one list item per sample
            replay.append(row.clone())
        while len(replay) > replay_capacity:
            replay.pop(0)
    return x


def _official_step(energy, generator, states, *, space, step_size, sigma, grad_clip, clamp,
                   device) -> None:
    """One step of :func:`official_style_chain` (its docstring lists what is reproduced)."""
    for s in states:
        s.requires_grad_(True)
    x, potential = _official_potential(energy, generator, states, space)
    lo, hi = x.min().item(), x.max().item()  # waste 3: two host syncs per step
    if x.dim() == 4:
        assert 0.0 <= lo and hi <= 1.0, (lo, hi)
    else:
        assert math.isfinite(lo) and math.isfinite(hi), (lo, hi)
    potential.sum().backward()  # waste 1: also the EBM's weight gradients
    for s in states:
        grad = s.grad.data
        if grad_clip is not None:
            grad.clamp_(-grad_clip, grad_clip)
        s.data.add_(grad, alpha=-step_size / 2)  # separate passes per term
        s.data.add_(torch.randn(s.shape).to(device), alpha=sigma)  # waste 4
        if clamp is not None:
            s.data.clamp_(clamp[0], clamp[1])
        s.grad = None
        s.requires_grad_(False)


def _official_potential(energy, generator, states, space):
    """(x, U [B]) as the official code differentiates it (see official_style_chain)."""
    if space == "data":
        x = states[0]
        return x, energy(x)
    eps_z, eps_x = states[:-1], states[-1]
    prior = sum(0.5 * s.pow(2).flatten(1).sum(1) for s in states)
    if callable(getattr(generator, OFFICIAL_METHOD, None)):
        # E(x) - log p(z) - log p(x|z) up to constants: the paper's potential plus the
        # official correction (vaebm_fast/sampling/potentials.py states the formula).
        x, correction = official_correction(generator, eps_z, eps_x)
        return x, energy(x) + prior + correction
    x = generator.decode_eps(eps_z, eps_x)
    return x, energy(x) + prior


def official_style_update(states: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *,
                          step_size: float, noise_scale: Optional[float] = None,
                          device="cpu") -> None:
    """The update step of :func:`official_style_chain` alone: per tensor, a pass for the
    gradient term and one for host-drawn noise (``grads`` already hold the prior term)."""
    sigma = math.sqrt(step_size) if noise_scale is None else noise_scale
    with torch.no_grad():
        for s, g in zip(states, grads):
            s.add_(g, alpha=-step_size / 2)
            s.add_(torch.randn(s.shape).to(device), alpha=sigma)


# ------------------------------------------------------------------------------ our variants

def _sampler(setup: Setup, backend: str, n_steps: int, buffer=None):
    from ..sampling import LangevinSampler
    return LangevinSampler(setup.energy, setup.generator, n_steps=n_steps, backend=backend,
                           replay_buffer=buffer, reuse_prob=setup.reuse_prob if buffer else 0.0,
                           **setup.sampler)


def _start_states(setup: Setup, seed: int = 0) -> List[torch.Tensor]:
    sampler = _sampler(setup, "auto", 1, setup.make_buffer())
    states, _ = sampler.initial_states(setup.batch, seed=seed, offset=0, device=setup.device,
                                       dtype=torch.float32)
    return states


def sampler_step_fn(setup: Setup, backend: str) -> Callable[[], None]:
    """One step of ``LangevinSampler(backend=...)`` on a persistent state: the body of its
    chain loop (potential, gradient of E, fused update). Call inside ``frozen(...)``."""
    from ..ops import langevin_step_
    sampler = _sampler(setup, backend, 1)
    states = _start_states(setup)
    offset = [sum(s.numel() for s in states)]

    def step():
        with torch.enable_grad():
            for s in states:
                s.requires_grad_(True)
            _, energy, _ = sampler.potential(states)
            grads = torch.autograd.grad(energy.sum(), states)
        for s in states:
            s.requires_grad_(False)
        offset[0] = langevin_step_(
            states, list(grads), step_size=sampler.step_size, seed=0, offset=offset[0],
            prior_weight=sampler.prior_weight, noise_scale=sampler.noise_scale,
            grad_clip=sampler.grad_clip, clamp=sampler.clamp, backend=backend)
    return step


def plain_update_(states: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *,
                  step_size: float, sigma: float, prior_weight: float,
                  grad_clip: Optional[float] = None,
                  clamp: Optional[Tuple[float, float]] = None) -> None:
    """The Langevin update as a user writes it in plain PyTorch, in place, per tensor:
    ``t.add_(clip(g) + lambda t, alpha=-eta/2).add_(torch.randn_like(t), alpha=sigma)``
    [``.clamp_``]: the baseline of the update, step and chain cases."""
    with torch.no_grad():
        for s, g in zip(states, grads):
            if grad_clip is not None:
                g = g.clamp(-grad_clip, grad_clip)
            s.add_(g + prior_weight * s if prior_weight else g, alpha=-step_size / 2)
            s.add_(torch.randn_like(s), alpha=sigma)
            if clamp is not None:
                s.clamp_(clamp[0], clamp[1])


def plain_step(setup: Setup) -> Callable[[List[torch.Tensor]], None]:
    """One step of the textbook loop (also what ``torch.compile`` is given): autograd for the
    gradient of E(T(eps)) with respect to the state, then :func:`plain_update_` (prior weight 1
    in eps space, 0 in data space). Updates ``states`` in place."""
    kw = setup.sampler
    update = dict(step_size=kw["step_size"],
                  sigma=(math.sqrt(kw["step_size"]) if kw.get("noise_scale") is None
                         else kw["noise_scale"]),
                  prior_weight=0.0 if setup.space == "data" else 1.0,
                  grad_clip=kw.get("grad_clip"), clamp=kw.get("clamp"))
    energy, generator = setup.energy, setup.generator

    def step(states: List[torch.Tensor]) -> None:
        with torch.enable_grad():
            leaves = [s.detach().requires_grad_(True) for s in states]
            x = leaves[0] if generator is None else generator.decode_eps(leaves[:-1], leaves[-1])
            grads = torch.autograd.grad(energy(x).sum(), leaves)
        plain_update_(states, grads, **update)
    return step


def plain_chain_fn(setup: Setup, step: Callable, n_steps: int) -> Callable[[], torch.Tensor]:
    """A whole chain around a plain (or compiled) step: ``torch.randn`` start draws (uniform
    in data space), ``n_steps`` steps, the samples (decoder mean / sample as the sampler
    returns), under ``frozen`` as the sampler runs."""
    from ..sampling.langevin import frozen
    output = setup.sampler.get("output", "mean")

    def chain():
        states = [torch.randn(setup.batch, *s, device=setup.device) for s in setup.state_shapes()]
        if setup.space == "data":
            states[0].uniform_()
        with frozen(setup.energy, setup.generator):
            for _ in range(n_steps):
                step(states)
            with torch.no_grad():
                if setup.space == "data":
                    return states[0]
                return setup.generator.decode_eps(states[:-1],
                                                  None if output == "mean" else states[-1])
    return chain


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`_Timeout` in the main thread after ``seconds`` (no limit elsewhere)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f"took longer than {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


# ------------------------------------------------------------------------------ peak memory

def _status_kb(name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def measure_peak_mb(fn: Callable[[], Any], device: str) -> Tuple[Optional[float], str]:
    """Run ``fn`` once; return (peak memory growth in MB during the call, how it was measured)."""
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20, "cuda max_memory_allocated"
    trim_heap()  # freed pages still mapped would count as resident before the call
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        if before is not None and peak is not None:
            return (peak - before) / 1024, "VmHWM growth"
    except OSError:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024, "ru_maxrss growth (lower bound)"


class _MemoryProbe:
    """Wraps variant callables so the first call (the harness's warm-up) measures peak memory."""

    def __init__(self, device: str):
        self.device, self.peaks, self.how = device, {}, None

    def wrap(self, name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            if name in self.peaks:
                return fn()
            result = []
            self.peaks[name], self.how = measure_peak_mb(lambda: result.append(fn()), self.device)
            return result[0]
        return call


# ------------------------------------------------------------------------------ cases

@dataclass
class ChainCase:
    """A harness Case plus what the chain report needs: samples per call, steps per call, the
    peak-memory probe, and a context to hold open while it runs."""

    case: Case
    batch: int
    steps_per_call: int
    probe: _MemoryProbe
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def _gpu_only(device: str) -> Optional[str]:
    if torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device (this run is on the CPU)"
    return None


def update_case(setup: Setup) -> ChainCase:
    """The update op alone on the setup's chain state, random gradients."""
    from ..ops import backend_availability, langevin_step_
    gen = torch.Generator().manual_seed(0)
    shapes = [(setup.batch, *s) for s in setup.state_shapes()]
    grads = [torch.randn(s, generator=gen).to(setup.device) for s in shapes]
    start = [torch.randn(s, generator=gen).to(setup.device) for s in shapes]
    numel = sum(g.numel() for g in grads)
    kw = setup.sampler
    lam = 0.0 if setup.space == "data" else 1.0
    common = dict(step_size=kw["step_size"], noise_scale=kw.get("noise_scale"), seed=0,
                  prior_weight=lam, grad_clip=kw.get("grad_clip"), clamp=kw.get("clamp"))
    probe = _MemoryProbe(setup.device)

    def ours(backend):
        xs, offset = [x.clone() for x in start], [0]

        def call():
            offset[0] = langevin_step_(xs, grads, offset=offset[0], backend=backend, **common)
        return call

    official_xs, plain_xs = [x.clone() for x in start], [x.clone() for x in start]
    sigma = (math.sqrt(kw["step_size"]) if kw.get("noise_scale") is None
             else kw["noise_scale"])
    variants = [Variant(PLAIN, probe.wrap(PLAIN, lambda: plain_update_(
        plain_xs, grads, step_size=kw["step_size"], sigma=sigma, prior_weight=lam,
        grad_clip=kw.get("grad_clip"), clamp=kw.get("clamp"))), role="baseline",
        note="plain_update_: per tensor, add_(clip(g) + lambda t, alpha=-eta/2), "
             "add_(torch.randn_like(t), alpha=sigma)[, clamp_]")]
    variants.append(Variant(OFFICIAL, probe.wrap(OFFICIAL, lambda: official_style_update(
        official_xs, grads, step_size=kw["step_size"], noise_scale=kw.get("noise_scale"),
        device=setup.device)), role="baseline",
        note="per tensor: add_(grad, alpha=-eta/2), then add_ of "
        "torch.randn(shape).to(device) (host noise, official-loop waste 4); the prior term is "
        "in grads"))
    variants.append(Variant(EAGER, probe.wrap(EAGER, ours("eager")), role="reference",
                            note="langevin_step_(backend='eager'): the reference (Philox in "
                                 "int64 torch ops), what LangevinSampler(backend='eager') runs"))
    skipped = {}
    why = backend_availability("langevin_step_", setup.device)["native"]
    if why is None:
        variants.append(Variant(FUSED, probe.wrap(FUSED, ours("native")),
                                note="langevin_step_(backend='native'): one pass, noise in "
                                     "registers"))
    else:
        skipped[FUSED] = why
    skipped[FAST] = "FastSampler is a chain API; the update it runs is the fused op"
    skipped[COMPILE] = "compiled as part of the step (step_ / chain16_ cases)"
    skipped[GRAPH] = _gpu_only(setup.device) or "a graph of the update alone is not offered"
    skipped[STEP_GRAPH] = skipped[GRAPH]
    case = Case(f"update_{setup.key}", f"Langevin update alone: {setup.title}",
                f"{len(shapes)} fp32 tensors, {numel:,} elements in all; each variant updates "
                f"its own copy of the state with fixed random gradients.",
                variants, baseline=PLAIN, ceiling_numel=numel, device=setup.device,
                skipped=skipped, size=setup.size + f", {len(shapes)} tensors, {numel:,} elements")
    return ChainCase(case, setup.batch, 1, probe)


def _compile_variant(setup: Setup, kind: str, n_steps: int, compile_timeout: Optional[float],
                     compile_options: Dict[str, str]) -> Tuple[Optional[Callable], str]:
    """(callable, note) or (None, reason it was skipped). The compiled step is shared by the
    setup's step and chain cases; compiling (and the first call) must end within the timeout.
    ``compile_options``: torch.compile's keywords (backend, and mode when given)."""
    spec = ", ".join(f"{k}={v!r}" for k, v in compile_options.items())
    if not compile_timeout:
        return None, ("not attempted (--compile-timeout 0; the --quick default: compiling "
                      "takes 10+ s per model on a 2-core CPU)")
    cache = setup.compiled
    if "error" in cache:
        return None, cache["error"]
    if "step" not in cache:
        torch._dynamo.reset()
        cache["step"] = torch.compile(plain_step(setup), **compile_options)
        cache["seconds"] = 0.0
    step = cache["step"]
    if kind == "step":
        from ..sampling.langevin import frozen
        states = _start_states(setup)

        def fn():
            step(states)
        context = frozen(setup.energy, setup.generator)
    else:
        fn, context = plain_chain_fn(setup, step, n_steps), contextlib.nullcontext()
    start = time.perf_counter()
    try:
        with time_limit(max(1.0, compile_timeout - cache["seconds"])), context:
            fn()  # compiles (or recompiles for the chain's guards)
    except _Timeout as e:
        cache["error"] = (f"torch.compile({spec}) of the eager step did not finish "
                          f"within --compile-timeout {compile_timeout:g} s ({e})")
        torch._dynamo.reset()
        return None, cache["error"]
    except Exception as e:  # any compile failure is reported, not raised
        cache["error"] = f"torch.compile({spec}) failed: {_first_line(e)}"
        torch._dynamo.reset()
        return None, cache["error"]
    cache["seconds"] += time.perf_counter() - start
    return fn, (f"torch.compile(step, {spec}) of the plain PyTorch step "
                f"(autograd gradient, add_ update, torch.randn_like noise); dynamo breaks "
                f"the graph at torch.autograd.grad; compile + first call took "
                f"{cache['seconds']:.0f} s in all (not timed)")


def step_case(setup: Setup, compile_timeout, compile_options) -> ChainCase:
    from ..sampling.langevin import frozen
    probe = _MemoryProbe(setup.device)
    official_energy = copy.deepcopy(setup.energy)
    official_generator = copy.deepcopy(setup.generator)
    for p in official_energy.parameters():  # as official_style_chain: EBM not frozen,
        p.requires_grad_(True)
    for p in (official_generator.parameters() if official_generator is not None else ()):
        p.requires_grad_(False)  # the VAE frozen
    kw = setup.sampler
    off_states = _start_states(setup)
    sigma = math.sqrt(kw["step_size"]) if kw.get("noise_scale") is None else kw["noise_scale"]

    def official_step():
        # The loop body of official_style_chain on a persistent state.
        _official_step(official_energy, official_generator, off_states, space=setup.space,
                       step_size=kw["step_size"], sigma=sigma, grad_clip=kw.get("grad_clip"),
                       clamp=kw.get("clamp"), device=setup.device)
        official_energy.zero_grad(set_to_none=True)

    plain_states, plain = _start_states(setup), plain_step(setup)
    variants = [Variant(PLAIN, probe.wrap(PLAIN, lambda: plain(plain_states)), role="baseline",
                        note="plain_step: autograd.grad of E(T(eps)) w.r.t. the state, then "
                             "plain_update_ (models frozen once for the case, as for ours)")]
    variants.append(Variant(OFFICIAL, probe.wrap(OFFICIAL, official_step), role="baseline",
                            note="the loop body of official_style_chain (its own model copies, "
                                 "weights not frozen): see the chain16 note"))
    variants.append(Variant(EAGER, probe.wrap(EAGER, sampler_step_fn(setup, "eager")),
                            role="reference",
                            note="LangevinSampler's step body, backend='eager' (models frozen "
                                 "once for the case, as a chain does)"))
    variants.append(Variant(FUSED, probe.wrap(FUSED, sampler_step_fn(setup, "native")),
                            note="LangevinSampler's step body, backend='native'"))
    skipped = {FAST: "FastSampler has no single-step API; see the chain16 case"}
    fn, note = _compile_variant(setup, "step", 1, compile_timeout, compile_options)
    if fn is None:
        skipped[COMPILE] = note
    else:
        variants.append(Variant(COMPILE, probe.wrap(COMPILE, fn), note=note, role="baseline"))
    skipped[GRAPH] = skipped[STEP_GRAPH] = _gpu_only(setup.device) or "see the chain16 case"
    case = Case(f"step_{setup.key}", f"One Langevin step: {setup.title}",
                "; ".join(setup.notes) + ". Each variant steps its own persistent state "
                "(potential, gradient, update); no start draws, no output decode.",
                variants, baseline=PLAIN, ceiling_numel=None, device=setup.device,
                skipped=skipped, size=setup.size)
    return ChainCase(case, setup.batch, 1, probe,
                     context=lambda: frozen(setup.energy, setup.generator))


def _official_replay(setup: Setup) -> Optional[list]:
    """The official-style replay buffer: a Python list of per-sample CPU tensors."""
    if not setup.replay_capacity:
        return None
    gen = torch.Generator().manual_seed(1)
    return list(torch.rand(setup.replay_capacity, *setup.state_shapes()[0], generator=gen))


def chain_case(setup: Setup, n_steps: int, compile_timeout, compile_options) -> ChainCase:
    probe = _MemoryProbe(setup.device)
    official_energy = copy.deepcopy(setup.energy)
    official_generator = copy.deepcopy(setup.generator)
    replay = _official_replay(setup)
    kw = dict(setup.sampler)

    def official():
        return official_style_chain(
            official_energy, official_generator, setup.batch, n_steps=n_steps, replay=replay,
            replay_capacity=setup.replay_capacity, reuse_prob=setup.reuse_prob,
            device=setup.device, **kw)

    def ours(backend):
        sampler = _sampler(setup, backend, n_steps, setup.make_buffer())
        return functools.partial(sampler.sample, setup.batch, seed=0)

    def fast(graphs: bool, graph_mode: str):
        """(FastSampler, its chain call)."""
        buffer = setup.make_buffer()
        sampler = FastSampler(setup.energy, setup.generator, n_steps=n_steps,
                              replay_buffer=buffer,
                              reuse_prob=setup.reuse_prob if buffer else 0.0, graphs=graphs,
                              graph_mode=graph_mode, **setup.sampler)
        return sampler, functools.partial(sampler.sample, setup.batch, seed=0)

    replay_note = ("; replay: official_style list of per-sample CPU tensors vs our on-device "
                   "ReplayBuffer" if setup.replay_capacity else "")
    plain_note = ("the textbook loop: torch.randn start states, then per step autograd.grad "
                  "and plain_update_ (plain_chain_fn around plain_step), models frozen"
                  + ("; no replay buffer: every chain starts fresh" if setup.replay_capacity
                     else ""))
    variants = [Variant(PLAIN, probe.wrap(PLAIN, plain_chain_fn(setup, plain_step(setup),
                                                                n_steps)),
                        role="baseline", note=plain_note)]
    variants.append(Variant(OFFICIAL, probe.wrap(OFFICIAL, official), role="baseline",
                            note="official_style_chain: official-loop wastes 1-5 (EBM weight "
                                 "gradients via .backward(), weight norm recomputed every "
                                 "forward, 2 host syncs per step, host-drawn noise, list replay "
                                 "buffer), separate update passes, the official potential"
                                 + replay_note))
    variants.append(Variant(EAGER, probe.wrap(EAGER, ours("eager")), role="reference",
                            note="LangevinSampler(backend='eager').sample(B, seed=0)"))
    variants.append(Variant(FUSED, probe.wrap(FUSED, ours("native")),
                            note="LangevinSampler(backend='native').sample(B, seed=0)"))
    skipped = {}
    gpu_only = _gpu_only(setup.device)
    for name, graphs, mode, reason in ((FAST, False, "unrolled", None),
                                       (GRAPH, True, "unrolled", gpu_only),
                                       (STEP_GRAPH, True, "step", gpu_only)):
        if reason is not None:
            skipped[name] = reason
            continue
        try:
            sampler, fn = fast(graphs, mode)
            with time_limit(compile_timeout):  # prepare (and capture) outside the timing
                if graphs and setup.device != "cpu":
                    fn()
                    # A failed capture warns and runs the chain eagerly: not this variant.
                    if sampler.last_path != "graph":
                        raise RuntimeError("the chain was not captured (the warning says why)")
                else:
                    sampler.prepared_models()
            step = ", graph_mode='step'" if mode == "step" else ""
            variants.append(Variant(name, probe.wrap(name, fn),
                                    note=f"FastSampler(..., graphs={graphs}{step})"
                                         f".sample(B, seed=0)"))
        except Exception as e:  # a model it cannot run is reported, not raised
            skipped[name] = f"FastSampler could not run here: {_first_line(e)}"
    fn, note = _compile_variant(setup, "chain", n_steps, compile_timeout, compile_options)
    if fn is None:
        skipped[COMPILE] = note
    else:
        variants.append(Variant(COMPILE, probe.wrap(COMPILE, fn), note=note, role="baseline"))
    case = Case(f"chain{n_steps}_{setup.key}", f"{n_steps}-step chain: {setup.title}",
                "; ".join(setup.notes) + f". One call = a whole chain as a user runs it: "
                f"start states, {n_steps} Langevin steps, the returned samples.",
                variants, baseline=PLAIN, ceiling_numel=None, device=setup.device,
                skipped=skipped, size=setup.size + f", {n_steps} steps")
    return ChainCase(case, setup.batch, n_steps, probe)


def select_variants(case: Case, pattern: str) -> None:
    """Keep the baseline and the variants whose name matches ``pattern``; the others are
    reported as not selected."""
    keep = [v for v in case.variants if v.name == case.baseline or re.search(pattern, v.name)]
    case.skipped = dict(case.skipped or {})
    for v in case.variants:
        if v not in keep:
            case.skipped[v.name] = f"not selected (--variants {pattern!r})"
    case.variants = keep


def setup_keys(sizes: dict) -> List[str]:
    """The model setups at these sizes: toy, cifar_b<batch> per batch, igebm."""
    return ["toy"] + [f"cifar_b{b}" for b in sizes["cifar_batches"]] + ["igebm"]


def catalogue(sizes: dict) -> List[Tuple[str, str]]:
    """[(case key, one line)] at these sizes, for --list and the --only check (builds nothing)."""
    what = {"toy": f"2-D toy VAEBM, batch {sizes['toy_batch']}",
            "igebm": f"pixel-space IGEBM with a replay buffer, batch {sizes['igebm_batch']}"}
    for b in sizes["cifar_batches"]:
        what[f"cifar_b{b}"] = (f"CIFAR-32 EBM + CIFAR-scale hierarchical VAE (width "
                               f"{sizes['cifar_channels']}), batch {b}")
    n = sizes["n_steps"]
    out = []
    for key in setup_keys(sizes):
        out += [(f"update_{key}", f"the Langevin update alone: {what[key]}"),
                (f"step_{key}", f"one Langevin step: {what[key]}"),
                (f"chain{n}_{key}", f"a whole {n}-step chain: {what[key]}")]
    return out


def build_cases(sizes: dict, device: str, compile_timeout, compile_options,
                keys: Sequence[str]) -> Iterator[ChainCase]:
    """Yield the cases of ``keys`` one setup at a time (one setup's models alive at once)."""
    n = sizes["n_steps"]
    makers = {"toy": lambda: toy_setup(sizes, device),
              "igebm": lambda: igebm_setup(sizes, device)}
    for batch in sizes["cifar_batches"]:
        makers[f"cifar_b{batch}"] = lambda b=batch: cifar_setup(sizes, b, device)
    for key in setup_keys(sizes):
        wanted = [k in keys for k in (f"update_{key}", f"step_{key}", f"chain{n}_{key}")]
        if not any(wanted):
            continue
        setup = makers[key]()
        if wanted[0]:
            yield update_case(setup)
        timeout = compile_timeout
        if timeout and not re.search(sizes["compile_setups"], key):
            setup.compiled["error"] = (f"not attempted for this model (--set compile_setups="
                                       f"{sizes['compile_setups']!r})")
        if wanted[1]:
            yield step_case(setup, timeout, compile_options)
        if wanted[2]:
            yield chain_case(setup, n, timeout, compile_options)
        del setup
        gc.collect()


def run_chain_case(cc: ChainCase, timing: dict, repeats: int) -> Tuple[Dict[str, Any], dict]:
    """run_case of a chain case, and the per-variant row fields the results table adds
    (peak memory, roles of variants not run, steps per call and batch)."""
    with cc.context():
        result = run_case(cc.case, repeats=repeats, **timing)
    extra: Dict[str, Dict[str, Any]] = {
        "*": dict(steps_per_call=cc.steps_per_call, batch=cc.batch,
                  peak_memory_method=cc.probe.how)}
    for name in VARIANTS:
        extra[name] = dict(role=ROLE[name])
    for name, peak in cc.probe.peaks.items():
        extra[name]["peak_mb"] = peak
    return result, extra


def _parse_set(items: Sequence[str], sizes: dict) -> dict:
    sizes = dict(sizes)
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or key not in sizes:
            usage_error(PROG, f"--set wants KEY=VALUE with KEY one of {', '.join(sizes)} "
                              f"(got {item!r})")
        try:
            if isinstance(sizes[key], tuple):
                sizes[key] = tuple(int(v) for v in value.split(",") if v)
            else:
                sizes[key] = type(sizes[key])(value)
        except ValueError:
            usage_error(PROG, f"--set {item!r}: {value!r} is not a valid "
                              f"{type(sizes[key]).__name__} (e.g. {key}={sizes[key]!r})")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_run_arguments(parser, "default: per setup")
    parser.add_argument("--variants", metavar="REGEX",
                        help=f"time only the variants whose name matches ({PLAIN}, the "
                             f"baseline of every speed-up, always runs), e.g. 'fast'")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a size, e.g. cifar_channels=32 or cifar_batches=32,64")
    parser.add_argument("--compile-timeout", type=float, metavar="S",
                        help=f"seconds torch.compile may take per model (default "
                             f"{COMPILE_TIMEOUT_S:g}; 0 in --quick: not attempted)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one call of every variant and record the "
                             "share of it the GPU was idle (CUDA only; column 'GPU idle %%')")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead",
                                                   "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode (default: torch's); reduce-overhead runs the "
                             "compiled step as CUDA graphs on a GPU")
    return parser


def main(argv=None) -> Dict[str, Any]:
    """Run the chosen cases; returns the paths written ({} without --out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    sizes = _parse_set(args.set, QUICK if args.quick else FULL)
    if args.list:
        print_catalogue(catalogue(sizes))
        return {}
    keys = select_keys(PROG, catalogue(sizes), args.only)  # before any model is built
    if args.variants:
        try:
            re.compile(args.variants)
        except re.error as e:
            usage_error(PROG, f"--variants {args.variants!r} is not a regular expression ({e})")
    timing = dict(TIMING_QUICK if args.quick else TIMING_FULL)
    compile_timeout = (args.compile_timeout if args.compile_timeout is not None
                       else 0.0 if args.quick else COMPILE_TIMEOUT_S)
    if args.threads is not None and args.threads < 1:
        usage_error(PROG, f"--threads must be >= 1 (got {args.threads})")
    if args.profile and not args.device.startswith("cuda"):
        usage_error(PROG, "--profile measures GPU idle time: it needs --device cuda")
    with torch_threads(args.threads):
        return _run(args, argv, sizes, keys, timing, compile_timeout)


def _run(args, argv, sizes, keys, timing, compile_timeout) -> Dict[str, Any]:
    recorder = Recorder("chains", args.device, args.out, f"{PROG} {shlex.join(argv)}", args.note,
                        label="bench chains")
    compile_options = {"backend": args.compile_backend}
    if args.compile_mode:
        compile_options["mode"] = args.compile_mode
    for cc in build_cases(sizes, args.device, compile_timeout, compile_options, keys):
        if args.variants:
            select_variants(cc.case, args.variants)
        model = cc.case.key.split("_", 1)[1].split("_")[0]
        repeats = args.repeats or sizes["repeats_" + model]
        case_timing = dict(timing)
        if not cc.case.key.startswith("update_"):  # the update alone takes ms at any scale
            case_timing["warmup"] = sizes.get("warmup_" + model, timing["warmup"])
        print(f"[bench chains] {cc.case.title} ({repeats} repeats) ...", file=sys.stderr,
              flush=True)
        result, extra = run_chain_case(cc, case_timing, repeats)
        if args.profile:
            for v in cc.case.variants:
                share, note = gpu_idle_share(v.fn, args.device)
                extra.setdefault(v.name, {})["gpu_idle_share"] = share
                print(f"[bench chains] {cc.case.key} / {v.name}: GPU idle "
                      f"{'—' if share is None else f'{share:.1%}'} ({note})", file=sys.stderr,
                      flush=True)
        recorder.add(result, extra)  # appended as each case ends
        del cc
    return recorder.finish()


if __name__ == "__main__":
    main()
