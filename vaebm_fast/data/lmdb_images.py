"""Image sets stored in LMDB as the official NVAE/VAEBM code writes CelebA and LSUN.

That code stores image ``i`` under the key ``str(i).encode()`` (``b"0"``, ``b"1"``, ...) in
``<root>/train.lmdb`` and ``<root>/validation.lmdb``; the value is the image file's encoded bytes
(PNG/JPEG: ``encoded=True``, CelebA 64 and LSUN) or, for sets written unencoded (CelebA-HQ
256), the raw uint8 RGB pixels of a square image, row-major ``[H, W, 3]`` (``encoded=False``).
Needs the ``lmdb`` package and, for encoded sets, Pillow (both in the ``images`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .._requirements import missing_extra
from ..validation import check_choice, check_positive
from ._images import (DataFileNotFoundError, decode_image, resize_and_centre_crop,
                      to_unit_images)

__all__ = ["load_lmdb_images"]

_FOLDERS = {"train": "train.lmdb", "validation": "validation.lmdb"}


def _raw_square_rgb(value: bytes, key: bytes) -> np.ndarray:
    """Unencoded value -> uint8 [3, H, H] (the side follows from the length, as upstream)."""
    side = math.isqrt(len(value) // 3)
    if 3 * side * side != len(value):
        raise ValueError(f"LMDB value of key {key!r} has {len(value)} bytes, not the 3 H^2 of a "
                         f"raw square RGB image; if the values are PNG/JPEG files pass "
                         f"encoded=True")
    return np.frombuffer(value, dtype=np.uint8).reshape(side, side, 3).transpose(2, 0, 1)


def load_lmdb_images(
    root: Union[str, Path],
    split: str = "train",
    size: Optional[int] = None,
    *,
    encoded: bool = True,
) -> torch.Tensor:
    """Load every image of ``<root>/<split>.lmdb`` in key order ``0, 1, ..., n - 1``.

    Args:
        root: the folder holding ``train.lmdb`` and/or ``validation.lmdb``, or one ``.lmdb``
            folder itself (``split`` is then ignored).
        split: "train" or "validation".
        size: resize the shorter side to ``size`` and centre-crop ``size x size`` (as the
            official ``Resize``, ``CenterCrop``); None keeps the stored size, which must then be
            the same for every image.
        encoded: values are encoded image files (True) or raw square RGB pixels (False).

    Returns:
        images [N, 3, H, W] float32 in [0, 1] (levels / 255).

    Raises:
        MissingExtraError: ``lmdb`` (or Pillow, for encoded images) is not installed.
        DataFileNotFoundError: no LMDB environment at the path.
        ValueError: a key 0..n-1 is missing, a value does not decode, or sizes differ.
    """
    try:
        import lmdb
    except ModuleNotFoundError:
        raise missing_extra("reading LMDB image sets", "lmdb", extra="images") from None
    check_choice(split, "split", tuple(_FOLDERS))
    if size is not None:
        check_positive(size, "size", integer=True)
    root = Path(root).expanduser()
    path = root if root.suffix == ".lmdb" else root / _FOLDERS[split]
    if not (path / "data.mdb").is_file():
        raise DataFileNotFoundError(
            f"LMDB image set: {path / 'data.mdb'} not found; create {path} with the official "
            f"NVAE/VAEBM scripts (create_celeba64_lmdb.py, create_lsun_lmdb.py)")

    # Read-only, without a lock file: the set may live on a read-only or shared file system.
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin(write=False) as txn:
            images = []
            for index in range(txn.stat()["entries"]):
                key = str(index).encode()
                value = txn.get(key)
                if value is None:
                    raise ValueError(f"LMDB image set {path} has no key {key!r}; the keys must "
                                     f"be b'0' .. b'n-1' as the official scripts write them")
                if encoded:
                    pixels = decode_image(bytes(value), size, f"{path}[{key!r}]",
                                          "if the values are raw RGB pixels pass encoded=False")
                else:
                    pixels = _raw_square_rgb(bytes(value), key)
                if not encoded and size is not None:
                    pixels = resize_and_centre_crop(pixels, size)
                if images and pixels.shape != images[0].shape:
                    raise ValueError(f"LMDB image set {path}: image {index} is "
                                     f"{list(pixels.shape)} but image 0 is "
                                     f"{list(images[0].shape)}; pass size= to resize them all")
                images.append(pixels)
    finally:
        env.close()
    if not images:
        raise ValueError(f"LMDB image set {path} is empty")
    return to_unit_images(np.stack(images))

