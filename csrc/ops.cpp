// Build information of the vaebm_fast native library (torch.ops.vaebm_fast._build_info).
//
// The operator schemas are declared in Python, beside each op's specification
// (vaebm_fast/ops/<op>.py, through vaebm_fast/ops/_library.py); this library only adds kernels
// for them (TORCH_LIBRARY_IMPL in csrc/<op>/...), registered when vaebm_fast/_native.py loads
// it with torch.ops.load_library. The library has no Python module init.
#include <string>

#include <torch/library.h>

#ifndef VAEBM_FAST_TORCH_VERSION
// setup.py and CMakeLists.txt pass -DVAEBM_FAST_TORCH_VERSION="<torch.__version__>".
#error "VAEBM_FAST_TORCH_VERSION is not defined"
#endif
#ifndef VAEBM_FAST_WITH_CUDA
#define VAEBM_FAST_WITH_CUDA 0
#endif

#define VAEBM_FAST_STR2(x) #x
#define VAEBM_FAST_STR(x) VAEBM_FAST_STR2(x)

namespace {

// "key=value;key=value": the torch this library was compiled against (compared with the
// running torch by _native.py before any kernel is used), whether CUDA kernels were built,
// and the host compiler.
std::string build_info() {
  return std::string("torch=") + VAEBM_FAST_TORCH_VERSION +
         ";cuda=" VAEBM_FAST_STR(VAEBM_FAST_WITH_CUDA) ";cxx=" +
#if defined(__clang__)
         "clang " + __clang_version__;
#elif defined(__GNUC__)
         "gcc " + __VERSION__;
#else
         "unknown";
#endif
}

}  // namespace

// A fragment: the Python side declares the ops of the same namespace.
TORCH_LIBRARY_FRAGMENT(vaebm_fast, m) {
  // No tensor arguments, so the kernel is a catch-all.
  m.def("_build_info() -> str", &build_info);
}
