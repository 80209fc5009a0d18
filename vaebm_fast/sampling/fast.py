"""FastSampler: LangevinSampler's chains with prepared networks, preallocated buffers and, on
CUDA, the K-step chain as CUDA graphs (the whole chain as one graph, or one step's graph
replayed K times).

Same constructor, same ``sample(...)``, same samples for the same (seed, offset) as
:class:`~vaebm_fast.sampling.langevin.LangevinSampler` (to float tolerance: BatchNorm folding
and the fused prior term round differently), in every space and with a replay buffer.

What it does differently:

* **Prepared networks.** The energy and the generator run as frozen snapshots
  (:func:`vaebm_fast.sampling.prepare.prepared`: ``model.prepare_for_sampling()`` or the
  generic path): eval mode, no parameter gradients, weight norms computed once, BatchNorms
  folded into convs. Snapshots are cached per model and rebuilt only when a parameter or
  buffer of the original changed (:func:`~vaebm_fast.sampling.prepare.state_key`: version
  counters, storage, shapes), so training the energy between chains is seen by the next chain
  and a frozen generator is prepared once. Note: the energy runs in eval mode too (the eager
  sampler leaves the energy's mode alone; the two differ only for energies with BatchNorm or
  dropout).
* **Channels-last on the CPU** (``memory_format="auto"``, the default). The snapshots' 4-D
  weights are stored channels-last and the 4-D states enter the networks channels-last, so
  oneDNN runs its NHWC convolutions and the activations stay NHWC (swish keeps its input's
  layout; the epilogues run their eager references, which keep it too). The chain state
  itself stays row-major (the RNG counts elements in row-major order). Measured on a 2-core
  AMD EPYC, CIFAR-10 scale (official widths, batch 32): the 1x1 and depthwise 5x5
  convolutions of NVAE's cells ran 2-3x faster forward and backward than in NCHW. On CUDA
  "auto" keeps row-major (not measured there); ``"channels_last"`` / ``"contiguous"`` force
  a layout.
* **Freed memory is reused on the CPU, when asked for** (``heap_reuse=True`` or
  ``VAEBM_FAST_HEAP_REUSE=1``; off by default because it changes malloc for the whole
  process, every thread included). The chain then runs inside
  :func:`vaebm_fast._heap.heap_reuse`: glibc keeps freed activations in the heap instead of
  unmapping them, so steps after the first do not page-fault their activations in again (at
  CIFAR-10 scale this kernel time exceeded the computation); they go back to the kernel when
  the chain ends.
* **No per-step allocation of its own.** The chain state tensors are updated in place by the
  fused ``langevin_step_`` (native kernel on the CPU); energies per step are written into a
  preallocated [K + 1, B] buffer and the prior term ``||eps||^2 / 2`` comes out of the update
  kernel itself (its ``half_sq_norm`` output, written into a preallocated [K + 1, B] buffer)
  instead of a separate reduction per group. Only autograd's own buffers are allocated per
  step. Divergence is checked with one host sync per chain.
* **CUDA graphs** (``graphs=True``, the default; CUDA tensors; ``backend`` "auto" or
  "triton", since the update inside the graph is the Triton kernel: a sampler asked for the
  native or eager update runs its chain eagerly). The K steps (decoder forward, energy
  forward, gradient with respect to the state, fused update) plus the final potential and
  decode are captured once per (batch, state shapes, dtype, device, K, graph_mode, options)
  key and replayed (:mod:`vaebm_fast.sampling.graphs`; ``network_precision`` is one of the
  options: a graph replays the kernels of the precision it was captured at, bf16 casts or
  TF32 math); at most ``MAX_GRAPHS`` captured chains are kept per sampler (the least
  recently used is dropped, with its memory pool). A capture costs one short warm-up chain
  (``graphs.WARMUP_STEPS`` steps, one in step mode) before the first replay.
  ``graph_mode`` chooses what is captured: ``"unrolled"`` (the default) captures the K steps
  unrolled into one graph: one launch per chain, but the capture time, the graph's size and
  its memory pool (every step's intermediates) grow with K; ``"step"`` captures one step (plus
  a prologue and an epilogue) and replays it K times: capture time and pool do not depend on
  K, a chain costs K + 2 graph launches from the host (the step finds its step index and noise
  offset on the device). Both give the same chain; which is faster is a measurement on the GPU
  at hand (``vaebm-fast bench chains``: "fast + CUDA graph" and "fast + step graph").
  ``sample`` writes (seed, offset) into the graph's device-side stream position before each
  replay, which gives the eager chain's samples; the graph advances it by the noise it drew,
  so a graph replayed again without new host input draws fresh noise
  (:meth:`FastSampler.replay`). Initial states (fresh draws, replay-buffer gathers) are made
  outside the graph and copied into its static state buffers. When capture is impossible (no
  Triton on the device, a host sync or an uncapturable op inside the energy/decoder, ...) the
  chain runs eagerly and a warning says why, once per key. Network weights are copied into the
  captured snapshot in place when the originals change, so training between chains does not
  force a recapture.

Divergence: :class:`~vaebm_fast.sampling.langevin.ChainDivergedError` with the first step at
which a potential or the final sample was NaN/Inf, as the eager sampler.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from typing import Optional

import torch
from torch import nn

from .._heap import heap_reuse, heap_reuse_requested
from .graphs import GraphedChain, check_graph_mode, graph_unavailable_reason
from .checks import mode_dependent_layers
from .langevin import LangevinSampler, _module_device
from .prepare import prepared, state_key

__all__ = ["FastSampler"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
# Captured chains kept per sampler, least recently used dropped first: each holds a private
# memory pool with a whole chain's intermediates (gigabytes at CIFAR scale), so every new batch
# size (a last partial batch, an evaluation batch) must not keep one more alive.
MAX_GRAPHS = 2

_LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class _Snapshot:
    """A cached prepared copy of one model, the key it was made from and its layout."""

    __slots__ = ("source", "key", "module", "memory_format")

    def __init__(self, source, key, module, memory_format):
        self.source, self.key, self.module = source, key, module
        self.memory_format = memory_format


def _refresh_in_place(old: nn.Module, new: nn.Module) -> bool:
    """Copy ``new``'s tensors into ``old``'s (same names, shapes, dtypes); True on success.
    Keeps every address of ``old`` (which a captured graph reads) valid."""
    if not isinstance(old, nn.Module) or not isinstance(new, nn.Module):
        return False
    a = dict(old.named_parameters())
    a.update(old.named_buffers())
    b = dict(new.named_parameters())
    b.update(new.named_buffers())
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape or a[k].dtype != b[k].dtype
                                   or a[k].device != b[k].device for k in a):
        return False
    with torch.no_grad():
        for k in a:
            a[k].copy_(b[k])
    return True


class FastSampler(LangevinSampler):
    """Drop-in replacement of :class:`LangevinSampler` (same arguments, same ``sample``).

    Extra keyword-only arguments:
        graphs: capture and replay the chain as a CUDA graph on CUDA tensors (default True;
            ignored on the CPU).
        graph_mode: what a CUDA chain captures (ignored where no graph is captured):
            ``"unrolled"`` (the default), the K steps as one graph, one launch per chain,
            its capture time and memory pool growing with K; or ``"step"``, one step's graph
            replayed K times between a prologue and an epilogue graph, a capture and pool of
            one step's size whatever K, K + 2 launches per chain. Same samples either way.
        memory_format: layout of the prepared networks' weights and activations: ``"auto"``
            (channels-last on the CPU, row-major elsewhere), ``"channels_last"`` or
            ``"contiguous"``. The samples are the same to float tolerance.
        heap_reuse: keep freed CPU memory in the process heap while a CPU chain runs
            (:func:`vaebm_fast._heap.heap_reuse`; a process-wide malloc setting, so off unless
            asked for): True, False, or None (the default) for the environment switch
            ``VAEBM_FAST_HEAP_REUSE=1`` (off when unset). Fixed when the sampler is made.

    A generator in training mode with BatchNorm/Dropout layers cannot run as an eval-mode
    snapshot without changing the samples: its chains run as :class:`LangevinSampler`'s (the
    module as it is, one warning with the fix: ``generator.eval()``), so that the two samplers
    still agree.

    ``sample(x0_or_n, *, seed, offset=0, return_chain=False, device=None, dtype=float32,
    check_finite=True, progress=False)`` returns samples [B, *data_shape] or a
    :class:`ChainResult` (potentials/energies [K + 1, B], states, next_offset), exactly as the
    eager sampler. ``progress`` shows nothing for a graphed chain (its steps are replays).
    """

    def __init__(self, energy, generator=None, *, graphs: bool = True,
                 graph_mode: str = "unrolled", memory_format: str = "auto",
                 heap_reuse: Optional[bool] = None, **kwargs):
        super().__init__(energy, generator, **kwargs)
        self.graph_mode = check_graph_mode(graph_mode)
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS} (got "
                             f"{memory_format!r})")
        if heap_reuse is not None and not isinstance(heap_reuse, bool):
            raise TypeError(f"heap_reuse must be None, True or False (got "
                            f"{type(heap_reuse).__name__} {heap_reuse!r})")
        self.heap_reuse = heap_reuse_requested(heap_reuse)
        self.graphs = bool(graphs)
        self.memory_format = memory_format
        # The layout the 4-D states are fed to the networks in, while a chain runs (decode).
        self._state_format: Optional[torch.memory_format] = None
        self._snapshots: dict[str, _Snapshot] = {}
        self._graph_chains: "collections.OrderedDict[tuple, GraphedChain]" = (
            collections.OrderedDict())
        self._last_chain: Optional[GraphedChain] = None
        self._graph_failures: dict[tuple, str] = {}
        self._prepare_failed: Optional[str] = None
        self.last_path: Optional[str] = None  # "graph", "fast" or "eager" (for tests and logs)

    # -- prepared networks -------------------------------------------------------------------
    def format_for(self, device) -> torch.memory_format:
        """The layout ``memory_format`` means on ``device``."""
        if self.memory_format == "auto":
            cpu = torch.device(device).type == "cpu"
            return torch.channels_last if cpu else torch.contiguous_format
        return _LAYOUTS[self.memory_format]

    def _snapshot(self, name: str, source, memory_format: torch.memory_format):
        """The prepared copy of ``source`` in ``memory_format`` (cached; rebuilt when its
        state key or the layout changes)."""
        if not isinstance(source, nn.Module):
            return source
        key = state_key(source)
        snap = self._snapshots.get(name)
        same = snap is not None and snap.source is source and snap.memory_format == memory_format
        if same and snap.key == key:
            return snap.module
        module = prepared(source)
        if memory_format == torch.channels_last:
            module = module.to(memory_format=torch.channels_last)  # the 4-D weights
        if same and _refresh_in_place(snap.module, module):
            module = snap.module  # same addresses: captured graphs stay valid
        self._snapshots[name] = _Snapshot(source, key, module, memory_format)
        return module

    def prepared_models(self, memory_format: Optional[torch.memory_format] = None):
        """(energy, generator) as the chain runs them: prepared snapshots of the modules (the
        originals are not modified), non-module callables as given. ``memory_format``
        defaults to :meth:`format_for` the models' device."""
        if memory_format is None:
            memory_format = self.format_for(_module_device(self.generator, self.energy))
        energy = self._snapshot("energy", self.energy, memory_format)
        generator = (self._snapshot("generator", self.generator, memory_format)
                     if self.space != "data" else None)
        return energy, generator

    def _network_layout(self, states):
        """During a chain on channels-last snapshots the 4-D states enter the networks
        channels-last (their gradients come back in that layout and the update reads them
        through a row-major copy)."""
        if self._state_format == torch.channels_last:
            return [s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s
                    for s in states]
        return states

    def invalidate(self) -> None:
        """Drop the cached snapshots and graphs (after changing weights through ``.data``)."""
        self._snapshots.clear()
        self._graph_chains.clear()
        self._last_chain = None

    # -- the chain ---------------------------------------------------------------------------
    def sample(self, x0_or_n, *, seed: int, offset: int = 0, first_index: Optional[int] = None,
               return_chain: bool = False, device=None, dtype: torch.dtype = torch.float32,
               check_finite: bool = True, progress: bool = False):
        """Run the chain; arguments and results as :meth:`LangevinSampler.sample`."""
        seed, offset = self._stream_position(seed, offset)
        device = device if device is not None else _module_device(self.generator, self.energy)
        memory_format = self.format_for(device)
        try:
            # A snapshot runs in eval mode: a generator whose training mode changes its forward
            # runs as it is, in the eager chain (which warns), so that both samplers agree.
            eager = self.space != "data" and mode_dependent_layers(self.generator)
            energy, generator = (None, None) if eager else self.prepared_models(memory_format)
        except Exception as exc:  # e.g. a module that cannot be deep-copied
            if self._prepare_failed is None:
                self._prepare_failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"FastSampler: could not prepare the networks "
                              f"({self._prepare_failed}); running the eager LangevinSampler "
                              f"chain instead", RuntimeWarning, stacklevel=2)
            eager = True
        if eager:
            self.last_path = "eager"
            return super().sample(x0_or_n, seed=seed, offset=offset, first_index=first_index,
                                  return_chain=return_chain, device=device, dtype=dtype,
                                  check_finite=check_finite, progress=progress)
        states, offset = self.initial_states(x0_or_n, seed=seed, offset=offset, device=device,
                                             dtype=dtype, check_finite=check_finite,
                                             first_row=first_index)
        self._check_model_dtype(states)
        states = [s.contiguous() for s in states]
        cpu = states[0].device.type == "cpu"
        run = None
        self._state_format = memory_format
        try:
            if self.graphs and self.backend in ("auto", "triton") and \
                    states[0].device.type == "cuda":
                run = self._run_graph(energy, generator, states, seed, offset, first_index)
            if run is None:
                with heap_reuse() if cpu and self.heap_reuse else contextlib.nullcontext():
                    run = self._run_chain(energy, generator, states, seed, offset, progress,
                                          first_index)
                self.last_path = "fast"
        finally:
            self._state_format = None
        states, x, *rest = run
        return self._finish(states, x.contiguous(), *rest, return_chain=return_chain,
                            check_finite=check_finite)

    # -- CUDA graphs ---------------------------------------------------------------------------
    def _graph_key(self, states, energy, generator, row_mode: bool) -> tuple:
        # id(energy), id(generator) last: _run_graph drops the chains of replaced snapshots.
        return (tuple((tuple(s.shape), s.dtype) for s in states), states[0].device, row_mode,
                self.graph_mode, self.space, self.n_steps, self.step_size, self.noise_scale,
                self.grad_clip, self.clamp, self.prior_weight, self.output, self.potential_kind,
                self.network_precision, id(energy), id(generator))

    def _run_graph(self, energy, generator, states, seed, offset, first_row=None):
        """Replay (capturing first if needed) the chain's CUDA graph; None to run eagerly.
        Row mode (``first_row`` given) is a graph of its own: its stream position holds
        first_row too, written before each replay like (seed, offset)."""
        key = self._graph_key(states, energy, generator, first_row is not None)
        # Graphs of snapshots that were replaced (not refreshed in place) are dead weight.
        for old in [k for k in self._graph_chains if k[-2:] != key[-2:]]:
            del self._graph_chains[old]
        if key in self._graph_failures:
            return None
        chain = self._graph_chains.get(key)
        if chain is not None:
            self._graph_chains.move_to_end(key)
        else:
            while len(self._graph_chains) >= MAX_GRAPHS:  # free its pool before capturing
                self._graph_chains.popitem(last=False)
            reason = graph_unavailable_reason(states[0].device)
            if reason is None:
                try:
                    with torch.cuda.device(states[0].device):  # capture on that device
                        chain = GraphedChain(self, energy, generator, states,
                                             row_mode=first_row is not None,
                                             graph_mode=self.graph_mode)
                        chain.capture()
                except Exception as exc:
                    reason = f"capture failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                self._graph_failures[key] = reason
                warnings.warn(f"FastSampler: running the chain eagerly instead of as a CUDA "
                              f"graph ({reason})", RuntimeWarning, stacklevel=3)
                return None
            self._graph_chains[key] = chain
        with torch.cuda.device(states[0].device):
            out = chain.run(states, seed, offset, first_row)
        self._last_chain = chain
        self.last_path = "graph"
        return out

    def replay(self, states=None):
        """Replay the most recently used captured chain once more *without* resetting its
        (seed, offset): the device-side offset the previous replay advanced is used, so the
        noise is fresh. ``states`` (list of [B, ...]) restarts from given states, else the chain
        continues from its last states. Returns the samples (a view of the graph's output
        buffer, overwritten by the next replay: clone to keep)."""
        if self._last_chain is None:
            raise RuntimeError("no captured chain: call sample() on CUDA tensors first")
        with torch.cuda.device(self._last_chain.states[0].device):
            return self._last_chain.replay(states)
