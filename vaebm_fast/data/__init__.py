"""Datasets: 2-D toy densities, scikit-learn's 8 x 8 digits, image data sets read from local
files (CIFAR-10, MNIST, Fashion-MNIST, StackedMNIST, image folders, LMDB image sets) and an
infinite batch iterator.

Every image loader returns float32 ``[N, C, H, W]`` in ``[0, 1]``; the models map images to
``2x - 1`` inside, as the official VAEBM code does, so no loader rescales. Nothing is downloaded:
a missing file raises ``DataFileNotFoundError`` saying which file to put where and where to get
it. Each loaded tensor feeds ``batches`` directly.

``make_dataset(name, **kw)`` builds a dataset by name:

- ``"25gaussians"``: a ``TwentyFiveGaussians`` sampler (keywords ``spacing``, ``std``);
- ``"swissroll"``: a ``SwissRoll`` sampler (keyword ``noise``);
- ``"digits"``: images ``[N, 1, 8, 8]`` in ``[0, 1]`` (keywords of ``load_digits_images``:
  ``split``, ``seed``, ``test_fraction``);
- ``"cifar10"``, ``"mnist"``, ``"fashionmnist"``, ``"stackedmnist"``: the loaders of the same
  names (keyword ``root``, the folder of the files, and ``split``; StackedMNIST also ``seed``);
- ``"imagefolder"``: ``load_image_folder`` (keywords ``root``, ``size``);
- ``"lmdb"``: ``load_lmdb_images`` (keywords ``root``, ``split``, ``size``, ``encoded``).

``batches(dataset, batch_size, generator)`` turns either kind into an endless stream of
batches for a trainer, whose position can be checkpointed (``state_dict``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch

from ..distributed import World
from ..validation import check_positive
from ._images import DataFileNotFoundError
from .cifar import UnsafePickleError, load_cifar10
from .digits import NUM_DIGITS_IMAGES, interpolated_digits, load_digits_images, split_indices
from .image_folder import load_image_folder
from .lmdb_images import load_lmdb_images
from .mnist import load_fashion_mnist, load_mnist, read_idx
from .stacked_mnist import NUM_STACKED_MNIST_MODES, load_stacked_mnist
from .toy import SwissRoll, TwentyFiveGaussians

__all__ = [
    "TwentyFiveGaussians",
    "SwissRoll",
    "load_digits_images",
    "split_indices",
    "interpolated_digits",
    "NUM_DIGITS_IMAGES",
    "load_cifar10",
    "load_mnist",
    "load_fashion_mnist",
    "read_idx",
    "load_stacked_mnist",
    "NUM_STACKED_MNIST_MODES",
    "load_image_folder",
    "load_lmdb_images",
    "DataFileNotFoundError",
    "UnsafePickleError",
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
    "cifar10": load_cifar10,
    "mnist": load_mnist,
    "fashionmnist": load_fashion_mnist,
    "stackedmnist": load_stacked_mnist,
    "imagefolder": load_image_folder,
    "lmdb": load_lmdb_images,
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
    world: Optional[World] = None,
) -> "BatchStream":
    """An endless stream of batches, whose position can be saved and restored.

    With several processes (``world.world_size > 1``) ``batch_size`` is the global batch: every
    process draws the same global order (so ``generator`` must be given, seeded the same on
    every process) and takes its slice of each global batch, rows ``[rank * b, (rank + 1) * b)``
    with ``b = batch_size / world_size``; the union of the slices is the batch one process would
    get. The state is global (position in the global order), so a run resumes the same order
    at any number of processes.

    Args:
        data_or_sampler: either a sampler (anything with ``sample(n, generator)``, such as the
            2-D toy sets), which draws a fresh batch each time; or a tensor ``[N, ...]``, which
            is reshuffled every epoch and cut into full batches (the last ``N % batch_size``
            items of each epoch's order are skipped, so every batch has the same shape, which
            compiled and graph-captured steps need).
        batch_size: items per batch; at most ``N`` for a tensor.
        generator: CPU generator for the draws and shuffles (None: torch's global generator,
            one process only).
        world: the processes sharing the batches (None: ``World.current()``, the initialised
            process group's, else one process; ``World()`` for an unsharded stream).

    Returns:
        an iterator of [batch_size, ...] tensors (for a tensor dataset, on the dataset's
        device) with ``state_dict()`` / ``load_state_dict()``: the current epoch's order, the
        position in it and the private generator's state (the trainers checkpoint it, so a
        resumed run sees the batches an uninterrupted one would; torch's global generator is
        checkpointed with the other RNG states).
    """
    check_positive(batch_size, "batch_size", integer=True)
    world = World.current() if world is None else world
    if batch_size % world.world_size:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of "
                         f"processes ({world.world_size}): it is the global batch, split "
                         f"evenly; pick a multiple of {world.world_size}")
    if world.is_distributed and generator is None:
        raise ValueError("with several processes batches() needs a generator seeded the same "
                         "on every process (generator=torch.Generator().manual_seed(seed)), "
                         "so that all draw the same global order")
    if isinstance(data_or_sampler, torch.Tensor):
        num_items = data_or_sampler.shape[0] if data_or_sampler.dim() > 0 else 0
        if batch_size > num_items:
            raise ValueError(f"batch_size ({batch_size}) must not exceed the number of items "
                             f"in the dataset ({num_items}); lower batch_size")
        return ShuffledEpochs(data_or_sampler, batch_size, generator, world)
    if callable(getattr(data_or_sampler, "sample", None)):
        return FreshSamples(data_or_sampler, batch_size, generator, world)
    raise TypeError(
        "batches() needs a tensor [N, ...] or a sampler with .sample(n, generator) "
        f"(got {type(data_or_sampler).__name__}); build one with make_dataset(name)")


class BatchStream:
    """An endless iterator of batches whose state is plain data (see ``batches``).

    ``batch_size`` is the global batch; ``__next__`` gives this process's slice of it
    (``local_batch_size`` rows), ``next_global`` the whole global batch."""

    def __init__(self, batch_size: int, generator: Optional[torch.Generator],
                 world: Optional[World] = None) -> None:
        self.batch_size, self.generator = batch_size, generator
        self.world = World() if world is None else world
        self.local_batch_size = batch_size // self.world.world_size

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> torch.Tensor:
        batch = self.next_global()
        if not self.world.is_distributed:
            return batch
        start = self.world.rank * self.local_batch_size
        return batch[start:start + self.local_batch_size]

    def next_global(self) -> torch.Tensor:
        """The next global batch [batch_size, ...], the same on every process."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """A state with a generator's state continues that generator; a stream made without
        one (torch's global generator) gets a private CPU generator for it, so a stream saved
        by several processes goes on with the same global order in one."""
        if state.get("generator") is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])


class FreshSamples(BatchStream):
    """``sampler.sample(batch_size, generator)`` every time."""

    def __init__(self, sampler: Any, batch_size: int,
                 generator: Optional[torch.Generator], world: Optional[World] = None) -> None:
        super().__init__(batch_size, generator, world)
        self.sampler = sampler

    def next_global(self) -> torch.Tensor:
        return self.sampler.sample(self.batch_size, self.generator)


class ShuffledEpochs(BatchStream):
    """Full batches of a tensor in a fresh random order each epoch. The order of an epoch is
    drawn when its first batch is asked for; ``order`` [N] and ``position`` (batches of it
    given out) are the state."""

    def __init__(self, data: torch.Tensor, batch_size: int,
                 generator: Optional[torch.Generator], world: Optional[World] = None) -> None:
        super().__init__(batch_size, generator, world)
        self.data = data
        self.num_batches = data.shape[0] // batch_size  # full batches per epoch
        self.order: Optional[torch.Tensor] = None
        self.position = 0

    def next_global(self) -> torch.Tensor:
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
