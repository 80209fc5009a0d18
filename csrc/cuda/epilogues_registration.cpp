// torch glue of the CUDA epilogue kernels (epilogues.cu / epilogues_cuda.h). Checks: the first
// tensor is a CUDA tensor of a kernel dtype, the rest as ../epilogue_checks.h (shared with the
// CPU kernels). Inputs are read through contiguous copies; outputs are new contiguous tensors.
#include <tuple>

#include <torch/library.h>

#include "../epilogue_checks.h"
#include "epilogues_cuda.h"
#include "glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> ebm_block_tail_cuda(const at::Tensor& h,
                                                       const at::Tensor& skip, bool downsample) {
  constexpr const char* op = "ebm_block_tail";
  check_floating(h, op, "h");
  check_ebm_tail_args(op, h, skip, downsample);
  const int64_t B = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  const int64_t Ho = downsample ? H / 2 : H, Wo = downsample ? W / 2 : W;
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor hc = h.contiguous(), sc = skip.contiguous();
  at::Tensor out = empty_contiguous({B, C, Ho, Wo}, h);
  at::Tensor pre = empty_contiguous({B, C, Ho, Wo}, h);
  VAEBM_FAST_CUDA_LAUNCH(ebm_block_tail(to_dtype(h.scalar_type(), op), hc.const_data_ptr(),
                                        sc.const_data_ptr(), out.mutable_data_ptr(),
                                        pre.mutable_data_ptr(), downsample, B * C, Ho, Wo,
                                        current_stream()));
  return {out, pre};
}

at::Tensor ebm_block_tail_backward_cuda(const at::Tensor& grad, const at::Tensor& pre,
                                        bool downsample) {
  constexpr const char* op = "ebm_block_tail_backward";
  check_floating(pre, op, "pre");
  check_nchw_pair(op, pre, "pre", grad, "grad");
  const int64_t B = pre.size(0), C = pre.size(1), Ho = pre.size(2), Wo = pre.size(3);
  const c10::cuda::CUDAGuard guard(pre.device());
  const at::Tensor gc = grad.contiguous(), pc = pre.contiguous();
  at::Tensor d = downsample ? empty_contiguous({B, C, 2 * Ho, 2 * Wo}, pre)
                            : empty_contiguous({B, C, Ho, Wo}, pre);
  VAEBM_FAST_CUDA_LAUNCH(ebm_block_tail_backward(to_dtype(pre.scalar_type(), op),
                                                 gc.const_data_ptr(), pc.const_data_ptr(),
                                                 d.mutable_data_ptr(), downsample, B * C, Ho, Wo,
                                                 current_stream()));
  return d;
}

void check_cell(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& h,
                const at::Tensor& gate) {
  check_floating(h, op, "h");
  check_cell_args(op, h, a, a_name, gate);
}

at::Tensor nvae_cell_tail_cuda(const at::Tensor& skip, const at::Tensor& h,
                               const at::Tensor& gate, double scale) {
  constexpr const char* op = "nvae_cell_tail";
  check_cell(op, skip, "skip", h, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor sc = skip.contiguous(), hc = h.contiguous(), gc = gate.contiguous();
  at::Tensor out = empty_contiguous(h.sizes(), h);
  VAEBM_FAST_CUDA_LAUNCH(nvae_cell_tail(to_dtype(h.scalar_type(), op), sc.const_data_ptr(),
                                        hc.const_data_ptr(), gc.const_data_ptr(),
                                        out.mutable_data_ptr(), h.size(0) * h.size(1),
                                        h.size(2) * h.size(3), scale, current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> nvae_cell_tail_backward_cuda(const at::Tensor& grad,
                                                                const at::Tensor& h,
                                                                const at::Tensor& gate,
                                                                double scale) {
  constexpr const char* op = "nvae_cell_tail_backward";
  check_cell(op, grad, "grad", h, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor gc = grad.contiguous(), hc = h.contiguous(), gt = gate.contiguous();
  at::Tensor dh = empty_contiguous(h.sizes(), h);
  at::Tensor dgate = empty_contiguous(gate.sizes(), gate);
  VAEBM_FAST_CUDA_LAUNCH(nvae_cell_tail_backward(
      to_dtype(h.scalar_type(), op), gc.const_data_ptr(), hc.const_data_ptr(),
      gt.const_data_ptr(), dh.mutable_data_ptr(), dgate.mutable_data_ptr(),
      h.size(0) * h.size(1), h.size(2) * h.size(3), scale, current_stream()));
  return {dh, dgate};
}

void check_affine(const char* op, const at::Tensor& x, const at::Tensor& scale,
                  const at::Tensor& shift) {
  check_floating(x, op, "x");
  check_affine_args(op, x, scale, shift);
}

// x [N, C, *S] seen as [N, C, inner], inner = prod(S) (1 for 2-D x).
int64_t inner_size(const at::Tensor& x) {
  int64_t inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  return inner;
}

at::Tensor affine_swish_cuda(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& shift) {
  constexpr const char* op = "affine_swish";
  check_affine(op, x, scale, shift);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  at::Tensor out = empty_contiguous(x.sizes(), x);
  VAEBM_FAST_CUDA_LAUNCH(affine_swish(to_dtype(x.scalar_type(), op), xc.const_data_ptr(),
                                      sc.const_data_ptr(), sh.const_data_ptr(),
                                      out.mutable_data_ptr(), x.size(0), x.size(1),
                                      inner_size(x), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_swish_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& shift) {
  constexpr const char* op = "affine_swish_backward";
  check_affine(op, x, scale, shift);
  check_epilogue_like(grad, x, op, "grad", "x", true);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = empty_contiguous(x.sizes(), x);
  const int64_t N = x.size(0), C = x.size(1), inner = inner_size(x);
  if (x.numel() == 0) {  // no elements: zero sums (C may still be > 0)
    return {dx, at::zeros(scale.sizes(), scale.options()),
            at::zeros(shift.sizes(), shift.options())};
  }
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous(), sc = scale.contiguous(),
                   sh = shift.contiguous();
  at::Tensor dscale = empty_contiguous(scale.sizes(), scale);
  at::Tensor dshift = empty_contiguous(shift.sizes(), shift);
  // Per-(channel, split) partial sums, through PyTorch's caching allocator.
  const at::Tensor workspace =
      at::empty({2 * C * affine_swish_backward_splits(N, inner)},
                x.options().dtype(acc_dtype(x.scalar_type())));
  VAEBM_FAST_CUDA_LAUNCH(affine_swish_backward(
      to_dtype(x.scalar_type(), op), gc.const_data_ptr(), xc.const_data_ptr(),
      sc.const_data_ptr(), sh.const_data_ptr(), dx.mutable_data_ptr(),
      dscale.mutable_data_ptr(), dshift.mutable_data_ptr(), workspace.data_ptr(), N, C, inner,
      current_stream()));
  return {dx, dscale, dshift};
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("ebm_block_tail", &vaebm_fast::cuda::ebm_block_tail_cuda);
  m.impl("ebm_block_tail_backward", &vaebm_fast::cuda::ebm_block_tail_backward_cuda);
  m.impl("nvae_cell_tail", &vaebm_fast::cuda::nvae_cell_tail_cuda);
  m.impl("nvae_cell_tail_backward", &vaebm_fast::cuda::nvae_cell_tail_backward_cuda);
  m.impl("affine_swish", &vaebm_fast::cuda::affine_swish_cuda);
  m.impl("affine_swish_backward", &vaebm_fast::cuda::affine_swish_backward_cuda);
}
