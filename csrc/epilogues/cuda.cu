// CUDA kernels of the fused epilogue ops (torch glue: the end of this file; references:
// vaebm_fast/ops/epilogues.py). NCHW tensors, read as contiguous arrays; outputs new and
// contiguous. float16 / bfloat16 / float32 computed in float32 and rounded once when stored,
// float64 in float64. Element-wise kernels move 16-byte vectors (4 float, 2 double, 8 half)
// when the pointers and the plane / channel length allow it, scalars otherwise; every index is
// int64 (tensors may exceed 2^31 elements). lipswish(p) = p sigmoid(p) / 1.1 and
// lipswish'(p) = (s + p s (1 - s)) / 1.1, s = sigmoid(p); swish' likewise without the 1.1.
//
// ebm_block_tail(h, skip, downsample) -> (out, pre)
//   pre = h + skip, out = lipswish(pre): element-wise; reads h, skip, writes out, pre
//     (4 itemsize per element: 16 bytes fp32).
//   downsample: pre = 2x2 average of h + skip, one thread per output element reading its 2x2
//     windows of h and skip as two 2-element rows each; 8 reads + 2 writes per output element
//     (10 bytes per input element fp32).
// ebm_block_tail_backward(grad, pre, downsample) -> d
//   ds = grad * lipswish'(pre); d = ds (reads 2, writes 1 itemsize per element: 12 bytes fp32),
//   or with downsample d[2i + a, 2j + b] = ds[i, j] / 4, one thread per pre element writing
//   two 2-element rows (2 reads + 4 writes per pre element: 24 bytes fp32).
// nvae_cell_tail(skip, h, gate, scale) -> skip + scale * (h * gate[b, c])
//   element-wise, gate looked up per plane (L1-resident); 3 itemsize per element (12 bytes).
// nvae_cell_tail_backward(grad, h, gate, scale) -> (dh = grad * (scale gate[b, c]),
//   dgate[b, c] = scale sum_hw grad * h): one warp per (b, c) plane streaming it, warp-shuffle
//   sum, no atomics (deterministic); reads grad, h, writes dh: 12 bytes per element fp32.
// affine_swish(x, scale, shift) -> swish(x scale[c] + shift[c]), c = dim 1: element-wise,
//   8 bytes per element fp32.
// affine_swish_backward(grad, x, scale, shift) -> (dx, dscale, dshift): one pass computing dx
//   and per-(channel, split) partial sums of grad swish'(a) x and grad swish'(a) (block
//   reduction into a workspace), then one warp per channel adds its splits in a fixed order
//   (deterministic, no atomics). Reads grad, x, writes dx: 12 bytes per element fp32, plus
//   2 C splits accumulators written and read once.
#include "../common/constants.h"
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
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


namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / dev::kWarpSize;

template <typename A>
__device__ __forceinline__ A swish_grad(A a) {  // d/da a sigmoid(a)
  const A s = dev::sigmoid(a);
  return s + a * s * (A(1) - s);
}

// ---------------------------------------------------------------- element-wise framework
// op.template apply<W>(e) handles elements e .. e + W - 1 (W = V in the vector loop, 1 for the
// n % V tail). With V > 1 the host guarantees 16-byte alignment of every array at element
// multiples of V and that no vector crosses a plane / channel boundary.
template <int V, typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(int64_t n, Op op) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n_vec = n / V;
  for (int64_t i = tid; i < n_vec; i += stride) op.template apply<V>(i * V);
  if (V > 1 && n_vec * V + tid < n) op.template apply<1>(n_vec * V + tid);
}

template <typename T, typename Op>
cudaError_t launch_elementwise(int64_t n, bool vec_ok, const Op& op, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int V = dev::kVec16<T>;
  if (vec_ok) {
    elementwise_kernel<V, Op><<<dev::grid_for(n / V, kThreads), kThreads, 0, stream>>>(n, op);
  } else {
    elementwise_kernel<1, Op><<<dev::grid_for(n, kThreads), kThreads, 0, stream>>>(n, op);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------- ebm_block_tail
template <typename T>
struct EbmTail {
  const T* __restrict__ h;
  const T* __restrict__ skip;
  T* __restrict__ out;
  T* __restrict__ pre;
  template <int W>
  __device__ __forceinline__ void apply(int64_t e) const {
    using A = dev::Acc<T>;
    const dev::Pack<T, W> hv = dev::load_pack<T, W>(h + e), sv = dev::load_pack<T, W>(skip + e);
    dev::Pack<T, W> o, p;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const A x = dev::to_acc(hv.v[j]) + dev::to_acc(sv.v[j]);
      p.v[j] = dev::from_acc<T>(x);
      o.v[j] = dev::from_acc<T>((x * dev::sigmoid(x)) * static_cast<A>(kLipSwishScale));
    }
    dev::store_pack<T, W>(pre + e, p);
    dev::store_pack<T, W>(out + e, o);
  }
};

// One thread per output element q of planes x Ho x Wo; the window's rows start at input
// element (plane * 2 Ho + 2 i) * 2 Wo + 2 j (even, so 2-element loads are aligned when the
// base pointers are 2 * itemsize aligned: kPair).
template <typename T, bool kPair>
__global__ void __launch_bounds__(kThreads)
ebm_tail_pool_kernel(const T* __restrict__ h, const T* __restrict__ skip, T* __restrict__ out,
                     T* __restrict__ pre, int64_t n_out, int64_t Ho, int64_t Wo) {
  using A = dev::Acc<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n_out;
       q += stride) {
    const int64_t row = dev::div64(q, Wo);  // plane * Ho + i
    const int64_t j = q - row * Wo;
    const int64_t top = (2 * row) * (2 * Wo) + 2 * j;  // (plane * 2 Ho + 2 i) * 2 Wo + 2 j
    const int64_t bottom = top + 2 * Wo;
    A sum;
    if constexpr (kPair) {
      const dev::Pack<T, 2> h0 = dev::load_pack<T, 2>(h + top);
      const dev::Pack<T, 2> h1 = dev::load_pack<T, 2>(h + bottom);
      const dev::Pack<T, 2> s0 = dev::load_pack<T, 2>(skip + top);
      const dev::Pack<T, 2> s1 = dev::load_pack<T, 2>(skip + bottom);
      const A x00 = dev::to_acc(h0.v[0]) + dev::to_acc(s0.v[0]);
      const A x01 = dev::to_acc(h0.v[1]) + dev::to_acc(s0.v[1]);
      const A x10 = dev::to_acc(h1.v[0]) + dev::to_acc(s1.v[0]);
      const A x11 = dev::to_acc(h1.v[1]) + dev::to_acc(s1.v[1]);
      sum = (x00 + x01) + (x10 + x11);
    } else {
      sum = ((dev::load(h + top) + dev::load(skip + top)) +
             (dev::load(h + top + 1) + dev::load(skip + top + 1))) +
            ((dev::load(h + bottom) + dev::load(skip + bottom)) +
             (dev::load(h + bottom + 1) + dev::load(skip + bottom + 1)));
    }
    const A p = sum * A(0.25);
    dev::store(pre + q, p);
    dev::store(out + q, (p * dev::sigmoid(p)) * static_cast<A>(kLipSwishScale));
  }
}

// ---------------------------------------------------------------- ebm_block_tail_backward
template <typename T>
struct EbmTailBackward {
  const T* __restrict__ grad;
  const T* __restrict__ pre;
  T* __restrict__ d;
  template <int W>
  __device__ __forceinline__ void apply(int64_t e) const {
    using A = dev::Acc<T>;
    const dev::Pack<T, W> gv = dev::load_pack<T, W>(grad + e), pv = dev::load_pack<T, W>(pre + e);
    dev::Pack<T, W> o;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const A lip_d = static_cast<A>(kLipSwishScale) * swish_grad(dev::to_acc(pv.v[j]));
      o.v[j] = dev::from_acc<T>(dev::to_acc(gv.v[j]) * lip_d);
    }
    dev::store_pack<T, W>(d + e, o);
  }
};

// One thread per pre element q; d is a new contiguous [planes, 2 Ho, 2 Wo] array, so its
// 2-element rows at even offsets are always aligned.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ebm_tail_unpool_kernel(const T* __restrict__ grad, const T* __restrict__ pre, T* __restrict__ d,
                       int64_t n_pre, int64_t Wo) {
  using A = dev::Acc<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n_pre;
       q += stride) {
    const A lip_d = static_cast<A>(kLipSwishScale) * swish_grad(dev::load(pre + q));
    const T v = dev::from_acc<T>((dev::load(grad + q) * lip_d) * A(0.25));
    const int64_t row = dev::div64(q, Wo);
    const int64_t j = q - row * Wo;
    const int64_t top = (2 * row) * (2 * Wo) + 2 * j;
    dev::Pack<T, 2> pair;
    pair.v[0] = v;
    pair.v[1] = v;
    dev::store_pack<T, 2>(d + top, pair);
    dev::store_pack<T, 2>(d + top + 2 * Wo, pair);
  }
}

// ---------------------------------------------------------------- nvae_cell_tail
template <typename T>
struct NvaeTail {
  const T* __restrict__ skip;
  const T* __restrict__ h;
  const T* __restrict__ gate;
  T* __restrict__ out;
  int64_t HW;
  dev::Acc<T> scale;
  template <int W>
  __device__ __forceinline__ void apply(int64_t e) const {
    using A = dev::Acc<T>;
    const A g = dev::load(gate + dev::div64(e, HW));  // one plane per vector (HW % W == 0)
    const dev::Pack<T, W> sv = dev::load_pack<T, W>(skip + e), hv = dev::load_pack<T, W>(h + e);
    dev::Pack<T, W> o;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      o.v[j] = dev::from_acc<T>(dev::to_acc(sv.v[j]) + scale * (dev::to_acc(hv.v[j]) * g));
    }
    dev::store_pack<T, W>(out + e, o);
  }
};

// One warp per plane (grid-stride over planes); V elements per lane access.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
nvae_tail_backward_kernel(const T* __restrict__ grad, const T* __restrict__ h,
                          const T* __restrict__ gate, T* __restrict__ dh, T* __restrict__ dgate,
                          int64_t planes, int64_t HW, dev::Acc<T> scale) {
  using A = dev::Acc<T>;
  const int lane = threadIdx.x % dev::kWarpSize;
  const int64_t warp =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / dev::kWarpSize;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / dev::kWarpSize;
  const int64_t hw_vec = HW / V;
  for (int64_t plane = warp; plane < planes; plane += n_warps) {  // warp-uniform loop
    const A g = scale * dev::load(gate + plane);
    const int64_t base = plane * HW;
    A acc = 0;
    for (int64_t i = lane; i < hw_vec; i += dev::kWarpSize) {
      const dev::Pack<T, V> gv = dev::load_pack<T, V>(grad + base + i * V);
      const dev::Pack<T, V> hv = dev::load_pack<T, V>(h + base + i * V);
      dev::Pack<T, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A gr = dev::to_acc(gv.v[j]);
        o.v[j] = dev::from_acc<T>(gr * g);
        acc += gr * dev::to_acc(hv.v[j]);
      }
      dev::store_pack<T, V>(dh + base + i * V, o);
    }
    acc = dev::warp_sum(acc);
    if (lane == 0) dev::store(dgate + plane, scale * acc);
  }
}

// ---------------------------------------------------------------- affine_swish
template <typename T>
struct AffineSwish {
  const T* __restrict__ x;
  const T* __restrict__ scale;
  const T* __restrict__ shift;
  T* __restrict__ out;
  int64_t C, inner;
  template <int W>
  __device__ __forceinline__ void apply(int64_t e) const {
    using A = dev::Acc<T>;
    const int64_t nc = dev::div64(e, inner);  // one channel per vector (inner % W == 0)
    const int64_t c = nc - dev::div64(nc, C) * C;
    const A sc = dev::load(scale + c), sh = dev::load(shift + c);
    const dev::Pack<T, W> xv = dev::load_pack<T, W>(x + e);
    dev::Pack<T, W> o;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const A a = dev::to_acc(xv.v[j]) * sc + sh;
      o.v[j] = dev::from_acc<T>(a * dev::sigmoid(a));
    }
    dev::store_pack<T, W>(out + e, o);
  }
};

// Block (c, split): vectors [split * chunk, min(Mv, (split + 1) * chunk)) of channel c, where
// the channel's k-th vector is n = k / inner_v, i = k % inner_v at ((n C + c) inner_v + i) V.
// Writes its two partial sums to ws[c * splits + split] and ws[(C + c) * splits + split].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
affine_swish_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                             const T* __restrict__ scale, const T* __restrict__ shift,
                             T* __restrict__ dx, dev::Acc<T>* __restrict__ ws, int64_t N,
                             int64_t C, int64_t inner, int64_t chunk) {
  using A = dev::Acc<T>;
  __shared__ A scratch[kWarps];
  const int64_t c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t inner_v = inner / V, Mv = N * inner_v;
  const int64_t begin = split * chunk;
  const int64_t end = begin + chunk < Mv ? begin + chunk : Mv;
  const A sc = dev::load(scale + c), sh = dev::load(shift + c);
  A sum_x = 0, sum_1 = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const int64_t n = dev::div64(k, inner_v);
    const int64_t e = ((n * C + c) * inner_v + (k - n * inner_v)) * V;
    const dev::Pack<T, V> gv = dev::load_pack<T, V>(grad + e), xv = dev::load_pack<T, V>(x + e);
    dev::Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A xj = dev::to_acc(xv.v[j]);
      const A gd = dev::to_acc(gv.v[j]) * swish_grad(xj * sc + sh);
      o.v[j] = dev::from_acc<T>(gd * sc);
      sum_x += gd * xj;
      sum_1 += gd;
    }
    dev::store_pack<T, V>(dx + e, o);
  }
  sum_x = dev::block_sum<kWarps>(sum_x, scratch);
  sum_1 = dev::block_sum<kWarps>(sum_1, scratch);
  if (threadIdx.x == 0) {
    ws[c * splits + split] = sum_x;
    ws[(C + c) * splits + split] = sum_1;
  }
}

// One warp per channel: dscale[c] = sum of ws[c, :], dshift[c] = sum of ws[C + c, :].
template <typename T>
__global__ void __launch_bounds__(kThreads)
affine_swish_finish_kernel(const dev::Acc<T>* __restrict__ ws, T* __restrict__ dscale,
                           T* __restrict__ dshift, int64_t C, int64_t splits) {
  using A = dev::Acc<T>;
  const int lane = threadIdx.x % dev::kWarpSize;
  const int64_t warp =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / dev::kWarpSize;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / dev::kWarpSize;
  for (int64_t c = warp; c < C; c += n_warps) {
    A a = 0, b = 0;
    for (int64_t s = lane; s < splits; s += dev::kWarpSize) {
      a += ws[c * splits + s];
      b += ws[(C + c) * splits + s];
    }
    a = dev::warp_sum(a);
    b = dev::warp_sum(b);
    if (lane == 0) {
      dev::store(dscale + c, a);
      dev::store(dshift + c, b);
    }
  }
}

constexpr int64_t kElemsPerSplit = 4096;  // ~16 elements per thread of a 256-thread block
constexpr int64_t kMaxSplits = 65535;     // gridDim.y limit

}  // namespace

cudaError_t ebm_block_tail(Dtype dtype, const void* h, const void* skip, void* out, void* pre,
                           bool downsample, int64_t planes, int64_t Ho, int64_t Wo,
                           cudaStream_t stream) {
  const int64_t n_out = planes * Ho * Wo;
  if (n_out <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* hp = static_cast<const T*>(h);
    const T* sp = static_cast<const T*>(skip);
    T* op = static_cast<T*>(out);
    T* pp = static_cast<T*>(pre);
    if (!downsample) {
      const bool vec = dev::aligned(h, 16) && dev::aligned(skip, 16) && dev::aligned(out, 16) &&
                       dev::aligned(pre, 16);
      return launch_elementwise<T>(n_out, vec, EbmTail<T>{hp, sp, op, pp}, stream);
    }
    const unsigned grid = dev::grid_for(n_out, kThreads);
    if (dev::aligned(h, 2 * sizeof(T)) && dev::aligned(skip, 2 * sizeof(T))) {
      ebm_tail_pool_kernel<T, true><<<grid, kThreads, 0, stream>>>(hp, sp, op, pp, n_out, Ho, Wo);
    } else {
      ebm_tail_pool_kernel<T, false><<<grid, kThreads, 0, stream>>>(hp, sp, op, pp, n_out, Ho, Wo);
    }
    return cudaGetLastError();
  });
}

cudaError_t ebm_block_tail_backward(Dtype dtype, const void* grad, const void* pre, void* d,
                                    bool downsample, int64_t planes, int64_t Ho, int64_t Wo,
                                    cudaStream_t stream) {
  const int64_t n_pre = planes * Ho * Wo;
  if (n_pre <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(grad);
    const T* pp = static_cast<const T*>(pre);
    T* dp = static_cast<T*>(d);
    if (!downsample) {
      const bool vec = dev::aligned(grad, 16) && dev::aligned(pre, 16) && dev::aligned(d, 16);
      return launch_elementwise<T>(n_pre, vec, EbmTailBackward<T>{gp, pp, dp}, stream);
    }
    ebm_tail_unpool_kernel<T><<<dev::grid_for(n_pre, kThreads), kThreads, 0, stream>>>(
        gp, pp, dp, n_pre, Wo);
    return cudaGetLastError();
  });
}

cudaError_t nvae_cell_tail(Dtype dtype, const void* skip, const void* h, const void* gate,
                           void* out, int64_t planes, int64_t HW, double scale,
                           cudaStream_t stream) {
  const int64_t n = planes * HW;
  if (n <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = HW % dev::kVec16<T> == 0 && dev::aligned(skip, 16) && dev::aligned(h, 16) &&
                     dev::aligned(out, 16);
    const NvaeTail<T> op{static_cast<const T*>(skip), static_cast<const T*>(h),
                         static_cast<const T*>(gate), static_cast<T*>(out), HW,
                         static_cast<dev::Acc<T>>(scale)};
    return launch_elementwise<T>(n, vec, op, stream);
  });
}

cudaError_t nvae_cell_tail_backward(Dtype dtype, const void* grad, const void* h,
                                    const void* gate, void* dh, void* dgate, int64_t planes,
                                    int64_t HW, double scale, cudaStream_t stream) {
  if (planes <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = dev::kVec16<T>;
    const T* gp = static_cast<const T*>(grad);
    const T* hp = static_cast<const T*>(h);
    const T* gt = static_cast<const T*>(gate);
    T* dhp = static_cast<T*>(dh);
    T* dgp = static_cast<T*>(dgate);
    const auto sc = static_cast<dev::Acc<T>>(scale);
    const unsigned grid = dev::grid_for(planes, kWarps);  // one warp per plane
    if (HW % V == 0 && dev::aligned(grad, 16) && dev::aligned(h, 16) && dev::aligned(dh, 16)) {
      nvae_tail_backward_kernel<T, V><<<grid, kThreads, 0, stream>>>(gp, hp, gt, dhp, dgp,
                                                                      planes, HW, sc);
    } else {
      nvae_tail_backward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(gp, hp, gt, dhp, dgp,
                                                                      planes, HW, sc);
    }
    return cudaGetLastError();
  });
}

cudaError_t affine_swish(Dtype dtype, const void* x, const void* scale, const void* shift,
                         void* out, int64_t N, int64_t C, int64_t inner, cudaStream_t stream) {
  const int64_t n = N * C * inner;
  if (n <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = inner % dev::kVec16<T> == 0 && dev::aligned(x, 16) && dev::aligned(out, 16);
    const AffineSwish<T> op{static_cast<const T*>(x), static_cast<const T*>(scale),
                            static_cast<const T*>(shift), static_cast<T*>(out), C, inner};
    return launch_elementwise<T>(n, vec, op, stream);
  });
}

int64_t affine_swish_backward_splits(int64_t N, int64_t inner) {
  const int64_t per_channel = N * inner;
  int64_t splits = (per_channel + kElemsPerSplit - 1) / kElemsPerSplit;
  if (splits < 1) splits = 1;
  return splits < kMaxSplits ? splits : kMaxSplits;
}

cudaError_t affine_swish_backward(Dtype dtype, const void* grad, const void* x,
                                  const void* scale, const void* shift, void* dx, void* dscale,
                                  void* dshift, void* workspace, int64_t N, int64_t C,
                                  int64_t inner, cudaStream_t stream) {
  if (N * C * inner <= 0) return cudaErrorInvalidValue;  // the glue handles empty x
  const int64_t splits = affine_swish_backward_splits(N, inner);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = dev::Acc<T>;
    constexpr int V = dev::kVec16<T>;
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    const T* scp = static_cast<const T*>(scale);
    const T* shp = static_cast<const T*>(shift);
    T* dxp = static_cast<T*>(dx);
    A* ws = static_cast<A*>(workspace);
    const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(splits));
    if (inner % V == 0 && dev::aligned(grad, 16) && dev::aligned(x, 16) && dev::aligned(dx, 16)) {
      const int64_t Mv = N * (inner / V);
      affine_swish_backward_kernel<T, V><<<grid, kThreads, 0, stream>>>(
          gp, xp, scp, shp, dxp, ws, N, C, inner, (Mv + splits - 1) / splits);
    } else {
      affine_swish_backward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(
          gp, xp, scp, shp, dxp, ws, N, C, inner, (N * inner + splits - 1) / splits);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    affine_swish_finish_kernel<T><<<dev::grid_for(C, kWarps), kThreads, 0, stream>>>(
        ws, static_cast<T*>(dscale), static_cast<T*>(dshift), C, splits);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace vaebm_fast

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA epilogue kernels (the kernels above). Checks: the first
// tensor is a CUDA tensor of a kernel dtype, the rest as checks.h (shared with the
// CPU kernels). Inputs are read through contiguous copies; outputs are new contiguous tensors.
#include <tuple>

#include <torch/library.h>

#include "checks.h"
#include "../common/cuda_glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> ebm_block_tail_cuda(const at::Tensor& h,
                                                       const at::Tensor& skip, bool downsample) {
  constexpr const char* op = "ebm_block_tail";
  check_floating(h, op, "h");
  check_ebm_tail_args(op, h, skip, downsample);
  const int64_t B = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  const int64_t Ho = downsample ? H / 2 : H, Wo = downsample ? W / 2 : W;
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor hc = h.contiguous(), sc = skip.contiguous();
  at::Tensor out = empty_contiguous({B, C, Ho, Wo}, h);
  at::Tensor pre = empty_contiguous({B, C, Ho, Wo}, h);
  VAEBM_FAST_CUDA_LAUNCH(ebm_block_tail(to_dtype(h.scalar_type(), op), hc.const_data_ptr(),
                                        sc.const_data_ptr(), out.mutable_data_ptr(),
                                        pre.mutable_data_ptr(), downsample, B * C, Ho, Wo,
                                        current_stream()));
  return {out, pre};
}

at::Tensor ebm_block_tail_backward_cuda(const at::Tensor& grad, const at::Tensor& pre,
                                        bool downsample) {
  constexpr const char* op = "ebm_block_tail_backward";
  check_floating(pre, op, "pre");
  check_nchw_pair(op, pre, "pre", grad, "grad");
  const int64_t B = pre.size(0), C = pre.size(1), Ho = pre.size(2), Wo = pre.size(3);
  const c10::cuda::CUDAGuard guard(pre.device());
  const at::Tensor gc = grad.contiguous(), pc = pre.contiguous();
  at::Tensor d = downsample ? empty_contiguous({B, C, 2 * Ho, 2 * Wo}, pre)
                            : empty_contiguous({B, C, Ho, Wo}, pre);
  VAEBM_FAST_CUDA_LAUNCH(ebm_block_tail_backward(to_dtype(pre.scalar_type(), op),
                                                 gc.const_data_ptr(), pc.const_data_ptr(),
                                                 d.mutable_data_ptr(), downsample, B * C, Ho, Wo,
                                                 current_stream()));
  return d;
}

void check_cell(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& h,
                const at::Tensor& gate) {
  check_floating(h, op, "h");
  check_cell_args(op, h, a, a_name, gate);
}

at::Tensor nvae_cell_tail_cuda(const at::Tensor& skip, const at::Tensor& h,
                               const at::Tensor& gate, double scale) {
  constexpr const char* op = "nvae_cell_tail";
  check_cell(op, skip, "skip", h, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor sc = skip.contiguous(), hc = h.contiguous(), gc = gate.contiguous();
  at::Tensor out = empty_contiguous(h.sizes(), h);
  VAEBM_FAST_CUDA_LAUNCH(nvae_cell_tail(to_dtype(h.scalar_type(), op), sc.const_data_ptr(),
                                        hc.const_data_ptr(), gc.const_data_ptr(),
                                        out.mutable_data_ptr(), h.size(0) * h.size(1),
                                        h.size(2) * h.size(3), scale, current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> nvae_cell_tail_backward_cuda(const at::Tensor& grad,
                                                                const at::Tensor& h,
                                                                const at::Tensor& gate,
                                                                double scale) {
  constexpr const char* op = "nvae_cell_tail_backward";
  check_cell(op, grad, "grad", h, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor gc = grad.contiguous(), hc = h.contiguous(), gt = gate.contiguous();
  at::Tensor dh = empty_contiguous(h.sizes(), h);
  at::Tensor dgate = empty_contiguous(gate.sizes(), gate);
  VAEBM_FAST_CUDA_LAUNCH(nvae_cell_tail_backward(
      to_dtype(h.scalar_type(), op), gc.const_data_ptr(), hc.const_data_ptr(),
      gt.const_data_ptr(), dh.mutable_data_ptr(), dgate.mutable_data_ptr(),
      h.size(0) * h.size(1), h.size(2) * h.size(3), scale, current_stream()));
  return {dh, dgate};
}

void check_affine(const char* op, const at::Tensor& x, const at::Tensor& scale,
                  const at::Tensor& shift) {
  check_floating(x, op, "x");
  check_affine_args(op, x, scale, shift);
}

// x [N, C, *S] seen as [N, C, inner], inner = prod(S) (1 for 2-D x).
int64_t inner_size(const at::Tensor& x) {
  int64_t inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  return inner;
}

at::Tensor affine_swish_cuda(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& shift) {
  constexpr const char* op = "affine_swish";
  check_affine(op, x, scale, shift);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  at::Tensor out = empty_contiguous(x.sizes(), x);
  VAEBM_FAST_CUDA_LAUNCH(affine_swish(to_dtype(x.scalar_type(), op), xc.const_data_ptr(),
                                      sc.const_data_ptr(), sh.const_data_ptr(),
                                      out.mutable_data_ptr(), x.size(0), x.size(1),
                                      inner_size(x), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_swish_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& shift) {
  constexpr const char* op = "affine_swish_backward";
  check_affine(op, x, scale, shift);
  check_epilogue_like(grad, x, op, "grad", "x", true);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = empty_contiguous(x.sizes(), x);
  const int64_t N = x.size(0), C = x.size(1), inner = inner_size(x);
  if (x.numel() == 0) {  // no elements: zero sums (C may still be > 0)
    return {dx, at::zeros(scale.sizes(), scale.options()),
            at::zeros(shift.sizes(), shift.options())};
  }
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous(), sc = scale.contiguous(),
                   sh = shift.contiguous();
  at::Tensor dscale = empty_contiguous(scale.sizes(), scale);
  at::Tensor dshift = empty_contiguous(shift.sizes(), shift);
  // Per-(channel, split) partial sums, through PyTorch's caching allocator.
  const at::Tensor workspace =
      at::empty({2 * C * affine_swish_backward_splits(N, inner)},
                x.options().dtype(acc_dtype(x.scalar_type())));
  VAEBM_FAST_CUDA_LAUNCH(affine_swish_backward(
      to_dtype(x.scalar_type(), op), gc.const_data_ptr(), xc.const_data_ptr(),
      sc.const_data_ptr(), sh.const_data_ptr(), dx.mutable_data_ptr(),
      dscale.mutable_data_ptr(), dshift.mutable_data_ptr(), workspace.data_ptr(), N, C, inner,
      current_stream()));
  return {dx, dscale, dshift};
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("ebm_block_tail", &vaebm_fast::cuda::ebm_block_tail_cuda);
  m.impl("ebm_block_tail_backward", &vaebm_fast::cuda::ebm_block_tail_backward_cuda);
  m.impl("nvae_cell_tail", &vaebm_fast::cuda::nvae_cell_tail_cuda);
  m.impl("nvae_cell_tail_backward", &vaebm_fast::cuda::nvae_cell_tail_backward_cuda);
  m.impl("affine_swish", &vaebm_fast::cuda::affine_swish_cuda);
  m.impl("affine_swish_backward", &vaebm_fast::cuda::affine_swish_backward_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
