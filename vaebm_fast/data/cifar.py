"""CIFAR-10 from its python pickle batches, read without letting a pickle run code.

The "python version" of CIFAR-10 (``cifar-10-python.tar.gz``) extracts to ``cifar-10-batches-py/``
holding ``data_batch_1`` .. ``data_batch_5`` (training, 10000 images each) and ``test_batch``.
Each file is a pickled dict: ``data`` is a uint8 array [10000, 3072] (each row is the 1024 red,
then green, then blue values of a 32 x 32 image, row-major) and ``labels`` a list of 10000 ints.

A pickle may name any importable callable, and ``pickle.load`` calls it: a file in place of a
batch could run any code. ``_BatchUnpickler`` therefore resolves only the names the format uses
(NumPy's array reconstruction and dtype, no object dtypes) and refuses every other one.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch

from ..validation import check_choice
from ._images import require_file, to_unit_images

__all__ = ["load_cifar10", "CIFAR10_URL", "UnsafePickleError"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a callable that a CIFAR-10 batch never needs."""


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it, refusing object dtypes (which would unpickle
    arbitrary Python objects into the array)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("CIFAR-10 batch asks for an object array; refused")
    return dtype


@functools.lru_cache(maxsize=1)
def _allowed_callables() -> Dict[Tuple[str, str], Any]:
    """(module, name) -> object, for the names a pickled uint8 array refers to: NumPy 1 and 2
    spell the module differently, protocol-5 pickles use ``_frombuffer``, and Python 3 writes
    bytes at protocol 2 as ``_codecs.encode(text, "latin1")``."""
    reconstruct = np.zeros(0).__reduce__()[0]  # NumPy's _reconstruct, whatever its module
    allowed: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): _plain_dtype}
    allowed[("_codecs", "encode")] = _latin1_bytes
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "dtype")] = _plain_dtype
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, and only that."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("CIFAR-10 batch asks for a codec other than latin1; refused")
    return text.encode("latin1")


def _frombuffer(buffer: Any, dtype: np.dtype, shape: Tuple[int, ...], order: str) -> np.ndarray:
    """What NumPy's own ``_frombuffer`` does for protocol-5 pickles (no code, only bytes)."""
    return np.frombuffer(buffer, dtype=_plain_dtype(dtype)).reshape(shape, order=order)


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_callables()
        if (module, name) not in allowed:
            raise UnsafePickleError(
                f"a CIFAR-10 batch may only contain dicts, lists, strings, ints and uint8 NumPy "
                f"arrays, but this file asks for {module}.{name}; refused (replace the file "
                f"with one from {CIFAR10_URL})")
        return allowed[(module, name)]


def _read_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, 32, 32], labels int64 [n]) of one batch file."""
    with open(path, "rb") as file:
        # encoding="bytes": the official files were written by Python 2 (byte-string keys).
        batch = _BatchUnpickler(file, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a dict; got {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list)
            or len(labels) != data.shape[0]):
        raise ValueError(f"{path} is not a CIFAR-10 batch: it needs 'data' uint8 [n, 3072] and "
                         f"'labels' (a list of n ints); replace it with the file from "
                         f"{CIFAR10_URL}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(
    root: Union[str, Path],
    split: str = "train",
    *,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Load CIFAR-10 from its python batches (nothing is downloaded).

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (where the archive was extracted), or
            that folder itself.
        split: "train" (50000 images, batches 1..5 in order) or "test" (10000 images).
        return_labels: also return the classes 0..9.

    Returns:
        images [N, 3, 32, 32] float32 in [0, 1] (levels / 255; the models map them to 2x - 1
        themselves), or (images, labels [N] int64) with ``return_labels=True``.

    Raises:
        DataFileNotFoundError: a batch file is missing (the message says where to put it).
        UnsafePickleError: a file asks the unpickler for anything but plain data.
    """
    check_choice(split, "split", tuple(_FILES))
    root = Path(root).expanduser()
    folder = root if root.name == _FOLDER else root / _FOLDER
    hint = f"download {CIFAR10_URL} and extract it into {folder.parent}"
    parts = [_read_batch(require_file(folder / name, "CIFAR-10", hint))
             for name in _FILES[split]]
    images = to_unit_images(np.concatenate([p[0] for p in parts]))
    if return_labels:
        return images, torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images
