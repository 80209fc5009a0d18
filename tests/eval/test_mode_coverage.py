"""StackedMNIST modes covered and reverse KL, with a classifier that reads a channel's level."""
import math

import pytest
import torch
from torch import nn

from vaebm_fast.eval import stacked_mnist_modes


class LevelClassifier(nn.Module):
    """A stand-in MNIST classifier: a digit image of constant level (d + 0.5) / 10 is digit d."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        assert digits.shape[1:] == (1, 28, 28)
        level = digits.mean(dim=(1, 2, 3))[:, None] * 10 - 0.5  # [B, 1]
        return -(level - torch.arange(10.0)).abs()               # [B, 10], peak at digit d


def stacked(modes):
    """StackedMNIST-like samples [N, 3, 28, 28] whose channels encode the digits of ``modes``."""
    digits = torch.tensor([[m // 100, m // 10 % 10, m % 10] for m in modes], dtype=torch.float32)
    return ((digits + 0.5) / 10)[:, :, None, None].expand(-1, -1, 28, 28)


def test_every_mode_once_covers_all_with_zero_kl():
    result = stacked_mnist_modes(stacked(range(1000)), LevelClassifier(), batch_size=300)
    assert result["modes_covered"] == 1000
    assert result["reverse_kl"] == pytest.approx(0.0, abs=1e-12)


def test_channel_order_gives_the_mode():
    result = stacked_mnist_modes(stacked([123, 123, 907]), LevelClassifier())
    assert result["mode_histogram"][123] == 2 and result["mode_histogram"][907] == 1
    assert result["modes_covered"] == 2


def test_collapse_to_one_mode_has_kl_log_1000():
    result = stacked_mnist_modes(stacked([42] * 50), LevelClassifier())
    assert result["modes_covered"] == 1
    assert result["reverse_kl"] == pytest.approx(math.log(1000))


def test_half_the_modes_evenly_has_kl_log_2():
    result = stacked_mnist_modes(stacked(list(range(0, 1000, 2)) * 3), LevelClassifier())
    assert result["modes_covered"] == 500
    assert result["reverse_kl"] == pytest.approx(math.log(2))


def test_wrong_sample_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[N, 3, 28, 28\]"):
        stacked_mnist_modes(torch.zeros(4, 1, 28, 28), LevelClassifier())
