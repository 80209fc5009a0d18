// Launcher interface of the CUDA replay-buffer kernels (csrc/cuda/replay.cu; torch glue:
// replay_registration.cpp; reference: vaebm_fast/ops/replay.py).
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

// out [B, P] (contiguous): out[b] = reinit[b] ? normals offset + b P .. offset + (b + 1) P - 1
// of the stream for `seed` : buffer[index[b]]. `buffer` holds N rows of P contiguous elements,
// row i starting at element i * row_stride. index / reinit are device arrays of B int64 /
// bool. An index of a non-reinit row outside [0, N) trips a device-side assertion.
cudaError_t replay_gather(Dtype dtype, const void* buffer, int64_t row_stride, int64_t N,
                          const int64_t* index, const bool* reinit, void* out, int64_t B,
                          int64_t P, uint64_t seed, uint64_t offset, cudaStream_t stream);

// buffer[index[b]] = values[b] for b < B (values [B, P] contiguous; buffer rows as above).
// Indices must be unique (else which row lands is unspecified); out of range ones assert.
cudaError_t replay_scatter(Dtype dtype, void* buffer, int64_t row_stride, int64_t N,
                           const int64_t* index, const void* values, int64_t B, int64_t P,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
