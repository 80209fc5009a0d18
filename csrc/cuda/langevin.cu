// CUDA kernel of vaebm_fast::langevin_step_ (torch glue: langevin_registration.cpp; reference:
// vaebm_fast/ops/langevin.py; the CPU kernel csrc/cpu/langevin.cpp computes the same thing).
//
// One thread per Philox call: it draws the 4 normals of call c (numbers 4c .. 4c + 3) and
// updates the (up to 4) elements of the concatenated tensor list that use them. Up to
// kMaxTensors tensors go into one launch, their pointers passed by value in kernel parameter
// space, so a list of many small latent groups costs one launch, not one per tensor.
//
// Memory traffic: read t and g, write t (12 bytes per fp32 element), no noise tensor; each
// thread touches 4 consecutive elements, so a warp covers 512 contiguous bytes per array.
// Arithmetic: float for fp32/fp16/bf16 (stored once, rounded to nearest), double for fp64
// with the float32 normals widened; order t - h * (clip(g) + lambda * t) + sigma * xi.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../philox.h"
#include "langevin_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kMaxTensors = 32;
constexpr int kThreads = 256;

struct Chunk {
  int count;
  void* t[kMaxTensors];
  const void* g[kMaxTensors];
  int64_t begin[kMaxTensors + 1];  // element index of each tensor in the whole concatenation
};

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Clamp that lets NaN through, like torch.clamp (fminf/fmaxf would drop it).
template <typename A>
__device__ __forceinline__ A clamp_nan(A x, A lo, A hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
langevin_kernel(Chunk chunk, int64_t first_call, int64_t n_calls, LangevinArgs args) {
  using A = typename Acc<T>::type;
  const A h = static_cast<A>(args.half_step), lam = static_cast<A>(args.prior_weight);
  const A sig = static_cast<A>(args.sigma);
  const A clip = static_cast<A>(args.clip), lo = static_cast<A>(args.low);
  const A hi = static_cast<A>(args.high);
  const int64_t chunk_begin = chunk.begin[0], chunk_end = chunk.begin[chunk.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_calls;
       i += stride) {
    const uint64_t call = static_cast<uint64_t>(first_call + i);
    float xi[4];
    philox::normals4(philox::philox_call(args.seed, call), xi);
    // Element k (in the concatenation) of lane j uses normal 4 call + j = offset + k.
    const int64_t k0 = static_cast<int64_t>(4 * call - args.offset);
    // Tensor holding the first of these elements: largest j with begin[j] <= k (binary
    // search over the chunk's <= 32 tensors; empty tensors are skipped by "largest").
    const int64_t k_first = k0 < chunk_begin ? chunk_begin : k0;
    int tensor = 0, above = chunk.count;
    while (above - tensor > 1) {
      const int mid = (tensor + above) / 2;
      if (chunk.begin[mid] <= k_first) tensor = mid; else above = mid;
    }
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t k = k0 + lane;
      if (k < chunk_begin || k >= chunk_end) continue;
      while (k >= chunk.begin[tensor + 1]) ++tensor;  // next tensor (past empty ones)
      const int64_t local = k - chunk.begin[tensor];
      T* t = static_cast<T*>(chunk.t[tensor]) + local;
      const A g = clamp_nan(load_acc(static_cast<const T*>(chunk.g[tensor]) + local), -clip, clip);
      const A x = load_acc(t);
      store(t, clamp_nan(x - h * (g + lam * x) + sig * static_cast<A>(xi[lane]), lo, hi));
    }
  }
}

template <typename T>
cudaError_t launch(int64_t n_tensors, void* const* tensors, const void* const* grads,
                   const int64_t* numels, const LangevinArgs& args, cudaStream_t stream) {
  int64_t position = 0;  // element index of tensors[i] in the concatenation
  for (int64_t first = 0; first < n_tensors; first += kMaxTensors) {
    Chunk chunk;
    const int64_t left = n_tensors - first;
    chunk.count = static_cast<int>(left < kMaxTensors ? left : kMaxTensors);
    for (int j = 0; j < chunk.count; ++j) {
      chunk.t[j] = tensors[first + j];
      chunk.g[j] = grads[first + j];
      chunk.begin[j] = position;
      position += numels[first + j];
    }
    chunk.begin[chunk.count] = position;
    const int64_t elements = position - chunk.begin[0];
    if (elements == 0) continue;
    // Calls whose normals fall in [offset + begin, offset + end).
    const int64_t m_first = static_cast<int64_t>(args.offset) + chunk.begin[0];
    const int64_t first_call = m_first / 4;
    const int64_t n_calls = (m_first + elements - 1) / 4 - first_call + 1;
    const int64_t blocks_needed = (n_calls + kThreads - 1) / kThreads;
    constexpr int64_t kMaxBlocks = 65535 * 16;  // the grid-stride loop covers the rest
    const unsigned blocks =
        static_cast<unsigned>(blocks_needed < kMaxBlocks ? blocks_needed : kMaxBlocks);
    langevin_kernel<T><<<blocks, kThreads, 0, stream>>>(chunk, first_call, n_calls, args);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t langevin_step(Dtype dtype, int64_t n_tensors, void* const* tensors,
                          const void* const* grads, const int64_t* numels,
                          const LangevinArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch<float>(n_tensors, tensors, grads, numels, args, stream);
    case Dtype::kFloat64: return launch<double>(n_tensors, tensors, grads, numels, args, stream);
    case Dtype::kFloat16: return launch<__half>(n_tensors, tensors, grads, numels, args, stream);
    case Dtype::kBFloat16:
      return launch<__nv_bfloat16>(n_tensors, tensors, grads, numels, args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vaebm_fast
