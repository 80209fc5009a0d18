// Constants of the ops' maths that the CPU and CUDA kernels share (plain C++, no torch): the
// C++ statement of the same constants in vaebm_fast/_kernel_rules.py.
#pragma once

namespace vaebm_fast {

// LipSwish divides Swish by 1.1, an upper bound of Swish's slope, so it is 1-Lipschitz.
constexpr double kLipSwishScale = 1.0 / 1.1;

}  // namespace vaebm_fast
