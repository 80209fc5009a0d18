"""Compile the native library on first use, against the torch that runs (as DeepSpeed does for
its ops).

A plain ``pip install .`` builds in an isolated environment that cannot import the user's
torch, so the wheel it makes carries the C++/CUDA sources (``vaebm_fast/_csrc``) instead of a
compiled ``_C``. The first native op (``vaebm_fast._native.status``) then compiles them here,
with torch.utils.cpp_extension and ninja, the same sources and flags as setup.py
(``vaebm_fast._toolchain``), and caches the library; ``vaebm-fast build`` does it ahead of time.
A source checkout without a compiled ``_C`` compiles its own ``csrc/`` the same way.

Cache: ``$VAEBM_FAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/vaebm_fast``, else
``~/.cache/vaebm_fast``; one folder per build key (torch version, CUDA version or "cpu",
Python ABI, and a hash of the compiler, the GPU targets, the flags and every file of the
sources), holding ``_C.so`` and the build log. Several processes may start at once: one
compiles under an exclusive file lock, into a temporary folder renamed into place when done;
the others wait for the lock and load its result.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ._toolchain import DEFAULT_CUDA_ARCH_LIST, compile_flags, native_sources, want_cuda

__all__ = ["CompileError", "Recipe", "recipe", "cache_dir", "sources_root", "cached_library",
           "ensure_library"]

LIBRARY = "_C.so"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Core-seconds per translation unit, only for the "~N min" of the progress message: the CPU
# ones measured (8 units in 56 s on a 2-core EPYC VM), the CUDA ones a guess (two targets).
_CORE_SECONDS = {".cpp": 20, ".cu": 150}


class CompileError(RuntimeError):
    """The library cannot be compiled here; the message says why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """What a first-use build compiles, and the cache key that names its result.

    Attributes:
        csrc: the folder of the C++/CUDA sources.
        sources: the translation units (absolute paths), as setup.py compiles them.
        flags: ``{"cxx": [...], "nvcc": [...], "ld": [...]}`` from vaebm_fast._toolchain.
        with_cuda: whether the CUDA kernels are compiled.
        arch_list: TORCH_CUDA_ARCH_LIST of the build (None without CUDA).
        compiler: the first line of ``$CXX --version`` (``c++`` without CXX).
        key: the cache folder's name.
    """

    csrc: str
    sources: List[str]
    flags: Dict[str, List[str]]
    with_cuda: bool
    arch_list: Optional[str]
    compiler: str
    key: str


def sources_root() -> Optional[str]:
    """The sources a first-use build compiles: the installed copy (``vaebm_fast/_csrc``) or, in
    a source checkout, ``csrc/`` beside the package; None when neither is there."""
    for candidate in (os.path.join(_PACKAGE, "_csrc"),
                      os.path.join(os.path.dirname(_PACKAGE), "csrc")):
        if os.path.isfile(os.path.join(candidate, "ops.cpp")):
            return candidate
    return None


def cache_dir() -> str:
    """Where compiled libraries are kept (see the module docstring)."""
    override = os.environ.get("VAEBM_FAST_CACHE_DIR")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vaebm_fast")


def _compiler() -> str:
    cxx = os.environ.get("CXX", "c++")  # the compiler torch.utils.cpp_extension runs
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"no C++ compiler: `{cxx} --version` failed ({exc}); install g++ "
                           "(or set CXX)") from None
    if out.returncode != 0 or not out.stdout.strip():
        raise CompileError(f"no C++ compiler: `{cxx} --version` exited {out.returncode}; "
                           "install g++ (or set CXX)")
    return out.stdout.strip().splitlines()[0]


def _digest(csrc: str, parts: List[str]) -> str:
    """sha256 of ``parts`` and of every file under ``csrc`` (names and contents)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    for folder, dirs, files in sorted(os.walk(csrc)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, csrc).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def recipe() -> Recipe:
    """The build for the running torch. Raises CompileError when the sources or a compiler
    are missing."""
    csrc = sources_root()
    if csrc is None:
        raise CompileError(f"the C++ sources are not installed (no {_PACKAGE}/_csrc/ops.cpp); "
                           "reinstall vaebm_fast with `pip install .`")
    try:
        with_cuda = want_cuda(torch.__version__, torch.version.cuda, csrc)
    except RuntimeError as exc:  # VAEBM_FAST_CUDA=1 that cannot be honoured
        raise CompileError(str(exc)) from None
    arch_list = (os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCH_LIST
                 if with_cuda else None)
    flags = compile_flags(torch.__version__, with_cuda)
    compiler = _compiler()
    digest = _digest(csrc, [compiler, str(arch_list), json.dumps(flags, sort_keys=True)])
    device = f"cuda{torch.version.cuda}" if with_cuda else "cpu"
    key = f"torch{torch.__version__}-{device}-{sys.implementation.cache_tag}-{digest[:16]}"
    return Recipe(csrc, native_sources(csrc, with_cuda), flags, with_cuda, arch_list, compiler,
                  key)


def cached_library(build: Optional[Recipe] = None) -> Optional[str]:
    """Path of the library already compiled for ``build`` (default: this torch), or None."""
    build = build or recipe()
    path = os.path.join(cache_dir(), build.key, LIBRARY)
    return path if os.path.isfile(path) else None


def estimated_minutes(build: Recipe) -> int:
    """A rough duration of the build here, for the progress message."""
    work = sum(_CORE_SECONDS.get(os.path.splitext(s)[1], 60) for s in build.sources)
    jobs = int(os.environ.get("MAX_JOBS") or 0) or (os.cpu_count() or 1)
    return max(1, math.ceil(work / min(jobs, len(build.sources)) / 60))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_library(announce: Callable[[str], None] = _stderr) -> str:
    """Path of the library compiled for the running torch, compiling it first when the cache
    has none. ``announce`` gets the one-line progress messages (default: stderr).

    Raises CompileError with the cause and, for a failed compile, the log's path.
    """
    build = recipe()
    root = cache_dir()
    final = os.path.join(root, build.key)
    library = os.path.join(final, LIBRARY)
    if os.path.isfile(library):
        return library
    try:
        os.makedirs(root, exist_ok=True)
        lock = open(os.path.join(root, build.key + ".lock"), "w")
    except OSError as exc:
        raise CompileError(f"cannot write the cache folder {root} ({exc}); set "
                           "VAEBM_FAST_CACHE_DIR to a writable folder") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            announce(f"vaebm_fast: waiting for another process compiling the kernels into "
                     f"{final}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(library):  # compiled by the process we waited for
            return library
        for name in os.listdir(root):  # left by a process killed while compiling (we hold
            if name.startswith(build.key + ".tmp-"):  # the lock: nobody else is)
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        announce(f"vaebm_fast: compiling vaebm_fast's kernels for torch {torch.__version__} "
                 f"(one time, ~{estimated_minutes(build)} min; cached in {final})")
        work = tempfile.mkdtemp(prefix=build.key + ".tmp-", dir=root)
        try:
            _compile_into(build, work)
            if os.path.isdir(final):  # a broken leftover without _C.so
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    announce(f"vaebm_fast: kernels compiled ({library})")
    return library


# Run in a child process: torch.utils.cpp_extension.load also loads what it built, and this
# process must load only the copy renamed into the cache (a second copy of the same kernels
# would register them twice).
_CHILD = ("import json, sys\n"
          "from torch.utils.cpp_extension import load\n"
          "load(**json.loads(sys.argv[1]))\n")


def _compile_into(build: Recipe, work: str) -> None:
    """Compile ``build`` into the folder ``work``, leaving ``work/_C.so`` and ``build.log``."""
    # cpp_extension names each object file after its source's base name, and every op has a
    # cpu.cpp: compile one uniquely named file per source that includes it (its own relative
    # #includes still resolve from its folder).
    units = os.path.join(work, "units")
    os.makedirs(units)
    wrappers = []
    for source in build.sources:
        name = os.path.relpath(source, build.csrc).replace(os.sep, "_")
        wrapper = os.path.join(units, name)
        with open(wrapper, "w") as f:
            f.write(f'#include "{source}"\n')
        wrappers.append(wrapper)
    # load() writes the flags into a ninja file run by the shell: quote them as BuildExtension
    # does for setup.py (the -D...="2.13.0+cpu" string literal).
    kwargs = dict(name="vaebm_fast_C", sources=wrappers,
                  extra_cflags=[shlex.quote(f) for f in build.flags["cxx"]],
                  extra_cuda_cflags=[shlex.quote(f) for f in build.flags["nvcc"]],
                  extra_ldflags=build.flags["ld"], build_directory=work,
                  with_cuda=build.with_cuda, is_python_module=False, verbose=True)
    env = dict(os.environ)
    if build.with_cuda:
        env["TORCH_CUDA_ARCH_LIST"] = build.arch_list
    log_path = os.path.join(work, "build.log")
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kwargs)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=work)
    built = os.path.join(work, "vaebm_fast_C.so")
    if done.returncode != 0 or not os.path.isfile(built):
        kept = os.path.join(os.path.dirname(work), build.key + ".failed.log")
        shutil.copyfile(log_path, kept)
        with open(log_path) as f:
            tail = [line.strip() for line in f if "error" in line.lower()][:1]
        raise CompileError(f"compiling the kernels failed ({tail[0] if tail else 'see the log'}"
                           f"); full log: {kept}")
    os.rename(built, os.path.join(work, LIBRARY))
    for name in os.listdir(work):  # keep the library and its log, not the objects
        if name not in (LIBRARY, "build.log"):
            path = os.path.join(work, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
