// CPU helper: Philox normals in blocks, for kernels that consume noise on the fly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace vaebm_fast {
namespace cpu {

// Normals per block generated into a stack buffer by fused kernels: 4 KiB of floats stays in
// L1 between generation and use, so noise never goes to memory. A multiple of 4 (one Philox
// call gives 4 normals) so consecutive blocks of an aligned range start on a call boundary.
constexpr int64_t kNoiseBlock = 1024;

// out[i] = normal number m0 + i of the stream for `seed`, i in [0, n): the transform of
// csrc/common/philox.h, vectorised (see normals.cpp). Any n; thread-safe; no allocation.
// `stream`: counter words 2 and 3, 0 for the flat stream, r + 1 for row stream r.
void fill_normals(float* out, int64_t n, uint64_t seed, uint64_t m0, uint64_t stream = 0);

// The same normals, generated in float32 (the spec) and rounded to scalar_t; other dtypes go
// through an L1-sized stack block.
template <typename scalar_t>
void fill_normals_as(scalar_t* out, int64_t n, uint64_t seed, uint64_t m0,
                     uint64_t stream = 0) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    fill_normals(out, n, seed, m0, stream);
  } else {
    float block[kNoiseBlock];
    for (int64_t start = 0; start < n; start += kNoiseBlock) {
      const int64_t len = std::min(kNoiseBlock, n - start);
      fill_normals(block, len, seed, m0 + static_cast<uint64_t>(start), stream);
      for (int64_t i = 0; i < len; ++i) out[start + i] = static_cast<scalar_t>(block[i]);
    }
  }
}

}  // namespace cpu
}  // namespace vaebm_fast
