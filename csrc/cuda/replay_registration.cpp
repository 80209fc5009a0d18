// torch glue of the CUDA replay-buffer kernels (replay.cu / replay_cuda.h). Mirrors the checks
// of csrc/cpu/replay.cpp except the index range, which would need a host synchronisation: the
// Python wrappers check it, and the kernels assert on the device.
#include <algorithm>
#include <limits>
#include <vector>

#include <torch/library.h>

#include "glue.h"
#include "../replay_checks.h"
#include "replay_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

void check_common(const char* op, const at::Tensor& buffer, const at::Tensor& index) {
  check_cuda(buffer, op, "buffer");
  check_cuda(index, op, "index");
  check_replay_buffer_index(op, buffer, index);
  TORCH_CHECK(is_kernel_dtype(buffer.scalar_type()), op, ": the CUDA kernel takes float16, "
              "bfloat16, float32 or float64 buffers, got ", buffer.scalar_type());
}

at::Tensor replay_gather_cuda(const at::Tensor& buffer_in, const at::Tensor& index_in,
                              const at::Tensor& reinit_in, int64_t seed, int64_t offset) {
  check_common("replay_gather", buffer_in, index_in);
  check_replay_reinit(buffer_in, index_in, reinit_in, offset);
  const c10::cuda::CUDAGuard guard(buffer_in.device());
  const at::Tensor buffer = replay_rows_contiguous(buffer_in) ? buffer_in : buffer_in.contiguous();
  const at::Tensor index = index_in.contiguous(), reinit = reinit_in.contiguous();
  const int64_t B = index.numel(), N = buffer.size(0);
  std::vector<int64_t> out_shape = buffer.sizes().vec();
  out_shape[0] = B;
  at::Tensor out = empty_contiguous(out_shape, buffer);
  const int64_t P = out.numel() / std::max<int64_t>(B, 1);
  if (out.numel() == 0) return out;
  TORCH_CHECK(B <= (std::numeric_limits<int64_t>::max() - offset) / P,
              "replay_gather: offset + B * prod(S) overflows int64");
  VAEBM_FAST_CUDA_LAUNCH(replay_gather(
      to_dtype(buffer.scalar_type(), "replay_gather"), buffer.const_data_ptr(), buffer.stride(0),
      N, index.const_data_ptr<int64_t>(), reinit.const_data_ptr<bool>(), out.mutable_data_ptr(),
      B, P, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), current_stream()));
  return out;
}

void replay_scatter_cuda(const at::Tensor& buffer, const at::Tensor& index_in,
                         const at::Tensor& values_in) {
  check_common("replay_scatter_", buffer, index_in);
  check_replay_values(buffer, index_in, values_in);
  const int64_t B = index_in.numel(), N = buffer.size(0);
  if (B == 0 || values_in.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(buffer.device());
  const at::Tensor index = index_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor work = replay_rows_contiguous(buffer) ? buffer : buffer.contiguous();
  VAEBM_FAST_CUDA_LAUNCH(replay_scatter(
      to_dtype(buffer.scalar_type(), "replay_scatter_"), work.mutable_data_ptr(), work.stride(0),
      N, index.const_data_ptr<int64_t>(), values.const_data_ptr(), B, values.numel() / B,
      current_stream()));
  if (!work.is_same(buffer)) buffer.copy_(work);
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("replay_gather", &vaebm_fast::cuda::replay_gather_cuda);
  m.impl("replay_scatter_", &vaebm_fast::cuda::replay_scatter_cuda);
}
