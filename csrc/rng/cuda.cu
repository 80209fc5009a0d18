// CUDA kernels of vaebm_fast::philox4x32, vaebm_fast::philox_normal_ and
// vaebm_fast::philox_normal_rows_ (torch glue:
// the end of this file; references: philox4x32_reference / philox_normal_reference in
// vaebm_fast/ops/rng.py; the generator and the normal transform are csrc/common/philox.h, shared
// with every other backend, so words are bit-identical and normals agree to ~1e-6).
//
// philox4x32: one thread per call index: 10 Philox rounds, 4 words written as two 16-byte
//   stores. Memory traffic: 8 bytes read + 32 bytes written per call.
// philox_normal_: one thread per Philox call c (normals 4c .. 4c + 3), i.e. per 4 consecutive
//   output elements; interior calls store one 4-element vector when the output is suitably
//   aligned (16 bytes for float32), the two end calls scalar elements. Memory traffic:
//   itemsize bytes written per element, nothing read; the kernel is compute-bound on the
//   Box-Muller transform (one logf, sqrtf, sinf, cosf per 2 normals).
// philox_normal_rows_: the same per row of out [B, n], row b from row stream first_row + b
//   (counter words 2, 3 = first_row + b + 1): one thread per (row, call), so a row whose
//   offset is not a multiple of 4 costs one partly used call at each end; 4-element vector
//   stores when every row starts suitably aligned (n % 4 == 0 and the base is aligned).
#include "../common/philox.h"
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
namespace vaebm_fast {
namespace cuda {

// out[4 i + j] = word j of Philox call calls[i] (read as uint64) for `seed`, i < n; out is a
// 16-byte-aligned device array of 4 n int64.
cudaError_t philox4x32(uint64_t seed, const int64_t* calls, int64_t n, int64_t* out,
                       cudaStream_t stream);

// out[i] = normal number offset + i of the stream for `seed` (float32, rounded to / widened
// to `dtype`), i < n; out is a contiguous device array.
cudaError_t philox_normal(Dtype dtype, void* out, int64_t n, uint64_t seed, uint64_t offset,
                          cudaStream_t stream);

// out[b * n + i] = normal number offset + i of row stream first_row + b, b < rows, i < n;
// out is a contiguous device array of rows * n elements of `dtype`.
cudaError_t philox_normal_rows(Dtype dtype, void* out, int64_t rows, int64_t n, uint64_t seed,
                               uint64_t offset, uint64_t first_row, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast


namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
philox_words_kernel(uint64_t seed, const int64_t* __restrict__ calls, int64_t n,
                    int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const philox::Words w = philox::philox_call(seed, static_cast<uint64_t>(calls[i]));
    longlong2* o = reinterpret_cast<longlong2*>(out + 4 * i);
    o[0] = make_longlong2(static_cast<long long>(w.w[0]), static_cast<long long>(w.w[1]));
    o[1] = make_longlong2(static_cast<long long>(w.w[2]), static_cast<long long>(w.w[3]));
  }
}

// Unit u = call first_call + u covers elements e0 = 4 * call - offset .. e0 + 3.
template <typename T>
__global__ void __launch_bounds__(kThreads)
philox_normal_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset,
                     uint64_t first_call, int64_t n_units, bool vec_ok) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < n_units;
       u += stride) {
    const uint64_t call = first_call + static_cast<uint64_t>(u);
    float xi[4];
    philox::normals4(philox::philox_call(seed, call), xi);
    T v[4];
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) v[lane] = dev::from_float<T>(xi[lane]);
    dev::store_unit4(out, static_cast<int64_t>(4 * call - offset), n, v, vec_ok);
  }
}

// Unit u = (row b, call first_call + c) with u = b * calls_per_row + c; it covers elements
// e0 = 4 * call - offset .. e0 + 3 of row b.
template <typename T>
__global__ void __launch_bounds__(kThreads)
philox_normal_rows_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset,
                          uint64_t first_row, uint64_t first_call, int64_t calls_per_row,
                          int64_t n_units, bool vec_ok) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < n_units;
       u += stride) {
    const int64_t b = dev::div64(u, calls_per_row);
    const uint64_t call = first_call + static_cast<uint64_t>(u - b * calls_per_row);
    float xi[4];
    philox::normals4(philox::philox_call(seed, call, first_row + static_cast<uint64_t>(b) + 1),
                     xi);
    T v[4];
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) v[lane] = dev::from_float<T>(xi[lane]);
    dev::store_unit4(out + b * n, static_cast<int64_t>(4 * call - offset), n, v, vec_ok);
  }
}

}  // namespace

cudaError_t philox4x32(uint64_t seed, const int64_t* calls, int64_t n, int64_t* out,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  philox_words_kernel<<<dev::grid_for(n, kThreads), kThreads, 0, stream>>>(seed, calls, n, out);
  return cudaGetLastError();
}

cudaError_t philox_normal(Dtype dtype, void* out, int64_t n, uint64_t seed, uint64_t offset,
                          cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  // Calls holding normals offset .. offset + n - 1 (the caller checked offset + n <= 2^63).
  const uint64_t first_call = offset / 4;
  const int64_t n_units =
      static_cast<int64_t>((offset + static_cast<uint64_t>(n) - 1) / 4 - first_call + 1);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    philox_normal_kernel<T><<<dev::grid_for(n_units, kThreads), kThreads, 0, stream>>>(
        o, n, seed, offset, first_call, n_units, dev::unit4_aligned(o, offset));
    return cudaGetLastError();
  });
}

cudaError_t philox_normal_rows(Dtype dtype, void* out, int64_t rows, int64_t n, uint64_t seed,
                               uint64_t offset, uint64_t first_row, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return cudaSuccess;
  const uint64_t first_call = offset / 4;
  const int64_t calls_per_row =
      static_cast<int64_t>((offset + static_cast<uint64_t>(n) - 1) / 4 - first_call + 1);
  const int64_t n_units = rows * calls_per_row;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    // Every row shares row 0's alignment only when n is a multiple of 4.
    const bool vec_ok = n % 4 == 0 && dev::unit4_aligned(o, offset);
    philox_normal_rows_kernel<T><<<dev::grid_for(n_units, kThreads), kThreads, 0, stream>>>(
        o, n, seed, offset, first_row, first_call, calls_per_row, n_units, vec_ok);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace vaebm_fast

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA Philox kernels (the kernels above). Mirrors csrc/rng/cpu.cpp.
#include <limits>
#include <vector>

#include <torch/library.h>

#include "../common/cuda_glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

// offsets: int64 [*] (read as uint64 call indices) -> int64 [*, 4], words in [0, 2^32).
at::Tensor philox4x32_cuda(int64_t seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "philox4x32: offsets must be int64, got ",
              offsets.scalar_type());
  check_cuda(offsets, "philox4x32", "offsets");
  const c10::cuda::CUDAGuard guard(offsets.device());
  const at::Tensor calls = offsets.contiguous();
  std::vector<int64_t> out_shape = calls.sizes().vec();
  out_shape.push_back(4);
  at::Tensor out = empty_contiguous(out_shape, calls);
  VAEBM_FAST_CUDA_LAUNCH(philox4x32(static_cast<uint64_t>(seed), calls.const_data_ptr<int64_t>(),
                                    calls.numel(), out.mutable_data_ptr<int64_t>(),
                                    current_stream()));
  return out;
}

// out (contiguous, floating, read flat): out[i] = normal number offset + i.
void philox_normal_cuda(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_cuda(out, "philox_normal_", "out");
  TORCH_CHECK(out.is_contiguous(), "philox_normal_: out must be contiguous");
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "philox_normal_: out must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(is_kernel_dtype(out.scalar_type()), "philox_normal_: the CUDA kernel takes "
              "float16, bfloat16, float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(offset >= 0, "philox_normal_: offset must be >= 0, got ", offset);
  TORCH_CHECK(out.numel() <= std::numeric_limits<int64_t>::max() - offset,
              "philox_normal_: offset + numel overflows int64");
  const c10::cuda::CUDAGuard guard(out.device());
  VAEBM_FAST_CUDA_LAUNCH(philox_normal(to_dtype(out.scalar_type(), "philox_normal_"),
                                       out.mutable_data_ptr(), out.numel(),
                                       static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                       current_stream()));
}

// out [B, *] (contiguous, floating): out[b].flatten()[j] = normal number offset + j of row
// stream first_row + b.
void philox_normal_rows_cuda(const at::Tensor& out, int64_t seed, int64_t offset,
                             int64_t first_row) {
  check_cuda(out, "philox_normal_rows_", "out");
  TORCH_CHECK(out.is_contiguous(), "philox_normal_rows_: out must be contiguous");
  TORCH_CHECK(out.dim() >= 1, "philox_normal_rows_: out must have dim >= 1 (rows along dim 0)");
  TORCH_CHECK(is_kernel_dtype(out.scalar_type()), "philox_normal_rows_: the CUDA kernel takes "
              "float16, bfloat16, float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(offset >= 0, "philox_normal_rows_: offset must be >= 0, got ", offset);
  TORCH_CHECK(first_row >= 0, "philox_normal_rows_: first_row must be >= 0, got ", first_row);
  const int64_t rows = out.size(0);
  if (out.numel() == 0) return;
  const int64_t n = out.numel() / rows;
  TORCH_CHECK(n <= std::numeric_limits<int64_t>::max() - offset,
              "philox_normal_rows_: offset + row numel overflows int64");
  const c10::cuda::CUDAGuard guard(out.device());
  VAEBM_FAST_CUDA_LAUNCH(philox_normal_rows(
      to_dtype(out.scalar_type(), "philox_normal_rows_"), out.mutable_data_ptr(), rows, n,
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
      static_cast<uint64_t>(first_row), current_stream()));
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("philox4x32", &vaebm_fast::cuda::philox4x32_cuda);
  m.impl("philox_normal_", &vaebm_fast::cuda::philox_normal_cuda);
  m.impl("philox_normal_rows_", &vaebm_fast::cuda::philox_normal_rows_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
