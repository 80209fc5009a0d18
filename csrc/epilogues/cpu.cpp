// CPU kernels of the fused epilogues (schemas in csrc/ops.cpp; references, autograd and fake
// kernels in vaebm_fast/ops/epilogues.py). k = 1/1.1 (LipSwish), s(t) = sigmoid(t).
//
// ebm_block_tail(h, skip, downsample) -> (out, pre)            h, skip: [B, C, H, W]
//   pre = avg2x2(h + skip) if downsample else h + skip;   out = k * pre * s(pre)
//   traffic (fp32, per input element): reads h, skip (8 B); writes out, pre (8 B, or 2 B when
//   downsampling). Eager: add, [pool], sigmoid, mul, mul -> ~40 B/element and 4-5 kernels.
// ebm_block_tail_backward(grad, pre, downsample) -> d          d at h's size
//   dp = grad * k * (s + pre s (1 - s)) (sigmoid recomputed from pre);
//   d[2y+i, 2x+j] = dp[y, x] / 4 if downsample else dp. Reads grad, pre (8 B per pre element);
//   writes d (4 B per d element).
// nvae_cell_tail(skip, h, gate, c) -> out                      gate: [B, C]
//   out = skip + (c * gate[b, ch]) * h. Reads skip, h (8 B); writes out (4 B).
// nvae_cell_tail_backward(grad, h, gate, c) -> (dh, dgate)
//   dh = (c * gate[b, ch]) * grad;  dgate[b, ch] = c * sum_hw grad * h  (one pass per plane,
//   reads grad, h (8 B); writes dh (4 B)).
// affine_swish(x, a, b) -> out                                 x: [N, C, *], a, b: [C]
//   t = x * a[ch] + b[ch]; out = t * s(t). Reads x, writes out (8 B).
// affine_swish_backward(grad, x, a, b) -> (dx, da, db)
//   q = grad * (s + t s (1 - s)); dx = q * a[ch]; da[ch] = sum q x; db[ch] = sum q, sums over
//   every dim but 1: per-(n, ch) plane partial sums in parallel, then a deterministic sum
//   over n in double. Reads grad, x; writes dx (12 B).
//
// Arithmetic: float for fp32 / fp16 / bf16 (stored values rounded once), double for fp64.
// Vectorisation: every fp32 loop is a non-template function below marked
// VAEBM_FAST_TARGET_CLONES (compiled for AVX-512, AVX2 and baseline x86-64, the copy for the
// running CPU picked at load time) over plain code the compiler vectorises, the sigmoid being
// simd_math.h's sigmoid_f32. The bodies are written once as inline templates (*_loop) that the
// fp64 path calls directly (scalar std::exp). fp16 / bf16 are widened to L1-sized float blocks,
// run through the fp32 functions and rounded back. Sums (dgate, da, db) use kLanes fixed
// partial sums per plane, so they vectorise without reassociation and do not depend on the
// thread count (results are reproducible on a machine; the AVX2 / AVX-512 copies contract
// a * b + c into FMAs, so another CPU may differ in the last bit). Parallelism: at::parallel_for over elements, rows or planes.
// Layout: inputs are read through contiguous copies (free when already contiguous); outputs
// are new contiguous tensors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/constants.h"
#include "../common/kernel_dtypes.h"
#include "checks.h"
#include "../common/simd_math.h"
#include "../common/swish_loops.h"

namespace vaebm_fast {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel task
// Elements per float block (fp16 / bf16 widening, and the fp32 pooled rows): 4 KiB of floats
// per operand, so a block's operands stay in L1.
constexpr int64_t kBlock = 1024;
// Partial sums per plane in the reductions: one AVX-512 register of floats.
constexpr int kLanes = 16;

// Pointers of the loops are __restrict, so the compiler needs no runtime alias check.
#define VAEBM_RESTRICT __restrict

// Rows (or planes) per parallel task for rows of `len` elements.
inline int64_t row_grain(int64_t len) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(len, 1));
}

// fp16 / bf16 <-> float blocks.
template <typename scalar_t>
inline void widen(const scalar_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
template <typename scalar_t>
inline void narrow(const float* src, scalar_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Sum of kLanes partial sums, in a fixed (pairwise) order.
template <typename T>
VAEBM_FAST_INLINE T sum_lanes(const T* lane) {
  T tmp[kLanes];
  for (int l = 0; l < kLanes; ++l) tmp[l] = lane[l];
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) tmp[l] += tmp[l + w];
  }
  return tmp[0];
}

// ------------------------------------------------------------------ loop bodies (float, double)

// pre = h + s; out = k * pre * s(pre).
template <typename T>
VAEBM_FAST_INLINE void ebm_tail_loop(const T* VAEBM_RESTRICT h, const T* VAEBM_RESTRICT s,
                          T* VAEBM_RESTRICT out, T* VAEBM_RESTRICT pre, int64_t n, T k) {
  for (int64_t i = 0; i < n; ++i) {
    const T p = h[i] + s[i];
    pre[i] = p;
    out[i] = k * p * sigmoid(p);
  }
}

// 2x2 window means of `rows` output rows of `wo` elements (written contiguously to pre). The
// window of output (r, x) is columns 2x, 2x + 1 of the input rows starting at
// h + r * pair_stride and h + r * pair_stride + row_stride (same for s). Summed in the order
// of avg_pool2d(h + skip): first the element sums, then the window.
template <typename T>
VAEBM_FAST_INLINE void pool_loop(const T* VAEBM_RESTRICT h, const T* VAEBM_RESTRICT s,
                      int64_t pair_stride, int64_t row_stride, T* VAEBM_RESTRICT pre,
                      int64_t rows, int64_t wo) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* h0 = h + r * pair_stride;
    const T* h1 = h0 + row_stride;
    const T* s0 = s + r * pair_stride;
    const T* s1 = s0 + row_stride;
    T* p = pre + r * wo;
    for (int64_t x = 0; x < wo; ++x) {
      const int64_t j = 2 * x;
      p[x] = ((h0[j] + s0[j]) + (h0[j + 1] + s0[j + 1]) + (h1[j] + s1[j]) +
              (h1[j + 1] + s1[j + 1])) * T(0.25);
    }
  }
}

// d[2r + i, 2x + j] = v[r, x] for `rows` rows of `wo` values (contiguous); d has rows of `w`
// elements (w >= 2 wo).
template <typename V, typename D>
VAEBM_FAST_INLINE void scatter2x2_loop(const V* VAEBM_RESTRICT v, D* VAEBM_RESTRICT d, int64_t rows,
                            int64_t wo, int64_t w) {
  for (int64_t r = 0; r < rows; ++r) {
    D* d0 = d + 2 * r * w;
    D* d1 = d0 + w;
    for (int64_t x = 0; x < wo; ++x) {
      const D u = static_cast<D>(v[r * wo + x]);
      d0[2 * x] = u;
      d0[2 * x + 1] = u;
      d1[2 * x] = u;
      d1[2 * x + 1] = u;
    }
  }
}

// out = s + m * x.
template <typename T>
VAEBM_FAST_INLINE void cell_tail_loop(const T* VAEBM_RESTRICT s, const T* VAEBM_RESTRICT x,
                           T* VAEBM_RESTRICT out, int64_t n, T m) {
  for (int64_t i = 0; i < n; ++i) out[i] = s[i] + m * x[i];
}

// dh = m * g; returns sum g * x.
template <typename T>
VAEBM_FAST_INLINE T cell_grad_loop(const T* VAEBM_RESTRICT g, const T* VAEBM_RESTRICT x,
                        T* VAEBM_RESTRICT dh, int64_t n, T m) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      dh[i + l] = m * g[i + l];
      lane[l] += g[i + l] * x[i + l];
    }
  }
  T sum = sum_lanes(lane);
  for (; i < n; ++i) {
    dh[i] = m * g[i];
    sum += g[i] * x[i];
  }
  return sum;
}

// out = t * s(t), t = x * a + b.
template <typename T>
VAEBM_FAST_INLINE void affine_swish_loop(const T* VAEBM_RESTRICT x, T* VAEBM_RESTRICT out, int64_t n, T a,
                              T b) {
  for (int64_t i = 0; i < n; ++i) {
    const T t = x[i] * a + b;
    out[i] = t * sigmoid(t);
  }
}

// q = g * (s + t s (1 - s)); dx = q * a; adds sum q x to sums[0] and sum q to sums[1].
template <typename T>
VAEBM_FAST_INLINE void affine_swish_grad_loop(const T* VAEBM_RESTRICT g, const T* VAEBM_RESTRICT x,
                                   T* VAEBM_RESTRICT dx, int64_t n, T a, T b, T* sums) {
  T lane_qx[kLanes] = {}, lane_q[kLanes] = {};
  int64_t i = 0;
  const auto q_of = [a, b](T gv, T xv) {
    const T t = xv * a + b;
    const T s = sigmoid(t);
    return gv * (s + t * s * (T(1) - s));
  };
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T q = q_of(g[i + l], x[i + l]);
      dx[i + l] = q * a;
      lane_qx[l] += q * x[i + l];
      lane_q[l] += q;
    }
  }
  T sum_qx = sum_lanes(lane_qx), sum_q = sum_lanes(lane_q);
  for (; i < n; ++i) {
    const T q = q_of(g[i], x[i]);
    dx[i] = q * a;
    sum_qx += q * x[i];
    sum_q += q;
  }
  sums[0] += sum_qx;
  sums[1] += sum_q;
}

// ------------------------------------------------------------------ fp32 loops, per ISA

VAEBM_FAST_TARGET_CLONES
void ebm_tail_f32(const float* h, const float* s, float* out, float* pre, int64_t n) {
  ebm_tail_loop<float>(h, s, out, pre, n, static_cast<float>(kLipSwishScale));
}

VAEBM_FAST_TARGET_CLONES
void lipswish_f32(const float* p, float* out, int64_t n) {
  swish_loop<float>(p, out, n, static_cast<float>(kLipSwishScale));
}

VAEBM_FAST_TARGET_CLONES
void pool_f32(const float* h, const float* s, int64_t pair_stride, int64_t row_stride,
              float* pre, int64_t rows, int64_t wo) {
  pool_loop<float>(h, s, pair_stride, row_stride, pre, rows, wo);
}

VAEBM_FAST_TARGET_CLONES
void lipswish_grad_f32(const float* g, const float* p, float* d, int64_t n, float k) {
  swish_grad_loop<float>(g, p, d, n, k);
}

VAEBM_FAST_TARGET_CLONES
void scatter2x2_f32(const float* v, float* d, int64_t rows, int64_t wo, int64_t w) {
  scatter2x2_loop<float, float>(v, d, rows, wo, w);
}

VAEBM_FAST_TARGET_CLONES
void cell_tail_f32(const float* s, const float* x, float* out, int64_t n, float m) {
  cell_tail_loop<float>(s, x, out, n, m);
}

VAEBM_FAST_TARGET_CLONES
float cell_grad_f32(const float* g, const float* x, float* dh, int64_t n, float m) {
  return cell_grad_loop<float>(g, x, dh, n, m);
}

VAEBM_FAST_TARGET_CLONES
void affine_swish_f32(const float* x, float* out, int64_t n, float a, float b) {
  affine_swish_loop<float>(x, out, n, a, b);
}

VAEBM_FAST_TARGET_CLONES
void affine_swish_grad_f32(const float* g, const float* x, float* dx, int64_t n, float a,
                           float b, float* sums) {
  affine_swish_grad_loop<float>(g, x, dx, n, a, b, sums);
}

// ------------------------------------------------------------------ argument checks

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU kernel): ", name, " must be on the CPU");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

at::Tensor new_contiguous(const at::Tensor& like, at::IntArrayRef sizes) {
  return at::empty(sizes, like.options().memory_format(at::MemoryFormat::Contiguous));
}

template <typename scalar_t>
constexpr bool kIsFloat = std::is_same_v<scalar_t, float>;
template <typename scalar_t>
constexpr bool kIsDouble = std::is_same_v<scalar_t, double>;

// ----------------------------------------------------------------------- ebm_block_tail

template <typename scalar_t>
void ebm_tail_range(const scalar_t* h, const scalar_t* s, scalar_t* out, scalar_t* pre,
                    int64_t n) {
  if constexpr (kIsFloat<scalar_t>) {
    ebm_tail_f32(h, s, out, pre, n);
  } else if constexpr (kIsDouble<scalar_t>) {
    ebm_tail_loop<double>(h, s, out, pre, n, kLipSwishScale);
  } else {
    float hf[kBlock], sf[kBlock], of[kBlock], pf[kBlock];
    for (int64_t c = 0; c < n; c += kBlock) {
      const int64_t m = std::min(kBlock, n - c);
      widen(h + c, hf, m);
      widen(s + c, sf, m);
      ebm_tail_f32(hf, sf, of, pf, m);
      narrow(of, out + c, m);
      narrow(pf, pre + c, m);
    }
  }
}

// Output rows [r0, r1) of the downsampling tail (row r = (plane, y), from input rows 2y,
// 2y + 1 of the same plane, i.e. input row 2r of the [B*C*H, W] view).
template <typename scalar_t>
void ebm_tail_pool_rows(const scalar_t* h, const scalar_t* s, scalar_t* out, scalar_t* pre,
                        int64_t r0, int64_t r1, int64_t wo) {
  const int64_t w = 2 * wo;
  if constexpr (kIsDouble<scalar_t>) {
    pool_loop<double>(h + 2 * r0 * w, s + 2 * r0 * w, 2 * w, w, pre + r0 * wo, r1 - r0, wo);
    swish_loop<double>(pre + r0 * wo, out + r0 * wo, (r1 - r0) * wo, kLipSwishScale);
  } else if constexpr (kIsFloat<scalar_t>) {
    // Blocks of whole rows: the pooled values are re-read from L1 by the sigmoid loop.
    const int64_t nr = std::max<int64_t>(1, kBlock / wo);
    for (int64_t r = r0; r < r1; r += nr) {
      const int64_t rows = std::min(nr, r1 - r);
      pool_f32(h + 2 * r * w, s + 2 * r * w, 2 * w, w, pre + r * wo, rows, wo);
      lipswish_f32(pre + r * wo, out + r * wo, rows * wo);
    }
  } else {
    // Float blocks of at most kBlock / 4 outputs: whole rows, or a segment of one row.
    constexpr int64_t kOut = kBlock / 4;
    float hf[kBlock], sf[kBlock], pf[kOut], of[kOut];
    const int64_t nr = std::max<int64_t>(1, kOut / wo), seg = std::min(wo, kOut);
    for (int64_t r = r0; r < r1; r += nr) {
      const int64_t rows = std::min(nr, r1 - r);
      for (int64_t x0 = 0; x0 < wo; x0 += seg) {
        const int64_t len = std::min(seg, wo - x0);
        for (int64_t q = 0; q < 2 * rows; ++q) {  // input rows 2r .. 2(r + rows) - 1
          widen(h + (2 * r + q) * w + 2 * x0, hf + q * 2 * len, 2 * len);
          widen(s + (2 * r + q) * w + 2 * x0, sf + q * 2 * len, 2 * len);
        }
        pool_f32(hf, sf, 4 * len, 2 * len, pf, rows, len);
        lipswish_f32(pf, of, rows * len);
        for (int64_t q = 0; q < rows; ++q) {
          narrow(pf + q * len, pre + (r + q) * wo + x0, len);
          narrow(of + q * len, out + (r + q) * wo + x0, len);
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> ebm_block_tail_cpu(const at::Tensor& h, const at::Tensor& skip,
                                                      bool downsample) {
  const char* op = "ebm_block_tail";
  check_float(h, op, "h");
  check_ebm_tail_args(op, h, skip, downsample);
  const int64_t B = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  const int64_t Ho = downsample ? H / 2 : H, Wo = downsample ? W / 2 : W;
  at::Tensor out = new_contiguous(h, {B, C, Ho, Wo});
  at::Tensor pre = new_contiguous(h, {B, C, Ho, Wo});
  if (out.numel() == 0) return {out, pre};
  const at::Tensor hc = h.contiguous(), sc = skip.contiguous();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(h.scalar_type(), "ebm_block_tail",
                                  [&] {
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = pre.mutable_data_ptr<scalar_t>();
    if (!downsample) {
      at::parallel_for(0, hc.numel(), kGrain, [&](int64_t b, int64_t e) {
        ebm_tail_range<scalar_t>(hp + b, sp + b, op_ + b, pp + b, e - b);
      });
    } else {
      at::parallel_for(0, B * C * Ho, row_grain(4 * Wo), [&](int64_t b, int64_t e) {
        ebm_tail_pool_rows<scalar_t>(hp, sp, op_, pp, b, e, Wo);
      });
    }
  });
  return {out, pre};
}

// d = factor * k * grad * lipswish'(pre) over n elements.
template <typename scalar_t>
void lipswish_grad_range(const scalar_t* g, const scalar_t* p, scalar_t* d, int64_t n,
                         double factor) {
  if constexpr (kIsFloat<scalar_t>) {
    lipswish_grad_f32(g, p, d, n, static_cast<float>(kLipSwishScale * factor));
  } else if constexpr (kIsDouble<scalar_t>) {
    swish_grad_loop<double>(g, p, d, n, kLipSwishScale * factor);
  } else {
    float gf[kBlock], pf[kBlock], df[kBlock];
    for (int64_t c = 0; c < n; c += kBlock) {
      const int64_t m = std::min(kBlock, n - c);
      widen(g + c, gf, m);
      widen(p + c, pf, m);
      lipswish_grad_f32(gf, pf, df, m, static_cast<float>(kLipSwishScale * factor));
      narrow(df, d + c, m);
    }
  }
}

// Pooled rows [r0, r1) of the downsampling backward: dp / 4 for a block of rows (or a segment
// of one row) into a float (double for fp64) buffer, then spread over the 2x2 windows of d.
template <typename scalar_t>
void ebm_tail_backward_pool_rows(const scalar_t* g, const scalar_t* p, scalar_t* d, int64_t r0,
                                 int64_t r1, int64_t wo) {
  using buf_t = std::conditional_t<kIsDouble<scalar_t>, double, float>;
  const int64_t w = 2 * wo;
  const int64_t nr = std::max<int64_t>(1, kBlock / wo), seg = std::min(wo, kBlock);
  buf_t df[kBlock];
  for (int64_t r = r0; r < r1; r += nr) {
    const int64_t rows = std::min(nr, r1 - r);
    for (int64_t x0 = 0; x0 < wo; x0 += seg) {
      const int64_t len = std::min(seg, wo - x0), m = rows * len, at = r * wo + x0;
      scalar_t* dd = d + 2 * r * w + 2 * x0;
      if constexpr (kIsFloat<scalar_t>) {
        lipswish_grad_f32(g + at, p + at, df, m, static_cast<float>(kLipSwishScale * 0.25));
        scatter2x2_f32(df, dd, rows, len, w);
      } else if constexpr (kIsDouble<scalar_t>) {
        swish_grad_loop<double>(g + at, p + at, df, m, kLipSwishScale * 0.25);
        scatter2x2_loop<double, double>(df, dd, rows, len, w);
      } else {
        float gf[kBlock], pf[kBlock];
        widen(g + at, gf, m);
        widen(p + at, pf, m);
        lipswish_grad_f32(gf, pf, df, m, static_cast<float>(kLipSwishScale * 0.25));
        scatter2x2_loop<float, scalar_t>(df, dd, rows, len, w);
      }
    }
  }
}

at::Tensor ebm_block_tail_backward_cpu(const at::Tensor& grad, const at::Tensor& pre,
                                       bool downsample) {
  const char* op = "ebm_block_tail_backward";
  check_float(pre, op, "pre");
  check_nchw_pair(op, pre, "pre", grad, "grad");
  const int64_t B = pre.size(0), C = pre.size(1), Ho = pre.size(2), Wo = pre.size(3);
  const int64_t H = downsample ? 2 * Ho : Ho, W = downsample ? 2 * Wo : Wo;
  at::Tensor d = new_contiguous(pre, {B, C, H, W});
  if (d.numel() == 0) return d;
  const at::Tensor gc = grad.contiguous(), pc = pre.contiguous();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(pre.scalar_type(),
                                  "ebm_block_tail_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.const_data_ptr<scalar_t>();
    scalar_t* dp = d.mutable_data_ptr<scalar_t>();
    if (!downsample) {
      at::parallel_for(0, pc.numel(), kGrain, [&](int64_t b, int64_t e) {
        lipswish_grad_range<scalar_t>(gp + b, pp + b, dp + b, e - b, 1.0);
      });
    } else {
      at::parallel_for(0, B * C * Ho, row_grain(4 * Wo), [&](int64_t b, int64_t e) {
        ebm_tail_backward_pool_rows<scalar_t>(gp, pp, dp, b, e, Wo);
      });
    }
  });
  return d;
}

// ----------------------------------------------------------------------- nvae_cell_tail

// Checks of nvae_cell_tail and its backward; returns (B * C planes, H * W per plane).
std::tuple<int64_t, int64_t> check_cell(const at::Tensor& a, const char* a_name,
                                        const at::Tensor& h, const at::Tensor& gate,
                                        const char* op) {
  check_float(h, op, "h");
  check_cell_args(op, h, a, a_name, gate);
  return {h.size(0) * h.size(1), h.size(2) * h.size(3)};
}

// One plane of nvae_cell_tail: out = s + m * x.
template <typename scalar_t>
void cell_tail_plane(const scalar_t* s, const scalar_t* x, scalar_t* out, int64_t n,
                     double m) {
  if constexpr (kIsFloat<scalar_t>) {
    cell_tail_f32(s, x, out, n, static_cast<float>(m));
  } else if constexpr (kIsDouble<scalar_t>) {
    cell_tail_loop<double>(s, x, out, n, m);
  } else {
    float sf[kBlock], xf[kBlock], of[kBlock];
    for (int64_t c = 0; c < n; c += kBlock) {
      const int64_t len = std::min(kBlock, n - c);
      widen(s + c, sf, len);
      widen(x + c, xf, len);
      cell_tail_f32(sf, xf, of, len, static_cast<float>(m));
      narrow(of, out + c, len);
    }
  }
}

// One plane of nvae_cell_tail_backward: dh = m * g; returns sum g * x.
template <typename scalar_t>
double cell_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* dh, int64_t n,
                       double m) {
  if constexpr (kIsFloat<scalar_t>) {
    return cell_grad_f32(g, x, dh, n, static_cast<float>(m));
  } else if constexpr (kIsDouble<scalar_t>) {
    return cell_grad_loop<double>(g, x, dh, n, m);
  } else {
    float gf[kBlock], xf[kBlock], df[kBlock];
    float sum = 0;
    for (int64_t c = 0; c < n; c += kBlock) {
      const int64_t len = std::min(kBlock, n - c);
      widen(g + c, gf, len);
      widen(x + c, xf, len);
      sum += cell_grad_f32(gf, xf, df, len, static_cast<float>(m));
      narrow(df, dh + c, len);
    }
    return sum;
  }
}

at::Tensor nvae_cell_tail_cpu(const at::Tensor& skip, const at::Tensor& h, const at::Tensor& gate,
                              double scale) {
  int64_t planes, hw;
  std::tie(planes, hw) = check_cell(skip, "skip", h, gate, "nvae_cell_tail");
  at::Tensor out = new_contiguous(h, h.sizes());
  if (out.numel() == 0) return out;
  const at::Tensor sc = skip.contiguous(), hc = h.contiguous(), gc = gate.contiguous();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(h.scalar_type(), "nvae_cell_tail",
                                  [&] {
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    // The multiplier c * gate is formed in the compute type (float, or double for fp64).
    using acc_t = std::conditional_t<kIsDouble<scalar_t>, double, float>;
    at::parallel_for(0, planes, row_grain(hw), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t m = static_cast<acc_t>(scale) * static_cast<acc_t>(gp[p]);
        cell_tail_plane<scalar_t>(sp + p * hw, hp + p * hw, op_ + p * hw, hw, m);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> nvae_cell_tail_backward_cpu(const at::Tensor& grad,
                                                               const at::Tensor& h,
                                                               const at::Tensor& gate,
                                                               double scale) {
  int64_t planes, hw;
  std::tie(planes, hw) = check_cell(grad, "grad", h, gate, "nvae_cell_tail_backward");
  at::Tensor dh = new_contiguous(h, h.sizes());
  at::Tensor dgate = new_contiguous(gate, gate.sizes());
  if (planes == 0) return {dh, dgate};
  const at::Tensor gc = grad.contiguous(), hc = h.contiguous(), tc = gate.contiguous();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(h.scalar_type(),
                                  "nvae_cell_tail_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    scalar_t* dhp = dh.mutable_data_ptr<scalar_t>();
    scalar_t* dgp = dgate.mutable_data_ptr<scalar_t>();
    using acc_t = std::conditional_t<kIsDouble<scalar_t>, double, float>;
    const acc_t c = static_cast<acc_t>(scale);
    at::parallel_for(0, planes, row_grain(hw), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t m = c * static_cast<acc_t>(tp[p]);
        const acc_t sum = static_cast<acc_t>(
            cell_grad_plane<scalar_t>(gp + p * hw, hp + p * hw, dhp + p * hw, hw, m));
        dgp[p] = static_cast<scalar_t>(c * sum);
      }
    });
  });
  return {dh, dgate};
}

// ----------------------------------------------------------------------- affine_swish

struct AffineDims {
  int64_t N, C, inner;
};

AffineDims check_affine(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                        const char* op) {
  check_float(x, op, "x");
  check_affine_args(op, x, scale, shift);
  const int64_t C = x.size(1);
  const int64_t N = x.size(0);
  return {N, C, C == 0 || N == 0 ? 0 : x.numel() / (N * C)};
}

// One plane of affine_swish: out = t s(t), t = x a + b.
template <typename scalar_t>
void affine_swish_plane(const scalar_t* x, scalar_t* out, int64_t n, double a, double b) {
  if constexpr (kIsFloat<scalar_t>) {
    affine_swish_f32(x, out, n, static_cast<float>(a), static_cast<float>(b));
  } else if constexpr (kIsDouble<scalar_t>) {
    affine_swish_loop<double>(x, out, n, a, b);
  } else {
    float xf[kBlock], of[kBlock];
    for (int64_t c = 0; c < n; c += kBlock) {
      const int64_t len = std::min(kBlock, n - c);
      widen(x + c, xf, len);
      affine_swish_f32(xf, of, len, static_cast<float>(a), static_cast<float>(b));
      narrow(of, out + c, len);
    }
  }
}

// One plane of affine_swish_backward: dx = q a; sums[0] = sum q x, sums[1] = sum q.
template <typename scalar_t>
void affine_swish_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n,
                             double a, double b, double* sums) {
  if constexpr (kIsDouble<scalar_t>) {
    sums[0] = sums[1] = 0;
    affine_swish_grad_loop<double>(g, x, dx, n, a, b, sums);
  } else {
    float s[2] = {0, 0};
    if constexpr (kIsFloat<scalar_t>) {
      affine_swish_grad_f32(g, x, dx, n, static_cast<float>(a), static_cast<float>(b), s);
    } else {
      float gf[kBlock], xf[kBlock], df[kBlock];
      for (int64_t c = 0; c < n; c += kBlock) {
        const int64_t len = std::min(kBlock, n - c);
        widen(g + c, gf, len);
        widen(x + c, xf, len);
        affine_swish_grad_f32(gf, xf, df, len, static_cast<float>(a), static_cast<float>(b),
                              s);
        narrow(df, dx + c, len);
      }
    }
    sums[0] = s[0];
    sums[1] = s[1];
  }
}

at::Tensor affine_swish_cpu(const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift) {
  const auto dims = check_affine(x, scale, shift, "affine_swish");
  at::Tensor out = new_contiguous(x, x.sizes());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(), ac = scale.contiguous(), bc = shift.contiguous();
  const int64_t C = dims.C, inner = dims.inner;
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(x.scalar_type(), "affine_swish",
                                  [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, dims.N * C, row_grain(inner), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        affine_swish_plane<scalar_t>(xp + p * inner, op_ + p * inner, inner,
                                     static_cast<double>(ap[p % C]),
                                     static_cast<double>(bp[p % C]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_swish_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& shift) {
  const char* op = "affine_swish_backward";
  const auto dims = check_affine(x, scale, shift, op);
  check_epilogue_like(grad, x, op, "grad", "x", true);
  const int64_t N = dims.N, C = dims.C, inner = dims.inner;
  at::Tensor dx = new_contiguous(x, x.sizes());
  at::Tensor dscale = new_contiguous(scale, scale.sizes());
  at::Tensor dshift = new_contiguous(shift, shift.sizes());
  if (C == 0) return {dx, dscale, dshift};
  if (x.numel() == 0) {
    dscale.zero_();
    dshift.zero_();
    return {dx, dscale, dshift};
  }
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous(), ac = scale.contiguous(),
                   bc = shift.contiguous();
  // Per-plane partial sums (plane = (n, ch)), summed over n in double afterwards.
  std::vector<double> part(2 * N * C);
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(x.scalar_type(),
                                  "affine_swish_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, row_grain(inner), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        affine_swish_grad_plane<scalar_t>(gp + p * inner, xp + p * inner, dxp + p * inner, inner,
                                          static_cast<double>(ap[p % C]),
                                          static_cast<double>(bp[p % C]), &part[2 * p]);
      }
    });
    scalar_t* dap = dscale.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = dshift.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      double sa = 0, sb = 0;
      for (int64_t n = 0; n < N; ++n) {
        sa += part[2 * (n * C + c)];
        sb += part[2 * (n * C + c) + 1];
      }
      dap[c] = static_cast<scalar_t>(sa);
      dbp[c] = static_cast<scalar_t>(sb);
    }
  });
  return {dx, dscale, dshift};
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("ebm_block_tail", &vaebm_fast::cpu::ebm_block_tail_cpu);
  m.impl("ebm_block_tail_backward", &vaebm_fast::cpu::ebm_block_tail_backward_cpu);
  m.impl("nvae_cell_tail", &vaebm_fast::cpu::nvae_cell_tail_cpu);
  m.impl("nvae_cell_tail_backward", &vaebm_fast::cpu::nvae_cell_tail_backward_cpu);
  m.impl("affine_swish", &vaebm_fast::cpu::affine_swish_cpu);
  m.impl("affine_swish_backward", &vaebm_fast::cpu::affine_swish_backward_cpu);
}
