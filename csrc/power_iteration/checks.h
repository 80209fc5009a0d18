// Argument checks of power_iteration_ / spectral_norms_ shared by the CPU and CUDA kernels
// (each adds the dtypes it computes in). The Python wrapper checks the same with friendlier
// messages; these guard direct calls through torch.ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

namespace vaebm_fast {

// One u [G, R] and one v [G, C] per group W [G, R, C]; every tensor on Ws[0]'s device with
// Ws[0]'s dtype; no u / v rows sharing memory (matrices run in parallel and write their own
// rows: an expanded u would race). Returns the total number of matrices, G_1 + ... + G_K.
inline int64_t check_power_iteration_args(const char* op, at::TensorList Ws, at::TensorList us,
                                          at::TensorList vs, int64_t n_iter) {
  TORCH_CHECK(Ws.size() == us.size() && Ws.size() == vs.size(), op,
              ": need one u and one v per weight group, got ", Ws.size(), " groups, ",
              us.size(), " u's and ", vs.size(), " v's");
  TORCH_CHECK(n_iter >= 0, op, ": n_iter must be >= 0, got ", n_iter);
  int64_t total = 0;
  for (size_t k = 0; k < Ws.size(); ++k) {
    const at::Tensor &W = Ws[k], &u = us[k], &v = vs[k];
    TORCH_CHECK(W.dim() == 3, op, ": group ", k, ": W must be [G, R, C], got shape ", W.sizes());
    const int64_t G = W.size(0), R = W.size(1), C = W.size(2);
    TORCH_CHECK(u.dim() == 2 && u.size(0) == G && u.size(1) == R, op, ": group ", k,
                ": u must be [G, R] = [", G, ", ", R, "], got ", u.sizes());
    TORCH_CHECK(v.dim() == 2 && v.size(0) == G && v.size(1) == C, op, ": group ", k,
                ": v must be [G, C] = [", G, ", ", C, "], got ", v.sizes());
    for (const at::Tensor* t : {&W, &u, &v}) {
      TORCH_CHECK(t->device() == Ws[0].device(), op, ": group ", k, ": W, u and v must be on ",
                  Ws[0].device(), " (group 0's device), got ", t->device());
      TORCH_CHECK(t->scalar_type() == Ws[0].scalar_type(), op, ": group ", k,
                  ": every group's W, u and v must have one dtype, got ", t->scalar_type(),
                  " but group 0's W is ", Ws[0].scalar_type());
    }
    TORCH_CHECK(at::has_internal_overlap(u) != at::MemOverlap::Yes &&
                    at::has_internal_overlap(v) != at::MemOverlap::Yes,
                op, ": group ", k, ": u and v must not have elements sharing memory (e.g. from "
                "expand); pass a .clone()");
    // v is written while u is read (and the other way round): they must not overlap.
    const at::MemOverlapStatus uv = at::get_overlap_status(u, v);
    TORCH_CHECK(uv != at::MemOverlapStatus::Full && uv != at::MemOverlapStatus::Partial, op,
                ": group ", k, ": u and v are sharing memory; pass separate tensors");
    total += G;
  }
  return total;
}

}  // namespace vaebm_fast
