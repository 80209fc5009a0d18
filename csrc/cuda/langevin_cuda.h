// Launcher interface of the CUDA Langevin kernel (csrc/cuda/langevin.cu). Plain C++ plus the
// CUDA runtime types: no torch, so the .cu compiles with nvcc alone.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace vaebm_fast {
namespace cuda {

enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

// The update t <- clamp(t - half_step (clamp(g, -clip, clip) + prior_weight t) + sigma xi,
// low, high); absent clip / clamp are +-inf. Element k of the concatenation of the tensors
// uses normal number offset + k of the Philox stream for seed.
struct LangevinArgs {
  double half_step;
  double prior_weight;
  double sigma;
  double clip;
  double low;
  double high;
  uint64_t seed;
  uint64_t offset;
};

// Updates n_tensors contiguous device arrays in place: tensors[i] and grads[i] hold numels[i]
// elements of `dtype`. Enqueues on `stream`, returns the launch error (cudaSuccess if none).
cudaError_t langevin_step(Dtype dtype, int64_t n_tensors, void* const* tensors,
                          const void* const* grads, const int64_t* numels,
                          const LangevinArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
