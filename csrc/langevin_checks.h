// Argument checks of langevin_step_ shared by its CPU and CUDA kernels. The Python wrapper
// checks the same with friendlier messages; these guard direct calls through torch.ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

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

}  // namespace vaebm_fast
