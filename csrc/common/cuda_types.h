// Types shared by the CUDA kernels and launchers of every csrc/<op>/cuda.cu. Plain C++ plus the
// CUDA runtime types: no torch, so the kernels compile with nvcc alone. The torch-side
// counterpart (ScalarType -> Dtype, checks, streams) is cuda_glue.h.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace vaebm_fast {
namespace cuda {

// Element types of the floating kernels. float16 / bfloat16 / float32 are computed in float32
// and rounded once when stored; float64 is computed in float64.
enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace cuda
}  // namespace vaebm_fast
