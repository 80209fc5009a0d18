"""2-D toy densities with exact samplers: the 25-Gaussian grid and the Swiss roll.

Both expose ``sample(n, generator=None) -> [n, 2] float32`` on the CPU, drawing everything from
``generator`` (or torch's global CPU generator when it is None), so a seeded generator gives the
same points on every run.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..validation import check_positive

__all__ = ["TwentyFiveGaussians", "SwissRoll"]


class TwentyFiveGaussians:
    """Equal-weight mixture of 25 isotropic Gaussians on a 5 x 5 grid.

    The means are ``spacing * (i, j)`` for ``i, j`` in ``{-2, -1, 0, 1, 2}``, ordered row by row
    (``means[5 * a + b] = spacing * (a - 2, b - 2)``); every component has standard deviation
    ``std`` in each coordinate.

    Attributes:
        means: [25, 2] float32 tensor of component means.
        std: per-coordinate standard deviation of every component.
        spacing: distance between neighbouring means.
    """

    num_modes = 25

    def __init__(self, spacing: float = 1.0, std: float = 0.05) -> None:
        self.spacing = float(check_positive(spacing, "spacing"))
        self.std = float(check_positive(std, "std"))
        grid = torch.arange(-2, 3, dtype=torch.float32) * self.spacing
        rows, cols = torch.meshgrid(grid, grid, indexing="ij")
        self.means = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)  # [25, 2]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``n`` points: a uniformly chosen mean plus N(0, std^2 I) noise. Returns [n, 2]."""
        check_positive(n, "n", integer=True)
        component = torch.randint(self.num_modes, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        return self.means[component] + self.std * noise

    def __repr__(self) -> str:
        return f"TwentyFiveGaussians(spacing={self.spacing}, std={self.std})"


class SwissRoll:
    """The 2-D Swiss roll (the ``(x, z)`` columns of scikit-learn's ``make_swiss_roll``).

    With ``t ~ Uniform(1.5 pi, 4.5 pi)`` a point is ``(t cos t, t sin t) / (4.5 pi)`` plus
    N(0, noise^2 I). Dividing by the largest radius ``4.5 pi`` puts every noiseless point in the
    unit disk (x in about [-0.67, 0.89], y in about [-0.78, 1]).

    ``noise`` is in these output units; the default 0.02 (about 0.28 in scikit-learn's units)
    keeps the density non-degenerate so that an EBM can fit it. ``noise=0`` gives the bare curve.
    """

    t_min = 1.5 * math.pi
    t_max = 4.5 * math.pi

    def __init__(self, noise: float = 0.02) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"noise must be a number >= 0 (got {noise!r})")
        self.noise = float(noise)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``n`` points. Returns [n, 2] float32."""
        check_positive(n, "n", integer=True)
        t = self.t_min + (self.t_max - self.t_min) * torch.rand(n, generator=generator)
        points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / self.t_max
        if self.noise > 0:
            points = points + self.noise * torch.randn(n, 2, generator=generator)
        return points

    def __repr__(self) -> str:
        return f"SwissRoll(noise={self.noise})"
