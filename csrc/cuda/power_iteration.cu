// CUDA kernel of vaebm_fast::power_iteration_ and vaebm_fast::spectral_norms_ (torch glue:
// power_iteration_registration.cpp; reference: _power_iteration_eager in
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
#include "device_utils.cuh"
#include "power_iteration_cuda.h"

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
