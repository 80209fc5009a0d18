// torch glue of the CUDA Langevin kernel: argument checks, streams, contiguity, registration
// (kernel and launcher: langevin.cu / langevin_cuda.h). Mirrors csrc/cpu/langevin.cpp.
#include <limits>
#include <optional>
#include <vector>

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "../langevin_checks.h"
#include "glue.h"
#include "langevin_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

// The optional half_sq_norm output: float32 [B] (float64 for float64 tensors), contiguous, on
// the tensors' device, where every tensor has dim >= 1 and dim 0 == B. Returns B (0 if absent).
// The same checks and messages as the CPU kernel's check_half_sq_norm, which is being added to
// csrc/langevin_checks.h in parallel: after the merge this function can be replaced by it.
int64_t check_half_sq_norm_cuda(at::TensorList tensors,
                                const std::optional<at::Tensor>& half_sq_norm) {
  if (!half_sq_norm.has_value()) return 0;
  const at::Tensor& out = *half_sq_norm;
  TORCH_CHECK(tensors[0].dim() >= 1, "langevin_step_: half_sq_norm needs tensors with a batch "
              "dimension (dim 0); tensors[0] is 0-d");
  const int64_t batch = tensors[0].size(0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].dim() >= 1 && tensors[i].size(0) == batch, "langevin_step_: "
                "half_sq_norm needs every tensor to have dim 0 == ", batch, "; tensors[", i,
                "] has shape ", tensors[i].sizes());
  }
  const at::ScalarType want =
      tensors[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(out.scalar_type() == want && out.dim() == 1 && out.size(0) == batch &&
                  out.is_contiguous() && out.device() == tensors[0].device(),
              "langevin_step_: half_sq_norm must be a contiguous ", want, " tensor of shape [",
              batch, "] on ", tensors[0].device(), " (got ", out.scalar_type(), " ",
              out.sizes(), " on ", out.device(), ")");
  return batch;
}

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
  const int64_t batch = check_half_sq_norm_cuda(tensors, half_sq_norm);
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
