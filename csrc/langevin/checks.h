// Argument checks of langevin_step_ shared by its CPU and CUDA kernels. The Python wrapper
// checks the same with friendlier messages; these guard direct calls through torch.ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <optional>

namespace vaebm_fast {

// Lists of equal length; every tensor and grad on tensors[0]'s device with its dtype and each
// grad shaped like its tensor; no tensor with self-overlapping memory. Returns false for an
// empty list (nothing to do).
inline bool check_langevin_args(at::TensorList tensors, at::TensorList grads, int64_t offset) {
  TORCH_CHECK(tensors.size() == grads.size(), "langevin_step_: got ", tensors.size(),
              " tensors but ", grads.size(), " grads");
  TORCH_CHECK(offset >= 0, "langevin_step_: offset must be >= 0, got ", offset);
  if (tensors.empty()) return false;
  const at::Device device = tensors[0].device();
  const at::ScalarType dtype = tensors[0].scalar_type();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(t.device() == device && g.device() == device, "langevin_step_: tensors[", i,
                "] and grads[", i, "] must be on ", device);
    TORCH_CHECK(t.scalar_type() == dtype && g.scalar_type() == dtype,
                "langevin_step_: all tensors and grads must have dtype ", dtype, "; tensors[", i,
                "] is ", t.scalar_type(), ", grads[", i, "] is ", g.scalar_type());
    TORCH_CHECK(t.sizes() == g.sizes(), "langevin_step_: tensors[", i, "] has shape ",
                t.sizes(), " but grads[", i, "] has shape ", g.sizes());
    TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, "langevin_step_: tensors[",
                i, "] has elements sharing memory (e.g. from expand); pass a .clone()");
  }
  TORCH_CHECK(at::isFloatingType(dtype), "langevin_step_: tensors must be floating, got ", dtype);
  return true;
}

// The optional half_sq_norm output: float32 [B] (float64 for float64 tensors), contiguous, on
// the tensors' device, where every tensor has dim >= 1 and dim 0 == B. Returns B (0 if absent).
inline int64_t check_half_sq_norm(at::TensorList tensors,
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

// Row mode (first_row given): every tensor has dim >= 1 and the same dim 0, B, and
// first_row >= 0. Returns B, or -1 in flat mode (first_row absent).
inline int64_t check_langevin_rows(at::TensorList tensors, const std::optional<int64_t>& first_row) {
  if (!first_row.has_value()) return -1;
  TORCH_CHECK(*first_row >= 0, "langevin_step_: first_row must be >= 0, got ", *first_row);
  TORCH_CHECK(tensors[0].dim() >= 1, "langevin_step_: first_row (row mode) needs tensors with a "
              "batch dimension (dim 0); tensors[0] is 0-d");
  const int64_t batch = tensors[0].size(0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].dim() >= 1 && tensors[i].size(0) == batch, "langevin_step_: "
                "first_row (row mode) needs every tensor to have dim 0 == ", batch,
                "; tensors[", i, "] has shape ", tensors[i].sizes());
  }
  return batch;
}

}  // namespace vaebm_fast
