"""Lazy loading of the compiled extension ``vaebm_fast._C``.

The shared library holds the C++/CUDA kernels behind ``torch.ops.vaebm_fast.*`` (the op
schemas are declared in Python, ``vaebm_fast.ops._library``). It has no Python module init;
it is looked up next to the package under the names an extension module may have
(``_C.cpython-311-x86_64-linux-gnu.so``, ``_C.abi3.so``, ``_C.so``) and loaded with
``torch.ops.load_library``, whose static initialisers register the kernels.

Loading happens on the first call of :func:`status` (the ops call it when they dispatch), never
at import, and queries no device. Where the package has no compiled ``_C`` (a plain ``pip
install .``, whose isolated build could not see torch, or a source checkout), the library
compiled for this torch by ``vaebm_fast._compile`` is loaded from its cache, after compiling it
there if needed (minutes, once per torch version). When no library can be had, one fails to
load, or it was built for another torch, a single ``RuntimeWarning`` names the cause and the
fix, and every op falls back to its next backend (Triton on CUDA, else the eager reference).

Environment:

* ``VAEBM_FAST_DISABLE_NATIVE=1``: do not load the library (no warning); everything is eager.
* ``VAEBM_FAST_LIBRARY=/path/to/_C.so``: load this file instead of the installed
  ``vaebm_fast._C`` (e.g. a CMake build, see CMakeLists.txt).
* ``VAEBM_FAST_JIT=0``: never compile on first use (a library already in the cache is still
  used; ``vaebm-fast build`` compiles one ahead of time).
"""
from __future__ import annotations

import importlib.machinery
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from . import _compile

__all__ = ["NativeStatus", "status", "is_loaded", "FIX"]

FIX = ("reinstall with `pip install --no-build-isolation .` (or `pip install "
       "--no-build-isolation -e .` in a checkout) so the extension is compiled against the "
       "installed torch")


@dataclass(frozen=True)
class NativeStatus:
    """Outcome of loading the extension.

    Attributes:
        loaded: True when the ops of the library can be used.
        reason: why not, when ``loaded`` is False (None otherwise).
        path: the library file that was found (None if none was).
        build_info: what the library reports about its build, e.g.
            ``{"torch": "2.13.0+cpu", "cuda": "0", "cxx": "gcc 12.2.0"}`` (empty if unknown).
    """

    loaded: bool
    reason: Optional[str] = None
    path: Optional[str] = None
    build_info: Dict[str, str] = field(default_factory=dict)

    @property
    def has_cuda_kernels(self) -> bool:
        return self.loaded and self.build_info.get("cuda") == "1"


_lock = threading.Lock()
_status: Optional[NativeStatus] = None
# The file of the library this process holds (realpath), once one is loaded: a process holds
# at most one. A second, different copy (VAEBM_FAST_LIBRARY changed after the first op, a
# rebuilt file at another path) would define `_build_info` again in its static initialiser,
# which throws there and aborts the whole process inside dlopen; it is refused instead.
_held: Optional[str] = None
_UNKNOWN_COPY = "loaded by other code than vaebm_fast._native"


def _ops_registered() -> bool:
    """Whether some copy of the library is loaded in this process (its `_build_info` op is
    registered; the op schemas declared in Python do not include it)."""
    try:
        torch.ops.vaebm_fast._build_info
    except (AttributeError, RuntimeError):
        return False
    return True


def _hold(path: str) -> None:
    global _held
    _held = os.path.realpath(path)


def _find_library() -> Optional[str]:
    """Path of the extension library, or None when it is not installed."""
    override = os.environ.get("VAEBM_FAST_LIBRARY")
    if override:
        return override
    # The file a `import vaebm_fast._C` would find, looked up in this package's folder without
    # importing it (importing would fail: the library has no PyInit function).
    folder = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "_C" + suffix)
        if os.path.isfile(path):
            return path
    return None


def _shadowed_install() -> Optional[str]:
    """The folder of another vaebm_fast on sys.path that has a compiled library, when this
    package (say, a source checkout run from its root) has none and hides it; else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.join(os.path.abspath(entry or os.curdir), "vaebm_fast")
        if folder == here or not os.path.isdir(folder):
            continue
        if any(os.path.isfile(os.path.join(folder, "_C" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return folder
    return None


def _compiled_library() -> Tuple[Optional[str], Optional[str]]:
    """(path, None) of the library compiled on first use for this torch (compiling it now when
    the cache has none and VAEBM_FAST_JIT is not 0), or (None, why not)."""
    here = os.path.dirname(os.path.abspath(__file__))
    shadowed = _shadowed_install()
    note = ("" if shadowed is None else
            f"; note: {here} (a source checkout?) shadows the vaebm_fast installed in "
            f"{shadowed}, which has a compiled library: run from outside the checkout, or "
            "install the checkout with `pip install --no-build-isolation -e .`")
    try:
        cached = _compile.cached_library()
        if cached is not None:
            return cached, None
        if os.environ.get("VAEBM_FAST_JIT", "") == "0":
            return None, ("the compiled extension vaebm_fast._C is not installed and compiling "
                          "it on first use is off (VAEBM_FAST_JIT=0); run `vaebm-fast build` "
                          "once, or reinstall with `pip install --no-build-isolation .`" + note)
        return _compile.ensure_library(), None
    except _compile.CompileError as exc:
        return None, (f"the compiled extension vaebm_fast._C is not installed and compiling it "
                      f"on first use failed: {exc}; fix that and run `vaebm-fast build`, or "
                      "reinstall with `pip install --no-build-isolation .`" + note)


def _parse_build_info(text: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def _load() -> NativeStatus:
    if os.environ.get("VAEBM_FAST_DISABLE_NATIVE", "") == "1":
        return NativeStatus(False, "disabled by VAEBM_FAST_DISABLE_NATIVE=1")
    path = _find_library()
    if path is None:
        path, reason = _compiled_library()
        if path is None:
            return NativeStatus(False, reason)
    held = _held if _held is not None else (_UNKNOWN_COPY if _ops_registered() else None)
    if held is not None and held != os.path.realpath(path):
        return NativeStatus(False, f"{path} was not loaded: this process already holds "
                                   f"another copy of the library ({held}), and a second copy "
                                   "would abort the process; restart Python to switch "
                                   "libraries", path)
    if held is None:
        try:
            torch.ops.load_library(path)
        except (OSError, RuntimeError) as exc:
            return NativeStatus(False, f"{path} could not be loaded ({exc}); {FIX}", path)
        _hold(path)
    try:
        info = _parse_build_info(torch.ops.vaebm_fast._build_info())
    except (AttributeError, RuntimeError) as exc:
        return NativeStatus(False, f"{path} is from another version of vaebm_fast (no build "
                                   f"info: {exc}); {FIX}", path)
    built_for = info.get("torch")
    if built_for != torch.__version__:
        return NativeStatus(False, f"{path} was built for torch {built_for} but torch "
                                   f"{torch.__version__} is installed; {FIX}", path, info)
    return NativeStatus(True, None, path, info)


def status() -> NativeStatus:
    """Load the extension on first use and return how that went (cached afterwards).

    The first failure to load warns once (``RuntimeWarning``) unless native code was disabled
    on purpose with ``VAEBM_FAST_DISABLE_NATIVE=1``.
    """
    global _status
    if _status is not None:
        return _status
    with _lock:
        if _status is None:
            result = _load()
            if not result.loaded and os.environ.get("VAEBM_FAST_DISABLE_NATIVE", "") != "1":
                warnings.warn(f"vaebm_fast: native kernels unavailable, using the eager "
                              f"PyTorch fallback: {result.reason}", RuntimeWarning,
                              stacklevel=3)
            _status = result
    return _status


def is_loaded() -> bool:
    """True when the native ops can be used (loads the extension on first call)."""
    return status().loaded


def _reset() -> None:
    """Forget the loading outcome so the next :func:`status` tries again (tests only).

    A library already loaded into the process stays loaded (and is the only one it can load).
    """
    global _status
    with _lock:
        _status = None
