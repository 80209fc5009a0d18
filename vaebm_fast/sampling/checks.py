"""The samplers' input contract, checked in one place: their number arguments, what the energy
must return at every step, and the chain state it must depend on.

Numbers: wherever a sampler expects a Python number it also takes what a user has at hand, a
NumPy scalar or a 0-d tensor (``np.float32(1e-2)``, ``torch.tensor(16)``); a bool is refused
(``True`` is not one chain), and so is a float where an int is expected (2.7 chains) or a
string. The error names the argument and the type it got.

The energy's output is checked at every step from host metadata only (type, dtype, shape,
``requires_grad``): no device synchronisation.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["ArgumentTypeError", "as_real", "as_int", "check_energy_output",
           "check_state_gradients", "mode_dependent_layers"]


class ArgumentTypeError(TypeError, ValueError):
    """A sampler argument of the wrong type. A TypeError, and a ValueError too, which these
    arguments raised for every bad value before their types were told apart."""


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"


def _scalar(value):
    """A 0-d tensor as its Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and \
            not value.dtype.is_complex and value.dtype != torch.bool:
        return value.item()
    return value


def as_real(value, name: str, what: str = "a real number") -> float:
    """``value`` (a real number, NumPy scalar or 0-d tensor; not a bool) as a Python float.

    Raises ArgumentTypeError naming ``name`` and ``what`` it must be."""
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {what} (got {_describe(value)})")
    return float(number)


def as_int(value, name: str, what: str = "an int") -> int:
    """``value`` (an integer, NumPy integer or 0-d integer tensor; not a bool, not a float)
    as a Python int.

    Raises ArgumentTypeError naming ``name`` and ``what`` it must be."""
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {what} (got {_describe(value)})")
    return int(number)


# One message for an energy whose output has no autograd path to x, whether it ignored x or
# detached it (an energy with trainable parameters ignoring x still has a graph: the missing
# gradient then shows in check_state_gradients).
_NO_GRADIENT = ("the energy's output does not depend on its input through autograd{at} (does it "
                "ignore x, or detach it: .detach(), torch.no_grad(), a NumPy round trip?); "
                "Langevin needs dE/dx")


def check_energy_output(energy_value, batch: int, step: Optional[int], *,
                        needs_grad: bool = True) -> None:
    """Raise a one-line error unless the energy returned a real floating tensor of shape
    [batch] that (when ``needs_grad``) is attached to autograd. Host metadata only. ``step``:
    the chain step, for the message (None outside a chain)."""
    at = "" if step is None else f" at step {step}"
    if not isinstance(energy_value, torch.Tensor):
        raise TypeError(f"energy must return a tensor of shape [B] = [{batch}] (got "
                        f"{type(energy_value).__name__}{at}); compute it with torch "
                        "ops on the input, without .item() or float()")
    if not energy_value.is_floating_point():
        raise TypeError(f"energy must return a real floating-point tensor (got "
                        f"{energy_value.dtype}{at}); Langevin needs its gradient")
    if energy_value.dim() != 1 or energy_value.shape[0] != batch:
        changed = "; its shape must not change during a chain" if step else ""
        raise ValueError(f"energy must return shape [B] = [{batch}] (got "
                         f"{list(energy_value.shape)}{at}){changed}")
    if needs_grad and not energy_value.requires_grad:
        raise ValueError(_NO_GRADIENT.format(at=at))


def check_state_gradients(grads: Sequence[Optional[torch.Tensor]], space: str,
                          step: int) -> None:
    """Raise a one-line error for a chain state that no gradient reached (``autograd.grad``
    with ``allow_unused=True`` gave None): the energy, or the generator for one state group,
    ignores its input. ``grads`` follow the state order (eps_z groups, then eps_x in "eps")."""
    missing = [i for i, g in enumerate(grads) if g is None]
    if not missing:
        return
    if len(missing) == len(grads):
        raise ValueError(_NO_GRADIENT.format(at=f" at step {step}"))
    last = len(grads) - 1
    if space == "eps" and missing == [last]:
        raise ValueError("the generator's decode_eps ignores eps_x in space='eps', so the chain "
                         "cannot move it: use space='latent' for a deterministic decoder")
    groups = ", ".join(f"eps_z[{i}]" if i < last or space != "eps" else "eps_x"
                       for i in missing)
    raise ValueError(f"no gradient reaches {groups} at step {step}: the generator's "
                     "decode_eps ignores that input (every state group must feed the decoder)")


# Layers whose forward differs between training and eval mode: BatchNorm and InstanceNorm that
# track running statistics (batch statistics and running-statistics updates in training
# mode; without running statistics they normalise by the batch in both modes), Dropout.
_MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)


def mode_dependent_layers(module) -> list[str]:
    """Names of ``module``'s BatchNorm / InstanceNorm / Dropout layers in training mode (empty
    for anything that is not an nn.Module). Layers of other types that read ``self.training``
    are not seen."""
    if not isinstance(module, nn.Module):
        return []
    return [name or type(m).__name__ for name, m in module.named_modules()
            if m.training and isinstance(m, _MODE_DEPENDENT)
            and getattr(m, "track_running_stats", True)]
