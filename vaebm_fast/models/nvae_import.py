"""Strict import of official NVAE checkpoints (the backbones of official VAEBM).

An official checkpoint is one ``torch.save`` dict; the two entries used here are
``'state_dict'`` (the model's tensors, often written from CUDA) and ``'args'`` (the
``argparse.Namespace`` of the training command line, from which alone the architecture is
rebuilt). :func:`load_nvae`:

1. reads the file with ``torch.load(weights_only=True)``; the only non-tensor global let
   through is ``argparse.Namespace`` (the ``args``). Any other pickled object is refused, so a
   downloaded file cannot run code while loading;
2. completes ``args`` with the defaults older files lack (``ada_groups=False``,
   ``min_groups_per_scale=1``; ``num_mixture_dec`` is read off the decoder head's output
   channels: 6 = Normal decoder, 10 M = logistic mixture of M components);
3. rejects what has no reparameterised sample (the logistic-mixture decoder) and checks the
   widths and group counts in ``args`` against the tensors' shapes, naming the argument that
   disagrees;
4. maps the official key layout onto ours (the official fused BN-Swish *is* a BatchNorm, so its
   keys lack our ``bn.`` level; convs without weight norm also store their weight a second time
   as ``weight_normalized``, verified equal and dropped) and loads with ``strict=True``: every
   official tensor must be consumed and every parameter and buffer of ours must be loaded,
   except the project-only spectral-regulariser vectors (``spectral_regularizer.*``), which
   official files cannot have.

The returned model is in eval mode (BatchNorm uses the imported running statistics, as VAEBM
samples) and its top prior std is NVAE's effective 1.01.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from types import SimpleNamespace

import torch
from torch import Tensor

from ..nn import BNSwish, WNConv2d
from .nvae import HierarchicalVAE, HierarchicalVAEConfig

__all__ = ["load_nvae"]

# Arguments every supported checkpoint must carry (the rest have defaults or are inferred).
_REQUIRED_ARGS = ("dataset", "num_channels_enc", "num_channels_dec", "num_preprocess_blocks",
                  "num_preprocess_cells", "num_postprocess_blocks", "num_postprocess_cells",
                  "num_latent_scales", "num_groups_per_scale", "num_latent_per_group",
                  "num_cell_per_cond_enc", "num_cell_per_cond_dec", "use_se", "res_dist")

# Defaults for arguments that older checkpoints predate (those NVAE's evaluate.py and VAEBM
# apply when loading).
_ARG_DEFAULTS = {"ada_groups": False, "min_groups_per_scale": 1, "num_nf": 0, "num_x_bits": 8}

# Our state that official files cannot hold: the spectral regulariser's power-iteration vectors
# (fresh ones are kept, as the layer itself allows).
_PROJECT_ONLY_PREFIXES = ("spectral_regularizer.",)

_ALIAS = "weight_normalized"
_BN_STATE_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_HEAD_WEIGHT = "image_conditional.1.weight"
_MAX_NAMED = 5  # keys named in an error message


class NVAEImportError(ValueError):
    """An official NVAE checkpoint that cannot be imported (the message says why)."""


def load_nvae(path_or_checkpoint, map_location="cpu") -> HierarchicalVAE:
    """An official NVAE checkpoint as an eval-mode :class:`HierarchicalVAE`.

    Args:
        path_or_checkpoint: the path of the ``.pt`` file, or the dict already loaded from it.
        map_location: passed to ``torch.load`` (official files hold CUDA tensors).

    Raises :class:`NVAEImportError` (a ``ValueError``) with a one-line reason when the file is
    not an official checkpoint, holds pickled objects other than tensors and
    ``argparse.Namespace``, uses the logistic-mixture decoder, has ``args`` that disagree with
    its tensors, or has keys that do not map one-to-one onto the model's.
    """
    checkpoint = _read(path_or_checkpoint, map_location)
    state = checkpoint["state_dict"]
    args = _complete_args(checkpoint["args"], state)
    _check_args_against_tensors(args, state)
    model = HierarchicalVAE(_config(args))
    mapped = _map_keys(state, model)
    _check_keys_and_shapes(mapped, model)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


# -- reading ---------------------------------------------------------------------------------
def _read(path_or_checkpoint, map_location) -> dict:
    if isinstance(path_or_checkpoint, (str, os.PathLike)):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path_or_checkpoint, map_location=map_location,
                                        weights_only=True)
        except pickle.UnpicklingError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise NVAEImportError(
                f"{os.fspath(path_or_checkpoint)!r} holds pickled objects other than tensors "
                f"and argparse.Namespace, so it was not loaded (loading could run code); an "
                f"official NVAE checkpoint holds only those ({first_line})") from None
    else:
        checkpoint = path_or_checkpoint
    if not isinstance(checkpoint, dict):
        raise NVAEImportError(f"an NVAE checkpoint is a dict with 'state_dict' and 'args' "
                              f"(got {type(checkpoint).__name__})")
    absent = [key for key in ("state_dict", "args") if key not in checkpoint]
    if absent:
        raise NVAEImportError(f"not an official NVAE checkpoint: no "
                              f"{' or '.join(map(repr, absent))} entry (found keys "
                              f"{sorted(map(str, checkpoint))[:8]})")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise NVAEImportError(f"checkpoint['state_dict'] must be a dict of tensors "
                              f"(got {type(state).__name__})")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise NVAEImportError(f"checkpoint['state_dict'] must hold only tensors; "
                              f"{not_tensors[:_MAX_NAMED]} are not")
    if not isinstance(checkpoint["args"], (argparse.Namespace, SimpleNamespace, dict)):
        raise NVAEImportError(f"checkpoint['args'] must be the argparse.Namespace of the "
                              f"training command line (got {type(checkpoint['args']).__name__})")
    return checkpoint


# -- args ------------------------------------------------------------------------------------
def _complete_args(args, state: dict) -> SimpleNamespace:
    """A copy of ``args`` with the defaults of older files filled in and ``num_mixture_dec``
    read off (or checked against) the decoder head."""
    fields = dict(args) if isinstance(args, dict) else dict(vars(args))
    missing = [name for name in _REQUIRED_ARGS if name not in fields]
    if missing:
        raise NVAEImportError(f"checkpoint['args'] lacks {', '.join(missing)}; it is not an "
                              f"NVAE training command line")
    for name, default in _ARG_DEFAULTS.items():
        fields.setdefault(name, default)
    if _HEAD_WEIGHT not in state:
        raise NVAEImportError(f"the state dict has no {_HEAD_WEIGHT!r} (the decoder head); it "
                              f"is not an NVAE model")
    head_channels = state[_HEAD_WEIGHT].shape[0]
    if head_channels == 6:
        from_tensors = 1
    elif head_channels % 10 == 0:
        from_tensors = head_channels // 10
    else:
        raise NVAEImportError(f"{_HEAD_WEIGHT} has {head_channels} output channels; expected 6 "
                              f"(Normal decoder on RGB) or 10 M (logistic mixture of M); "
                              f"NVAE's 1-channel Bernoulli decoder (MNIST, Omniglot; "
                              f"args.dataset={fields['dataset']!r}) is not supported")
    stated = fields.setdefault("num_mixture_dec", from_tensors)
    if stated != from_tensors:
        raise NVAEImportError(f"args.num_mixture_dec={stated} disagrees with the tensors: "
                              f"{_HEAD_WEIGHT} has {head_channels} output channels, i.e. "
                              f"num_mixture_dec={from_tensors}")
    if from_tensors > 1:
        raise NVAEImportError(
            f"the checkpoint has a logistic-mixture (DMOL) decoder with {from_tensors} "
            f"components, which has no reparameterised sample and so no eps-space map; only "
            f"Normal-decoder backbones (num_mixture_dec=1, as VAEBM trains them) can be imported")
    return SimpleNamespace(**fields)


def _check_args_against_tensors(args, state: dict) -> None:
    """The architecture arguments agree with the tensors' shapes (names the one that does
    not); run before building, so a wrong width fails here and not as a shape mismatch."""
    def check(key: str, dim: int, expected: int, argument: str) -> None:
        if key not in state:
            raise NVAEImportError(f"the state dict has no {key!r}; it is not an NVAE "
                                  f"'res_mbconv' model")
        actual = state[key].shape[dim]
        if actual != expected:
            raise NVAEImportError(f"args.{argument}={getattr(args, argument)} disagrees with the "
                                  f"tensors: {key} has size {actual} in dim {dim}, expected "
                                  f"{expected}")

    check("stem.weight", 0, args.num_channels_enc, "num_channels_enc")
    check(_HEAD_WEIGHT, 1, args.num_channels_dec, "num_channels_dec")
    check("enc_sampler.0.weight", 0, 2 * args.num_latent_per_group, "num_latent_per_group")
    config = _config(args)
    num_groups = config.num_groups
    dec_samplers = _count_entries(state, "dec_sampler")
    if dec_samplers != num_groups - 1:
        raise NVAEImportError(
            f"args give {num_groups} latent groups (num_latent_scales={args.num_latent_scales}, "
            f"num_groups_per_scale={args.num_groups_per_scale}, ada_groups={args.ada_groups}, "
            f"min_groups_per_scale={args.min_groups_per_scale}) but the tensors have "
            f"{dec_samplers + 1} (dec_sampler has {dec_samplers} entries)")
    nf_cells = _count_entries(state, "nf_cells")
    if nf_cells != num_groups * args.num_nf:
        raise NVAEImportError(f"args.num_nf={args.num_nf} disagrees with the tensors: "
                              f"{nf_cells} nf_cells entries for {num_groups} latent groups")
    top_mult = 2 ** (config.num_preprocess_blocks + config.num_latent_scales - 1)
    expected_ftr0 = (config.num_channels_dec * top_mult, config.top_latent_size,
                     config.top_latent_size)
    if "prior_ftr0" not in state or tuple(state["prior_ftr0"].shape) != expected_ftr0:
        found = tuple(state["prior_ftr0"].shape) if "prior_ftr0" in state else None
        raise NVAEImportError(
            f"prior_ftr0 has shape {found}, but args (dataset={args.dataset!r}, "
            f"num_channels_dec={args.num_channels_dec}, num_preprocess_blocks="
            f"{args.num_preprocess_blocks}, num_latent_scales={args.num_latent_scales}) give "
            f"{expected_ftr0}")


def _config(args) -> HierarchicalVAEConfig:
    try:
        return HierarchicalVAEConfig.from_nvae_args(args)
    except (ValueError, TypeError) as error:  # unsupported dataset, architecture, sizes
        raise NVAEImportError(f"cannot import this NVAE checkpoint: {error}") from None


def _count_entries(state: dict, prefix: str) -> int:
    """Number of distinct ``prefix.N.`` indices among the keys."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({match.group(1) for key in state if (match := pattern.match(key))})


# -- keys ------------------------------------------------------------------------------------
def _map_keys(state: dict, model: HierarchicalVAE) -> dict[str, Tensor]:
    """Official key names -> ours: flat BN-Swish keys move under ``bn.``; the
    ``weight_normalized`` aliases of convs without weight norm are checked and dropped."""
    bn_swish = {name for name, m in model.named_modules() if isinstance(m, BNSwish)}
    plain_convs = {name for name, m in model.named_modules()
                   if isinstance(m, WNConv2d) and not m.weight_norm}
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if name == _ALIAS and prefix in plain_convs:
            weight = state.get(prefix + ".weight")
            if weight is None or not torch.equal(weight, value):
                raise NVAEImportError(f"{key} is not equal to {prefix}.weight (official files "
                                      f"store the same tensor under both names); the file is "
                                      f"corrupt")
            continue
        if prefix in bn_swish and name in _BN_STATE_NAMES:
            key = f"{prefix}.bn.{name}"
        mapped[key] = value
    return mapped


def _check_keys_and_shapes(mapped: dict, model: HierarchicalVAE) -> None:
    ours = {key: value for key, value in model.state_dict().items()
            if not key.startswith(_PROJECT_ONLY_PREFIXES)}
    unknown = sorted(set(mapped) - set(ours))
    missing = sorted(set(ours) - set(mapped))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s) in the file, e.g. "
                         f"{unknown[:_MAX_NAMED]}")
        if missing:
            parts.append(f"{len(missing)} key(s) of the model missing from the file, e.g. "
                         f"{missing[:_MAX_NAMED]}")
        raise NVAEImportError(f"the checkpoint does not match the architecture its args "
                              f"describe: {'; '.join(parts)}")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise NVAEImportError(f"{key} has shape {list(value.shape)} in the file but "
                                  f"{list(ours[key].shape)} in the model its args describe")
