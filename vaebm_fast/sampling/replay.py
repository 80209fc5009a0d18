"""On-device replay buffer of persistent Langevin chains.

The buffer is a ring of fixed capacity holding one tensor per state group
([capacity, *shape] each), written FIFO. A batch of B chains starts from Binomial(B, p)
stored chains (drawn uniformly from the filled part) and B - k fresh ones; after the chain
the final states are pushed back. VAEBM stores eps_z only (docs/design.md#replay-buffer); the
pixel-space EBM stores x.

Everything lives on the device: no Python lists of per-sample tensors, no CPU round trip for
the states. The only host-side quantities are the integer count of stored chains and the
number reused per batch.
"""
from __future__ import annotations

import torch

from ..ops import replay_gather, replay_scatter_


def reinit_probability(iteration: int, max_p: float = 0.6, anneal_steps: int = 5000) -> float:
    """The official ramp: p = min(max_p, max_p * iteration / anneal_steps)."""
    if anneal_steps <= 0:
        return max_p
    return min(max_p, max_p * iteration / anneal_steps)


class ReplayBuffer:
    """FIFO ring of chain states.

    Args:
        capacity: number of chains kept (official: 10 000; 2 000 for CelebA-256).
        shapes: per-sample shape of each state group, e.g. ``vae.latent_shapes``.
        device, dtype: where and how the states are stored.
    """

    def __init__(self, capacity: int, shapes: list[tuple[int, ...]], device=None,
                 dtype: torch.dtype = torch.float32):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive (got {capacity})")
        self.capacity = int(capacity)
        self.shapes = [tuple(s) for s in shapes]
        self.storage = [torch.zeros(self.capacity, *s, device=device, dtype=dtype)
                        for s in self.shapes]
        self.size = 0  # chains stored so far (<= capacity)
        self.head = 0  # next slot to write

    def __len__(self) -> int:
        return self.size

    def initial_states(self, batch_size: int, reuse_prob: float, *, seed: int, offset: int
                       ) -> tuple[list[torch.Tensor], int, int]:
        """Start states for ``batch_size`` chains.

        Returns (states, n_reused, next_offset): states[g] is [batch_size, *shapes[g]]; its
        first n_reused rows come from the buffer, the rest are fresh N(0, 1) normals drawn from
        the Philox stream at (seed, offset).

        Noise numbering (one fused ``replay_gather`` per group): group g starts at
        ``offset_g`` (``offset_0 = offset``) and row b of it, when fresh, uses normals
        ``offset_g + b*P_g .. offset_g + (b+1)*P_g - 1`` (``P_g = prod(shapes[g])``); the
        positions of reused rows are skipped. If any row is fresh, group g consumes
        ``batch_size * P_g`` normals (``offset_{g+1} = offset_g + batch_size * P_g``); if every
        row is reused no noise is drawn and next_offset == offset. With no reused rows this is
        the same numbering as drawing ``batch_size * P_g`` normals per group in order.
        """
        device = self.storage[0].device
        rng = torch.Generator().manual_seed((seed * 1_000_003 + offset) % (2 ** 63))
        n_reused = 0
        if self.size > 0 and reuse_prob > 0:
            n_reused = int(torch.binomial(torch.tensor(float(batch_size)),
                                          torch.tensor(float(reuse_prob)), generator=rng))
        index = torch.randint(0, max(self.size, 1), (n_reused,), generator=rng)
        # Rows [0, n_reused) gathered, the rest fresh; a fresh row's index is not read.
        full_index = torch.zeros(batch_size, dtype=torch.int64)
        full_index[:n_reused] = index
        full_index = full_index.to(device)
        reinit = torch.arange(batch_size, device=device) >= n_reused
        states = []
        for stored in self.storage:
            out, next_offset = replay_gather(stored, full_index, reinit, seed=seed, offset=offset)
            if n_reused < batch_size:  # some row used noise: skip this group's whole range
                offset = next_offset
            states.append(out)
        return states, n_reused, offset

    def push(self, states: list[torch.Tensor]) -> None:
        """Store final chain states (states[g]: [B, *shapes[g]]), overwriting the oldest."""
        batch = states[0].shape[0]
        if batch > self.capacity:
            states = [s[-self.capacity:] for s in states]
            batch = self.capacity
        slots = (torch.arange(batch) + self.head) % self.capacity
        slots = slots.to(self.storage[0].device)
        for stored, s in zip(self.storage, states):
            replay_scatter_(stored, slots, s.detach().to(device=stored.device, dtype=stored.dtype))
        self.head = (self.head + batch) % self.capacity
        self.size = min(self.capacity, self.size + batch)

    def state_dict(self) -> dict:
        return {"storage": [s.cpu() for s in self.storage], "size": self.size, "head": self.head,
                "capacity": self.capacity, "shapes": self.shapes}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or [tuple(s) for s in state["shapes"]] != self.shapes:
            raise ValueError(
                f"replay buffer mismatch: checkpoint has capacity {state['capacity']} and shapes "
                f"{state['shapes']}, this buffer {self.capacity} and {self.shapes}")
        for stored, saved in zip(self.storage, state["storage"]):
            stored.copy_(saved)
        self.size, self.head = int(state["size"]), int(state["head"])

