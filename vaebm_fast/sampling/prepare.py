"""Frozen, inference-only copies of networks for Langevin chains.

A chain evaluates the same frozen networks K times (decoder, energy, their backward to the
state). :func:`prepare_for_sampling` does the per-weight work once per chain instead of once per
step, and hands back a module that computes the same function (in eval mode) with less work:

* ``eval()`` (BatchNorm uses its running statistics) and ``requires_grad_(False)`` on every
  parameter: the backward of a chain reaches the state only (the official loop's waste #1).
* Every :class:`~vaebm_fast.nn.WNConv2d` becomes a plain ``nn.Conv2d`` whose weight is the
  effective weight ``exp(g) W / (||W|| + 1e-5)``, computed once (waste #2). Modules using
  ``torch.nn.utils.parametrize`` (e.g. ``parametrizations.weight_norm``) or the older hook-based
  ``torch.nn.utils.weight_norm`` get their parametrised weight materialised the same way.
* BatchNorm in eval mode is a per-channel affine map ``x * s + t``, folded into an adjacent
  convolution where that is exact. Inside an ``nn.Sequential`` (children are rewritten first,
  so nested Sequentials compose):

  - ``Conv2d -> BatchNorm2d``: into the conv's output (``W s``, ``b s + t``); always exact.
  - ``Conv2d -> BNSwish`` (NVAE's BN-Swish after a conv): BN folded into the conv, the Swish
    kept (``vaebm_fast.nn.Swish``).
  - ``BatchNorm2d -> Conv2d`` with zero padding (e.g. the 1x1 expansion conv after the
    ``NVAEBatchNorm`` that opens NVAE's inverted residual): into the conv's input channels
    (``W s`` along input channels, ``b + sum W t``). Exact because no padding mixes zeros
    into the affine map; convs with padding are left alone. The conv may be the first layer
    of a following ``nn.Sequential`` or ``ConvBNSwish``.
  - ``Linear -> BatchNorm1d``: into the Linear.

  ``NVAEBatchNorm`` (a BatchNorm2d held as ``.bn``) is treated as its BatchNorm2d. A BatchNorm
  that is folded is replaced by ``nn.Identity``. BatchNorms without running statistics
  (``track_running_stats=False``) are never folded (they normalise by batch statistics).
* A :class:`~vaebm_fast.nn.BNSwish` that no conv precedes becomes :class:`AffineSwish`, the
  fused ``affine_swish`` op with its (scale, shift) computed once.

Exactness: every rewrite is an identity of real arithmetic; in floating point the folded
weights are computed in float64 and rounded once, so the prepared module agrees with the
original's eval-mode output to float rounding (~1e-6 relative in float32).

Semantics: the result is a **snapshot**. :func:`prepare_for_sampling` deep-copies the module
(the copy owns its tensors: no storage is shared with the original) and rewrites the copy;
the original module -- its mode, ``requires_grad`` flags, parameters, buffers and structure --
is not modified, so it trains on unchanged afterwards. Changes made to the original later do
not reach the snapshot: prepare again (``FastSampler`` does so by itself when any parameter or
buffer of the original changed, see :func:`state_key`). The snapshot is meant for forward
passes (and gradients with respect to inputs) only, not for training: folded BatchNorms no
longer exist, so training it would be wrong. Submodules named in ``drop`` (e.g. an encoder that
sampling never runs) are set to ``None`` in the copy and not copied at all.

Models expose this as a method, ``model.prepare_for_sampling()`` (the VAEs and energy networks
of :mod:`vaebm_fast.models`); any other ``nn.Module`` goes through the generic path here.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import Tensor, nn

from ..nn import BNSwish, Swish, WNConv2d
from ..ops.epilogues import affine_swish

__all__ = ["prepare_for_sampling", "prepared", "state_key", "AffineSwish", "PREPARED_ATTR"]

# Set on every module this file returns (the root), so preparing twice is a no-op.
PREPARED_ATTR = "_vaebm_fast_prepared"


class AffineSwish(nn.Module):
    """``swish(x * scale[c] + shift[c])`` (c = dim 1), an eval-mode BatchNorm + Swish with its
    per-channel affine map precomputed. x: [B, C, ...] -> same shape. Buffers ``scale``,
    ``shift``: [C]."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale, self.shift
        if scale.dtype != x.dtype:
            scale, shift = scale.to(x.dtype), shift.to(x.dtype)
        return affine_swish(x, scale, shift)


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


def _walk(module: nn.Module, skip: dict):
    """Every module below ``module`` (included), not descending into ids in ``skip``."""
    if id(module) in skip:
        return
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from _walk(child, skip)


def _tensors(module: nn.Module) -> Iterable[Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def prepare_for_sampling(module, *, drop: Iterable[str] = ()):
    """A frozen, prepared snapshot of ``module`` for Langevin chains (see the module docstring).

    Args:
        module: any ``nn.Module`` (anything else, e.g. a plain function, is returned as is).
        drop: names of direct submodules not needed for sampling; they are ``None`` in the copy.

    Returns:
        A new module in eval mode with ``requires_grad=False`` everywhere, weight norms
        materialised and BatchNorms folded where exact. ``module`` is left unchanged. A module
        that already is a prepared snapshot is returned as is.
    """
    if not isinstance(module, nn.Module):
        return module
    if getattr(module, PREPARED_ATTR, False):
        return module
    # deepcopy looks every object up in memo by id first: dropped submodules become None and
    # weight-normalised convs their plain replacements, so neither is ever copied.
    memo = {}
    for name in drop:
        sub = getattr(module, name, None)
        if sub is not None:
            memo[id(sub)] = None
    with torch.no_grad():
        for m in _walk(module, memo):
            if type(m) is WNConv2d:
                memo[id(m)] = _plain_conv(m)
        out = copy.deepcopy(module, memo)
        out.eval()
        for p in out.parameters():
            p.requires_grad_(False)
            p.grad = None
        _materialize_parametrizations(out)
        _rewrite(out)
        for p in out.parameters():
            p.requires_grad_(False)
    setattr(out, PREPARED_ATTR, True)
    return out


def prepared(module):
    """``module.prepare_for_sampling()`` if the module defines it, else the generic
    :func:`prepare_for_sampling` (non-modules are returned as is)."""
    if not isinstance(module, nn.Module) or getattr(module, PREPARED_ATTR, False):
        return module
    method = getattr(module, "prepare_for_sampling", None)
    if callable(method):
        return method()
    return prepare_for_sampling(module)


# ------------------------------------------------------------------------------ rewriting

def _materialize_parametrizations(root: nn.Module) -> None:
    from torch.nn.utils import parametrize

    for m in list(root.modules()):
        if parametrize.is_parametrized(m):
            # deepcopy keeps the per-module class that parametrize injected, and removing a
            # parametrization deletes a property from that class: give the copy its own class
            # first, or the original would lose its parametrised attribute.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
        # Old-style weight norm: a forward pre-hook recomputing `weight` from weight_g/_v.
        for hook in list(getattr(m, "_forward_pre_hooks", {}).values()):
            if type(hook).__name__ == "WeightNorm":
                try:
                    torch.nn.utils.remove_weight_norm(m, hook.name)
                except (ValueError, AttributeError):
                    pass


def _plain_conv(conv: WNConv2d) -> nn.Conv2d:
    """A plain nn.Conv2d computing ``conv`` with its effective weight frozen in."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None, device="meta")
    # WNConv2d.forward calls F.conv2d with zero padding whatever its padding_mode says.
    plain.padding_mode = "zeros"
    if conv._frozen_weight is not None:
        weight = conv._frozen_weight.clone()
    elif conv.weight_norm:
        weight = conv.normalized_weight()  # a new tensor (computed under no_grad)
    else:
        weight = conv.weight.clone()
    plain.weight = nn.Parameter(weight, requires_grad=False)
    if conv.bias is not None:
        plain.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    plain.train(conv.training)
    return plain


def _foldable_bn(m: nn.Module):
    """The eval-mode BatchNorm a module is (BatchNorm1d/2d, NVAEBatchNorm) or None."""
    from ..models.nvae_cells import NVAEBatchNorm

    if type(m) is NVAEBatchNorm:
        m = m.bn
    if type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        return None
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    return m


def _bn_affine(bn) -> tuple[Tensor, Tensor]:
    """float64 (scale, shift) of an eval-mode BatchNorm."""
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight.double() * inv_std
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _set_weight_bias(layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _is_plain_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d


def _fold_after(layer: nn.Module, bn) -> None:
    """layer (Conv2d or Linear) followed by bn: fold bn into the layer's output."""
    scale, shift = _bn_affine(bn)
    w = layer.weight.double()
    w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    b = torch.zeros_like(scale) if layer.bias is None else layer.bias.double()
    _set_weight_bias(layer, w, b * scale + shift)


def _first_conv(m: nn.Module):
    """The conv a module applies first to its input, for the patterns recognised here."""
    from ..models.nvae_cells import ConvBNSwish

    while True:
        if _is_plain_conv(m):
            return m
        if type(m) is ConvBNSwish:
            m = m.conv
        elif type(m) is nn.Sequential and len(m) > 0:
            m = m[0]
        else:
            return None


def _zero_padding(conv: nn.Conv2d) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "valid"
    return all(p == 0 for p in conv.padding)


def _fold_before(bn, conv: nn.Conv2d) -> None:
    """bn followed by conv (zero padding): fold bn into the conv's input channels."""
    scale, shift = _bn_affine(bn)
    w = conv.weight.double()  # [C_out, C_in / g, kh, kw]
    c_out, c_in_g = w.shape[:2]
    g = conv.groups
    # Input channel of weight entry [o, j]: (o // (C_out / g)) * (C_in / g) + j.
    per_in = lambda v: v.view(g, 1, c_in_g).expand(g, c_out // g, c_in_g).reshape(c_out, c_in_g)
    s, t = per_in(scale), per_in(shift)
    b = torch.zeros(c_out, dtype=torch.float64, device=w.device) if conv.bias is None \
        else conv.bias.double()
    b = b + (w * t[:, :, None, None]).sum(dim=(1, 2, 3))
    _set_weight_bias(conv, w * s[:, :, None, None], b)


def _rewrite(module: nn.Module) -> None:
    """Post-order: children first, then this module's own patterns."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if type(child) is WNConv2d:  # not reached from prepare_for_sampling (memo)
            module._modules[name] = child = _plain_conv(child)
        else:
            _rewrite(child)
    if type(module) is nn.Sequential:
        _fold_sequential(module)
    # BN-Swish not preceded by a conv: precompute its affine map.
    for name, child in list(module._modules.items()):
        if type(child) is BNSwish and _foldable_bn(child.bn) is not None:
            scale, shift = _bn_affine(child.bn)
            dtype = child.bn.running_mean.dtype
            module._modules[name] = AffineSwish(scale.to(dtype), shift.to(dtype))


def _fold_sequential(seq: nn.Sequential) -> None:
    keys = list(seq._modules)
    for a, b in zip(keys, keys[1:]):
        first, second = seq._modules[a], seq._modules[b]
        if first is None or second is None:
            continue
        # layer -> BN: fold into the layer's output.
        if _is_plain_conv(first) or type(first) is nn.Linear:
            bn_module = second.bn if type(second) is BNSwish else second
            bn = _foldable_bn(bn_module)
            want = nn.BatchNorm2d if _is_plain_conv(first) else nn.BatchNorm1d
            if (bn is not None and type(bn) is want
                    and bn.num_features == first.weight.shape[0]):
                _fold_after(first, bn)
                seq._modules[b] = Swish() if type(second) is BNSwish else nn.Identity()
                continue
        # BN -> conv without padding: fold into the conv's input.
        bn = _foldable_bn(first)
        if bn is not None and type(bn) is nn.BatchNorm2d:
            conv = _first_conv(second)
            if (conv is not None and _zero_padding(conv)
                    and conv.in_channels == bn.num_features):
                _fold_before(bn, conv)
                seq._modules[a] = nn.Identity()
