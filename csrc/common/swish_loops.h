// The (scaled) Swish and its derivative as inline loop bodies, written once for the swish op
// (swish.cpp) and the LipSwish epilogues (epilogues.cpp). Float instantiations are called from
// VAEBM_FAST_TARGET_CLONES functions (vectorised per instruction set), double ones directly.
//
//   y  = c * x * s,                     s = sigmoid(x)
//   dx = c * g * (s + x * s * (1 - s))  (s recomputed from x)
#pragma once

#include <cstdint>

#include "simd_math.h"

namespace vaebm_fast {
namespace cpu {

template <typename T>
VAEBM_FAST_INLINE void swish_loop(const T* __restrict x, T* __restrict y, int64_t n, T c) {
  for (int64_t i = 0; i < n; ++i) y[i] = c * x[i] * sigmoid(x[i]);
}

template <typename T>
VAEBM_FAST_INLINE void swish_grad_loop(const T* __restrict g, const T* __restrict x,
                                       T* __restrict dx, int64_t n, T c) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = sigmoid(x[i]);
    dx[i] = c * g[i] * (s + x[i] * s * (T(1) - s));
  }
}

}  // namespace cpu
}  // namespace vaebm_fast
