"""How the native library is built: where the tools are, which sources, which flags.

Standard library only: ``setup.py`` loads this file by path (torch, and so the package, may not
be importable while the extension is being built), ``vaebm_fast._compile`` uses the same recipe
to compile the library on first use, and ``vaebm_fast.info`` reports what a build would find.
This is the one place for the build's sources and flags (CMakeLists.txt mirrors the flags for
C++ development).
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Dict, List, Optional

__all__ = ["find_nvcc", "native_sources", "compile_flags", "cuda_problems", "want_cuda",
           "DEFAULT_CUDA_ARCH_LIST"]

_DEFAULT_CUDA_HOME = "/usr/local/cuda"
# Target GPUs when TORCH_CUDA_ARCH_LIST is unset (so no GPU is queried): A100, H100/H200; the
# PTX JITs forward to newer GPUs.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


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


def native_sources(csrc: str, with_cuda: bool) -> List[str]:
    """The translation units of the library under the folder ``csrc``, sorted: csrc/ops.cpp
    (build information), csrc/common/*.cpp, one csrc/<op>/cpu.cpp per op and, ``with_cuda``,
    one csrc/<op>/cuda.cu per op. Headers are found relative to the sources."""
    patterns = ["ops.cpp", "common/*.cpp", "*/cpu.cpp"] + (["*/cuda.cu"] if with_cuda else [])
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join(csrc, pattern)))
    return found


def cuda_problems(torch_version: str, torch_cuda: Optional[str], csrc: str) -> List[str]:
    """Why the CUDA kernels cannot be built for this torch (empty when they can)."""
    problems = []
    if torch_cuda is None:
        problems.append(f"torch {torch_version} is not a CUDA build")
    if find_nvcc() is None:
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if not glob.glob(os.path.join(csrc, "*", "cuda.cu")):
        problems.append("there are no CUDA sources (csrc/<op>/cuda.cu)")
    return problems


def want_cuda(torch_version: str, torch_cuda: Optional[str], csrc: str) -> bool:
    """Whether to build the CUDA kernels: when torch is a CUDA build and nvcc is found.
    ``VAEBM_FAST_CUDA=0`` skips them; ``=1`` requires them (RuntimeError when impossible)."""
    switch = os.environ.get("VAEBM_FAST_CUDA", "").strip()
    if switch == "0":
        return False
    problems = cuda_problems(torch_version, torch_cuda, csrc)
    if switch == "1" and problems:
        raise RuntimeError("VAEBM_FAST_CUDA=1 but the CUDA kernels cannot be built: "
                           + "; ".join(problems))
    return not problems


def compile_flags(torch_version: str, with_cuda: bool) -> Dict[str, List[str]]:
    """Compiler and linker flags: ``{"cxx": [...], "nvcc": [...], "ld": [...]}``, unquoted
    (a caller that writes them into a shell command quotes them).

    torch's own flags (standard, ABI, includes, GPU targets) come first, from
    torch.utils.cpp_extension.
    """
    # The torch version is baked in so _native.py can refuse a library built for another torch.
    defines = [f'-DVAEBM_FAST_TORCH_VERSION="{torch_version}"',
               f"-DVAEBM_FAST_WITH_CUDA={int(with_cuda)}"]
    # -fopenmp: at::parallel_for is a header template that only runs in parallel when the
    # including file is compiled with OpenMP (torch's CPU build uses the OpenMP backend).
    # -fno-math-errno -fno-trapping-math: as torch itself; lets the noise loops vectorise.
    # -Wno-psabi: silences GCC's note that passing 32-byte vectors changed ABI in GCC 4.6
    # (the vector-typed helpers are internal, so no ABI crosses a boundary).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"] + defines
    nvcc = ["-O3", "-lineinfo"] if with_cuda else []
    return {"cxx": cxx, "nvcc": nvcc, "ld": ["-fopenmp"]}
