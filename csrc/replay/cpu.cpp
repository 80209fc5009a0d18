// CPU kernels of the replay-buffer ops (reference: vaebm_fast/ops/replay.py).
//
// vaebm_fast::replay_gather(buffer [N, *S], index int64 [B], reinit bool [B], seed, offset)
//   -> out [B, *S]:  out[b] = reinit[b] ? normals offset + b*P .. offset + (b+1)*P - 1
//                                       : buffer[index[b]],                 P = prod(S).
//   Row b's normals depend only on b (not on which other rows are reinitialised); index[b] of
//   a reinit row is not read. Memory traffic: P * itemsize read + written per gathered row
//   (one memcpy), P * itemsize written per fresh row (normals generated straight into the row
//   for fp32, through an L1-sized stack block otherwise).
//
// vaebm_fast::replay_scatter_(buffer [N, *S], index int64 [B], values [B, *S]) -> ()
//   buffer[index[b]] = values[b], one memcpy per row, rows in parallel. Indices must be unique
//   (the Python wrapper checks); with duplicates which row lands is unspecified.
//
// Layout: rows are copied with memcpy when each row of `buffer` is contiguous (any stride
// between rows); otherwise the kernels work on a contiguous copy (scatter copies it back).
#include <algorithm>
#include <cstring>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/kernel_dtypes.h"
#include "checks.h"

#include "../common/normals.h"

namespace vaebm_fast {
namespace cpu {
namespace {

// Elements per parallel task (~16 us of memcpy or noise per task).
constexpr int64_t kGrainElements = 16384;

int64_t row_grain(int64_t row_numel) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_numel, 1));
}

void check_cpu(const char* op, const at::Tensor& buffer, const at::Tensor& index) {
  TORCH_CHECK(buffer.device().is_cpu() && index.device().is_cpu(), op,
              " (CPU kernel): buffer and index must be on the CPU");
  check_replay_buffer_index(op, buffer, index);
}

at::Tensor replay_gather_cpu(const at::Tensor& buffer_in, const at::Tensor& index_in,
                             const at::Tensor& reinit_in, int64_t seed, int64_t offset) {
  check_cpu("replay_gather", buffer_in, index_in);
  check_replay_reinit(buffer_in, index_in, reinit_in, offset);
  const at::Tensor buffer = replay_rows_contiguous(buffer_in) ? buffer_in : buffer_in.contiguous();
  const at::Tensor index = index_in.contiguous(), reinit = reinit_in.contiguous();
  const int64_t B = index.numel(), N = buffer.size(0);
  std::vector<int64_t> out_shape = buffer.sizes().vec();
  out_shape[0] = B;
  at::Tensor out = at::empty(out_shape, buffer.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t P = out.numel() / std::max<int64_t>(B, 1);
  if (B == 0) return out;
  TORCH_CHECK(P == 0 || B <= (std::numeric_limits<int64_t>::max() - offset) / P,
              "replay_gather: offset + B * prod(S) overflows int64");
  const int64_t* idx = index.const_data_ptr<int64_t>();
  const bool* fresh = reinit.const_data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(fresh[b] || (idx[b] >= 0 && idx[b] < N), "replay_gather: index[", b, "] = ",
                idx[b], " is out of range for a buffer of ", N, " rows");
  }
  const uint64_t key = static_cast<uint64_t>(seed);
  const int64_t row_stride = buffer.stride(0);
  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(buffer.scalar_type(),
                                  "replay_gather_cpu", [&] {
    const scalar_t* src = buffer.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(P), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        if (fresh[b]) {
          fill_normals_as<scalar_t>(dst + b * P, P, key, static_cast<uint64_t>(offset + b * P));
        } else if (P > 0) {
          std::memcpy(dst + b * P, src + idx[b] * row_stride, P * sizeof(scalar_t));
        }
      }
    });
  });
  return out;
}

void replay_scatter_cpu(const at::Tensor& buffer, const at::Tensor& index_in,
                        const at::Tensor& values_in) {
  check_cpu("replay_scatter_", buffer, index_in);
  check_replay_values(buffer, index_in, values_in);
  const int64_t B = index_in.numel(), N = buffer.size(0);
  if (B == 0) return;
  const at::Tensor index = index_in.contiguous();
  const int64_t* idx = index.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(idx[b] >= 0 && idx[b] < N, "replay_scatter_: index[", b, "] = ", idx[b],
                " is out of range for a buffer of ", N, " rows");
  }
  const at::Tensor values = values_in.contiguous();
  const at::Tensor work = replay_rows_contiguous(buffer) ? buffer : buffer.contiguous();
  const int64_t P = values.numel() / B;
  const int64_t row_stride = work.stride(0);
  const size_t row_bytes = static_cast<size_t>(P) * values.element_size();
  if (P > 0) {
    const char* src = static_cast<const char*>(values.const_data_ptr());
    char* dst = static_cast<char*>(work.mutable_data_ptr());
    const int64_t stride_bytes = row_stride * static_cast<int64_t>(work.element_size());
    at::parallel_for(0, B, row_grain(P), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        std::memcpy(dst + idx[b] * stride_bytes, src + b * row_bytes, row_bytes);
      }
    });
  }
  if (!work.is_same(buffer)) buffer.copy_(work);
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("replay_gather", &vaebm_fast::cpu::replay_gather_cpu);
  m.impl("replay_scatter_", &vaebm_fast::cpu::replay_scatter_cpu);
}
