"""A small fully connected VAE for low-dimensional data (the 2-D toy sets).

Generative model: z ~ N(0, I_d), x | z ~ N(mu_x(z), diag(sigma_x^2)) with one learned
sigma_x per data dimension. Its reparameterisation map is x = T(eps_z, eps_x) =
mu_x(eps_z) + sigma_x * eps_x (the prior is already standard normal, so z = eps_z).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..validation import check_tensor


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int) -> nn.Sequential:
    """in_dim -> [Linear -> SiLU] x depth -> Linear(out_dim)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """Gaussian VAE with MLP encoder/decoder.

    Shapes: data x [B, data_dim]; one latent group eps_z [B, latent_dim]; eps_x [B, data_dim].
    ``sampling_drop``: a sampler's frozen snapshot leaves out the ``encoder``
    (docs/interfaces.md), so it supports ``decode_eps`` only (``elbo_terms`` needs the original).
    """

    # Chains run the decoder only (decode_eps); the encoder is for training.
    sampling_drop = ("encoder",)

    def __init__(self, data_dim: int = 2, latent_dim: int = 2, hidden: int = 256, depth: int = 3,
                 init_log_std: float = -1.0, learn_decoder_std: bool = True):
        super().__init__()
        self.config = dict(data_dim=data_dim, latent_dim=latent_dim, hidden=hidden, depth=depth,
                           init_log_std=init_log_std, learn_decoder_std=learn_decoder_std)
        self.encoder = mlp(data_dim, 2 * latent_dim, hidden, depth)
        self.decoder = mlp(latent_dim, data_dim, hidden, depth)
        # A fixed decoder std (learn_decoder_std=False) at the data's noise scale keeps x close
        # to the decoder mean, so a chain cannot satisfy the energy through eps_x alone.
        self.decoder_log_std = nn.Parameter(torch.full((data_dim,), float(init_log_std)),
                                            requires_grad=learn_decoder_std)
        self.latent_shapes = [(latent_dim,)]
        self.data_shape = (data_dim,)

    # -- generator contract (docs/interfaces.md) -------------------------------------------
    def decode_eps(self, eps_z: list[torch.Tensor],
                   eps_x: torch.Tensor | None = None) -> torch.Tensor:
        """eps_z: [eps [B, latent_dim]]; eps_x: [B, data_dim] or None -> x [B, data_dim].

        eps_x=None returns the decoder mean mu_x(z)."""
        (z,) = eps_z
        mean = self.decoder(z)
        if eps_x is None:
            return mean
        return mean + self.decoder_log_std.exp() * eps_x

    # -- training ---------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, data_dim] -> (recon_nll [B], [kl [B]]), both in nats, one posterior sample."""
        check_tensor(x, "x", shape=(None, *self.data_shape), floating=True)
        mu_q, log_std_q = self.encoder(x).chunk(2, dim=-1)
        z = mu_q + log_std_q.exp() * torch.randn_like(mu_q)
        mean = self.decoder(z)
        log_std = self.decoder_log_std
        recon_nll = (0.5 * ((x - mean) / log_std.exp()) ** 2 + log_std
                     + 0.5 * math.log(2 * math.pi)).sum(-1)
        # KL(N(mu, s^2) || N(0, 1)) summed over latent dimensions.
        kl = (0.5 * (mu_q ** 2 + (2 * log_std_q).exp() - 1) - log_std_q).sum(-1)
        return recon_nll, [kl]

    def regularization_terms(self) -> dict[str, torch.Tensor]:
        return {}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               mean: bool = True) -> torch.Tensor:
        """Ancestral samples [n, data_dim]: the decoder mean by default (as VAEBM reports)."""
        device = self.decoder_log_std.device
        eps_z = torch.randn(n, *self.latent_shapes[0], generator=generator, device=device)
        eps_x = None if mean else torch.randn(n, *self.data_shape, generator=generator,
                                              device=device)
        return self.decode_eps([eps_z], eps_x)
