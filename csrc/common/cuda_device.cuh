// Device-side helpers shared by every csrc/<op>/cuda.cu (nvcc only, no torch): accumulation
// types, rounding loads/stores, aligned vector packs, warp/block reductions, 64-bit division
// with a 32-bit fast path, grid sizing and the type dispatch of the launchers.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_types.h"

namespace vaebm_fast {
namespace cuda {
namespace dev {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Accumulation / compute type: float for float, half and bfloat16; double for double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using Acc = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round an accumulator value to T (nearest even).
template <typename T> __device__ __forceinline__ T from_acc(Acc<T> x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
// A float32 normal as T (widened for double).
template <typename T> __device__ __forceinline__ T from_float(float x) {
  return from_acc<T>(static_cast<Acc<T>>(x));
}
// The value x has once stored as T, in Acc<T> (the identity for float and double).
template <typename T> __device__ __forceinline__ Acc<T> rounded(Acc<T> x) {
  return to_acc(from_acc<T>(x));
}

template <typename T> __device__ __forceinline__ Acc<T> load(const T* p) { return to_acc(*p); }
template <typename T> __device__ __forceinline__ void store(T* p, Acc<T> x) { *p = from_acc<T>(x); }

// N elements of T as one aligned memory access (N * sizeof(T) = 4, 8, 16 or 32 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& x) {
  *reinterpret_cast<Pack<T, N>*>(p) = x;
}
// Elements per 16-byte vector: 4 float, 2 double, 8 half / bfloat16.
template <typename T> constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// sigmoid(x) = 1 / (1 + exp(-x)); full-precision expf / exp (no fast-math intrinsics).
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// Sum over the 32 lanes of a warp (every lane gets the total; all lanes must call it).
template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(kFullMask, x, offset);
  }
  return x;
}

// Sum over a block of kWarps warps; every thread gets the total, in the same (deterministic)
// order. `scratch` is shared memory of kWarps elements; every thread must call it.
template <int kWarps, typename A>
__device__ __forceinline__ A block_sum(A x, A* scratch) {
  x = warp_sum(x);
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) scratch[warp] = x;
  __syncthreads();
  A total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused right after
  return total;
}

// a / b and a % b for 0 <= a, 0 < b; 32-bit hardware-friendly division when both fit.
__device__ __forceinline__ int64_t div64(int64_t a, int64_t b) {
  if (((a | b) >> 32) == 0) {
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  }
  return a / b;
}

// Grid for a grid-stride loop over `work` items with `threads` threads per block: enough
// blocks for one item per thread, capped (the loop covers the rest). At least one block.
inline unsigned grid_for(int64_t work, int threads) {
  constexpr int64_t kMaxBlocks = 65535LL * 16;
  int64_t blocks = (work + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Stores the 4 values of a "Philox unit": elements e0 .. e0 + 3 of an n-element array, where
// e0 = 4 * call - offset may lie partly outside [0, n) at the two ends of the range. Interior
// units go out as one 4-element vector store when `vec_ok` (the host checked that
// out + e0 is 4 * sizeof(T)-aligned for every unit, i.e. out - offset % 4 is), else one
// scalar store per in-range element.
template <typename T>
__device__ __forceinline__ void store_unit4(T* out, int64_t e0, int64_t n, const T (&v)[4],
                                            bool vec_ok) {
  if (vec_ok && e0 >= 0 && e0 + 4 <= n) {
    Pack<T, 4> p;
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) p.v[lane] = v[lane];
    store_pack<T, 4>(out + e0, p);
    return;
  }
#pragma unroll
  for (int lane = 0; lane < 4; ++lane) {
    const int64_t e = e0 + lane;
    if (e >= 0 && e < n) out[e] = v[lane];
  }
}

// Host side of store_unit4's vec_ok: out - (offset % 4) elements is 4 * sizeof(T)-aligned.
template <typename T>
inline bool unit4_aligned(const T* out, uint64_t offset) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(out) - (offset % 4) * sizeof(T);
  return base % (4 * sizeof(T)) == 0;
}

}  // namespace dev

// Calls f(T{}) with T the element type of `dtype` (float, double, __half, __nv_bfloat16) and
// returns its cudaError_t.
template <typename F>
cudaError_t dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32: return f(float{});
    case Dtype::kFloat64: return f(double{});
    case Dtype::kFloat16: return f(__half{});
    case Dtype::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vaebm_fast
