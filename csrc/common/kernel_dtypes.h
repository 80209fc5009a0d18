// The dtypes the kernels take: the C++ statement of KERNEL_DTYPES in vaebm_fast/_kernel_rules.py.
// float16 / bfloat16 / float32 are computed in float32 and rounded once when stored; float64 in
// float64. (The torch-free CUDA kernels name the same four in cuda_types.h's Dtype.)
#pragma once

#include <ATen/Dispatch.h>

namespace vaebm_fast {

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace vaebm_fast

// Run the lambda with scalar_t bound to the tensor's kernel dtype.
#define VAEBM_FAST_DISPATCH_KERNEL_DTYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
