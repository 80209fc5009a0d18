"""A Langevin chain captured as one CUDA graph (used by :class:`~vaebm_fast.sampling.FastSampler`).

:class:`GraphedChain` owns static state buffers, a device tensor ``rng`` = (seed, offset) and
static outputs, and runs the chain body below; :meth:`GraphedChain.capture` records the body
as a CUDA graph, after which :meth:`GraphedChain.run` replays it. Without a capture (on the
CPU) ``run`` executes the same body eagerly: the chain's logic is the same code either way,
which is how it is tested without a GPU.

Body (K steps, then the final potential and the reported samples)::

    for k in range(K):
        x = decode(states); E = energy(x); energies[k] = E
        [potential="official": c = correction(states); half_sq[k] += c; E = E + c]
        grads = d E.sum() / d states
        update states in place, noise at (rng[0], rng[1] + k * n [, rng[2]]), half_sq[k + 1]
    x = decode(states) [decoder mean for eps/"mean"]; energies[K] = energy(decode(states))
    rng[1] += K * n

with n the number of state elements (in row mode, ``rng`` = (seed, offset, first_row) and n the
elements of one sample: each sample draws from its own row stream). The update is
:func:`vaebm_fast.ops.langevin_step_graphed_`, which reads (seed, offset) from ``rng`` when it
runs, so a replayed graph draws the noise of whatever the device holds, and the graph advances
``rng[1]`` itself: replaying again draws fresh noise.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import backend_availability, langevin_step_graphed_
from .langevin import _half_sq_buffer, _half_sq_norm

__all__ = ["GraphedChain", "graph_unavailable_reason", "WARMUP_STEPS"]

# Steps the warm-up before a capture runs: enough to meet every Triton specialisation of the
# graphed update (the [K + 1, B] half-norm rows start at 4 alignments mod 16 bytes).
WARMUP_STEPS = 4


def graph_unavailable_reason(device) -> Optional[str]:
    """None when a chain on ``device`` can be captured, else why not."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "CUDA graphs need CUDA tensors"
    reason = backend_availability("langevin_step_graphed_", device)["triton"]
    if reason is not None:
        return f"the graphed Langevin step needs Triton ({reason})"
    return None


class GraphedChain:
    """The chain body for fixed state shapes, with static buffers (see the module docstring).

    Args:
        sampler: the FastSampler whose settings (space, n_steps, step size, ...) and
            ``decode`` the body uses.
        energy, generator: the prepared networks.
        like: the chain's states (their shapes, dtype and device; values are not used).
    """

    def __init__(self, sampler, energy, generator, like, *, row_mode: bool = False):
        self.sampler, self.energy, self.generator = sampler, energy, generator
        device = like[0].device
        # The Triton kernel on CUDA; "eager" runs the same body on the CPU, reading the stream
        # position on the host.
        self.update_backend = "triton" if device.type == "cuda" else "eager"
        self.n_steps, self.batch = sampler.n_steps, like[0].shape[0]
        # Normals a step consumes: every element of the flat stream, or in row mode (rng =
        # (seed, offset, first_row)) the per-sample size D of each row stream.
        self.row_mode = row_mode
        self.numel = sum(s[0].numel() if row_mode else s.numel() for s in like)
        self.states = [torch.zeros_like(s).requires_grad_(True) for s in like]
        self.rng = torch.zeros(3 if row_mode else 2, dtype=torch.int64, device=device)
        self.use_prior = sampler.prior_weight != 0
        self.half_sq = _half_sq_buffer(like, self.n_steps) if self.use_prior else None
        # Gradients are copied into static buffers: the update sees the same tensors in every
        # step, so what its kernel prepares per list of tensors (the warm-up does it) serves
        # the whole graph.
        self.grads = [torch.zeros_like(s) for s in like]
        self.energies: Optional[torch.Tensor] = None  # [K + 1, B], allocated by the first body
        self.x: Optional[torch.Tensor] = None  # [B, *data_shape]
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def capture(self) -> None:
        """Warm up (lazy init, cuDNN autotuning, Triton compilation) with a short chain on a
        side stream, then capture the whole chain. Raises RuntimeError with the cause when the
        body cannot be captured."""
        device = self.rng.device
        torch.cuda.synchronize(device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self.body(min(self.n_steps, WARMUP_STEPS))
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        # A failed capture leaves two things behind that torch.cuda.graph does not undo
        # (capture_end raises before it gets to them): the caller's thread on torch's capture
        # stream, and the device's default CUDA generator in capture mode, after which every
        # torch random op outside a graph raises "Offset increment outside graph capture
        # encountered unexpectedly". Restore both, and report the error that broke the capture
        # rather than CUDA's "operation failed due to a previous error during capture".
        caller_stream = torch.cuda.current_stream(device)
        generator = torch.cuda.default_generators[device.index if device.index is not None
                                                  else torch.cuda.current_device()]
        generator_state = generator.clone_state()  # the same seed and offset, not capturing
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.body(self.n_steps)
        except Exception as exc:
            torch.cuda.set_stream(caller_stream)
            generator.graphsafe_set_state(generator_state)
            cause = exc.__context__ if exc.__context__ is not None else exc
            raise RuntimeError(f"{type(cause).__name__}: {cause}") from exc
        torch.cuda.synchronize(device)
        self.graph = graph

    def body(self, n_steps: int) -> None:
        """``n_steps`` Langevin steps and the final outputs (written to the static outputs only
        for a whole chain; a shorter warm-up chain only meets every kernel once)."""
        s = self.sampler
        states = self.states
        if self.use_prior:
            self.half_sq[0].copy_(_half_sq_norm(states))
        with torch.enable_grad():
            energies = []
            for k in range(n_steps):
                x, correction = s.decode_for_energy(states, self.generator)
                E = self.energy(x)
                energies.append(E.detach())
                if correction is not None:  # potential="official": rows hold U - E
                    self.half_sq[k].add_(correction.detach())
                    E = E + correction
                grads = torch.autograd.grad(E.sum(), states)
                with torch.no_grad():
                    for buf, g in zip(self.grads, grads):
                        buf.copy_(g)
                    langevin_step_graphed_(
                        states, self.grads, step_size=s.step_size, rng_state=self.rng,
                        offset_add=k * self.numel, prior_weight=s.prior_weight,
                        noise_scale=s.noise_scale, grad_clip=s.grad_clip, clamp=s.clamp,
                        half_sq_norm=self.half_sq[k + 1] if self.use_prior else None,
                        backend=self.update_backend)
                del x, E, grads, correction
        with torch.no_grad():
            x, correction = s.decode_for_energy(states, self.generator)
            E = self.energy(x)
            energies.append(E)
            if correction is not None:
                self.half_sq[n_steps].add_(correction)
            if s.space == "eps" and s.output == "mean":
                x = s.decode(states, mean=True, generator=self.generator)
            if self.energies is None:  # in the warm-up: outside the graph's memory pool
                self.energies = torch.empty(self.n_steps + 1, self.batch, dtype=E.dtype,
                                            device=E.device)
                self.x = torch.empty_like(x)
            if n_steps == self.n_steps:
                torch.stack(energies, out=self.energies)
                self.x.copy_(x)
            self.rng[1].add_(n_steps * self.numel)

    def _load_states(self, states) -> None:
        if len(states) != len(self.states) or any(
                tuple(s.shape) != tuple(b.shape) for s, b in zip(states, self.states)):
            raise ValueError(f"the captured chain takes states of shapes "
                             f"{[tuple(b.shape) for b in self.states]} (got "
                             f"{[tuple(s.shape) for s in states]})")
        with torch.no_grad():
            for buf, s in zip(self.states, states):
                buf.copy_(s)

    def _execute(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.body(self.n_steps)

    def run(self, states, seed: int, offset: int, first_row: Optional[int] = None):
        """The chain from ``states`` (list of [B, ...]) at stream position (seed, offset) (and
        ``first_row``, required in row mode and refused otherwise):
        ``(states, x, energies [K + 1, B], half_sq [K + 1, B] or None, next offset)``, copies
        of the static outputs."""
        if (first_row is not None) != self.row_mode:
            raise ValueError(f"this chain was captured {'in' if self.row_mode else 'without'} "
                             f"row mode: pass first_row {'' if self.row_mode else 'None '}"
                             f"accordingly (got {first_row!r})")
        self._load_states(states)
        position = [seed, offset] + ([first_row] if self.row_mode else [])
        with torch.no_grad():
            self.rng.copy_(torch.tensor(position, dtype=torch.int64), non_blocking=False)
        self._execute()
        out_states = [b.detach().clone() for b in self.states]
        half_sq = None if self.half_sq is None else self.half_sq.clone()
        return (out_states, self.x.clone(), self.energies.clone(), half_sq,
                offset + self.n_steps * self.numel)

    def replay(self, states=None):
        """Run again from ``states`` (or from the last states) at the stream position the last
        run advanced to; returns the samples buffer (overwritten by the next run)."""
        if states is not None:
            self._load_states(states)
        self._execute()
        return self.x
