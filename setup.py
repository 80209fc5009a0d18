"""Build of the vaebm_fast native extension ``vaebm_fast._C``.

Metadata lives in pyproject.toml; this file only adds the compiled library. Build against the
torch that will import it::

    pip install --no-build-isolation .        # or -e . for development

What gets compiled (decided from the installed torch and the environment, never from a GPU):

* always the C++ CPU kernels: csrc/ops.cpp (build information), csrc/common/*.cpp and one
  csrc/<op>/cpu.cpp per op;
* the CUDA kernels, one csrc/<op>/cuda.cu per op (kernel, launcher and torch glue), when
  torch is a CUDA build AND nvcc is found (CUDA_HOME / PATH). ``VAEBM_FAST_CUDA=0`` skips
  them, ``=1`` requires them (and fails loudly when they cannot be built). Target GPUs come from
  ``TORCH_CUDA_ARCH_LIST`` (default below, so no GPU is queried);
* nothing with ``VAEBM_FAST_NO_EXT=1`` (pure-Python install; every op runs its eager path).

The .so has no Python module init: vaebm_fast/_native.py loads it with torch.ops.load_library.
"""
import glob
import importlib.util
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"  # A100, H100/H200; PTX JITs forward to newer GPUs


def _sources(pattern):
    # Relative paths: setuptools rejects absolute ones in sdists/wheels.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _toolchain():
    # By path, not `import vaebm_fast._toolchain`: importing the package needs torch, which
    # need not be importable yet when setup.py runs.
    spec = importlib.util.spec_from_file_location(
        "_vaebm_fast_toolchain", os.path.join(ROOT, "vaebm_fast", "_toolchain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _want_cuda(torch):
    switch = os.environ.get("VAEBM_FAST_CUDA", "").strip()
    if switch == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if _toolchain().find_nvcc() is None:
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if not _sources("csrc/*/cuda.cu"):
        problems.append("there are no CUDA sources (csrc/<op>/cuda.cu)")
    if switch == "1" and problems:
        raise RuntimeError("VAEBM_FAST_CUDA=1 but the CUDA kernels cannot be built: "
                           + "; ".join(problems))
    return not problems


def _extensions():
    if os.environ.get("VAEBM_FAST_NO_EXT", "") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = _want_cuda(torch)
    sources = (_sources("csrc/ops.cpp") + _sources("csrc/common/*.cpp")
               + _sources("csrc/*/cpu.cpp"))
    # The torch version is baked in so _native.py can refuse a library built for another torch.
    defines = [f'-DVAEBM_FAST_TORCH_VERSION="{torch.__version__}"',
               f"-DVAEBM_FAST_WITH_CUDA={int(with_cuda)}"]
    # -fopenmp: at::parallel_for is a header template that only runs in parallel when the
    # including file is compiled with OpenMP (torch's CPU build uses the OpenMP backend).
    # -fno-math-errno -fno-trapping-math: as torch itself; lets the noise loops vectorise.
    # -Wno-psabi: silences GCC's note that passing 32-byte vectors changed ABI in GCC 4.6
    # (the vector-typed helpers are internal, so no ABI crosses a boundary).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"] + defines
    if not with_cuda:
        ext = CppExtension("vaebm_fast._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=["-fopenmp"])
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        sources += _sources("csrc/*/cuda.cu")
        nvcc = ["-O3", "-lineinfo"]  # torch's own nvcc flags (standard, defines) come first
        ext = CUDAExtension("vaebm_fast._C", sources,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                            extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
