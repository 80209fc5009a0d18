// Philox4x32-10 and the normal transform shared by every vaebm_fast backend.
//
// Header-only, no torch headers, usable from host C++ and from CUDA device code (functions are
// `__host__ __device__` when compiled by nvcc/hipcc). The Python reference implementation is
// vaebm_fast/ops/rng.py; both must compute the same thing:
//
// Integer stream (bit-exact in every backend)
//   key     = (seed & 0xffffffff, seed >> 32)                     seed: 64-bit
//   counter = (c & 0xffffffff, c >> 32, 0, 0)                     c: 64-bit "call index"
//   10 rounds of the Random123 Philox4x32 round (the generator Triton's tl.randint4x computes):
//     (hi0, lo0) = 0xD2511F53 * x0,  (hi1, lo1) = 0xCD9E8D57 * x2   (32x32 -> 64-bit products)
//     x = (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)
//   with the key bumped by (0x9E3779B9, 0xBB67AE85) between rounds.
//   Known answer: key (0,0), counter (0,0,0,0) -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
//   Row stream r (scale-invariant noise, r < 2^62): counter = (c lo, c hi, (r+1) lo, (r+1) hi);
//   the "stream word" s = r + 1 below, s = 0 being the flat stream.
//
// Normal stream (agrees across backends to float tolerance; device libm differs by a few ulp)
//   Normal number m of the stream for `seed` comes from call c = m / 4, lane m % 4.
//   The call's words (w0, w1, w2, w3) become uniforms, computed in float32 as
//       u = (float)w * 2^-32 + 2^-32                       (in (0, 1], never 0, so log is finite)
//   ((float)w rounds to nearest; the multiply by 2^-32 is exact, so with or without FMA
//   contraction the result is the same single rounding of the add.) Two Box-Muller pairs,
//   lanes (0, 1) from (u0, u1) and lanes (2, 3) from (u2, u3), all in float32:
//       r = sqrt(-2 ln u_a),  n_a = r cos(2 pi u_b),  n_b = r sin(2 pi u_b)
//   where 2 pi is the float32 constant 6.2831855f and 2 pi u_b is one float32 multiply.
//   |n| <= sqrt(-2 ln 2^-32) ~ 6.66, so normals are always finite.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VAEBM_FAST_HD __host__ __device__ __forceinline__
#else
#define VAEBM_FAST_HD inline
#endif

namespace vaebm_fast {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;  // multiplier applied to word 0
constexpr uint32_t kMul1 = 0xCD9E8D57u;  // multiplier applied to word 2
constexpr uint32_t kKeyBump0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kKeyBump1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kRounds = 10;

constexpr float kTwoPi = 6.28318530717958647692f;
constexpr float kTwoPow32Inv = 2.3283064365386963e-10f;  // 2^-32, exact in float32

struct Words {
  uint32_t w[4];
};

VAEBM_FAST_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// Philox4x32 with 10 rounds on counter (c0, c1, c2, c3) and key (k0, k1).
VAEBM_FAST_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                  uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c0, hi0, lo0);
    mulhilo(kMul1, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kKeyBump0;  // the bump after the last round is unused (and harmless)
    k1 += kKeyBump1;
  }
  Words out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  return out;
}

// The four words of call `call` of the stream for `seed` (all 64-bit); `stream` fills counter
// words 2 and 3: 0 for the flat stream, r + 1 for row stream r.
VAEBM_FAST_HD Words philox_call(uint64_t seed, uint64_t call, uint64_t stream = 0) {
  return philox4x32_10(static_cast<uint32_t>(call), static_cast<uint32_t>(call >> 32),
                       static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// 32-bit word -> uniform in (0, 1], see the header comment.
VAEBM_FAST_HD float word_to_uniform(uint32_t w) {
  return static_cast<float>(w) * kTwoPow32Inv + kTwoPow32Inv;
}

// One Box-Muller pair: (wa, wb) -> (na, nb).
VAEBM_FAST_HD void box_muller(uint32_t wa, uint32_t wb, float& na, float& nb) {
  const float ua = word_to_uniform(wa);
  const float ub = word_to_uniform(wb);
  const float r = sqrtf(-2.0f * logf(ua));
  const float theta = kTwoPi * ub;
  na = r * cosf(theta);
  nb = r * sinf(theta);
}

// The four normals of one call: out[i] is normal number 4 * call + i.
VAEBM_FAST_HD void normals4(const Words& words, float out[4]) {
  box_muller(words.w[0], words.w[1], out[0], out[1]);
  box_muller(words.w[2], words.w[3], out[2], out[3]);
}

// Normal number m of the stream for `seed` (convenient for one-off use; kernels generating
// many normals should call philox_call once per 4 normals instead).
VAEBM_FAST_HD float normal_at(uint64_t seed, uint64_t m) {
  float out[4];
  normals4(philox_call(seed, m >> 2), out);
  return out[m & 3];
}

}  // namespace philox
}  // namespace vaebm_fast
