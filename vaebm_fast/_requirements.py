"""Which torch vaebm_fast runs with, and the message when it is missing or too old.

Standard library only: ``setup.py`` loads this file by path (the package cannot be imported
without torch) and ``vaebm_fast/__init__.py`` runs :func:`require_torch` first.

The floor is the lowest release with every torch API the package calls:
``torch.library.register_fake``, ``register_autograd`` and ``custom_op`` (the op schemas, fake
kernels and autograd, vaebm_fast/ops/_library.py and the Triton ops) and
``Generator.graphsafe_set_state`` (CUDA-graph chains) arrived in torch 2.4; the others
(``torch._check_value``, ``torch.compiler.assume_constant_result`` and ``is_compiling``,
``torch.autograd.graph.increment_version``) are older.
"""
from __future__ import annotations

import importlib
import re
from typing import Optional, Tuple

__all__ = ["TORCH_FLOOR", "TORCH_CPU_RELEASE", "INSTALL_TORCH", "torch_problem",
           "require_torch", "MissingExtraError", "missing_extra"]

TORCH_FLOOR = (2, 4)
TORCH_CPU_RELEASE = "2.13.0"  # the release the code was last tested with (CPU build)
# On PyPI's Linux index a bare `torch` is the multi-GB CUDA build; the CPU build is on PyTorch's
# CPU index (or on a mirror that serves it as torch==2.13.0).
INSTALL_TORCH = (f"install PyTorch first: the CPU build `pip install torch=={TORCH_CPU_RELEASE}` "
                 "(from PyPI add --index-url https://download.pytorch.org/whl/cpu), or the CUDA "
                 "build for your driver from https://pytorch.org/get-started/locally/")


def _release(version: str) -> Optional[Tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_problem(version: Optional[str]) -> Optional[str]:
    """Why torch ``version`` (None: not installed) cannot run vaebm_fast, or None."""
    floor = ".".join(map(str, TORCH_FLOOR))
    if version is None:
        return f"vaebm_fast needs PyTorch >= {floor}, which is not installed; {INSTALL_TORCH}"
    release = _release(version)
    if release is not None and release < TORCH_FLOOR:
        return (f"vaebm_fast needs PyTorch >= {floor} (torch.library.register_fake and "
                f"register_autograd), but torch {version} is installed; upgrade it: "
                f"{INSTALL_TORCH}")
    return None


def require_torch() -> None:
    """Raise ImportError with the fix when torch is missing or older than the floor."""
    try:
        torch = importlib.import_module("torch")
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ImportError(torch_problem(None)) from None
    problem = torch_problem(torch.__version__)
    if problem is not None:
        raise ImportError(problem)


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is missing; the message names the extra that installs it."""


def missing_extra(purpose: str, package: str, extra: str = "cli") -> MissingExtraError:
    """The error to raise (``from None``) when the optional dependency ``package`` (its pip
    name) is missing: e.g. ``missing_extra("drawing figures", "matplotlib")``."""
    return MissingExtraError(f"{purpose} needs {package}, which is not installed: "
                             f"pip install 'vaebm_fast[{extra}]' (or pip install {package})",
                             name=package)
