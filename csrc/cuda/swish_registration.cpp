// torch glue of the CUDA Swish kernels (swish.cu / swish_cuda.h). Mirrors csrc/cpu/swish.cpp:
// outputs have x's layout (activation_format), inputs are read through copies in that layout.
#include <torch/library.h>

#include "../layout.h"
#include "glue.h"
#include "swish_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

at::Tensor swish_forward_cuda(const at::Tensor& x, double scale) {
  check_floating(x, "swish_forward", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  VAEBM_FAST_CUDA_LAUNCH(swish_forward(to_dtype(x.scalar_type(), "swish_forward"),
                                       xc.const_data_ptr(), y.mutable_data_ptr(), xc.numel(),
                                       scale, current_stream()));
  return y;
}

at::Tensor swish_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double scale) {
  check_floating(x, "swish_backward", "x");
  check_floating(grad, "swish_backward", "grad");
  check_like(grad, x, "swish_backward", "grad", "x");
  check_same_shape(grad, x, "swish_backward", "grad", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt), gc = grad.contiguous(fmt);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  VAEBM_FAST_CUDA_LAUNCH(swish_backward(to_dtype(x.scalar_type(), "swish_backward"),
                                        gc.const_data_ptr(), xc.const_data_ptr(),
                                        dx.mutable_data_ptr(), xc.numel(), scale,
                                        current_stream()));
  return dx;
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("swish_forward", &vaebm_fast::cuda::swish_forward_cuda);
  m.impl("swish_backward", &vaebm_fast::cuda::swish_backward_cuda);
}
