"""Small input checks with messages that say what was wrong and how to fix it.

Every check returns its (unchanged) input, so it can be used inline::

    x = check_tensor(x, "x", shape=("B", 2), hint="pass 2-D points")
    mode = check_choice(mode, "mode", ("paper", "official"))
    step_size = check_positive(step_size, "step_size")

Wrong *types* raise ``TypeError``; right types with wrong *values* (shape, dtype, device,
range, non-finite entries) raise ``ValueError``. Messages read like
``x must have shape [B, 2] (got [4, 3]); pass 2-D points``.

The ops validate tensors with ``torch._check_value`` / ``torch._check_type`` instead (the same
function is their fake kernel, so it must run on fake tensors and under ``torch.compile``);
:func:`explain` builds those messages.

None of these checks synchronises with a GPU except ``check_tensor(..., finite=True)``, which
has to look at the values; keep it out of hot loops.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

__all__ = ["check_tensor", "check_choice", "check_positive", "check_int", "check_real",
           "explain"]

# One entry of an expected shape: an exact size, None (any size, shown as "*"), or a name such
# as "B" (any size, shown by its name).
ShapeEntry = Union[int, str, None]


def _with_hint(message: str, hint: Optional[str]) -> str:
    return f"{message}; {hint}" if hint else message


def _format_shape(shape: Iterable[Any]) -> str:
    return "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"


def _shape_matches(actual: Sequence[int], expected: Sequence[ShapeEntry]) -> bool:
    if len(actual) != len(expected):
        return False
    return all(not isinstance(want, int) or got == want for got, want in zip(actual, expected))


def _device_matches(actual: torch.device, expected: torch.device) -> bool:
    # "cuda" (no index) accepts any CUDA device; "cuda:1" only that one.
    if actual.type != expected.type:
        return False
    return expected.index is None or actual.index == expected.index


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[ShapeEntry]] = None,
    dtype: Optional[Union[torch.dtype, Sequence[torch.dtype]]] = None,
    floating: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    finite: bool = False,
    hint: Optional[str] = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor with the given properties; return it unchanged.

    Args:
        x: the value to check.
        name: how the caller's user knows the argument, e.g. ``"x"`` or ``"eps_z[0]"``.
        ndim: required number of dimensions.
        shape: required shape; entries are ints (exact), ``None`` (any size) or strings
            (any size, named in the message), e.g. ``("B", 2)`` or ``(None, 1, 8, 8)``.
        dtype: a required dtype or a sequence of allowed dtypes. When given, ``floating``
            is not checked.
        floating: require a floating-point dtype (the default; pass ``floating=False`` for
            integer or boolean tensors such as labels and indices).
        device: required device; ``"cuda"`` accepts any CUDA device, ``"cuda:1"`` only that.
        finite: require every entry to be finite (no NaN/inf). Reads the values, so on a GPU
            it synchronises with the host.
        hint: how to fix it, appended to the message after "; ".

    Raises:
        TypeError: ``x`` is not a ``torch.Tensor``.
        ValueError: any other requirement is not met.
    """
    if not isinstance(x, torch.Tensor):
        got = type(x).__name__
        advice = "convert it with torch.as_tensor(...)" if hasattr(x, "__array__") else None
        raise TypeError(_with_hint(f"{name} must be a torch.Tensor (got {got})", hint or advice))

    if ndim is not None and x.dim() != ndim:
        raise ValueError(_with_hint(
            f"{name} must have {ndim} dimensions (got {x.dim()}, shape {_format_shape(x.shape)})",
            hint))

    if shape is not None and not _shape_matches(tuple(x.shape), tuple(shape)):
        raise ValueError(_with_hint(
            f"{name} must have shape {_format_shape(shape)} (got {_format_shape(x.shape)})",
            hint))

    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if x.dtype not in allowed:
            wanted = " or ".join(str(d) for d in allowed)
            raise ValueError(_with_hint(
                f"{name} must have dtype {wanted} (got {x.dtype}); convert it with "
                f".to({allowed[0]})", hint))
    elif floating and not x.is_floating_point():
        raise ValueError(_with_hint(
            f"{name} must be a floating-point tensor (got {x.dtype}); convert it with .float()",
            hint))

    if device is not None:
        expected_device = torch.device(device)
        if not _device_matches(x.device, expected_device):
            raise ValueError(_with_hint(
                f"{name} must be on device {expected_device} (got {x.device}); move it with "
                f".to('{expected_device}')", hint))

    if finite and x.numel() > 0 and not bool(torch.isfinite(x).all()):
        num_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(_with_hint(
            f"{name} must be finite (got {num_bad} NaN/inf entries of {x.numel()})", hint))

    return x


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``; return it unchanged.

    Raises:
        ValueError: it is not, with the valid choices listed (and a close match suggested for
            a misspelt string).
    """
    choices = tuple(choices)
    if value in choices:
        return value
    listed = ", ".join(repr(c) for c in choices)
    message = f"{name} must be one of {listed} (got {value!r})"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    raise ValueError(message)


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """Check that ``value`` is a real number > 0 (not a bool, not NaN); return it unchanged.

    With ``integer=True`` it must also be an integer (``int`` or a NumPy integer), as for
    sizes and counts such as ``batch_size``.

    Raises:
        TypeError: it is not a real number (or, with ``integer=True``, not an integer).
        ValueError: it is <= 0 or NaN.
    """
    wanted_type, kind = (numbers.Integral, "integer") if integer else (numbers.Real, "number")
    if isinstance(value, bool) or not isinstance(value, wanted_type):
        raise TypeError(f"{name} must be a positive {kind} (got {type(value).__name__} "
                        f"{value!r})")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 (got {value!r})")
    return value


def _unwrap_scalar_tensor(value: Any, name: str) -> Any:
    """A 0-d tensor's value as a Python number (reading it: a host sync on a GPU); any other
    value unchanged. Tensors of other shapes and bool tensors raise TypeError."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be a number or a 0-d real tensor (got a {value.dtype} "
                        f"tensor of shape {_format_shape(value.shape)})")
    return value.item()


def check_int(value: Any, name: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    """``value`` as a Python int in ``[low, high]``; returns it.

    Accepts Python and NumPy integers and 0-d integer tensors (read on the host); refuses
    bools, floats and everything else.

    Raises:
        TypeError: not an integer. ValueError: out of range.
    """
    value = _unwrap_scalar_tensor(value, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int (got {type(value).__name__} {value!r})")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}] (got {value})")
    return value


def check_real(value: Any, name: str, *, finite: bool = False) -> float:
    """``value`` as a Python float (NaN and infinities refused with ``finite=True``); returns
    it.

    Accepts Python and NumPy reals and 0-d real tensors (read on the host); refuses bools.

    Raises:
        TypeError: not a real number. ValueError: not finite when required.
    """
    value = _unwrap_scalar_tensor(value, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (got {type(value).__name__} {value!r})")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value})")
    return value


def explain(*parts: Any) -> Callable[[], str]:
    """The message argument of ``torch._check*``: ``parts`` joined as text, formatted now.

    ``torch.compile`` traces the checks an op's wrapper runs and accepts a message function
    only if it closes over constants: formatting the parts here (shapes, dtypes, names) leaves
    it a string.
    """
    text = "".join(str(p) for p in parts)
    return lambda: text
