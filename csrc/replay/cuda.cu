// CUDA kernels of the replay-buffer ops (torch glue: the end of this file; references:
// replay_gather_reference / replay_scatter_reference in vaebm_fast/ops/replay.py; the CPU
// kernels are csrc/replay/cpu.cpp).
//
// replay_gather(buffer [N, *S], index [B], reinit [B], seed, offset) -> out [B, *S], P = prod(S):
//   out[b] = reinit[b] ? normals offset + b P .. offset + (b + 1) P - 1 : buffer[index[b]].
//   The output is one flat array of B P elements whose element e would use normal offset + e,
//   so (as in philox_normal_) one thread handles one Philox call: the 4 consecutive elements
//   e0 .. e0 + 3, e0 = 4 call - offset, which may straddle rows. The normals are generated
//   only when one of those elements lies in a reinit row; gathered elements are copied bit for
//   bit. Stores are 4-element vectors where aligned. Memory traffic per element: gathered rows
//   read + write itemsize (8 bytes fp32), fresh rows write itemsize; index / reinit are read
//   once per thread (8 + 1 bytes, from L1/L2 after the first touch of a row).
//
// replay_scatter_(buffer, index, values): buffer[index[b]] = values[b]. Flat grid-stride copy
//   over B P elements in 16-byte vectors when the row length, the row stride and both base
//   pointers allow it (scalar otherwise). Memory traffic: read + write itemsize per element.
//
// No host synchronisation: indices are read on the device only. Out-of-range indices (the
// Python wrappers reject them beforehand) trip a device-side assertion, like torch's indexing
// kernels. Indices use int64 arithmetic throughout (B P may exceed 2^31).
#include <cassert>

#include "../common/philox.h"
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
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


namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

#define VAEBM_FAST_KERNEL_ASSERT(cond)                                             \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      __assert_fail(#cond, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
    }                                                                              \
  } while (0)

template <typename T>
__global__ void __launch_bounds__(kThreads)
replay_gather_kernel(const T* __restrict__ buffer, int64_t row_stride, int64_t N,
                     const int64_t* __restrict__ index, const bool* __restrict__ reinit,
                     T* __restrict__ out, int64_t total, int64_t P, uint64_t seed,
                     uint64_t offset, uint64_t first_call, int64_t n_units, bool vec_ok) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < n_units;
       u += stride) {
    const uint64_t call = first_call + static_cast<uint64_t>(u);
    const int64_t e0 = static_cast<int64_t>(4 * call - offset);
    // Row b and column j of the first in-range element; then stepped along.
    const int64_t e_first = e0 < 0 ? 0 : e0;
    int64_t b = dev::div64(e_first, P);
    int64_t j = e_first - b * P;
    bool have_noise = false;
    float xi[4];
    T v[4];
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t e = e0 + lane;
      if (e < 0 || e >= total) continue;
      if (reinit[b]) {
        if (!have_noise) {
          philox::normals4(philox::philox_call(seed, call), xi);
          have_noise = true;
        }
        v[lane] = dev::from_float<T>(xi[lane]);
      } else {
        const int64_t row = index[b];
        VAEBM_FAST_KERNEL_ASSERT(row >= 0 && row < N && "replay_gather: index out of range");
        v[lane] = buffer[row * row_stride + j];
      }
      if (++j == P) {
        j = 0;
        ++b;
      }
    }
    dev::store_unit4(out, e0, total, v, vec_ok);
  }
}

// V elements per access; rows are P = Pv * V elements long.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
replay_scatter_kernel(T* __restrict__ buffer, int64_t row_stride, int64_t N,
                      const int64_t* __restrict__ index, const T* __restrict__ values,
                      int64_t n_vec, int64_t Pv) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n_vec;
       q += stride) {
    const int64_t b = dev::div64(q, Pv);
    const int64_t j = q - b * Pv;
    const int64_t row = index[b];
    VAEBM_FAST_KERNEL_ASSERT(row >= 0 && row < N && "replay_scatter_: index out of range");
    dev::store_pack<T, V>(buffer + row * row_stride + j * V,
                          dev::load_pack<T, V>(values + q * V));
  }
}

}  // namespace

cudaError_t replay_gather(Dtype dtype, const void* buffer, int64_t row_stride, int64_t N,
                          const int64_t* index, const bool* reinit, void* out, int64_t B,
                          int64_t P, uint64_t seed, uint64_t offset, cudaStream_t stream) {
  const int64_t total = B * P;  // the caller checked offset + B P <= 2^63 - 1
  if (total <= 0) return cudaSuccess;
  const uint64_t first_call = offset / 4;
  const int64_t n_units =
      static_cast<int64_t>((offset + static_cast<uint64_t>(total) - 1) / 4 - first_call + 1);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    replay_gather_kernel<T><<<dev::grid_for(n_units, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(buffer), row_stride, N, index, reinit, o, total, P, seed, offset,
        first_call, n_units, dev::unit4_aligned(o, offset));
    return cudaGetLastError();
  });
}

cudaError_t replay_scatter(Dtype dtype, void* buffer, int64_t row_stride, int64_t N,
                           const int64_t* index, const void* values, int64_t B, int64_t P,
                           cudaStream_t stream) {
  if (B <= 0 || P <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = dev::kVec16<T>;
    T* buf = static_cast<T*>(buffer);
    const T* val = static_cast<const T*>(values);
    if (P % V == 0 && row_stride % V == 0 && dev::aligned(buffer, 16) &&
        dev::aligned(values, 16)) {
      const int64_t n_vec = B * (P / V);
      replay_scatter_kernel<T, V><<<dev::grid_for(n_vec, kThreads), kThreads, 0, stream>>>(
          buf, row_stride, N, index, val, n_vec, P / V);
    } else {
      replay_scatter_kernel<T, 1><<<dev::grid_for(B * P, kThreads), kThreads, 0, stream>>>(
          buf, row_stride, N, index, val, B * P, P);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace vaebm_fast

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA replay-buffer kernels (the kernels above). Mirrors the checks
// of csrc/replay/cpu.cpp except the index range, which would need a host synchronisation: the
// Python wrappers check it, and the kernels assert on the device.
#include <algorithm>
#include <limits>
#include <vector>

#include <torch/library.h>

#include "../common/cuda_glue.h"
#include "checks.h"

namespace vaebm_fast {
namespace cuda {
namespace {

void check_common(const char* op, const at::Tensor& buffer, const at::Tensor& index) {
  check_cuda(buffer, op, "buffer");
  check_cuda(index, op, "index");
  check_replay_buffer_index(op, buffer, index);
  TORCH_CHECK(is_kernel_dtype(buffer.scalar_type()), op, ": the CUDA kernel takes float16, "
              "bfloat16, float32 or float64 buffers, got ", buffer.scalar_type());
}

at::Tensor replay_gather_cuda(const at::Tensor& buffer_in, const at::Tensor& index_in,
                              const at::Tensor& reinit_in, int64_t seed, int64_t offset) {
  check_common("replay_gather", buffer_in, index_in);
  check_replay_reinit(buffer_in, index_in, reinit_in, offset);
  const c10::cuda::CUDAGuard guard(buffer_in.device());
  const at::Tensor buffer = replay_rows_contiguous(buffer_in) ? buffer_in : buffer_in.contiguous();
  const at::Tensor index = index_in.contiguous(), reinit = reinit_in.contiguous();
  const int64_t B = index.numel(), N = buffer.size(0);
  std::vector<int64_t> out_shape = buffer.sizes().vec();
  out_shape[0] = B;
  at::Tensor out = empty_contiguous(out_shape, buffer);
  const int64_t P = out.numel() / std::max<int64_t>(B, 1);
  if (out.numel() == 0) return out;
  TORCH_CHECK(B <= (std::numeric_limits<int64_t>::max() - offset) / P,
              "replay_gather: offset + B * prod(S) overflows int64");
  VAEBM_FAST_CUDA_LAUNCH(replay_gather(
      to_dtype(buffer.scalar_type(), "replay_gather"), buffer.const_data_ptr(), buffer.stride(0),
      N, index.const_data_ptr<int64_t>(), reinit.const_data_ptr<bool>(), out.mutable_data_ptr(),
      B, P, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), current_stream()));
  return out;
}

void replay_scatter_cuda(const at::Tensor& buffer, const at::Tensor& index_in,
                         const at::Tensor& values_in) {
  check_common("replay_scatter_", buffer, index_in);
  check_replay_values(buffer, index_in, values_in);
  const int64_t B = index_in.numel(), N = buffer.size(0);
  if (B == 0 || values_in.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(buffer.device());
  const at::Tensor index = index_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor work = replay_rows_contiguous(buffer) ? buffer : buffer.contiguous();
  VAEBM_FAST_CUDA_LAUNCH(replay_scatter(
      to_dtype(buffer.scalar_type(), "replay_scatter_"), work.mutable_data_ptr(), work.stride(0),
      N, index.const_data_ptr<int64_t>(), values.const_data_ptr(), B, values.numel() / B,
      current_stream()));
  if (!work.is_same(buffer)) buffer.copy_(work);
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("replay_gather", &vaebm_fast::cuda::replay_gather_cuda);
  m.impl("replay_scatter_", &vaebm_fast::cuda::replay_scatter_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
