"""Spectral regulariser: sum of the largest singular values of a model's weight matrices.

Each layer's effective weight is viewed as a matrix W_eff.view(C_out, -1) ([C_out, C_in*kh*kw]
for a conv); layers whose matrices share a shape form one group and are power-iterated together
(:func:`vaebm_fast.ops.power_iteration.spectral_norms`, one call for all groups: on the CPU the
native kernel, which reads each matrix once per iteration). The running vectors u [G, R] and
v [G, C] of each group are persistent buffers ``u_{k}`` / ``v_{k}`` (k = group index in order of
first appearance), so they are saved with the model and survive a restart (the official code
kept them in plain dicts and lost them).

Iterations per call: 4, and 40 on the first call (the official ``10 * num_power_iter``) so the
random initial vectors converge before their estimates enter the loss. A state dict that holds
the vectors counts as warm: after loading it, calls go straight to 4 iterations.

A state dict *without* the vectors (an official checkpoint) still loads with ``strict=True``:
the regulariser removes its own missing keys from the report and keeps its fresh vectors.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.power_iteration import DEFAULT_EPS, spectral_norms

__all__ = ["SpectralRegularizer"]


def _weight_matrix(layer: nn.Module) -> Tensor:
    """The layer's effective weight as [C_out, rest] (differentiable)."""
    weight = layer.normalized_weight() if hasattr(layer, "normalized_weight") else layer.weight
    return weight.reshape(weight.shape[0], -1)


class SpectralRegularizer(nn.Module):
    """Sum over ``layers`` of sigma_max(W_eff), by grouped power iteration.

    Args:
        layers: modules with ``weight`` (and optionally ``normalized_weight()``), e.g. the
            WNConv2d layers of an energy network. They are referenced, not registered as
            submodules, so they appear in no state dict twice.
        n_iter: power iterations per call after the first (official: 4).
        first_n_iter: iterations on the first call with unloaded vectors (official: 40).
        eps: ``normalize`` eps (official: 1e-3).

    ``forward()`` returns a scalar Σ_layers sigma (differentiable w.r.t. the layers' weights).
    """

    def __init__(self, layers: Iterable[nn.Module], n_iter: int = 4, first_n_iter: int = 40,
                 eps: float = DEFAULT_EPS):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("SpectralRegularizer needs at least one layer")
        self.n_iter = n_iter
        self.first_n_iter = first_n_iter
        self.eps = eps
        # A plain list, so nn.Module does not register the layers a second time.
        self._layers: list[nn.Module] = layers
        groups: dict[tuple[int, int], list[int]] = {}
        for i, layer in enumerate(layers):
            rows = layer.weight.shape[0]
            groups.setdefault((rows, layer.weight[0].numel()), []).append(i)
        self._group_shapes: list[tuple[int, int]] = list(groups)
        self._group_members: list[list[int]] = list(groups.values())
        ref = layers[0].weight
        for k, ((rows, cols), members) in enumerate(zip(self._group_shapes, self._group_members)):
            u = torch.randn(len(members), rows, device=ref.device, dtype=ref.dtype)
            v = torch.randn(len(members), cols, device=ref.device, dtype=ref.dtype)
            self.register_buffer(f"u_{k}", F.normalize(u, dim=1, eps=eps))
            self.register_buffer(f"v_{k}", F.normalize(v, dim=1, eps=eps))
        self._warm = False

    @property
    def num_groups(self) -> int:
        return len(self._group_shapes)

    @property
    def group_shapes(self) -> list[tuple[int, int, int]]:
        """[(G, R, C)] per group: layer count and matrix shape."""
        return [(len(m), r, c) for (r, c), m in zip(self._group_shapes, self._group_members)]

    def _vectors(self) -> tuple[list[Tensor], list[Tensor]]:
        return ([getattr(self, f"u_{k}") for k in range(self.num_groups)],
                [getattr(self, f"v_{k}") for k in range(self.num_groups)])

    def sigmas(self, n_iter: int | None = None) -> list[Tensor]:
        """Run the power iteration; return sigma [G_k] per group (layer order within group)."""
        if n_iter is None:
            n_iter = self.n_iter if self._warm else self.first_n_iter
        matrices = [_weight_matrix(layer) for layer in self._layers]
        stacked = [torch.stack([matrices[i] for i in members])
                   for members in self._group_members]
        us, vs = self._vectors()
        out = spectral_norms(stacked, us, vs, n_iter, self.eps)
        self._warm = True
        return out

    def forward(self, n_iter: int | None = None) -> Tensor:
        """Σ sigma over all layers (scalar). ``n_iter`` overrides the 4/40 schedule."""
        return torch.cat(self.sigmas(n_iter)).sum()

    def _own_keys(self, prefix: str) -> list[str]:
        return [prefix + name for name in self._buffers]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        present = [key in state_dict for key in self._own_keys(prefix)]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # Checkpoints without our vectors (official ones) are legitimate: keep the fresh
        # vectors and do not report them missing, so strict loading still succeeds. This is
        # done here rather than in a post-hook because here the prefix is known.
        own = set(self._own_keys(prefix))
        missing_keys[:] = [key for key in missing_keys if key not in own]
        if all(present):
            self._warm = True

    def extra_repr(self) -> str:
        return (f"layers={len(self._layers)}, groups={self.group_shapes}, n_iter={self.n_iter}, "
                f"first_n_iter={self.first_n_iter}")
