// CUDA kernels of the replay-buffer ops (torch glue: replay_registration.cpp; references:
// replay_gather_reference / replay_scatter_reference in vaebm_fast/ops/replay.py; the CPU
// kernels are csrc/cpu/replay.cpp).
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

#include "../philox.h"
#include "device_utils.cuh"
#include "replay_cuda.h"

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
