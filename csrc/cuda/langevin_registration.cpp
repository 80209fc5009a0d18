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

// half_sq_norm: 1-D [B] of float32 (float64 for float64 tensors) on the tensors' device, where
// B = dim 0 of every tensor (each must have dim >= 1). Returns B.
int64_t check_half_sq_norm(at::TensorList tensors, const at::Tensor& norm) {
  constexpr const char* op = "langevin_step_";
  const at::Tensor& t0 = tensors[0];
  TORCH_CHECK(norm.device() == t0.device(), op, ": half_sq_norm is on ", norm.device(),
              " but the tensors are on ", t0.device());
  const at::ScalarType want = t0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(norm.scalar_type() == want, op, ": half_sq_norm must be ", want, " for ",
              t0.scalar_type(), " tensors, got ", norm.scalar_type());
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].dim() >= 1, op, ": with half_sq_norm every tensor needs a batch "
                "dimension (dim 0); tensors[", i, "] is 0-d");
  }
  const int64_t B = t0.size(0);
  for (size_t i = 1; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].size(0) == B, op, ": with half_sq_norm every tensor must have the "
                "batch size B = ", B, " of tensors[0] along dim 0; tensors[", i, "] has shape ",
                tensors[i].sizes());
  }
  TORCH_CHECK(norm.dim() == 1 && norm.size(0) == B, op, ": half_sq_norm must have shape [B] = [",
              B, "], got ", norm.sizes());
  TORCH_CHECK(at::has_internal_overlap(norm) != at::MemOverlap::Yes, op,
              ": half_sq_norm has elements sharing memory (e.g. from expand)");
  return B;
}

void langevin_step_cuda(at::TensorList tensors, at::TensorList grads, double step_size,
                        int64_t seed, int64_t offset, double prior_weight, double noise_scale,
                        std::optional<double> grad_clip, std::optional<double> clamp_low,
                        std::optional<double> clamp_high,
                        const std::optional<at::Tensor>& half_sq_norm) {
  if (!check_langevin_args(tensors, grads, offset)) {
    // No tensors: the sum over them is 0 for every row.
    if (half_sq_norm.has_value()) half_sq_norm->zero_();
    return;
  }
  const at::Device device = tensors[0].device();
  check_cuda(tensors[0], "langevin_step_", "tensors[0]");
  const at::ScalarType dtype = tensors[0].scalar_type();
  int64_t batch = 0;
  if (half_sq_norm.has_value()) batch = check_half_sq_norm(tensors, *half_sq_norm);
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
  at::Tensor norm_work;
  if (half_sq_norm.has_value()) {
    norm_work = half_sq_norm->is_contiguous() ? *half_sq_norm : half_sq_norm->contiguous();
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const LangevinArgs args{step_size * 0.5,
                          prior_weight,
                          noise_scale,
                          grad_clip.value_or(kInf),
                          clamp_low.value_or(-kInf),
                          clamp_high.value_or(kInf),
                          static_cast<uint64_t>(seed),
                          static_cast<uint64_t>(offset)};
  VAEBM_FAST_CUDA_LAUNCH(langevin_step(
      to_dtype(dtype, "langevin_step_"), static_cast<int64_t>(tensors.size()), t_ptr.data(),
      g_ptr.data(), numels.data(), args, norm_work.defined() ? norm_work.data_ptr() : nullptr,
      batch, current_stream()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
  if (norm_work.defined() && !norm_work.is_same(*half_sq_norm)) half_sq_norm->copy_(norm_work);
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("langevin_step_", &vaebm_fast::cuda::langevin_step_cuda);
}
