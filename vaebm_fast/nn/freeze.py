"""Frozen, inference-only copies of networks: :func:`frozen_copy`.

A network that is evaluated many times with fixed weights (a Langevin chain runs the decoder and
the energy, and their backward to the input, K times) can do its per-weight work once instead
of at every call. :func:`frozen_copy` does that work and hands back a module that computes the
same function (in eval mode) with less work:

* ``eval()`` (BatchNorm uses its running statistics) and ``requires_grad_(False)`` on every
  parameter: a backward then reaches the input only, and computes no weight gradients.
* Every :class:`~vaebm_fast.nn.WNConv2d` becomes a plain ``nn.Conv2d`` whose weight is the
  effective weight ``exp(g) W / (||W|| + 1e-5)``, computed once. Modules using
  ``torch.nn.utils.parametrize`` (e.g. ``parametrizations.weight_norm``) or the older hook-based
  ``torch.nn.utils.weight_norm`` get their parametrised weight materialised the same way.
* BatchNorm in eval mode is a per-channel affine map ``x * s + t``
  (:func:`~vaebm_fast.nn.bn_affine`), folded into an adjacent convolution where that is exact.
  Inside an ``nn.Sequential`` (children are rewritten first, so nested Sequentials compose):

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
  Output folds use ``torch.nn.utils.fusion.fuse_conv_bn_weights`` /
  ``fuse_linear_bn_weights``; folding into a conv's *input* has no library equivalent and is
  written out here.
* A :class:`~vaebm_fast.nn.BNSwish` that no conv precedes becomes
  :class:`~vaebm_fast.nn.AffineSwish`, the fused ``affine_swish`` op with its (scale, shift)
  computed once.

Exactness: every rewrite is an identity of real arithmetic; in floating point the folded
weights are computed in float64 from the original tensors and rounded once to the layer's
dtype, so the copy agrees with the original's eval-mode output to float rounding (~1e-6
relative in float32).

Semantics: the result is a **snapshot**. :func:`frozen_copy` deep-copies the module (the copy
owns its tensors: no storage is shared with the original) and rewrites the copy; the original
module -- its mode, ``requires_grad`` flags, parameters, buffers and structure -- is not
modified, so it trains on unchanged afterwards. Changes made to the original later do not reach
the copy: make a new one. The copy is meant for forward passes (and gradients with respect to
inputs) only, not for training: folded BatchNorms no longer exist, so training it would be
wrong. Direct submodules named in ``drop`` (e.g. an encoder that inference never runs) are
``None`` in the copy and are not copied at all.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from .activations import Swish
from .conv import WNConv2d
from .norm import AffineSwish, BNSwish, ConvBNSwish, NVAEBatchNorm, bn_affine

__all__ = ["frozen_copy", "is_frozen_copy", "FROZEN_ATTR"]

# Set on the root of every copy frozen_copy returns, so freezing a copy again is a no-op.
FROZEN_ATTR = "_vaebm_fast_prepared"


def is_frozen_copy(module: object) -> bool:
    """True if ``module`` is the root of a copy made by :func:`frozen_copy`."""
    return bool(getattr(module, FROZEN_ATTR, False))


def frozen_copy(module, *, drop: Union[str, Iterable[str]] = ()):
    """A frozen, inference-only snapshot of ``module`` (see the module docstring).

    Args:
        module: any ``nn.Module`` (anything else, e.g. a plain function, is returned as is).
        drop: names of direct submodules that inference does not need (one name or several);
            they are ``None`` in the copy. A name that is not a submodule of ``module`` raises
            ValueError (a misspelt name would otherwise copy what it meant to drop).

    Returns:
        A new module in eval mode with ``requires_grad=False`` everywhere, weight norms
        materialised and BatchNorms folded where exact; it computes ``module``'s eval-mode
        forward on the same input shapes. ``module`` is left unchanged. A module that already
        is such a copy is returned as is.
    """
    if not isinstance(module, nn.Module):
        return module
    if is_frozen_copy(module):
        return module
    names = (drop,) if isinstance(drop, str) else tuple(drop)
    # deepcopy looks every object up in memo by id first: dropped submodules become None and
    # weight-normalised convs their plain replacements, so neither is ever copied.
    memo = {}
    for name in names:
        if name not in module._modules:
            raise ValueError(f"drop: {type(module).__name__} has no submodule {name!r} "
                             f"(submodules: {', '.join(module._modules) or 'none'})")
        sub = module._modules[name]
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
        # The rewrites create new parameters; none of them may ask for gradients.
        for p in out.parameters():
            p.requires_grad_(False)
    setattr(out, FROZEN_ATTR, True)
    return out


def _walk(module: nn.Module, skip: dict):
    """Every module below ``module`` (included), not descending into ids in ``skip``."""
    if id(module) in skip:
        return
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from _walk(child, skip)


# ------------------------------------------------------------------------------ weight norms

def _materialize_parametrizations(root: nn.Module) -> None:
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


# ------------------------------------------------------------------------------ BatchNorm folding

def _foldable_bn(m: nn.Module):
    """The eval-mode BatchNorm a module is (BatchNorm1d/2d, NVAEBatchNorm) or None."""
    if type(m) is NVAEBatchNorm:
        m = m.bn
    if type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        return None
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    return m


def _f64(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.double()


def _set_weight_bias(layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
    """Round the float64 weight and bias once, to the layer's dtype."""
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)


def _fold_into_output(layer: nn.Module, bn) -> None:
    """layer (Conv2d or Linear) followed by bn: fold bn into the layer's output."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    if type(layer) is nn.Linear:
        # fuse_linear_bn_weights needs the BatchNorm's affine parameters; ones and zeros are
        # what a BatchNorm without them computes.
        gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.double()
        beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.double()
        w, b = fuse_linear_bn_weights(layer.weight.double(), _f64(layer.bias), mean, var,
                                      bn.eps, gamma, beta)
    else:
        w, b = fuse_conv_bn_weights(layer.weight.double(), _f64(layer.bias), mean, var, bn.eps,
                                    _f64(bn.weight), _f64(bn.bias))
    _set_weight_bias(layer, w, b)


def _first_conv(m: nn.Module):
    """The conv a module applies first to its input, for the patterns recognised here."""
    while True:
        if type(m) is nn.Conv2d:
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


def _fold_into_input(bn, conv: nn.Conv2d) -> None:
    """bn followed by conv (zero padding): fold bn into the conv's input channels.

    conv(x * s + t) = conv'(x) with W'[o, j] = W[o, j] * s[in(o, j)] and
    b'[o] = b[o] + sum_{j, kh, kw} W[o, j] * t[in(o, j)], where in(o, j) is the input channel
    that weight entry [o, j] reads. Without padding every output reads only affine-mapped
    inputs, so this is exact; with zero padding the padded zeros would be mapped too.
    """
    scale, shift = bn_affine(bn, torch.float64)
    w = conv.weight.double()  # [C_out, C_in / g, kh, kw]
    c_out, c_in_g = w.shape[:2]
    g = conv.groups

    # Input channel of weight entry [o, j]: (o // (C_out / g)) * (C_in / g) + j.
    def per_in(v):
        return v.view(g, 1, c_in_g).expand(g, c_out // g, c_in_g).reshape(c_out, c_in_g)

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
        if type(child) is WNConv2d:  # not reached from frozen_copy (memo)
            module._modules[name] = child = _plain_conv(child)
        else:
            _rewrite(child)
    if type(module) is nn.Sequential:
        _fold_sequential(module)
    # BN-Swish not preceded by a conv: precompute its affine map.
    for name, child in list(module._modules.items()):
        if type(child) is BNSwish and _foldable_bn(child.bn) is not None:
            scale, shift = bn_affine(child.bn, torch.float64)
            dtype = child.bn.running_mean.dtype
            module._modules[name] = AffineSwish(scale.to(dtype), shift.to(dtype))


def _fold_sequential(seq: nn.Sequential) -> None:
    keys = list(seq._modules)
    for a, b in zip(keys, keys[1:]):
        first, second = seq._modules[a], seq._modules[b]
        if first is None or second is None:
            continue
        # layer -> BN: fold into the layer's output.
        if type(first) in (nn.Conv2d, nn.Linear):
            bn_module = second.bn if type(second) is BNSwish else second
            bn = _foldable_bn(bn_module)
            want = nn.BatchNorm2d if type(first) is nn.Conv2d else nn.BatchNorm1d
            if (bn is not None and type(bn) is want
                    and bn.num_features == first.weight.shape[0]):
                _fold_into_output(first, bn)
                seq._modules[b] = Swish() if type(second) is BNSwish else nn.Identity()
                continue
        # BN -> conv without padding: fold into the conv's input.
        bn = _foldable_bn(first)
        if bn is not None and type(bn) is nn.BatchNorm2d:
            conv = _first_conv(second)
            if (conv is not None and _zero_padding(conv)
                    and conv.in_channels == bn.num_features):
                _fold_into_input(bn, conv)
                seq._modules[a] = nn.Identity()
