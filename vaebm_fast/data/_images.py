"""What the image loaders share: the missing-file error, uint8 -> [0, 1] and image decoding.

Every loader returns images as float32 ``[N, C, H, W]`` in ``[0, 1]`` (uint8 levels / 255). The
official VAEBM code feeds its models the same range and maps ``x -> 2x - 1`` inside the model, so
images outside a model are always in ``[0, 1]``; nothing here rescales to ``[-1, 1]``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .._requirements import missing_extra
from ..validation import check_positive

__all__ = ["DataFileNotFoundError", "require_file", "to_unit_images", "decode_image",
           "resize_and_centre_crop"]


class DataFileNotFoundError(FileNotFoundError):
    """A data set file is not where the loader looks; the message says where to put it."""


def require_file(path: Path, what: str, how_to_get: str) -> Path:
    """Return ``path`` if it is a file, else raise ``DataFileNotFoundError`` naming it, the data
    set it belongs to (``what``) and ``how_to_get`` it (nothing is ever downloaded)."""
    if not path.is_file():
        raise DataFileNotFoundError(f"{what}: file {path} not found; {how_to_get}")
    return path


def to_unit_images(levels: np.ndarray) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> a fresh float32 tensor [N, C, H, W] in [0, 1]."""
    if levels.dtype != np.uint8 or levels.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W] (got {levels.dtype} with shape "
                         f"{list(levels.shape)})")
    return torch.from_numpy(levels.astype(np.float32)).div_(255.0)  # astype copies


def decode_image(source: Union[Path, bytes], size: Optional[int], name: str,
                 fix: str = "remove or replace it") -> np.ndarray:
    """Decode one PNG/JPEG/... (a file path or its bytes) into uint8 RGB [3, H, W].

    With ``size`` the image is resized so that its shorter side is ``size`` (bicubic, which
    antialiases when shrinking) and centre-cropped to ``size x size``, as the official CelebA and
    LSUN pipelines do (``Resize(size)`` then ``CenterCrop(size)``). An undecodable image raises
    ValueError naming it (``name``, a path or key) and saying how to ``fix`` it.
    """
    Image = _pillow()
    if size is not None:
        check_positive(size, "size", integer=True)
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            image = image.convert("RGB")  # greyscale, palette and RGBA images alike
            if size is not None:
                image = _fit(image, int(size), Image)
            pixels = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot decode image {name}: not an image file Pillow reads; "
                         f"{fix}") from None
    except (OSError, SyntaxError) as exc:  # truncated or corrupt
        raise ValueError(f"cannot decode image {name}: {exc}; {fix}") from None
    return pixels.transpose(2, 0, 1)


def resize_and_centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB [3, H, W] -> [3, size, size], resized and cropped as ``decode_image`` does."""
    Image = _pillow()
    check_positive(size, "size", integer=True)
    image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))  # [H, W, 3]: RGB
    return np.asarray(_fit(image, int(size), Image), dtype=np.uint8).transpose(2, 0, 1)


def _pillow():
    """PIL.Image, or the error naming the extra that installs Pillow."""
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise missing_extra("decoding and resizing images", "Pillow", extra="images") from None
    return Image


def _fit(image, size: int, pil):
    """Scale the shorter side of a PIL image to ``size``, keep the centre ``size x size``."""
    width, height = image.size
    scale = size / min(width, height)
    # round() keeps the shorter side exactly `size`; max(size, ...) guards the longer side.
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, pil.Resampling.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))
