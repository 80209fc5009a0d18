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
//
// Optional half_sq_norm [B] (every tensor has B rows along dim 0): 0.5 sum_i ||t_i[b]||^2 of
// the stored (rounded) new values. The launcher zeroes it with cudaMemsetAsync; each thread
// sums the squares of its elements per row (flushing a row with atomicAdd when its 4 elements
// cross into the next row), then the warp adds its lanes' sums with shuffles when they all
// belong to one row (the common case: rows are >= 128 elements) and one lane issues a single
// atomicAdd, else every lane adds its own. No extra memory traffic beyond ~1 atomic per 128
// elements; the sums' order varies run to run (atomics), so they agree to rounding only.
#include "../philox.h"
#include "device_utils.cuh"
#include "langevin_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kMaxTensors = 32;
constexpr int kThreads = 256;

// 8 + 32 * 8 * 3 + 33 * 8 = 1040 bytes of kernel parameter space.
struct Chunk {
  int count;
  void* t[kMaxTensors];
  const void* g[kMaxTensors];
  int64_t begin[kMaxTensors + 1];  // element index of each tensor in the whole concatenation
  int64_t row[kMaxTensors];        // elements per row (numel / B); used with half_sq_norm only
};

// Clamp that lets NaN through, like torch.clamp (fminf/fmaxf would drop it).
template <typename A>
__device__ __forceinline__ A clamp_nan(A x, A lo, A hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Adds 0.5 s to norm[b] for every lane with b >= 0 (lanes without elements: b = -1, s = 0).
// Called by all 32 lanes of the warp.
template <typename A>
__device__ __forceinline__ void add_rows(A* norm, int64_t b, A s) {
  const unsigned has = __ballot_sync(dev::kFullMask, b >= 0);
  if (has == 0) return;  // warp-uniform
  const int leader = __ffs(has) - 1;
  const long long b_lead = __shfl_sync(dev::kFullMask, static_cast<long long>(b), leader);
  if (__all_sync(dev::kFullMask, b < 0 || b == b_lead)) {
    s = dev::warp_sum(s);
    if (static_cast<int>(threadIdx.x % dev::kWarpSize) == leader) {
      atomicAdd(norm + b_lead, A(0.5) * s);
    }
  } else if (b >= 0) {
    atomicAdd(norm + b, A(0.5) * s);
  }
}

template <typename T, bool kNorm>
__global__ void __launch_bounds__(kThreads)
langevin_kernel(Chunk chunk, int64_t first_call, int64_t n_calls, LangevinArgs args,
                dev::Acc<T>* __restrict__ norm) {
  using A = dev::Acc<T>;
  const A h = static_cast<A>(args.half_step), lam = static_cast<A>(args.prior_weight);
  const A sig = static_cast<A>(args.sigma);
  const A clip = static_cast<A>(args.clip), lo = static_cast<A>(args.low);
  const A hi = static_cast<A>(args.high);
  const int64_t chunk_begin = chunk.begin[0], chunk_end = chunk.begin[chunk.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t lane_id = threadIdx.x % dev::kWarpSize;
  // Whole warps iterate together (the loop tests the warp's first call; the stride is a
  // multiple of 32), so the half_sq_norm warp reduction has every lane; lanes past the end
  // take part with nothing to add.
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i - lane_id < n_calls; i += stride) {
    int64_t row_b = -1;  // kNorm: row of the pending sum, -1 for none
    A row_sum = 0;
    if (i < n_calls) {
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
        const A g =
            clamp_nan(dev::load(static_cast<const T*>(chunk.g[tensor]) + local), -clip, clip);
        const A x = dev::load(t);
        const A updated = x - h * (g + lam * x) + sig * static_cast<A>(xi[lane]);
        const T stored = dev::from_acc<T>(clamp_nan(updated, lo, hi));
        *t = stored;
        if constexpr (kNorm) {
          const int64_t b = dev::div64(local, chunk.row[tensor]);
          if (b != row_b) {
            if (row_b >= 0) atomicAdd(norm + row_b, A(0.5) * row_sum);
            row_b = b;
            row_sum = 0;
          }
          const A r = dev::to_acc(stored);
          row_sum += r * r;
        }
      }
    }
    if constexpr (kNorm) add_rows(norm, row_b, row_sum);
  }
}

template <typename T>
cudaError_t launch(int64_t n_tensors, void* const* tensors, const void* const* grads,
                   const int64_t* numels, const LangevinArgs& args, void* half_sq_norm,
                   int64_t batch, cudaStream_t stream) {
  using A = dev::Acc<T>;
  A* norm = static_cast<A*>(half_sq_norm);
  if (norm != nullptr && batch > 0) {
    const cudaError_t err =
        cudaMemsetAsync(norm, 0, static_cast<size_t>(batch) * sizeof(A), stream);
    if (err != cudaSuccess) return err;
  }
  int64_t position = 0;  // element index of tensors[i] in the concatenation
  for (int64_t first = 0; first < n_tensors; first += kMaxTensors) {
    Chunk chunk;
    const int64_t left = n_tensors - first;
    chunk.count = static_cast<int>(left < kMaxTensors ? left : kMaxTensors);
    for (int j = 0; j < chunk.count; ++j) {
      chunk.t[j] = tensors[first + j];
      chunk.g[j] = grads[first + j];
      chunk.begin[j] = position;
      chunk.row[j] = batch > 0 ? numels[first + j] / batch : 0;
      position += numels[first + j];
    }
    chunk.begin[chunk.count] = position;
    const int64_t elements = position - chunk.begin[0];
    if (elements == 0) continue;
    // Calls whose normals fall in [offset + begin, offset + end).
    const int64_t m_first = static_cast<int64_t>(args.offset) + chunk.begin[0];
    const int64_t first_call = m_first / 4;
    const int64_t n_calls = (m_first + elements - 1) / 4 - first_call + 1;
    const unsigned blocks = dev::grid_for(n_calls, kThreads);
    if (norm != nullptr) {
      langevin_kernel<T, true><<<blocks, kThreads, 0, stream>>>(chunk, first_call, n_calls,
                                                                args, norm);
    } else {
      langevin_kernel<T, false><<<blocks, kThreads, 0, stream>>>(chunk, first_call, n_calls,
                                                                 args, nullptr);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t langevin_step(Dtype dtype, int64_t n_tensors, void* const* tensors,
                          const void* const* grads, const int64_t* numels,
                          const LangevinArgs& args, void* half_sq_norm, int64_t batch,
                          cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch<T>(n_tensors, tensors, grads, numels, args, half_sq_norm, batch, stream);
  });
}

}  // namespace cuda
}  // namespace vaebm_fast
