// CPU kernels of the fused epilogues (schemas in csrc/ops.cpp; references, autograd and fake
// kernels in vaebm_fast/ops/epilogues.py). k = 1/1.1 (LipSwish), s(t) = sigmoid(t).
//
// ebm_block_tail(h, skip, downsample) -> (out, pre)            h, skip: [B, C, H, W]
//   pre = avg2x2(h + skip) if downsample else h + skip;   out = k * pre * s(pre)
//   traffic (fp32, per input element): reads h, skip (8 B); writes out, pre (8 B, or 2 B when
//   downsampling). Eager: add, [pool], sigmoid, mul, mul -> ~40 B/element and 4-5 kernels.
// ebm_block_tail_backward(grad, pre, downsample) -> d          d at h's size
//   dp = grad * k * (s + pre s (1 - s)) (sigmoid recomputed from pre);
//   d[2y+i, 2x+j] = dp[y, x] / 4 if downsample else dp. Reads grad, pre; writes d.
// nvae_cell_tail(skip, h, gate, c) -> out                      gate: [B, C]
//   out = skip + (c * gate[b, ch]) * h. Reads skip, h (8 B); writes out (4 B).
// nvae_cell_tail_backward(grad, h, gate, c) -> (dh, dgate)
//   dh = (c * gate[b, ch]) * grad;  dgate[b, ch] = c * sum_hw grad * h  (one pass per plane,
//   reads grad, h; writes dh).
// affine_swish(x, a, b) -> out                                 x: [N, C, *], a, b: [C]
//   t = x * a[ch] + b[ch]; out = t * s(t). Reads x, writes out (8 B).
// affine_swish_backward(grad, x, a, b) -> (dx, da, db)
//   q = grad * (s + t s (1 - s)); dx = q * a[ch]; da[ch] = sum q x; db[ch] = sum q, sums over
//   every dim but 1: per-(n, ch) plane partial sums in parallel, then a deterministic sum
//   over n in double. Reads grad, x; writes dx.
//
// Arithmetic: float for fp32 / fp16 / bf16 (stored values rounded once), double for fp64.
// Vectorisation: at::vec for fp64 and for the exp-free fp32 loops; the fp32 loops with a
// sigmoid are plain loops over exp_nonpos_f (below) that the compiler vectorises; fp16/bf16 convert
// element by element. Parallelism: at::parallel_for
// over rows/planes. Layout: inputs are read through contiguous copies (free when already
// contiguous); outputs are new contiguous tensors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace vaebm_fast {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel task
// The flat loops run over chunks of kChunk elements: one long loop per task measured ~4x slower
// (fp32, 1M elements, AMD EPYC) than the same code over short chunks.
constexpr int64_t kChunk = 1024;

// Pointers of the float loops are __restrict: without it GCC versions the loops on a runtime
// alias check, and the scalar fallback (branchy sigmoid) measured ~4x slower.
#define VAEBM_RESTRICT __restrict
constexpr double kLip = 1.0 / 1.1;

// exp for float without a libm call, so that the float loops below auto-vectorise (the
// extension is compiled for baseline x86-64, where at::vec::Vectorized<float>::exp is a loop
// of scalar expf calls). Cephes' expf: round x / ln 2 to n (by the 1.5 * 2^23 trick),
// Cody-Waite reduction r = x - n ln 2 (|r| <= ln2/2), a degree-6 polynomial for e^r, times
// 2^n built in the exponent bits. Max relative error 1.2e-7 on [-87, 0]. Only x <= 0 is
// needed (see sigm), so only the lower end is clamped (-87: e^x ~ 1.6e-38, still normal);
// measured: a two-sided clamp made GCC's SSE2 loop ~20x slower. NaN stays NaN.
inline float exp_nonpos_f(float x) {
  x = std::max(x, -87.0f);
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// sigmoid(x) from e = exp(-|x|) in (0, 1]: 1 / (1 + e) for x >= 0, e / (1 + e) otherwise.
inline float sigm(float x) {
  const float e = exp_nonpos_f(-std::fabs(x));
  const float inv = 1.0f / (1.0f + e);
  return x >= 0.0f ? inv : e * inv;
}
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename Vec>
inline Vec vsigm(const Vec& x) {
  const Vec one(1);
  return one / (one + x.neg().exp());
}

// at::vec loops: for float and double where no exp is needed; for the loops with a sigmoid
// only for double (float goes through the plain loop with exp_nonpos_f, which GCC vectorises).
template <typename scalar_t>
constexpr bool kVectorised = std::is_same_v<scalar_t, at::opmath_type<scalar_t>>;
template <typename scalar_t>
constexpr bool kVecExp = std::is_same_v<scalar_t, double>;

// Rows (or planes) per parallel task for rows of `len` elements.
inline int64_t row_grain(int64_t len) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(len, 1));
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU kernel): ", name, " must be on the CPU");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                const char* ref_name, bool same_shape) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
  if (same_shape) {
    TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " has shape ", t.sizes(), " but ",
                ref_name, " has shape ", ref.sizes());
  }
}

at::Tensor new_contiguous(const at::Tensor& like, at::IntArrayRef sizes) {
  return at::empty(sizes, like.options().memory_format(at::MemoryFormat::Contiguous));
}

// ----------------------------------------------------------------------- ebm_block_tail

template <typename scalar_t>
void ebm_tail_flat(const scalar_t* VAEBM_RESTRICT h, const scalar_t* VAEBM_RESTRICT sk,
                   scalar_t* VAEBM_RESTRICT out, scalar_t* VAEBM_RESTRICT pre, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = static_cast<acc_t>(kLip);
  int64_t i = 0;
  if constexpr (kVecExp<scalar_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    const Vec kv(k);
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec p = Vec::loadu(h + i) + Vec::loadu(sk + i);
      p.store(pre + i);
      (kv * p * vsigm(p)).store(out + i);
    }
  }
  for (; i < n; ++i) {
    const acc_t p = static_cast<acc_t>(h[i]) + static_cast<acc_t>(sk[i]);
    pre[i] = static_cast<scalar_t>(p);
    out[i] = static_cast<scalar_t>(k * p * sigm(p));
  }
}

// One output row (Wo elements) of the downsampling tail from input rows r0 = 2y, r1 = 2y + 1.
template <typename scalar_t>
void ebm_tail_pool_row(const scalar_t* VAEBM_RESTRICT h0, const scalar_t* VAEBM_RESTRICT h1,
                       const scalar_t* VAEBM_RESTRICT s0, const scalar_t* VAEBM_RESTRICT s1,
                       scalar_t* VAEBM_RESTRICT out, scalar_t* VAEBM_RESTRICT pre, int64_t wo) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = static_cast<acc_t>(kLip);
  for (int64_t x = 0; x < wo; ++x) {
    const int64_t j = 2 * x;
    // Sum in the order of avg_pool2d(h + skip): first the element sums, then the window.
    const acc_t a = static_cast<acc_t>(h0[j]) + static_cast<acc_t>(s0[j]);
    const acc_t b = static_cast<acc_t>(h0[j + 1]) + static_cast<acc_t>(s0[j + 1]);
    const acc_t c = static_cast<acc_t>(h1[j]) + static_cast<acc_t>(s1[j]);
    const acc_t d = static_cast<acc_t>(h1[j + 1]) + static_cast<acc_t>(s1[j + 1]);
    const acc_t p = (a + b + c + d) * acc_t(0.25);
    pre[x] = static_cast<scalar_t>(p);
    out[x] = static_cast<scalar_t>(k * p * sigm(p));
  }
}

std::tuple<at::Tensor, at::Tensor> ebm_block_tail_cpu(const at::Tensor& h, const at::Tensor& skip,
                                                      bool downsample) {
  const char* op = "ebm_block_tail";
  check_float(h, op, "h");
  check_float(skip, op, "skip");
  TORCH_CHECK(h.dim() == 4, op, ": h must be [B, C, H, W], got shape ", h.sizes());
  check_like(skip, h, op, "skip", "h", true);
  const int64_t B = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  if (downsample) {
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0, op, ": downsample needs even H and W, got ", H, "x",
                W);
  }
  const int64_t Ho = downsample ? H / 2 : H, Wo = downsample ? W / 2 : W;
  at::Tensor out = new_contiguous(h, {B, C, Ho, Wo});
  at::Tensor pre = new_contiguous(h, {B, C, Ho, Wo});
  if (out.numel() == 0) return {out, pre};
  const at::Tensor hc = h.contiguous(), sc = skip.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ebm_block_tail",
                                  [&] {
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = pre.mutable_data_ptr<scalar_t>();
    if (!downsample) {
      at::parallel_for(0, hc.numel(), kGrain, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; c += kChunk) {
          const int64_t m = std::min(kChunk, e - c);
          ebm_tail_flat<scalar_t>(hp + c, sp + c, op_ + c, pp + c, m);
        }
      });
    } else {
      const int64_t rows = B * C * Ho;  // output rows; row r = (plane, y)
      at::parallel_for(0, rows, row_grain(4 * Wo), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t in0 = 2 * r * W;  // input row 2y of the same plane: (plane*H + 2y) * W
          ebm_tail_pool_row<scalar_t>(hp + in0, hp + in0 + W, sp + in0, sp + in0 + W,
                                      op_ + r * Wo, pp + r * Wo, Wo);
        }
      });
    }
  });
  return {out, pre};
}

template <typename scalar_t>
void lipswish_grad_flat(const scalar_t* VAEBM_RESTRICT g, const scalar_t* VAEBM_RESTRICT pre,
                        scalar_t* VAEBM_RESTRICT d, int64_t n, double factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = static_cast<acc_t>(kLip * factor);
  int64_t i = 0;
  if constexpr (kVecExp<scalar_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    const Vec kv(k), one(1);
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec p = Vec::loadu(pre + i);
      const Vec s = vsigm(p);
      (kv * Vec::loadu(g + i) * (s + p * s * (one - s))).store(d + i);
    }
  }
  for (; i < n; ++i) {
    const acc_t p = static_cast<acc_t>(pre[i]);
    const acc_t s = sigm(p);
    d[i] = static_cast<scalar_t>(k * static_cast<acc_t>(g[i]) * (s + p * s * (acc_t(1) - s)));
  }
}

at::Tensor ebm_block_tail_backward_cpu(const at::Tensor& grad, const at::Tensor& pre,
                                       bool downsample) {
  const char* op = "ebm_block_tail_backward";
  check_float(grad, op, "grad");
  check_float(pre, op, "pre");
  TORCH_CHECK(pre.dim() == 4, op, ": pre must be [B, C, H, W], got shape ", pre.sizes());
  check_like(grad, pre, op, "grad", "pre", true);
  const int64_t B = pre.size(0), C = pre.size(1), Ho = pre.size(2), Wo = pre.size(3);
  const int64_t H = downsample ? 2 * Ho : Ho, W = downsample ? 2 * Wo : Wo;
  at::Tensor d = new_contiguous(pre, {B, C, H, W});
  if (d.numel() == 0) return d;
  const at::Tensor gc = grad.contiguous(), pc = pre.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(),
                                  "ebm_block_tail_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.const_data_ptr<scalar_t>();
    scalar_t* dp = d.mutable_data_ptr<scalar_t>();
    if (!downsample) {
      at::parallel_for(0, pc.numel(), kGrain, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; c += kChunk) {
          const int64_t m = std::min(kChunk, e - c);
          lipswish_grad_flat<scalar_t>(gp + c, pp + c, dp + c, m, 1.0);
        }
      });
    } else {
      const int64_t rows = B * C * Ho;
      at::parallel_for(0, rows, row_grain(4 * Wo), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          // dp/4 of the pooled row goes to input row 2y; then widen it in place to 2*Wo
          // (back to front, so no value is overwritten before it is read) and copy to 2y + 1.
          scalar_t* d0 = dp + 2 * r * W;
          lipswish_grad_flat<scalar_t>(gp + r * Wo, pp + r * Wo, d0, Wo, 0.25);
          for (int64_t x = Wo - 1; x >= 0; --x) {
            const scalar_t v = d0[x];
            d0[2 * x] = v;
            d0[2 * x + 1] = v;
          }
          std::copy(d0, d0 + W, d0 + W);
        }
      });
    }
  });
  return d;
}

// ----------------------------------------------------------------------- nvae_cell_tail

std::tuple<int64_t, int64_t> check_cell(const at::Tensor& a, const char* a_name,
                                        const at::Tensor& h, const at::Tensor& gate,
                                        const char* op) {
  check_float(a, op, a_name);
  check_float(h, op, "h");
  check_float(gate, op, "gate");
  TORCH_CHECK(h.dim() == 4, op, ": h must be [B, C, H, W], got shape ", h.sizes());
  check_like(a, h, op, a_name, "h", true);
  check_like(gate, h, op, "gate", "h", false);
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == h.size(0) && gate.size(1) == h.size(1), op,
              ": gate must have shape [B, C] = [", h.size(0), ", ", h.size(1), "], got ",
              gate.sizes());
  return {h.size(0) * h.size(1), h.size(2) * h.size(3)};
}

at::Tensor nvae_cell_tail_cpu(const at::Tensor& skip, const at::Tensor& h, const at::Tensor& gate,
                              double scale) {
  int64_t planes, hw;
  std::tie(planes, hw) = check_cell(skip, "skip", h, gate, "nvae_cell_tail");
  at::Tensor out = new_contiguous(h, h.sizes());
  if (out.numel() == 0) return out;
  const at::Tensor sc = skip.contiguous(), hc = h.contiguous(), gc = gate.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "nvae_cell_tail",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, row_grain(hw), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t m = static_cast<acc_t>(scale) * static_cast<acc_t>(gp[p]);
        const scalar_t* s = sp + p * hw;
        const scalar_t* x = hp + p * hw;
        scalar_t* o = op_ + p * hw;
        int64_t i = 0;
        if constexpr (kVectorised<scalar_t>) {
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec mv(m);
          for (; i + Vec::size() <= hw; i += Vec::size()) {
            at::vec::fmadd(mv, Vec::loadu(x + i), Vec::loadu(s + i)).store(o + i);
          }
        }
        for (; i < hw; ++i) {
          o[i] = static_cast<scalar_t>(static_cast<acc_t>(s[i]) + m * static_cast<acc_t>(x[i]));
        }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(),
                                  "nvae_cell_tail_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    scalar_t* dhp = dh.mutable_data_ptr<scalar_t>();
    scalar_t* dgp = dgate.mutable_data_ptr<scalar_t>();
    const acc_t c = static_cast<acc_t>(scale);
    at::parallel_for(0, planes, row_grain(hw), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t m = c * static_cast<acc_t>(tp[p]);
        const scalar_t* g = gp + p * hw;
        const scalar_t* x = hp + p * hw;
        scalar_t* o = dhp + p * hw;
        acc_t sum = 0;
        int64_t i = 0;
        if constexpr (kVectorised<scalar_t>) {
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec mv(m);
          Vec acc(0);
          for (; i + Vec::size() <= hw; i += Vec::size()) {
            const Vec gv = Vec::loadu(g + i);
            (mv * gv).store(o + i);
            acc = at::vec::fmadd(gv, Vec::loadu(x + i), acc);
          }
          sum = at::vec::vec_reduce_all<scalar_t>([](const Vec& u, const Vec& v) { return u + v; }, acc);
        }
        for (; i < hw; ++i) {
          const acc_t gv = static_cast<acc_t>(g[i]);
          o[i] = static_cast<scalar_t>(m * gv);
          sum += gv * static_cast<acc_t>(x[i]);
        }
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
  check_float(scale, op, "scale");
  check_float(shift, op, "shift");
  TORCH_CHECK(x.dim() >= 2, op, ": x must have at least 2 dims [N, C, ...], got shape ",
              x.sizes());
  check_like(scale, x, op, "scale", "x", false);
  check_like(shift, x, op, "shift", "x", false);
  const int64_t C = x.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == C, op, ": scale must have shape [", C,
              "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == C, op, ": shift must have shape [", C,
              "], got ", shift.sizes());
  const int64_t N = x.size(0);
  return {N, C, C == 0 || N == 0 ? 0 : x.numel() / (N * C)};
}

at::Tensor affine_swish_cpu(const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift) {
  const auto dims = check_affine(x, scale, shift, "affine_swish");
  at::Tensor out = new_contiguous(x, x.sizes());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(), ac = scale.contiguous(), bc = shift.contiguous();
  const int64_t C = dims.C, inner = dims.inner;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_swish",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, dims.N * C, row_grain(inner), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t a = static_cast<acc_t>(ap[p % C]), sh = static_cast<acc_t>(bp[p % C]);
        const scalar_t* VAEBM_RESTRICT xr = xp + p * inner;
        scalar_t* VAEBM_RESTRICT o = op_ + p * inner;
        int64_t i = 0;
        if constexpr (kVecExp<scalar_t>) {
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec av(a), bv(sh);
          for (; i + Vec::size() <= inner; i += Vec::size()) {
            const Vec t = at::vec::fmadd(Vec::loadu(xr + i), av, bv);
            (t * vsigm(t)).store(o + i);
          }
        }
        for (; i < inner; ++i) {
          const acc_t t = static_cast<acc_t>(xr[i]) * a + sh;
          o[i] = static_cast<scalar_t>(t * sigm(t));
        }
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
  check_float(grad, op, "grad");
  check_like(grad, x, op, "grad", "x", true);
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
  std::vector<double> part_a(N * C), part_b(N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "affine_swish_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, row_grain(inner), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const acc_t a = static_cast<acc_t>(ap[p % C]), sh = static_cast<acc_t>(bp[p % C]);
        const scalar_t* VAEBM_RESTRICT g = gp + p * inner;
        const scalar_t* VAEBM_RESTRICT xr = xp + p * inner;
        scalar_t* VAEBM_RESTRICT o = dxp + p * inner;
        acc_t sum_qx = 0, sum_q = 0;
        int64_t i = 0;
        if constexpr (kVecExp<scalar_t>) {
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec av(a), bv(sh), one(1);
          Vec acc_qx(0), acc_q(0);
          for (; i + Vec::size() <= inner; i += Vec::size()) {
            const Vec xv = Vec::loadu(xr + i);
            const Vec t = at::vec::fmadd(xv, av, bv);
            const Vec s = vsigm(t);
            const Vec q = Vec::loadu(g + i) * (s + t * s * (one - s));
            (q * av).store(o + i);
            acc_qx = at::vec::fmadd(q, xv, acc_qx);
            acc_q = acc_q + q;
          }
          const auto add = [](const Vec& u, const Vec& v) { return u + v; };
          sum_qx = at::vec::vec_reduce_all<scalar_t>(add, acc_qx);
          sum_q = at::vec::vec_reduce_all<scalar_t>(add, acc_q);
        } else {
          // kLanes independent partial sums (no reassociation needed), so the compiler can
          // vectorise this loop, the exp included.
          constexpr int kLanes = 8;
          acc_t lane_qx[kLanes] = {}, lane_q[kLanes] = {};
          for (; i + kLanes <= inner; i += kLanes) {
            for (int l = 0; l < kLanes; ++l) {
              const acc_t xv = static_cast<acc_t>(xr[i + l]);
              const acc_t t = xv * a + sh;
              const acc_t s = sigm(t);
              const acc_t q = static_cast<acc_t>(g[i + l]) * (s + t * s * (acc_t(1) - s));
              o[i + l] = static_cast<scalar_t>(q * a);
              lane_qx[l] += q * xv;
              lane_q[l] += q;
            }
          }
          for (int l = 0; l < kLanes; ++l) {
            sum_qx += lane_qx[l];
            sum_q += lane_q[l];
          }
        }
        for (; i < inner; ++i) {
          const acc_t xv = static_cast<acc_t>(xr[i]);
          const acc_t t = xv * a + sh;
          const acc_t s = sigm(t);
          const acc_t q = static_cast<acc_t>(g[i]) * (s + t * s * (acc_t(1) - s));
          o[i] = static_cast<scalar_t>(q * a);
          sum_qx += q * xv;
          sum_q += q;
        }
        part_a[p] = static_cast<double>(sum_qx);
        part_b[p] = static_cast<double>(sum_q);
      }
    });
    scalar_t* dap = dscale.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = dshift.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      double sa = 0, sb = 0;
      for (int64_t n = 0; n < N; ++n) {
        sa += part_a[n * C + c];
        sb += part_b[n * C + c];
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
