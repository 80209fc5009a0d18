// CPU helper: Philox normals in blocks, for kernels that consume noise on the fly.
#pragma once

#include <cstdint>

namespace vaebm_fast {
namespace cpu {

// Normals per block generated into a stack buffer by fused kernels: 4 KiB of floats stays in
// L1 between generation and use, so noise never goes to memory. A multiple of 4 (one Philox
// call gives 4 normals) so consecutive blocks of an aligned range start on a call boundary.
constexpr int64_t kNoiseBlock = 1024;

// out[i] = normal number m0 + i of the stream for `seed`, i in [0, n): the transform of
// csrc/philox.h, vectorised (see normals.cpp). Any n; thread-safe; no allocation.
void fill_normals(float* out, int64_t n, uint64_t seed, uint64_t m0);

}  // namespace cpu
}  // namespace vaebm_fast
