import pytest
import torch

from vaebm_fast.data import load_digits_images
from vaebm_fast.eval import train_digits_features


@pytest.fixture(scope="session")
def digits_net():
    """The digits feature network, trained briefly (4 epochs: ~93% test accuracy)."""
    images, labels = load_digits_images("train", return_labels=True)
    return train_digits_features(images, labels, epochs=4)


@pytest.fixture(scope="session")
def digit_halves():
    """Two disjoint sets of 800 digits [800, 1, 8, 8] from the same distribution."""
    images = load_digits_images("train")
    return images[:800], images[800:1600]


@pytest.fixture
def shifted():
    def shift(images: torch.Tensor, amount: float) -> torch.Tensor:
        return (images + amount).clamp(0, 1)
    return shift
