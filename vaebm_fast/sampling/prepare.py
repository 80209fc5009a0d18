"""Which frozen copy of a network a Langevin chain runs, and when to make it again.

A chain evaluates the same frozen networks K times (decoder, energy, their backward to the
state). FastSampler therefore runs snapshots: frozen, inference-only copies made by
:func:`vaebm_fast.nn.frozen_copy` (eval mode, no parameter gradients -- the official loop's
waste #1 -- weight norms computed once -- waste #2 -- and BatchNorms folded into adjacent convs
where exact; that module's docstring states the rewrites and why they are exact).

The contract a module offers to sampling (docs/interfaces.md):

* ``sampling_drop``: an optional attribute, usually a class attribute, naming the direct
  submodules a chain never runs (an encoder, a training-only regulariser). They are ``None``
  in the snapshot and are never copied. The models of :mod:`vaebm_fast.models` declare it.
* ``prepare_for_sampling() -> nn.Module``: an optional method for full control. When a module
  defines it, :func:`prepared` calls it instead of the generic path; it must return a module
  computing the same forward (in eval mode) and leave the module itself unchanged.

Here:

* :func:`prepared`: the snapshot FastSampler runs (the module's own method, else
  :func:`prepare_for_sampling`).
* :func:`prepare_for_sampling`: the generic snapshot, ``frozen_copy`` less ``sampling_drop``.
* :func:`state_key`: the fingerprint FastSampler compares to know when a snapshot is stale.

``AffineSwish`` and ``PREPARED_ATTR`` are the layer and the marker of :mod:`vaebm_fast.nn`,
re-exported under the names this module has always offered.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

from torch import Tensor, nn

from ..nn.freeze import FROZEN_ATTR, frozen_copy, is_frozen_copy
from ..nn.norm import AffineSwish

__all__ = ["prepare_for_sampling", "prepared", "state_key", "AffineSwish", "PREPARED_ATTR"]

# Set on the root of every snapshot, so preparing a snapshot again is a no-op.
PREPARED_ATTR = FROZEN_ATTR

# The attribute in which a module names the submodules a chain never runs.
_DROP_ATTR = "sampling_drop"


def prepare_for_sampling(module, *, drop: Optional[Union[str, Iterable[str]]] = None):
    """A frozen snapshot of ``module`` for Langevin chains (:func:`vaebm_fast.nn.frozen_copy`).

    Args:
        module: any ``nn.Module`` (anything else, e.g. a plain function, is returned as is).
        drop: names of direct submodules not needed for sampling, ``None`` in the copy.
            Default: what ``module.sampling_drop`` declares (nothing when it declares none).
            A name that is not a submodule raises ValueError.

    Returns:
        A new module in eval mode with ``requires_grad=False`` everywhere, weight norms
        materialised and BatchNorms folded where exact, computing ``module``'s eval-mode
        forward. ``module`` is left unchanged; a module that already is a snapshot is returned
        as is.
    """
    if not isinstance(module, nn.Module) or is_frozen_copy(module):
        return module
    if drop is None:
        drop = getattr(module, _DROP_ATTR, ())
    return frozen_copy(module, drop=drop)


def prepared(module):
    """The snapshot a chain runs: ``module.prepare_for_sampling()`` if the module defines it,
    else :func:`prepare_for_sampling` (which honours ``sampling_drop``). Non-modules and
    modules that already are snapshots are returned as is."""
    if not isinstance(module, nn.Module) or is_frozen_copy(module):
        return module
    method = getattr(module, "prepare_for_sampling", None)
    if callable(method):
        return method()
    return prepare_for_sampling(module)


def state_key(module: object) -> tuple:
    """A cheap fingerprint of a module's parameters and buffers: per tensor its identity, its
    storage address, shape, dtype, device and in-place version counter. It changes whenever an
    optimizer step, ``load_state_dict``, ``.to()`` or any in-place op under autograd's
    version tracking changes a tensor (writes through ``.data`` are not tracked: re-prepare
    by hand after those). Non-modules give ``()``. Costs O(number of tensors), no device sync.
    """
    if not isinstance(module, nn.Module):
        return ()
    key = [module.training]
    for t in _tensors(module):
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter
            version = -1
        key.append((id(t), t.data_ptr(), tuple(t.shape), t.dtype, t.device, version))
    return tuple(key)


def _tensors(module: nn.Module) -> Iterable[Tensor]:
    yield from module.parameters()
    yield from module.buffers()
