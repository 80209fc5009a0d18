// torch glue of the CUDA Philox kernels (rng.cu / rng_cuda.h). Mirrors csrc/cpu/rng.cpp.
#include <limits>
#include <vector>

#include <torch/library.h>

#include "glue.h"
#include "rng_cuda.h"

namespace vaebm_fast {
namespace cuda {
namespace {

// offsets: int64 [*] (read as uint64 call indices) -> int64 [*, 4], words in [0, 2^32).
at::Tensor philox4x32_cuda(int64_t seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "philox4x32: offsets must be int64, got ",
              offsets.scalar_type());
  check_cuda(offsets, "philox4x32", "offsets");
  const c10::cuda::CUDAGuard guard(offsets.device());
  const at::Tensor calls = offsets.contiguous();
  std::vector<int64_t> out_shape = calls.sizes().vec();
  out_shape.push_back(4);
  at::Tensor out = empty_contiguous(out_shape, calls);
  VAEBM_FAST_CUDA_LAUNCH(philox4x32(static_cast<uint64_t>(seed), calls.const_data_ptr<int64_t>(),
                                    calls.numel(), out.mutable_data_ptr<int64_t>(),
                                    current_stream()));
  return out;
}

// out (contiguous, floating, read flat): out[i] = normal number offset + i.
void philox_normal_cuda(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_cuda(out, "philox_normal_", "out");
  TORCH_CHECK(out.is_contiguous(), "philox_normal_: out must be contiguous");
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "philox_normal_: out must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(is_kernel_dtype(out.scalar_type()), "philox_normal_: the CUDA kernel takes "
              "float16, bfloat16, float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(offset >= 0, "philox_normal_: offset must be >= 0, got ", offset);
  TORCH_CHECK(out.numel() <= std::numeric_limits<int64_t>::max() - offset,
              "philox_normal_: offset + numel overflows int64");
  const c10::cuda::CUDAGuard guard(out.device());
  VAEBM_FAST_CUDA_LAUNCH(philox_normal(to_dtype(out.scalar_type(), "philox_normal_"),
                                       out.mutable_data_ptr(), out.numel(),
                                       static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                       current_stream()));
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("philox4x32", &vaebm_fast::cuda::philox4x32_cuda);
  m.impl("philox_normal_", &vaebm_fast::cuda::philox_normal_cuda);
}
