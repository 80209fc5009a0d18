// Vectorised CPU generation of the Philox normal stream (the transform is specified in
// csrc/common/philox.h and vaebm_fast/ops/rng.py).
//
// The scalar code in philox.h costs ~10-13 ns per normal on a current x86 core (~4.5 ns Philox,
// ~8 ns libm logf/sincosf), none of it SIMD; this file gets ~2.2 ns with AVX2 and
// ~0.8 ns with AVX-512 (one core of a 2-core AMD EPYC VM). Here both parts are written as
// structure-of-arrays loops over kLanes independent Philox calls that the compiler turns into
// SIMD code:
//   * Philox: 32x32->64-bit products of uint32 lanes (pmuludq / vpmuludq).
//   * log and sin/cos: short polynomials instead of libm calls, accurate to a few float32
//     ulp (log via atanh series; sin/cos by Taylor series on [-pi/4, pi/4] after an exact
//     quadrant reduction of the same float32 theta = 6.2831855f * u_b the spec uses).
// Integer words are bit-identical to philox.h; normals agree with the libm/torch transform to
// ~1e-6 absolute (|n| <= 6.66). The hot function is compiled three times (AVX-512, AVX2 and
// baseline x86-64; VAEBM_FAST_TARGET_CLONES in simd_math.h) and picked at load time by the
// CPU, so the package stays portable. (AVX-512 measured ~3x faster than AVX2 here.)
#include "normals.h"

#include <cmath>
#include <cstring>

#include "philox.h"
#include "simd_math.h"

namespace vaebm_fast {
namespace cpu {
namespace {

using namespace vaebm_fast::philox;

// Philox calls per SIMD batch: 64 calls = 256 normals, 4 KiB of words, stays in L1.
constexpr int kLanes = 64;

// ln(u) for u in (0, 1] (normal floats only; the stream's u >= 2^-32 always is).
// u = 2^e * m with m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| <= 0.1716, summed to s^9 (truncation < 1e-9 relative).
inline float log_unit(float u) {
  const uint32_t bits = float_bits(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;  // sign bit is 0
  float m = bits_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  const float ln_m = 2.0f * s + 2.0f * s * series;
  // ln 2 split so that e * kLn2Hi is exact (kLn2Hi has 12 significant bits, |e| <= 32).
  constexpr float kLn2Hi = 0.693115234375f;
  constexpr float kLn2Lo = 3.1946184945309417e-05f;  // ln 2 - kLn2Hi
  const float ef = static_cast<float>(e);
  return ef * kLn2Hi + (ln_m + ef * kLn2Lo);
}

// sin and cos of theta in (0, 2 pi + eps]. theta = q pi/2 + t with |t| <= pi/4 + eps, where
// pi/2 is split in three floats (Cody-Waite) so that theta - q * kP1 - q * kP2 is exact and t
// is accurate to an ulp; then Taylor series of sin t and cos t (truncation < 2e-9).
inline void sincos_0_2pi(float theta, float& sin_out, float& cos_out) {
  constexpr float kP1 = 1.5703125f;                // 8 significant bits
  constexpr float kP2 = 4.838705062866211e-04f;    // 12 significant bits
  constexpr float kP3 = -4.371138828673793e-08f;   // kP1 + kP2 + kP3 = pi/2 to 2e-15
  // theta > 0, so truncating theta * 2/pi + 0.5 rounds to the nearest quadrant (q in 0..4);
  // a plain conversion vectorises where nearbyint would be a libm call.
  const int32_t q = static_cast<int32_t>(theta * 0.636619772f + 0.5f);
  const float qf = static_cast<float>(q);
  const float t = ((theta - qf * kP1) - qf * kP2) - qf * kP3;
  const float t2 = t * t;
  // sin t = t - t^3/3! + ... + t^9/9!,  cos t = 1 - t^2/2! + ... - t^10/10!  (Horner in t^2)
  const float s =
      t + t * t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (1.0f / 362880))));
  const float c =
      1.0f + t2 * (-0.5f + t2 * (1.0f / 24 + t2 * (-1.0f / 720 +
                                                   t2 * (1.0f / 40320 + t2 * (-1.0f / 3628800)))));
  // Quadrant k = q mod 4: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s).
  const int32_t k = q & 3;
  const float sin_abs = (k & 1) ? c : s;
  const float cos_abs = (k & 1) ? s : c;
  sin_out = (k & 2) ? -sin_abs : sin_abs;
  cos_out = ((k + 1) & 2) ? -cos_abs : cos_abs;
}

// Box-Muller on word arrays: (na[j], nb[j]) from (wa[j], wb[j]).
inline void box_muller_lanes(const uint32_t* wa, const uint32_t* wb, float* na, float* nb) {
  for (int j = 0; j < kLanes; ++j) {
    const float ua = word_to_uniform(wa[j]);
    const float ub = word_to_uniform(wb[j]);
    const float r = std::sqrt(-2.0f * log_unit(ua));
    float s, c;
    sincos_0_2pi(kTwoPi * ub, s, c);
    na[j] = r * c;
    nb[j] = r * s;
  }
}

// out[0 .. 4 kLanes) = normals of calls call0 .. call0 + kLanes - 1 (counter words 2, 3 from
// `stream`: 0 for the flat stream, r + 1 for row stream r; the same for every lane).
VAEBM_FAST_TARGET_CLONES
void normals_batch(float* out, uint64_t seed, uint64_t call0, uint64_t stream) {
  alignas(64) uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t call = call0 + static_cast<uint64_t>(j);
    x0[j] = static_cast<uint32_t>(call);
    x1[j] = static_cast<uint32_t>(call >> 32);
    x2[j] = static_cast<uint32_t>(stream);
    x3[j] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kRounds; ++round) {  // same round as philox4x32_10, per lane
    for (int j = 0; j < kLanes; ++j) {
      const uint64_t p0 = static_cast<uint64_t>(kMul0) * x0[j];
      const uint64_t p1 = static_cast<uint64_t>(kMul1) * x2[j];
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1[j] ^ k0;
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3[j] ^ k1;
      x1[j] = static_cast<uint32_t>(p1);
      x3[j] = static_cast<uint32_t>(p0);
      x0[j] = y0;
      x2[j] = y2;
    }
    k0 += kKeyBump0;
    k1 += kKeyBump1;
  }
  alignas(64) float n0[kLanes], n1[kLanes], n2[kLanes], n3[kLanes];
  box_muller_lanes(x0, x1, n0, n1);
  box_muller_lanes(x2, x3, n2, n3);
  for (int j = 0; j < kLanes; ++j) {  // lane order: normal 4 * call + i
    out[4 * j + 0] = n0[j];
    out[4 * j + 1] = n1[j];
    out[4 * j + 2] = n2[j];
    out[4 * j + 3] = n3[j];
  }
}

}  // namespace

void fill_normals(float* out, int64_t n, uint64_t seed, uint64_t m0, uint64_t stream) {
  constexpr int64_t kBatch = 4 * kLanes;
  alignas(64) float batch[kBatch];
  int64_t i = 0;
  while (i < n) {
    const uint64_t m = m0 + static_cast<uint64_t>(i);
    const int64_t skip = static_cast<int64_t>(m & 3);  // lanes before m in its call
    const int64_t take = (n - i < kBatch - skip) ? n - i : kBatch - skip;
    if (skip == 0 && take == kBatch) {
      normals_batch(out + i, seed, m >> 2, stream);  // whole batch, straight into the output
    } else {
      normals_batch(batch, seed, m >> 2, stream);  // ends of the range: at most 2 batches per call
      std::memcpy(out + i, batch + skip, static_cast<size_t>(take) * sizeof(float));
    }
    i += take;
  }
}

}  // namespace cpu
}  // namespace vaebm_fast
