// Argument checks of the fused epilogues shared by the CPU and CUDA kernels. Each backend
// first checks the first tensor of a call for its device and the dtypes it computes in; these
// then tie every other tensor to that one (dtype, device, shape). The Python wrappers in
// vaebm_fast/ops/epilogues.py check the same with friendlier messages; these guard direct
// calls through torch.ops.
#pragma once

#include <ATen/ATen.h>

namespace vaebm_fast {

// t has ref's dtype and device, and its shape when same_shape.
inline void check_epilogue_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                                const char* name, const char* ref_name, bool same_shape) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK(!same_shape || t.sizes() == ref.sizes(), op, ": ", name, " has shape ",
              t.sizes(), " but ", ref_name, " has shape ", ref.sizes());
}

// x [B, C, H, W] and y of its shape, dtype and device (h and skip, grad and pre, ...).
inline void check_nchw_pair(const char* op, const at::Tensor& x, const char* x_name,
                            const at::Tensor& y, const char* y_name) {
  TORCH_CHECK(x.dim() == 4, op, ": ", x_name, " must be NCHW [B, C, H, W], got shape ",
              x.sizes());
  check_epilogue_like(y, x, op, y_name, x_name, true);
}

// ebm_block_tail(h, skip, downsample): an NCHW pair, even H and W when downsampling.
inline void check_ebm_tail_args(const char* op, const at::Tensor& h, const at::Tensor& skip,
                                bool downsample) {
  check_nchw_pair(op, h, "h", skip, "skip");
  TORCH_CHECK(!downsample || (h.size(2) % 2 == 0 && h.size(3) % 2 == 0), op,
              ": downsample needs even H and W, got ", h.size(2), "x", h.size(3));
}

// nvae_cell_tail(skip, h, gate) and its backward (grad, h, gate): a (= skip or grad) and h an
// NCHW pair, gate [B, C].
inline void check_cell_args(const char* op, const at::Tensor& h, const at::Tensor& a,
                            const char* a_name, const at::Tensor& gate) {
  check_nchw_pair(op, h, "h", a, a_name);
  check_epilogue_like(gate, h, op, "gate", "h", false);
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == h.size(0) && gate.size(1) == h.size(1), op,
              ": gate must have shape [B, C] = [", h.size(0), ", ", h.size(1), "], got ",
              gate.sizes());
}

// affine_swish(x, scale, shift): x [N, C, ...] (dim >= 2), scale and shift [C].
inline void check_affine_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& shift) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must have at least 2 dims [N, C, ...], got shape ",
              x.sizes());
  const int64_t C = x.size(1);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{scale, "scale"},
                                std::pair<const at::Tensor&, const char*>{shift, "shift"}}) {
    check_epilogue_like(t, x, op, name, "x", false);
    TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " must have shape [C] = [", C,
                "], got ", t.sizes());
  }
}

}  // namespace vaebm_fast
