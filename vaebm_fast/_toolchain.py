"""Where the build tools are. Standard library only: ``setup.py`` loads this file by path
(torch, and so the package, may not be importable while the extension is being built), and
``vaebm_fast.info`` imports it to report what a build would find.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

__all__ = ["find_nvcc"]

_DEFAULT_CUDA_HOME = "/usr/local/cuda"


def find_nvcc() -> Optional[str]:
    """Path of the nvcc a build would use, or None.

    The order of torch.utils.cpp_extension's CUDA_HOME search (which a CPU-only torch skips):
    ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``PATH``, then ``/usr/local/cuda/bin``.
    """
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    default = os.path.join(_DEFAULT_CUDA_HOME, "bin", "nvcc")
    return shutil.which("nvcc") or (default if os.path.isfile(default) else None)
