"""The eps-space potentials a sampler can run: the paper's (default) and the official code's.

"paper"      U(eps) = E(x) + 1/2 ||eps||^2,  x = T(eps_z, eps_x)  (the VAEBM paper)

"official"   U(eps) = E(x) + 1/2 ||eps_z||^2 + sum_g sum log sigma_g
                      + sum_pixels [1/2 u^2 + log sigma_1]

The official VAEBM training script differentiates E(x) - log p(z) - log p(x|z) at the point the
reparameterised map lands on, not the paper's potential. Written in eps:

* z_g = mu_g + sigma_g eps_g, so -log N(z_g; mu_g, sigma_g^2) = 1/2 eps_g^2 + log sigma_g
  (+ 1/2 log 2 pi) per element, and sigma_g depends on eps_<g through the decoder: the
  sum of log sigma_g over every group (the top one included, where it is a constant) and
  element carries gradient.
* log p(x|z) is a Normal log-density of the decoded pixel x_pm = clamp(mu_x + sigma_x eps_x,
  -1, 1) (the [-1, 1] scale) with mean mu_x and a *second* std sigma_1 = exp(max(l, -2)) +
  0.01, where l = 5 tanh(log_sigma_raw / 5) is the decoder's soft-clamped log std before the
  exp (the sample itself uses sigma_x = exp(l) + 0.01): -log p(x|z) = 1/2 u^2 + log sigma_1
  (+ 1/2 log 2 pi) per pixel with u = (x_pm - mu_x) / sigma_1. Where a pixel clamps, u does
  not move with eps_x: that pixel's eps_x has zero gradient (and no pull back to 0).

The fused Langevin update adds the gradient of 1/2 ||eps||^2 (eps_x included) itself, so the
official potential is run as the paper's plus a differentiable correction added to the energy
before the backward:

    c(eps) = sum_g sum log sigma_g + sum_pixels [1/2 u^2 + log sigma_1] - 1/2 ||eps_x||^2

whose last term cancels the update's pull on eps_x. The potentials a chain reports are U as
written above: the Gaussian normalisers (1/2 log 2 pi per latent element and per pixel) are
left out; add them to get E(x) - log p(z) - log p(x|z) exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["POTENTIALS", "OFFICIAL_METHOD", "check_potential", "official_correction"]

POTENTIALS = ("paper", "official")
# The generator method the official potential reads (HierarchicalVAE has it).
OFFICIAL_METHOD = "decode_eps_log_sigmas"
# VAEBM's likelihood clamps the decoder's log std from below at this value (sampling does not).
LIKELIHOOD_MIN_LOG_SIGMA = -2.0
SIGMA_FLOOR = 1e-2  # NVAE's + 0.01 on every std


def check_potential(potential, space: str, generator, grad_clip) -> str:
    """``potential`` checked against the sampler's other settings; returns it."""
    if not isinstance(potential, str) or potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {', '.join(map(repr, POTENTIALS))} "
                         f"(got {potential!r})")
    if potential == "paper":
        return potential
    if space != "eps":
        raise ValueError(f"potential='official' is the official VAEBM eps-space potential: it "
                         f"needs space='eps' (got space={space!r}); use potential='paper'")
    if not callable(getattr(generator, OFFICIAL_METHOD, None)):
        raise TypeError(f"potential='official' needs a generator with {OFFICIAL_METHOD}"
                        f"(eps_z, eps_x) (the prior's log sigmas and the decoder's mean and "
                        f"pre-exp log std, as HierarchicalVAE has); "
                        f"{type(generator).__name__} lacks it: use potential='paper'")
    if grad_clip is not None:
        raise ValueError("potential='official' reproduces the official chain, which clips no "
                         "gradient (a clip would also break the correction that cancels the "
                         "prior pull on eps_x): drop grad_clip or use potential='paper'")
    return potential


def official_correction(generator, eps_z: Sequence[torch.Tensor], eps_x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [B, *data_shape], c [B]): the decoded sample and the correction c(eps) of the module
    docstring, differentiable in every eps; U_official = E(x) + 1/2 ||eps||^2 + c."""
    out = getattr(generator, OFFICIAL_METHOD)(list(eps_z), eps_x)
    x_pm = 2 * out.x - 1  # the clamped sample in the [-1, 1] scale the likelihood uses
    log_sigma_1 = out.x_log_sigma.clamp(min=LIKELIHOOD_MIN_LOG_SIGMA)
    u = (x_pm - out.x_mu) / (torch.exp(log_sigma_1) + SIGMA_FLOOR)
    neg_log_lik = 0.5 * u * u + torch.log(torch.exp(log_sigma_1) + SIGMA_FLOOR)
    correction = (torch.stack(list(out.log_sigma_z)).sum(0)
                  + (neg_log_lik - 0.5 * eps_x * eps_x).flatten(1).sum(1))
    return out.x, correction
