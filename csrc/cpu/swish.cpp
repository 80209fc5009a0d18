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
// Arithmetic: float for fp32 / fp16 / bf16 (rounded once when stored), double for fp64.
// Layout: inputs are read through contiguous copies; outputs are new contiguous tensors.
#include <cmath>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace vaebm_fast {
namespace cpu {
namespace {

// Elements per parallel task (~1-2 ns each).
constexpr int64_t kGrain = 32768;

template <typename T>
inline T sigmoid_scalar(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename scalar_t>
void forward_range(const scalar_t* x, scalar_t* y, int64_t n, double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {  // float / double: vectorised
    using Vec = at::vec::Vectorized<scalar_t>;
    const Vec one(scalar_t(1)), sc(scale);
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec xv = Vec::loadu(x + i);
      const Vec s = one / (one + xv.neg().exp());
      (sc * (xv * s)).store(y + i);
    }
  }
  for (; i < n; ++i) {
    const acc_t xv = static_cast<acc_t>(x[i]);
    y[i] = static_cast<scalar_t>(scale * (xv * sigmoid_scalar(xv)));
  }
}

template <typename scalar_t>
void backward_range(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n,
                    double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    const Vec one(scalar_t(1)), sc(scale);
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec xv = Vec::loadu(x + i);
      const Vec s = one / (one + xv.neg().exp());
      const Vec d = s + xv * s * (one - s);
      (sc * Vec::loadu(g + i) * d).store(dx + i);
    }
  }
  for (; i < n; ++i) {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t s = sigmoid_scalar(xv);
    dx[i] = static_cast<scalar_t>(scale * static_cast<acc_t>(g[i]) * (s + xv * s * (acc_t(1) - s)));
  }
}

void check_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU kernel): ", name, " must be on the CPU");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

at::Tensor swish_forward_cpu(const at::Tensor& x, double scale) {
  check_input(x, "swish_forward", "x");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = xc.numel();
  if (n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swish_forward_cpu",
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
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = xc.numel();
  if (n == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
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
