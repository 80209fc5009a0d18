"""The classifiers the toolkit trains for evaluation: digits features and MNIST digits."""
import pytest
import torch

from vaebm_fast.data import load_digits_images
from vaebm_fast.eval import (DigitsFeatureNet, classifier_accuracy, train_digits_features,
                             train_mnist_classifier)


def test_digits_feature_net_separates_the_classes(digits_net):
    images, labels = load_digits_images("test", return_labels=True)
    assert classifier_accuracy(digits_net.classifier(), images, labels) > 0.8  # chance: 0.1
    features = digits_net(images)
    assert features.shape == (len(images), DigitsFeatureNet.num_features)
    # Scaled to unit RMS on the training images (the scale KID's kernel expects).
    assert 0.5 < features.square().mean().sqrt().item() < 2
    assert not digits_net.training


def test_digits_training_is_seeded_and_leaves_the_global_random_state_alone():
    images, labels = load_digits_images("train", return_labels=True)
    images, labels = images[:200], labels[:200]
    state = torch.get_rng_state()
    first = train_digits_features(images, labels, epochs=1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_digits_features(images, labels, epochs=1, seed=5)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_digits_net_rejects_other_image_sizes(digits_net):
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        digits_net(torch.zeros(2, 1, 28, 28))


def _synthetic_mnist(n: int, seed: int):
    """28x28 'digits': digit k is a bright 6x6 square at the k-th cell of a 3x4 grid, plus
    noise; [n, 1, 28, 28] in [0, 1] and labels [n]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = 0.2 * torch.rand(n, 1, 28, 28, generator=g)
    for i, k in enumerate(labels.tolist()):
        row, col = divmod(k, 4)
        images[i, 0, 2 + 8 * row:8 + 8 * row, 2 + 7 * col:8 + 7 * col] = 1.0
    return images, labels


def test_mnist_classifier_learns_digits():
    images, labels = _synthetic_mnist(300, seed=0)
    test_images, test_labels = _synthetic_mnist(100, seed=1)
    classifier = train_mnist_classifier(images, labels, epochs=2, batch_size=32)
    assert classifier_accuracy(classifier, test_images, test_labels) > 0.9


def test_bad_training_data_is_a_clear_error():
    with pytest.raises(ValueError, match="labels"):
        train_digits_features(torch.zeros(10, 1, 8, 8), torch.zeros(9, dtype=torch.int64))
