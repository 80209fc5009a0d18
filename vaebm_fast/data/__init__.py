"""Datasets: 2-D toy densities, scikit-learn's 8 x 8 digits, and an infinite batch iterator.

``make_dataset(name, **kw)`` builds a dataset by name:

- ``"25gaussians"``: a ``TwentyFiveGaussians`` sampler (keywords ``spacing``, ``std``);
- ``"swissroll"``: a ``SwissRoll`` sampler (keyword ``noise``);
- ``"digits"``: images ``[N, 1, 8, 8]`` in ``[0, 1]`` (keywords of ``load_digits_images``:
  ``split``, ``seed``, ``test_fraction``).

``batches(dataset, batch_size, generator)`` turns either kind into an endless stream of
batches for a trainer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Union

import torch

from ..validation import check_positive
from .digits import NUM_DIGITS_IMAGES, load_digits_images, split_indices
from .toy import SwissRoll, TwentyFiveGaussians

__all__ = [
    "TwentyFiveGaussians",
    "SwissRoll",
    "load_digits_images",
    "split_indices",
    "NUM_DIGITS_IMAGES",
    "DATASETS",
    "make_dataset",
    "batches",
]

Dataset = Union[torch.Tensor, TwentyFiveGaussians, SwissRoll]

DATASETS: Dict[str, Callable[..., Any]] = {
    "25gaussians": TwentyFiveGaussians,
    "swissroll": SwissRoll,
    "digits": load_digits_images,
}


def make_dataset(name: str, **kwargs: Any) -> Dataset:
    """Build the dataset called ``name`` (see the module docstring), passing ``kwargs`` through.

    Case, "-", "_" and spaces in ``name`` are ignored ("Swiss_Roll" is "swissroll").

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    key = str(name).lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in DATASETS:
        valid = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown dataset {name!r}; valid names are {valid}")
    return DATASETS[key](**kwargs)


def batches(
    data_or_sampler: Dataset,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
) -> Iterator[torch.Tensor]:
    """Yield batches forever.

    Args:
        data_or_sampler: either a sampler (anything with ``sample(n, generator)``, such as the
            2-D toy sets), which draws a fresh batch each time; or a tensor ``[N, ...]``, which
            is reshuffled every epoch and cut into full batches (the last ``N % batch_size``
            items of each epoch's order are skipped, so every batch has the same shape, which
            compiled and graph-captured steps need).
        batch_size: items per batch; at most ``N`` for a tensor.
        generator: CPU generator for the draws and shuffles (None: torch's global generator).

    Yields:
        [batch_size, ...] tensors; for a tensor dataset, on the dataset's device.
    """
    # A plain function returning generators, so that bad arguments fail here, at the call.
    check_positive(batch_size, "batch_size", integer=True)
    if isinstance(data_or_sampler, torch.Tensor):
        num_items = data_or_sampler.shape[0] if data_or_sampler.dim() > 0 else 0
        if batch_size > num_items:
            raise ValueError(f"batch_size ({batch_size}) must not exceed the number of items "
                             f"in the dataset ({num_items}); lower batch_size")
        return _shuffled_epochs(data_or_sampler, batch_size, generator)
    if callable(getattr(data_or_sampler, "sample", None)):
        return _fresh_samples(data_or_sampler, batch_size, generator)
    raise TypeError(
        "batches() needs a tensor [N, ...] or a sampler with .sample(n, generator) "
        f"(got {type(data_or_sampler).__name__}); build one with make_dataset(name)")


def _fresh_samples(
    sampler: Any, batch_size: int, generator: Optional[torch.Generator]
) -> Iterator[torch.Tensor]:
    while True:
        yield sampler.sample(batch_size, generator)


def _shuffled_epochs(
    data: torch.Tensor, batch_size: int, generator: Optional[torch.Generator]
) -> Iterator[torch.Tensor]:
    num_items = data.shape[0]
    num_full_batches = num_items // batch_size
    while True:
        order = torch.randperm(num_items, generator=generator).to(data.device)
        for start in range(0, num_full_batches * batch_size, batch_size):
            yield data[order[start:start + batch_size]]
