"""Sample-quality metrics for 2-D toy data (mixtures such as the 25-Gaussian grid).

Mode metrics (``mode_metrics``), following the GAN mode-collapse literature (VEEGAN, PacGAN):

- A sample is **high quality** if its Euclidean distance to the nearest mean is at most
  ``3 * std``. ``high_quality_fraction`` is the share of such samples; for exact samples of an
  isotropic 2-D mixture with well-separated modes it is 1 - exp(-4.5) = 0.989.
- ``mode_histogram[k]`` counts the high-quality samples whose nearest mean is mode ``k``.
- A mode is **covered** if it receives at least
  ``coverage_threshold = max(1, ceil(coverage_fraction * N / K))`` high-quality samples, i.e. a
  fifth (``coverage_fraction=0.2``) of what a perfect sampler gives it on average. With
  N = 2500 samples and K = 25 modes this is the customary 20 samples.
- ``mode_kl`` = KL(uniform || q), where q is the frequency of each mode among the high-quality
  samples smoothed by one pseudo-count per mode, ``q_k = (h_k + 1) / (H + K)``. It is 0 for
  perfectly balanced modes, grows when modes are missed or unbalanced, and is NaN when no
  sample is high quality (the frequencies are then undefined; ``high_quality_fraction`` = 0
  says what happened).

Distribution distance (``energy_distance``): the energy distance of Szekely and Rizzo between
the two empirical distributions,

    D^2(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,

with every expectation a mean over all pairs (the V-statistic, so D^2 >= 0, and it is 0 only
for identical samples). It needs no bandwidth, is a metric on distributions (D = 0 iff equal),
and sees both missing modes and misplaced mass. Two independent samples of size N from the
same distribution give D^2 of order E|X - X'| / N, not exactly 0.

Everything is computed in float64 in chunks of at most about four million pair distances
(32 MB), deterministically, on the samples' device.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Union

import numpy as np
import torch

__all__ = ["mode_metrics", "mode_kl", "energy_distance", "mixture_metrics"]

ArrayLike = Union[torch.Tensor, np.ndarray]

# Pair distances per chunk: bounds the temporary [rows, M] block to ~32 MB of float64.
_PAIRS_PER_CHUNK = 4_000_000


def _as_points(points: ArrayLike, name: str, device: Any = None) -> torch.Tensor:
    """[N, D] float64 tensor (detached) from a tensor or array."""
    points = torch.as_tensor(points).detach()
    if device is not None:
        points = points.to(device)
    if points.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D] (got {list(points.shape)}); pass a "
                         f"batch of points, one per row")
    if points.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point (got shape {list(points.shape)})")
    return points.to(torch.float64)


def _nearest_mode(samples: torch.Tensor, means: torch.Tensor):
    """(index [N] int64, distance [N] float64) of the nearest mean for every sample."""
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // means.shape[0])
    indices, distances = [], []
    for chunk in samples.split(rows_per_chunk):
        # Direct differences rather than cdist's matmul form: exact for far-off points.
        chunk_distances = (chunk[:, None, :] - means[None, :, :]).norm(dim=-1)  # [n, K]
        distance, index = chunk_distances.min(dim=1)
        indices.append(index)
        distances.append(distance)
    return torch.cat(indices), torch.cat(distances)


def mode_kl(mode_histogram: Any, pseudo_count: float = 1.0) -> float:
    """KL(uniform || q) in nats, q_k = (h_k + pseudo_count) / (sum h + K * pseudo_count).

    ``mode_histogram`` [K] holds counts of high-quality samples per mode. Returns NaN when all
    counts are 0.
    """
    counts = torch.as_tensor(mode_histogram, dtype=torch.float64).reshape(-1)
    num_modes = counts.numel()
    total = float(counts.sum())
    if total == 0:
        return float("nan")
    observed = (counts + pseudo_count) / (total + num_modes * pseudo_count)
    return float(-math.log(num_modes) - observed.log().mean())


def mode_metrics(
    samples: ArrayLike,
    means: ArrayLike,
    std: float,
    *,
    coverage_fraction: float = 0.2,
) -> Dict[str, Any]:
    """Mode coverage and quality of ``samples`` [N, 2] against mixture ``means`` [K, 2].

    Args:
        samples: [N, D] generated points (tensor or array).
        means: [K, D] component means of the data distribution.
        std: per-coordinate standard deviation of each component.
        coverage_fraction: a mode is covered with at least
            ``max(1, ceil(coverage_fraction * N / K))`` high-quality samples.

    Returns:
        dict with ``modes_covered`` (int), ``high_quality_fraction`` (float in [0, 1]),
        ``mode_histogram`` (list of K ints), ``mode_kl`` (float, see the module docstring),
        ``coverage_threshold`` (int), ``num_modes`` (K) and ``num_samples`` (N).
    """
    samples = _as_points(samples, "samples")
    means = _as_points(means, "means", device=samples.device)
    if samples.shape[1] != means.shape[1]:
        raise ValueError(f"samples and means must have the same number of coordinates (got "
                         f"samples {list(samples.shape)}, means {list(means.shape)})")
    if not std > 0:
        raise ValueError(f"std must be > 0 (got {std!r}); pass the data's component std")

    num_samples, num_modes = samples.shape[0], means.shape[0]
    nearest, distance = _nearest_mode(samples, means)
    high_quality = distance <= 3.0 * std
    histogram = torch.bincount(nearest[high_quality], minlength=num_modes).cpu()

    coverage_threshold = max(1, math.ceil(coverage_fraction * num_samples / num_modes))
    return {
        "modes_covered": int((histogram >= coverage_threshold).sum()),
        "high_quality_fraction": float(high_quality.double().mean()),
        "mode_histogram": histogram.tolist(),
        "mode_kl": mode_kl(histogram),
        "coverage_threshold": coverage_threshold,
        "num_modes": num_modes,
        "num_samples": num_samples,
    }


def _mean_pair_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean of |x_i - y_j| over all pairs, chunked over the rows of x."""
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // y.shape[0])
    total = 0.0
    for chunk in x.split(rows_per_chunk):
        total += float(torch.cdist(chunk, y, compute_mode="donot_use_mm_for_euclid_dist").sum())
    return total / (x.shape[0] * y.shape[0])


def energy_distance(samples: ArrayLike, reference: ArrayLike) -> float:
    """Squared energy distance D^2 between ``samples`` [N, D] and ``reference`` [M, D].

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` over the empirical distributions (see the module
    docstring); NaN if any point is NaN or infinite. Cost O((N + M)^2 D).
    """
    samples = _as_points(samples, "samples")
    reference = _as_points(reference, "reference", device=samples.device)
    if samples.shape[1] != reference.shape[1]:
        raise ValueError(f"samples and reference must have the same number of coordinates "
                         f"(got {list(samples.shape)} and {list(reference.shape)})")
    cross = _mean_pair_distance(samples, reference)
    within_samples = _mean_pair_distance(samples, samples)
    within_reference = _mean_pair_distance(reference, reference)
    squared_distance = 2.0 * cross - within_samples - within_reference
    if math.isnan(squared_distance):  # non-finite points (a diverged sampler): say so
        return float("nan")
    # Clamp rounding noise: D^2 of empirical distributions is never negative.
    return max(0.0, squared_distance)


def mixture_metrics(
    samples: ArrayLike, reference: ArrayLike, means: ArrayLike, std: float
) -> Dict[str, Any]:
    """``mode_metrics(samples, means, std)`` plus ``energy_distance(samples, reference)``,
    where ``reference`` [M, 2] holds samples of the data distribution."""
    metrics = mode_metrics(samples, means, std)
    metrics["energy_distance"] = energy_distance(samples, reference)
    return metrics
