// CUDA kernel of vaebm_fast::langevin_step_ (torch glue: the end of this file; reference:
// vaebm_fast/ops/langevin.py; the CPU kernel csrc/langevin/cpu.cpp computes the same thing).
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
// Row mode (first_row >= 0; every tensor has B rows): one thread per (row b, call c) of the
// chunk's per-row concatenation, drawing from row stream first_row + b (counter words 2, 3 =
// first_row + b + 1). Still one Philox call per 4 normals; per (row, chunk) at most one partly
// used call at each end, plus one 64-bit division per thread (32-bit when the sizes fit).
//
// Optional half_sq_norm [B] (every tensor has B rows along dim 0): 0.5 sum_i ||t_i[b]||^2 of
// the stored (rounded) new values. The launcher zeroes it with cudaMemsetAsync; each thread
// sums the squares of its elements per row (flushing a row with atomicAdd when its 4 elements
// cross into the next row), then the warp adds its lanes' sums with shuffles when they all
// belong to one row (the common case: rows are >= 128 elements) and one lane issues a single
// atomicAdd, else every lane adds its own. No extra memory traffic beyond ~1 atomic per 128
// elements; the sums' order varies run to run (atomics), so they agree to rounding only.
#include "../common/philox.h"
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
namespace vaebm_fast {
namespace cuda {

// The update t <- clamp(t - half_step (clamp(g, -clip, clip) + prior_weight t) + sigma xi,
// low, high); absent clip / clamp are +-inf. Flat mode (first_row < 0): element k of the
// concatenation of the tensors uses normal number offset + k of the Philox stream for seed.
// Row mode (first_row >= 0): every tensor has `rows` rows (dim 0), and element j of row b of
// tensor i uses normal offset + (sum of the per-row numels of tensors < i) + j of row stream
// first_row + b.
struct LangevinArgs {
  double half_step;
  double prior_weight;
  double sigma;
  double clip;
  double low;
  double high;
  uint64_t seed;
  uint64_t offset;
  int64_t first_row;  // < 0: flat mode
  int64_t rows;       // B in row mode (ignored in flat mode)
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
  // Element index of each tensor in the whole concatenation (row mode: in the concatenation
  // of the tensors' rows, i.e. a row's normal number minus offset).
  int64_t begin[kMaxTensors + 1];
  int64_t row[kMaxTensors];  // elements per row (numel / B); for half_sq_norm and row mode
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
langevin_kernel(Chunk chunk, int64_t first_call, int64_t n_calls, int64_t n_rows,
                LangevinArgs args, dev::Acc<T>* __restrict__ norm) {
  using A = dev::Acc<T>;
  const A h = static_cast<A>(args.half_step), lam = static_cast<A>(args.prior_weight);
  const A sig = static_cast<A>(args.sigma);
  const A clip = static_cast<A>(args.clip), lo = static_cast<A>(args.low);
  const A hi = static_cast<A>(args.high);
  const int64_t chunk_begin = chunk.begin[0], chunk_end = chunk.begin[chunk.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t lane_id = threadIdx.x % dev::kWarpSize;
  const bool row_mode = args.first_row >= 0;
  const int64_t n_units = n_rows * n_calls;  // (row, call) pairs; flat mode: n_rows = 1
  // Whole warps iterate together (the loop tests the warp's first unit; the stride is a
  // multiple of 32), so the half_sq_norm warp reduction has every lane; lanes past the end
  // take part with nothing to add.
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i - lane_id < n_units; i += stride) {
    int64_t row_b = -1;  // kNorm: row of the pending sum, -1 for none
    A row_sum = 0;
    if (i < n_units) {
      const int64_t b = row_mode ? dev::div64(i, n_calls) : 0;  // row of this unit
      const uint64_t call = static_cast<uint64_t>(first_call + (i - b * n_calls));
      const uint64_t stream = row_mode ? static_cast<uint64_t>(args.first_row + b) + 1 : 0;
      float xi[4];
      philox::normals4(philox::philox_call(args.seed, call, stream), xi);
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
        const int64_t local = b * chunk.row[tensor] + (k - chunk.begin[tensor]);
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
  const bool row_mode = args.first_row >= 0;
  const int64_t n_rows = row_mode ? args.rows : 1;
  if (n_rows <= 0) return cudaSuccess;
  // Row length of each tensor: numel / B (row mode, or flat mode with half_sq_norm).
  const int64_t row_div = row_mode ? args.rows : batch;
  int64_t position = 0;  // element index of tensors[i] in the (per-row) concatenation
  for (int64_t first = 0; first < n_tensors; first += kMaxTensors) {
    Chunk chunk;
    const int64_t left = n_tensors - first;
    chunk.count = static_cast<int>(left < kMaxTensors ? left : kMaxTensors);
    for (int j = 0; j < chunk.count; ++j) {
      chunk.t[j] = tensors[first + j];
      chunk.g[j] = grads[first + j];
      chunk.begin[j] = position;
      chunk.row[j] = row_div > 0 ? numels[first + j] / row_div : 0;
      position += row_mode ? chunk.row[j] : numels[first + j];
    }
    chunk.begin[chunk.count] = position;
    const int64_t elements = position - chunk.begin[0];
    if (elements == 0) continue;
    // Calls whose normals fall in [offset + begin, offset + end).
    const int64_t m_first = static_cast<int64_t>(args.offset) + chunk.begin[0];
    const int64_t first_call = m_first / 4;
    const int64_t n_calls = (m_first + elements - 1) / 4 - first_call + 1;
    const unsigned blocks = dev::grid_for(n_rows * n_calls, kThreads);
    if (norm != nullptr) {
      langevin_kernel<T, true><<<blocks, kThreads, 0, stream>>>(chunk, first_call, n_calls,
                                                                n_rows, args, norm);
    } else {
      langevin_kernel<T, false><<<blocks, kThreads, 0, stream>>>(chunk, first_call, n_calls,
                                                                 n_rows, args, nullptr);
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

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA Langevin kernel: argument checks, streams, contiguity, registration
// (kernel and launcher: above). Mirrors csrc/langevin/cpu.cpp.
#include <limits>
#include <optional>
#include <vector>

#include <torch/library.h>

#include "checks.h"
#include "../common/cuda_glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

void langevin_step_cuda(at::TensorList tensors, at::TensorList grads, double step_size,
                        int64_t seed, int64_t offset, double prior_weight, double noise_scale,
                        std::optional<double> grad_clip, std::optional<double> clamp_low,
                        std::optional<double> clamp_high,
                        const std::optional<at::Tensor>& half_sq_norm,
                        std::optional<int64_t> first_row) {
  // No tensors: nothing to do, half_sq_norm untouched (as the CPU kernel).
  if (!check_langevin_args(tensors, grads, offset)) return;
  const at::Device device = tensors[0].device();
  check_cuda(tensors[0], "langevin_step_", "tensors[0]");
  const at::ScalarType dtype = tensors[0].scalar_type();
  const int64_t batch = check_half_sq_norm(tensors, half_sq_norm);
  const int64_t row_batch = check_langevin_rows(tensors, first_row);  // -1: flat mode
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> work(tensors.size()), grad(tensors.size());
  std::vector<void*> t_ptr(tensors.size());
  std::vector<const void*> g_ptr(tensors.size());
  std::vector<int64_t> numels(tensors.size());
  int64_t total = 0;  // normals per stream: the total numel, or per row in row mode
  for (size_t i = 0; i < tensors.size(); ++i) {
    work[i] = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    grad[i] = grads[i].contiguous();
    t_ptr[i] = work[i].data_ptr();
    g_ptr[i] = grad[i].const_data_ptr();
    numels[i] = work[i].numel();
    total += row_batch > 0 ? numels[i] / row_batch : numels[i];
  }
  TORCH_CHECK(total <= std::numeric_limits<int64_t>::max() - offset,
              "langevin_step_: offset + numel overflows int64");
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const LangevinArgs args{step_size * 0.5,
                          prior_weight,
                          noise_scale,
                          grad_clip.value_or(kInf),
                          clamp_low.value_or(-kInf),
                          clamp_high.value_or(kInf),
                          static_cast<uint64_t>(seed),
                          static_cast<uint64_t>(offset),
                          first_row.has_value() ? *first_row : -1,
                          row_batch};
  void* norm = half_sq_norm.has_value() ? half_sq_norm->data_ptr() : nullptr;
  VAEBM_FAST_CUDA_LAUNCH(langevin_step(to_dtype(dtype, "langevin_step_"),
                                       static_cast<int64_t>(tensors.size()), t_ptr.data(),
                                       g_ptr.data(), numels.data(), args, norm, batch,
                                       current_stream()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("langevin_step_", &vaebm_fast::cuda::langevin_step_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
