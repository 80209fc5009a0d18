// Launcher interface of the CUDA Philox kernels (csrc/cuda/rng.cu; torch glue:
// rng_registration.cpp). The stream is specified in csrc/philox.h and vaebm_fast/ops/rng.py.
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

// out[4 i + j] = word j of Philox call calls[i] (read as uint64) for `seed`, i < n; out is a
// 16-byte-aligned device array of 4 n int64.
cudaError_t philox4x32(uint64_t seed, const int64_t* calls, int64_t n, int64_t* out,
                       cudaStream_t stream);

// out[i] = normal number offset + i of the stream for `seed` (float32, rounded to / widened
// to `dtype`), i < n; out is a contiguous device array.
cudaError_t philox_normal(Dtype dtype, void* out, int64_t n, uint64_t seed, uint64_t offset,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
