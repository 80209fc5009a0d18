// CUDA kernel of vaebm_fast::power_iteration_ and vaebm_fast::spectral_norms_ (torch glue:
// the end of this file; reference: _power_iteration_eager in
// vaebm_fast/ops/power_iteration.py).
//
// For each matrix W [R, C] (row-major) with its vectors u [R], v [C], n_iter times:
//   v <- normalize(W^T u),  u <- normalize(W v),  normalize(x) = x / max(||x||_2, eps),
// then sigma = u^T W v with the final u and v. As in the reference, each normalised vector is
// rounded to the tensor dtype before it is used again (a no-op for float32 / float64).
//
// One block (256 threads, 8 warps) per matrix; all iterations run inside the kernel, with u
// and v in shared memory (dynamic, (R + C) accumulators) and every reduction deterministic
// (fixed order, no atomics):
//   * W^T u: warps own 32-column tiles, a lane one column, and sum over the rows (coalesced
//     128-byte row segments). When C has fewer than 8 tiles, 8 / tiles warps share a tile, each
//     taking every (8 / tiles)-th row, and their partial sums are added in shared memory.
//   * W v: a warp per row, lanes stride the columns, warp-shuffle reduction.
//   * norms and sigma: warp shuffles, then the 8 warp totals in shared memory.
// sigma needs no extra pass: after the last u update, sigma = sum_r u_r (W v)_r with W v the
// vector just normalised (for n_iter = 0 one W v pass computes it).
//
// Memory traffic per matrix: 2 R C itemsize bytes per iteration (W is read twice; after the
// first pass it is served from L1/L2 when it fits, e.g. a 512 x 4608 fp32 weight is 9 MiB of
// the H200's 60 MiB L2), plus reading and writing u and v once. The work is latency-bound for
// small matrices; its point is replacing 4 n_iter + 3 kernel launches per shape group (bmm,
// norm, div, copy per vector and iteration) with one launch for the whole model.
//
// spectral_norms_: every group of the call goes into one launch (up to 64 groups, described
// by a table of pointers and shapes passed by value in kernel parameter space, so nothing is
// copied to the device); block b finds its group by binary search over the groups' first
// block indices.
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
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


namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / dev::kWarpSize;
constexpr int kMaxGroups = kPowerIterationMaxGroups;

// 64 groups: 8 + 64 * (4 * 8 + 2 * 4) + 65 * 8 = 3088 bytes of the 4 KiB parameter space.
struct Table {
  int count;
  const void* W[kMaxGroups];
  void* u[kMaxGroups];
  void* v[kMaxGroups];
  void* sigma[kMaxGroups];
  int R[kMaxGroups];
  int C[kMaxGroups];
  int64_t begin[kMaxGroups + 1];  // first block (matrix) of each group; begin[count] = total
};

__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }

// max(n, eps) that keeps a NaN norm NaN, like clamp_min in the reference.
template <typename A>
__device__ __forceinline__ A clamp_min_nan(A n, A eps) {
  return n < eps ? eps : n;
}

// sum_c w[c] x[c] over a warp (every lane gets it).
template <typename T, typename A>
__device__ __forceinline__ A warp_row_dot(const T* __restrict__ w, const A* x, int C, int lane) {
  A acc = 0;
#pragma unroll 4
  for (int c = lane; c < C; c += dev::kWarpSize) acc += dev::load(w + c) * x[c];
  return dev::warp_sum(acc);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
power_iteration_kernel(Table table, int64_t n_iter, dev::Acc<T> eps) {
  using A = dev::Acc<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ A partial[kWarps][dev::kWarpSize + 1];
  __shared__ A scratch[kWarps];

  // This block's group: the largest k < count with begin[k] <= block (skips empty groups).
  const int64_t block = blockIdx.x;
  int k = 0, above = table.count;
  while (above - k > 1) {
    const int mid = (k + above) / 2;
    if (table.begin[mid] <= block) k = mid; else above = mid;
  }
  const int R = table.R[k], C = table.C[k];
  const int64_t g = block - table.begin[k];
  const T* __restrict__ W = static_cast<const T*>(table.W[k]) + g * R * C;
  T* u = static_cast<T*>(table.u[k]) + g * R;
  T* v = static_cast<T*>(table.v[k]) + g * C;

  A* u_s = reinterpret_cast<A*>(smem);
  A* v_s = u_s + R;
  const int tid = threadIdx.x, warp = tid / dev::kWarpSize, lane = tid % dev::kWarpSize;
  for (int r = tid; r < R; r += kThreads) u_s[r] = dev::load(u + r);
  for (int c = tid; c < C; c += kThreads) v_s[c] = dev::load(v + c);
  __syncthreads();

  A sigma = 0;
  if (n_iter == 0) {  // sigma = sum_r u_r (W v)_r with the given u, v
    A part = 0;
    for (int r = warp; r < R; r += kWarps) {
      const A wv = warp_row_dot(W + static_cast<int64_t>(r) * C, v_s, C, lane);
      if (lane == 0) part += u_s[r] * wv;
    }
    sigma = dev::block_sum<kWarps>(part, scratch);
  }
  const int tiles = (C + dev::kWarpSize - 1) / dev::kWarpSize;
  for (int64_t it = 0; it < n_iter; ++it) {
    // (1) v_s = W^T u_s (raw), block-uniform choice of the mapping.
    if (tiles >= kWarps) {
      for (int t = warp; t < tiles; t += kWarps) {
        const int c = t * dev::kWarpSize + lane;
        if (c < C) {
          A acc = 0;
#pragma unroll 4
          for (int r = 0; r < R; ++r) {
            acc += u_s[r] * dev::load(W + static_cast<int64_t>(r) * C + c);
          }
          v_s[c] = acc;
        }
      }
    } else if (tiles > 0) {
      const int per_tile = kWarps / tiles;  // warps sharing a tile, each every per_tile-th row
      const int t = warp / per_tile, slice = warp % per_tile;
      const int c = t * dev::kWarpSize + lane;
      A acc = 0;
      if (t < tiles && c < C) {
#pragma unroll 4
        for (int r = slice; r < R; r += per_tile) {
          acc += u_s[r] * dev::load(W + static_cast<int64_t>(r) * C + c);
        }
      }
      partial[warp][lane] = acc;
      __syncthreads();
      if (t < tiles && slice == 0 && c < C) {
        A sum = 0;
        for (int w = 0; w < per_tile; ++w) sum += partial[warp + w][lane];
        v_s[c] = sum;
      }
    }
    __syncthreads();
    // v_s = normalize(v_s), rounded to T.
    A part = 0;
    for (int c = tid; c < C; c += kThreads) part += v_s[c] * v_s[c];
    const A v_den = clamp_min_nan(sqrt_acc(dev::block_sum<kWarps>(part, scratch)), eps);
    for (int c = tid; c < C; c += kThreads) v_s[c] = dev::rounded<T>(v_s[c] / v_den);
    __syncthreads();
    // (2) u_s = W v_s (raw, lane 0 of the row's warp), then normalised; sigma on the way.
    part = 0;
    for (int r = warp; r < R; r += kWarps) {
      const A wv = warp_row_dot(W + static_cast<int64_t>(r) * C, v_s, C, lane);
      if (lane == 0) {
        u_s[r] = wv;
        part += wv * wv;
      }
    }
    const A u_den = clamp_min_nan(sqrt_acc(dev::block_sum<kWarps>(part, scratch)), eps);
    part = 0;
    for (int r = tid; r < R; r += kThreads) {
      const A wv = u_s[r];
      const A un = dev::rounded<T>(wv / u_den);
      part += un * wv;
      u_s[r] = un;
    }
    sigma = dev::block_sum<kWarps>(part, scratch);  // its barriers also publish u_s
  }

  for (int r = tid; r < R; r += kThreads) dev::store(u + r, u_s[r]);
  for (int c = tid; c < C; c += kThreads) dev::store(v + c, v_s[c]);
  if (tid == 0) dev::store(static_cast<T*>(table.sigma[k]) + g, sigma);
}

template <typename T>
constexpr size_t static_smem_bytes() {
  return sizeof(dev::Acc<T>) * (kWarps * (dev::kWarpSize + 1) + kWarps);
}

size_t acc_size(Dtype dtype) { return dtype == Dtype::kFloat64 ? sizeof(double) : sizeof(float); }

template <typename T>
cudaError_t launch(const PowerIterationGroup* groups, int64_t n_groups, int64_t n_iter,
                   double eps, cudaStream_t stream) {
  for (int64_t first = 0; first < n_groups; first += kMaxGroups) {
    Table table;
    const int64_t left = n_groups - first;
    table.count = static_cast<int>(left < kMaxGroups ? left : kMaxGroups);
    int64_t blocks = 0, vec_elems = 0;
    for (int j = 0; j < table.count; ++j) {
      const PowerIterationGroup& grp = groups[first + j];
      table.W[j] = grp.W;
      table.u[j] = grp.u;
      table.v[j] = grp.v;
      table.sigma[j] = grp.sigma;
      table.R[j] = static_cast<int>(grp.R);
      table.C[j] = static_cast<int>(grp.C);
      table.begin[j] = blocks;
      blocks += grp.G;
      if (grp.G > 0 && grp.R + grp.C > vec_elems) vec_elems = grp.R + grp.C;
    }
    table.begin[table.count] = blocks;
    if (blocks == 0) continue;
    const size_t smem = static_cast<size_t>(vec_elems) * sizeof(dev::Acc<T>);
    if (smem > 48 * 1024) {  // beyond the default per-block limit: opt in (host-side only)
      const cudaError_t err = cudaFuncSetAttribute(
          power_iteration_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
          static_cast<int>(smem));
      if (err != cudaSuccess) return err;
    }
    power_iteration_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        table, n_iter, static_cast<dev::Acc<T>>(eps));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t power_iteration_max_vector(Dtype dtype) {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the error: the caller falls back
    return 0;
  }
  const size_t acc = acc_size(dtype);
  const size_t fixed = acc * (kWarps * (dev::kWarpSize + 1) + kWarps);
  if (static_cast<size_t>(optin) <= fixed) return 0;
  return static_cast<int64_t>((static_cast<size_t>(optin) - fixed) / acc);
}

cudaError_t power_iteration(Dtype dtype, const PowerIterationGroup* groups, int64_t n_groups,
                            int64_t n_iter, double eps, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    static_assert(static_smem_bytes<T>() < 4096, "static shared memory");
    return launch<T>(groups, n_groups, n_iter, eps, stream);
  });
}

}  // namespace cuda
}  // namespace vaebm_fast

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA power-iteration kernel (the kernels above):
// argument checks (checks.h, shared with the CPU kernel), contiguous
// work copies of u / v copied back when the caller's are strided, one launch for all groups of
// a call (one dtype), and an ATen fallback for matrices whose u and v do not fit in shared
// memory (R + C beyond ~56k float32 on H100/H200), which no model here comes near.
#include <vector>

#include <torch/library.h>

#include "checks.h"
#include "../common/cuda_glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

struct Work {
  at::Tensor W, u, v, sigma;  // contiguous: what the kernel reads and writes
};

// The reference's loop in ATen ops, for shapes the kernel cannot take.
void power_iteration_aten(const Work& w, int64_t n_iter, double eps) {
  for (int64_t it = 0; it < n_iter; ++it) {
    const at::Tensor nv = at::bmm(w.u.unsqueeze(1), w.W).squeeze(1);
    w.v.copy_(nv / nv.norm(2, {1}, true).clamp_min(eps));
    const at::Tensor nu = at::bmm(w.v.unsqueeze(1), w.W.transpose(1, 2)).squeeze(1);
    w.u.copy_(nu / nu.norm(2, {1}, true).clamp_min(eps));
  }
  w.sigma.copy_(at::einsum("gr,grc,gc->g", {w.u, w.W, w.v}));
}

// Runs every group (checked; one dtype for all, as the CPU kernel) and returns the sigmas of all
// groups concatenated, [G_1 + ... + G_K]; u / v updated in place.
at::Tensor run(const char* op, at::TensorList Ws, at::TensorList us, at::TensorList vs,
               int64_t n_iter, double eps) {
  const int64_t total = check_power_iteration_args(op, Ws, us, vs, n_iter);
  if (Ws.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kFloat));
  check_floating(Ws[0], op, "W");
  const c10::cuda::CUDAGuard guard(Ws[0].device());
  const Dtype dtype = to_dtype(Ws[0].scalar_type(), op);
  const int64_t max_vector = power_iteration_max_vector(dtype);
  const at::Tensor sigmas = empty_contiguous({total}, Ws[0]);
  std::vector<Work> work(Ws.size());
  std::vector<PowerIterationGroup> launch;  // the groups the kernel takes, one launch
  int64_t first = 0;
  for (size_t k = 0; k < Ws.size(); ++k) {
    Work& w = work[k];
    w.W = Ws[k].contiguous();
    w.u = us[k].is_contiguous() ? us[k] : us[k].contiguous();
    w.v = vs[k].is_contiguous() ? vs[k] : vs[k].contiguous();
    w.sigma = sigmas.narrow(0, first, Ws[k].size(0));  // a contiguous slice
    first += Ws[k].size(0);
    const int64_t G = w.W.size(0), R = w.W.size(1), C = w.W.size(2);
    if (G == 0) continue;
    if (R + C <= max_vector) {
      launch.push_back(PowerIterationGroup{w.W.const_data_ptr(), w.u.mutable_data_ptr(),
                                           w.v.mutable_data_ptr(), w.sigma.mutable_data_ptr(),
                                           G, R, C});
    } else {
      power_iteration_aten(w, n_iter, eps);
    }
  }
  if (!launch.empty()) {
    VAEBM_FAST_CUDA_LAUNCH(power_iteration(dtype, launch.data(),
                                           static_cast<int64_t>(launch.size()), n_iter, eps,
                                           current_stream()));
  }
  for (size_t k = 0; k < Ws.size(); ++k) {
    if (!work[k].u.is_same(us[k])) us[k].copy_(work[k].u);
    if (!work[k].v.is_same(vs[k])) vs[k].copy_(work[k].v);
  }
  return sigmas;
}

at::Tensor power_iteration_cuda(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                                int64_t n_iter, double eps) {
  return run("power_iteration_", {W}, {u}, {v}, n_iter, eps);
}

at::Tensor spectral_norms_cuda(at::TensorList Ws, at::TensorList us, at::TensorList vs,
                               int64_t n_iter, double eps) {
  return run("spectral_norms_", Ws, us, vs, n_iter, eps);
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("power_iteration_", &vaebm_fast::cuda::power_iteration_cuda);
  m.impl("spectral_norms_", &vaebm_fast::cuda::spectral_norms_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
