// torch glue of the CUDA power-iteration kernel (power_iteration.cu / power_iteration_cuda.h):
// argument checks (those of _check_group in vaebm_fast/ops/power_iteration.py), contiguous
// work copies of u / v copied back when the caller's are strided, one launch per dtype for
// all groups of a call, and an ATen fallback for matrices whose u and v do not fit in shared
// memory (R + C beyond ~56k float32 on H100/H200), which no model here comes near.
#include <string>
#include <vector>

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "glue.h"
#include "power_iteration_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

struct Work {
  at::Tensor W, u, v, sigma;  // contiguous: what the kernel reads and writes
};

void check_group(const std::string& where, const at::Tensor& W, const at::Tensor& u,
                 const at::Tensor& v, const at::Device& device) {
  const char* op = where.c_str();
  check_floating(W, op, "W");
  TORCH_CHECK(W.device() == device, op, ": W is on ", W.device(), " but the first W is on ",
              device);
  TORCH_CHECK(W.dim() == 3, op, ": W must be [G, R, C], got shape ", W.sizes());
  const int64_t G = W.size(0), R = W.size(1), C = W.size(2);
  TORCH_CHECK(u.dim() == 2 && u.size(0) == G && u.size(1) == R, op, ": u must be [G, R] = [",
              G, ", ", R, "] for W ", W.sizes(), ", got ", u.sizes());
  TORCH_CHECK(v.dim() == 2 && v.size(0) == G && v.size(1) == C, op, ": v must be [G, C] = [",
              G, ", ", C, "] for W ", W.sizes(), ", got ", v.sizes());
  check_like(u, W, op, "u", "W");
  check_like(v, W, op, "v", "W");
  TORCH_CHECK(at::has_internal_overlap(u) != at::MemOverlap::Yes &&
                  at::has_internal_overlap(v) != at::MemOverlap::Yes,
              op, ": u and v must not have elements sharing memory (e.g. from expand)");
}

// The reference's loop in ATen ops, for shapes the kernel cannot take.
void power_iteration_aten(const Work& w, int64_t n_iter, double eps) {
  for (int64_t it = 0; it < n_iter; ++it) {
    const at::Tensor nv = at::bmm(w.u.unsqueeze(1), w.W).squeeze(1);
    w.v.copy_(nv / nv.norm(2, {1}, true).clamp_min(eps));
    const at::Tensor nu = at::bmm(w.v.unsqueeze(1), w.W.transpose(1, 2)).squeeze(1);
    w.u.copy_(nu / nu.norm(2, {1}, true).clamp_min(eps));
  }
  w.sigma.copy_(at::einsum("gr,grc,gc->g", {w.u, w.W, w.v}));
}

// Runs every group (checked; one dtype for all, as the CPU kernel) and returns the sigmas of all
// groups concatenated, [G_1 + ... + G_K]; u / v updated in place.
at::Tensor run(const char* op, at::TensorList Ws, at::TensorList us, at::TensorList vs,
               int64_t n_iter, double eps) {
  TORCH_CHECK(Ws.size() == us.size() && Ws.size() == vs.size(), op,
              ": need one u and one v per weight group, got ", Ws.size(), " groups, ",
              us.size(), " u's and ", vs.size(), " v's");
  TORCH_CHECK(n_iter >= 0, op, ": n_iter must be >= 0, got ", n_iter);
  if (Ws.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kFloat));
  const at::Device device = Ws[0].device();
  int64_t total = 0;
  for (size_t k = 0; k < Ws.size(); ++k) {
    check_group(Ws.size() == 1 ? std::string(op)
                               : std::string(op) + ": group " + std::to_string(k),
                Ws[k], us[k], vs[k], device);
    TORCH_CHECK(Ws[k].scalar_type() == Ws[0].scalar_type(), op, ": every group must have one "
                "dtype, got ", Ws[0].scalar_type(), " (group 0) and ", Ws[k].scalar_type(),
                " (group ", k, ")");
    total += Ws[k].size(0);
  }
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor sigmas = empty_contiguous({total}, Ws[0]);
  std::vector<Work> work(Ws.size());
  // Kernel groups per dtype, in the order of the Dtype enum.
  std::vector<PowerIterationGroup> launch[4];
  int64_t first = 0;
  for (size_t k = 0; k < Ws.size(); ++k) {
    Work& w = work[k];
    w.W = Ws[k].contiguous();
    w.u = us[k].is_contiguous() ? us[k] : us[k].contiguous();
    w.v = vs[k].is_contiguous() ? vs[k] : vs[k].contiguous();
    w.sigma = sigmas.narrow(0, first, Ws[k].size(0));  // a contiguous slice
    first += Ws[k].size(0);
    const Dtype dtype = to_dtype(Ws[k].scalar_type(), op);
    const int64_t G = w.W.size(0), R = w.W.size(1), C = w.W.size(2);
    if (G == 0) continue;
    if (power_iteration_fits(dtype, R, C)) {
      launch[static_cast<int>(dtype)].push_back(PowerIterationGroup{
          w.W.const_data_ptr(), w.u.mutable_data_ptr(), w.v.mutable_data_ptr(),
          w.sigma.mutable_data_ptr(), G, R, C});
    } else {
      power_iteration_aten(w, n_iter, eps);
    }
  }
  const cudaStream_t stream = current_stream();
  for (int d = 0; d < 4; ++d) {
    if (launch[d].empty()) continue;
    VAEBM_FAST_CUDA_LAUNCH(power_iteration(static_cast<Dtype>(d), launch[d].data(),
                                           static_cast<int64_t>(launch[d].size()), n_iter, eps,
                                           stream));
  }
  for (size_t k = 0; k < Ws.size(); ++k) {
    if (!work[k].u.is_same(us[k])) us[k].copy_(work[k].u);
    if (!work[k].v.is_same(vs[k])) vs[k].copy_(work[k].v);
  }
  return sigmas;
}

at::Tensor power_iteration_cuda(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                                int64_t n_iter, double eps) {
  return run("power_iteration_", {W}, {u}, {v}, n_iter, eps);
}

at::Tensor spectral_norms_cuda(at::TensorList Ws, at::TensorList us, at::TensorList vs,
                               int64_t n_iter, double eps) {
  return run("spectral_norms_", Ws, us, vs, n_iter, eps);
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("power_iteration_", &vaebm_fast::cuda::power_iteration_cuda);
  m.impl("spectral_norms_", &vaebm_fast::cuda::spectral_norms_cuda);
}
