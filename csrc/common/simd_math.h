// Float32 math written as plain loops the compiler vectorises, for the CPU kernels.
//
// Why not at::vec: this extension is compiled once, for baseline x86-64, so at::vec's
// Vectorized<float> is its generic (non-AVX) version and exp() becomes a scalar libm call per
// element -- measured 2-3x slower than torch's own (AVX2/AVX-512, Sleef) kernels. Instead the
// hot loops call the inline functions below and are compiled several times with
// VAEBM_FAST_TARGET_CLONES (AVX-512, AVX2, baseline), the copy for the running CPU being picked
// when the library loads, so the package stays portable.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VAEBM_FAST_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VAEBM_FAST_TARGET_CLONES
#endif

// Loop bodies called from a VAEBM_FAST_TARGET_CLONES function must be inlined into each clone
// (a call would run the baseline copy); GCC keeps the larger ones out of line unless told.
#if defined(__GNUC__)
#define VAEBM_FAST_INLINE inline __attribute__((always_inline))
#else
#define VAEBM_FAST_INLINE inline
#endif

namespace vaebm_fast {
namespace cpu {

inline uint32_t float_bits(float x) {
  uint32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
}

inline float bits_float(uint32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
}

// exp(x) to ~2 float32 ulp for x in [-87, 88.3]; below, x is clamped to -87 (exp(-87) ~ 2e-38
// stands for anything smaller), above 88.4 the result is +inf (as for +inf itself); NaN stays
// NaN. So sigmoid(-inf) = 0 and swish(-inf) = NaN, as in torch. x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite: ln 2 split in two floats so
// n * kLn2Hi is exact), exp(r) by its Taylor series to r^7 (truncation < 2e-8 relative), and
// 2^n put into the exponent bits. n is rounded with the 1.5 * 2^23 trick, which vectorises.
inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504f;
  constexpr float kLn2Hi = 0.693145752f;   // 16 significant bits
  constexpr float kLn2Lo = 1.42860677e-06f;  // ln 2 - kLn2Hi
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  x = x < -87.0f ? -87.0f : (x > 89.0f ? 89.0f : x);  // 89: n = 128, 2^n = inf
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;
  const int32_t ni = static_cast<int32_t>(float_bits(shifted) - float_bits(kRound));
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
      r * (1.0f / 720 + r * (1.0f / 5040)))))));
  return p * bits_float(static_cast<uint32_t>(ni + 127) << 23);
}

// sigmoid(x) = 1 / (1 + exp(-x)); saturates to 0 / 1 within float32 accuracy for |x| > 87.
inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// sigmoid for the loop templates: simd_math's for float, libm's exp for double.
VAEBM_FAST_INLINE float sigmoid(float x) { return sigmoid_f32(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace cpu
}  // namespace vaebm_fast
