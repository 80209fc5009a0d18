"""Datasets (2-D toys, digits, make_dataset, batches) and the input checks of validation.py."""

import math

import numpy as np
import pytest
import torch

from vaebm_fast.data import (
    NUM_DIGITS_IMAGES,
    SwissRoll,
    TwentyFiveGaussians,
    batches,
    load_digits_images,
    make_dataset,
    split_indices,
)
from vaebm_fast.validation import check_choice, check_positive, check_tensor


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- 25 Gaussians


def test_25_gaussians_means_form_the_scaled_grid():
    dataset = TwentyFiveGaussians(spacing=2.0, std=0.1)
    assert dataset.means.shape == (25, 2)
    assert dataset.std == 0.1
    expected = {(2.0 * i, 2.0 * j) for i in range(-2, 3) for j in range(-2, 3)}
    assert {tuple(m) for m in dataset.means.tolist()} == expected


def test_25_gaussians_samples_are_near_a_mean_and_spread_over_all_modes():
    dataset = TwentyFiveGaussians()
    samples = dataset.sample(5000, seeded())
    assert samples.shape == (5000, 2) and samples.dtype == torch.float32
    distances = torch.cdist(samples, dataset.means)
    nearest_distance, nearest_mode = distances.min(dim=1)
    assert bool((nearest_distance <= 5 * dataset.std).all())
    counts = torch.bincount(nearest_mode, minlength=25)
    assert int(counts.min()) > 120 and int(counts.max()) < 280  # 200 expected per mode
    per_coordinate_std = (samples - dataset.means[nearest_mode]).std(dim=0)
    assert torch.allclose(per_coordinate_std, torch.full((2,), dataset.std), rtol=0.1)


def test_samplers_are_deterministic_given_a_generator():
    for dataset in (TwentyFiveGaussians(), SwissRoll()):
        assert torch.equal(dataset.sample(100, seeded(3)), dataset.sample(100, seeded(3)))
        assert not torch.equal(dataset.sample(100, seeded(3)), dataset.sample(100, seeded(4)))


def test_samplers_reject_bad_sizes():
    with pytest.raises(ValueError, match="n must be > 0"):
        TwentyFiveGaussians().sample(0)
    with pytest.raises(TypeError, match="n must be a positive integer"):
        SwissRoll().sample(2.5)
    with pytest.raises(ValueError, match="std must be > 0"):
        TwentyFiveGaussians(std=-1.0)


# ----------------------------------------------------------------------------- Swiss roll


def test_swiss_roll_without_noise_lies_on_the_scaled_spiral():
    samples = SwissRoll(noise=0.0).sample(2000, seeded())
    assert samples.shape == (2000, 2) and samples.dtype == torch.float32
    radius = samples.norm(dim=1)  # radius = t / (4.5 pi) for t in [1.5 pi, 4.5 pi]
    assert float(radius.min()) >= 1 / 3 - 1e-5 and float(radius.max()) <= 1 + 1e-5
    angle_from_radius = radius * 4.5 * math.pi
    assert torch.allclose(samples[:, 0], radius * torch.cos(angle_from_radius), atol=1e-4)


def test_swiss_roll_noise_is_in_output_units():
    noise = 0.05
    samples = SwissRoll(noise=noise).sample(2000, seeded())
    assert bool(torch.isfinite(samples).all())
    assert float(samples.norm(dim=1).max()) <= 1 + 5 * noise * math.sqrt(2)
    # The same generator draws the same positions t along the curve, so the noiseless roll
    # gives each sample's point on the spiral: the residual is the noise itself, with std
    # `noise` per coordinate (2000 values each: standard error 1.6%, so 10% catches too little
    # noise as well as too much).
    residual = samples - SwissRoll(noise=0.0).sample(2000, seeded())
    for coordinate_std in residual.std(dim=0).tolist():
        assert abs(coordinate_std - noise) < 0.1 * noise, coordinate_std
    assert abs(float(residual.mean())) < 0.1 * noise
    with pytest.raises(ValueError, match="noise"):
        SwissRoll(noise=-0.1)


# ----------------------------------------------------------------------------- digits


def test_digits_all_images_in_unit_range():
    images, labels = load_digits_images("all", return_labels=True)
    assert images.shape == (NUM_DIGITS_IMAGES, 1, 8, 8) == (1797, 1, 8, 8)
    assert images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))


def test_digits_split_is_disjoint_complete_and_deterministic():
    train, test = load_digits_images("train"), load_digits_images("test")
    assert len(train) + len(test) == 1797 and len(test) == 180
    all_images = load_digits_images("all")
    train_idx, test_idx = split_indices("train"), split_indices("test")
    assert set(train_idx).isdisjoint(test_idx)
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    assert torch.equal(all_images[train_idx], train)
    assert torch.equal(load_digits_images("train", seed=0), train)
    assert not torch.equal(load_digits_images("test", seed=1), test)


def test_digits_returns_fresh_tensors():
    first = load_digits_images("test")
    first.zero_()
    assert float(load_digits_images("test").max()) == 1.0


def test_digits_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', 'all'"):
        load_digits_images("validation")


def test_interpolated_digits_are_seeded_midpoints_of_two_different_images():
    from vaebm_fast.data import interpolated_digits
    # Image i is the constant 2^i, so twice a midpoint, 2^i + 2^j, has two bits set iff i != j.
    images = (2.0 ** torch.arange(5)).view(5, 1, 1, 1).expand(5, 1, 2, 3)
    mixed = interpolated_digits(images, 50, seed=1)
    assert mixed.shape == (50, 1, 2, 3)
    assert torch.equal(mixed, mixed[:, :1, :1, :1].expand(50, 1, 2, 3))
    bits = [bin(int(2 * value)).count("1") for value in mixed[:, 0, 0, 0].tolist()]
    assert bits == [2] * 50
    assert torch.equal(mixed, interpolated_digits(images, 50, seed=1))
    assert not torch.equal(mixed, interpolated_digits(images, 50, seed=2))
    with pytest.raises(ValueError, match="at least 2 images"):
        interpolated_digits(images[:1], 5)
    with pytest.raises(ValueError):
        interpolated_digits(images, 0)


# ----------------------------------------------------------------------------- make_dataset


def test_make_dataset_builds_each_kind():
    assert isinstance(make_dataset("25gaussians", std=0.02), TwentyFiveGaussians)
    assert isinstance(make_dataset("Swiss-Roll", noise=0.1), SwissRoll)
    assert make_dataset("digits", split="test").shape == (180, 1, 8, 8)


def test_make_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        make_dataset("imagenet")
    message = str(info.value)
    assert "'imagenet'" in message
    for name in ("25gaussians", "swissroll", "digits", "cifar10", "stackedmnist", "lmdb"):
        assert name in message


# ----------------------------------------------------------------------------- batches


def test_batches_from_a_sampler_draw_fresh_points():
    stream = batches(TwentyFiveGaussians(), 64, seeded())
    first, second = next(stream), next(stream)
    assert first.shape == second.shape == (64, 2)
    assert not torch.equal(first, second)


def test_batches_from_a_tensor_shuffle_whole_epochs():
    data = torch.arange(10).float().unsqueeze(1)  # [10, 1]
    stream = batches(data, 3, seeded())
    epoch = torch.cat([next(stream) for _ in range(3)])  # 3 full batches per epoch of 10
    assert epoch.shape == (9, 1)
    assert len(set(epoch.squeeze(1).tolist())) == 9  # no repeats within an epoch
    next_epoch = torch.cat([next(stream) for _ in range(3)])
    assert len(set(next_epoch.squeeze(1).tolist())) == 9

    again = batches(data, 3, seeded())
    assert torch.equal(torch.cat([next(again) for _ in range(3)]), epoch)


def test_batches_reject_bad_arguments_when_called():
    with pytest.raises(ValueError, match="must not exceed the number of items"):
        batches(torch.zeros(5, 2), 6)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        batches(torch.zeros(5, 2), 0)
    with pytest.raises(TypeError, match="needs a tensor"):
        batches([1, 2, 3], 2)


# ----------------------------------------------------------------------------- validation.py


def test_check_tensor_accepts_and_returns_a_matching_tensor():
    x = torch.zeros(4, 2)
    assert check_tensor(x, "x", ndim=2, shape=("B", 2), device="cpu", finite=True) is x
    assert check_tensor(torch.zeros(3, dtype=torch.long), "i", floating=False) is not None
    assert check_tensor(torch.zeros(3, dtype=torch.long), "i", dtype=torch.long) is not None


def test_check_tensor_messages_say_what_and_how():
    with pytest.raises(ValueError) as info:
        check_tensor(torch.zeros(4, 3), "x", shape=("B", 2), hint="pass 2-D points")
    assert str(info.value) == "x must have shape [B, 2] (got [4, 3]); pass 2-D points"

    with pytest.raises(ValueError, match=r"shape \[\*, 1, 8, 8\] \(got \[2, 3, 8, 8\]\)"):
        check_tensor(torch.zeros(2, 3, 8, 8), "x", shape=(None, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \(got 2"):
        check_tensor(torch.zeros(2, 2), "x", ndim=4)
    with pytest.raises(ValueError, match=r"floating-point.*torch.int64.*\.float\(\)"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x")
    with pytest.raises(ValueError, match=r"dtype torch.float64 \(got torch.float32\)"):
        check_tensor(torch.zeros(2), "x", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"must be on device cuda \(got cpu\)"):
        check_tensor(torch.zeros(2), "x", device="cuda")
    with pytest.raises(ValueError, match=r"x must be finite \(got 2 NaN/inf entries of 3\)"):
        check_tensor(torch.tensor([1.0, float("nan"), float("inf")]), "x", finite=True)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor \(got ndarray\); convert"):
        check_tensor(np.zeros(2), "x")


def test_check_choice_lists_choices_and_suggests():
    assert check_choice("paper", "potential", ("paper", "official")) == "paper"
    with pytest.raises(ValueError) as info:
        check_choice("offical", "potential", ("paper", "official"))
    assert str(info.value) == ("potential must be one of 'paper', 'official' (got 'offical'); "
                               "did you mean 'official'?")


def test_check_positive():
    assert check_positive(0.5, "step_size") == 0.5
    assert check_positive(np.int64(3), "n", integer=True) == 3
    with pytest.raises(ValueError, match=r"step_size must be > 0 \(got -1\)"):
        check_positive(-1, "step_size")
    with pytest.raises(ValueError, match="must be > 0"):
        check_positive(float("nan"), "step_size")
    with pytest.raises(TypeError, match="positive number"):
        check_positive("1", "step_size")
    with pytest.raises(TypeError, match="positive number"):
        check_positive(True, "step_size")
    with pytest.raises(TypeError, match="positive integer"):
        check_positive(2.0, "batch_size", integer=True)

