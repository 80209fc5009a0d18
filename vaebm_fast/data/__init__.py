"""Datasets: 2-D toy densities, scikit-learn's 8 x 8 digits, and an infinite batch iterator.

``make_dataset(name, **kw)`` builds a dataset by name:

- ``"25gaussians"``: a ``TwentyFiveGaussians`` sampler (keywords ``spacing``, ``std``);
- ``"swissroll"``: a ``SwissRoll`` sampler (keyword ``noise``);
- ``"digits"``: images ``[N, 1, 8, 8]`` in ``[0, 1]`` (keywords of ``load_digits_images``:
  ``split``, ``seed``, ``test_fraction``).

``batches(dataset, batch_size, generator)`` turns either kind into an endless stream of
batches for a trainer, whose position can be checkpointed (``state_dict``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

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
    "BatchStream",
    "ShuffledEpochs",
    "FreshSamples",
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
) -> "BatchStream":
    """An endless stream of batches, whose position can be saved and restored.

    Args:
        data_or_sampler: either a sampler (anything with ``sample(n, generator)``, such as the
            2-D toy sets), which draws a fresh batch each time; or a tensor ``[N, ...]``, which
            is reshuffled every epoch and cut into full batches (the last ``N % batch_size``
            items of each epoch's order are skipped, so every batch has the same shape, which
            compiled and graph-captured steps need).
        batch_size: items per batch; at most ``N`` for a tensor.
        generator: CPU generator for the draws and shuffles (None: torch's global generator).

    Returns:
        an iterator of [batch_size, ...] tensors (for a tensor dataset, on the dataset's
        device) with ``state_dict()`` / ``load_state_dict()``: the current epoch's order, the
        position in it and the private generator's state (the trainers checkpoint it, so a
        resumed run sees the batches an uninterrupted one would; torch's global generator is
        checkpointed with the other RNG states).
    """
    check_positive(batch_size, "batch_size", integer=True)
    if isinstance(data_or_sampler, torch.Tensor):
        num_items = data_or_sampler.shape[0] if data_or_sampler.dim() > 0 else 0
        if batch_size > num_items:
            raise ValueError(f"batch_size ({batch_size}) must not exceed the number of items "
                             f"in the dataset ({num_items}); lower batch_size")
        return ShuffledEpochs(data_or_sampler, batch_size, generator)
    if callable(getattr(data_or_sampler, "sample", None)):
        return FreshSamples(data_or_sampler, batch_size, generator)
    raise TypeError(
        "batches() needs a tensor [N, ...] or a sampler with .sample(n, generator) "
        f"(got {type(data_or_sampler).__name__}); build one with make_dataset(name)")


class BatchStream:
    """An endless iterator of batches whose state is plain data (see ``batches``)."""

    def __init__(self, batch_size: int, generator: Optional[torch.Generator]) -> None:
        self.batch_size, self.generator = batch_size, generator

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


class FreshSamples(BatchStream):
    """``sampler.sample(batch_size, generator)`` every time."""

    def __init__(self, sampler: Any, batch_size: int,
                 generator: Optional[torch.Generator]) -> None:
        super().__init__(batch_size, generator)
        self.sampler = sampler

    def __next__(self) -> torch.Tensor:
        return self.sampler.sample(self.batch_size, self.generator)


class ShuffledEpochs(BatchStream):
    """Full batches of a tensor in a fresh random order each epoch. The order of an epoch is
    drawn when its first batch is asked for; ``order`` [N] and ``position`` (batches of it
    given out) are the state."""

    def __init__(self, data: torch.Tensor, batch_size: int,
                 generator: Optional[torch.Generator]) -> None:
        super().__init__(batch_size, generator)
        self.data = data
        self.num_batches = data.shape[0] // batch_size  # full batches per epoch
        self.order: Optional[torch.Tensor] = None
        self.position = 0

    def __next__(self) -> torch.Tensor:
        if self.order is None or self.position == self.num_batches:
            self.order = torch.randperm(self.data.shape[0], generator=self.generator)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.data[self.order[start:start + self.batch_size].to(self.data.device)]

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "order": self.order, "position": self.position,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue where ``state`` was saved; an order saved for another number of items or
        another batch size (a run resumed with other settings) is dropped, and the next batch
        starts a new epoch."""
        super().load_state_dict(state)
        order = state.get("order")
        if (order is None or tuple(order.shape) != (self.data.shape[0],)
                or state.get("batch_size") != self.batch_size):
            self.order, self.position = None, 0
        else:
            self.order, self.position = order.cpu(), int(state["position"])
