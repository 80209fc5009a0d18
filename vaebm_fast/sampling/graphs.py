"""A Langevin chain captured as CUDA graphs (used by :class:`~vaebm_fast.sampling.FastSampler`).

:class:`GraphedChain` owns static state buffers, a device tensor ``rng`` = (seed, offset) and
static outputs, and runs the chain in one of two graph modes (``GRAPH_MODES``):

* ``"unrolled"`` (the default): the whole K-step chain is one graph (:meth:`body` unrolls the
  K steps). One replay per chain; its capture time, node count and memory pool grow with K
  (every step's intermediates have addresses of their own).
* ``"step"``: three graphs, a prologue, ONE Langevin step and an epilogue; a chain replays
  the prologue, the step K times, then the epilogue (K + 2 replays). Capture time and pool
  do not depend on K; each step costs one more launch from the host. The step graph finds
  its place in the chain on the device: it writes its rows of the outputs at a device-side
  step index ``step_index`` (which it increments) and advances ``rng[1]`` itself, so the host
  does nothing per step but the replay call.

:meth:`GraphedChain.capture` records the graphs, after which :meth:`GraphedChain.run` replays
them. Without a capture (on the CPU) ``run`` executes the same code eagerly: the chain's logic
is the same code either way, which is how both modes are tested without a GPU.

The chain, in either mode::

    prologue:  half_sq[0] = 1/2 ||states||^2; step_index = 0 (step mode's counter)
    step k (k = 0 .. K-1), its networks at the sampler's network_precision:
        x = decode(states); E = energy(x); energies[k] = E
        [potential="official": c = correction(states); half_sq[k] += c; E = E + c]
        grads = d E.sum() / d states
        update states in place, noise at (rng[0], rng[1] + k * n [, rng[2]]), half_sq[k + 1]
        [step mode: rng[1] += n; step_index += 1]
    epilogue:  energies[K] = energy(decode(states)) [official: half_sq[K] += c];
               x = decode(states) [decoder mean for eps/"mean"; float32 after a bf16 chain];
               [unrolled: rng[1] += K * n]

with n the number of state elements (in row mode, ``rng`` = (seed, offset, first_row) and n the
elements of one sample: each sample draws from its own row stream). In the unrolled body step
k's rows and its offset ``k * n`` are constants of the graph; in step mode they are read from
``step_index`` and ``rng[1]`` when the step runs. The update is
:func:`vaebm_fast.ops.langevin_step_graphed_`, which reads (seed, offset) from ``rng`` when it
runs, so a replayed graph draws the noise of whatever the device holds, and the graphs advance
``rng[1]`` themselves: replaying again draws fresh noise. Both modes give the same chain
(bitwise on the CPU, where the update is the eager reference).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..ops import backend_availability, langevin_step_graphed_
from .langevin import _half_sq_buffer, _half_sq_norm
from .precision import tf32_window

__all__ = ["GraphedChain", "graph_unavailable_reason", "check_graph_mode", "GRAPH_MODES",
           "WARMUP_STEPS"]

GRAPH_MODES = ("unrolled", "step")

# Steps the warm-up before a capture runs: enough to meet every Triton specialisation of the
# graphed update (the [K + 1, B] half-norm rows start at 4 alignments mod 16 bytes). The step
# graph's update always writes the same scratch row: one warm-up step meets it.
WARMUP_STEPS = 4


def check_graph_mode(graph_mode) -> str:
    """``graph_mode`` if it is one of ``GRAPH_MODES``, else a ValueError saying what to pass."""
    if not isinstance(graph_mode, str) or graph_mode not in GRAPH_MODES:
        raise ValueError(f"graph_mode must be one of {', '.join(map(repr, GRAPH_MODES))} "
                         f"(got {graph_mode!r})")
    return graph_mode


def graph_unavailable_reason(device) -> Optional[str]:
    """None when a chain on ``device`` can be captured, else why not."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "CUDA graphs need CUDA tensors"
    reason = backend_availability("langevin_step_graphed_", device)["triton"]
    if reason is not None:
        return f"the graphed Langevin step needs Triton ({reason})"
    return None


class GraphedChain:
    """The chain for fixed state shapes, with static buffers (see the module docstring).

    Args:
        sampler: the FastSampler whose settings (space, n_steps, step size, ...) and
            ``decode`` the chain uses.
        energy, generator: the prepared networks.
        like: the chain's states (their shapes, dtype and device; values are not used).
        row_mode: ``rng`` = (seed, offset, first_row): each sample draws from its row stream.
        graph_mode: ``"unrolled"`` (one graph of the whole chain) or ``"step"`` (one step's
            graph replayed K times between a prologue and an epilogue).
    """

    def __init__(self, sampler, energy, generator, like, *, row_mode: bool = False,
                 graph_mode: str = "unrolled"):
        self.sampler, self.energy, self.generator = sampler, energy, generator
        self.graph_mode = check_graph_mode(graph_mode)
        device = like[0].device
        # The Triton kernel on CUDA; "eager" runs the same code on the CPU, reading the stream
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
        self.energies: Optional[torch.Tensor] = None  # [K + 1, B], allocated by the first step
        self.x: Optional[torch.Tensor] = None  # [B, *data_shape]
        self.graph: Optional[torch.cuda.CUDAGraph] = None  # unrolled mode, once captured
        # Step mode: the step the next step graph replay runs ([1] int64, for index_copy_),
        # and the row its update writes 1/2 ||eps||^2 into before it is copied to row
        # step_index + 1 (a kernel argument is a fixed address; the row is not).
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.half_row = (torch.empty_like(self.half_sq[0])
                         if self.use_prior and graph_mode == "step" else None)
        # Step mode's (prologue, step, epilogue): the eager code, or after a capture the
        # replays of their graphs (kept in step_graphs).
        self.phases: tuple[Callable[[], None], ...] = (
            self.prologue, self.step, lambda: self.epilogue(self.n_steps, advance=False))
        self.step_graphs: list[torch.cuda.CUDAGraph] = []

    # -- capture ------------------------------------------------------------------------------
    def capture(self) -> None:
        """Warm up (lazy init, cuDNN autotuning, Triton compilation) with a short chain on a
        side stream, then capture the chain (``graph_mode``). Raises RuntimeError with the
        cause when it cannot be captured."""
        device = self.rng.device
        torch.cuda.synchronize(device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            if self.graph_mode == "unrolled":
                self.body(min(self.n_steps, WARMUP_STEPS))
            else:
                self._run_phases(min(self.n_steps, 1))
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
        try:
            if self.graph_mode == "unrolled":
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.body(self.n_steps)
            else:
                phases = self._capture_phases()
        except Exception as exc:
            torch.cuda.set_stream(caller_stream)
            generator.graphsafe_set_state(generator_state)
            cause = exc.__context__ if exc.__context__ is not None else exc
            raise RuntimeError(f"{type(cause).__name__}: {cause}") from exc
        torch.cuda.synchronize(device)
        if self.graph_mode == "unrolled":
            self.graph = graph
        else:
            self.phases = phases

    def _capture_phases(self) -> tuple:
        """Step mode: the (prologue, step, epilogue) graphs' replays, captured in the order
        they run, in one memory pool (each phase reads and writes only the static buffers,
        which live outside it, so one phase's intermediates may reuse another's memory). A
        chain of 0 steps captures no step: it is never run (nor was it warmed up)."""
        pool = torch.cuda.graph_pool_handle()
        replays, graphs = [], []
        for i, phase in enumerate(self.phases):
            if i == 1 and self.n_steps == 0:
                replays.append(phase)
                continue
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                phase()
            graphs.append(graph)
            replays.append(graph.replay)
        self.step_graphs = graphs
        return tuple(replays)

    # -- the chain's code ------------------------------------------------------------------------
    def body(self, n_steps: int) -> None:
        """The unrolled chain: ``n_steps`` steps and the final outputs (a warm-up runs fewer
        steps than the chain; what it writes is overwritten by the first real run)."""
        self.prologue()
        for k in range(n_steps):
            self.step(k)
        self.epilogue(n_steps, advance=True)

    def prologue(self) -> None:
        """The prior term of the start states, half_sq[0]; step mode's next step is step 0."""
        if self.use_prior:
            self.half_sq[0].copy_(_half_sq_norm(self.states))
        self.step_index.zero_()

    def step(self, k: Optional[int] = None) -> None:
        """One Langevin step of the static states. ``k``: the step's index, a constant of the
        unrolled body (rows k and k + 1, noise at offset ``rng[1] + k * n``); None in step mode,
        where the rows are ``step_index`` and ``step_index + 1``, the noise is at ``rng[1]``,
        and the step advances both (``step_index += 1``, ``rng[1] += n``) for the next one."""
        s = self.sampler
        states = self.states
        on_device = k is None
        with tf32_window(s.network_precision), torch.enable_grad():
            x, E, correction = s.network_outputs(states, self.energy, self.generator, k)
            energies = self._energy_rows(E)
            if on_device:
                energies.index_copy_(0, self.step_index, E.detach()[None])
            else:
                energies[k].copy_(E.detach())
            if correction is not None:  # potential="official": rows hold U - E
                c = correction.detach()
                if on_device:  # half_sq[k] += c, as a read and a write at the device index
                    row = self.half_sq.index_select(0, self.step_index)[0] + c
                    self.half_sq.index_copy_(0, self.step_index, row.to(self.half_sq.dtype)[None])
                else:
                    self.half_sq[k].add_(c)
                E = E + correction
            grads = torch.autograd.grad(E.sum(), states)
        with torch.no_grad():
            for buf, g in zip(self.grads, grads):
                buf.copy_(g)
            if self.use_prior:
                half_sq_out = self.half_row if on_device else self.half_sq[k + 1]
            else:
                half_sq_out = None
            langevin_step_graphed_(
                states, self.grads, step_size=s.step_size, rng_state=self.rng,
                offset_add=0 if on_device else k * self.numel, prior_weight=s.prior_weight,
                noise_scale=s.noise_scale, grad_clip=s.grad_clip, clamp=s.clamp,
                half_sq_norm=half_sq_out, backend=self.update_backend)
            if on_device:
                if self.use_prior:
                    self.half_sq.index_copy_(0, self.step_index + 1, self.half_row[None])
                self.rng[1].add_(self.numel)
                self.step_index.add_(1)

    def epilogue(self, n_steps: int, *, advance: bool) -> None:
        """The samples and the potential after ``n_steps`` steps (row ``n_steps``); ``advance``:
        move ``rng[1]`` past the ``n_steps`` steps' noise (the unrolled body; the step graph
        advances it per step)."""
        s = self.sampler
        with torch.no_grad():
            with tf32_window(s.network_precision):
                x, E, correction = s.network_outputs(self.states, self.energy, self.generator,
                                                     n_steps, needs_grad=False)
            self._energy_rows(E)[n_steps].copy_(E)
            if correction is not None:
                self.half_sq[n_steps].add_(correction)
            x = s.returned_samples(self.states, x, self.generator)
            if self.x is None:  # in the warm-up: outside the graphs' memory pool
                self.x = torch.empty_like(x)
            self.x.copy_(x)
            if advance:
                self.rng[1].add_(n_steps * self.numel)

    def _energy_rows(self, E: torch.Tensor) -> torch.Tensor:
        """The [K + 1, B] energies buffer (made by the first step or epilogue, which on CUDA is
        the warm-up's: outside the graphs' memory pool)."""
        if self.energies is None:
            self.energies = torch.empty(self.n_steps + 1, self.batch, dtype=E.dtype,
                                        device=E.device)
        return self.energies

    def _run_phases(self, n_steps: int) -> None:
        """Step mode: the prologue, ``n_steps`` steps, the epilogue (graph replays once
        captured, else the eager code)."""
        prologue, step, epilogue = self.phases
        prologue()
        for _ in range(n_steps):
            step()
        epilogue()

    # -- running ---------------------------------------------------------------------------------
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
        if self.graph_mode == "step":
            self._run_phases(self.n_steps)
        elif self.graph is not None:
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
