// torch-side helpers shared by the torch glue at the end of every csrc/<op>/cuda.cu: the
// ScalarType -> Dtype mapping, argument checks, contiguous outputs, the current stream and the
// launch check.
//
// Every cuda.cu is the kernels and their launcher (CUDA runtime headers only), then, inside
// #ifndef VAEBM_FAST_KERNELS_ONLY, the torch glue that checks, guards the device, picks the
// stream and registers the op. setup.py compiles the whole file against a CUDA build of torch;
// the CMake check defines VAEBM_FAST_KERNELS_ONLY and compiles the kernels alone, where only a
// CPU build of torch exists.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_types.h"
#include "kernel_dtypes.h"

namespace vaebm_fast {
namespace cuda {

// Raises the launcher's error (a cudaError_t), then checks for any pending launch error.
#define VAEBM_FAST_CUDA_LAUNCH(expr) \
  do {                               \
    C10_CUDA_CHECK(expr);            \
    C10_CUDA_KERNEL_LAUNCH_CHECK();  \
  } while (0)


inline Dtype to_dtype(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t,
                  " (the CUDA kernel takes float16, bfloat16, float32 or float64)");
  }
}

// The accumulation dtype of a kernel dtype: float64 for float64, float32 otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA kernel): ", name, " must be a CUDA tensor, got one on ",
              t.device());
}

// A CUDA tensor of one of the kernel dtypes.
inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  check_cuda(t, op, name);
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

// `t` on ref's device with ref's dtype.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& ref, const char* op,
                             const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " has shape ", t.sizes(), " but ",
              ref_name, " has shape ", ref.sizes());
}

// New contiguous tensor of `sizes` with like's dtype and device.
inline at::Tensor empty_contiguous(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(at::MemoryFormat::Contiguous));
}

// The stream every kernel of the op is enqueued on (PyTorch's current stream of the device
// selected by the caller's CUDAGuard).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace vaebm_fast
