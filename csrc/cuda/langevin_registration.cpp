// torch glue of the CUDA Langevin kernel: argument checks, streams, contiguity, registration
// (kernel and launcher: langevin.cu / langevin_cuda.h). Mirrors csrc/cpu/langevin.cpp.
#include <limits>
#include <optional>
#include <vector>

#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../langevin_checks.h"
#include "langevin_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default: TORCH_CHECK(false, "langevin_step_: unsupported dtype ", t);
  }
}

void langevin_step_cuda(at::TensorList tensors, at::TensorList grads, double step_size,
                        int64_t seed, int64_t offset, double prior_weight, double noise_scale,
                        std::optional<double> grad_clip, std::optional<double> clamp_low,
                        std::optional<double> clamp_high,
                        const std::optional<at::Tensor>& half_sq_norm) {
  if (!check_langevin_args(tensors, grads, offset)) return;
  TORCH_CHECK(!half_sq_norm.has_value(), "langevin_step_: half_sq_norm is not implemented yet");
  const at::Device device = tensors[0].device();
  const at::ScalarType dtype = tensors[0].scalar_type();
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
  C10_CUDA_CHECK(langevin_step(to_dtype(dtype), static_cast<int64_t>(tensors.size()),
                               t_ptr.data(), g_ptr.data(), numels.data(), args,
                               c10::cuda::getCurrentCUDAStream()));
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
