// torch glue of the CUDA Langevin kernel: argument checks, streams, contiguity, registration
// (kernel and launcher: langevin.cu / langevin_cuda.h). Mirrors csrc/cpu/langevin.cpp.
#include <limits>
#include <optional>
#include <vector>

#include <torch/library.h>

#include "../langevin_checks.h"
#include "glue.h"
#include "langevin_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

void langevin_step_cuda(at::TensorList tensors, at::TensorList grads, double step_size,
                        int64_t seed, int64_t offset, double prior_weight, double noise_scale,
                        std::optional<double> grad_clip, std::optional<double> clamp_low,
                        std::optional<double> clamp_high,
                        const std::optional<at::Tensor>& half_sq_norm) {
  // No tensors: nothing to do, half_sq_norm untouched (as the CPU kernel).
  if (!check_langevin_args(tensors, grads, offset)) return;
  const at::Device device = tensors[0].device();
  check_cuda(tensors[0], "langevin_step_", "tensors[0]");
  const at::ScalarType dtype = tensors[0].scalar_type();
  const int64_t batch = check_half_sq_norm(tensors, half_sq_norm);
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> work(tensors.size()), grad(tensors.size());
  std::vector<void*> t_ptr(tensors.size());
  std::vector<const void*> g_ptr(tensors.size());
  std::vector<int64_t> numels(tensors.size());
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    work[i] = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    grad[i] = grads[i].contiguous();
    t_ptr[i] = work[i].data_ptr();
    g_ptr[i] = grad[i].const_data_ptr();
    numels[i] = work[i].numel();
    total += numels[i];
  }
  TORCH_CHECK(total <= std::numeric_limits<int64_t>::max() - offset,
              "langevin_step_: offset + numel overflows int64");
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const LangevinArgs args{step_size * 0.5,
                          prior_weight,
                          noise_scale,
                          grad_clip.value_or(kInf),
                          clamp_low.value_or(-kInf),
                          clamp_high.value_or(kInf),
                          static_cast<uint64_t>(seed),
                          static_cast<uint64_t>(offset)};
  void* norm = half_sq_norm.has_value() ? half_sq_norm->data_ptr() : nullptr;
  VAEBM_FAST_CUDA_LAUNCH(langevin_step(to_dtype(dtype, "langevin_step_"),
                                       static_cast<int64_t>(tensors.size()), t_ptr.data(),
                                       g_ptr.data(), numels.data(), args, norm, batch,
                                       current_stream()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("langevin_step_", &vaebm_fast::cuda::langevin_step_cuda);
}
