// Launcher interface of the CUDA Swish kernels (csrc/cuda/swish.cu; torch glue:
// swish_registration.cpp; reference: vaebm_fast/ops/swish.py).
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

// y[i] = scale * x[i] * sigmoid(x[i]), i < n; contiguous device arrays of `dtype`.
cudaError_t swish_forward(Dtype dtype, const void* x, void* y, int64_t n, double scale,
                          cudaStream_t stream);

// dx[i] = scale * g[i] * (s + x[i] s (1 - s)), s = sigmoid(x[i]), i < n.
cudaError_t swish_backward(Dtype dtype, const void* grad, const void* x, void* dx, int64_t n,
                           double scale, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
