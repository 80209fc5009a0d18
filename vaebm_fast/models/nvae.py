"""NVAE-style hierarchical VAE: the backbone VAEBM samples through.

Generative model (decoder order, group 0 is the top, coarsest group)::

    z_0 ~ N(0, top_prior_std^2)                      eps-space: z_0 = top_prior_std * eps_0
    z_g ~ N(mu_g(z_<g), sigma_g(z_<g)^2), g >= 1      eps-space: z_g = mu_g + sigma_g * eps_g
    x   = clamp(mu_x(z) + sigma_x(z) * eps_x, -1, 1) / 2 + 0.5       (images in [0, 1])

``mu`` and ``sigma`` of every Normal (priors, posteriors, decoder) are soft-clamped as in
NVAE: ``mu = 5 tanh(mu_raw / 5)``, ``sigma = exp(5 tanh(log_sigma_raw / 5)) + 1e-2``.

The posterior is NVAE's residual Normal: for g >= 1 the encoder predicts *deltas* that are
added to the prior's raw (pre-clamp) parameters, q_g = N(mu_p_raw + dmu, log_sigma_p_raw +
dlog_sigma) after the soft clamps; so zero deltas give q_g = p_g exactly. The top posterior
q_0 is predicted directly.

The 1.01 fact: official NVAE builds its top prior as ``Normal(mu=0, log_sigma=0)``, and the
``+ 1e-2`` of the soft clamp makes its std 1.01, not 1. Its KL for group 0 is against
N(0, 1.01^2), and its samplers draw z_0 = 1.01 * eps_0 (a temperature of 1.01 on the top
group). Our default is the stated N(0, 1) (``top_prior_std=1.0``); set ``top_prior_std=1.01``
to reproduce official NVAE / VAEBM numbers exactly (``HierarchicalVAEConfig.from_nvae_args``
does).

Architecture and module names follow NVAE (``res_mbconv``): ``prior_ftr0``, ``stem``,
``pre_process``, ``enc_tower``, ``enc0``, ``enc_sampler``, ``dec_sampler``, ``dec_tower``,
``post_process``, ``image_conditional``; see :mod:`vaebm_fast.models.nvae_cells` for the cells.
``nf_cells`` holds NVAE's posterior flows (:mod:`vaebm_fast.models.nvae_flows`) when
``num_nf > 0``. An official NVAE state dict loads into this module with ``strict=True`` (the
layers accept NVAE's flat BN-Swish keys and its ``weight_normalized`` aliases); to import a
checkpoint file, use :func:`vaebm_fast.models.load_nvae`, which checks it against its own
``args`` first. Tests check this on files written in the official layout, not yet on a
released checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import WNConv2d
from ..nn.spectral import SpectralRegularizer
from ..validation import check_choice, check_tensor
from .nvae_cells import CHANNEL_MULT, Cell, DecCombinerCell, EncCombinerCell
from .nvae_flows import PairedARCell

__all__ = ["HierarchicalVAEConfig", "HierarchicalVAE", "DecodeOutput",
           "soft_clamp5", "normal_params", "quantize_to_bits"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Normal distributions with NVAE's soft clamps
# --------------------------------------------------------------------------------------------
def soft_clamp5(x: Tensor) -> Tensor:
    """Differentiable clamp to (-5, 5): 5 tanh(x / 5)."""
    return 5.0 * torch.tanh(x / 5.0)


def normal_params(mu_raw: Tensor, log_sigma_raw: Tensor) -> tuple[Tensor, Tensor]:
    """Raw network outputs -> (mu, sigma) with NVAE's soft clamps (same shapes)."""
    return soft_clamp5(mu_raw), torch.exp(soft_clamp5(log_sigma_raw)) + 1e-2


def _normal_kl(mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor) -> Tensor:
    """Elementwise KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) (broadcasting shapes)."""
    ratio = sigma_q / sigma_p
    delta = (mu_q - mu_p) / sigma_p
    return 0.5 * (delta * delta + ratio * ratio) - 0.5 - torch.log(ratio)


def _normal_log_prob(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Elementwise log N(x; mu, sigma^2)."""
    u = (x - mu) / sigma
    return -0.5 * u * u - torch.log(sigma) - _HALF_LOG_2PI


def quantize_to_bits(x: Tensor, num_bits: int) -> Tensor:
    """Images x in [0, 1] (8-bit data) requantised to ``num_bits`` bits, as NVAE feeds its
    models: floor(255 x / 2^(8 - num_bits)) / (2^num_bits - 1); 8 bits leave x unchanged."""
    if num_bits == 8:
        return x
    return torch.floor(x * 255.0 / 2 ** (8 - num_bits)) / (2 ** num_bits - 1)


def _sum_per_sample(t: Tensor) -> Tensor:
    """[B, ...] -> [B]."""
    return t.flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
# NVAE's `dataset` argument -> (image channels, image size) for the datasets a Normal decoder
# can model (MNIST/Omniglot use a Bernoulli decoder in NVAE and are not supported).
_NVAE_DATASET_SHAPES = {"cifar10": (3, 32), "ffhq": (3, 256)}
_NVAE_SIZED_PREFIXES = ("celeba", "imagenet", "lsun")


@dataclass(frozen=True)
class HierarchicalVAEConfig:
    """Sizes of a :class:`HierarchicalVAE`; field names are NVAE's command-line arguments.

    Spatial bookkeeping: pre-processing halves the image ``num_preprocess_blocks`` times;
    latent scale 0 (the finest) sits there, and each further scale halves again. Channels
    double at every halving (``CHANNEL_MULT`` = 2) and halve again on the way up.
    ``groups_per_scale[s]`` counts the latent groups at scale s (finest first):
    ``num_groups_per_scale`` everywhere, or, with ``ada_groups``, halved per coarser scale
    (floor, at least ``min_groups_per_scale``), as NVAE does. The defaults are the
    ``"cifar10"`` preset.

    ``num_nf``: NVAE's posterior flow steps per latent group (:mod:`.nvae_flows`; encoder side
    only, so sampling is the same with or without them). ``num_x_bits``: the bit depth the
    model was trained on; ``elbo_terms`` requantises its input to it (:func:`quantize_to_bits`).
    """

    image_channels: int = 3
    image_size: int = 32
    num_channels_enc: int = 128
    num_channels_dec: int = 128
    num_preprocess_blocks: int = 1
    num_preprocess_cells: int = 2
    num_postprocess_blocks: int = 1
    num_postprocess_cells: int = 2
    num_latent_scales: int = 1
    num_groups_per_scale: int = 30
    ada_groups: bool = False
    min_groups_per_scale: int = 1
    num_latent_per_group: int = 20
    num_cell_per_cond_enc: int = 2
    num_cell_per_cond_dec: int = 2
    use_se: bool = True
    res_dist: bool = True
    num_nf: int = 0
    num_x_bits: int = 8
    top_prior_std: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("bool", bool) and not isinstance(value, bool):
                raise TypeError(f"HierarchicalVAEConfig.{field.name} must be a bool "
                                f"(got {type(value).__name__} {value!r})")
            if field.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"HierarchicalVAEConfig.{field.name} must be an int "
                                    f"(got {type(value).__name__} {value!r})")
                minimum = 0 if field.name.startswith(("num_preprocess_blocks",
                                                      "num_postprocess_blocks",
                                                      "num_cell_per_cond", "num_nf")) else 1
                if value < minimum:
                    raise ValueError(f"HierarchicalVAEConfig.{field.name} must be >= {minimum} "
                                     f"(got {value})")
        if not 1 <= self.num_x_bits <= 8:
            raise ValueError(f"HierarchicalVAEConfig.num_x_bits must be in 1..8 "
                             f"(got {self.num_x_bits})")
        std = self.top_prior_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ValueError(f"HierarchicalVAEConfig.top_prior_std must be > 0 "
                             f"(got {self.top_prior_std!r})")
        if self.num_latent_scales == 1 and self.num_groups_per_scale == 1:
            raise ValueError("a single latent group (num_latent_scales=1, num_groups_per_scale=1) "
                             "is NVAE's 'vanilla VAE' special case, which is not supported; use "
                             "at least two groups")
        if self.num_postprocess_blocks != self.num_preprocess_blocks:
            raise ValueError(
                f"num_postprocess_blocks ({self.num_postprocess_blocks}) must equal "
                f"num_preprocess_blocks ({self.num_preprocess_blocks}): each block halves the "
                f"resolution on the way in and doubles it on the way out")
        total_halvings = self.num_preprocess_blocks + self.num_latent_scales - 1
        if self.image_size % (2 ** total_halvings):
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by 2**(num_preprocess_blocks + "
                f"num_latent_scales - 1) = {2 ** total_halvings}")

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def groups_per_scale(self) -> tuple[int, ...]:
        """Latent groups at each scale, finest scale first (NVAE's order)."""
        groups, n = [], self.num_groups_per_scale
        for _ in range(self.num_latent_scales):
            groups.append(n)
            if self.ada_groups:
                n = max(self.min_groups_per_scale, n // 2)
        return tuple(groups)

    @property
    def num_groups(self) -> int:
        return sum(self.groups_per_scale)

    @property
    def top_latent_size(self) -> int:
        """Height (= width) of the coarsest latent scale."""
        return self.image_size // 2 ** (self.num_preprocess_blocks + self.num_latent_scales - 1)

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Per-sample shape [C, H, W] of each latent group in decoder order (coarsest first)."""
        shapes = []
        for s in range(self.num_latent_scales):
            size = self.top_latent_size * 2 ** s
            shapes += [(self.num_latent_per_group, size, size)] * \
                self.groups_per_scale[self.num_latent_scales - 1 - s]
        return shapes

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "HierarchicalVAEConfig":
        """A named configuration, optionally with fields overridden.

        - ``"tiny"``: 1x8x8 images, 8 channels, two latent scales (2 groups of [2, 2, 2] then
          2 groups of [2, 4, 4]), one cell everywhere. For tests: a training step on a batch
          of 16 takes tens of milliseconds on a CPU.
        - ``"digits"``: 1x8x8 images (e.g. scikit-learn's digits), 16 channels, two scales with
          NVAE's adaptive group counts (2 groups of [4, 2, 2], then 4 of [4, 4, 4]), 0.55M
          parameters.
        - ``"cifar10"``: exactly the NVAE backbone of official VAEBM's CIFAR-10 model
          (``--num_channels_enc 128 --num_channels_dec 128 --num_preprocess_blocks 1
          --num_preprocess_cells 2 --num_postprocess_blocks 1 --num_postprocess_cells 2
          --num_latent_scales 1 --num_groups_per_scale 30 --num_latent_per_group 20
          --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --use_se --res_dist
          --arch_instance res_mbconv --num_mixture_dec 1``, without its one flow cell):
          3x32x32 images, 30 latent groups of [20, 16, 16] at a single scale, 129,107,204
          parameters, about 27 GFLOP per sample for ``decode_eps``. It keeps our default top
          prior N(0, 1); pass ``top_prior_std=1.01`` for NVAE's. A two-scale variant is
          ``preset("cifar10", num_latent_scales=2)`` (30 groups at 8x8, then 30 at 16x16).
        """
        check_choice(name, "preset name", tuple(_PRESETS))
        return dataclasses.replace(cls(**_PRESETS[name]), **overrides)

    @classmethod
    def from_nvae_args(cls, args, *, top_prior_std: float = 1.01,
                       drop_flows: bool = False) -> "HierarchicalVAEConfig":
        """The config of an official NVAE checkpoint, from its ``checkpoint['args']``.

        Supports ``arch_instance='res_mbconv'`` with the Normal decoder
        (``num_mixture_dec=1``). ``top_prior_std`` defaults to NVAE's effective 1.01 (see the
        module docstring). ``num_nf`` (NVAE's posterior flows) and ``num_x_bits`` are taken
        over (defaults 0 and 8 for files that predate them); ``drop_flows=True`` builds the
        model without its flows (``decode_eps`` is the same, ``elbo_terms`` then uses the
        posterior without flows and is no longer NVAE's ELBO). To import a checkpoint file,
        use :func:`vaebm_fast.models.load_nvae`.
        """
        arch = getattr(args, "arch_instance", "res_mbconv")
        if arch != "res_mbconv":
            raise ValueError(f"only NVAE's 'res_mbconv' architecture is supported (got {arch!r})")
        if getattr(args, "num_mixture_dec", 1) != 1:
            raise ValueError(f"only NVAE's Normal decoder (num_mixture_dec=1) is supported, as "
                             f"the logistic mixture has no reparameterised sample "
                             f"(got num_mixture_dec={args.num_mixture_dec})")
        dataset = args.dataset
        if dataset in _NVAE_DATASET_SHAPES:
            channels, size = _NVAE_DATASET_SHAPES[dataset]
        elif dataset.startswith(_NVAE_SIZED_PREFIXES) and dataset.split("_")[-1].isdigit():
            channels, size = 3, int(dataset.split("_")[-1])
        else:
            raise ValueError(f"unsupported NVAE dataset {dataset!r} (Normal-decoder RGB datasets "
                             f"only: cifar10, celeba_64, celeba_256, imagenet_32, ffhq, ...)")
        names = ["num_channels_enc", "num_channels_dec", "num_preprocess_blocks",
                 "num_preprocess_cells", "num_postprocess_blocks", "num_postprocess_cells",
                 "num_latent_scales", "num_groups_per_scale", "num_latent_per_group",
                 "num_cell_per_cond_enc", "num_cell_per_cond_dec", "use_se", "res_dist"]
        fields = {name: getattr(args, name) for name in names}
        # Old NVAE checkpoints predate these two arguments (VAEBM's loader uses these defaults).
        fields["ada_groups"] = getattr(args, "ada_groups", False)
        fields["min_groups_per_scale"] = getattr(args, "min_groups_per_scale", 1)
        fields["num_nf"] = 0 if drop_flows else getattr(args, "num_nf", 0)
        fields["num_x_bits"] = getattr(args, "num_x_bits", 8)
        return cls(image_channels=channels, image_size=size, top_prior_std=top_prior_std,
                   **fields)


_PRESETS = {
    "tiny": dict(image_channels=1, image_size=8, num_channels_enc=8, num_channels_dec=8,
                 num_preprocess_blocks=1, num_preprocess_cells=1, num_postprocess_blocks=1,
                 num_postprocess_cells=1, num_latent_scales=2, num_groups_per_scale=2,
                 num_latent_per_group=2, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1),
    "digits": dict(image_channels=1, image_size=8, num_channels_enc=16, num_channels_dec=16,
                   num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                   num_postprocess_cells=2, num_latent_scales=2, num_groups_per_scale=4,
                   ada_groups=True, num_latent_per_group=4, num_cell_per_cond_enc=1,
                   num_cell_per_cond_dec=1),
    "cifar10": dict(image_channels=3, image_size=32, num_channels_enc=128, num_channels_dec=128,
                    num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                    num_postprocess_cells=2, num_latent_scales=1, num_groups_per_scale=30,
                    num_latent_per_group=20, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2),
}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class DecodeOutput(NamedTuple):
    """Everything the decoder computes on the way from eps to x.

    x: [B, *data_shape] in [0, 1]; z: the latent groups, z[g] [B, *latent_shapes[g]];
    log_p_z: [B], sum over groups of log p(z_g | z_<g) (nats; None from ``decode_eps``);
    x_mu, x_sigma: [B, *data_shape], the decoder Normal in the [-1, 1] data scale (clamped).
    """

    x: Tensor
    z: list
    log_p_z: Optional[Tensor]
    x_mu: Tensor
    x_sigma: Tensor


class DecodeLogSigmas(NamedTuple):
    """What :meth:`HierarchicalVAE.decode_eps_log_sigmas` returns.

    x: [B, *data_shape] in [0, 1], equal to ``decode_eps(eps_z, eps_x)``;
    log_sigma_z: per latent group (decoder order), [B]: the sum over the group's elements of
    log sigma_g, the std of p(z_g | z_<g) at the reparameterised z (top: log top_prior_std);
    x_mu, x_log_sigma: [B, *data_shape], the decoder's soft-clamped mean (in [-1, 1] scale) and
    log std *before* the exp and the + 0.01 (sigma_x = exp(x_log_sigma) + 0.01).
    """

    x: Tensor
    log_sigma_z: list
    x_mu: Tensor
    x_log_sigma: Tensor


# (g, s, prior_raw) -> z_g, where s [B, C, h, w] is the decoder state before group g and
# prior_raw is (mu_raw, log_sigma_raw) of p(z_g | z_<g) for g >= 1, None for the top group.
_LatentChooser = Callable[[int, Tensor, Optional[tuple]], Tensor]


class HierarchicalVAE(nn.Module):
    """NVAE-style hierarchical VAE with a Normal decoder on images in [0, 1].

    Implements the generator contract of ``docs/interfaces.md``: ``latent_shapes``,
    ``data_shape``, ``decode_eps``, ``elbo_terms``, ``regularization_terms``, plus ``sample``.
    BatchNorm follows the module's mode: call ``.eval()`` before sampling so BN uses its
    running statistics (``sample`` does this itself).

    ``sampling_drop`` (docs/interfaces.md): a sampler's frozen snapshot leaves out the encoder
    and the spectral regulariser, so it supports ``decode_eps`` / ``decode_eps_details`` /
    ``prior_params`` / ``sample`` only. In the snapshot every BatchNorm of the decoder is folded
    into its adjacent conv (``conv -> BN`` and ``conv -> BN-Swish`` into the conv's output, the
    ``BN`` opening each inverted residual into its 1x1 expansion conv) and the remaining
    BN-Swish pairs are one precomputed ``affine_swish`` (:func:`vaebm_fast.nn.frozen_copy`).

    Args:
        config: a :class:`HierarchicalVAEConfig` or a preset name (``"tiny"``, ``"digits"``,
            ``"cifar10"``).
    """

    # Chains run the decoder only: the encoder (stem to enc_sampler) and the training-only
    # spectral regulariser are never evaluated.
    sampling_drop = ("stem", "pre_process", "enc_tower", "enc0", "enc_sampler", "nf_cells",
                     "spectral_regularizer")

    def __init__(self, config: HierarchicalVAEConfig | str):
        super().__init__()
        if isinstance(config, str):
            config = HierarchicalVAEConfig.preset(config)
        if not isinstance(config, HierarchicalVAEConfig):
            raise TypeError(f"config must be a HierarchicalVAEConfig or a preset name "
                            f"(got {type(config).__name__})")
        self.config = config
        self.latent_shapes: list[tuple[int, ...]] = config.latent_shapes
        self.data_shape: tuple[int, ...] = config.data_shape
        cfg = config

        # Channel multiplier at the top (coarsest) latent scale, relative to num_channels_*.
        top_mult = CHANNEL_MULT ** (cfg.num_preprocess_blocks + cfg.num_latent_scales - 1)
        top = cfg.top_latent_size
        # Learned constant input of the decoder tower, expanded over the batch.
        self.prior_ftr0 = nn.Parameter(torch.rand(cfg.num_channels_dec * top_mult, top, top))

        self.stem = WNConv2d(cfg.image_channels, cfg.num_channels_enc, 3, padding=1, bias=True)
        self.pre_process = self._build_pre_process()
        self.enc_tower = self._build_encoder_tower()
        c_top_enc = cfg.num_channels_enc * top_mult
        self.enc0 = nn.Sequential(nn.ELU(), WNConv2d(c_top_enc, c_top_enc, 1, bias=True), nn.ELU())
        self.enc_sampler, self.dec_sampler = self._build_samplers(top_mult)
        self.dec_tower = self._build_decoder_tower(top_mult)
        self.post_process = self._build_post_process()
        # Decoder head: mu and log sigma for each image channel.
        self.image_conditional = nn.Sequential(
            nn.ELU(), WNConv2d(cfg.num_channels_dec, 2 * cfg.image_channels, 3, padding=1,
                               bias=True))
        # Posterior flows, num_nf per group in decoder order (nf_cells[g * num_nf + n]); empty
        # without flows. Built before the regulariser, which covers their convs as NVAE's does.
        self.nf_cells = nn.ModuleList(PairedARCell(cfg.num_latent_per_group)
                                      for _ in range(cfg.num_groups * cfg.num_nf))
        # NVAE's spectral regulariser over every conv. Registered last so it sees them all; its
        # singular-vector buffers (`spectral_regularizer.u_k/v_k`) are saved with the model,
        # and state dicts without them (official NVAE ones) still load strictly.
        self.spectral_regularizer = SpectralRegularizer(
            [m for m in self.modules() if isinstance(m, WNConv2d)])

    # -- construction (mirrors NVAE's init_* methods) ---------------------------------------
    def _build_pre_process(self) -> nn.ModuleList:
        cfg, mult, cells = self.config, 1, nn.ModuleList()
        for _ in range(cfg.num_preprocess_blocks):
            for c in range(cfg.num_preprocess_cells):
                channels = cfg.num_channels_enc * mult
                if c == cfg.num_preprocess_cells - 1:  # each block ends by halving the size
                    cells.append(Cell(channels, CHANNEL_MULT * channels, "down_pre", cfg.use_se))
                    mult *= CHANNEL_MULT
                else:
                    cells.append(Cell(channels, channels, "normal_pre", cfg.use_se))
        return cells

    def _build_encoder_tower(self) -> nn.ModuleList:
        """Finest scale first: per group, cells then a combiner (none after the last group,
        whose feature feeds ``enc0``); a down cell between scales."""
        cfg, tower = self.config, nn.ModuleList()
        mult = CHANNEL_MULT ** cfg.num_preprocess_blocks
        groups = cfg.groups_per_scale
        for s in range(cfg.num_latent_scales):
            c_enc, c_dec = cfg.num_channels_enc * mult, cfg.num_channels_dec * mult
            for g in range(groups[s]):
                for _ in range(cfg.num_cell_per_cond_enc):
                    tower.append(Cell(c_enc, c_enc, "normal_enc", cfg.use_se))
                if not (s == cfg.num_latent_scales - 1 and g == groups[s] - 1):
                    tower.append(EncCombinerCell(c_dec, c_enc))
            if s < cfg.num_latent_scales - 1:
                tower.append(Cell(c_enc, CHANNEL_MULT * c_enc, "down_enc", cfg.use_se))
                mult *= CHANNEL_MULT
        return tower

    def _build_samplers(self, top_mult: int) -> tuple[nn.ModuleList, nn.ModuleList]:
        """Per group in decoder order: the posterior head (3x3 conv -> mu, log sigma) and, for
        every group but the top, the prior head (ELU -> 1x1 conv -> mu, log sigma)."""
        cfg = self.config
        enc_sampler, dec_sampler = nn.ModuleList(), nn.ModuleList()
        n_z = cfg.num_latent_per_group
        mult = top_mult
        for s in range(cfg.num_latent_scales):
            for g in range(cfg.groups_per_scale[cfg.num_latent_scales - 1 - s]):
                enc_sampler.append(WNConv2d(cfg.num_channels_enc * mult, 2 * n_z, 3, padding=1,
                                            bias=True))
                if not (s == 0 and g == 0):
                    dec_sampler.append(nn.Sequential(
                        nn.ELU(), WNConv2d(cfg.num_channels_dec * mult, 2 * n_z, 1, bias=True)))
            mult //= CHANNEL_MULT
        return enc_sampler, dec_sampler

    def _build_decoder_tower(self, top_mult: int) -> nn.ModuleList:
        """Coarsest scale first: per group, cells (none before the top group) then the
        combiner that injects z_g; an up cell between scales."""
        cfg, tower, mult = self.config, nn.ModuleList(), top_mult
        for s in range(cfg.num_latent_scales):
            channels = cfg.num_channels_dec * mult
            for g in range(cfg.groups_per_scale[cfg.num_latent_scales - 1 - s]):
                if not (s == 0 and g == 0):
                    for _ in range(cfg.num_cell_per_cond_dec):
                        tower.append(Cell(channels, channels, "normal_dec", cfg.use_se))
                tower.append(DecCombinerCell(channels, cfg.num_latent_per_group, channels))
            if s < cfg.num_latent_scales - 1:
                tower.append(Cell(channels, channels // CHANNEL_MULT, "up_dec", cfg.use_se))
                mult //= CHANNEL_MULT
        return tower

    def _build_post_process(self) -> nn.ModuleList:
        cfg, cells = self.config, nn.ModuleList()
        mult = CHANNEL_MULT ** cfg.num_postprocess_blocks
        for _ in range(cfg.num_postprocess_blocks):
            for c in range(cfg.num_postprocess_cells):
                channels = cfg.num_channels_dec * mult
                if c == 0:  # each block starts by doubling the size
                    cells.append(Cell(channels, channels // CHANNEL_MULT, "up_post", cfg.use_se))
                    mult //= CHANNEL_MULT
                else:
                    cells.append(Cell(channels, channels, "normal_post", cfg.use_se))
        return cells

    # -- the shared decoder walk -------------------------------------------------------------
    def _top_prior_sigma(self, like: Tensor) -> Tensor:
        return torch.full((), self.config.top_prior_std, dtype=like.dtype, device=like.device)

    def _decode_tower(self, batch_size: int, choose_latent: _LatentChooser, *,
                      raw: bool = False) -> tuple[Tensor, Tensor]:
        """Runs prior_ftr0 -> dec_tower -> post_process -> image_conditional, asking
        ``choose_latent`` for each group's z. Returns the decoder Normal (x_mu, x_sigma),
        each [B, *data_shape], in the [-1, 1] data scale; ``raw=True``: the head's raw
        (mu_raw, log_sigma_raw) instead, before the soft clamps."""
        s = self.prior_ftr0.unsqueeze(0).expand(batch_size, -1, -1, -1)
        g = 0
        for cell in self.dec_tower:
            if cell.cell_type == "combiner_dec":
                prior_raw = None if g == 0 else self.dec_sampler[g - 1](s).chunk(2, dim=1)
                s = cell(s, choose_latent(g, s, prior_raw))
                g += 1
            else:
                s = cell(s)
        for cell in self.post_process:
            s = cell(s)
        mu_raw, log_sigma_raw = self.image_conditional(s).chunk(2, dim=1)
        return (mu_raw, log_sigma_raw) if raw else normal_params(mu_raw, log_sigma_raw)

    # -- generator contract ------------------------------------------------------------------
    def decode_eps(self, eps_z: Sequence[Tensor], eps_x: Optional[Tensor] = None) -> Tensor:
        """x = T(eps_z, eps_x).

        eps_z[g]: [B, *latent_shapes[g]] (decoder order, top group first); eps_x:
        [B, *data_shape] or None. Returns x [B, *data_shape] in [0, 1]:
        clamp(mu_x + sigma_x * eps_x, -1, 1) / 2 + 0.5, or clamp(mu_x, -1, 1) / 2 + 0.5 (the
        decoder mean, clamped) when eps_x is None. Differentiable in every eps.
        """
        return self._decode(eps_z, eps_x, with_log_p=False).x

    def decode_eps_details(self, eps_z: Sequence[Tensor], eps_x: Optional[Tensor] = None
                           ) -> DecodeOutput:
        """As :meth:`decode_eps`, also returning the latents z, log p(z) [B] and the decoder's
        (mu_x, sigma_x); see :class:`DecodeOutput`."""
        return self._decode(eps_z, eps_x, with_log_p=True)

    def _reparameterise_eps(self, eps: Tensor, prior_raw) -> tuple[Tensor, Tensor]:
        """(z, sigma): z = mu + sigma * eps under a group's prior (raw decoder output), or for
        the top group (``prior_raw`` None) z = top_sigma * eps."""
        if prior_raw is None:
            sigma = self._top_prior_sigma(eps)
            return sigma * eps, sigma
        mu, sigma = normal_params(*prior_raw)
        return mu + sigma * eps, sigma

    def _decode(self, eps_z: Sequence[Tensor], eps_x: Optional[Tensor], with_log_p: bool
                ) -> DecodeOutput:
        batch_size = self._check_eps(eps_z, eps_x)
        z_list: list[Tensor] = []
        log_p_terms: list[Tensor] = []

        def reparameterise(g: int, s: Tensor, prior_raw) -> Tensor:
            eps = eps_z[g]
            z, sigma = self._reparameterise_eps(eps, prior_raw)
            if with_log_p:  # log N(z; mu, sigma^2) at z = mu + sigma * eps
                log_p_terms.append(
                    _sum_per_sample(-0.5 * eps * eps - torch.log(sigma).expand_as(eps))
                    - _HALF_LOG_2PI * eps[0].numel())
            z_list.append(z)
            return z

        x_mu, x_sigma = self._decode_tower(batch_size, reparameterise)
        x_pm = x_mu if eps_x is None else x_mu + x_sigma * eps_x
        x = torch.clamp(x_pm, -1.0, 1.0) / 2 + 0.5
        log_p_z = torch.stack(log_p_terms).sum(0) if with_log_p else None
        return DecodeOutput(x, z_list, log_p_z, x_mu, x_sigma)

    def decode_eps_log_sigmas(self, eps_z: Sequence[Tensor], eps_x: Tensor
                              ) -> DecodeLogSigmas:
        """One decode of (eps_z, eps_x) with what the official VAEBM eps-space potential
        needs beyond x (``potential="official"`` of the samplers); see
        :class:`DecodeLogSigmas`. eps_z[g]: [B, *latent_shapes[g]]; eps_x: [B, *data_shape].
        Differentiable in every eps."""
        batch_size = self._check_eps(eps_z, eps_x)
        check_tensor(eps_x, "eps_x", shape=(batch_size, *self.data_shape))
        log_sigma_z: list[Tensor] = []

        def reparameterise(g: int, s: Tensor, prior_raw) -> Tensor:
            eps = eps_z[g]
            z, sigma = self._reparameterise_eps(eps, prior_raw)
            log_sigma_z.append(_sum_per_sample(torch.log(sigma).expand_as(eps)))
            return z

        mu_raw, log_sigma_raw = self._decode_tower(batch_size, reparameterise, raw=True)
        x_mu, x_log_sigma = soft_clamp5(mu_raw), soft_clamp5(log_sigma_raw)
        x = torch.clamp(x_mu + (torch.exp(x_log_sigma) + 1e-2) * eps_x, -1.0, 1.0) / 2 + 0.5
        return DecodeLogSigmas(x, log_sigma_z, x_mu, x_log_sigma)

    def prior_params(self, z: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The conditional priors p(z_g | z_<g), teacher-forced at the given latents.

        z[g]: [B, *latent_shapes[g]]. Returns [(mu_g, sigma_g)], each [B, *latent_shapes[g]]
        (the top group's is (0, top_prior_std) broadcast to its shape).
        """
        batch_size = self._check_eps(z, None, name="z")
        params: list[tuple[Tensor, Tensor]] = []

        def teacher_force(g: int, s: Tensor, prior_raw) -> Tensor:
            if prior_raw is None:
                params.append((torch.zeros_like(z[0]),
                               self._top_prior_sigma(z[0]).expand_as(z[0])))
            else:
                params.append(normal_params(*prior_raw))
            return z[g]

        self._decode_tower(batch_size, teacher_force)
        return params

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One-sample ELBO terms for images x [B, *data_shape] with values in [0, 1].

        Returns (recon_nll [B], kl_per_group: list of [B], one per latent group in decoder
        order), in nats. recon_nll = -sum over pixels of log N(2x - 1; mu_x, sigma_x^2): the
        Normal decoder's continuous density on the [-1, 1] data scale, as NVAE computes it
        (add log(2) per pixel for the density on the [0, 1] scale). Each KL is analytic
        between the residual-Normal posterior and the conditional prior at the sampled
        z_<g, summed over the group's dims. The posterior sample uses the global RNG.

        With posterior flows (``config.num_nf > 0``) each group's sample z_0 ~ q is pushed
        through its flow steps to z (what the decoder sees), and its KL is NVAE's one-sample
        estimate log q(z_0) - log p(z) (the flows are volume-preserving). With
        ``config.num_x_bits < 8``, x is first requantised to that many bits
        (:func:`quantize_to_bits`), as NVAE trains and evaluates such models.
        """
        check_tensor(x, "x", shape=("B", *self.data_shape),
                     hint="pass a batch of images shaped [B, *model.data_shape]")
        lowest, highest = torch.aminmax(x.detach()) if x.numel() else (0.0, 0.0)
        if lowest < 0 or highest > 1:  # one host sync per training step
            raise ValueError(f"x must have values in [0, 1] (got min {float(lowest):.4g}, "
                             f"max {float(highest):.4g}); the model maps [0, 1] to [-1, 1] "
                             f"itself")
        x_pm = 2 * quantize_to_bits(x, self.config.num_x_bits) - 1.0  # NVAE's data scale

        # Encoder: bottom-up, keeping each combiner's encoder feature for its group.
        s = self.stem(x_pm)
        for cell in self.pre_process:
            s = cell(s)
        combiners: list[tuple[EncCombinerCell, Tensor]] = []
        for cell in self.enc_tower:
            if cell.cell_type == "combiner_enc":
                combiners.append((cell, s))
            else:
                s = cell(s)
        combiners.reverse()  # decoder order: combiners[g - 1] belongs to group g
        top_feature = self.enc0(s)

        kl_per_group: list[Tensor] = []

        def sample_posterior(g: int, s_dec: Tensor, prior_raw) -> Tensor:
            if prior_raw is None:
                mu_q, sigma_q = normal_params(*self.enc_sampler[0](top_feature).chunk(2, dim=1))
                mu_p, sigma_p = torch.zeros_like(mu_q), self._top_prior_sigma(mu_q)
            else:
                combiner, enc_feature = combiners[g - 1]
                delta_mu, delta_log_sigma = self.enc_sampler[g](
                    combiner(enc_feature, s_dec)).chunk(2, dim=1)
                mu_p_raw, log_sigma_p_raw = prior_raw
                if self.config.res_dist:  # residual Normal: deltas on the prior's raw params
                    mu_q, sigma_q = normal_params(mu_p_raw + delta_mu,
                                                  log_sigma_p_raw + delta_log_sigma)
                else:
                    mu_q, sigma_q = normal_params(delta_mu, delta_log_sigma)
                mu_p, sigma_p = normal_params(mu_p_raw, log_sigma_p_raw)
            num_nf = self.config.num_nf
            if num_nf == 0:
                kl_per_group.append(_sum_per_sample(_normal_kl(mu_q, sigma_q, mu_p, sigma_p)))
                return mu_q + sigma_q * torch.randn_like(mu_q)
            z = mu_q + sigma_q * torch.randn_like(mu_q)
            log_q = _normal_log_prob(z, mu_q, sigma_q)
            for flow in self.nf_cells[g * num_nf:(g + 1) * num_nf]:
                z = flow(z)
            kl_per_group.append(_sum_per_sample(log_q - _normal_log_prob(z, mu_p, sigma_p)))
            return z

        x_mu, x_sigma = self._decode_tower(x.shape[0], sample_posterior)
        recon_nll = -_sum_per_sample(_normal_log_prob(x_pm, x_mu, x_sigma))
        return recon_nll, kl_per_group

    def regularization_terms(self) -> dict[str, Tensor]:
        """NVAE's two regularisers, as differentiable scalars.

        - ``'spectral'``: sum over every conv (weight-normed or not) of the largest singular
          value of its effective weight viewed as [C_out, -1], by power iteration (NVAE's
          ``spectral_norm_parallel``; the persistent singular vectors advance on each call).
        - ``'batchnorm'``: sum over every BatchNorm of max |weight| (NVAE's ``batchnorm_loss``).
        """
        return {"spectral": self._spectral_loss(), "batchnorm": self._batchnorm_loss()}

    def _batchnorm_loss(self) -> Tensor:
        terms = [m.weight.abs().max() for m in self.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        return torch.stack(terms).sum()

    def _spectral_loss(self) -> Tensor:
        return self.spectral_regularizer()

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               mean: bool = True, temperature: float = 1.0) -> Tensor:
        """n ancestral samples [n, *data_shape] in [0, 1], with BN in eval mode.

        Noise is drawn from ``generator`` (or the global RNG; a generator must live on the
        model's device) in this order: eps_z[0], ..., eps_z[G-1], then eps_x (only if
        ``mean=False``); then ``decode_eps`` maps it. By
        default the decoder mean is returned, as VAEBM reports its samples.

        ``temperature`` t is NVAE's: every group draws z = mu + t * sigma * eps (the top group
        t * 1.01 * eps), which is ``decode_eps`` of t * eps_z; eps_x is not scaled. VAEBM's
        chains run at t = 1. (NVAE's own sampling script also re-estimates the BatchNorm
        statistics at t < 1; this method uses the stored ones.)
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int (got {n!r})")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not 0 < temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number > 0 (got {temperature!r})")
        ref = self.prior_ftr0
        eps_z = [temperature * torch.randn(n, *shape, generator=generator, device=ref.device,
                                           dtype=ref.dtype)
                 for shape in self.latent_shapes]
        eps_x = None if mean else torch.randn(n, *self.data_shape, generator=generator,
                                              device=ref.device, dtype=ref.dtype)
        was_training = self.training
        self.eval()
        try:
            return self.decode_eps(eps_z, eps_x)
        finally:
            self.train(was_training)

    # -- input checks (shape checks only: no device synchronisation) ------------------------
    def _check_eps(self, eps_z: Sequence[Tensor], eps_x: Optional[Tensor],
                   name: str = "eps_z") -> int:
        if not isinstance(eps_z, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, one per latent group "
                            f"(got {type(eps_z).__name__})")
        if len(eps_z) != len(self.latent_shapes):
            raise ValueError(f"{name} must hold {len(self.latent_shapes)} tensors, one per "
                             f"latent group (got {len(eps_z)}); see model.latent_shapes")
        check_tensor(eps_z[0], f"{name}[0]", shape=("B", *self.latent_shapes[0]))
        batch_size = eps_z[0].shape[0]
        for g, (eps, shape) in enumerate(zip(eps_z, self.latent_shapes)):
            check_tensor(eps, f"{name}[{g}]", shape=(batch_size, *shape),
                         hint=f"model.latent_shapes[{g}] is {list(shape)} and the batch is "
                              f"{batch_size}")
        if eps_x is not None:
            check_tensor(eps_x, "eps_x", shape=(batch_size, *self.data_shape),
                         hint="eps_x has the shape of x, or is None for the decoder mean")
        return batch_size
