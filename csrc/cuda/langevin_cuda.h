// Launcher interface of the CUDA Langevin kernel (csrc/cuda/langevin.cu). Plain C++ plus the
// CUDA runtime types: no torch, so the .cu compiles with nvcc alone.
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

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
// elements of `dtype`. When half_sq_norm is not null it is a device array of `batch`
// accumulators (float, double for kFloat64), every tensor has `batch` rows of numels[i] /
// batch elements (dim 0), and it is overwritten with 0.5 * sum over the tensors of the squared
// norms of each row of the updated (stored) values. Enqueues on `stream` (no host
// synchronisation), returns the first launch / memset error (cudaSuccess if none).
cudaError_t langevin_step(Dtype dtype, int64_t n_tensors, void* const* tensors,
                          const void* const* grads, const int64_t* numels,
                          const LangevinArgs& args, void* half_sq_norm, int64_t batch,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
