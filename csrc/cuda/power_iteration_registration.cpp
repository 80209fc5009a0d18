// torch glue of the CUDA power-iteration kernel (power_iteration.cu / power_iteration_cuda.h):
// argument checks (../power_iteration_checks.h, shared with the CPU kernel), contiguous
// work copies of u / v copied back when the caller's are strided, one launch for all groups of
// a call (one dtype), and an ATen fallback for matrices whose u and v do not fit in shared
// memory (R + C beyond ~56k float32 on H100/H200), which no model here comes near.
#include <vector>

#include <torch/library.h>

#include "../power_iteration_checks.h"
#include "glue.h"
#include "power_iteration_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

struct Work {
  at::Tensor W, u, v, sigma;  // contiguous: what the kernel reads and writes
};

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
  const int64_t total = check_power_iteration_args(op, Ws, us, vs, n_iter);
  if (Ws.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kFloat));
  check_floating(Ws[0], op, "W");
  const c10::cuda::CUDAGuard guard(Ws[0].device());
  const Dtype dtype = to_dtype(Ws[0].scalar_type(), op);
  const int64_t max_vector = power_iteration_max_vector(dtype);
  const at::Tensor sigmas = empty_contiguous({total}, Ws[0]);
  std::vector<Work> work(Ws.size());
  std::vector<PowerIterationGroup> launch;  // the groups the kernel takes, one launch
  int64_t first = 0;
  for (size_t k = 0; k < Ws.size(); ++k) {
    Work& w = work[k];
    w.W = Ws[k].contiguous();
    w.u = us[k].is_contiguous() ? us[k] : us[k].contiguous();
    w.v = vs[k].is_contiguous() ? vs[k] : vs[k].contiguous();
    w.sigma = sigmas.narrow(0, first, Ws[k].size(0));  // a contiguous slice
    first += Ws[k].size(0);
    const int64_t G = w.W.size(0), R = w.W.size(1), C = w.W.size(2);
    if (G == 0) continue;
    if (R + C <= max_vector) {
      launch.push_back(PowerIterationGroup{w.W.const_data_ptr(), w.u.mutable_data_ptr(),
                                           w.v.mutable_data_ptr(), w.sigma.mutable_data_ptr(),
                                           G, R, C});
    } else {
      power_iteration_aten(w, n_iter, eps);
    }
  }
  if (!launch.empty()) {
    VAEBM_FAST_CUDA_LAUNCH(power_iteration(dtype, launch.data(),
                                           static_cast<int64_t>(launch.size()), n_iter, eps,
                                           current_stream()));
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
