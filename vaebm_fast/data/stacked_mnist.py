"""StackedMNIST: three MNIST digits as the red, green and blue channels (1000 modes).

The mode-counting benchmark of PacGAN, also used by the VAEBM evaluations. As in the official
VAEBM (and DDGAN) code, each channel c draws its digits from two independent permutations of the
MNIST split laid end to end, so a split of N digits gives 2N stacked images in which every digit
appears exactly twice per channel. The label of an image is ``100 r + 10 g + b`` for the digits
``r, g, b`` of its channels, so the 1000 modes are the labels 0..999. The official code draws
the permutations from NumPy's unseeded global state; here they come from
``numpy.random.default_rng(seed)`` (red's two, then green's, then blue's), so a seed fixes the set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from .mnist import load_mnist

__all__ = ["load_stacked_mnist", "stacked_mnist_indices", "NUM_STACKED_MNIST_MODES"]

NUM_STACKED_MNIST_MODES = 1000


def stacked_mnist_indices(num_digits: int, seed: int = 0) -> np.ndarray:
    """The MNIST index of each channel of each stacked image: int64 [2 num_digits, 3]."""
    rng = np.random.default_rng(seed)
    columns = [np.concatenate([rng.permutation(num_digits), rng.permutation(num_digits)])
               for _ in range(3)]
    return np.stack(columns, axis=1)


def load_stacked_mnist(
    root: Union[str, Path],
    split: str = "train",
    seed: int = 0,
    *,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Build StackedMNIST from the MNIST idx files in ``root`` (see ``load_mnist``).

    Args:
        root, split: as ``load_mnist``; "train" gives 120000 images, "test" 20000.
        seed: seed of the index draw; the same seed always gives the same images.
        return_labels: also return the modes ``100 r + 10 g + b`` (0..999).

    Returns:
        images [2N, 3, 28, 28] float32 in [0, 1], or (images, labels [2N] int64). The train
        split takes 120000 x 3 x 28 x 28 x 4 bytes, about 1.1 GB.
    """
    digits, digit_labels = load_mnist(root, split, return_labels=True)  # [N, 1, 28, 28], [N]
    indices = torch.from_numpy(stacked_mnist_indices(len(digits), seed))  # [2N, 3]
    images = digits[:, 0][indices]  # [2N, 3, 28, 28]: channel c is digit indices[:, c]
    if return_labels:
        labels = (digit_labels[indices] * torch.tensor([100, 10, 1])).sum(dim=1)
        return images, labels
    return images
