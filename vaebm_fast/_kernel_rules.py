"""What every kernel backend (native C++/CUDA, Triton) shares with the eager references.

The Python statement of these rules; ``csrc/common.h`` is the C++ one. Both the ops
(``vaebm_fast.ops``) and the Triton kernels (``vaebm_fast.triton_kernels``) import them from
here, the bottom of the package, so neither imports the other for them.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["KERNEL_DTYPES", "KERNEL_DTYPE_NAMES", "compute_dtype", "dtype_reason",
           "activation_format", "elements_share_memory", "LIPSWISH_SCALE"]

# The floating dtypes the kernels take. float16 / bfloat16 / float32 are computed in float32
# and rounded once when stored; float64 in float64.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPE_NAMES = "float16, bfloat16, float32 or float64"  # for messages

# LipSwish divides Swish by 1.1, an upper bound of Swish's slope, so it is 1-Lipschitz
# (csrc/common/constants.h is the C++ twin).
LIPSWISH_SCALE = 1.0 / 1.1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype of the kernels for tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dtype_reason(dtype: torch.dtype, allowed=KERNEL_DTYPES) -> Optional[str]:
    """Why the kernels cannot take ``dtype`` (phrased to follow "the <backend> kernel"), or
    None when they can."""
    if dtype in allowed:
        return None
    names = [str(d).replace("torch.", "") for d in allowed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"takes {listed} tensors (got {dtype})"


def activation_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of an elementwise kernel's output for input ``x``: ``torch.channels_last``
    for a 4-D x stored channels-last (a prepared model's activations on the CPU),
    ``torch.contiguous_format`` otherwise. Outputs keep their input's layout so the next
    convolution does not convert back."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def elements_share_memory(x: torch.Tensor) -> bool:
    """True when elements of ``x`` are one memory location in the certain way (the certain
    case of ATen's has_internal_overlap): a dimension of size > 1 with stride 0 (from
    ``expand``) in a non-empty tensor. An empty tensor has no elements to share, whatever its
    strides. Kernels that write ``x`` in parallel refuse it."""
    return x.numel() > 0 and any(st == 0 and sz > 1 for sz, st in zip(x.shape, x.stride()))
