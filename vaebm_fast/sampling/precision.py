"""The precision the networks run at inside a Langevin chain (``network_precision``).

===========  ==============================================================================
value        what runs differently (the chain state, its update and noise stay float32)
===========  ==============================================================================
"fp32"       nothing (the default): the networks run in the state's dtype, under the
             process's own TF32 settings (PyTorch's defaults: cuDNN convolutions may use TF32
             on CUDA, matmuls do not).
"bf16"       the decoder and energy forwards run under ``torch.autocast(device, bfloat16)``
             (CPU and CUDA): convolutions and matmuls in bfloat16, their backward in the
             dtypes of the forward. The gradient with respect to the float32 state comes
             back float32 (autograd returns a leaf's gradient in the leaf's dtype), and the
             energy and the official potential's correction are cast to float32 before they
             are recorded or differentiated.
"tf32"       CUDA only: float32 matmuls and cuDNN convolutions may use TF32 tensor cores
             (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``
             set True) while the chain's networks run, forward and backward. No effect on
             GPUs before Ampere, which have no TF32.
===========  ==============================================================================

Both lower precisions need a float32 chain (autocast and TF32 leave float64 alone: the option
would silently do nothing). "tf32" on a CPU chain is refused rather than ignored: the CPU has
no TF32, and a chain that silently ran at float32 would be measured as if it had.

TF32 switches are process-wide, and a library must not leave them changed: :func:`tf32_window`
sets them for the duration of the chain and restores the values it found when the last chain
inside a window leaves it (a count under a lock, so overlapping chains in several threads keep
TF32 until the last one ends), also when the chain raises. While a "tf32" chain runs, other
float32 CUDA work of the process may use TF32 too.
"""
from __future__ import annotations

import contextlib
import threading

import torch

__all__ = ["NETWORK_PRECISIONS", "check_network_precision", "check_chain_precision",
           "tf32_window", "network_autocast"]

NETWORK_PRECISIONS = ("fp32", "bf16", "tf32")


def check_network_precision(value) -> str:
    """``value`` if it is one of ``NETWORK_PRECISIONS``, else a ValueError saying what to pass."""
    if not isinstance(value, str) or value not in NETWORK_PRECISIONS:
        raise ValueError(f"network_precision must be one of "
                         f"{', '.join(map(repr, NETWORK_PRECISIONS))} (got {value!r})")
    return value


def check_chain_precision(precision: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a lower precision that would not apply to a chain of ``dtype`` on ``device``."""
    if precision == "fp32":
        return
    if dtype != torch.float32:
        raise ValueError(f"network_precision={precision!r} applies to float32 chains (got "
                         f"{dtype}): sample with dtype=torch.float32 or use 'fp32'")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"network_precision='tf32' needs a CUDA chain (TF32 is a tensor-core "
                         f"format; this chain is on {device.type}): use 'bf16' or 'fp32' there")
    if precision == "bf16" and not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"network_precision='bf16' needs torch.autocast on the chain's device, "
                         f"which {device.type} lacks: use 'fp32'")


_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] = (False, False)


@contextlib.contextmanager
def tf32_window(precision: str):
    """For ``precision == "tf32"``: TF32 switches on inside the block, the values found before
    restored when the last overlapping window closes (exception-safe). Otherwise nothing."""
    global _tf32_users, _tf32_saved
    if precision != "tf32":
        yield
        return
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cuda.matmul.allow_tf32,
                           torch.backends.cudnn.allow_tf32)
        _tf32_users += 1
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0:
                (torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.allow_tf32) = _tf32_saved


def network_autocast(precision: str, device: torch.device):
    """The context the networks' forwards run in: bfloat16 autocast on ``device`` for "bf16",
    else nothing. Weight casts are not cached across the block (``cache_enabled=False``): a
    CUDA graph captured inside must record them, so that weights refreshed in place between
    replays are cast again."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
