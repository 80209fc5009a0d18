"""Unadjusted Langevin sampling in three spaces, one API.

=========  ====================================  ==========================================
space      chain state                           potential U
=========  ====================================  ==========================================
"eps"      eps = (eps_z groups..., eps_x)        E(T(eps_z, eps_x)) + 1/2 ||eps||^2  (VAEBM)
"latent"   eps_z groups                          E(G(eps_z)) + 1/2 ||eps_z||^2  (tilting)
"data"     x                                     E(x)  (pixel-space EBM / IGEBM)
=========  ====================================  ==========================================

In eps space ``potential="official"`` runs the official VAEBM code's potential instead,
E(x) - log p(z) - log p(x|z) at the reparameterised point, less constants
(:mod:`vaebm_fast.sampling.potentials`, docs/design.md#eps-space-potential).

Every step is  t <- clamp(t - (eta/2) (clip(grad E) + lambda t) + sigma xi)  with eta =
``step_size``, sigma = ``noise_scale`` (default sqrt(eta)), lambda = 1 in eps/latent space (the
gradient of the standard-normal prior term, applied inside the fused update rather than by
autograd) and 0 in data space. The update and its noise are ``vaebm_fast.ops.langevin_step_``:
noise comes from the counter-based Philox stream, so the same seed gives the same chain on
every backend.

"latent" is the same sampler as "eps" with the decoder deterministic: G(z) is the decoder mean.
In eps space the returned samples are by default the decoder mean at the final eps_z, as the
official code reports images (docs/design.md#langevin-settings); ``output="sample"`` returns
T(eps_z, eps_x), the actual draw of the product density h, which is the right comparison when
the decoder noise is large (the 2-D toy VAE learns sigma_x ~ 0.2 against modes of std 0.05).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..nn import frozen_normalized_weights
from ..ops import philox_normal, philox_normal_rows_
from ..ops.langevin import LangevinStepper
from ..ops.rng import check_first_row
from .potentials import check_potential, official_correction
from .precision import (check_chain_precision, check_network_precision, network_autocast,
                        tf32_window)
from .checks import (ArgumentTypeError, as_int, as_real, check_energy_output,
                     check_state_gradients, mode_dependent_layers)
from .replay import ReplayBuffer

SPACES = ("eps", "latent", "data")


@runtime_checkable
class ReparameterizedGenerator(Protocol):
    """What eps- and latent-space chains need of a generator: the map x = T(eps_z, eps_x)
    (docs/interfaces.md). The one statement of this contract: :class:`LangevinSampler` checks
    generators against these members.

    latent_shapes: per-sample shape of each eps_z group, in order.
    data_shape: per-sample shape of x (and of eps_x).
    decode_eps(eps_z, eps_x=None): eps_z[g] [B, *latent_shapes[g]], eps_x [B, *data_shape] or
        None -> x [B, *data_shape]; eps_x=None gives the decoder mean.
    """
    latent_shapes: Sequence[tuple]
    data_shape: tuple

    def decode_eps(self, eps_z: list, eps_x: Optional[torch.Tensor] = None) -> torch.Tensor: ...


def _protocol_members(proto: type) -> tuple[str, ...]:
    """The attributes and public methods a Protocol class declares, in declaration order."""
    methods = [name for name, value in vars(proto).items()
               if callable(value) and not name.startswith("_")]
    return (*proto.__annotations__, *methods)


_GENERATOR_MEMBERS = _protocol_members(ReparameterizedGenerator)


def _missing_generator_members(generator: object) -> list[str]:
    """The members of :class:`ReparameterizedGenerator` that ``generator`` lacks. hasattr
    rather than isinstance: from Python 3.12 isinstance against a runtime protocol looks
    attributes up statically and would reject wrappers serving them through __getattr__."""
    return [name for name in _GENERATOR_MEMBERS if not hasattr(generator, name)]


class ChainDivergedError(FloatingPointError):
    """A Langevin chain produced NaN/Inf. ``step`` is the first step (0-based) at which a
    potential or state was not finite; ``n_chains`` how many chains diverged."""

    def __init__(self, step: int, n_chains: int, batch_size: int, hint: str = ""):
        self.step, self.n_chains = step, n_chains
        super().__init__(
            f"Langevin chain diverged: {n_chains} of {batch_size} chains became NaN/Inf at step "
            f"{step}. Lower step_size, set grad_clip, or check the energy for NaN/Inf.{hint}")


@dataclass
class ChainResult:
    """What a chain returns when ``return_chain=True``.

    x: final samples [B, *data_shape] (decoded decoder mean for eps/latent).
    states: final chain states (list of [B, ...]).
    potentials: U per step, [n_steps + 1, B] (before each step, and after the last).
    energies: E per step, [n_steps + 1, B].
    next_offset: the first Philox offset this chain did not use.
    """
    x: torch.Tensor
    states: list[torch.Tensor]
    potentials: torch.Tensor
    energies: torch.Tensor
    next_offset: int


@contextlib.contextmanager
def frozen(*modules: object):
    """Freeze every nn.Module given for the duration of a ``with`` block: parameter gradients
    off, weight-normalised convs' effective weights computed once.

    The samplers do not use it: they take gradients with respect to the chain state alone and
    leave your modules untouched. It is kept for code that wants the official loop's freezing
    (the chain benchmarks). It mutates the modules and restores the flags it saved on exit, so
    it must not be used on a module that another thread uses at the same time.
    """
    saved = []
    with contextlib.ExitStack() as stack:
        for m in modules:
            if isinstance(m, nn.Module):
                for p in m.parameters():
                    saved.append((p, p.requires_grad))
                    p.requires_grad_(False)
                stack.enter_context(frozen_normalized_weights(m))
        try:
            yield
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)


class LangevinSampler:
    """Langevin sampler for an energy E (any callable [B, ...] -> [B]) and optional generator.

    Args:
        energy: the energy network or function; lower = more data-like.
        generator: for "eps"/"latent": a :class:`ReparameterizedGenerator`, i.e. an object with
            ``latent_shapes``, ``data_shape`` and ``decode_eps(eps_z, eps_x=None)``
            (docs/interfaces.md). Its mode is honoured: call ``generator.eval()`` before
            sampling (BatchNorm with running statistics, no dropout). A generator left in
            training mode with BatchNorm/Dropout layers runs that way (batch statistics,
            running-statistics updates at every step) and the sampler warns once with the fix.
        space: "eps" (VAEBM), "latent" (exponential tilting) or "data" (IGEBM).
        step_size: eta. n_steps: Langevin steps per chain.
        noise_scale: sigma; default sqrt(eta) (exact Langevin). IGEBM-style chains use a
            smaller value, e.g. step_size=2*lambda, noise_scale=0.005.
        grad_clip: clip each element of grad E to [-c, c] (not the prior term).
        clamp: (low, high) applied to the state after every step, e.g. (0, 1) for images;
            either side may be None.
        data_shape: per-sample shape for data space when ``sample`` is given a count.
        replay_buffer: a ReplayBuffer for persistent chains (eps_z for eps/latent, x for data).
        reuse_prob: probability that a chain starts from the replay buffer.
        output: "mean" (decoder mean at the final eps_z; default, as the official code) or
            "sample" (T(eps_z, eps_x) with the chain's eps_x) -- eps space only.
        backend: backend of the fused update ("auto", "native", "eager").
        potential: "paper" (the default): U = E(x) + 1/2 ||eps||^2, the VAEBM paper's
            potential. "official" (eps space, a generator with ``decode_eps_log_sigmas``
            such as HierarchicalVAE, no grad_clip): the official VAEBM code's potential
            U = E(x) + 1/2 ||eps_z||^2 + sum_g sum log sigma_g + sum_pixels [1/2 u^2 +
            log sigma_1], with sigma_g the std of p(z_g | z_<g) at the chain's z,
            u = (clamp(mu_x + sigma_x eps_x, -1, 1) - mu_x) / sigma_1 and sigma_1 =
            exp(max(l_x, -2)) + 0.01 a second decoder std (l_x the decoder's soft-clamped log
            std before the exp; the sample uses sigma_x = exp(l_x) + 0.01), so eps_x has zero
            gradient where x clamps. Reported potentials are this U without the Gaussian
            normalisers (1/2 log 2 pi per latent element and pixel).
            See :mod:`vaebm_fast.sampling.potentials`.
        network_precision: what the energy and decoder run at inside the chain (the state, the
            update and its noise stay float32): "fp32" (the default; the process's own
            settings), "bf16" (their forwards under ``torch.autocast(device, bfloat16)``, CPU
            or CUDA) or "tf32" (CUDA only: TF32 matmuls and convolutions; the process-wide
            TF32 switches are set for the chain's duration and restored after it, exceptions
            included). Energies, potentials, states and samples come back float32; the
            returned samples are decoded after the chain at float32. Needs a float32 chain;
            "tf32" on a CPU chain raises ValueError. See
            :mod:`vaebm_fast.sampling.precision`.

    Numbers may be Python numbers, NumPy scalars or 0-d tensors (not bools). The sampler never
    modifies the energy or the generator: gradients are taken with respect to the chain state
    only (no ``requires_grad`` toggling, no ``train()``/``eval()``), so one module can be
    sampled from several threads at once, or trained in one thread while another samples.
    Every step checks the energy's output (a real floating tensor [B] attached to autograd;
    host metadata only, no sync) and that every state group gets a gradient.
    """

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor],
                 generator: ReparameterizedGenerator | None = None,
                 *, space: str, step_size: float, n_steps: int, noise_scale: float | None = None,
                 grad_clip: float | None = None, clamp: tuple[float, float] | None = None,
                 data_shape: Sequence[int] | None = None, replay_buffer: ReplayBuffer | None = None,
                 reuse_prob: float = 0.0, output: str = "mean", backend: str = "auto",
                 potential: str = "paper", network_precision: str = "fp32"):
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")
        if not callable(energy):
            raise TypeError(f"energy must be callable [B, ...] -> [B] "
                            f"(got {type(energy).__name__})")
        if space != "data":
            missing = _missing_generator_members(generator)
            if generator is None or missing:
                raise TypeError(
                    f"space={space!r} needs a generator exposing "
                    f"{', '.join(_GENERATOR_MEMBERS)} (missing: "
                    f"{', '.join(missing) or 'generator'}); see ReparameterizedGenerator in "
                    "docs/interfaces.md")
        step_size = as_real(step_size, "step_size", "a positive finite number")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number (got {step_size!r})")
        n_steps = as_int(n_steps, "n_steps", "a non-negative int")
        if n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative int (got {n_steps!r})")
        if noise_scale is not None:
            noise_scale = as_real(noise_scale, "noise_scale", "None or a non-negative number")
            if not (math.isfinite(noise_scale) and noise_scale >= 0):
                raise ValueError(f"noise_scale must be None or a non-negative finite number "
                                 f"(got {noise_scale!r})")
        if grad_clip is not None:
            grad_clip = as_real(grad_clip, "grad_clip", "None or a positive number")
            if not grad_clip > 0:
                raise ValueError(f"grad_clip must be positive (got {grad_clip!r})")
        clamp = _clamp_bounds(clamp)
        if output not in ("mean", "sample"):
            raise ValueError(f"output must be 'mean' or 'sample' (got {output!r})")
        reuse_prob = as_real(reuse_prob, "reuse_prob", "a number in [0, 1]")
        if not 0.0 <= reuse_prob <= 1.0:
            raise ValueError(f"reuse_prob must be in [0, 1] (got {reuse_prob!r})")
        self.potential_kind = check_potential(potential, space, generator, grad_clip)
        self.network_precision = check_network_precision(network_precision)
        self.energy, self.generator, self.space = energy, generator, space
        self.step_size, self.n_steps = step_size, n_steps
        self.noise_scale = noise_scale
        self.grad_clip = grad_clip
        self.clamp = clamp
        self.data_shape = None if data_shape is None else tuple(data_shape)
        self.replay_buffer, self.reuse_prob = replay_buffer, reuse_prob
        self.output, self.backend = output, backend
        self.prior_weight = 0.0 if space == "data" else 1.0
        self._warned_training = False  # the training-mode warning is given once per sampler

    # -- state layout -----------------------------------------------------------------------
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of the chain state groups."""
        if self.space == "data":
            if self.data_shape is None:
                raise ValueError("data space: pass data_shape=... to the sampler or an initial "
                                 "tensor x0 to sample()")
            return [self.data_shape]
        shapes = [tuple(s) for s in self.generator.latent_shapes]
        if self.space == "eps":
            shapes.append(tuple(self.generator.data_shape))
        return shapes

    def decode(self, states: list[torch.Tensor], mean: bool = False,
               generator=None) -> torch.Tensor:
        """Chain state -> data-space x. mean=True uses the decoder mean (final images).
        ``generator`` overrides ``self.generator`` (FastSampler passes its prepared copy)."""
        if self.space == "data":
            return states[0]
        generator = self.generator if generator is None else generator
        states = self._network_layout(states)
        if self.space == "latent" or mean:
            n_latent = len(generator.latent_shapes)
            return generator.decode_eps(list(states[:n_latent]), None)
        return generator.decode_eps(list(states[:-1]), states[-1])

    def _network_layout(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """The states as the networks take them (FastSampler: channels-last on the CPU)."""
        return states

    def decode_for_energy(self, states: list[torch.Tensor], generator=None
                          ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(x, c): the sample the energy sees at ``states`` and, for ``potential="official"``,
        the correction c [B] (differentiable) that makes E(x) + 1/2 ||eps||^2 + c the
        official potential; c is None for "paper". ``generator`` as in :meth:`decode`."""
        if self.potential_kind == "paper":
            return self.decode(states, generator=generator), None
        generator = self.generator if generator is None else generator
        states = self._network_layout(states)
        return official_correction(generator, states[:-1], states[-1])

    def network_outputs(self, states: list[torch.Tensor], energy, generator, step: int, *,
                        needs_grad: bool = True):
        """(x, E [B], c [B] or None): :meth:`decode_for_energy` and the energy at ``states``,
        run at ``network_precision`` (bf16: under autocast, E and c cast back to float32) and
        checked (:func:`check_energy_output`; ``step`` for the message). The one place a
        chain evaluates its networks; the TF32 switches are the caller's
        (:func:`~vaebm_fast.sampling.precision.tf32_window` around forward and backward)."""
        with network_autocast(self.network_precision, states[0].device):
            x, correction = self.decode_for_energy(states, generator)
            E = energy(x)
        check_energy_output(E, states[0].shape[0], step, needs_grad=needs_grad)
        if self.network_precision == "bf16":
            E = E.float()
            correction = None if correction is None else correction.float()
        return x, E, correction

    def returned_samples(self, states: list[torch.Tensor], x: torch.Tensor, generator
                         ) -> torch.Tensor:
        """The samples a chain returns from its final ``states``, given ``x``, what the final
        potential decoded: the eps-space decoder mean (``output="mean"``), else ``x``; decoded
        again at float32 when ``x`` came from a bf16 pass (one decoder forward)."""
        if self.space == "eps" and self.output == "mean":
            return self.decode(states, mean=True, generator=generator)
        if self.space != "data" and self.network_precision == "bf16":
            return self.decode(states, generator=generator)
        return x

    def potential(self, states: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [B], E [B], x) at the given states, x the decoded sample the energy saw; U less E
        is a detached value: 1/2 ||eps||^2 in eps/latent, plus the official correction with
        ``potential="official"`` (see the class docstring)."""
        x, correction = self.decode_for_energy(states)
        energy = self.energy(x)
        check_energy_output(energy, states[0].shape[0], None, needs_grad=False)
        if self.space == "data":
            return energy, energy, x
        prior = sum(0.5 * s.detach().pow(2).flatten(1).sum(1) for s in states)
        if correction is not None:
            prior = prior + correction.detach()
        return energy + prior, energy, x

    # -- the chain --------------------------------------------------------------------------
    def initial_states(self, x0_or_n, *, seed: int, offset: int, device, dtype,
                       check_finite: bool = True, first_row: Optional[int] = None
                       ) -> tuple[list[torch.Tensor], int]:
        """Start states and the next free offset. Given states (a tensor x0 or a list) are
        copied; with ``check_finite`` a NaN/Inf in them is reported as bad input (one host
        sync; fresh draws need none). With ``first_row``, fresh chain b is drawn from row
        stream ``first_row + b``: state group g from its normals ``offset + cum_g ..``
        (cum_g: the per-sample sizes of the groups before g), and the next offset is
        ``offset + D``, D the per-sample size of the whole state."""
        if isinstance(x0_or_n, torch.Tensor) and x0_or_n.dim() > 0:
            x0 = x0_or_n
            if self.space == "data":
                if not x0.is_floating_point():
                    raise TypeError(f"x0 must be a floating tensor (got {x0.dtype})")
                return _given_states([x0], "x0", check_finite), offset
            raise TypeError(f"space={self.space!r} starts from a count of chains: pass an int n, "
                            "or a list of initial eps tensors (one per state group)")
        if isinstance(x0_or_n, (list, tuple)):
            for i, t in enumerate(x0_or_n):
                if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                    raise TypeError(f"initial state {i} must be a floating tensor (got "
                                    f"{getattr(t, 'dtype', type(t).__name__)})")
            expected = self.state_shapes()
            got = [tuple(t.shape[1:]) for t in x0_or_n]
            if got != expected:
                raise ValueError(f"initial states must have per-sample shapes {expected} "
                                 f"(got {got})")
            if len({t.shape[0] for t in x0_or_n}) > 1:
                raise ValueError("initial states must all hold the same number of chains "
                                 f"(got batch sizes {[t.shape[0] for t in x0_or_n]})")
            return _given_states(x0_or_n, "initial states", check_finite), offset
        n = as_int(x0_or_n, "the number of chains",
                   "a positive int (or a tensor x0, or a list of initial states)")
        if n <= 0:
            raise ValueError(f"number of chains must be positive (got {x0_or_n!r})")
        shapes = self.state_shapes()
        if first_row is not None:
            first_row = check_first_row(first_row, n)
        if self.replay_buffer is not None and self.reuse_prob > 0:
            n_buffered = len(self.replay_buffer.shapes)
            buffered, n_reused, offset = self.replay_buffer.initial_states(
                n, self.reuse_prob, seed=seed, offset=offset)
            buffered = [torch.cat([b[:n_reused], self._start_from_noise(b[n_reused:])])
                        for b in buffered]
            rest = []
            for shape in shapes[n_buffered:]:
                rest.append(self._fresh(n, shape, seed, offset, device, dtype, first_row))
                offset += rest[-1].numel() if first_row is None else math.prod(shape)
            states = [b.to(device=device, dtype=dtype) for b in buffered] + rest
        else:
            states = []
            for shape in shapes:
                states.append(self._fresh(n, shape, seed, offset, device, dtype, first_row))
                offset += states[-1].numel() if first_row is None else math.prod(shape)
        return states, offset

    def _fresh(self, n, shape, seed, offset, device, dtype, first_row=None) -> torch.Tensor:
        if first_row is None:
            noise = philox_normal(n * math.prod(shape), seed=seed, offset=offset, device=device,
                                  dtype=dtype).view(n, *shape)
        else:
            noise = philox_normal_rows_(torch.empty(n, *shape, device=device, dtype=dtype),
                                        seed=seed, offset=offset, first_row=first_row)
        return self._start_from_noise(noise)

    def _start_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Fresh chains start at their N(0, 1) draw, except in data space with a closed clamp
        box, where they start uniform inside it: Phi(N(0, 1)) is exactly U(0, 1)."""
        if self.space == "data" and self.clamp is not None and None not in self.clamp:
            low, high = self.clamp
            return low + (high - low) * torch.special.ndtr(noise)
        return noise

    def sample(self, x0_or_n, *, seed: int, offset: int = 0, first_index: Optional[int] = None,
               return_chain: bool = False, device=None, dtype: torch.dtype = torch.float32,
               check_finite: bool = True, progress: bool = False):
        """Run the chain.

        Args:
            x0_or_n: number of chains (fresh N(0,1) start for eps/latent, U(clamp) or N(0,1) in
                data space), a tensor x0 [B, ...] (data space), or a list of initial states.
            seed, offset: the Philox stream address; the start draws and every step's noise
                come from it, so the same (seed, offset) gives the same samples.
            first_index: the global index of this batch's first sample. Given, chain b draws its
                start and its noise from the row stream ``first_index + b`` of ``seed``
                (docs/design.md, "Random numbers"): a sample depends on (seed, offset, its
                global index) alone, so samples [0, N) drawn in one call, in several batches or
                on several processes are the same. None (default): the flat stream, whose noise
                depends on the batch (what every earlier version drew). Chains restarted from a
                replay buffer are the buffer's (per process), not the index's.
            return_chain: return a ChainResult (potentials per step, states, next offset)
                instead of the samples alone.
            check_finite: raise ChainDivergedError if any potential or state is NaN/Inf
                (checked once at the end of the chain: no host sync per step), and ValueError
                if given initial states are not finite (bad input, not divergence).

        Returns:
            samples [B, *data_shape] (see ``output``), or a ChainResult.
        """
        seed, offset = self._stream_position(seed, offset)
        device = device if device is not None else _module_device(self.generator, self.energy)
        states, offset = self.initial_states(x0_or_n, seed=seed, offset=offset, device=device,
                                             dtype=dtype, check_finite=check_finite,
                                             first_row=first_index)
        self._check_model_dtype(states)
        self._warn_if_training(self.generator)
        run = self._run_chain(self.energy, self.generator, states, seed, offset, progress,
                              first_index)
        return self._finish(*run, return_chain=return_chain, check_finite=check_finite)

    @staticmethod
    def _stream_position(seed, offset) -> tuple[int, int]:
        """(seed, offset) checked and as Python ints."""
        seed = as_int(seed, "seed", "an int in [0, 2**63)")
        offset = as_int(offset, "offset", "a non-negative int")
        if not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed must be an int in [0, 2**63) (got {seed!r})")
        if not 0 <= offset < 2 ** 63:
            raise ValueError(f"offset must be an int in [0, 2**63) (got {offset!r})")
        return seed, offset

    def _check_model_dtype(self, states) -> None:
        """The chain state must have the dtype of the network it enters first (the generator
        in eps/latent space, else the energy): say so rather than fail inside a conv. Skipped
        under autocast, which casts on its own. Also refuses a ``network_precision`` that does
        not apply to the chain (:func:`~vaebm_fast.sampling.precision.check_chain_precision`)."""
        check_chain_precision(self.network_precision, states[0].device, states[0].dtype)
        model, name = ((self.energy, "energy") if self.space == "data"
                       else (self.generator, "generator"))
        if not isinstance(model, nn.Module) or torch.is_autocast_enabled(states[0].device.type):
            return
        wanted = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        got = states[0].dtype
        if wanted is not None and got != wanted:
            raise TypeError(f"the chain state is {got} but the {name}'s parameters are "
                            f"{wanted}: pass dtype={wanted} (and {wanted} initial states) to "
                            f"sample(), or convert the model with .to({got})")

    def _warn_if_training(self, generator) -> None:
        """Warn once per sampler when the generator's mode changes its forward: the chain then
        runs it as it is (training mode: batch statistics, running-statistics updates)."""
        if self.space == "data" or self._warned_training:
            return
        layers = mode_dependent_layers(generator)
        if layers:
            self._warned_training = True
            shown = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
            warnings.warn(
                f"{type(self).__name__}: the generator is in training mode and has "
                f"BatchNorm/Dropout layers ({shown}): the chain runs it that way (batch "
                "statistics, running-statistics updates at every step); call generator.eval() "
                "before sampling for the usual samples (the sampler does not change the "
                "module's mode)", RuntimeWarning, stacklevel=3)

    def _run_chain(self, energy, generator, states, seed, offset, progress, first_row=None):
        """The K steps from ``states`` with the given networks (FastSampler passes prepared
        copies), then the final potential and the reported samples.

        Per step: decode, energy, gradient with respect to the states, and one fused update in
        place that also writes the prior term 1/2 ||eps||^2 of the new states (its
        ``half_sq_norm`` output) into a preallocated [K + 1, B] row; energies go into another.
        With ``potential="official"`` the correction c is added to the energy before the
        backward and its value to the prior row of the states it was computed at, so the rows
        hold U - E. ``first_row``: row-mode noise (see :meth:`sample`). Returns (states, x,
        energies [K + 1, B], half_sq [K + 1, B] (U - E) or None, next offset).
        """
        states = [s.detach().contiguous() for s in states]  # updated in place below
        batch, n_steps = states[0].shape[0], self.n_steps
        use_prior = self.prior_weight != 0
        energies = half_sq = None
        steps = range(n_steps)
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=f"langevin ({self.space})", leave=False)
        step_ = LangevinStepper(states, step_size=self.step_size,
                                prior_weight=self.prior_weight, noise_scale=self.noise_scale,
                                grad_clip=self.grad_clip, clamp=self.clamp, backend=self.backend)
        # Gradients are taken with respect to the states only (autograd.grad's inputs): no
        # parameter gradient is computed, and the caller's modules (requires_grad flags, mode)
        # are never touched, so other threads may use them at the same time.
        with tf32_window(self.network_precision), torch.enable_grad():
            for s in states:
                s.requires_grad_(True)
            for step in steps:
                x, E, correction = self.network_outputs(states, energy, generator, step)
                if energies is None:
                    energies, half_sq = self._chain_buffers(E, states, batch, n_steps)
                energies[step].copy_(E.detach())
                # The prior term is not differentiated: the fused update adds lambda * t itself.
                if correction is not None:
                    half_sq[step].add_(correction.detach())
                    E = E + correction
                grads = torch.autograd.grad(E.sum(), states, allow_unused=True)
                check_state_gradients(grads, self.space, step)
                offset = step_(grads, seed=seed, offset=offset,
                               half_sq_norm=half_sq[step + 1] if use_prior else None,
                               first_row=first_row)
                del x, E, grads, correction
            for s in states:
                s.requires_grad_(False)
            with torch.no_grad():
                x, E, correction = self.network_outputs(states, energy, generator, n_steps,
                                                        needs_grad=False)
                if energies is None:  # n_steps == 0
                    energies, half_sq = self._chain_buffers(E, states, batch, n_steps)
                energies[n_steps].copy_(E)
                if correction is not None:
                    half_sq[n_steps].add_(correction)
        # The final potential decoded the final state; only the eps-space decoder mean (or a
        # bf16 decode) needs another pass, at the process's own precision.
        with torch.no_grad():
            x = self.returned_samples(states, x, generator)
        return states, x, energies, half_sq, offset

    def _chain_buffers(self, E, states, batch, n_steps):
        """Preallocated energies [K + 1, B] and prior terms [K + 1, B] (row 0 filled; None in
        data space), made at the first energy evaluation (which fixes the dtype)."""
        energies = torch.empty(n_steps + 1, batch, dtype=E.dtype, device=E.device)
        half_sq = None
        if self.prior_weight != 0:
            half_sq = _half_sq_buffer(states, n_steps)
            half_sq[0].copy_(_half_sq_norm(states))
        return energies, half_sq

    def _finish(self, states, x, energies, half_sq, offset, *, return_chain, check_finite):
        """Divergence check (one host sync per chain), replay-buffer push, and the result."""
        batch = states[0].shape[0]
        potentials = energies if half_sq is None else energies + half_sq.to(energies.dtype)
        if check_finite:
            # The first step whose potential is not finite, per chain (n_steps for a chain
            # whose final samples alone are not finite).
            n_rows = potentials.shape[0]
            rows = torch.arange(n_rows, device=potentials.device)[:, None].expand_as(potentials)
            first = torch.where(~torch.isfinite(potentials), rows, n_rows).amin(0)
            final_bad = ~torch.isfinite(x.flatten(1)).all(1)
            first = torch.where((first == n_rows) & final_bad, self.n_steps, first)
            diverged = first < n_rows
            n_bad = int(diverged.sum())
            if n_bad:
                raise ChainDivergedError(int(first[diverged].min()), n_bad, batch)
        if self.replay_buffer is not None:
            self.replay_buffer.push(states[: len(self.replay_buffer.shapes)])
        if not return_chain:
            return x
        return ChainResult(x=x, states=states, potentials=potentials, energies=energies,
                           next_offset=offset)


def _given_states(tensors, what: str, check_finite: bool) -> list[torch.Tensor]:
    """Copies of user-given initial states; NaN/Inf in them is bad input, reported as such."""
    states = [t.detach().clone() for t in tensors]
    if check_finite:
        bad = sum((~torch.isfinite(s.flatten(1)).all(1)).int() for s in states)
        n_bad = int((bad > 0).sum())  # one host sync
        if n_bad:
            raise ValueError(f"{what} hold NaN/Inf in {n_bad} of {states[0].shape[0]} chains: "
                             "start the chains from finite states")
    return states


def _half_sq_buffer(states, n_steps):
    """[K + 1, B] float32 (float64 for float64 states) rows for the prior term."""
    dtype = torch.float64 if states[0].dtype == torch.float64 else torch.float32
    return torch.empty(n_steps + 1, states[0].shape[0], dtype=dtype, device=states[0].device)


def _half_sq_norm(states):
    """1/2 ||eps||^2 per sample over every state tensor, [B] (as _half_sq_buffer's dtype)."""
    dtype = torch.float64 if states[0].dtype == torch.float64 else torch.float32
    return sum(0.5 * s.detach().to(dtype).flatten(1).square().sum(1) for s in states)


def _clamp_bounds(clamp) -> Optional[tuple]:
    """``clamp`` checked: None, or a (low, high) pair of numbers or None with low < high."""
    if clamp is None:
        return None
    what = "None or a (low, high) pair, each a number or None"
    if not isinstance(clamp, (tuple, list)):
        raise ArgumentTypeError(f"clamp must be {what} (got {type(clamp).__name__} {clamp!r})")
    bounds = tuple(None if c is None else as_real(c, "clamp", what) for c in clamp)
    if not (len(bounds) == 2 and (None in bounds or bounds[0] < bounds[1])):
        raise ValueError(f"clamp must be a (low, high) pair with low < high, either side may "
                         f"be None (got {clamp!r})")
    return bounds


def _module_device(*objs) -> torch.device:
    for obj in objs:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                return p.device
            for b in obj.buffers():
                return b.device
    return torch.device("cpu")
