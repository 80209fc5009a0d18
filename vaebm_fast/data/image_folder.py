"""A folder of image files (PNG, JPEG, ...), searched recursively, as one tensor.

Needs Pillow (the ``images`` extra). Files are read in sorted path order, so the same folder
always gives the same tensor; hidden files and folders (names starting with ".") are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Union

import numpy as np
import torch

from ..validation import check_positive
from ._images import DataFileNotFoundError, decode_image, to_unit_images

__all__ = ["load_image_folder", "image_files", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(root: Union[str, Path],
                extensions: Iterable[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """The image files under ``root`` (any depth), extensions matched case-insensitively,
    sorted by path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFileNotFoundError(f"image folder {root} not found; pass an existing folder "
                                    f"of image files")
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(
        path for path in root.rglob("*")
        if path.suffix.lower() in suffixes and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts))


def load_image_folder(
    root: Union[str, Path],
    size: int,
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> torch.Tensor:
    """Load every image under ``root`` as RGB, resized and centre-cropped to ``size x size``.

    Each image's shorter side is scaled to ``size`` (bicubic) and the centre ``size x size``
    square kept, the ``Resize(size)``, ``CenterCrop(size)`` of the official pipelines;
    greyscale and RGBA files are converted to RGB (alpha dropped). The whole set is decoded into
    memory (N x 3 x size^2 x 4 bytes: 30000 CelebA-HQ images at 256 take 23.6 GB, so store such
    sets smaller or load a sub-folder at a time).

    Returns:
        images [N, 3, size, size] float32 in [0, 1] (levels / 255).

    Raises:
        DataFileNotFoundError: ``root`` is missing or holds no image file.
        ValueError: a file cannot be decoded (the message names it).
    """
    check_positive(size, "size", integer=True)
    extensions = tuple(extensions)
    paths = image_files(root, extensions)
    if not paths:
        raise DataFileNotFoundError(
            f"no image files ({', '.join(extensions)}) under {Path(root).expanduser()}; "
            f"put the images there (sub-folders are searched too)")
    levels = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        levels[i] = decode_image(path, size, str(path))
    return to_unit_images(levels)
