"""Build of vaebm_fast: the Python package, its C++/CUDA sources and, when torch is importable
here, the compiled extension ``vaebm_fast._C``.

Metadata lives in pyproject.toml; this file adds the library, the sources and the dependencies
that depend on the build. Two ways to install, both ending with kernels compiled against the
torch that imports them:

    pip install .                          # build isolation hides your torch: the wheel ships
                                           # the sources; the first native op compiles them
                                           # (or `vaebm-fast build`), cached per torch version
    pip install --no-build-isolation .     # compiled now against the installed torch
                                           # (-e . for development)

What gets compiled when torch is importable here (decided from the installed torch and the
environment, never from a GPU; sources and flags: vaebm_fast/_toolchain.py, shared with the
first-use compile):

* always the C++ CPU kernels: csrc/ops.cpp (build information), csrc/common/*.cpp and one
  csrc/<op>/cpu.cpp per op;
* the CUDA kernels, one csrc/<op>/cuda.cu per op (kernel, launcher and torch glue), when
  torch is a CUDA build AND nvcc is found (CUDA_HOME / PATH). ``VAEBM_FAST_CUDA=0`` skips
  them, ``=1`` requires them (and fails loudly when they cannot be built). Target GPUs come from
  ``TORCH_CUDA_ARCH_LIST`` (default in _toolchain.py, so no GPU is queried);
* nothing with ``VAEBM_FAST_NO_EXT=1`` (the wheel then ships the sources, as without torch).

A wheel with the compiled library requires exactly the torch it was built for; a wheel without
it does not require torch at all (``import vaebm_fast`` says which torch to install; see the
README's Install section). The .so has no Python module init: vaebm_fast/_native.py loads it
with torch.ops.load_library.
"""
import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
# Without torch: numpy and tqdm are imported by the library; ninja runs the first-use compile.
REQUIREMENTS = ["numpy", "tqdm"]


def _package_file(name):
    # By path, not `import vaebm_fast.<name>`: importing the package needs torch, which need
    # not be importable when setup.py runs. Both files use the standard library only.
    spec = importlib.util.spec_from_file_location(
        f"_vaebm_fast{name}", os.path.join(ROOT, "vaebm_fast", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toolchain():
    return _package_file("_toolchain")


def _build_torch():
    """The torch importable by this build, or None (pip's build isolation hides the user's)."""
    if os.environ.get("VAEBM_FAST_NO_EXT", "") == "1":
        return None
    try:
        import torch
    except ModuleNotFoundError:
        print("vaebm_fast: torch is not importable in this build environment (pip's build "
              "isolation hides yours), so the wheel ships the C++/CUDA sources and the first "
              "native op compiles them against your torch (or run `vaebm-fast build`); "
              "`pip install --no-build-isolation .` compiles them now", file=sys.stderr)
        return None
    problem = _package_file("_requirements").torch_problem(torch.__version__)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    return torch


class BuildPyWithSources(build_py):
    """build_py that also copies csrc/ into the package as vaebm_fast/_csrc, the sources of the
    first-use compile (an editable install uses the checkout's csrc/ directly)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        # A library left in build/ by an earlier build (for another torch, perhaps) must not
        # slip into a wheel built without one: build_ext, which runs next, makes it anew.
        package = os.path.join(self.build_lib, "vaebm_fast")
        for name in os.listdir(package):
            if name.startswith("_C.") and name.endswith(".so"):
                os.remove(os.path.join(package, name))
        target = os.path.join(package, "_csrc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CSRC, target)


def _license():
    """MIT: a PEP 639 expression for setuptools 77+ (isolated builds get the newest, which
    deprecates the older forms), the plain field for older ones (a --no-build-isolation install
    uses whatever the environment has). LICENSE itself is included by default."""
    import setuptools
    if int(setuptools.__version__.split(".")[0]) >= 77:
        return {"license_expression": "MIT"}
    return {"license": "MIT"}


def _extensions(torch):
    """(ext_modules, build_ext command, requirements) for the torch of this build."""
    if torch is None:
        return [], {}, REQUIREMENTS + ["ninja"]
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    toolchain = _toolchain()
    with_cuda = toolchain.want_cuda(torch.__version__, torch.version.cuda, CSRC)
    # Relative paths: setuptools rejects absolute ones in sdists/wheels.
    sources = [os.path.relpath(p, ROOT) for p in toolchain.native_sources(CSRC, with_cuda)]
    flags = toolchain.compile_flags(torch.__version__, with_cuda)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", toolchain.DEFAULT_CUDA_ARCH_LIST)
        ext = CUDAExtension("vaebm_fast._C", sources,
                            extra_compile_args={"cxx": flags["cxx"], "nvcc": flags["nvcc"]},
                            extra_link_args=flags["ld"])
    else:
        ext = CppExtension("vaebm_fast._C", sources, extra_compile_args={"cxx": flags["cxx"]},
                           extra_link_args=flags["ld"])
    # The library runs only with the torch it was compiled against (_native.py refuses others).
    requirements = REQUIREMENTS + [f"torch=={torch.__version__}"]
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}, requirements


if __name__ == "__main__":
    ext_modules, cmdclass, install_requires = _extensions(_build_torch())
    setup(ext_modules=ext_modules, cmdclass={**cmdclass, "build_py": BuildPyWithSources},
          install_requires=install_requires, **_license())
