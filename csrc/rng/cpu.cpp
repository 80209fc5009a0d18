// CPU kernels of the Philox ops: vaebm_fast::philox4x32, vaebm_fast::philox_normal_ and
// vaebm_fast::philox_normal_rows_.
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/kernel_dtypes.h"
#include "../common/philox.h"
#include "../common/normals.h"

namespace vaebm_fast {
namespace cpu {
namespace {

// offsets: int64 [*] (read as uint64 call indices) -> int64 [*, 4], words in [0, 2^32).
at::Tensor philox4x32_cpu(int64_t seed, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "philox4x32: offsets must be int64, got ",
              offsets.scalar_type());
  TORCH_CHECK(offsets.device().is_cpu(), "philox4x32 (CPU kernel): offsets must be on the CPU");
  const at::Tensor calls = offsets.contiguous();
  std::vector<int64_t> out_shape = calls.sizes().vec();
  out_shape.push_back(4);
  at::Tensor out = at::empty(out_shape, calls.options());
  const int64_t* in = calls.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const uint64_t key = static_cast<uint64_t>(seed);
  // ~20 ns per call; 2048 calls per task amortise the thread hand-off.
  at::parallel_for(0, calls.numel(), 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const philox::Words w = philox::philox_call(key, static_cast<uint64_t>(in[i]));
      for (int lane = 0; lane < 4; ++lane) o[4 * i + lane] = static_cast<int64_t>(w.w[lane]);
    }
  });
  return out;
}

// out (contiguous, floating, read flat): out[i] = normal number offset + i.
void philox_normal_cpu(const at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.device().is_cpu(), "philox_normal_ (CPU kernel): out must be on the CPU");
  TORCH_CHECK(out.is_contiguous(), "philox_normal_: out must be contiguous");
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "philox_normal_: out must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(offset >= 0, "philox_normal_: offset must be >= 0, got ", offset);
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint64_t m0 = static_cast<uint64_t>(offset);
  const at::ScalarType dtype = out.scalar_type();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(dtype, "philox_normal_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // ~2 ns per normal: one noise block per task is enough to amortise the hand-off.
    at::parallel_for(0, out.numel(), kNoiseBlock, [&](int64_t begin, int64_t end) {
      fill_normals_as<scalar_t>(o + begin, end - begin, key, m0 + static_cast<uint64_t>(begin));
    });
  });
}

// out [B, *] (contiguous, floating): out[b].flatten()[j] = normal number offset + j of row
// stream first_row + b (counter words 2, 3 = first_row + b + 1).
void philox_normal_rows_cpu(const at::Tensor& out, int64_t seed, int64_t offset,
                            int64_t first_row) {
  TORCH_CHECK(out.device().is_cpu(), "philox_normal_rows_ (CPU kernel): out must be on the CPU");
  TORCH_CHECK(out.is_contiguous(), "philox_normal_rows_: out must be contiguous");
  TORCH_CHECK(at::isFloatingType(out.scalar_type()),
              "philox_normal_rows_: out must be floating, got ", out.scalar_type());
  TORCH_CHECK(out.dim() >= 1, "philox_normal_rows_: out must have dim >= 1 (rows along dim 0)");
  TORCH_CHECK(offset >= 0, "philox_normal_rows_: offset must be >= 0, got ", offset);
  TORCH_CHECK(first_row >= 0, "philox_normal_rows_: first_row must be >= 0, got ", first_row);
  const int64_t rows = out.size(0);
  if (out.numel() == 0) return;
  const int64_t per_row = out.numel() / rows;
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint64_t m0 = static_cast<uint64_t>(offset);
  const at::ScalarType dtype = out.scalar_type();
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(dtype, "philox_normal_rows_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // Tasks over the whole [B * per_row] range (short rows share a task); each task walks the
    // rows its range overlaps, one fill per (row, run). Within a run the normals come 4 per
    // Philox call as in the flat op; a row that does not start on a call boundary costs one
    // partly used call at each of its ends.
    at::parallel_for(0, out.numel(), kNoiseBlock, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t b = i / per_row, j = i - b * per_row;
        const int64_t len = std::min(end - i, per_row - j);
        fill_normals_as<scalar_t>(o + i, len, key, m0 + static_cast<uint64_t>(j),
                                  static_cast<uint64_t>(first_row + b) + 1);
        i += len;
      }
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("philox4x32", &vaebm_fast::cpu::philox4x32_cpu);
  m.impl("philox_normal_", &vaebm_fast::cpu::philox_normal_cpu);
  m.impl("philox_normal_rows_", &vaebm_fast::cpu::philox_normal_rows_cpu);
}
