"""The 8 x 8 handwritten digits bundled with scikit-learn (1797 images, no download).

``load_digits_images`` returns images ``[N, 1, 8, 8]`` float32 in ``[0, 1]`` (the bundled grey
levels 0..16 divided by 16). The train/test split is a fixed function of ``seed``: a NumPy
permutation of the 1797 indices whose first ``round(test_fraction * 1797)`` entries are the test
set and the rest the training set, each kept in the original order. The default 10 % split gives
1617 training and 180 test images.

``interpolated_digits`` builds an out-of-distribution set from any images: midpoints of two
different images, the digit-scale analogue of the interpolated CIFAR-10 images the VAEBM paper
uses for OOD detection.
"""

from __future__ import annotations

import functools
from typing import Tuple, Union

import numpy as np
import torch

from .._requirements import missing_extra
from ..validation import check_choice, check_positive

__all__ = ["load_digits_images", "split_indices", "interpolated_digits", "NUM_DIGITS_IMAGES"]

NUM_DIGITS_IMAGES = 1797
_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _bundled_digits() -> Tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float32 in [0, 1], labels [1797] int64), read once per process."""
    try:  # imported here: sklearn takes a while to import, and it is optional (the [cli] extra)
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise missing_extra("the digits data set (bundled with it)", "scikit-learn") from None

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)  # the cache is shared; callers get copies
    labels.setflags(write=False)
    return images, labels


def split_indices(split: str, seed: int = 0, test_fraction: float = 0.1) -> np.ndarray:
    """Sorted indices into the 1797 bundled digits for ``split`` ("train", "test" or "all")."""
    check_choice(split, "split", _SPLITS)
    if split == "all":
        return np.arange(NUM_DIGITS_IMAGES)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction!r})")
    permutation = np.random.default_rng(seed).permutation(NUM_DIGITS_IMAGES)
    num_test = int(round(test_fraction * NUM_DIGITS_IMAGES))
    chosen = permutation[:num_test] if split == "test" else permutation[num_test:]
    return np.sort(chosen)


def load_digits_images(
    split: str = "train",
    seed: int = 0,
    *,
    test_fraction: float = 0.1,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Load scikit-learn's digits as images.

    Args:
        split: "train", "test" or "all" (all 1797 images in the bundled order).
        seed: seed of the split permutation; the same seed always gives the same split.
        test_fraction: share of the images held out as the test set.
        return_labels: also return the digit classes.

    Returns:
        images [N, 1, 8, 8] float32 in [0, 1], or (images, labels [N] int64) with
        ``return_labels=True``; fresh tensors the caller may modify.
    """
    all_images, all_labels = _bundled_digits()
    indices = split_indices(split, seed, test_fraction)
    # Indexing with an index array copies, so the cached arrays are never exposed.
    images = torch.from_numpy(all_images[indices]).unsqueeze(1)  # [N, 1, 8, 8]
    if return_labels:
        return images, torch.from_numpy(all_labels[indices])
    return images


def interpolated_digits(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` midpoints ``(a + b) / 2`` of random pairs of different images [N, C, H, W] -> [n, C,
    H, W]; the pairs are a fixed function of ``seed`` (a NumPy generator), no image is paired
    with itself."""
    if images.dim() != 4 or len(images) < 2:
        raise ValueError(f"images must be a batch [N, C, H, W] of at least 2 images (got "
                         f"{list(images.shape)})")
    check_positive(n, "n", integer=True)
    rng = np.random.default_rng(seed)
    first = rng.integers(len(images), size=n)
    second = (first + rng.integers(1, len(images), size=n)) % len(images)  # never == first
    first, second = torch.from_numpy(first), torch.from_numpy(second)
    return 0.5 * (images[first] + images[second])
