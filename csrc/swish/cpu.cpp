// CPU kernels of vaebm_fast::swish_forward / swish_backward: the (scaled) Swish activation
//
//   forward:  y  = scale * x * s,                      s = sigmoid(x) = 1 / (1 + exp(-x))
//   backward: dx = scale * g * (s + x * s * (1 - s))   (sigmoid recomputed from x)
//
// scale = 1 is Swish / SiLU, scale = 1 / 1.1 is LipSwish. The references are swish_reference /
// swish_backward_reference in vaebm_fast/ops/swish.py. Autograd (which saves only x) is
// registered from Python.
//
// Memory traffic: forward reads x and writes y (8 bytes per fp32 element), backward reads g and
// x and writes dx (12 bytes per fp32 element); one exp and one division per element.
// Arithmetic: float for fp32 / fp16 / bf16 (rounded once when stored), with the vectorisable
// exp of simd_math.h (~2 ulp; the float loops are compiled per instruction set); double with
// std::exp for fp64. fp16 / bf16 go through L1-sized float blocks.
// Layout: outputs have x's layout (activation_format: channels-last or row-major), inputs are
// read through copies in that layout (free when they already have it).
#include <algorithm>
#include <cmath>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/kernel_dtypes.h"
#include "../common/layout.h"
#include "../common/simd_math.h"
#include "../common/swish_loops.h"

namespace vaebm_fast {
namespace cpu {
namespace {

// Elements per parallel task (~1-2 ns each).
constexpr int64_t kGrain = 32768;

// float32 loops: swish_loops.h's bodies, vectorised by the compiler per target clone.
VAEBM_FAST_TARGET_CLONES
void forward_f32(const float* x, float* y, int64_t n, float scale) {
  swish_loop<float>(x, y, n, scale);
}

VAEBM_FAST_TARGET_CLONES
void backward_f32(const float* g, const float* x, float* dx, int64_t n, float scale) {
  swish_grad_loop<float>(g, x, dx, n, scale);
}

// Elements per float block for fp16 / bf16 (4 KiB of floats per operand: stays in L1).
constexpr int64_t kBlock = 1024;

template <typename scalar_t>
void forward_range(const scalar_t* x, scalar_t* y, int64_t n, double scale) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    forward_f32(x, y, n, static_cast<float>(scale));
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    swish_loop<double>(x, y, n, scale);
  } else {  // fp16 / bf16: widen a block, compute in float, round once
    float xf[kBlock], yf[kBlock];
    for (int64_t start = 0; start < n; start += kBlock) {
      const int64_t len = std::min(kBlock, n - start);
      for (int64_t i = 0; i < len; ++i) xf[i] = static_cast<float>(x[start + i]);
      forward_f32(xf, yf, len, static_cast<float>(scale));
      for (int64_t i = 0; i < len; ++i) y[start + i] = static_cast<scalar_t>(yf[i]);
    }
  }
}

template <typename scalar_t>
void backward_range(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n,
                    double scale) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    backward_f32(g, x, dx, n, static_cast<float>(scale));
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    swish_grad_loop<double>(g, x, dx, n, scale);
  } else {
    float gf[kBlock], xf[kBlock], df[kBlock];
    for (int64_t start = 0; start < n; start += kBlock) {
      const int64_t len = std::min(kBlock, n - start);
      for (int64_t i = 0; i < len; ++i) {
        gf[i] = static_cast<float>(g[start + i]);
        xf[i] = static_cast<float>(x[start + i]);
      }
      backward_f32(gf, xf, df, len, static_cast<float>(scale));
      for (int64_t i = 0; i < len; ++i) dx[start + i] = static_cast<scalar_t>(df[i]);
    }
  }
}

void check_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU kernel): ", name, " must be on the CPU");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

at::Tensor swish_forward_cpu(const at::Tensor& x, double scale) {
  check_input(x, "swish_forward", "x");
  const auto fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t n = xc.numel();
  if (n == 0) return y;
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(x.scalar_type(), "swish_forward_cpu",
                                  [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      forward_range<scalar_t>(xp + begin, yp + begin, end - begin, scale);
    });
  });
  return y;
}

at::Tensor swish_backward_cpu(const at::Tensor& grad, const at::Tensor& x, double scale) {
  check_input(x, "swish_backward", "x");
  check_input(grad, "swish_backward", "grad");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "swish_backward: grad has dtype ",
              grad.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "swish_backward: grad has shape ", grad.sizes(),
              " but x has shape ", x.sizes());
  const auto fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt), gc = grad.contiguous(fmt);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t n = xc.numel();
  if (n == 0) return dx;
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(x.scalar_type(),
                                  "swish_backward_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      backward_range<scalar_t>(gp + begin, xp + begin, dp + begin, end - begin, scale);
    });
  });
  return dx;
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("swish_forward", &vaebm_fast::cpu::swish_forward_cpu);
  m.impl("swish_backward", &vaebm_fast::cpu::swish_backward_cpu);
}
