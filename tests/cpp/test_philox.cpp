// Known-answer tests for csrc/common/philox.h (no torch needed):
//   g++ -std=c++17 -I csrc/common tests/cpp/test_philox.cpp
#include <cmath>
#include <cstdio>

#include "philox.h"

namespace {

int failures = 0;

void expect_words(const char* name, vaebm_fast::philox::Words got, const uint32_t want[4]) {
  bool ok = true;
  for (int i = 0; i < 4; ++i) ok = ok && got.w[i] == want[i];
  std::printf("%s %s: %08x %08x %08x %08x\n", ok ? "ok  " : "FAIL", name, got.w[0], got.w[1],
              got.w[2], got.w[3]);
  if (!ok) ++failures;
}

}  // namespace

int main() {
  using namespace vaebm_fast::philox;
  // Random123 known answers (kat_vectors, philox4x32_10).
  const uint32_t zero[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  expect_words("ctr=0 key=0", philox4x32_10(0, 0, 0, 0, 0, 0), zero);
  const uint32_t ones[4] = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  expect_words("ctr=key=0xffffffff",
               philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
                             0xffffffffu),
               ones);
  const uint32_t pi[4] = {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u};
  expect_words("ctr,key=digits of pi",
               philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u,
                             0x299f31d0u),
               pi);
  // Seed/counter packing: seed -> (lo, hi) key, call -> (lo, hi, 0, 0) counter.
  expect_words("philox_call(seed=0, call=0)", philox_call(0, 0), zero);
  const uint64_t seed = 0x299f31d0a4093822ull, call = 0x85a308d3243f6a88ull;
  const Words direct = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0, 0, 0xa4093822u, 0x299f31d0u);
  expect_words("philox_call packing", philox_call(seed, call), direct.w);
  // Row streams: counter words 2, 3 = (lo, hi) of stream = row + 1; row 2^32 - 1 carries
  // into word 3.
  const uint64_t stream = 0x13198a2e03707344ull + 1;  // row 0x13198a2e03707344
  const Words row = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x03707345u, 0x13198a2eu,
                                  0xa4093822u, 0x299f31d0u);
  expect_words("philox_call row stream packing", philox_call(seed, call, stream), row.w);
  const Words carry = philox4x32_10(5u, 0u, 0u, 1u, 0xa4093822u, 0x299f31d0u);
  expect_words("philox_call row 2^32 - 1", philox_call(seed, 5, 0xffffffffull + 1), carry.w);

  // Uniform endpoints: w = 0 -> 2^-32, w = 2^32 - 1 -> 1 (rounded), never 0.
  const bool u_ok = word_to_uniform(0u) == std::ldexp(1.0f, -32) &&
                    word_to_uniform(0xffffffffu) == 1.0f;
  std::printf("%s uniform endpoints\n", u_ok ? "ok  " : "FAIL");
  if (!u_ok) ++failures;

  // Normals: finite, and the extreme word gives the largest radius sqrt(-2 ln 2^-32).
  float na, nb;
  box_muller(0u, 0u, na, nb);
  const bool n_ok = std::fabs(na - std::sqrt(64.0f * std::log(2.0f))) < 1e-4f &&
                    std::isfinite(nb);
  std::printf("%s box_muller extreme (%f, %f)\n", n_ok ? "ok  " : "FAIL", na, nb);
  if (!n_ok) ++failures;

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
