"""Mode metrics, mode KL and energy distance on synthetic 2-D samples."""

import math

import numpy as np
import pytest
import torch

from vaebm_fast.data import TwentyFiveGaussians
from vaebm_fast.eval import energy_distance, mixture_metrics, mode_kl, mode_metrics

DATA = TwentyFiveGaussians()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_exact_samples_cover_all_modes_with_high_quality():
    samples = DATA.sample(2500, seeded())
    metrics = mode_metrics(samples, DATA.means, DATA.std)
    assert metrics["modes_covered"] == 25
    # Within 3 std in 2-D: 1 - exp(-4.5) = 0.989 of exact samples.
    assert metrics["high_quality_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert len(metrics["mode_histogram"]) == 25
    assert sum(metrics["mode_histogram"]) == round(metrics["high_quality_fraction"] * 2500)
    assert metrics["coverage_threshold"] == 20  # 0.2 * 2500 / 25
    assert metrics["mode_kl"] < 0.02
    assert (metrics["num_modes"], metrics["num_samples"]) == (25, 2500)


def test_samples_from_one_mode_cover_one_mode():
    samples = DATA.means[7] + DATA.std * torch.randn(1000, 2, generator=seeded())
    metrics = mode_metrics(samples, DATA.means, DATA.std)
    assert metrics["modes_covered"] == 1
    assert metrics["mode_histogram"][7] == sum(metrics["mode_histogram"])
    assert metrics["high_quality_fraction"] > 0.97
    assert metrics["mode_kl"] > 3.0


def test_uniform_noise_is_low_quality():
    samples = (torch.rand(2500, 2, generator=seeded()) * 5 - 2.5).numpy()  # arrays work too
    metrics = mode_metrics(samples, DATA.means, DATA.std)
    # Area within 3 std of a mode / area per mode = pi * 0.15^2 / 1 = 0.07.
    assert metrics["high_quality_fraction"] < 0.12
    assert metrics["modes_covered"] < 25


def test_coverage_threshold_for_a_few_samples_is_at_least_one():
    metrics = mode_metrics(DATA.means[:3], DATA.means, DATA.std)
    assert metrics["coverage_threshold"] == 1
    assert metrics["modes_covered"] == 3


def test_mode_kl_values():
    assert mode_kl([10] * 25) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(mode_kl([0] * 25))
    # One mode with all of 100 samples, pseudo-count 1: q = (101, 1, 1, ...) / 125.
    q = np.array([101] + [1] * 24) / 125
    assert mode_kl([100] + [0] * 24) == pytest.approx(float(np.mean(np.log((1 / 25) / q))))


def test_no_high_quality_samples():
    far_away = torch.full((50, 2), 100.0)
    metrics = mode_metrics(far_away, DATA.means, DATA.std)
    assert metrics["modes_covered"] == 0 and metrics["high_quality_fraction"] == 0.0
    assert math.isnan(metrics["mode_kl"])


def test_energy_distance_is_near_zero_for_the_same_distribution_and_grows_with_shift():
    reference = DATA.sample(1000, seeded(1))
    same = DATA.sample(1000, seeded(2))
    assert energy_distance(reference, reference) == pytest.approx(0.0, abs=1e-9)
    same_distribution = energy_distance(same, reference)
    slightly_shifted = energy_distance(same + 0.2, reference)
    far_shifted = energy_distance(same + 1.0, reference)
    assert same_distribution < 0.01
    assert same_distribution < slightly_shifted < far_shifted
    assert energy_distance(reference, same) == pytest.approx(same_distribution, rel=1e-9)


def test_energy_distance_detects_mode_collapse_and_nan():
    reference = DATA.sample(1000, seeded(1))
    collapsed = DATA.means[12] + DATA.std * torch.randn(1000, 2, generator=seeded(2))
    assert energy_distance(collapsed, reference) > 0.5
    broken = reference.clone()
    broken[3, 0] = float("nan")
    assert math.isnan(energy_distance(broken, reference))


def test_energy_distance_is_chunk_independent(monkeypatch):
    import vaebm_fast.eval.toy_metrics as toy_metrics

    x, y = DATA.sample(300, seeded(1)), DATA.sample(200, seeded(2))
    whole = energy_distance(x, y)
    monkeypatch.setattr(toy_metrics, "_PAIRS_PER_CHUNK", 1000)  # 5 rows per chunk
    assert energy_distance(x, y) == pytest.approx(whole, rel=1e-12)


def brute_force_energy_distance(x, y):
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| over all pairs (V-statistics), in plain numpy with
    explicit pairwise differences: the definition, written independently of the chunked code."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def mean_distance(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).mean()

    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)


def test_energy_distance_equals_the_brute_force_definition():
    # Two different 2-D distributions (a shifted, wider cloud against the grid) of unequal sizes.
    x = DATA.sample(50, seeded(1))
    y = 1.3 * DATA.sample(37, seeded(2)) + torch.tensor([0.2, -0.1])
    expected = brute_force_energy_distance(x.numpy(), y.numpy())
    assert expected > 0.01  # far from the clamp at 0, so a sign or factor error shows
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-12)
    assert energy_distance(y.numpy(), x.numpy()) == pytest.approx(expected, rel=1e-12)


def test_energy_distance_in_1d_is_the_square_of_scipys():
    """scipy.stats.energy_distance returns D = sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) (computed from
    the CDFs: sqrt(2) times the L2 distance between them); energy_distance returns D^2."""
    from scipy import stats  # a declared test dependency
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=80), rng.normal(0.5, 2.0, size=60)
    d = stats.energy_distance(u, v)
    assert energy_distance(u[:, None], v[:, None]) == pytest.approx(d ** 2, rel=1e-10)


def test_mixture_metrics_combines_both():
    samples, reference = DATA.sample(500, seeded(1)), DATA.sample(500, seeded(2))
    metrics = mixture_metrics(samples, reference, DATA.means, DATA.std)
    expected = mode_metrics(samples, DATA.means, DATA.std)
    expected["energy_distance"] = energy_distance(samples, reference)
    assert metrics == expected
    assert metrics["modes_covered"] == 25 and metrics["energy_distance"] > 0


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match=r"samples must have shape \[N, D\] \(got \[10\]\)"):
        mode_metrics(torch.zeros(10), DATA.means, DATA.std)
    with pytest.raises(ValueError, match="same number of coordinates"):
        energy_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="std must be > 0"):
        mode_metrics(torch.zeros(5, 2), DATA.means, 0.0)
