"""Weight-normalised 2-D convolution with optional data-dependent init (NVAE / VAEBM style)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# Added to ||W|| before dividing, as in the official code, so a zero filter does not give NaN.
_NORM_EPS = 1e-5
# Data-dependent init scales the unit-norm output to std 1/5 (the official choice).
_DATA_INIT_STD_SCALE = 5.0


def _filter_norms(weight: Tensor) -> Tensor:
    """Euclidean norm of each output filter. weight: [C_out, C_in/g, kh, kw] -> [C_out, 1, 1, 1]."""
    return torch.linalg.vector_norm(weight, dim=(1, 2, 3), keepdim=True)


class WNConv2d(nn.Conv2d):
    """Conv2d with weight normalisation and optional data-dependent initialisation.

    Parameters: ``weight`` [C_out, C_in/groups, kh, kw], ``bias`` [C_out] (if ``bias``),
    ``log_weight_norm`` [C_out, 1, 1, 1] (if ``weight_norm``). The effective weight is

        W_eff = exp(log_weight_norm) * W / (||W|| + 1e-5),   norm per output filter,

    and ``log_weight_norm`` starts at log(||W|| + 1e-2), so W_eff ~= W at construction.
    Weight init and padding semantics are those of :class:`torch.nn.Conv2d`.

    Data-dependent init (``data_init=True``): the first forward *in training mode* computes
    y = conv(x, W/||W||) without bias, takes per-channel mean m and std s over batch and
    space, and sets ``bias = -m / (5 s)`` and ``log_weight_norm = -log(5 s)``, so that
    channel's output has mean ~0 and std ~1/5. Under ``torch.distributed`` the statistics are
    pooled over ranks; without a process group nothing is communicated. Loading a state dict
    that holds this layer's weight marks it initialised, so loaded weights are never
    overwritten. The pending flag is a plain attribute, not part of the state dict.
    Unlike the official layer, init runs only in training mode, and the pooled statistics are
    exact (the official averaged the per-rank mean and std).

    With ``weight_norm=False`` an official checkpoint's duplicate ``weight_normalized`` key is
    accepted (and ignored) on load.

    x: [B, C_in, H, W] -> [B, C_out, H', W'].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        weight_norm: bool = True,
        data_init: bool = False,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self.weight_norm = weight_norm
        if weight_norm:
            with torch.no_grad():
                init = torch.log(_filter_norms(self.weight) + 1e-2)
            self.log_weight_norm = nn.Parameter(init)
        else:
            self.register_parameter("log_weight_norm", None)
        self._data_init_pending = bool(data_init)
        # Set only inside `frozen_normalized_weights`: a detached W_eff reused by every forward.
        self._frozen_weight: Tensor | None = None

    @property
    def data_init_pending(self) -> bool:
        """True until the data-dependent init has run or weights were loaded."""
        return self._data_init_pending

    def normalized_weight(self) -> Tensor:
        """W_eff [C_out, C_in/groups, kh, kw] (``weight`` itself when weight_norm is off)."""
        if not self.weight_norm:
            return self.weight
        return self.log_weight_norm.exp() * self.weight / (_filter_norms(self.weight) + _NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        weight = self._frozen_weight
        if weight is None:
            if self._data_init_pending and self.training:
                self._data_dependent_init(x)
            weight = self.normalized_weight()
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    @torch.no_grad()
    def _data_dependent_init(self, x: Tensor) -> None:
        unit_weight = self.weight / (_filter_norms(self.weight) + _NORM_EPS)
        y = F.conv2d(x, unit_weight, None, self.stride, self.padding, self.dilation, self.groups)
        mean, std = _channel_mean_std(y)
        scaled_std = _DATA_INIT_STD_SCALE * std
        if self.bias is not None:
            self.bias.copy_(-mean / (scaled_std + _NORM_EPS))
        if self.weight_norm:
            self.log_weight_norm.copy_(-torch.log(scaled_std + _NORM_EPS).view(-1, 1, 1, 1))
        else:
            # Without a gain parameter the only way to rescale is the weight itself.
            self.weight.copy_(unit_weight / (scaled_std + _NORM_EPS).view(-1, 1, 1, 1))
        self._data_init_pending = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights coming from a checkpoint win over data-dependent init (the official code
        # re-initialised on the first forward even after loading).
        if prefix + "weight" in state_dict:
            self._data_init_pending = False
        # Official NVAE convs without weight norm register `weight_normalized` as a second name
        # of `weight`, so their checkpoints hold the tensor twice. Accept and drop the alias
        # (state_dict is load_state_dict's private copy); our own state dict never has it.
        if not self.weight_norm:
            state_dict.pop(prefix + "weight_normalized", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_norm={self.weight_norm}"


def _channel_mean_std(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std of y [B, C, H, W] over batch and space -> ([C], [C]).

    With an initialised process group the moments are pooled over all ranks (exact global
    statistics from summed first and second moments); otherwise they are local.
    """
    out_dtype = y.dtype
    # Accumulate in float64: a single pass of sums of squares loses precision in float32.
    y = y.transpose(0, 1).reshape(y.shape[1], -1).double()
    if dist.is_available() and dist.is_initialized():
        count = torch.full((y.shape[0],), float(y.shape[1]), dtype=y.dtype, device=y.device)
        stats = torch.stack([y.sum(1), (y * y).sum(1), count])
        dist.all_reduce(stats)
        total, total_sq, n = stats
        mean = total / n
        var = (total_sq - n * mean * mean) / (n - 1).clamp_min(1)
        std = var.clamp_min(0).sqrt()
    else:
        mean = y.mean(1)
        std = y.std(1) if y.shape[1] > 1 else torch.zeros_like(mean)
    return mean.to(out_dtype), std.to(out_dtype)


@contextlib.contextmanager
def frozen_normalized_weights(module: nn.Module) -> Iterator[None]:
    """Compute every WNConv2d's W_eff in ``module`` once and reuse it until the block exits.

    For MCMC chains, where the weights do not change between steps: each forward then skips
    the weight-norm arithmetic, and no gradient reaches ``weight``/``log_weight_norm``
    (gradients with respect to the input are unaffected). Do not update the weights inside.
    """
    convs = [m for m in module.modules() if isinstance(m, WNConv2d)]
    with torch.no_grad():
        for conv in convs:
            conv._frozen_weight = conv.normalized_weight().detach()
    try:
        yield
    finally:
        for conv in convs:
            conv._frozen_weight = None
