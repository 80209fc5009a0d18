// Launcher interface of the CUDA power-iteration kernel (csrc/cuda/power_iteration.cu; torch
// glue: power_iteration_registration.cpp; reference: vaebm_fast/ops/power_iteration.py).
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

// One group of G same-shaped matrices: contiguous device arrays W [G, R, C], u [G, R] and
// v [G, C] (updated in place) and sigma [G] (written), all of the launch's dtype.
struct PowerIterationGroup {
  const void* W;
  void* u;
  void* v;
  void* sigma;
  int64_t G, R, C;
};

// n_iter iterations  v = normalize(u^T W), u = normalize(W v)  (normalize(x) = x / max(||x||,
// eps)) on every matrix of the n_groups groups, then sigma = u^T W v. One launch for up to
// kPowerIterationMaxGroups groups (one block per matrix); more groups take more launches.
// Every group must have R + C <= power_iteration_max_vector(dtype).
constexpr int kPowerIterationMaxGroups = 64;
cudaError_t power_iteration(Dtype dtype, const PowerIterationGroup* groups, int64_t n_groups,
                            int64_t n_iter, double eps, cudaStream_t stream);

// The largest R + C the kernel takes for `dtype` on the current device: u and v live in
// shared memory, (R + C) accumulators (float, or double for float64) within the device's
// opt-in limit per block (~227 KiB on H100/H200, ~163 KiB on A100). Queries an attribute of
// the current device (no synchronisation; once per call of the op); 0 when the query fails.
int64_t power_iteration_max_vector(Dtype dtype);

}  // namespace cuda
}  // namespace vaebm_fast
