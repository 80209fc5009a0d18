// Argument checks of replay_gather / replay_scatter_ shared by their CPU and CUDA kernels (the
// device checks stay with each kernel). The Python wrappers check the same with friendlier
// messages, plus the index range and uniqueness, which need the index values.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

namespace vaebm_fast {

// True when every buffer[i] is a contiguous block (rows may be strided against each other), so
// the kernels can copy rows with one stride and no contiguous copy of the whole buffer.
inline bool replay_rows_contiguous(const at::Tensor& buffer) {
  int64_t expected = 1;
  for (int64_t d = buffer.dim() - 1; d >= 1; --d) {
    if (buffer.size(d) != 1 && buffer.stride(d) != expected) return false;
    expected *= buffer.size(d);
  }
  return true;
}

// buffer [N, *S] floating, index int64 [B], both on one device.
inline void check_replay_buffer_index(const char* op, const at::Tensor& buffer,
                                      const at::Tensor& index) {
  TORCH_CHECK(index.device() == buffer.device(), op, ": index is on ", index.device(),
              " but buffer is on ", buffer.device());
  TORCH_CHECK(buffer.dim() >= 1, op, ": buffer must have at least one dimension [N, *S]");
  TORCH_CHECK(at::isFloatingType(buffer.scalar_type()), op, ": buffer must be floating, got ",
              buffer.scalar_type());
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1, op,
              ": index must be a 1-D int64 tensor, got ", index.scalar_type(), " of shape ",
              index.sizes());
}

// replay_gather's reinit: bool, shaped like index, on buffer's device; offset >= 0.
inline void check_replay_reinit(const at::Tensor& buffer, const at::Tensor& index,
                                const at::Tensor& reinit, int64_t offset) {
  TORCH_CHECK(reinit.device() == buffer.device(), "replay_gather: reinit is on ",
              reinit.device(), " but buffer is on ", buffer.device());
  TORCH_CHECK(reinit.scalar_type() == at::kBool && reinit.sizes() == index.sizes(),
              "replay_gather: reinit must be a bool tensor of the shape of index ",
              index.sizes(), ", got ", reinit.scalar_type(), " ", reinit.sizes());
  TORCH_CHECK(offset >= 0, "replay_gather: offset must be >= 0, got ", offset);
}

// replay_scatter_'s values: [B, *S] of buffer's dtype and device; buffer writable row-wise.
inline void check_replay_values(const at::Tensor& buffer, const at::Tensor& index,
                                const at::Tensor& values) {
  TORCH_CHECK(values.device() == buffer.device(), "replay_scatter_: values are on ",
              values.device(), " but buffer is on ", buffer.device());
  TORCH_CHECK(values.scalar_type() == buffer.scalar_type(), "replay_scatter_: values have "
              "dtype ", values.scalar_type(), " but buffer has ", buffer.scalar_type());
  TORCH_CHECK(values.dim() == buffer.dim() && values.size(0) == index.numel() &&
                  values.sizes().slice(1) == buffer.sizes().slice(1),
              "replay_scatter_: values must have shape [B, *S] with B = index.numel(); got ",
              values.sizes(), " for buffer ", buffer.sizes(), " and index ", index.sizes());
  TORCH_CHECK(at::has_internal_overlap(buffer) != at::MemOverlap::Yes,
              "replay_scatter_: buffer has elements sharing memory (e.g. from expand)");
  // Rows are written in parallel: values read from rows being written would race.
  const at::MemOverlapStatus overlap = at::get_overlap_status(buffer, values);
  TORCH_CHECK(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
              "replay_scatter_: values and buffer are sharing memory; pass values.clone()");
}

}  // namespace vaebm_fast
