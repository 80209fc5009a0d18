// Launcher interface of the CUDA epilogue kernels (csrc/cuda/epilogues.cu; torch glue:
// epilogues_registration.cpp; references: vaebm_fast/ops/epilogues.py). All arrays are
// contiguous device arrays of `dtype` unless stated otherwise.
#pragma once

#include <cstdint>

#include "common_cuda.h"

namespace vaebm_fast {
namespace cuda {

// pre = h + skip (n elements), or with downsample the 2x2 average of h + skip over `planes`
// planes of (2 Ho) x (2 Wo) into planes of Ho x Wo; out = pre * sigmoid(pre) / 1.1.
cudaError_t ebm_block_tail(Dtype dtype, const void* h, const void* skip, void* out, void* pre,
                           bool downsample, int64_t planes, int64_t Ho, int64_t Wo,
                           cudaStream_t stream);

// ds = grad * lipswish'(pre) over planes x Ho x Wo; d = ds, or with downsample d [planes,
// 2 Ho, 2 Wo] with d[.., 2i + a, 2j + b] = ds[.., i, j] / 4.
cudaError_t ebm_block_tail_backward(Dtype dtype, const void* grad, const void* pre, void* d,
                                    bool downsample, int64_t planes, int64_t Ho, int64_t Wo,
                                    cudaStream_t stream);

// out = skip + scale * h * gate[p] for planes p of HW elements (gate: `planes` values).
cudaError_t nvae_cell_tail(Dtype dtype, const void* skip, const void* h, const void* gate,
                           void* out, int64_t planes, int64_t HW, double scale,
                           cudaStream_t stream);

// dh = scale * grad * gate[p], dgate[p] = scale * sum over plane p of grad * h.
cudaError_t nvae_cell_tail_backward(Dtype dtype, const void* grad, const void* h,
                                    const void* gate, void* dh, void* dgate, int64_t planes,
                                    int64_t HW, double scale, cudaStream_t stream);

// x [N, C, inner]: out = swish(x * scale[c] + shift[c]).
cudaError_t affine_swish(Dtype dtype, const void* x, const void* scale, const void* shift,
                         void* out, int64_t N, int64_t C, int64_t inner, cudaStream_t stream);

// Number of partial sums per channel affine_swish_backward uses for x [N, C, inner]; the
// caller provides `workspace` of 2 * C * splits accumulators (float, double for float64).
int64_t affine_swish_backward_splits(int64_t N, int64_t inner);
// dx = grad * swish'(a) * scale[c]; dscale[c] = sum grad * swish'(a) * x; dshift[c] =
// sum grad * swish'(a) (sums over n and inner), a = x * scale[c] + shift[c]. N * inner > 0.
cudaError_t affine_swish_backward(Dtype dtype, const void* grad, const void* x,
                                  const void* scale, const void* shift, void* dx, void* dscale,
                                  void* dshift, void* workspace, int64_t N, int64_t C,
                                  int64_t inner, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast
