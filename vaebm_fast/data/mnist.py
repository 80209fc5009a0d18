"""MNIST and Fashion-MNIST from their idx files, gzipped or not.

Both data sets ship as four idx files, named alike: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
optionally gzipped (``.gz``, as downloaded; torchvision keeps both under ``<root>/MNIST/raw``).
An idx file is a 4-byte magic number (two zero bytes, the type code 0x08 for unsigned bytes,
the number of dimensions), one big-endian uint32 size per dimension, then the values row-major.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from ..validation import check_choice
from ._images import DataFileNotFoundError, to_unit_images

__all__ = ["load_mnist", "load_fashion_mnist", "read_idx", "MNIST_URL", "FASHION_MNIST_URL"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_PREFIX = {"train": "train", "test": "t10k"}
_UBYTE = 0x08


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """The uint8 array stored in an idx file (gzip is recognised by its magic bytes).

    Raises:
        ValueError: not an idx file of unsigned bytes, or its length disagrees with its sizes.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (its header is "
                         f"{raw[:4].hex() or 'empty'}, expected 0000 08 <ndim>); replace it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(n) for n in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated or corrupt: its header promises shape "
                         f"{list(shape)} but it holds {max(len(raw) - header, 0)} values; "
                         f"download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, name: str, what: str, url: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataFileNotFoundError(f"{what}: neither {root / name} nor {root / name}.gz found; "
                                f"download {name}.gz from {url} into {root}")


def _load_idx_pair(root: Union[str, Path], split: str, return_labels: bool, what: str,
                   url: str) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    check_choice(split, "split", tuple(_PREFIX))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFileNotFoundError(f"{what}: folder {root} not found; create it and download "
                                    f"the four idx files from {url} into it")
    images_path = _find(root, f"{_PREFIX[split]}-images-idx3-ubyte", what, url)
    labels_path = _find(root, f"{_PREFIX[split]}-labels-idx1-ubyte", what, url)
    levels, labels = read_idx(images_path), read_idx(labels_path)
    if levels.ndim != 3 or labels.ndim != 1 or len(levels) != len(labels):
        raise ValueError(f"{what}: {images_path} ({list(levels.shape)}) and {labels_path} "
                         f"({list(labels.shape)}) are not images [N, H, W] with N labels")
    images = to_unit_images(levels[:, None])  # [N, 1, H, W]
    if return_labels:
        return images, torch.from_numpy(labels.astype(np.int64))
    return images


def load_mnist(
    root: Union[str, Path],
    split: str = "train",
    *,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Load MNIST from the idx files in ``root`` (nothing is downloaded).

    Args:
        root: the folder holding the four idx files, plain or ``.gz``.
        split: "train" (60000 images) or "test" (the 10000 ``t10k`` images).
        return_labels: also return the digits 0..9.

    Returns:
        images [N, 1, 28, 28] float32 in [0, 1] (levels / 255), or (images, labels [N] int64).

    Raises:
        DataFileNotFoundError: a file is missing (the message names it and where to get it).
        ValueError: a file is not a well-formed idx file.
    """
    return _load_idx_pair(root, split, return_labels, "MNIST", MNIST_URL)


def load_fashion_mnist(
    root: Union[str, Path],
    split: str = "train",
    *,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Load Fashion-MNIST from the idx files in ``root``; as ``load_mnist`` (the same file names
    and shapes; the labels are the 10 clothing classes)."""
    return _load_idx_pair(root, split, return_labels, "Fashion-MNIST", FASHION_MNIST_URL)
