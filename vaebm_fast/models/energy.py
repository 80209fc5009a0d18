"""Energy networks E(x) -> [B] (lower = more data-like).

- :class:`ResNetEnergy`: the residual image EBM of the official VAEBM code, configured by a
  block list; :func:`official_ebm` builds the published families with their exact state-dict
  keys, and :func:`small_image_ebm` a small one for tiny images (e.g. 8x8 digits).
- :class:`MLPEnergy`: an MLP energy for 2-D toy data.

Every energy model has ``spectral_norm_loss()``: Σ sigma_max over its weight matrices (convs
for images, hidden Linear layers for the MLP; never the output head), by grouped power
iteration with persistent vectors (see :mod:`vaebm_fast.nn.spectral`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor, nn

from ..nn import LipSwish, Swish, WNConv2d, lip_swish
from ..ops.epilogues import ebm_block_tail
from ..nn.spectral import SpectralRegularizer

__all__ = ["BlockSpec", "ResBlock", "ResNetEnergy", "MLPEnergy", "official_ebm",
           "small_image_ebm", "OFFICIAL_EBM_ARCHS"]


class BlockSpec(NamedTuple):
    """One residual block: channel multipliers of n_channel in and out, and downsampling."""
    c_in_mult: int
    c_out_mult: int
    downsample: bool = False


def _D(c_in: int, c_out: int) -> BlockSpec:
    return BlockSpec(c_in, c_out, True)


def _S(c_in: int, c_out: int) -> BlockSpec:
    return BlockSpec(c_in, c_out, False)


class _OfficialArch(NamedTuple):
    n_channel: int
    image_size: int
    blocks: tuple[BlockSpec, ...]


# The published VAEBM energy networks (docs/design.md#official-energy-networks). All take
# 3-channel images.
OFFICIAL_EBM_ARCHS: dict[str, _OfficialArch] = {
    "cifar32": _OfficialArch(128, 32, (_D(1, 1), _S(1, 1), _D(1, 2), _S(2, 2), _D(2, 2),
                                       _S(2, 2))),
    "celeba64": _OfficialArch(64, 64, (_D(1, 1), _S(1, 1), _D(1, 2), _S(2, 2), _D(2, 2),
                                       _S(2, 4), _D(4, 4), _S(4, 4))),
    "lsun64": _OfficialArch(64, 64, (_D(1, 1), _S(1, 1), _D(1, 2), _S(2, 2), _S(2, 2),
                                     _D(2, 2), _S(2, 4), _S(4, 4), _D(4, 4), _S(4, 4))),
    "celeba256": _OfficialArch(64, 256, (_D(1, 1), _S(1, 1), _D(1, 2), _S(2, 2), _D(2, 2),
                                         _S(2, 2), _D(2, 4), _S(4, 4), _D(4, 4), _S(4, 4),
                                         _D(4, 8), _S(8, 8))),
    # MNIST padded to 32x32 with 3 channels in the official setup; ends at 8x8.
    "mnist": _OfficialArch(64, 32, (_D(1, 1), _S(1, 1), _D(1, 2), _S(2, 2))),
}


class ResBlock(nn.Module):
    """conv3x3 -> LipSwish -> conv3x3, plus skip; add; [avg-pool 2x2]; LipSwish.

    The skip is ``Sequential(WNConv2d 1x1, no bias)`` (key ``skip.0``) when channels change
    or the block downsamples, else the identity. The avg-pool acts on the sum, i.e. on both
    branches alike. The tail (add, [avg-pool], LipSwish) is one fused op,
    :func:`vaebm_fast.ops.ebm_block_tail`, whose backward saves only the pre-activation.

    x: [B, c_in, H, W] -> [B, c_out, H/2, W/2] if downsample else [B, c_out, H, W].
    """

    def __init__(self, c_in: int, c_out: int, downsample: bool = False, data_init: bool = False):
        super().__init__()
        self.conv1 = WNConv2d(c_in, c_out, 3, padding=1, data_init=data_init)
        self.conv2 = WNConv2d(c_out, c_out, 3, padding=1, data_init=data_init)
        self.skip = None
        if c_in != c_out or downsample:
            self.skip = nn.Sequential(WNConv2d(c_in, c_out, 1, bias=False, data_init=data_init))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(lip_swish(self.conv1(x)))
        skip = x if self.skip is None else self.skip(x)
        return ebm_block_tail(out, skip, downsample=self.downsample)


class ResNetEnergy(nn.Module):
    """Residual image energy network.

    head conv3x3 (in_channels -> n_channel) -> LipSwish -> blocks -> sum over H, W ->
    Linear(C_last, 1). All convs are weight-normalised (:class:`~vaebm_fast.nn.WNConv2d`).

    Args:
        in_channels: image channels.
        n_channel: base width C; block widths are multiples of it.
        blocks: (c_in_mult, c_out_mult, downsample) per block; the first block's c_in_mult
            must be 1 and each block's c_in_mult the previous block's c_out_mult.
        data_init: data-dependent init of every conv on the first training forward.
        image_size: optional nominal input size (information for samplers; not enforced).

    x: [B, in_channels, H, W] images in [0, 1] -> energy [B].
    State-dict keys: ``conv1.*``, ``blocks.{i}.conv1.*``, ``blocks.{i}.conv2.*``,
    ``blocks.{i}.skip.0.*``, ``linear.*``, plus the regulariser's ``spectral.u_k``/``v_k``
    (optional on load).

    ``sampling_drop``: a sampler's frozen snapshot leaves out ``spectral`` (docs/interfaces.md).
    """

    # The spectral regulariser is a training-only term: chains never evaluate it.
    sampling_drop = ("spectral",)

    def __init__(self, in_channels: int, n_channel: int,
                 blocks: Sequence[tuple[int, int, bool]], data_init: bool = False,
                 image_size: int | None = None):
        super().__init__()
        specs = [BlockSpec(*b) for b in blocks]
        if not specs:
            raise ValueError("ResNetEnergy needs at least one block")
        prev = 1
        for i, spec in enumerate(specs):
            if spec.c_in_mult != prev:
                raise ValueError(f"block {i} takes {spec.c_in_mult}*n_channel channels but the "
                                 f"previous layer gives {prev}*n_channel")
            prev = spec.c_out_mult
        self.in_channels = in_channels
        self.n_channel = n_channel
        self.block_specs = tuple(specs)
        self.image_size = image_size

        self.conv1 = WNConv2d(in_channels, n_channel, 3, padding=1, data_init=data_init)
        self.blocks = nn.ModuleList(
            ResBlock(s.c_in_mult * n_channel, s.c_out_mult * n_channel, s.downsample, data_init)
            for s in specs)
        self.linear = nn.Linear(prev * n_channel, 1)
        # Registered after the layers so the EBM's own keys come first in the state dict.
        self.spectral = SpectralRegularizer(m for m in self.modules() if isinstance(m, WNConv2d))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], "
                             f"got shape {tuple(x.shape)}")
        out = lip_swish(self.conv1(x))
        for block in self.blocks:
            out = block(out)
        out = out.sum(dim=(2, 3))          # global sum pooling: [B, C_last]
        return self.linear(out).squeeze(1)  # [B]

    def spectral_norm_loss(self, n_iter: int | None = None) -> Tensor:
        """Σ sigma_max(W_eff) over all convs (not the linear head); scalar, differentiable."""
        return self.spectral(n_iter)

    def official_state_dict(self) -> dict[str, Tensor]:
        """The state dict with the official keys only (no power-iteration vectors)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("spectral.")}


def official_ebm(arch: str, n_channel: int | None = None, data_init: bool = False,
                 in_channels: int = 3) -> ResNetEnergy:
    """The official VAEBM energy network for ``arch``.

    arch: one of "cifar32", "celeba64", "lsun64", "celeba256", "mnist".
    n_channel: base width (default: the official one, 128 for cifar32, else 64).
    data_init: data-dependent conv init on the first training forward (the official scripts
        enable it; off here so loading a checkpoint needs no forward).
    """
    try:
        spec = OFFICIAL_EBM_ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown EBM arch {arch!r}; valid: "
                         f"{', '.join(OFFICIAL_EBM_ARCHS)}") from None
    return ResNetEnergy(in_channels, spec.n_channel if n_channel is None else n_channel,
                        spec.blocks, data_init=data_init, image_size=spec.image_size)


def small_image_ebm(in_channels: int = 1, n_channel: int = 32, num_downsamples: int = 2,
                    blocks_per_stage: int = 2, data_init: bool = False,
                    image_size: int | None = 8) -> ResNetEnergy:
    """A small residual EBM for tiny images (default: 1-channel 8x8 digits; not official).

    Stage s (of ``num_downsamples``) has ``blocks_per_stage`` blocks; its first block
    downsamples and doubles the width from stage 1 on (the MNIST pattern: for the defaults,
    D(C,C) (C,C) D(C,2C) (2C,2C), 8x8 -> 2x2).
    """
    if num_downsamples < 1 or blocks_per_stage < 1:
        raise ValueError("num_downsamples and blocks_per_stage must be >= 1")
    blocks, mult = [], 1
    for stage in range(num_downsamples):
        out_mult = mult if stage == 0 else 2 * mult
        blocks.append(BlockSpec(mult, out_mult, True))
        blocks.extend(BlockSpec(out_mult, out_mult, False) for _ in range(blocks_per_stage - 1))
        mult = out_mult
    return ResNetEnergy(in_channels, n_channel, blocks, data_init=data_init,
                        image_size=image_size)


_ACTIVATIONS = {"lipswish": LipSwish, "swish": Swish}


class MLPEnergy(nn.Module):
    """MLP energy for low-dimensional data.

    ``depth`` hidden Linear(·, hidden) layers, each followed by the activation, then
    Linear(hidden, 1). Keys: ``hidden.{2i}.*`` (Linear), ``out.*``.

    x: [B, in_dim] -> energy [B]. ``sampling_drop``: a sampler's frozen snapshot leaves out
    ``spectral`` (docs/interfaces.md).
    """

    # The spectral regulariser is a training-only term: chains never evaluate it.
    sampling_drop = ("spectral",)

    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 3,
                 activation: str = "lipswish"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        try:
            act = _ACTIVATIONS[activation]
        except KeyError:
            raise ValueError(f"unknown activation {activation!r}; valid: "
                             f"{', '.join(_ACTIVATIONS)}") from None
        self.in_dim = in_dim
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), act()]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, 1)
        self.spectral = SpectralRegularizer(m for m in self.hidden if isinstance(m, nn.Linear))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected [B, {self.in_dim}], got shape {tuple(x.shape)}")
        return self.out(self.hidden(x)).squeeze(1)

    def spectral_norm_loss(self, n_iter: int | None = None) -> Tensor:
        """Σ sigma_max over the hidden Linear weights (not the output head); scalar."""
        return self.spectral(n_iter)
