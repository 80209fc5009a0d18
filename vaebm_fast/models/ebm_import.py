"""Importing official VAEBM energy-network checkpoints (vaebm_fast.models.load_official_ebm).

The official training script saves ``{'model': EBM.state_dict(), 'optimizer': ...}``
(docs/design.md#official-energy-networks); a bare state dict is accepted too. The file is read
weights-only, the network is :func:`official_ebm` of the given arch with the base width read
off ``conv1.weight`` [n_channel, 3, 3, 3], and the weights load strictly: every official key
present, no other key (the spectral regulariser's power-iteration vectors, which the official
code does not save, are the one optional part).
"""
from __future__ import annotations

import argparse
import os
import pickle

import torch

from .energy import OFFICIAL_EBM_ARCHS, ResNetEnergy, official_ebm

__all__ = ["load_official_ebm", "EBMImportError"]


class EBMImportError(ValueError):
    """An official VAEBM EBM checkpoint that cannot be imported (the message says why)."""


def load_official_ebm(path_or_state, arch: str, map_location="cpu") -> ResNetEnergy:
    """An official VAEBM EBM checkpoint as an eval-mode :class:`ResNetEnergy` for ``arch``.

    Args:
        path_or_state: the checkpoint's path, or what ``torch.load`` returned for it
            (``{'model': state_dict, ...}`` or the state dict itself).
        arch: one of ``OFFICIAL_EBM_ARCHS`` ("cifar32", "celeba64", "lsun64", "celeba256",
            "mnist").
        map_location: passed to ``torch.load`` (official files hold CUDA tensors).

    Raises :class:`EBMImportError` (a ``ValueError``) with a one-line reason when the file holds
    pickled objects other than tensors, is not an EBM state dict, or its keys or shapes do not
    match ``arch``.
    """
    if arch not in OFFICIAL_EBM_ARCHS:
        raise EBMImportError(f"unknown EBM arch {arch!r}; valid: "
                             f"{', '.join(OFFICIAL_EBM_ARCHS)}")
    state = _state_dict(_read(path_or_state, map_location))
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        raise EBMImportError(f"not an official VAEBM EBM checkpoint: no 4-D 'conv1.weight' "
                             f"(found keys {sorted(state)[:5]})")
    model = official_ebm(arch, n_channel=conv1.shape[0], in_channels=conv1.shape[1])
    expected = model.official_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what} {keys[:4]}" for what, keys in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise EBMImportError(f"the checkpoint is not an official {arch} EBM (n_channel "
                             f"{conv1.shape[0]}): {'; '.join(parts)}; check --ebm-arch")
    model.load_state_dict(state, strict=True)  # the spectral vectors are optional on load
    return model.eval()


def _read(path_or_state, map_location):
    if not isinstance(path_or_state, (str, os.PathLike)):
        return path_or_state
    try:
        # argparse.Namespace too, so an NVAE checkpoint given by mistake is named as one.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path_or_state, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise EBMImportError(
            f"{os.fspath(path_or_state)!r} holds pickled objects other than tensors, so it was "
            f"not loaded (loading could run code); an official EBM checkpoint holds only "
            f"tensors and plain containers") from None
    except RuntimeError as error:  # not a torch file at all (zip/pickle header)
        raise EBMImportError(f"{os.fspath(path_or_state)!r} is not a torch checkpoint "
                             f"({str(error).strip().splitlines()[0][:120]})") from None


def _state_dict(checkpoint) -> dict:
    """The EBM's state dict out of ``{'model': ...}`` or a bare state dict; a uniform
    ``module.`` prefix (a DistributedDataParallel wrapper's) is removed."""
    if isinstance(checkpoint, dict) and {"state_dict", "args"} <= set(checkpoint):
        raise EBMImportError("this is an NVAE checkpoint ('state_dict' and 'args'), not an "
                             "official EBM one ({'model': state_dict, ...}); pass it as the "
                             "NVAE (--nvae) and the EBM's file as the EBM")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise EBMImportError(f"an official EBM checkpoint is {{'model': state_dict, ...}} or a "
                             f"state dict (got {type(checkpoint).__name__})")
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise EBMImportError(f"not an EBM state dict: {[str(k) for k in not_tensors[:4]]} are "
                             f"not tensors")
    if all(str(k).startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint
